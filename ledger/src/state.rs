//! The state derived by folding entries. Never stored: always rebuilt from the ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::bytes::{Hash, PublicKey};
use crate::entry::{
    Body, Checkpoint, Custody, EnvPolicy, KeyDecl, Outcome, Package, RevokeKind, Role, SignedEntry,
};
use crate::keys::SecretKey;
use crate::limits::STATEMENT_WINDOW;
use crate::merkle::{Frontier, Sha256};
use crate::note::{self, SignedCheckpoint};
use crate::rollout::Rollout;
use crate::version::Version;

/// Everything the ledger says, folded up to `len` entries. Its fields are read through
/// accessors, and what they mean for adoption, promotion and installs is decided once, in
/// [`crate::adoption`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    pub(crate) ledger_id: Hash,
    pub(crate) envs: Vec<String>,
    pub(crate) approvals_required: u32,
    pub(crate) admin_approvals: u32,
    pub(crate) len: u64,
    pub(crate) head: Hash,
    pub(crate) last_time_ms: u64,
    pub(crate) keys: BTreeMap<String, KeyState>,
    pub(crate) proposals: BTreeMap<u64, Proposal>,
    /// Every package, in version order (which is also append order).
    pub(crate) packages: Vec<PackageState>,
    pub(crate) env: BTreeMap<String, EnvState>,
    pub(crate) checkpoints: Vec<CheckpointState>,
    /// Every rollout step, in order ([`crate::rollout::describe`]).
    pub(crate) timeline: Vec<crate::rollout::Step>,
    #[serde(skip)]
    pub(crate) tree: Frontier<Sha256>,
    /// The tree of the control entries' ids ([`State::is_control`]), which checkpoints commit to.
    #[serde(skip)]
    pub(crate) control: Frontier<Sha256>,
    /// The seq of each control entry, in order: where a light agent's next page starts.
    #[serde(skip)]
    control_seqs: Vec<u64>,
    /// Folded from control entries only (a light agent's view, see [`crate::partial`]): the
    /// rule skips what only the entries left out could decide, and `tree` stays empty.
    #[serde(skip)]
    pub(crate) partial: bool,
    #[serde(skip)]
    by_hash: HashMap<Hash, usize>,
    /// Every public key ever enrolled (current or rotated away), with its name.
    #[serde(skip)]
    by_public: HashMap<PublicKey, String>,
    /// The policy set each packaged file path belongs to.
    #[serde(skip)]
    path_set: HashMap<String, String>,
    /// The digests of the statements of the last [`STATEMENT_WINDOW`] entries.
    #[serde(skip)]
    pub(crate) recent: Recent,
}

/// The statement digests of the newest [`STATEMENT_WINDOW`] entries, in order and as a set:
/// what the rule needs to refuse a replayed statement (see [`crate::rules`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Recent {
    order: VecDeque<u128>,
    set: HashSet<u128>,
}

impl Recent {
    /// A digest shortened to 128 bits: a collision only refuses a statement, whose signer
    /// then signs a fresh one.
    fn short(digest: &Hash) -> u128 {
        u128::from_le_bytes(digest.0[..16].try_into().expect("16 of 32 bytes"))
    }

    /// Whether a statement with this digest is among the newest entries.
    pub(crate) fn contains(&self, digest: &Hash) -> bool {
        self.set.contains(&Self::short(digest))
    }

    fn push(&mut self, digest: &Hash) {
        let short = Self::short(digest);
        self.order.push_back(short);
        self.set.insert(short);
        if self.order.len() as u64 > STATEMENT_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        debug_assert!(self.set.len() <= self.order.len());
    }
}

/// A checkpoint entry.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointState {
    /// Entry that recorded it.
    pub seq: u64,
    /// Key that signed it.
    pub signer: String,
    /// When.
    pub time_ms: u64,
    /// As recorded.
    pub checkpoint: Checkpoint,
}

/// A name's key and its life.
#[derive(Clone, Debug, Serialize)]
pub struct KeyState {
    /// As enrolled, with the current key of the last rotation.
    pub decl: KeyDecl,
    /// Entry that enrolled it.
    pub added_seq: u64,
    /// First entry the current key may sign (after `added_seq` once rotated).
    pub since_seq: u64,
    /// The entries whose bodies declare the key as it is now: its enrolment (genesis, or the
    /// `key_add`, a proposal's included) and the `key_rotate` that set the current key, if
    /// any. A light agent verifies its own key from these (see [`crate::partial`]).
    pub declared_by: Vec<u64>,
    /// Keys this name had before, oldest first.
    pub past: Vec<PastKey>,
    /// Entry that revoked it, and why.
    pub revoked: Option<Revocation>,
}

/// A key a name had before a rotation.
#[derive(Clone, Debug, Serialize)]
pub struct PastKey {
    /// Its Ed25519 key.
    pub public_key: PublicKey,
    /// Its OpenPGP certificate.
    pub openpgp: Option<String>,
    /// Who generated it.
    pub custody: Custody,
    /// First entry it could sign.
    pub since_seq: u64,
    /// The entry after the last one it could sign (the rotation's effect, plus one).
    pub until_seq: u64,
    /// How it ended.
    pub ended: RevokeKind,
}

/// The public parts a name signed with at one entry.
#[derive(Clone, Copy, Debug)]
pub struct KeyAt<'a> {
    /// Ed25519 key.
    pub public_key: &'a PublicKey,
    /// OpenPGP certificate.
    pub openpgp: Option<&'a str>,
    /// Who generated it.
    pub custody: &'a Custody,
}

/// A revocation.
#[derive(Clone, Debug, Serialize)]
pub struct Revocation {
    /// Entry from which it took effect.
    pub seq: u64,
    /// Compromised or left.
    pub kind: RevokeKind,
    /// Why.
    pub reason: String,
}

/// A key change waiting for more admins.
#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    /// The proposing entry.
    pub seq: u64,
    /// Its id, which approvals name.
    pub id: Hash,
    /// The admin who proposed it (counts as its first approval).
    pub proposer: String,
    /// When.
    pub time_ms: u64,
    /// The change: `KeyAdd`, `KeyRotate` or `KeyRevoke`.
    pub change: Body,
    /// Further admins who approved it, in order.
    pub approvals: Vec<String>,
}

/// An approval or ack signed by a key the admin generated, so not independent of the admin.
#[derive(Clone, Debug, Serialize)]
pub struct Dependent {
    /// `approval` or `ack`.
    pub act: &'static str,
    /// The signer.
    pub actor: String,
    /// The version approved or acknowledged.
    pub version: Version,
    /// The entry.
    pub seq: u64,
}

impl std::fmt::Display for Dependent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {} of {} (#{}): key created in admin's custody (not independent)",
            self.act, self.actor, self.version, self.seq
        )
    }
}

/// A package and its approvals.
#[derive(Clone, Debug, Serialize)]
pub struct PackageState {
    /// Entry that recorded it.
    pub seq: u64,
    /// Key that signed it.
    pub author: String,
    /// When.
    pub time_ms: u64,
    /// As recorded.
    pub package: Package,
    /// Valid approvals, in order.
    pub approvals: Vec<Approval>,
    /// The entry that withdrew it, if one did.
    pub withdrawn: Option<Withdrawn>,
    /// Approvers' overrides of freeze windows for it.
    pub overrides: Vec<Override>,
}

/// An approver's override of an environment's freeze windows for one package.
#[derive(Clone, Debug, Serialize)]
pub struct Override {
    /// Environment.
    pub env: String,
    /// Approver's key name.
    pub approver: String,
    /// Entry that recorded it.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// A package's withdrawal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Withdrawn {
    /// The withdrawing entry.
    pub seq: u64,
    /// Who withdrew it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl PackageState {
    /// Approvals that count: not voided by a compromised-key revocation.
    pub fn counted_approvals(&self) -> usize {
        self.approvals.iter().filter(|a| a.void.is_none()).count()
    }
}

/// One approval.
#[derive(Clone, Debug, Serialize)]
pub struct Approval {
    /// Approver's key name.
    pub approver: String,
    /// Entry that recorded it.
    pub seq: u64,
    /// When.
    pub time_ms: u64,
    /// Why.
    pub reason: String,
    /// Whether the key that signed it was generated by its holder.
    pub independent: bool,
    /// The compromised-key revocation that made it stop counting, if any.
    pub void: Option<u64>,
}

/// How a version became desired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A `push`.
    Push,
    /// A `rollback`.
    Rollback,
}

/// A desired version of a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// Version.
    pub version: Version,
    /// Tarball BLAKE3.
    pub package: Hash,
    /// Entry that made it desired.
    pub seq: u64,
    /// When.
    pub time_ms: u64,
    /// Push or rollback.
    pub via: Via,
}

/// The newest version a target acknowledged as loaded in a slot.
#[derive(Clone, Debug, Serialize)]
pub struct Loaded {
    /// Version.
    pub version: Version,
    /// Tarball BLAKE3.
    pub package: Hash,
    /// The ack's entry.
    pub seq: u64,
    /// When the target signed that ack, by its own clock (the clock of its heartbeats).
    pub signed_ms: u64,
}

/// A target's latest report in one slot.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// Version reported.
    pub version: Version,
    /// Tarball BLAKE3 reported.
    pub package: Hash,
    /// Loaded or failed.
    pub outcome: Outcome,
    /// Entry of the report.
    pub seq: u64,
    /// When.
    pub time_ms: u64,
    /// Whether the key that signed it was generated by its holder.
    pub independent: bool,
    /// The newest version it acknowledged loaded here (this one, or one before a failure).
    pub loaded: Option<Loaded>,
}

/// One environment: its policy and a slot per policy set.
#[derive(Clone, Debug, Serialize)]
pub struct EnvState {
    pub(crate) policy: EnvPolicy,
    pub(crate) sets: BTreeMap<String, Slot>,
}

impl EnvState {
    /// Enrolled targets each slot needs before a push, and acks before adoption.
    pub fn min_targets(&self) -> u32 {
        self.policy.min_targets
    }

    /// Its fleet, rollout and approval policy.
    pub fn policy(&self) -> &EnvPolicy {
        &self.policy
    }

    /// The slots, by policy set.
    pub fn sets(&self) -> &BTreeMap<String, Slot> {
        &self.sets
    }
}

/// One policy set in one environment: what its targets should run, and what they said.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Slot {
    pub(crate) desired: Option<Desired>,
    pub(crate) history: Vec<Desired>,
    pub(crate) reports: BTreeMap<String, TargetReport>,
    /// The newest `retry` of the desired version: failures before it stop counting.
    pub(crate) retry_seq: Option<u64>,
    /// The rollout of the newest push (see [`crate::rollout::active`]).
    pub(crate) rollout: Option<Rollout>,
    /// Versions that were through this slot's environment ([`crate::rollout::through`]), or
    /// had gone out to every target at once, when a later entry replaced them: what a
    /// rollback may return to.
    pub(crate) through: BTreeSet<Version>,
}

impl Slot {
    /// The version targets should run now.
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    /// Every desired version, oldest first (the current one last).
    pub fn history(&self) -> &[Desired] {
        &self.history
    }

    /// A target's latest report.
    pub fn report(&self, target: &str) -> Option<&TargetReport> {
        self.reports.get(target)
    }

    /// Every target's latest report.
    pub fn reports(&self) -> &BTreeMap<String, TargetReport> {
        &self.reports
    }

    /// The newest `retry` entry of the desired version.
    pub fn retry_seq(&self) -> Option<u64> {
        self.retry_seq
    }

    /// The rollout of the desired version, when a push made it desired (any later push,
    /// rollback or promotion replaces or clears it).
    pub fn rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref()
    }

    /// Whether `version` was through this environment when a later entry replaced it.
    pub fn was_through(&self, version: Version) -> bool {
        self.through.contains(&version)
    }
}

impl State {
    /// The genesis entry's random id.
    pub fn ledger_id(&self) -> Hash {
        self.ledger_id
    }

    /// Environments in promotion order.
    pub fn envs(&self) -> &[String] {
        &self.envs
    }

    /// Distinct approvals a package needs.
    pub fn approvals_required(&self) -> u32 {
        self.approvals_required
    }

    /// Distinct admins a key change needs, the proposer included.
    pub fn admin_approvals(&self) -> u32 {
        self.admin_approvals
    }

    /// Number of entries folded: the next entry's `seq`.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was folded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Id of the last entry folded (zero when empty).
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Time of the last entry folded.
    pub fn last_time_ms(&self) -> u64 {
        self.last_time_ms
    }

    /// Every key ever enrolled, by name.
    pub fn keys(&self) -> &BTreeMap<String, KeyState> {
        &self.keys
    }

    /// Key changes waiting for more admins, by the seq of the proposing entry.
    pub fn proposals(&self) -> &BTreeMap<u64, Proposal> {
        &self.proposals
    }

    /// Every package, in version order (which is also append order).
    pub fn packages(&self) -> &[PackageState] {
        &self.packages
    }

    /// Every checkpoint, in order.
    pub fn checkpoints(&self) -> &[CheckpointState] {
        &self.checkpoints
    }

    /// The right edge of the Merkle tree over the ids of the entries folded.
    pub fn tree(&self) -> &Frontier<Sha256> {
        &self.tree
    }

    /// An environment's fleet settings and slots.
    pub fn env(&self, env: &str) -> Option<&EnvState> {
        self.env.get(env)
    }

    /// The slot of policy set `set` in `env` (none before anything of the set was pushed there).
    pub fn slot(&self, env: &str, set: &str) -> Option<&Slot> {
        self.env.get(env).and_then(|e| e.sets.get(set))
    }

    /// The version desired for `set` in `env`.
    pub fn desired(&self, env: &str, set: &str) -> Option<&Desired> {
        self.slot(env, set).and_then(Slot::desired)
    }

    /// Every policy set that has a package, in the order of their first package.
    pub fn sets(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.packages.iter().map(|p| p.package.name.as_str()).filter(|n| seen.insert(*n)).collect()
    }

    /// The policy set a packaged file path belongs to.
    pub fn set_of_path(&self, path: &str) -> Option<&str> {
        self.path_set.get(path).map(String::as_str)
    }

    /// The package with this version.
    pub fn package(&self, version: Version) -> Option<&PackageState> {
        self.packages.binary_search_by(|p| p.package.version.cmp(&version)).ok().map(|i| &self.packages[i])
    }

    /// The package whose tarball has this BLAKE3.
    pub fn package_by_hash(&self, hash: &Hash) -> Option<&PackageState> {
        self.by_hash.get(hash).map(|&i| &self.packages[i])
    }

    /// The OpenPGP certificate a package's signature must verify with: its author's at the
    /// time it was packaged.
    pub fn package_cert(&self, pkg: &PackageState) -> Option<&str> {
        self.key_at(&pkg.author, pkg.seq).and_then(|k| k.openpgp)
    }

    /// The newest package.
    pub fn latest_package(&self) -> Option<&PackageState> {
        self.packages.last()
    }

    /// The key with this name if it is enrolled and not revoked.
    pub fn active_key(&self, name: &str) -> Option<&KeyState> {
        self.keys.get(name).filter(|k| k.revoked.is_none())
    }

    /// The active key whose current Ed25519 key is `public_key`.
    pub fn active_key_by_public(&self, public_key: &PublicKey) -> Option<&KeyState> {
        let name = self.by_public.get(public_key)?;
        self.active_key(name).filter(|k| &k.decl.public_key == public_key)
    }

    /// Whether `public_key` was ever enrolled, under any name, current or rotated away.
    pub fn public_key_used(&self, public_key: &PublicKey) -> bool {
        self.by_public.contains_key(public_key)
    }

    /// The public parts `name` signed with at entry `seq`.
    pub fn key_at(&self, name: &str, seq: u64) -> Option<KeyAt<'_>> {
        let k = self.keys.get(name)?;
        match k.past.iter().find(|p| p.since_seq <= seq && seq < p.until_seq) {
            Some(p) => {
                Some(KeyAt { public_key: &p.public_key, openpgp: p.openpgp.as_deref(), custody: &p.custody })
            }
            None => Some(KeyAt {
                public_key: &k.decl.public_key,
                openpgp: k.decl.openpgp.as_deref(),
                custody: &k.decl.custody,
            }),
        }
    }

    /// Active keys holding `role`.
    pub fn active_with<'a>(&'a self, role: Role) -> impl Iterator<Item = &'a KeyState> + 'a {
        self.keys.values().filter(move |k| k.revoked.is_none() && k.decl.roles.contains(&role))
    }

    /// The distinct active admins behind a proposal, with `approver` added: it takes effect
    /// once this reaches [`State::admin_approvals`].
    pub fn proposal_support(&self, p: &Proposal, approver: &str) -> usize {
        let mut names: BTreeSet<&str> = p.approvals.iter().map(String::as_str).collect();
        names.insert(&p.proposer);
        names.insert(approver);
        names
            .into_iter()
            .filter(|n| self.active_key(n).is_some_and(|k| k.decl.roles.contains(&Role::Admin)))
            .count()
    }

    /// Every slot, by environment and set.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.env.values().flat_map(|e| e.sets.values())
    }

    /// Whether a version was ever desired in any environment.
    pub fn ever_pushed(&self, version: Version) -> bool {
        self.slots().any(|s| s.history.iter().any(|d| d.version == version))
    }

    /// Approvals and current acks signed by keys in admin custody: acts an auditor should not
    /// count as independent of the admin.
    pub fn not_independent(&self) -> Vec<Dependent> {
        let approvals = self.packages.iter().flat_map(|p| {
            p.approvals.iter().filter(|a| !a.independent && a.void.is_none()).map(|a| Dependent {
                act: "approval",
                actor: a.approver.clone(),
                version: p.package.version,
                seq: a.seq,
            })
        });
        let acks = self.slots().flat_map(|e| {
            e.reports.iter().filter(|(_, r)| !r.independent).map(|(name, r)| Dependent {
                act: "ack",
                actor: name.clone(),
                version: r.version,
                seq: r.seq,
            })
        });
        let mut all: Vec<Dependent> = approvals.chain(acks).collect();
        all.sort_by_key(|d| d.seq);
        all
    }

    /// Active target keys of an environment, whatever sets they follow.
    pub fn env_targets<'a>(&'a self, env: &'a str) -> impl Iterator<Item = &'a KeyState> + 'a {
        self.keys.values().filter(move |k| {
            k.revoked.is_none() && k.decl.roles.contains(&Role::Target) && k.decl.env.as_deref() == Some(env)
        })
    }

    /// Active target keys of an environment that follow policy set `set`.
    pub fn targets<'a>(&'a self, env: &'a str, set: &'a str) -> impl Iterator<Item = &'a KeyState> + 'a {
        self.env_targets(env).filter(move |k| k.decl.follows(set))
    }

    /// The fleet minimum of an environment.
    pub fn min_targets(&self, env: &str) -> u32 {
        self.env.get(env).map_or(1, |e| e.policy.min_targets)
    }

    /// An environment's policy.
    pub fn policy(&self, env: &str) -> Option<&EnvPolicy> {
        self.env.get(env).map(|e| &e.policy)
    }

    /// Whether a package has the ledger's default count of approvals (an environment's
    /// approval policy may ask for more: [`crate::rollout::approvals_met`]).
    pub fn is_approved(&self, pkg: &PackageState) -> bool {
        pkg.counted_approvals() >= self.approvals_required as usize
    }

    /// Index of an environment in promotion order.
    pub fn env_index(&self, env: &str) -> Option<usize> {
        self.envs.iter().position(|e| e == env)
    }

    /// The origin line of this ledger's checkpoints, which is also the note key name every
    /// checkpoint signature carries.
    pub fn origin(&self) -> String {
        note::origin(&self.ledger_id)
    }

    /// The checkpoint text for the first `size` entries with head `root`.
    pub fn checkpoint_note(&self, size: u64, root: Hash) -> note::Checkpoint {
        note::Checkpoint { origin: self.origin(), size, root, extensions: Vec::new() }
    }

    /// The signed-note verifier key of a ledger key: named by the origin.
    pub fn note_vkey(&self, key: &crate::bytes::PublicKey) -> String {
        note::vkey(&self.origin(), key)
    }

    /// A checkpoint over every entry folded, signed with `key` (whose holder needs the log
    /// role) under the origin's name.
    pub fn sign_checkpoint(&self, key: &SecretKey) -> Body {
        assert!(!self.partial, "a checkpoint is signed over the whole ledger");
        let (size, root) = (self.len, Hash(self.tree.root()));
        let note_sig = self.checkpoint_note(size, root).sign(&self.origin(), key).sig;
        let (control_size, control_root) = (self.control.size(), Hash(self.control.root()));
        Body::Checkpoint(Checkpoint { size, root, control_size, control_root, note_sig })
    }

    /// Whether an entry with `body`, appended now, is a *control* entry: one that can change
    /// what some target may run. Every kind is, except the targets' acks, the log's
    /// checkpoints, and key changes of target-only keys (each target's enrolment decides
    /// nothing for the others). Light agents follow only these (see [`crate::partial`]), so
    /// neither a wave of acks nor the fleet's size grows what each one receives.
    pub fn is_control(&self, body: &Body) -> bool {
        let target_only = |name: &str| self.keys.get(name).is_some_and(|k| k.decl.is_target_only());
        match body {
            Body::Ack(_) | Body::Checkpoint(_) => false,
            Body::KeyAdd(d) => !d.is_target_only(),
            Body::KeyRotate(r) => !target_only(&r.name),
            Body::KeyRevoke(r) => !target_only(&r.name),
            Body::KeyApprove(a) => self.proposals.get(&a.seq).is_none_or(|p| self.is_control(&p.change)),
            _ => true,
        }
    }

    /// An empty state that folds control entries only: a light agent's (see [`crate::partial`]).
    pub fn partial() -> State {
        State { partial: true, ..State::default() }
    }

    /// Whether this state was folded from control entries only.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// How many control entries were folded.
    pub fn control_len(&self) -> u64 {
        self.control.size()
    }

    /// How many of the folded control entries lie before position `seq`.
    pub fn control_before(&self, seq: u64) -> u64 {
        self.control_seqs.partition_point(|&s| s < seq) as u64
    }

    /// The seq of the `index`th control entry (from 0).
    pub fn control_seq(&self, index: u64) -> Option<u64> {
        self.control_seqs.get(usize::try_from(index).ok()?).copied()
    }

    /// The Ed25519 key that signed a checkpoint entry.
    pub fn checkpoint_key(&self, c: &CheckpointState) -> &PublicKey {
        // A checkpoint folded only after its signer's key verified, so the key is known.
        self.key_at(&c.signer, c.seq).expect("a folded checkpoint's signer is enrolled").public_key
    }

    /// A checkpoint entry as a C2SP signed note, ready to hand out.
    pub fn signed_note(&self, c: &CheckpointState) -> SignedCheckpoint {
        let key = self.checkpoint_key(c);
        let origin = self.origin();
        SignedCheckpoint {
            checkpoint: self.checkpoint_note(c.checkpoint.size, c.checkpoint.root),
            signatures: vec![note::NoteSignature {
                key_id: note::key_id(&origin, key),
                name: origin,
                sig: c.checkpoint.note_sig,
            }],
        }
    }

    /// The name and key of the ledger key (of any key ever enrolled, rotated ones included)
    /// whose signature on `n` verifies under this ledger's origin, if any.
    pub fn note_signer(&self, n: &SignedCheckpoint) -> Option<(String, PublicKey)> {
        let origin = self.origin();
        n.signatures.iter().filter(|s| s.name == origin).find_map(|s| {
            self.keys.values().find_map(|k| {
                std::iter::once(&k.decl.public_key)
                    .chain(k.past.iter().map(|p| &p.public_key))
                    .find(|key| n.checkpoint.signed_by(s, &origin, key))
                    .map(|key| (k.decl.name.clone(), *key))
            })
        })
    }

    /// Every rollout step (pushes, waves, gates, bakes, freeze overrides, rollbacks), in order.
    pub fn timeline(&self) -> &[crate::rollout::Step] {
        &self.timeline
    }

    /// The newest checkpoint.
    pub fn latest_checkpoint(&self) -> Option<&CheckpointState> {
        self.checkpoints.last()
    }

    /// Folds one entry that [`crate::check`] accepted.
    pub fn apply(&mut self, signed: &SignedEntry) {
        let e = &signed.entry;
        let control = self.is_control(&e.body);
        assert!(
            e.seq == self.len || self.partial && e.seq > self.len && control,
            "apply: entries fold in order (control entries, in a partial state)"
        );
        match &e.body {
            Body::Genesis(g) => {
                self.ledger_id = g.ledger_id;
                self.envs = g.envs.clone();
                self.approvals_required = g.approvals_required;
                self.admin_approvals = g.admin_approvals;
                for env in &g.envs {
                    let state = EnvState {
                        policy: EnvPolicy::with_min_targets(g.min_targets),
                        sets: BTreeMap::new(),
                    };
                    self.env.insert(env.clone(), state);
                }
                for k in &g.keys {
                    self.add_key(k, e.seq, e.seq);
                }
            }
            b if b.needs_admin_quorum() && self.admin_approvals > 1 => {
                let p = Proposal {
                    seq: e.seq,
                    id: signed.id,
                    proposer: e.actor.clone(),
                    time_ms: e.time_ms,
                    change: e.body.clone(),
                    approvals: Vec::new(),
                };
                self.proposals.insert(e.seq, p);
            }
            Body::KeyAdd(_) | Body::KeyRotate(_) | Body::KeyRevoke(_) => {
                self.apply_key_change(&e.body, e.seq, e.seq)
            }
            Body::KeyApprove(a) => {
                let complete = self.proposals.get(&a.seq).map(|p| self.proposal_support(p, &e.actor));
                if complete.is_some_and(|n| n >= self.admin_approvals as usize) {
                    if let Some(p) = self.proposals.remove(&a.seq) {
                        self.apply_key_change(&p.change, e.seq, p.seq);
                    }
                } else if let Some(p) = self.proposals.get_mut(&a.seq) {
                    p.approvals.push(e.actor.clone());
                }
            }
            Body::Package(p) => {
                self.by_hash.insert(p.tarball.blake3, self.packages.len());
                for f in &p.files {
                    self.path_set.entry(f.path.clone()).or_insert_with(|| p.name.clone());
                }
                self.packages.push(PackageState {
                    seq: e.seq,
                    author: e.actor.clone(),
                    time_ms: e.time_ms,
                    package: p.clone(),
                    approvals: Vec::new(),
                    withdrawn: None,
                    overrides: Vec::new(),
                });
            }
            Body::Withdraw(w) => {
                if let Some(&i) = self.by_hash.get(&w.package) {
                    let by = e.actor.clone();
                    self.packages[i].withdrawn = Some(Withdrawn { seq: e.seq, by, reason: w.reason.clone() });
                }
            }
            Body::Approve(a) => {
                let independent = self.independent(&e.actor);
                if let Some(&i) = self.by_hash.get(&a.package) {
                    self.packages[i].approvals.push(Approval {
                        approver: e.actor.clone(),
                        seq: e.seq,
                        time_ms: e.time_ms,
                        reason: a.reason.clone(),
                        independent,
                        void: None,
                    });
                }
            }
            Body::Push(p) => {
                let waves = crate::rollout::waves_for(self, &p.env, &p.waves);
                let policy = self.policy(&p.env).cloned();
                self.set_desired(&p.env, p.version, p.package, e, Via::Push);
                if let (Some(slot), Some(policy)) = (self.slot_mut(&p.env, p.version), policy) {
                    slot.rollout = Some(Rollout::begin(e, waves, &policy));
                }
            }
            Body::Rollback(r) => self.set_desired(&r.env, r.version, r.package, e, Via::Rollback),
            Body::Wave(w) => {
                if let Some(r) = self.rollout_mut(&w.stage.env, w.stage.version) {
                    r.fold_wave(e, w);
                }
            }
            Body::Gate(g) => {
                if let Some(r) = self.rollout_mut(&g.stage.env, g.stage.version) {
                    r.fold_gate(e, g);
                }
            }
            Body::Bake(b) => {
                if let Some(r) = self.rollout_mut(&b.stage.env, b.stage.version) {
                    r.fold_bake(e, b);
                }
            }
            Body::FreezeOverride(o) => {
                if let Some(&i) = self.by_hash.get(&o.package) {
                    self.packages[i].overrides.push(Override {
                        env: o.env.clone(),
                        approver: e.actor.clone(),
                        seq: e.seq,
                        reason: o.reason.clone(),
                    });
                }
            }
            Body::Ack(a) => {
                let independent = self.independent(&e.actor);
                let Some(slot) = self.slot_mut(&a.env, a.version) else { unreachable!("checked: pushed") };
                let loaded = match a.outcome {
                    Outcome::Loaded => Some(Loaded {
                        version: a.version,
                        package: a.package,
                        seq: e.seq,
                        signed_ms: e.signed_ms,
                    }),
                    Outcome::Failed(_) => slot.reports.get(&e.actor).and_then(|r| r.loaded.clone()),
                };
                let report = TargetReport {
                    version: a.version,
                    package: a.package,
                    outcome: a.outcome.clone(),
                    seq: e.seq,
                    time_ms: e.time_ms,
                    independent,
                    loaded,
                };
                slot.reports.insert(e.actor.clone(), report);
                let desired = slot.desired.as_ref().is_some_and(|d| d.version == a.version);
                if let Some(r) = slot.rollout.as_mut().filter(|_| desired && a.outcome == Outcome::Loaded) {
                    r.settled_ms = r.settled_ms.max(e.time_ms);
                }
            }
            Body::Retry(r) => {
                if let Some(slot) = self.slot_mut(&r.env, r.version) {
                    slot.retry_seq = Some(e.seq);
                }
            }
            Body::EnvSet(_) => self.apply_key_change(&e.body, e.seq, e.seq),
            Body::Checkpoint(c) => self.checkpoints.push(CheckpointState {
                seq: e.seq,
                signer: e.actor.clone(),
                time_ms: e.time_ms,
                checkpoint: c.clone(),
            }),
        }
        if let Some(text) = crate::rollout::describe(&e.body) {
            let env = e.body.env().unwrap_or_default().to_string();
            let (seq, time_ms, actor, kind) = (e.seq, e.time_ms, e.actor.clone(), e.body.kind());
            self.timeline.push(crate::rollout::Step { seq, time_ms, actor, kind, env, text });
        }
        self.recent.push(&e.signed_digest(&self.ledger_id));
        if control {
            self.control.push(&signed.id.0);
            self.control_seqs.push(e.seq);
        }
        if !self.partial {
            self.tree.push(&signed.id.0);
        }
        self.len = e.seq + 1;
        self.head = signed.id;
        self.last_time_ms = e.time_ms;
    }

    pub(crate) fn add_key(&mut self, decl: &KeyDecl, seq: u64, declared_by: u64) {
        let key = KeyState {
            decl: decl.clone(),
            added_seq: seq,
            since_seq: seq + 1,
            declared_by: vec![declared_by],
            past: Vec::new(),
            revoked: None,
        };
        self.by_public.insert(decl.public_key, decl.name.clone());
        self.keys.insert(decl.name.clone(), key);
    }

    /// Whether `name`'s current key was generated by its holder.
    fn independent(&self, name: &str) -> bool {
        self.keys.get(name).is_some_and(|k| matches!(k.decl.custody, Custody::Holder(_)))
    }

    /// A key change taking effect with entry `seq` (its own, or the approval completing it),
    /// declared by entry `declared_by` (its own, or the proposal's).
    fn apply_key_change(&mut self, change: &Body, seq: u64, declared_by: u64) {
        match change {
            Body::KeyAdd(k) => self.add_key(k, seq, declared_by),
            Body::KeyRotate(r) => {
                if r.old == RevokeKind::Compromised {
                    self.forget_compromised(&r.name, seq);
                }
                if let Some(k) = self.keys.get_mut(&r.name) {
                    k.past.push(PastKey {
                        public_key: k.decl.public_key,
                        openpgp: k.decl.openpgp.take(),
                        custody: k.decl.custody.clone(),
                        since_seq: k.since_seq,
                        until_seq: seq + 1,
                        ended: r.old,
                    });
                    k.decl.public_key = r.public_key;
                    self.by_public.insert(r.public_key, r.name.clone());
                    k.decl.openpgp = r.openpgp.clone();
                    k.decl.custody = r.custody.clone();
                    k.since_seq = seq + 1;
                    k.declared_by.truncate(1);
                    k.declared_by.push(declared_by);
                }
            }
            Body::KeyRevoke(r) => {
                if r.kind == RevokeKind::Compromised {
                    self.forget_compromised(&r.name, seq);
                }
                if let Some(k) = self.keys.get_mut(&r.name) {
                    k.revoked = Some(Revocation { seq, kind: r.kind, reason: r.reason.clone() });
                }
            }
            Body::EnvSet(s) => {
                if let Some(env) = self.env.get_mut(&s.env) {
                    env.policy = s.policy.clone();
                }
            }
            _ => unreachable!("apply_key_change: not a change under the admin quorum"),
        }
    }

    /// What `name`'s current key signed that has not yet taken effect stops counting once
    /// the key is compromised (at entry `seq`): its approvals of packages never pushed
    /// anywhere, its support for pending key changes (proposals it made are dropped), and its
    /// acks (the holder's new key acks again). Acts by the name's earlier keys stay.
    fn forget_compromised(&mut self, name: &str, seq: u64) {
        let Some(since) = self.keys.get(name).map(|k| k.since_seq) else { return };
        let pushed: BTreeSet<Version> =
            self.slots().flat_map(|e| e.history.iter().map(|d| d.version)).collect();
        for p in self.packages.iter_mut().filter(|p| !pushed.contains(&p.package.version)) {
            for a in
                p.approvals.iter_mut().filter(|a| a.approver == name && a.seq >= since && a.void.is_none())
            {
                a.void = Some(seq);
            }
        }
        // Its freeze overrides stop counting, whatever they were for.
        for p in &mut self.packages {
            p.overrides.retain(|o| !(o.approver == name && o.seq >= since));
        }
        self.proposals.retain(|_, p| p.proposer != name);
        for p in self.proposals.values_mut() {
            p.approvals.retain(|a| a != name);
        }
        for e in self.env.values_mut().flat_map(|e| e.sets.values_mut()) {
            if e.reports.get(name).is_some_and(|r| r.seq >= since) {
                e.reports.remove(name);
            }
        }
    }

    /// The slot of `version`'s policy set in `env`, created on first use.
    fn slot_mut(&mut self, env: &str, version: Version) -> Option<&mut Slot> {
        let set = self.package(version)?.package.name.clone();
        Some(self.env.get_mut(env)?.sets.entry(set).or_default())
    }

    fn set_desired(&mut self, env: &str, version: Version, package: Hash, e: &crate::entry::Entry, via: Via) {
        let d = Desired { version, package, seq: e.seq, time_ms: e.time_ms, via };
        // What the slot leaves behind may be returned to by a rollback only if it was through.
        let set = self.package(version).map(|p| p.package.name.clone()).unwrap_or_default();
        let old = self.slot(env, &set).and_then(|s| s.desired.as_ref()).map(|d| d.version);
        // A version that went out to every target at once (one wave, no bake) had no rollout
        // a rollback could skip: it may be returned to as before.
        let unstaged = self
            .slot(env, &set)
            .and_then(crate::rollout::active)
            .is_some_and(|r| r.waves.len() == 1 && !r.bakes());
        let was_through =
            old.filter(|v| !self.partial && (unstaged || crate::rollout::through(self, env, &set, *v)));
        let Some(slot) = self.slot_mut(env, version) else {
            unreachable!("checked: a package of this ledger")
        };
        slot.history.push(d.clone());
        slot.desired = Some(d);
        slot.retry_seq = None;
        slot.rollout = None;
        slot.through.extend(was_through);
    }

    /// The rollout of `version` in `env`, if it is the rollout of the slot's newest push.
    fn rollout_mut(&mut self, env: &str, version: Version) -> Option<&mut Rollout> {
        self.slot_mut(env, version)?.rollout.as_mut()
    }
}
