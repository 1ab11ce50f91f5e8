//! The state derived by folding entries. Never stored: always rebuilt from the ledger.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::bytes::Hash;
use crate::entry::{Body, Checkpoint, KeyDecl, Outcome, Package, Role, SignedEntry};
use crate::keys::SecretKey;
use crate::merkle::{Frontier, Sha256};
use crate::note::{self, SignedCheckpoint};
use crate::version::Version;

/// Everything the ledger says, folded up to `len` entries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    /// The genesis entry's random id.
    pub ledger_id: Hash,
    /// Environments in promotion order.
    pub envs: Vec<String>,
    /// Distinct approvals a package needs.
    pub approvals_required: u32,
    /// Number of entries folded: the next entry's `seq`.
    pub len: u64,
    /// Id of the last entry folded (zero when empty).
    pub head: Hash,
    /// Time of the last entry folded.
    pub last_time_ms: u64,
    /// Every key ever enrolled, by name.
    pub keys: BTreeMap<String, KeyState>,
    /// Every package, in version order (which is also append order).
    pub packages: Vec<PackageState>,
    /// Per environment: desired version, history and targets' reports.
    pub env: BTreeMap<String, EnvState>,
    /// Every checkpoint, in order.
    pub checkpoints: Vec<CheckpointState>,
    /// The right edge of the Merkle tree over the ids of the entries folded.
    #[serde(skip)]
    pub tree: Frontier<Sha256>,
    #[serde(skip)]
    by_hash: HashMap<Hash, usize>,
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

/// A key and its life.
#[derive(Clone, Debug, Serialize)]
pub struct KeyState {
    /// As enrolled.
    pub decl: KeyDecl,
    /// Entry that enrolled it.
    pub added_seq: u64,
    /// Entry that revoked it, and why.
    pub revoked: Option<(u64, String)>,
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

/// A desired version of an environment.
#[derive(Clone, Debug, Serialize)]
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

/// A target's latest report.
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
}

/// One environment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnvState {
    /// The version targets should run now.
    pub desired: Option<Desired>,
    /// Every desired version, oldest first (the current one last).
    pub history: Vec<Desired>,
    /// Latest report per target key.
    pub reports: BTreeMap<String, TargetReport>,
}

impl State {
    /// The package with this version.
    pub fn package(&self, version: Version) -> Option<&PackageState> {
        self.packages.binary_search_by(|p| p.package.version.cmp(&version)).ok().map(|i| &self.packages[i])
    }

    /// The package whose tarball has this BLAKE3.
    pub fn package_by_hash(&self, hash: &Hash) -> Option<&PackageState> {
        self.by_hash.get(hash).map(|&i| &self.packages[i])
    }

    /// The newest package.
    pub fn latest_package(&self) -> Option<&PackageState> {
        self.packages.last()
    }

    /// The key with this name if it is enrolled and not revoked.
    pub fn active_key(&self, name: &str) -> Option<&KeyState> {
        self.keys.get(name).filter(|k| k.revoked.is_none())
    }

    /// Active target keys of an environment.
    pub fn targets<'a>(&'a self, env: &'a str) -> impl Iterator<Item = &'a KeyState> + 'a {
        self.keys.values().filter(move |k| {
            k.revoked.is_none() && k.decl.roles.contains(&Role::Target) && k.decl.env.as_deref() == Some(env)
        })
    }

    /// Whether a package has the approvals it needs.
    pub fn is_approved(&self, pkg: &PackageState) -> bool {
        pkg.approvals.len() >= self.approvals_required as usize
    }

    /// Active targets of `env` that have not reported `version` loaded. Empty means adopted.
    pub fn laggards(&self, env: &str, version: Version) -> Vec<String> {
        let reports = self.env.get(env).map(|e| &e.reports);
        self.targets(env)
            .filter(|t| {
                let r = reports.and_then(|r| r.get(&t.decl.name));
                !matches!(r, Some(r) if r.version == version && r.outcome == Outcome::Loaded)
            })
            .map(|t| t.decl.name.clone())
            .collect()
    }

    /// Whether `version` is desired in `env` and every target there loaded it.
    pub fn fully_adopted(&self, env: &str, version: Version) -> bool {
        let desired = self.env.get(env).and_then(|e| e.desired.as_ref());
        matches!(desired, Some(d) if d.version == version) && self.laggards(env, version).is_empty()
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
        let (size, root) = (self.len, Hash(self.tree.root()));
        let note_sig = self.checkpoint_note(size, root).sign(&self.origin(), key).sig;
        Body::Checkpoint(Checkpoint { size, root, note_sig })
    }

    /// A checkpoint entry as a C2SP signed note, ready to hand out.
    pub fn signed_note(&self, c: &CheckpointState) -> SignedCheckpoint {
        let key = &self.keys[&c.signer].decl.public_key;
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

    /// The name of the ledger key (of any key ever enrolled) whose signature on `n` verifies
    /// under this ledger's origin, if any.
    pub fn note_signer(&self, n: &SignedCheckpoint) -> Option<String> {
        let origin = self.origin();
        n.signatures.iter().filter(|s| s.name == origin).find_map(|s| {
            self.keys
                .values()
                .find(|k| n.checkpoint.signed_by(s, &origin, &k.decl.public_key))
                .map(|k| k.decl.name.clone())
        })
    }

    /// The newest checkpoint.
    pub fn latest_checkpoint(&self) -> Option<&CheckpointState> {
        self.checkpoints.last()
    }

    /// Folds one entry that [`crate::check`] accepted.
    pub fn apply(&mut self, signed: &SignedEntry) {
        let e = &signed.entry;
        assert_eq!(e.seq, self.len, "apply: entries fold in order");
        match &e.body {
            Body::Genesis(g) => {
                self.ledger_id = g.ledger_id;
                self.envs = g.envs.clone();
                self.approvals_required = g.approvals_required;
                for env in &g.envs {
                    self.env.insert(env.clone(), EnvState::default());
                }
                for k in &g.keys {
                    self.add_key(k, e.seq);
                }
            }
            Body::KeyAdd(k) => self.add_key(k, e.seq),
            Body::KeyRevoke(r) => {
                if let Some(k) = self.keys.get_mut(&r.name) {
                    k.revoked = Some((e.seq, r.reason.clone()));
                }
            }
            Body::Package(p) => {
                self.by_hash.insert(p.tarball.blake3, self.packages.len());
                self.packages.push(PackageState {
                    seq: e.seq,
                    author: e.actor.clone(),
                    time_ms: e.time_ms,
                    package: p.clone(),
                    approvals: Vec::new(),
                });
            }
            Body::Approve(a) => {
                if let Some(&i) = self.by_hash.get(&a.package) {
                    self.packages[i].approvals.push(Approval {
                        approver: e.actor.clone(),
                        seq: e.seq,
                        time_ms: e.time_ms,
                        reason: a.reason.clone(),
                    });
                }
            }
            Body::Push(p) => self.set_desired(&p.env, p.version, p.package, e, Via::Push),
            Body::Rollback(r) => self.set_desired(&r.env, r.version, r.package, e, Via::Rollback),
            Body::Ack(a) => {
                let report = TargetReport {
                    version: a.version,
                    package: a.package,
                    outcome: a.outcome.clone(),
                    seq: e.seq,
                    time_ms: e.time_ms,
                };
                self.env.entry(a.env.clone()).or_default().reports.insert(e.actor.clone(), report);
            }
            Body::Checkpoint(c) => self.checkpoints.push(CheckpointState {
                seq: e.seq,
                signer: e.actor.clone(),
                time_ms: e.time_ms,
                checkpoint: c.clone(),
            }),
        }
        self.tree.push(&signed.id.0);
        self.len += 1;
        self.head = signed.id;
        self.last_time_ms = e.time_ms;
    }

    fn add_key(&mut self, decl: &KeyDecl, seq: u64) {
        let key = KeyState { decl: decl.clone(), added_seq: seq, revoked: None };
        self.keys.insert(decl.name.clone(), key);
    }

    fn set_desired(&mut self, env: &str, version: Version, package: Hash, e: &crate::entry::Entry, via: Via) {
        let d = Desired { version, package, seq: e.seq, time_ms: e.time_ms, via };
        let env = self.env.entry(env.to_string()).or_default();
        env.history.push(d.clone());
        env.desired = Some(d);
    }
}
