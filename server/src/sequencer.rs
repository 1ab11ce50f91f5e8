//! The server's decisions, pure over any ledger store: how a group of statements is placed
//! (group commit), when a checkpoint is due, and what a light agent's control page holds.
//! `pd serve`'s writer thread and routes call these, and so does the deterministic
//! simulation (`server/tests/simulation.rs`), so what it checks is what the server runs.
//! No I/O but the ledger store's reads, no clock (`now` is an argument), no randomness.

use pd_ledger::ledger::Batch;
use pd_ledger::merkle::Digest32;
use pd_ledger::{
    Body, Hash, Ledger, LedgerStore, PublicKey, RuleError, SecretKey, SignedEntry, State, Statement,
};

use crate::wire::{self, Receipt};

/// When the server checkpoints, and with which `log` key.
#[derive(Clone, Copy)]
pub struct Checkpointing<'a> {
    /// After this many entries at the latest (0: never).
    pub every: u64,
    /// The key that signs them, with its name.
    pub signer: Option<&'a (String, SecretKey)>,
}

impl Checkpointing<'_> {
    /// Whether to checkpoint at the end of a batch that placed `placed` and left `state`: it
    /// changed what targets run (a push, a rollback, or a retry, which agents act on only
    /// under a checkpoint), enough entries came since the last one, or someone asked and the
    /// end is not covered.
    pub fn due(&self, state: &State, placed: &[SignedEntry], asked: bool) -> bool {
        if self.every == 0 || self.signer.is_none() {
            return false;
        }
        let since = state.latest_checkpoint().map_or(0, |c| c.checkpoint.size);
        let covered = state.latest_checkpoint().is_some_and(|c| c.seq + 1 == state.len());
        if covered || state.is_empty() {
            return false;
        }
        let moves =
            |e: &SignedEntry| matches!(e.entry.body, Body::Push(_) | Body::Rollback(_) | Body::Retry(_));
        asked || placed.iter().any(moves) || state.len() - since >= self.every
    }

    /// Appends to `batch` a checkpoint over everything before it.
    pub fn add(&self, batch: &mut Batch, now: u64) -> Result<(), RuleError> {
        let Some((actor, key)) = self.signer else { return Ok(()) };
        let st = batch.state();
        let body = st.sign_checkpoint(key);
        let statement = Statement::sign(&st.ledger_id(), actor, st.len(), now, body, key);
        batch.push(statement, now, Some(&key.public())).map(|_| ())
    }
}

/// One group commit's placing: each statement after the last entry, with the rule (a refused
/// one leaves the others unaffected), then a checkpoint if one is due. `verified` is the key a
/// statement's signature was already checked with. The caller writes and installs the batch.
pub fn place(
    batch: &mut Batch,
    statements: Vec<(Statement, Option<PublicKey>)>,
    now: u64,
    checkpointing: Checkpointing,
    asked: bool,
) -> Vec<Result<Receipt, RuleError>> {
    let placed = statements
        .into_iter()
        .map(|(statement, verified)| {
            batch.push(statement, now, verified.as_ref()).map(|e| Receipt { seq: e.entry.seq, id: e.id })
        })
        .collect();
    if checkpointing.due(batch.state(), batch.entries(), asked) {
        if let Err(e) = checkpointing.add(batch, now) {
            tracing::warn!("could not write a checkpoint: {e}");
        }
    }
    placed
}

/// What a light agent asks `GET /v1/control` for.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ControlQuery {
    /// Control entries the follower holds: the page starts after them.
    #[serde(default)]
    pub after: u64,
    /// The size of the checkpoint it verified: the consistency proof starts there.
    #[serde(default)]
    pub held: u64,
    /// The follower holds the checkpoint of `held` entries itself: if it is still the
    /// newest, it is not sent again.
    #[serde(default)]
    pub has: bool,
    /// Wait for a checkpoint over more than this many entries (the follower's desired entry
    /// is not under one yet)…
    pub need: Option<u64>,
    /// …or for control entries after `after`, at most this many milliseconds (60 s at most).
    #[serde(default)]
    pub wait_ms: u64,
    /// The follower's public key (hex): a target-only key's declaring entries come with the page.
    pub key: Option<String>,
}

/// Control entries in one page at most; the bytes are bounded by
/// [`crate::limits::PAGE_ENTRY_BYTES`].
pub const MAX_CONTROL_PAGE: usize = 1000;

/// The positions a control page holds, taken from one state (under one read lock).
#[derive(Clone, Debug, Default)]
pub struct ControlPlan {
    control_len: u64,
    seqs: Vec<u64>,
    checkpoint: Option<u64>,
    consistency: Vec<Digest32>,
    own: Vec<(u64, Vec<Digest32>)>,
}

/// Plans the page for `q` over `ledger`: the next control entries, the newest checkpoint
/// (once the page reaches every control entry before it, and unless the follower holds it),
/// a consistency proof from `q.held`, and, for a target-only `key`, the entries declaring
/// it with inclusion proofs (once the checkpoint covers them).
pub fn control_plan<S: LedgerStore>(
    ledger: &Ledger<S>,
    q: &ControlQuery,
    key: Option<&PublicKey>,
) -> Result<ControlPlan, pd_ledger::merkle::ProofError> {
    let st = ledger.state();
    let seqs: Vec<u64> =
        (q.after..st.control_len()).take(MAX_CONTROL_PAGE).filter_map(|i| st.control_seq(i)).collect();
    let reaches = q.after + seqs.len() as u64;
    let cp = st.latest_checkpoint().filter(|c| c.checkpoint.control_size <= reaches);
    let cp = cp.filter(|c| !(q.has && c.checkpoint.size == q.held && key.is_none()));
    let consistency = match cp {
        Some(c) if q.held <= c.checkpoint.size => {
            ledger.tree().consistency_proof(q.held, c.checkpoint.size)?
        }
        _ => Vec::new(),
    };
    let declared = key.and_then(|k| st.active_key_by_public(k)).filter(|k| k.decl.is_target_only());
    let own = match (cp, declared) {
        (Some(c), Some(k)) if k.declared_by.iter().all(|s| *s < c.checkpoint.size) => k
            .declared_by
            .iter()
            .map(|&s| Ok((s, ledger.tree().inclusion_proof(s, c.checkpoint.size)?)))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(ControlPlan { control_len: st.control_len(), seqs, checkpoint: cp.map(|c| c.seq), consistency, own })
}

impl ControlPlan {
    /// The page, with each entry's bytes from `read` (at most
    /// [`crate::limits::PAGE_ENTRY_BYTES`] of entries; a page cut short carries no
    /// checkpoint, which comes with the page that reaches it).
    pub fn page<E>(self, mut read: impl FnMut(u64) -> Result<Vec<u8>, E>) -> Result<wire::ControlPage, E> {
        let mut entries = Vec::with_capacity(self.seqs.len());
        let mut bytes = 0;
        for seq in self.seqs {
            let entry = read(seq)?;
            if !entries.is_empty() && bytes + entry.len() > crate::limits::PAGE_ENTRY_BYTES {
                return Ok(wire::ControlPage {
                    control_len: self.control_len,
                    entries,
                    ..Default::default()
                });
            }
            bytes += entry.len();
            entries.push(serde_bytes::ByteBuf::from(entry));
        }
        let hashes = |v: Vec<Digest32>| v.into_iter().map(Hash).collect();
        Ok(wire::ControlPage {
            control_len: self.control_len,
            entries,
            checkpoint: self.checkpoint.map(&mut read).transpose()?.map(serde_bytes::ByteBuf::from),
            consistency: hashes(self.consistency),
            own: self
                .own
                .into_iter()
                .map(|(seq, proof)| Ok((serde_bytes::ByteBuf::from(read(seq)?), hashes(proof))))
                .collect::<Result<_, E>>()?,
        })
    }
}

/// The last entry declaring `key`, if it is a target-only key no checkpoint covers yet.
pub fn uncovered_target_key(state: &State, key: &PublicKey) -> Option<u64> {
    let last = *state.active_key_by_public(key).filter(|k| k.decl.is_target_only())?.declared_by.last()?;
    let covered = state.latest_checkpoint().is_some_and(|c| c.checkpoint.size > last);
    (!covered).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pd_ledger::storage::MemStore;
    use pd_ledger::{Push, Retry, Rollback};

    /// Agents act on what changes what targets run only under a checkpoint, so a batch with
    /// one of those entries ends with one at once; an ack waits for `checkpoint_every`.
    #[test]
    fn a_checkpoint_follows_every_push_rollback_and_retry_at_once() {
        let d = pd_ledger::testkit::deployed(MemStore::default());
        // Any key: checkpoints are due only where the server can sign them.
        let signer = ("admin".to_string(), SecretKey::from_seed([1; 32]));
        let (env, version, package, reason) = ("dev".to_string(), d.version, d.package, "r".to_string());
        let bodies = [
            (
                Body::Push(Push {
                    env: env.clone(),
                    version,
                    package,
                    waves: Vec::new(),
                    reason: reason.clone(),
                }),
                true,
            ),
            (Body::Rollback(Rollback { env: env.clone(), version, package, reason: reason.clone() }), true),
            (Body::Retry(Retry { env, version, package, reason }), true),
            (d.ack(), false),
        ];
        let state = d.ledger.state();
        let cp = Checkpointing { every: 1000, signer: Some(&signer) };
        for (body, due) in bodies {
            let kind = format!("{body:?}");
            // Only the kind matters here, not whether the rule would take it.
            let entry = d.ledger.sign_next("admin", &d.admin, 1, body);
            assert_eq!(cp.due(state, std::slice::from_ref(&entry), false), due, "{kind}");
            assert!(cp.due(state, std::slice::from_ref(&entry), true), "asked, {kind}");
        }
        assert!(!cp.due(state, &[], false), "nothing placed, nothing asked");
    }
}
