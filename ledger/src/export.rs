//! The export file: every entry, optionally every artifact, and a signed head.

use serde::{Deserialize, Serialize};

use crate::bytes::{Hash, Signature};
use crate::entry::canonical_cbor;
use crate::keys::{self, SecretKey};
use crate::state::State;

/// Format tag of this version of the export file.
pub const FORMAT: &str = "pd-export/1";
/// Domain tag of head signatures.
pub const HEAD_DOMAIN: &[u8] = b"pd/head/v1\0";

/// A self-contained export: what `pd-verify` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Always [`FORMAT`].
    pub format: String,
    /// Every entry's exact bytes, in order.
    pub entries: Vec<serde_bytes::ByteBuf>,
    /// Artifacts (present with `--with-artifacts`), sorted by hash.
    pub artifacts: Vec<ExportArtifact>,
    /// Signed statement of the last entry, so truncation is caught.
    pub head: Head,
}

/// One artifact in an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportArtifact {
    /// BLAKE3 of `bytes`.
    pub blake3: Hash,
    /// The artifact.
    pub bytes: serde_bytes::ByteBuf,
}

/// A signed statement: "this ledger had `len` entries ending in `head`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The ledger's id.
    pub ledger_id: Hash,
    /// Number of entries.
    pub len: u64,
    /// Id of the last entry.
    pub head: Hash,
    /// When the statement was signed.
    pub time_ms: u64,
    /// Signer: a key active at the head.
    pub actor: String,
    /// Ed25519 over [`HEAD_DOMAIN`] and the hash of the fields above.
    pub sig: Signature,
}

#[derive(Serialize)]
struct UnsignedHead<'a> {
    ledger_id: &'a Hash,
    len: u64,
    head: &'a Hash,
    time_ms: u64,
    actor: &'a str,
}

/// An export file that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// Not CBOR of an export.
    #[error("not a pd export file: {0}")]
    Malformed(String),
    /// Another format version.
    #[error("export format {0:?} is not supported (this pd-verify reads {FORMAT})")]
    Format(String),
    /// Decodes, but not in canonical form.
    #[error("export file is not in canonical form: bytes were altered")]
    NotCanonical,
}

impl Head {
    /// Signs a head for `state`.
    pub fn sign(state: &State, actor: &str, time_ms: u64, key: &SecretKey) -> Head {
        let mut head = Head {
            ledger_id: state.ledger_id,
            len: state.len,
            head: state.head,
            time_ms,
            actor: actor.to_string(),
            sig: Signature([0; 64]),
        };
        head.sig = key.sign(HEAD_DOMAIN, &head.digest().0);
        head
    }

    fn digest(&self) -> Hash {
        Hash::of(&canonical_cbor(&UnsignedHead {
            ledger_id: &self.ledger_id,
            len: self.len,
            head: &self.head,
            time_ms: self.time_ms,
            actor: &self.actor,
        }))
    }

    /// Checks the signature against `key`.
    pub fn signature_valid(&self, key: &crate::PublicKey) -> bool {
        keys::verify(key, HEAD_DOMAIN, &self.digest().0, &self.sig)
    }
}

impl Export {
    /// Encodes in canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        canonical_cbor(self)
    }

    /// Decodes one canonical export.
    pub fn decode(bytes: &[u8]) -> Result<Export, ExportError> {
        let export: Export =
            ciborium::from_reader(bytes).map_err(|e| ExportError::Malformed(e.to_string()))?;
        if export.format != FORMAT {
            return Err(ExportError::Format(export.format.chars().take(40).collect()));
        }
        // One export has one byte form: any altered byte of framing is caught here.
        if export.encode() != bytes {
            return Err(ExportError::NotCanonical);
        }
        Ok(export)
    }
}
