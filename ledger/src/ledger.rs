//! The appender: a store plus the state folded from it.

use crate::bytes::Hash;
use crate::bytes::PublicKey;
use crate::entry::{Body, SignedEntry, Statement};
use crate::keys::SecretKey;
use crate::merkle::{Sha256, Tree};
use crate::replay::{replay_onto, Pending, ReplayError, ReplayErrorKind, Signatures};
use crate::rules::{check, check_rules, RuleError};
use crate::state::State;
use crate::storage::{LedgerStore, StorageError};

/// Why an append or open failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The entry breaks a rule; nothing was written.
    #[error(transparent)]
    Refused(#[from] RuleError),
    /// Storage failed; nothing was reported appended.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored ledger does not replay.
    #[error("the stored ledger is corrupt at {0}; restore it from an export or mirror")]
    Corrupt(ReplayError),
}

/// A ledger: the only way entries get into a store.
///
/// Architecture Invariant: every entry is checked by [`check`] against the folded state before
/// it is written, and the state is only ever changed by folding written entries. The Merkle
/// tree holds exactly the ids of the written entries.
pub struct Ledger<S: LedgerStore> {
    store: S,
    state: State,
    tree: Tree<Sha256>,
}

impl<S: LedgerStore> Ledger<S> {
    /// Opens a store and folds its entries. Signatures were checked when appended.
    pub fn open(store: S) -> Result<Self, LedgerError> {
        let (state, tree) = fold(&store)?;
        Ok(Ledger { store, state, tree })
    }

    /// The Merkle tree over every entry's id, for checkpoints and proofs.
    pub fn tree(&self) -> &Tree<Sha256> {
        &self.tree
    }

    fn grow(&mut self, entries: &[SignedEntry]) {
        for e in entries {
            self.tree.push(&e.id.0);
        }
        debug_assert_eq!(self.tree.size(), self.state.len);
        debug_assert_eq!(self.tree.root(self.state.len).ok(), Some(self.state.tree.root()));
    }

    /// The folded state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Signs `body` as the next entry (time never goes backwards) and appends it.
    pub fn sign_append(
        &mut self,
        actor: &str,
        key: &SecretKey,
        time_ms: u64,
        body: Body,
    ) -> Result<SignedEntry, LedgerError> {
        let entry = self.sign_next(actor, key, time_ms, body);
        self.append(entry.clone())?;
        Ok(entry)
    }

    /// Signs `body` as a statement based on the whole ledger and places it as the next entry
    /// (time never goes backwards), without appending it.
    pub fn sign_next(&self, actor: &str, key: &SecretKey, time_ms: u64, body: Body) -> SignedEntry {
        let statement = self.sign_statement(actor, key, time_ms, body);
        statement.at(self.state.len, self.state.head, time_ms.max(self.state.last_time_ms))
    }

    /// Signs `body` as a statement based on the whole ledger, for an appender to place.
    pub fn sign_statement(&self, actor: &str, key: &SecretKey, time_ms: u64, body: Body) -> Statement {
        Statement::sign(&self.state.ledger_id, actor, self.state.len, time_ms, body, key)
    }

    /// Starts a batch of statements to place after the last entry (see [`Batch`]).
    pub fn batch(&self) -> Batch {
        Batch { state: self.state.clone(), entries: Vec::new() }
    }

    /// Writes a batch durably, with one flush, without making it visible in [`Ledger::state`]
    /// yet: readers of the state never see an entry that is not on disk. Takes `&self`, so
    /// readers may go on while the disk syncs; [`Ledger::install`] follows.
    pub fn write(&self, batch: &Batch) -> Result<(), StorageError> {
        let Some(first) = batch.entries.first() else { return Ok(()) };
        assert_eq!(first.entry.seq, self.state.len, "a batch is written right after the ledger it began on");
        let slices: Vec<&[u8]> = batch.entries.iter().map(|e| e.bytes.as_slice()).collect();
        self.store.append(first.entry.seq, &slices)
    }

    /// Makes a written batch the ledger's state: folds its entries (checked when they were
    /// placed) into the state, then empties the batch, whose state is now the ledger's, so
    /// the next batch starts from it without copying the state.
    pub fn install(&mut self, batch: &mut Batch) {
        assert_eq!(
            batch.state.len,
            self.state.len + batch.entries.len() as u64,
            "a batch folds its own entries"
        );
        for e in &batch.entries {
            self.state.apply(e);
        }
        self.grow(&batch.entries);
        batch.entries.clear();
        assert!(self.state.head == batch.state.head, "the ledger and the batch folded the same entries");
    }

    /// Whether `batch` starts right after this ledger's last entry (so it may be written next).
    pub fn continues(&self, batch: &Batch) -> bool {
        batch.entries.is_empty() && batch.state.len == self.state.len && batch.state.head == self.state.head
    }

    /// Writes and installs a batch: all of its entries or none.
    pub fn commit(&mut self, mut batch: Batch) -> Result<(), StorageError> {
        self.write(&batch)?;
        self.install(&mut batch);
        Ok(())
    }

    /// Checks and durably appends one entry.
    pub fn append(&mut self, entry: SignedEntry) -> Result<(), LedgerError> {
        check(&self.state, &entry)?;
        self.store.append(entry.entry.seq, &[&entry.bytes])?;
        self.state.apply(&entry);
        self.grow(std::slice::from_ref(&entry));
        Ok(())
    }

    /// Checks and durably appends many entries with one flush: all or none. Rules are checked
    /// in order against the state as it grows; signatures in one parallel batch.
    pub fn append_batch(&mut self, entries: &[SignedEntry]) -> Result<(), LedgerError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let mut next = self.state.clone();
        let mut signatures = Pending::default();
        for e in entries {
            debug_assert_eq!(
                crate::entry::canonical_cbor(&e.entry),
                e.bytes,
                "SignedEntry bytes are its encoding"
            );
            let key = check_rules(&next, e)?;
            signatures.push(&next.ledger_id, e, key);
            next.apply(e);
        }
        signatures.verify().map_err(|e| match e.kind {
            ReplayErrorKind::BadSignature { actor } => {
                LedgerError::Refused(RuleError::BadSignature { actor })
            }
            _ => LedgerError::Corrupt(e),
        })?;
        let slices: Vec<&[u8]> = entries.iter().map(|e| e.bytes.as_slice()).collect();
        self.store.append(first.entry.seq, &slices)?;
        self.state = next;
        self.grow(entries);
        Ok(())
    }

    /// Signs a batch of bodies as consecutive entries, each a statement based on every entry
    /// before it (the batch's own included), without appending them.
    pub fn sign_batch(
        &self,
        actor: &str,
        key: &SecretKey,
        time_ms: u64,
        bodies: Vec<Body>,
    ) -> Vec<SignedEntry> {
        let placed_ms = time_ms.max(self.state.last_time_ms);
        let (mut seq, mut prev) = (self.state.len, self.state.head);
        bodies
            .into_iter()
            .map(|body| {
                let statement = Statement::sign(&self.state.ledger_id, actor, seq, time_ms, body, key);
                let e = statement.at(seq, prev, placed_ms);
                seq += 1;
                prev = e.id;
                e
            })
            .collect()
    }

    /// Every entry, decoded, from `from` on.
    pub fn entries(&self, from: u64) -> impl Iterator<Item = Result<SignedEntry, LedgerError>> + '_ {
        self.store.scan(from).enumerate().map(move |(i, bytes)| {
            let bytes = bytes?;
            SignedEntry::decode(&bytes)
                .map_err(|e| LedgerError::Corrupt(ReplayError { seq: from + i as u64, kind: e.into() }))
        })
    }

    /// Id of the last entry.
    pub fn head(&self) -> Hash {
        self.state.head
    }
}

/// Statements placed after a ledger's last entry, each checked by the rule against the state
/// it follows, not yet written: the appender's group commit. Refused statements are left out
/// and never change the state.
pub struct Batch {
    state: State,
    entries: Vec<SignedEntry>,
}

impl Batch {
    /// The state after the batch's entries.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The entries placed so far.
    pub fn entries(&self) -> &[SignedEntry] {
        &self.entries
    }

    /// Places `statement` next, at `time_ms` (never before the last entry's time), if the
    /// rule and its signature accept it there. `verified` is the key the caller already
    /// checked the signature with (say, on another thread); it is checked again only if the
    /// rule names another key.
    pub fn push(
        &mut self,
        statement: Statement,
        time_ms: u64,
        verified: Option<&PublicKey>,
    ) -> Result<&SignedEntry, RuleError> {
        let st = &self.state;
        let entry = statement.at(st.len, st.head, time_ms.max(st.last_time_ms));
        let key = check_rules(st, &entry)?;
        if verified != Some(&key) && !entry.entry.signature_valid(&st.ledger_id, &key) {
            return Err(RuleError::BadSignature { actor: entry.entry.actor });
        }
        self.state.apply(&entry);
        self.entries.push(entry);
        Ok(self.entries.last().expect("just pushed"))
    }
}

fn fold<S: LedgerStore>(store: &S) -> Result<(State, Tree<Sha256>), LedgerError> {
    let mut state = State::default();
    let mut tree = Tree::new();
    let mut buf = Vec::with_capacity(1024);
    let mut iter = store.scan(0);
    loop {
        // Replay in slices so a large ledger is not held in memory twice.
        buf.clear();
        for bytes in iter.by_ref().take(4096) {
            buf.push(bytes?);
        }
        if buf.is_empty() {
            return Ok((state, tree));
        }
        replay_onto(&mut state, buf.iter().map(|b| b.as_slice()), Signatures::TrustLocalStore)
            .map_err(LedgerError::Corrupt)?;
        for b in &buf {
            tree.push(&Hash::of(b).0);
        }
    }
}
