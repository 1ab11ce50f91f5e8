//! Enrolment requests: how a key's holder hands its public parts to an admin, with proof
//! that they hold the secret, so the ledger can record that the admin never had it.
//!
//! A request is a small JSON document (`pd key gen` writes it, `pd key new --request` and
//! `pd key rotate --request` read it). Its proof is an Ed25519 signature by the key over
//! [`possession_message`], which the ledger keeps as [`Custody::Holder`] and the rule checks
//! again at every replay.

use serde::{Deserialize, Serialize};

use crate::bytes::{PublicKey, Signature};
use crate::entry::{canonical_cbor, Custody, KeyDecl, Role};
use crate::keys::{self, SecretKey};
use crate::limits::{MAX_NAME_BYTES, MAX_OPENPGP_BYTES, MAX_REQUEST_BYTES};
use crate::Hash;

/// Domain tag of possession proofs.
pub const ENROL_DOMAIN: &[u8] = b"pd/enrol/v1\0";

/// The `format` every request names.
pub const REQUEST_FORMAT: &str = "pd-enrolment-request/1";

/// What a possession proof signs: the key's name, its Ed25519 public key and its OpenPGP
/// certificate, in canonical CBOR, hashed with BLAKE3.
pub fn possession_digest(name: &str, public_key: &PublicKey, openpgp: Option<&str>) -> Hash {
    Hash::of(&canonical_cbor(&(name, public_key, openpgp)))
}

/// The full signed message of a possession proof.
pub fn possession_message(name: &str, public_key: &PublicKey, openpgp: Option<&str>) -> Vec<u8> {
    keys::message(ENROL_DOMAIN, &possession_digest(name, public_key, openpgp).0)
}

/// Whether `proof` shows the holder of `public_key` vouches for `name` and `openpgp`.
pub fn proves_possession(
    name: &str,
    public_key: &PublicKey,
    openpgp: Option<&str>,
    proof: &Signature,
) -> bool {
    keys::verify_raw(public_key, &possession_message(name, public_key, openpgp), proof)
}

/// A holder's request to be enrolled (or to replace their key, in a rotation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentRequest {
    /// [`REQUEST_FORMAT`].
    pub format: String,
    /// The name the holder asks for.
    pub name: String,
    /// Ed25519 key for ledger entries.
    pub public_key: PublicKey,
    /// Armored OpenPGP certificate, for package signatures.
    pub openpgp: Option<String>,
    /// Ed25519 signature over [`possession_message`].
    pub proof: Signature,
}

/// A request that cannot be used. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Larger than any request pd writes.
    #[error("the enrolment request is {}, over the limit of {}: is this the .request file `pd key gen` wrote?", crate::limits::human_bytes(*size as u64), crate::limits::human_bytes(*limit as u64))]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not the JSON of a request.
    #[error("not a pd enrolment request ({0}): use the .request file `pd key gen` wrote")]
    Malformed(String),
    /// Another format.
    #[error(
        "enrolment request format {0:?} is not {REQUEST_FORMAT:?}: make it again with this pd's `pd key gen`"
    )]
    Format(String),
    /// A name or certificate over its limit.
    #[error("the enrolment request's {0} is over its limit")]
    FieldTooLarge(&'static str),
    /// The proof does not verify.
    #[error("the enrolment request's proof of possession does not verify: it was altered, or not made by the holder of its key; ask the holder to run `pd key gen` again")]
    BadProof,
}

impl EnrolmentRequest {
    /// A request for `name`, proving possession of `key`.
    pub fn create(name: &str, key: &SecretKey, openpgp: Option<String>) -> EnrolmentRequest {
        let public_key = key.public();
        let proof = key.sign_raw(&possession_message(name, &public_key, openpgp.as_deref()));
        EnrolmentRequest { format: REQUEST_FORMAT.into(), name: name.into(), public_key, openpgp, proof }
    }

    /// The request's text, as written to a `.request` file.
    pub fn to_json(&self) -> String {
        // A struct of strings and hex always serializes.
        let mut text = serde_json::to_string_pretty(self).expect("request serializes");
        text.push('\n');
        text
    }

    /// Decodes and checks a request: bounded, exact format, proof verified. The name is
    /// checked by the ledger's rule when the key is enrolled.
    pub fn decode(bytes: &[u8]) -> Result<EnrolmentRequest, RequestError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge { size: bytes.len(), limit: MAX_REQUEST_BYTES });
        }
        let r: EnrolmentRequest =
            serde_json::from_slice(bytes).map_err(|e| RequestError::Malformed(e.to_string()))?;
        if r.format != REQUEST_FORMAT {
            return Err(RequestError::Format(r.format.chars().take(64).collect()));
        }
        if r.name.len() > MAX_NAME_BYTES {
            return Err(RequestError::FieldTooLarge("name"));
        }
        if r.openpgp.as_ref().is_some_and(|c| c.len() > MAX_OPENPGP_BYTES) {
            return Err(RequestError::FieldTooLarge("OpenPGP certificate"));
        }
        if !proves_possession(&r.name, &r.public_key, r.openpgp.as_deref(), &r.proof) {
            return Err(RequestError::BadProof);
        }
        Ok(r)
    }

    /// The key declaration that enrols this request with `roles` (sorted) and `env`.
    pub fn decl(&self, roles: Vec<Role>, env: Option<String>) -> KeyDecl {
        KeyDecl {
            name: self.name.clone(),
            public_key: self.public_key,
            openpgp: self.openpgp.clone(),
            roles,
            env,
            sets: Vec::new(),
            custody: Custody::Holder(self.proof),
            labels: Vec::new(),
            groups: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EnrolmentRequest {
        EnrolmentRequest::create("carol", &SecretKey::from_seed([4; 32]), Some("CERT".into()))
    }

    #[test]
    fn a_request_round_trips_and_its_proof_verifies() {
        let r = request();
        assert_eq!(EnrolmentRequest::decode(r.to_json().as_bytes()), Ok(r.clone()));
        let decl = r.decl(vec![Role::Approver], None);
        let Custody::Holder(proof) = decl.custody else { panic!("holder custody") };
        assert!(proves_possession("carol", &decl.public_key, Some("CERT"), &proof));
    }

    #[test]
    fn a_changed_name_key_or_certificate_breaks_the_proof() {
        let mut renamed = request();
        renamed.name = "mallory".into();
        let mut recert = request();
        recert.openpgp = Some("OTHER".into());
        let mut rekeyed = request();
        rekeyed.public_key = SecretKey::from_seed([5; 32]).public();
        for r in [renamed, recert, rekeyed] {
            assert_eq!(EnrolmentRequest::decode(r.to_json().as_bytes()), Err(RequestError::BadProof));
        }
    }

    #[test]
    fn malformed_oversized_and_foreign_requests_are_refused() {
        let json = request().to_json();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not a pd enrolment request"),
            (b"{\"format\":1}".to_vec(), "not a pd enrolment request"),
            (json.replace("\"name\"", "\"nam\"").into_bytes(), "not a pd enrolment request"),
            (json.replace("}", ",\"extra\":1}").into_bytes(), "not a pd enrolment request"),
            (json.replace(REQUEST_FORMAT, "pd-enrolment-request/9").into_bytes(), "format"),
            (vec![b' '; MAX_REQUEST_BYTES + 1], "over the limit"),
            (json.replace("\"carol\"", &format!("\"{}\"", "c".repeat(100))).into_bytes(), "name is over"),
            (
                json.replace("\"CERT\"", &format!("\"{}\"", "C".repeat(MAX_OPENPGP_BYTES + 1))).into_bytes(),
                "certificate is over",
            ),
        ];
        for (bytes, want) in cases {
            let err = EnrolmentRequest::decode(&bytes).expect_err("refused").to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
