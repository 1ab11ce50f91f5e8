//! TLS: `pd serve --tls-cert --tls-key` serves HTTPS (rustls), and every HTTP client in pd
//! (CLI, agent, notifier) is built by [`client_builder`], which trusts the platform's roots
//! plus a CA given with `--ca FILE` / `PD_CA` (a private CA, as most fleets have).

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, OnceLock};

/// The extra CA certificates every client trusts, set once at start.
static EXTRA_ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
/// The certificate and key every client presents to a server that asks for one (mTLS).
static IDENTITY: OnceLock<reqwest::Identity> = OnceLock::new();

/// Presents the certificate and private key in `pem` (one file, both PEM) to servers that
/// require client certificates (`pd serve --client-ca`).
pub fn present(pem: &[u8], from: &str) -> Result<()> {
    let id = reqwest::Identity::from_pem(pem)
        .with_context(|| format!("{from} must hold a PEM certificate and its PEM private key"))?;
    IDENTITY.set(id).map_err(|_| anyhow::anyhow!("a client certificate was already set"))
}

/// Trusts the CA certificates in `pem` (one or more) in every client built after this.
pub fn trust(pem: &[u8], from: &str) -> Result<()> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .with_context(|| format!("{from} holds no PEM certificate"))?;
    anyhow::ensure!(!certs.is_empty(), "{from} holds no PEM certificate");
    EXTRA_ROOTS.set(certs).map_err(|_| anyhow::anyhow!("a CA was already set"))
}

/// A reqwest builder that trusts the platform's roots and the CA from [`trust`].
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder();
    if let Some(certs) = EXTRA_ROOTS.get() {
        b = b.tls_certs_merge(certs.iter().cloned());
    }
    match IDENTITY.get() {
        Some(id) => b.identity(id.clone()),
        None => b,
    }
}

/// The server's TLS settings from a PEM certificate chain and its PEM private key; with
/// `client_ca`, every client must present a certificate that CA signed (mutual TLS), so a
/// leaked bearer token alone opens nothing.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .context("the certificate file is not PEM")?;
    anyhow::ensure!(!chain.is_empty(), "the certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("the key file holds no PEM private key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.context("the client CA file is not PEM")?)
                    .context("a client CA certificate")?;
            }
            anyhow::ensure!(!roots.is_empty(), "the client CA file holds no certificate");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("the client CA")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).context("the key does not fit the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server connection: plain (object bytes sent with sendfile) or TLS (rustls encrypts
/// everything, mapped object bytes included, read from their mapping).
pub type Stream = tokio_util::either::Either<
    crate::sendfile::Conn,
    Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
>;
