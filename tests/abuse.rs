//! A `pd serve` under abuse, and clients facing a hostile server: oversized bodies are
//! refused before they are buffered, uploads are authorized before a body byte is read and
//! streamed to disk, idle and slowloris connections are closed, the connection limit answers
//! 503, and a server sending more than a client accepts is refused with the limit named.
//! Loopback only; waits are reads with deadlines, never sleeps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pd_e2e::{http, Net, World};

const MIB: u64 = 1024 * 1024;

/// The server process's resident memory, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}

fn connect(url: &str) -> TcpStream {
    let s = TcpStream::connect(url.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s
}

/// Reads one response head and as much body as `Content-Length` says: (status, body).
fn response(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("a response before the deadline");
        assert!(n > 0, "the server closed without answering: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if out.len() >= split + 4 + len {
            let status = head[9..12].parse().expect("status");
            return (status, String::from_utf8_lossy(&out[split + 4..split + 4 + len]).into_owned());
        }
    }
}

/// Sends a request head declaring `length` body bytes, then `send` bytes of it.
fn declare(url: &str, method: &str, path: &str, headers: &str, length: u64, send: usize) -> TcpStream {
    let mut s = connect(url);
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {length}\r\n\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer and close before all of this is read: that is the point.
    let _ = s.write_all(&vec![0u8; send]);
    s
}

fn object_path() -> String {
    format!("/v1/objects/{}", "ab".repeat(32))
}

#[test]
fn oversized_bodies_are_refused_on_every_route_before_they_are_buffered() {
    let w = World::standard();
    let net = Net::start(&w);
    let url = net.url().to_string();
    let routes = [
        ("POST", "/v1/entries".to_string(), "a statement may be at most 4.1 MiB"),
        ("POST", "/v1/heartbeats".to_string(), "a heartbeat may be at most 17 KiB"),
        ("PUT", object_path(), "an object may be at most 256 MiB"),
        ("GET", "/v1/state".to_string(), "a request to this route may be at most 0 B"),
    ];
    for (method, path, says) in &routes {
        let mut s = declare(&url, method, path, "", 300 * MIB, 0);
        let (status, body) = response(&mut s);
        assert_eq!(status, 413, "{method} {path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(error["error"].as_str().is_some_and(|e| e.contains(says)), "{method} {path}: {body}");
    }
    // Eight 300 MiB bodies at once, each partly sent: the server's memory does not follow.
    let before = rss_bytes(net.server.pid());
    let mut held: Vec<TcpStream> = (0..8)
        .map(|i| {
            let (method, path, _) = &routes[i % 4];
            declare(&url, method, path, "", 300 * MIB, 4 * MIB as usize)
        })
        .collect();
    for s in &mut held {
        assert_eq!(response(s).0, 413);
    }
    let after = rss_bytes(net.server.pid());
    assert!(after < before + 64 * MIB, "RSS grew from {} MiB to {} MiB", before / MIB, after / MIB);
    assert_eq!(http(&url, "GET", "/healthz", b"").0, 200);
}

#[test]
fn a_chunked_body_is_cut_off_at_the_route_limit() {
    let w = World::standard();
    let net = Net::start(&w);
    let mut s = connect(net.url());
    s.write_all(b"POST /v1/entries HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").expect("head");
    let chunk = vec![b'x'; 1 << 20];
    // 6 MiB in 1 MiB chunks; the server may stop reading after 4.1 MiB.
    for _ in 0..6 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if s.write_all(&framed).is_err() {
            break;
        }
    }
    let (status, body) = response(&mut s);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("a statement may be at most 4.1 MiB"), "{body}");
}

/// The acting key of a standard world and its secret.
fn author(w: &World) -> (String, pd_ledger::SecretKey) {
    let config = std::fs::read_to_string(w.home.join("config.toml")).expect("config");
    let actor = config
        .lines()
        .find_map(|l| l.strip_prefix("actor = "))
        .map(|a| a.trim().trim_matches('"').to_string())
        .expect("actor in config.toml");
    let hex = std::fs::read_to_string(w.home.join(format!("keys/{actor}.ed25519"))).expect("key file");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut seed).expect("hex key");
    (actor, pd_ledger::SecretKey::from_seed(seed))
}

fn ledger_id(url: &str) -> pd_ledger::Hash {
    let (_, body) = http(url, "GET", "/v1/head", b"");
    let head: pd_server::wire::HeadInfo = serde_json::from_slice(&body).expect("head JSON");
    head.ledger_id
}

#[test]
fn an_upload_without_valid_authorization_is_refused_while_the_client_is_still_sending() {
    let w = World::standard();
    let net = Net::start(&w);
    let (actor, _) = author(&w);
    let bad_sig = format!("{}: {actor}\r\n{}: {}\r\n", "pd-actor", "pd-signature", "00".repeat(64));
    for (headers, status, says) in [
        (String::new(), 401, "uploads need pd-actor and pd-signature headers"),
        (bad_sig, 403, "does not verify"),
    ] {
        // 200 MiB declared, 1 MiB sent: the answer comes before the rest.
        let mut s = declare(net.url(), "PUT", &object_path(), &headers, 200 * MIB, MIB as usize);
        let (got, body) = response(&mut s);
        assert_eq!(got, status, "{body}");
        assert!(body.contains(says), "{body}");
    }
}

#[test]
fn a_streamed_upload_is_stored_verified_without_holding_it_in_memory() {
    let w = World::standard();
    let net = Net::start(&w);
    let (actor, key) = author(&w);
    // 200 MiB of a repeated incompressible MiB.
    let block: Vec<u8> = (0..MIB).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut hasher = blake3::Hasher::new();
    for _ in 0..200 {
        hasher.update(&block);
    }
    let hash = pd_ledger::Hash(*hasher.finalize().as_bytes());
    let sig =
        key.sign(pd_server::wire::PUT_DOMAIN, &pd_server::wire::put_digest(&ledger_id(net.url()), &hash));
    let before = rss_bytes(net.server.pid());
    let mut s = connect(net.url());
    let head = format!(
        "PUT /v1/objects/{} HTTP/1.1\r\nHost: x\r\npd-actor: {actor}\r\npd-signature: {}\r\nContent-Length: {}\r\n\r\n",
        hash.to_hex(),
        sig.to_hex(),
        200 * MIB
    );
    s.write_all(head.as_bytes()).expect("head");
    for _ in 0..200 {
        s.write_all(&block).expect("body");
    }
    let (status, body) = response(&mut s);
    assert_eq!(status, 201, "{body}");
    let after = rss_bytes(net.server.pid());
    assert!(after < before + 64 * MIB, "RSS grew from {} MiB to {} MiB", before / MIB, after / MIB);
    // Served back whole, and a range of it.
    let path = format!("/v1/objects/{}", hash.to_hex());
    let (status, head, body) =
        pd_e2e::http_with(net.url(), "GET", &path, &[("Range", "bytes=1048576-1048583")], b"");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, &block[..8]);
    // A body that does not hash to its name is refused and not kept.
    let other = pd_ledger::Hash::of(b"something else");
    let sig =
        key.sign(pd_server::wire::PUT_DOMAIN, &pd_server::wire::put_digest(&ledger_id(net.url()), &other));
    let (status, _, body) = pd_e2e::http_with(
        net.url(),
        "PUT",
        &format!("/v1/objects/{}", other.to_hex()),
        &[("pd-actor", &actor), ("pd-signature", &sig.to_hex())],
        &block,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(http(net.url(), "GET", &format!("/v1/objects/{}", other.to_hex()), b"").0, 404);
}

/// Whether the server closes `s` (EOF or reset) before the read deadline.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn idle_and_slow_connections_are_closed_but_an_event_stream_is_not() {
    let w = World::packaged();
    let net = Net::start_with(&w, &["--header-read-timeout", "1s"]);
    let mut events = connect(net.url());
    events
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .expect("events");
    let mut idle = connect(net.url());
    let mut slow = connect(net.url());
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("partial head");
    // Deadline 30 s: without the header timeout these reads time out and the test fails.
    assert!(closed_by_server(&mut idle), "an idle connection stays open");
    assert!(closed_by_server(&mut slow), "a slowloris connection stays open");
    // The stream has outlived the timeout; an entry appended now still arrives on it.
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "second"]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&seen).contains("event: package") {
        let n = events.read(&mut buf).expect("the event stream is still open");
        assert!(n > 0, "the event stream was closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(http(net.url(), "GET", "/healthz", b"").0, 200);
}

#[test]
fn a_connection_over_the_limit_gets_a_503_that_says_so() {
    let w = World::standard();
    let net = Net::start_with(&w, &["--max-connections", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(net.url())).collect();
    // The held ones are accepted: each answers a request, so all three hold a slot now.
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        assert_eq!(response(s).0, 200);
    }
    let mut extra = connect(net.url());
    extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (status, body) = response(&mut extra);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection limit (3 connections)"), "{body}");
    // A slot freed is a slot for the next client (polled with a deadline).
    held.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = connect(net.url());
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        if response(&mut s).0 == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the freed slot was never reused");
    }
}

/// A hostile "server" on loopback: answers `/v1/head` with a head of 5 entries and every
/// other request with `body` bytes of junk.
fn hostile(junk_bytes: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if request.starts_with("GET /v1/head") {
                    let zero = "00".repeat(32);
                    format!(r#"{{"ledger_id":"{zero}","len":5,"head":"{zero}","last_time_ms":0}}"#)
                        .into_bytes()
                } else {
                    vec![0xa0; junk_bytes]
                };
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            });
        }
    });
    url
}

#[test]
fn a_client_refuses_an_entries_page_larger_than_its_limit() {
    let url = hostile(64 << 20);
    let w = World::new();
    let out = w.pd("", &["--server", &url, "ledger", "log"]).output().expect("run pd");
    let text = pd_e2e::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("sent more than 17 MiB for one entries page; refusing it"), "{text}");
}

#[test]
fn a_light_agent_refuses_a_control_page_larger_than_its_limit() {
    let url = hostile(64 << 20);
    let w = World::standard();
    let dir = w.path("agent");
    let args = ["--server", &url, "agent", "--light", "--dir", dir.to_str().expect("path")];
    let out = w.pd("dev-1", &args).output().expect("run pd");
    let text = pd_e2e::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("sent more than 17 MiB for one control page; refusing it"), "{text}");
}

#[test]
fn an_agent_refuses_an_artifact_larger_than_its_package_entry_and_says_so() {
    // The artifact source sends 1 MiB for every hash; the package's tarball is far smaller.
    let objects = hostile(MIB as usize);
    let w = World::packaged();
    let mut net = Net::start(&w);
    for (t, extra) in [("dev-1", vec![]), ("dev-2", vec!["--light"])] {
        let mut args = vec!["--objects", objects.as_str()];
        args.extend(extra);
        net.agent_with(t, "dev", &[], &args);
    }
    let out = net
        .run("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "go", "--timeout", "60s"]);
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the size its package entry records; refusing it"), "{text}");
    // The deploy ends at the first failure; the other agent's ack may come after it.
    let failures: Vec<String> = net.wait_for(|net| {
        let failures: Vec<String> = net
            .log()
            .iter()
            .filter(|e| e["kind"] == "ack")
            .filter_map(|e| e["body"]["ack"]["outcome"]["failed"].as_str().map(String::from))
            .collect();
        (failures.len() == 2).then_some(failures)
    });
    for f in &failures {
        assert!(f.contains("the size its package entry records; refusing it"), "{f}");
    }
    assert!(!net.agent_dir("dev-1").join("current").exists(), "nothing was installed");
}
