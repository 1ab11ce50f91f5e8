//! Partial verification: what a light agent checks, defined once.
//!
//! A full replica receives and verifies every entry, so each agent's work per wave grows with
//! the fleet (every other target's ack). A light agent receives only the *control* entries
//! ([`Body::is_control`]: keys, packages, approvals, pushes, rollbacks, retries, settings —
//! never acks or checkpoints) and, beside them, the newest checkpoint. It folds the control
//! entries into a partial [`State`] with the same rule as everyone else (each signature
//! checked, each signer's key and role taken from the control entries before it), so it
//! installs only what a deployer pushed, approvers approved and the author signed.
//!
//! What it cannot see, the log's signature vouches for: a checkpoint entry signed by a `log`
//! key commits to the tree of every entry (as always) *and* to the tree of the control
//! entries alone (`control_size`, `control_root`). The follower checks that commitment
//! against the control entries it folded, so a server cannot hide a revocation, rollback or
//! withdrawal from it without signing a checkpoint that every full replica and `pd-verify`
//! refuse; and it checks each new checkpoint against the one it verified before with an RFC
//! 9162 consistency proof, so the ledger is never rewritten under it. What it takes on the
//! log's word is only what the left-out entries decide (that a version was adopted in the
//! environment before it was promoted and the fleet was full; other targets' keys; the
//! admin quorum behind its own key and that it was not revoked since), as a
//! certificate-transparency client or an Uptane partial-verification ECU does; auditors
//! replay everything.
//!
//! Per wave a light agent receives a handful of entries, one checkpoint and a proof of
//! `⌈log2 n⌉` hashes, and checks as many signatures: O(1) in the number of other targets.
//! Pure: no I/O, no clock.

use crate::bytes::{Hash, PublicKey};
use crate::entry::{Body, KeyDecl, Role, SignedEntry};
use crate::merkle::{verify_consistency, verify_inclusion, Digest32, Sha256, Tree, TreeHasher};
use crate::rules::{self, RuleError};
use crate::state::{CheckpointState, State};

/// Why a light agent refuses what the server sent: the ledger it describes is not one it may
/// trust (a refused control entry, or a checkpoint that does not match).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// A control entry breaks the rule or its signature.
    #[error("control entry #{seq}: {source}")]
    Entry {
        /// Its position in the ledger.
        seq: u64,
        /// Why the rule refused it.
        source: RuleError,
    },
    /// The entries declaring the follower's own key do not hold.
    #[error("the enrolment of this key: {0}")]
    Own(String),
    /// The checkpoint does not hold.
    #[error("checkpoint #{seq}: {problem}")]
    Checkpoint {
        /// Its position in the ledger.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

/// A light agent's verified view of a ledger: its control entries folded, the tree of their
/// ids, and the newest checkpoint it verified.
#[derive(Clone)]
pub struct Follower {
    state: State,
    control: Tree<Sha256>,
    /// Its own key, when a target-only key (so not in `state`), as verified by [`Follower::accept_own`].
    own: Option<KeyDecl>,
}

impl Default for Follower {
    fn default() -> Self {
        Follower { state: State::partial(), control: Tree::new(), own: None }
    }
}

impl Follower {
    /// A follower that has seen nothing yet.
    pub fn new() -> Follower {
        Follower::default()
    }

    /// The partial state: keys, packages, approvals and each slot's desired version, and the
    /// checkpoints verified so far. [`crate::adoption::agent_step`] decides over it.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// How many control entries it folded: where the next page starts.
    pub fn control_len(&self) -> u64 {
        self.control.size()
    }

    /// The newest checkpoint it verified, as (size, root).
    pub fn checkpoint(&self) -> Option<(u64, Hash)> {
        self.state.latest_checkpoint().map(|c| (c.checkpoint.size, c.checkpoint.root))
    }

    /// The active key whose public half is `public_key`: from the control entries, or the
    /// target key verified by [`Follower::accept_own`].
    pub fn key(&self, public_key: &PublicKey) -> Option<&KeyDecl> {
        match self.state.active_key_by_public(public_key) {
            Some(k) => Some(&k.decl),
            None => self.own.as_ref().filter(|d| &d.public_key == public_key),
        }
    }

    /// Verifies the entries that declare a target-only key whose public half is
    /// `public_key` (`key_add`, then the `key_rotate` that set the current key, as
    /// `KeyState::declared_by` lists them), each with its inclusion proof in the newest
    /// checkpoint verified: signed by an admin of the control entries, naming one target key,
    /// ending at `public_key`.
    pub fn accept_own(
        &mut self,
        public_key: &PublicKey,
        entries: &[(SignedEntry, Vec<Digest32>)],
    ) -> Result<(), FollowError> {
        let bad = |problem: String| FollowError::Own(problem);
        let Some((size, root)) = self.checkpoint() else {
            return Err(bad("no checkpoint verified yet".into()));
        };
        let mut decl: Option<KeyDecl> = None;
        for (e, proof) in entries {
            let seq = e.entry.seq;
            if seq >= size
                || verify_inclusion::<Sha256>(seq, size, &Sha256::leaf(&e.id.0), proof, &root.0).is_err()
            {
                return Err(bad(format!("entry #{seq} is not in the checkpoint of {size} entries")));
            }
            let admin =
                crate::adoption::active_with(&self.state, &e.entry.actor, Some((Role::Admin, "change keys")))
                    .map_err(|r| bad(format!("entry #{seq}: {r}")))?;
            if !e.entry.signature_valid(&self.state.ledger_id(), &admin.decl.public_key) {
                return Err(bad(format!(
                    "entry #{seq}: the signature by {:?} does not verify",
                    e.entry.actor
                )));
            }
            decl = match (&e.entry.body, decl) {
                (Body::KeyAdd(d), None) => Some(d.clone()),
                (Body::KeyRotate(r), Some(mut d)) if r.name == d.name => {
                    d.public_key = r.public_key;
                    d.openpgp = r.openpgp.clone();
                    d.custody = r.custody.clone();
                    Some(d)
                }
                (body, _) => return Err(bad(format!("entry #{seq} is a {}, out of place", body.kind()))),
            };
        }
        match decl {
            Some(d) if d.is_target_only() && &d.public_key == public_key => {
                self.own = Some(d);
                Ok(())
            }
            Some(d) => Err(bad(format!("the entries declare {:?}, not this target key", d.name))),
            None => Err(bad("no entries".into())),
        }
    }

    /// Folds the next control entries, in order, each checked by the rule with its signature.
    /// Stops at the first refused one; those before it stay folded.
    pub fn apply(&mut self, entries: &[SignedEntry]) -> Result<(), FollowError> {
        for e in entries {
            rules::check(&self.state, e).map_err(|source| FollowError::Entry { seq: e.entry.seq, source })?;
            self.state.apply(e);
            self.control.push(&e.id.0);
        }
        debug_assert_eq!(self.control.size(), self.state.control_len());
        Ok(())
    }

    /// Verifies `checkpoint` and makes it the newest: a checkpoint entry signed by an active
    /// `log` key, whose control commitment is exactly the control
    /// entries folded before its position, and which extends the one verified before (given
    /// as `held`, which may come from an earlier run) by `consistency`, an RFC 9162 proof.
    pub fn accept_checkpoint(
        &mut self,
        checkpoint: &SignedEntry,
        consistency: &[Digest32],
        held: Option<(u64, Hash)>,
    ) -> Result<(), FollowError> {
        let e = &checkpoint.entry;
        let bad = |problem: String| FollowError::Checkpoint { seq: e.seq, problem };
        let Body::Checkpoint(c) = &e.body else {
            return Err(bad(format!("is a {}, not a checkpoint", e.body.kind())));
        };
        if c.size != e.seq {
            return Err(bad(format!("covers {} entries but stands at #{}", c.size, e.seq)));
        }
        let key = crate::adoption::active_with(&self.state, &e.actor, Some((Role::Log, "sign checkpoints")))
            .map_err(|r| bad(r.to_string()))?
            .decl
            .public_key;
        // The entry's signature covers the whole checkpoint (size, root, control commitment and
        // the note signature's bytes), so it alone authenticates the log's word here; the note
        // signature is for outside C2SP verifiers, and every full replica checks it.
        if !e.signature_valid(&self.state.ledger_id(), &key) {
            return Err(bad(format!("its signature by {:?} does not verify", e.actor)));
        }
        // The commitment counts the control entries before its position: exactly those folded
        // with a lower seq (the follower may already hold newer ones).
        let folded_before = self.state.control_before(c.size);
        if c.control_size != folded_before {
            return Err(bad(format!(
                "commits to {} control entries before it, but the server sent {folded_before}: \
                 it hides control entries or invents them",
                c.control_size
            )));
        }
        let root = self.control.root(c.control_size).map_err(|e| bad(e.to_string()))?;
        if root != c.control_root.0 {
            return Err(bad(
                "its control commitment does not match the control entries the server sent".into()
            ));
        }
        if let Some((size, old)) = held {
            let extends = size <= c.size
                && verify_consistency::<Sha256>(size, c.size, consistency, &old.0, &c.root.0).is_ok()
                && (size != c.size || old == c.root);
            if !extends {
                return Err(bad(format!(
                    "does not extend the checkpoint verified before ({size} entries, root {}): \
                     the ledger was rewritten",
                    old.short()
                )));
            }
        }
        if self.checkpoint().is_none_or(|(size, _)| size < c.size) {
            self.state.checkpoints.push(CheckpointState {
                seq: e.seq,
                signer: e.actor.clone(),
                time_ms: e.time_ms,
                checkpoint: c.clone(),
            });
        }
        Ok(())
    }
}
