//! Proof files: an inclusion proof (this entry is in the ledger a checkpoint commits to) or a
//! consistency proof (a later checkpoint extends an earlier one), each carrying the signed
//! checkpoint notes it is checked against, so it can be verified offline on its own.
//!
//! Sizes: an inclusion proof in a ledger of `n` entries holds at most `⌈log2 n⌉` hashes, a
//! consistency proof at most `2⌈log2 n⌉`; checking either hashes that many nodes.

use serde::{Deserialize, Serialize};

use crate::bytes::{Hash, PublicKey};
use crate::entry::SignedEntry;
use crate::merkle::{self, Sha256, Tree, TreeHasher};
use crate::note::{self, SignedCheckpoint};
use crate::state::{CheckpointState, State};

/// The format tag of proof files.
pub const PROOF_FORMAT: &str = "pd-proof/v1";

/// A proof file (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// What is proven.
    #[serde(flatten)]
    pub kind: ProofKind,
    /// Verifier keys (`name+id+key`) of the checkpoint signers, as the ledger enrolled them.
    /// Pin the keys you trust instead when you have them from elsewhere.
    pub keys: Vec<String>,
}

/// The two kinds of proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProofKind {
    /// `entry` is leaf `entry.seq` of the tree `checkpoint` signs.
    Inclusion {
        /// The signed checkpoint note.
        checkpoint: String,
        /// The entry's canonical bytes, hex.
        entry: String,
        /// The audit path, leaf side first.
        hashes: Vec<Hash>,
    },
    /// The tree `old` signs is a prefix of the tree `new` signs.
    Consistency {
        /// The earlier signed checkpoint note.
        old: String,
        /// The later signed checkpoint note.
        new: String,
        /// The consistency path.
        hashes: Vec<Hash>,
    },
}

/// Why a proof cannot be made or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The file is malformed.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// A checkpoint note is unreadable.
    #[error(transparent)]
    Note(#[from] note::NoteError),
    /// No trusted key signed a checkpoint.
    #[error("the checkpoint of size {size} carries no valid signature by a trusted key ({keys})")]
    Unsigned {
        /// The checkpoint's size.
        size: u64,
        /// The keys tried.
        keys: String,
    },
    /// The hashes do not connect.
    #[error("{0}")]
    Merkle(#[from] merkle::VerifyError),
    /// The checkpoints are of different ledgers.
    #[error("the checkpoints are of different ledgers ({0} and {1})")]
    Origins(String, String),
    /// The proof cannot be produced from this ledger.
    #[error("{0}")]
    Unavailable(String),
}

/// What a valid proof established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proven {
    /// The ledger (checkpoint origin).
    pub origin: String,
    /// The checkpoint the proof ends at.
    pub size: u64,
    /// Its root.
    pub root: Hash,
    /// Who signed it.
    pub signer: String,
    /// Inclusion: the entry's seq, kind and id.
    pub entry: Option<(u64, String, Hash)>,
    /// Consistency: the earlier checkpoint's size and root.
    pub extends: Option<(u64, Hash)>,
}

impl Proof {
    /// The inclusion proof of entry `entry` (whose bytes are given) under checkpoint `at`.
    pub fn inclusion(
        state: &State,
        tree: &Tree<Sha256>,
        entry: &SignedEntry,
        at: &CheckpointState,
    ) -> Result<Proof, ProofError> {
        let size = at.checkpoint.size;
        if entry.entry.seq >= size {
            return Err(ProofError::Unavailable(format!(
                "checkpoint #{} covers entries 0..{size}, not #{}",
                at.seq, entry.entry.seq
            )));
        }
        let hashes = tree.inclusion_proof(entry.entry.seq, size).map_err(unavailable)?;
        Ok(Proof {
            format: PROOF_FORMAT.into(),
            kind: ProofKind::Inclusion {
                checkpoint: state.signed_note(at).render(),
                entry: hex::encode(&entry.bytes),
                hashes: hashes.into_iter().map(Hash).collect(),
            },
            keys: vec![signer_vkey(state, at)],
        })
    }

    /// The consistency proof from checkpoint note `old` (kept from earlier; it must be of
    /// this ledger and hold here) to checkpoint `new`.
    pub fn consistency(
        state: &State,
        tree: &Tree<Sha256>,
        old: &SignedCheckpoint,
        new: &CheckpointState,
    ) -> Result<Proof, ProofError> {
        let (o, n) = (&old.checkpoint, new.checkpoint.size);
        if o.size > n {
            return Err(ProofError::Unavailable(format!(
                "the old checkpoint has {} entries, more than the new one's {n}",
                o.size
            )));
        }
        let hashes = tree.consistency_proof(o.size, n).map_err(unavailable)?;
        let mut keys = vec![signer_vkey(state, new)];
        if let Some((_, key)) = state.note_signer(old) {
            let vk = state.note_vkey(&key);
            if !keys.contains(&vk) {
                keys.push(vk);
            }
        }
        Ok(Proof {
            format: PROOF_FORMAT.into(),
            kind: ProofKind::Consistency {
                old: old.render(),
                new: state.signed_note(new).render(),
                hashes: hashes.into_iter().map(Hash).collect(),
            },
            keys,
        })
    }

    /// Checks the proof offline. `trusted` pins the signer keys; when empty, the keys in the
    /// file are used (and the caller should say so).
    pub fn verify(&self, trusted: &[(String, PublicKey)]) -> Result<Proven, ProofError> {
        if self.format != PROOF_FORMAT {
            return Err(ProofError::Malformed(format!(
                "format {:?}, expected {PROOF_FORMAT:?}",
                self.format
            )));
        }
        let own: Vec<(String, PublicKey)> =
            self.keys.iter().map(|k| note::parse_vkey(k)).collect::<Result<_, _>>()?;
        let keys = if trusted.is_empty() { own.as_slice() } else { trusted };
        match &self.kind {
            ProofKind::Inclusion { checkpoint, entry, hashes } => {
                let (cp, signer) = signed(checkpoint, keys)?;
                let bytes = hex::decode(entry).map_err(|e| ProofError::Malformed(format!("entry: {e}")))?;
                let e =
                    SignedEntry::decode(&bytes).map_err(|e| ProofError::Malformed(format!("entry: {e}")))?;
                let path: Vec<_> = hashes.iter().map(|h| h.0).collect();
                merkle::verify_inclusion::<Sha256>(
                    e.entry.seq,
                    cp.size,
                    &Sha256::leaf(&e.id.0),
                    &path,
                    &cp.root.0,
                )?;
                Ok(Proven {
                    origin: cp.origin,
                    size: cp.size,
                    root: cp.root,
                    signer,
                    entry: Some((e.entry.seq, e.entry.body.kind().to_string(), e.id)),
                    extends: None,
                })
            }
            ProofKind::Consistency { old, new, hashes } => {
                let (o, _) = signed(old, keys)?;
                let (n, signer) = signed(new, keys)?;
                if o.origin != n.origin {
                    return Err(ProofError::Origins(o.origin, n.origin));
                }
                let path: Vec<_> = hashes.iter().map(|h| h.0).collect();
                merkle::verify_consistency::<Sha256>(o.size, n.size, &path, &o.root.0, &n.root.0)?;
                Ok(Proven {
                    origin: n.origin,
                    size: n.size,
                    root: n.root,
                    signer,
                    entry: None,
                    extends: Some((o.size, o.root)),
                })
            }
        }
    }
}

fn unavailable(e: merkle::ProofError) -> ProofError {
    ProofError::Unavailable(e.to_string())
}

fn signer_vkey(state: &State, c: &CheckpointState) -> String {
    state.note_vkey(state.checkpoint_key(c))
}

/// Parses a signed checkpoint note and finds a trusted key whose signature on it verifies.
pub fn signed(
    note_text: &str,
    keys: &[(String, PublicKey)],
) -> Result<(note::Checkpoint, String), ProofError> {
    let n = SignedCheckpoint::parse(note_text)?;
    // Named as in a verifier key, `NAME+KEYID`: the name is the origin, the id tells the key.
    let signer = n.signatures.iter().find_map(|s| {
        keys.iter()
            .find(|(name, key)| n.checkpoint.signed_by(s, name, key))
            .map(|(name, _)| format!("{name}+{}", hex::encode(s.key_id)))
    });
    match signer {
        Some(name) => Ok((n.checkpoint, name)),
        None => Err(ProofError::Unsigned {
            size: n.checkpoint.size,
            keys: keys.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}
