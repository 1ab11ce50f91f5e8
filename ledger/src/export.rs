//! The export file: every entry, optionally every artifact, and a signed head.

use serde::{Deserialize, Serialize};

use crate::bytes::{Hash, Signature};
use crate::entry::canonical_cbor;
use crate::entry::Role;
use crate::keys::{self, SecretKey};
use crate::state::{KeyState, State};

/// Format tag of this version of the export file.
pub const FORMAT: &str = "pd-export/2";
/// Domain tag of head signatures.
pub const HEAD_DOMAIN: &[u8] = b"pd/head/v2\0";

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

/// What an export carries besides its entries, as its signed head states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contents {
    /// Entries only: an auditor must accept that explicitly (`pd-verify --no-artifacts`).
    EntriesOnly,
    /// Entries and the tarball of every package.
    WithArtifacts,
}

/// A signed statement: "this ledger had `len` entries ending in `head`, and this export
/// carries these contents".
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
    /// Signer: a `log` or `admin` key active at the head ([`Head::check`]).
    pub actor: String,
    /// Whether the export carries every artifact.
    pub contents: Contents,
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
    contents: Contents,
}

/// Why a signed head does not vouch for the entries it comes with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// Entries were dropped or added after signing, or it is another ledger's head.
    #[error("it covers {head_len} entries ending in {head} but the export's {len} entries end in {actual}: entries were dropped, added or replaced")]
    Mismatch {
        /// Entries the head covers.
        head_len: u64,
        /// The head it names.
        head: Hash,
        /// Entries present.
        len: u64,
        /// Where they end.
        actual: Hash,
    },
    /// The signer is not a key of this ledger, or not one active at the head.
    #[error("it is signed by {actor:?}, which is not an active key of this ledger at its head")]
    UnknownSigner {
        /// The named signer.
        actor: String,
    },
    /// The signer may not vouch for heads.
    #[error("it is signed by {actor:?}, a key with roles {roles}: only a log or admin key may sign a head (a cut-off export re-signed by another key looks like this)")]
    NotTrusted {
        /// The signer.
        actor: String,
        /// Its roles.
        roles: String,
    },
    /// The signature does not verify.
    #[error("the signature by {actor:?} does not verify")]
    BadSignature {
        /// The named signer.
        actor: String,
    },
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
    /// Signs a head for `state` stating `contents`. The signer must pass [`Head::check`].
    pub fn sign(state: &State, actor: &str, time_ms: u64, contents: Contents, key: &SecretKey) -> Head {
        let mut head = Head {
            ledger_id: state.ledger_id,
            len: state.len,
            head: state.head,
            time_ms,
            actor: actor.to_string(),
            contents,
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
            contents: self.contents,
        }))
    }

    /// The one rule for heads: it names exactly the state's length and head, and is signed by
    /// a key with the `log` or `admin` role that is active at that head. Any other signer could
    /// cut entries off and vouch for the rest.
    pub fn check(&self, state: &State) -> Result<(), HeadError> {
        if self.len != state.len || self.head != state.head || self.ledger_id != state.ledger_id {
            return Err(HeadError::Mismatch {
                head_len: self.len,
                head: self.head,
                len: state.len,
                actual: state.head,
            });
        }
        let key = Head::signer(state, &self.actor)?;
        if !self.signature_valid(&key.decl.public_key) {
            return Err(HeadError::BadSignature { actor: self.actor.clone() });
        }
        Ok(())
    }

    /// The key `actor` names, if the state lets it sign heads: active at the head, with the
    /// `log` or `admin` role. The signer half of [`Head::check`], for refusing before signing.
    pub fn signer<'s>(state: &'s State, actor: &str) -> Result<&'s KeyState, HeadError> {
        let key = state.active_key(actor).ok_or_else(|| HeadError::UnknownSigner { actor: actor.into() })?;
        if !key.decl.roles.iter().any(|r| matches!(r, Role::Log | Role::Admin)) {
            let roles = key.decl.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
            return Err(HeadError::NotTrusted { actor: actor.into(), roles });
        }
        Ok(key)
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
            ciborium::from_reader(bytes).map_err(|e| ExportError::Malformed(cbor_error(&e)))?;
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

/// A CBOR decoding error in words: where it stopped and why, not the decoder's debug form.
fn cbor_error<T: std::fmt::Debug>(e: &ciborium::de::Error<T>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(_) => "the file ends early (truncated?); export it again".to_string(),
        Error::Syntax(at) => format!("it is not CBOR (bad byte at offset {at})"),
        Error::Semantic(Some(at), what) => format!("{what} (at byte {at})"),
        Error::Semantic(None, what) => what.clone(),
        Error::RecursionLimitExceeded => "it nests too deeply".to_string(),
    }
}
