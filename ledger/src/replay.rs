//! Folding a sequence of entry bytes into [`State`], checking every rule on the way.

use crate::entry::{EncodingError, SignedEntry};
use crate::keys::{verify_batch, SignedMessage};
use crate::rules::{check_rules, RuleError};
use crate::state::State;

/// What to do about Ed25519 signatures while replaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signatures {
    /// Verify every one (in parallel batches): for exports and anything from outside.
    Verify,
    /// Skip them: for the local store, whose entries were fully checked when appended.
    TrustLocalStore,
}

/// The first bad entry met while replaying.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("entry {seq}: {kind}")]
pub struct ReplayError {
    /// Position of the first bad entry.
    pub seq: u64,
    /// What is wrong with it.
    pub kind: ReplayErrorKind,
}

/// What is wrong with an entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayErrorKind {
    /// The bytes are not a canonical entry.
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    /// The entry breaks a rule.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The signature does not verify.
    #[error("signature by {actor:?} does not verify: the entry was altered or signed by another key")]
    BadSignature {
        /// Claimed signer.
        actor: String,
    },
}

/// Fewest signatures worth a thread of their own.
const MIN_PER_THREAD: usize = 256;

/// Signatures verified per batch: bounds memory on huge ledgers.
const CHUNK: usize = 8192;

/// Replays `entries` from an empty state.
pub fn replay<'a, I>(entries: I, signatures: Signatures) -> Result<State, ReplayError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut state = State::default();
    replay_onto(&mut state, entries, signatures)?;
    Ok(state)
}

/// Replays `entries` on top of `state`. On error, `state` holds every entry before the bad one
/// (when verifying signatures, up to the end of the chunk before it).
pub fn replay_onto<'a, I>(state: &mut State, entries: I, signatures: Signatures) -> Result<(), ReplayError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut pending = Pending::default();
    for bytes in entries {
        let seq = state.len;
        let checked =
            SignedEntry::decode(bytes).map_err(|e| ReplayError { seq, kind: e.into() }).and_then(|s| {
                match check_rules(state, &s) {
                    Ok(key) => Ok((s, key)),
                    Err(e) => Err(ReplayError { seq, kind: e.into() }),
                }
            });
        let (signed, key) = match checked {
            Ok(x) => x,
            Err(error) => {
                // An earlier forged signature outranks a later failure.
                pending.verify()?;
                return Err(error);
            }
        };
        if signatures == Signatures::Verify {
            pending.seqs.push((seq, signed.entry.actor.clone()));
            pending.items.push(SignedMessage {
                key,
                message: signed.entry.signed_message(&state.ledger_id),
                sig: signed.entry.sig,
            });
        }
        state.apply(&signed);
        if pending.items.len() >= CHUNK {
            pending.verify()?;
        }
    }
    pending.verify()
}

/// Signatures waiting for a batch check.
#[derive(Default)]
pub(crate) struct Pending {
    seqs: Vec<(u64, String)>,
    items: Vec<SignedMessage>,
}

impl Pending {
    /// Queues the signature of an entry whose rules passed, to be checked against `key`.
    pub(crate) fn push(&mut self, ledger: &crate::Hash, signed: &SignedEntry, key: crate::PublicKey) {
        self.seqs.push((signed.entry.seq, signed.entry.actor.clone()));
        let message = signed.entry.signed_message(ledger);
        self.items.push(SignedMessage { key, message, sig: signed.entry.sig });
    }

    /// Verifies and clears the batch, split over the machine's cores.
    pub(crate) fn verify(&mut self) -> Result<(), ReplayError> {
        if self.items.is_empty() {
            return Ok(());
        }
        // A thread costs about as much as a few signatures: small batches stay on this one.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let threads = cores.min(self.items.len().div_ceil(MIN_PER_THREAD));
        let part = self.items.len().div_ceil(threads);
        let first_bad = if threads == 1 {
            verify_batch(&self.items).err()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .items
                    .chunks(part)
                    .enumerate()
                    .map(|(i, chunk)| (i * part, s.spawn(move || verify_batch(chunk))))
                    .collect();
                // A worker that died proves nothing: count its whole part as bad (fail closed).
                handles
                    .into_iter()
                    .filter_map(|(base, h)| match h.join() {
                        Ok(Ok(())) => None,
                        Ok(Err(j)) => Some(base + j),
                        Err(_) => Some(base),
                    })
                    .min()
            })
        };
        let result = match first_bad {
            None => Ok(()),
            Some(i) => Err(ReplayError {
                seq: self.seqs[i].0,
                kind: ReplayErrorKind::BadSignature { actor: self.seqs[i].1.clone() },
            }),
        };
        self.seqs.clear();
        self.items.clear();
        result
    }
}
