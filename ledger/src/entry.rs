//! Ledger entries and their one canonical CBOR form.

use serde::{Deserialize, Serialize};

use crate::bytes::{Hash, PublicKey, Signature};
use crate::keys::{self, SecretKey};
use crate::limits::MAX_ENTRY_BYTES;
use crate::version::Version;

/// The ledger format this code reads and writes, recorded in genesis. Format 7: SHA-256
/// (RFC 6962) Merkle tree, checkpoint notes signed under the origin's name, key custody with
/// proof of possession, rotation, revocation kinds and admin quorum, policy sets (a slot per
/// environment and set), fleet minimums (`env_set`), `retry`, package checks and
/// provenance, `withdraw`, and signed *statements* sequenced by the appender (the actor's
/// signature covers the ledger, its base and its own time, not the position), and
/// checkpoints that also commit to the tree of control entries ([`crate::State::is_control`]), which
/// light agents follow. A ledger of
/// any other format is refused at its first entry, so a format change can never be misread.
/// Format 8 adds progressive rollouts: target labels and approver groups on keys, an
/// environment's rollout and approval policy (`env_set`), waves on `push`, and the `wave`,
/// `gate`, `bake` and `freeze_override` entries.
pub const FORMAT_VERSION: u32 = 8;

/// Domain tag of statement (entry) signatures.
pub const ENTRY_DOMAIN: &[u8] = b"pd/statement/v1\0";

/// One ledger entry: an actor's signed statement, placed in the chain by the appender.
///
/// The actor signs [`Statement`]'s fields (with the ledger's id); `seq`, `prev` and `time_ms`
/// are the appender's, bound by the chain of ids and by the checkpoints the log key signs.
/// So many actors' statements are committed in one batch without anyone holding the ledger
/// across a round trip, and the rule still checks each one against the state it follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the ledger, 0-based and gapless.
    pub seq: u64,
    /// Id of entry `seq - 1`; zero for genesis.
    pub prev: Hash,
    /// When the appender placed it: UTC milliseconds since the Unix epoch; never decreases
    /// along the chain.
    pub time_ms: u64,
    /// Name of the signing key.
    pub actor: String,
    /// The ledger length the actor had verified when it signed: the entry lies at or after
    /// it, within [`crate::limits::STATEMENT_WINDOW`] entries (so a statement is fresh, and
    /// a replay within the window is found by its digest).
    pub base: u64,
    /// The actor's clock when it signed (checked against `time_ms`).
    pub signed_ms: u64,
    /// What happened.
    pub body: Body,
    /// Ed25519 signature by `actor` over [`ENTRY_DOMAIN`] and [`Entry::signed_digest`].
    pub sig: Signature,
}

/// What an actor signs, in this field order: the ledger it is for, then the statement.
#[derive(Serialize)]
struct Unsigned<'a> {
    ledger: &'a Hash,
    actor: &'a str,
    base: u64,
    signed_ms: u64,
    body: &'a Body,
}

/// An actor's signed statement before the appender places it: what clients send to
/// `POST /v1/entries`, one canonical CBOR form like an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Name of the signing key.
    pub actor: String,
    /// The ledger length the actor had verified (see [`Entry::base`]).
    pub base: u64,
    /// The actor's clock when it signed.
    pub signed_ms: u64,
    /// What happened.
    pub body: Body,
    /// Ed25519 signature by `actor`, as in [`Entry::sig`].
    pub sig: Signature,
}

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// The first entry: ledger id, environments, first keys, rules.
    Genesis(Genesis),
    /// Enrolls a key (a key change: see [`Genesis::admin_approvals`]).
    KeyAdd(KeyDecl),
    /// Replaces the key under a name, keeping its roles (a key change).
    KeyRotate(KeyRotate),
    /// Revokes a key for all later entries (a key change).
    KeyRevoke(KeyRevoke),
    /// A further admin's approval of a proposed key change.
    KeyApprove(KeyApprove),
    /// A signed policy package.
    Package(Package),
    /// An approver's approval of one package.
    Approve(Approve),
    /// Makes a version the desired one for an environment.
    Push(Push),
    /// A target's report that it loaded (or failed to load) a version.
    Ack(Ack),
    /// Makes an earlier version the desired one again.
    Rollback(Rollback),
    /// Asks the targets that failed to load the desired version to try again.
    Retry(Retry),
    /// Sets an environment's fleet, rollout and approval policy.
    EnvSet(EnvSet),
    /// Starts the next wave of a push's rollout.
    Wave(WaveStart),
    /// One evaluation of a rollout gate during a wave's bake.
    Gate(GateCheck),
    /// Ends a wave's bake: passed (the next wave may start) or failed (the rollout stops).
    Bake(Bake),
    /// An approver's override of a freeze window for one push.
    FreezeOverride(FreezeOverride),
    /// Marks a package never deployable again.
    Withdraw(Withdraw),
    /// A signed head of the Merkle tree over every entry before it.
    Checkpoint(Checkpoint),
}

/// The genesis entry's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The ledger format, [`FORMAT_VERSION`].
    pub format: u32,
    /// Random id naming this ledger.
    pub ledger_id: Hash,
    /// Environments in promotion order.
    pub envs: Vec<String>,
    /// Distinct approvals a package needs before it may be pushed.
    pub approvals_required: u32,
    /// Distinct admins a key change needs, the proposer included. With 1 a key change takes
    /// effect at its own entry; above 1 it is a proposal until [`KeyApprove`] entries by
    /// other admins complete it. Genesis declares at least this many admins.
    pub admin_approvals: u32,
    /// Targets every environment expects until an [`EnvSet`] says otherwise (at least 1):
    /// a push to a slot with fewer enrolled targets is refused, and adoption needs them all.
    pub min_targets: u32,
    /// The first keys; the signer must be one of them, with the admin role.
    pub keys: Vec<KeyDecl>,
}

/// A key and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDecl {
    /// Unique name; entries name their signer by it.
    pub name: String,
    /// Ed25519 key for ledger entries.
    pub public_key: PublicKey,
    /// Armored OpenPGP public certificate for package signatures (authors need one).
    pub openpgp: Option<String>,
    /// Roles held.
    pub roles: Vec<Role>,
    /// The environment of a target key.
    pub env: Option<String>,
    /// The policy sets a target follows, sorted; empty means every set.
    pub sets: Vec<String>,
    /// Who generated the secret.
    pub custody: Custody,
    /// A target's labels (`canary`, `region=eu`), sorted: rollout waves select by them.
    pub labels: Vec<String>,
    /// An approver's groups (`security`), sorted: an environment's approval policy counts them.
    pub groups: Vec<String>,
}

impl KeyDecl {
    /// Whether this key is a target's and nothing else: its entries decide nothing for
    /// other targets, so they are not control entries ([`crate::State::is_control`]).
    pub fn is_target_only(&self) -> bool {
        self.roles == [Role::Target]
    }

    /// Whether this target follows policy set `set`.
    pub fn follows(&self, set: &str) -> bool {
        self.sets.is_empty() || self.sets.iter().any(|s| s == set)
    }
}

/// Who holds a key's secret, as far as the ledger can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Custody {
    /// The holder generated it and proved possession: an Ed25519 signature by the key over
    /// [`crate::enrol::possession_message`] of its name, public key and certificate.
    Holder(Signature),
    /// The admin generated it in their own home (`--generate-here`): acts by this key are
    /// not independent of the admin.
    Admin,
}

impl Custody {
    /// `holder` or `admin`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Custody::Holder(_) => "holder",
            Custody::Admin => "admin",
        }
    }
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Enrolls and revokes keys.
    Admin,
    /// Packages policies.
    Author,
    /// Approves packages (never their own).
    Approver,
    /// Pushes and rolls back.
    Deployer,
    /// A running service in one environment that acknowledges versions.
    Target,
    /// Signs checkpoints (the key `pd serve` runs with).
    Log,
}

impl Role {
    /// All roles, for help texts and parsing.
    pub const ALL: [Role; 6] =
        [Role::Admin, Role::Author, Role::Approver, Role::Deployer, Role::Target, Role::Log];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Author => "author",
            Role::Approver => "approver",
            Role::Deployer => "deployer",
            Role::Target => "target",
            Role::Log => "log",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!("unknown role {s:?}: use admin, author, approver, deployer, target or log")
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Revokes a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRevoke {
    /// The key's name.
    pub name: String,
    /// Whether its past approvals still count.
    pub kind: RevokeKind,
    /// Why.
    pub reason: String,
}

/// Why a key stops acting, which decides what happens to its approvals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeKind {
    /// The secret may be in other hands: its approvals of packages not yet pushed to any
    /// environment stop counting.
    Compromised,
    /// The holder left or the key is retired: everything it signed still counts.
    Left,
}

impl RevokeKind {
    /// `compromised` or `left`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeKind::Compromised => "compromised",
            RevokeKind::Left => "left",
        }
    }
}

/// Replaces the key of an active name; roles and environment stay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotate {
    /// The key's name.
    pub name: String,
    /// The new Ed25519 key.
    pub public_key: PublicKey,
    /// The new OpenPGP certificate (an author needs one).
    pub openpgp: Option<String>,
    /// Who generated the new secret.
    pub custody: Custody,
    /// How the old key ends: `Compromised` also voids its approvals of packages not yet
    /// pushed anywhere, as a compromised revocation does.
    pub old: RevokeKind,
    /// Why.
    pub reason: String,
}

/// Approves the key change proposed by entry `seq`, whose id is `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyApprove {
    /// The proposal's entry.
    pub seq: u64,
    /// The proposal's entry id, so the approval names exact bytes.
    pub id: Hash,
}

/// Asks the targets of the desired version's slot whose last report is a failure to load
/// it again; their earlier failures stop counting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Environment.
    pub env: String,
    /// The desired version.
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
    /// Why.
    pub reason: String,
}

/// An environment's settings, whole: each `env_set` replaces the one before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSet {
    /// Environment.
    pub env: String,
    /// The fleet, rollout and approval policy.
    pub policy: EnvPolicy,
    /// Why.
    pub reason: String,
}

/// How an environment takes a new version: its fleet, its rollout and its approvals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPolicy {
    /// Enrolled targets a slot of this environment needs before a push, and acks before it
    /// counts as adopted (at least 1).
    pub min_targets: u32,
    /// The waves a push goes out in, cumulative (the last always takes every target); empty
    /// is one wave of all. A push may name its own.
    pub waves: Vec<WaveSize>,
    /// How long each wave must run with every gate holding, after its targets acked, before
    /// the next wave (or the next environment) may start.
    pub bake_ms: u64,
    /// Gates checked during each bake (see [`crate::gate::Gate`] for the forms).
    pub gates: Vec<String>,
    /// Whether a failed gate rolls the environment back to its previous version.
    pub auto_rollback: bool,
    /// Freeze windows (see [`crate::freeze::Window`]): pushes and wave starts into one need
    /// `freeze_override` entries from the approvals this policy requires.
    pub freeze: Vec<String>,
    /// Approvals a package needs before it is pushed here; 0: the ledger's
    /// [`Genesis::approvals_required`].
    pub approvals: u32,
    /// When not empty, only approvers of these groups count, and distinct approvers must
    /// cover as many distinct groups as the approvals required (at most all of them).
    pub approver_groups: Vec<String>,
}

impl EnvPolicy {
    /// The policy of an environment no `env_set` touched: genesis' fleet minimum, one wave,
    /// no bake, gates or freezes, the ledger's approvals.
    pub fn with_min_targets(min_targets: u32) -> EnvPolicy {
        EnvPolicy {
            min_targets,
            waves: Vec::new(),
            bake_ms: 0,
            gates: Vec::new(),
            auto_rollback: false,
            freeze: Vec::new(),
            approvals: 0,
            approver_groups: Vec::new(),
        }
    }

    /// Whether a push's last wave must bake before the version counts as through the
    /// environment (a bake time or gates are set).
    pub fn bakes(&self) -> bool {
        self.bake_ms > 0 || !self.gates.is_empty()
    }
}

/// How far a wave reaches, counted cumulatively over the slot's targets in rollout order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    /// The first N targets.
    Count(u32),
    /// The first P percent (rounded up), 1 to 100.
    Percent(u32),
    /// Every target carrying this label (`canary`, `region=eu`).
    Label(String),
}

impl std::str::FromStr for WaveSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSize::Percent(p)),
                _ => Err(format!("wave {s:?}: a percentage is 1% to 100%")),
            };
        }
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
            return match s.parse::<u32>() {
                Ok(n) if n > 0 => Ok(WaveSize::Count(n)),
                _ => Err(format!("wave {s:?}: a count of targets is at least 1")),
            };
        }
        crate::rules::check_label(s).map_err(|e| format!("wave {s:?}: {e}"))?;
        Ok(WaveSize::Label(s.to_string()))
    }
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
            WaveSize::Label(l) => f.write_str(l),
        }
    }
}

/// One wave of one push: what `wave` entries start and `bake` entries end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Environment.
    pub env: String,
    /// The version being rolled out (the slot's desired version, made so by a push).
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
    /// The wave, from 1 (with a single wave the push itself starts it; otherwise a `wave`
    /// entry starts each, the first included).
    pub wave: u32,
}

/// Starts a wave: its targets may install the version from here on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveStart {
    /// The wave started.
    pub stage: Stage,
    /// The targets it adds, sorted, as [`crate::rollout::plan`] assigns them; empty for the
    /// last wave, which takes every target (also those enrolled during the rollout).
    pub targets: Vec<String>,
}

/// One evaluation of a gate during a wave's bake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateCheck {
    /// The wave baking.
    pub stage: Stage,
    /// The gate, as the environment's policy names it.
    pub gate: String,
    /// What it measured (the query's value, the targets' health, the command's exit).
    pub value: String,
    /// Whether it held.
    pub passed: bool,
}

/// The end of a wave's bake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bake {
    /// The wave baked.
    pub stage: Stage,
    /// Passed: its targets ran it for the bake time with every gate holding.
    pub passed: bool,
    /// What happened.
    pub reason: String,
}

/// An approver's override of a freeze window for one version in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeOverride {
    /// Environment.
    pub env: String,
    /// The version to push during the freeze.
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
    /// Why it cannot wait.
    pub reason: String,
}

/// A policy file inside a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Relative path inside the package.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Hash,
    /// BLAKE3 of the content.
    pub blake3: Hash,
}

/// The tarball of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// BLAKE3: the store key.
    pub blake3: Hash,
    /// SHA-256: what gpg users check.
    pub sha256: Hash,
    /// Size in bytes.
    pub size: u64,
}

/// A signed policy package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Version, higher than every earlier package.
    pub version: Version,
    /// The policy set: each set has its own desired version per environment, so deploying
    /// one never replaces another.
    pub name: String,
    /// Files inside, sorted by path.
    pub files: Vec<FileDigest>,
    /// The tarball.
    pub tarball: Artifact,
    /// Armored OpenPGP detached signature over the tarball by the author's certificate.
    pub openpgp_sig: String,
    /// How the files were checked before they were signed.
    pub checked: Checked,
    /// Where the files came from, when they were in a git working tree.
    pub source: Option<Source>,
    /// Why.
    pub reason: String,
}

/// How a package's files were checked before they were signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checked {
    /// Every file was non-empty and `.yaml`/`.yml`, `.json` and `.toml` files parsed
    /// (false: packaged with `--no-validate`).
    pub parsed: bool,
    /// BLAKE3 of the JSON Schema every structured file satisfied, if the set has one.
    pub schema: Option<Hash>,
    /// The validator command that accepted the files, if the set has one.
    pub command: Option<String>,
}

/// The git commit a package's files were taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The commit id (hex: 40 digits for SHA-1 repositories, 64 for SHA-256).
    pub commit: String,
    /// Whether the working tree matched that commit (no changes, no untracked files).
    pub clean: bool,
}

/// Withdraws a package: it can never be approved, pushed, rolled back to or retried, and it
/// no longer counts when a push is checked for moving forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdraw {
    /// The package's version.
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
    /// Why.
    pub reason: String,
}

/// Approves one package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The package's version.
    pub version: Version,
    /// The package's tarball BLAKE3, so an approval names exact bytes.
    pub package: Hash,
    /// Why.
    pub reason: String,
}

/// Desired version for one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Environment.
    pub env: String,
    /// Version.
    pub version: Version,
    /// Tarball BLAKE3.
    pub package: Hash,
    /// The waves it goes out in; empty: the environment's.
    pub waves: Vec<WaveSize>,
    /// Why.
    pub reason: String,
}

/// A target's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The target's environment.
    pub env: String,
    /// Version loaded.
    pub version: Version,
    /// Tarball BLAKE3 loaded.
    pub package: Hash,
    /// Loaded, or failed with an error.
    pub outcome: Outcome,
}

/// Whether a target loaded a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The policy is live.
    Loaded,
    /// The target could not load it.
    Failed(String),
}

/// Makes an earlier version desired again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Environment.
    pub env: String,
    /// The earlier version.
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
    /// Why.
    pub reason: String,
}

/// A signed tree head: the RFC 6962 Merkle tree (SHA-256) over the ids of the `size`
/// entries before this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Entries covered: every one before this entry, so equal to its `seq`.
    pub size: u64,
    /// The tree's head.
    pub root: Hash,
    /// Control entries among those `size` ([`crate::State::is_control`]).
    pub control_size: u64,
    /// The head of the RFC 6962 tree (SHA-256) over the ids of those control entries, in
    /// order: what a light agent, which receives only control entries, checks them against.
    pub control_root: Hash,
    /// Ed25519 signature by the entry's signer over the checkpoint's signed-note text
    /// (see [`crate::note`]), so the checkpoint also stands alone as a C2SP note.
    pub note_sig: Signature,
}

impl Body {
    /// Whether this body needs the admin quorum ([`Genesis::admin_approvals`]): key changes,
    /// and environment policy (one admin alone must not drop a freeze, a canary or a gate).
    pub fn needs_admin_quorum(&self) -> bool {
        matches!(self, Body::KeyAdd(_) | Body::KeyRotate(_) | Body::KeyRevoke(_) | Body::EnvSet(_))
    }

    /// Every kind's name, as [`Body::kind`] gives it.
    pub const KINDS: [&'static str; 18] = [
        "genesis",
        "key_add",
        "key_rotate",
        "key_revoke",
        "key_approve",
        "package",
        "approve",
        "push",
        "ack",
        "rollback",
        "retry",
        "env_set",
        "wave",
        "gate",
        "bake",
        "freeze_override",
        "withdraw",
        "checkpoint",
    ];

    /// The environment an entry is about, if one.
    pub fn env(&self) -> Option<&str> {
        match self {
            Body::Push(p) => Some(&p.env),
            Body::Ack(a) => Some(&a.env),
            Body::Rollback(r) => Some(&r.env),
            Body::Retry(r) => Some(&r.env),
            Body::EnvSet(e) => Some(&e.env),
            Body::Wave(w) => Some(&w.stage.env),
            Body::Gate(g) => Some(&g.stage.env),
            Body::Bake(b) => Some(&b.stage.env),
            Body::FreezeOverride(o) => Some(&o.env),
            Body::KeyAdd(k) => k.env.as_deref(),
            _ => None,
        }
    }

    /// The kind, as named in logs (one of [`Body::KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Genesis(_) => "genesis",
            Body::KeyAdd(_) => "key_add",
            Body::KeyRotate(_) => "key_rotate",
            Body::KeyRevoke(_) => "key_revoke",
            Body::KeyApprove(_) => "key_approve",
            Body::Package(_) => "package",
            Body::Approve(_) => "approve",
            Body::Push(_) => "push",
            Body::Ack(_) => "ack",
            Body::Rollback(_) => "rollback",
            Body::Retry(_) => "retry",
            Body::EnvSet(_) => "env_set",
            Body::Wave(_) => "wave",
            Body::Gate(_) => "gate",
            Body::Bake(_) => "bake",
            Body::FreezeOverride(_) => "freeze_override",
            Body::Withdraw(_) => "withdraw",
            Body::Checkpoint(_) => "checkpoint",
        }
    }
}

/// Bytes that are not one canonical entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodingError {
    /// Over [`MAX_ENTRY_BYTES`].
    #[error("entry is {}, over the limit of {}", crate::limits::human_bytes(*size as u64), crate::limits::human_bytes(*limit as u64))]
    TooLarge {
        /// Actual size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not CBOR of an entry.
    #[error("entry is not valid CBOR of a pd entry: {0}")]
    Malformed(String),
    /// Decodes, but is not the one canonical byte form.
    #[error("entry is not in canonical form (re-encoding gives different bytes)")]
    NotCanonical,
}

/// An entry together with its exact bytes and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEntry {
    /// The decoded entry.
    pub entry: Entry,
    /// Its canonical encoding.
    pub bytes: Vec<u8>,
    /// BLAKE3 of `bytes`.
    pub id: Hash,
}

fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing to a Vec cannot fail, and every entry type serializes.
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into memory");
    out
}

/// The ledger id a statement signs: genesis names its own, every later entry the ledger's.
fn signed_ledger<'a>(body: &'a Body, ledger: &'a Hash) -> &'a Hash {
    match body {
        Body::Genesis(g) => &g.ledger_id,
        _ => ledger,
    }
}

fn digest_of(ledger: &Hash, actor: &str, base: u64, signed_ms: u64, body: &Body) -> Hash {
    let ledger = signed_ledger(body, ledger);
    Hash::of(&to_cbor(&Unsigned { ledger, actor, base, signed_ms, body }))
}

impl Entry {
    /// Signs a statement and places it at `seq` after `prev`, based on exactly the entries
    /// before it and signed at `time_ms`: what a single writer that holds the ledger does.
    pub fn sign(
        ledger: &Hash,
        seq: u64,
        prev: Hash,
        time_ms: u64,
        actor: &str,
        body: Body,
        key: &SecretKey,
    ) -> SignedEntry {
        Statement::sign(ledger, actor, seq, time_ms, body, key).at(seq, prev, time_ms)
    }

    /// The digest the signature covers; `ledger` is the ledger's id (genesis names its own).
    pub fn signed_digest(&self, ledger: &Hash) -> Hash {
        digest_of(ledger, &self.actor, self.base, self.signed_ms, &self.body)
    }

    /// The full signed message, for batch verification.
    pub fn signed_message(&self, ledger: &Hash) -> Vec<u8> {
        keys::message(ENTRY_DOMAIN, &self.signed_digest(ledger).0)
    }

    /// Checks the signature against `key`.
    pub fn signature_valid(&self, ledger: &Hash, key: &PublicKey) -> bool {
        keys::verify(key, ENTRY_DOMAIN, &self.signed_digest(ledger).0, &self.sig)
    }

    /// The statement this entry places.
    pub fn statement(&self) -> Statement {
        Statement {
            actor: self.actor.clone(),
            base: self.base,
            signed_ms: self.signed_ms,
            body: self.body.clone(),
            sig: self.sig,
        }
    }
}

impl Statement {
    /// Signs `body` as `actor` for `ledger` (ignored for genesis, which names its own), based
    /// on the first `base` entries, at the signer's time `signed_ms`.
    pub fn sign(
        ledger: &Hash,
        actor: &str,
        base: u64,
        signed_ms: u64,
        body: Body,
        key: &SecretKey,
    ) -> Statement {
        let digest = digest_of(ledger, actor, base, signed_ms, &body);
        let sig = key.sign(ENTRY_DOMAIN, &digest.0);
        Statement { actor: actor.to_string(), base, signed_ms, body, sig }
    }

    /// The digest the signature covers (as [`Entry::signed_digest`]).
    pub fn digest(&self, ledger: &Hash) -> Hash {
        digest_of(ledger, &self.actor, self.base, self.signed_ms, &self.body)
    }

    /// Checks the signature against `key`.
    pub fn signature_valid(&self, ledger: &Hash, key: &PublicKey) -> bool {
        keys::verify(key, ENTRY_DOMAIN, &self.digest(ledger).0, &self.sig)
    }

    /// The entry that places this statement at `seq` after `prev`, at the appender's
    /// `time_ms`. The rule decides whether it may stand there.
    pub fn at(self, seq: u64, prev: Hash, time_ms: u64) -> SignedEntry {
        let Statement { actor, base, signed_ms, body, sig } = self;
        let entry = Entry { seq, prev, time_ms, actor, base, signed_ms, body, sig };
        let bytes = to_cbor(&entry);
        let id = Hash::of(&bytes);
        SignedEntry { entry, bytes, id }
    }

    /// The one canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Decodes exactly one canonical statement of at most [`MAX_ENTRY_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Statement, EncodingError> {
        decode_canonical(bytes)
    }
}

fn decode_canonical<T: Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, EncodingError> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(EncodingError::TooLarge { size: bytes.len(), limit: MAX_ENTRY_BYTES });
    }
    let value: T = ciborium::from_reader(bytes).map_err(|e| EncodingError::Malformed(e.to_string()))?;
    // One value has exactly one byte form, hence one id (this also rejects trailing bytes).
    if to_cbor(&value) != bytes {
        return Err(EncodingError::NotCanonical);
    }
    Ok(value)
}

impl SignedEntry {
    /// Decodes exactly one canonical entry.
    pub fn decode(bytes: &[u8]) -> Result<SignedEntry, EncodingError> {
        let entry: Entry = decode_canonical(bytes)?;
        Ok(SignedEntry { entry, bytes: bytes.to_vec(), id: Hash::of(bytes) })
    }
}

/// Encodes any value in canonical CBOR (fixed field order, shortest integers).
pub fn canonical_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    to_cbor(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEDGER: Hash = Hash([9; 32]);

    fn key() -> SecretKey {
        SecretKey::from_seed([3; 32])
    }

    #[test]
    fn a_statement_signs_for_one_ledger() {
        let body =
            Body::KeyRevoke(KeyRevoke { name: "b".into(), kind: RevokeKind::Left, reason: "c".into() });
        let s = Statement::sign(&LEDGER, "a", 3, 5, body, &key());
        assert!(s.signature_valid(&LEDGER, &key().public()));
        assert!(!s.signature_valid(&Hash([8; 32]), &key().public()), "another ledger's statement");
        let mut later = s.clone();
        later.base = 4;
        assert!(!later.signature_valid(&LEDGER, &key().public()), "the base is signed");
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _./-]{0,40}"
    }

    fn arb_hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(Hash)
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| Version::new(a, b, c))
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (arb_text(), arb_version(), arb_hash()).prop_map(|(reason, version, package)| {
                Body::Approve(Approve { version, package, reason })
            }),
            (arb_text(), arb_version(), arb_hash(), arb_text()).prop_map(
                |(env, version, package, reason)| {
                    let waves =
                        vec![WaveSize::Count(1), WaveSize::Percent(10), WaveSize::Label(reason.clone())];
                    Body::Push(Push { env, version, package, waves, reason })
                }
            ),
            (arb_text(), arb_version(), arb_hash(), any::<u32>(), any::<bool>(), arb_text()).prop_map(
                |(env, version, package, wave, passed, text)| {
                    let stage = Stage { env, version, package, wave };
                    match wave % 4 {
                        0 => Body::Wave(WaveStart { stage, targets: vec![text] }),
                        1 => Body::Gate(GateCheck { stage, gate: text.clone(), value: text, passed }),
                        2 => Body::Bake(Bake { stage, passed, reason: text }),
                        _ => Body::FreezeOverride(FreezeOverride {
                            env: stage.env,
                            version,
                            package,
                            reason: text,
                        }),
                    }
                }
            ),
            (arb_text(), arb_version(), arb_hash(), proptest::option::of(arb_text())).prop_map(
                |(env, version, package, failed)| Body::Ack(Ack {
                    env,
                    version,
                    package,
                    outcome: failed.map_or(Outcome::Loaded, Outcome::Failed),
                })
            ),
            (arb_text(), arb_text(), any::<bool>()).prop_map(|(name, reason, left)| Body::KeyRevoke(
                KeyRevoke {
                    name,
                    kind: if left { RevokeKind::Left } else { RevokeKind::Compromised },
                    reason
                }
            )),
            (any::<u64>(), arb_hash()).prop_map(|(seq, id)| Body::KeyApprove(KeyApprove { seq, id })),
            (arb_text(), arb_version(), arb_hash(), arb_text()).prop_map(
                |(env, version, package, reason)| Body::Retry(Retry { env, version, package, reason })
            ),
            (arb_text(), any::<u32>(), any::<u64>(), any::<bool>(), arb_text()).prop_map(
                |(env, min_targets, bake_ms, auto_rollback, reason)| {
                    let policy = EnvPolicy {
                        waves: vec![WaveSize::Percent(min_targets % 100 + 1)],
                        bake_ms,
                        gates: vec![reason.clone()],
                        auto_rollback,
                        freeze: vec![env.clone()],
                        approvals: min_targets % 3,
                        approver_groups: vec![reason.clone()],
                        ..EnvPolicy::with_min_targets(min_targets)
                    };
                    Body::EnvSet(EnvSet { env, policy, reason })
                }
            ),
            (arb_text(), any::<[u8; 32]>(), proptest::option::of(arb_text()), any::<bool>()).prop_map(
                |(name, pk, openpgp, target)| Body::KeyAdd(KeyDecl {
                    name,
                    public_key: PublicKey(pk),
                    openpgp,
                    roles: if target { vec![Role::Target] } else { vec![Role::Author, Role::Deployer] },
                    env: target.then(|| "dev".to_string()),
                    sets: if target { vec!["p".into()] } else { vec![] },
                    custody: if target { Custody::Admin } else { Custody::Holder(Signature([7; 64])) },
                    labels: if target { vec!["canary".into()] } else { vec![] },
                    groups: if target { vec![] } else { vec!["security".into()] },
                })
            ),
            (arb_version(), arb_text(), arb_hash(), arb_hash(), any::<u64>(), arb_text()).prop_map(
                |(version, name, b3, sha, size, reason)| Body::Package(Package {
                    version,
                    name: name.clone(),
                    files: vec![FileDigest { path: name.clone(), size, sha256: sha, blake3: b3 }],
                    tarball: Artifact { blake3: b3, sha256: sha, size },
                    openpgp_sig: reason.clone(),
                    checked: Checked { parsed: size % 2 == 0, schema: Some(b3), command: Some(name.clone()) },
                    source: Some(Source { commit: "0".repeat(40), clean: size % 3 == 0 }),
                    reason,
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(seq in any::<u64>(), prev in arb_hash(), time in any::<u64>(),
                                    actor in arb_text(), body in arb_body()) {
            let signed = Entry::sign(&LEDGER, seq, prev, time, &actor, body, &key());
            let back = SignedEntry::decode(&signed.bytes).unwrap();
            prop_assert_eq!(&back, &signed);
            prop_assert!(back.entry.signature_valid(&LEDGER, &key().public()));
            let statement = Statement::decode(&back.entry.statement().encode()).unwrap();
            prop_assert_eq!(statement.at(seq, prev, time), signed);
        }

        #[test]
        fn any_byte_flip_is_refused_or_breaks_the_signature(body in arb_body(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let signed = Entry::sign(&LEDGER, 1, Hash::ZERO, 5, "admin", body, &key());
            let mut bytes = signed.bytes.clone();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(e) = SignedEntry::decode(&bytes) {
                // Position and placement time are the appender's; everything else is signed.
                let moved = (e.entry.seq, e.entry.prev, e.entry.time_ms) != (1, Hash::ZERO, 5);
                prop_assert!(moved || !e.entry.signature_valid(&LEDGER, &key().public()));
            }
        }
    }

    #[test]
    fn non_canonical_integer_is_refused() {
        let signed = Entry::sign(
            &LEDGER,
            1,
            Hash::ZERO,
            5,
            "a",
            Body::KeyRevoke(KeyRevoke { name: "b".into(), kind: RevokeKind::Left, reason: "c".into() }),
            &key(),
        );
        // seq 1 is encoded as the single byte 0x01 after the "seq" key; re-encode it as 0x18 0x01.
        let at = signed.bytes.windows(4).position(|w| w == b"seq\x01").unwrap() + 3;
        let mut long = signed.bytes.clone();
        long.splice(at..at + 1, [0x18, 0x01]);
        assert_eq!(SignedEntry::decode(&long), Err(EncodingError::NotCanonical));
        let mut trailing = signed.bytes.clone();
        trailing.push(0);
        assert!(SignedEntry::decode(&trailing).is_err());
    }

    #[test]
    fn oversize_entry_is_refused() {
        let big = vec![0u8; MAX_ENTRY_BYTES + 1];
        assert!(matches!(SignedEntry::decode(&big), Err(EncodingError::TooLarge { .. })));
    }
}
