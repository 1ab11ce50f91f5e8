//! `pd serve` over TLS: a CA and a server certificate made in the test; clients and agents
//! verify the server against that CA (`--ca` / `PD_CA`) and refuse it without.

use pd_e2e::{Net, World};

/// A client certificate (with its key, one PEM file) signed by a new CA: (ca.pem, client.pem).
fn client_certificate(w: &World) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("client key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "deployer");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("client certificate");
    let path = |name: &str, pem: String| w.write(name, &pem).to_str().expect("path").to_string();
    (path("client-ca.pem", ca_cert.pem()), path("client.pem", cert.pem() + &key.serialize_pem()))
}

/// A private CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn certificates(w: &World) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "pd test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let path = |name: &str, pem: String| w.write(name, &pem).to_str().expect("path").to_string();
    (path("ca.pem", ca_cert.pem()), path("cert.pem", cert.pem()), path("key.pem", key.serialize_pem()))
}

#[test]
fn a_tls_server_is_verified_against_its_ca_and_agents_converge_over_it() {
    let mut w = World::packaged();
    let (ca, cert, key) = certificates(&w);
    // Every pd the test starts (commands, agents) trusts the CA through PD_CA.
    w.env.push(("PD_CA".into(), ca.clone()));
    let mut net = Net::start_with(&w, &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(net.url().starts_with("https://127.0.0.1:"), "{}", net.url());
    // Without the CA the server is not trusted, and pd says so.
    let out = w.pd("", &["--server", net.url(), "state"]).env_remove("PD_CA").output().expect("run pd");
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // With it, commands and agents (full and light) work over TLS.
    net.ok("", &["--ca", &ca, "state"]);
    net.agent("dev-1", "dev", &[]);
    net.agent_with("dev-2", "dev", &[], &["--light"]);
    let args = ["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "tls", "--timeout", "60s"];
    let said = net.ok("", &args);
    assert!(said.contains("dev: 2/2 targets acknowledged PD-0.1.0"), "{said}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(net.url().trim_start_matches("https://")).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
}

#[test]
fn a_server_requiring_client_certificates_refuses_clients_without_one() {
    let mut w = World::packaged();
    let (ca, cert, key) = certificates(&w);
    let (client_ca, client) = client_certificate(&w);
    w.env.push(("PD_CA".into(), ca));
    let net = Net::start_with(&w, &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &client_ca]);
    let out = net.run("", &["state"]);
    assert_eq!(out.status.code(), Some(2), "no client certificate: {}", pd_e2e::text(&out));
    let said = net.ok("", &["--client-cert", &client, "state"]);
    assert!(said.contains("dev"), "{said}");
    // A certificate from another CA is refused too.
    let (_, stranger) = client_certificate(&w);
    let out = net.run("", &["--client-cert", &stranger, "state"]);
    assert_eq!(out.status.code(), Some(2), "a stranger's certificate: {}", pd_e2e::text(&out));
}
