//! OpenPGP keys and detached signatures that plain `gpg --verify` accepts (v4, Ed25519).

use std::io::Write;

use pgp::cert::prelude::*;
use pgp::parse::stream::{DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper};
use pgp::parse::Parse;
use pgp::policy::StandardPolicy;
use pgp::serialize::stream::{Armorer, Message, Signer};
use pgp::serialize::SerializeInto;
use pgp::types::HashAlgorithm;
use sequoia_openpgp as pgp;

/// Largest certificate or signature accepted, in bytes.
pub const MAX_ARMORED_BYTES: usize = 64 * 1024;

/// An OpenPGP failure.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The signature does not verify against the certificate.
    #[error("OpenPGP signature does not verify: {0}")]
    BadSignature(String),
    /// A certificate or signature that cannot be used.
    #[error("unusable OpenPGP {what}: {problem}")]
    Invalid {
        /// Certificate, secret key or signature.
        what: &'static str,
        /// Why.
        problem: String,
    },
}

fn invalid(what: &'static str) -> impl FnOnce(pgp::anyhow::Error) -> PgpError {
    move |e| PgpError::Invalid { what, problem: e.to_string() }
}

/// A certificate with its secret keys.
pub struct PgpKey {
    cert: Cert,
}

/// Generates a never-expiring v4 key with an Ed25519 signing subkey.
pub fn generate(user_id: &str) -> Result<PgpKey, PgpError> {
    let (cert, _revocation) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_validity_period(None)
        .add_userid(user_id)
        .add_signing_subkey()
        .generate()
        .map_err(invalid("key generation"))?;
    Ok(PgpKey { cert })
}

impl PgpKey {
    /// Binary serialization including secret keys, for an owner-only key file.
    pub fn to_secret_bytes(&self) -> Result<Vec<u8>, PgpError> {
        self.cert.as_tsk().to_vec().map_err(invalid("secret key"))
    }

    /// Reads a key written by [`PgpKey::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, PgpError> {
        let cert = Cert::from_bytes(bytes).map_err(invalid("secret key"))?;
        if !cert.is_tsk() {
            return Err(PgpError::Invalid {
                what: "secret key",
                problem: "holds no secret key material".into(),
            });
        }
        Ok(PgpKey { cert })
    }

    /// The ASCII-armored public certificate (no secret material).
    pub fn public_armored(&self) -> Result<String, PgpError> {
        let bytes = self.cert.armored().to_vec().map_err(invalid("certificate"))?;
        String::from_utf8(bytes)
            .map_err(|e| PgpError::Invalid { what: "certificate", problem: e.to_string() })
    }

    /// Uppercase hex fingerprint.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// An armored detached signature over `data` (SHA-512, by the signing subkey).
    pub fn sign_detached_armored(&self, data: &[u8]) -> Result<String, PgpError> {
        let policy = StandardPolicy::new();
        let key = self
            .cert
            .keys()
            .unencrypted_secret()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
            .ok_or(PgpError::Invalid { what: "secret key", problem: "no usable signing key".into() })?;
        let keypair = key.key().clone().into_keypair().map_err(invalid("secret key"))?;
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message =
            Armorer::new(message).kind(pgp::armor::Kind::Signature).build().map_err(invalid("signature"))?;
        let mut signer = Signer::new(message, keypair)
            .and_then(|s| s.hash_algo(HashAlgorithm::SHA512))
            .and_then(|s| s.detached().build())
            .map_err(invalid("signature"))?;
        signer
            .write_all(data)
            .map_err(|e| PgpError::Invalid { what: "signature", problem: e.to_string() })?;
        signer.finalize().map_err(invalid("signature"))?;
        String::from_utf8(sink).map_err(|e| PgpError::Invalid { what: "signature", problem: e.to_string() })
    }
}

/// The fingerprint of an armored certificate.
pub fn cert_fingerprint(cert_armored: &str) -> Result<String, PgpError> {
    Ok(public_cert(cert_armored)?.fingerprint().to_hex())
}

/// `A13F…`: the first four hex digits, as the seed prints them.
pub fn short_fingerprint(fpr: &str) -> String {
    format!("{}…", fpr.get(..4).unwrap_or(fpr))
}

fn public_cert(cert_armored: &str) -> Result<Cert, PgpError> {
    if cert_armored.len() > MAX_ARMORED_BYTES {
        return Err(PgpError::Invalid {
            what: "certificate",
            problem: format!("over {MAX_ARMORED_BYTES} bytes"),
        });
    }
    let cert = Cert::from_bytes(cert_armored.as_bytes()).map_err(invalid("certificate"))?;
    if cert.is_tsk() {
        return Err(PgpError::Invalid {
            what: "certificate",
            problem: "it contains secret key material; only public certificates are accepted".into(),
        });
    }
    Ok(cert)
}

/// Only the given certificate is trusted, and one good signature by it is required.
struct Helper {
    cert: Cert,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[pgp::KeyHandle]) -> pgp::Result<Vec<Cert>> {
        Ok(vec![self.cert.clone()])
    }

    fn check(&mut self, structure: MessageStructure) -> pgp::Result<()> {
        for layer in structure {
            if let MessageLayer::SignatureGroup { results } = layer {
                if results.iter().any(|r| r.is_ok()) {
                    return Ok(());
                }
                if let Some(Err(e)) = results.into_iter().next() {
                    return Err(pgp::Error::BadSignature(e.to_string()).into());
                }
            }
        }
        Err(pgp::Error::BadSignature("no signature by the expected key".into()).into())
    }
}

/// Verifies an armored detached signature over `data` by `cert_armored`.
pub fn verify_detached(cert_armored: &str, data: &[u8], sig_armored: &str) -> Result<(), PgpError> {
    if sig_armored.len() > MAX_ARMORED_BYTES {
        return Err(PgpError::Invalid {
            what: "signature",
            problem: format!("over {MAX_ARMORED_BYTES} bytes"),
        });
    }
    let cert = public_cert(cert_armored)?;
    let policy = StandardPolicy::new();
    let mut verifier = DetachedVerifierBuilder::from_bytes(sig_armored.as_bytes())
        .and_then(|b| b.with_policy(&policy, None, Helper { cert }))
        .map_err(|e| PgpError::BadSignature(e.to_string()))?;
    verifier.verify_bytes(data).map_err(|e| PgpError::BadSignature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_and_other_key() {
        let k = generate("a (pd)").unwrap();
        let cert = k.public_armored().unwrap();
        let sig = k.sign_detached_armored(b"tarball").unwrap();
        assert!(sig.starts_with("-----BEGIN PGP SIGNATURE-----"));
        verify_detached(&cert, b"tarball", &sig).unwrap();
        assert!(matches!(verify_detached(&cert, b"tarbalL", &sig), Err(PgpError::BadSignature(_))));
        let other = generate("b (pd)").unwrap();
        let other_sig = other.sign_detached_armored(b"tarball").unwrap();
        assert!(verify_detached(&cert, b"tarball", &other_sig).is_err());
        assert!(verify_detached(&cert, b"tarball", "garbage").is_err());
        assert_eq!(cert_fingerprint(&cert).unwrap(), k.fingerprint());
        assert_eq!(short_fingerprint("A13F99"), "A13F…");
    }

    #[test]
    fn secret_bytes_round_trip_and_public_cert_has_no_secrets() {
        let k = generate("a (pd)").unwrap();
        let back = PgpKey::from_secret_bytes(&k.to_secret_bytes().unwrap()).unwrap();
        assert_eq!(back.fingerprint(), k.fingerprint());
        let public = Cert::from_bytes(k.public_armored().unwrap().as_bytes()).unwrap();
        assert!(!public.is_tsk());
        assert!(PgpKey::from_secret_bytes(k.public_armored().unwrap().as_bytes()).is_err());
        let tsk = String::from_utf8(k.cert.as_tsk().armored().to_vec().unwrap()).unwrap();
        assert!(
            verify_detached(&tsk, b"x", &k.sign_detached_armored(b"x").unwrap()).is_err(),
            "secret certs refused"
        );
    }

    #[test]
    fn gpg_verifies_our_signature() {
        if std::process::Command::new("gpg").arg("--version").output().is_err() {
            eprintln!("skipped: gpg is not installed, so the interoperability check cannot run");
            return;
        }
        let k = generate("pd test <pd@example.invalid>").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir(&gnupg).unwrap();
        let (cert, data, sig) =
            (dir.path().join("cert.asc"), dir.path().join("data.tgz"), dir.path().join("data.tgz.asc"));
        std::fs::write(&cert, k.public_armored().unwrap()).unwrap();
        std::fs::write(&data, b"\x1f\x8bpolicy bytes").unwrap();
        std::fs::write(&sig, k.sign_detached_armored(b"\x1f\x8bpolicy bytes").unwrap()).unwrap();
        let gpg = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("gpg")
                .arg("--batch")
                .arg("--homedir")
                .arg(&gnupg)
                .args(args)
                .output()
                .unwrap()
        };
        let out = gpg(&["--import".as_ref(), cert.as_os_str()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = gpg(&["--verify".as_ref(), sig.as_os_str(), data.as_os_str()]);
        assert!(out.status.success(), "gpg --verify: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&data, b"\x1f\x8bpolicy bytez").unwrap();
        assert!(!gpg(&["--verify".as_ref(), sig.as_os_str(), data.as_os_str()]).status.success());
    }
}
