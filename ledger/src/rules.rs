//! The one rule: is this entry valid given the state folded so far?
//!
//! Architecture Invariant: the appender, the CLI, the server, the agent and `pd-verify` all
//! decide validity here, and nowhere else.

use std::collections::BTreeSet;

use crate::bytes::{Hash, PublicKey};
use crate::entry::{
    Ack, Approve, Body, Checkpoint, Custody, Entry, EnvSet, FreezeOverride, Genesis, KeyApprove, KeyDecl,
    KeyRevoke, KeyRotate, Package, Push, Retry, Role, Rollback, SignedEntry, WaveSize, Withdraw,
};
use crate::limits::*;
use crate::state::{Slot, State};
use crate::version::Version;

/// Why an entry was refused. Each message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// `seq` is not the next position.
    #[error("entry has seq {got}, but the next position is {expected} (another writer appended first: reload and retry)")]
    Seq {
        /// Next position.
        expected: u64,
        /// The entry's.
        got: u64,
    },
    /// `prev` is not the current head.
    #[error("entry does not chain: prev is {got}, head is {expected}")]
    Prev {
        /// Current head.
        expected: Hash,
        /// The entry's.
        got: Hash,
    },
    /// The clock went backwards.
    #[error("entry time {time_ms} is before the previous entry's {last_ms}: fix the clock of the signer")]
    TimeWentBack {
        /// The entry's.
        time_ms: u64,
        /// The previous entry's.
        last_ms: u64,
    },
    /// The statement's base is too far behind the ledger's end.
    #[error("the statement was based on {base} entries but would land at #{seq}, more than {window} entries later: sync and sign it again")]
    StaleStatement {
        /// The ledger length its signer had verified.
        base: u64,
        /// Where it would land.
        seq: u64,
        /// [`STATEMENT_WINDOW`].
        window: u64,
    },
    /// The statement's base names entries the ledger does not have yet.
    #[error("the statement was based on {base} entries, but it would land at #{seq}: it cannot have seen entries that do not exist")]
    FutureBase {
        /// The ledger length it claims.
        base: u64,
        /// Where it would land.
        seq: u64,
    },
    /// The signer's time is too far from the appender's.
    #[error("the statement was signed at {signed_ms} ms but appended at {time_ms} ms: more than {MAX_CLOCK_AHEAD_MS} ms ahead or {MAX_STATEMENT_AGE_MS} ms old; fix the signer's clock and sign it again")]
    StatementTime {
        /// The signer's time.
        signed_ms: u64,
        /// The appender's time.
        time_ms: u64,
    },
    /// This very statement is already in the ledger.
    #[error("this statement by {actor:?} is already in the ledger: a replayed statement is refused")]
    Replayed {
        /// Its signer.
        actor: String,
    },
    /// The first entry is not genesis, or a later one is.
    #[error("a genesis entry must come first and only first")]
    Genesis,
    /// The signer is not enrolled.
    #[error(
        "key {actor:?} is not enrolled in this ledger: ask an admin to run `pd key new {actor} --role …`"
    )]
    UnknownKey {
        /// Signer.
        actor: String,
    },
    /// The signer was revoked.
    #[error("key {actor:?} was revoked ({reason}) and cannot act")]
    RevokedKey {
        /// Signer.
        actor: String,
        /// Why it was revoked.
        reason: String,
    },
    /// The signer lacks the role.
    #[error("key {actor:?} lacks the {role} role needed to {action}")]
    MissingRole {
        /// Signer.
        actor: String,
        /// The role needed.
        role: Role,
        /// What it tried.
        action: &'static str,
    },
    /// The signature does not verify.
    #[error("signature by {actor:?} does not verify: the entry was altered or signed by another key")]
    BadSignature {
        /// Claimed signer.
        actor: String,
    },
    /// A field is malformed or over a limit.
    #[error("invalid {field}: {problem}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The key name or public key is already enrolled.
    #[error("key {name:?} (or its public key) is already enrolled: names are reused only by `pd key rotate {name}`, and every key needs a fresh public key")]
    DuplicateKey {
        /// The name.
        name: String,
    },
    /// No such environment.
    #[error("unknown environment {env:?}; this ledger has: {known}")]
    UnknownEnv {
        /// The name given.
        env: String,
        /// The ledger's environments.
        known: String,
    },
    /// Revoking an admin would leave too few to change keys.
    #[error("revoking {name:?} would leave {left} active admin(s), fewer than the {need} a key change needs; enroll another admin first")]
    LastAdmin {
        /// The key.
        name: String,
        /// Admins left after it.
        left: usize,
        /// Admins a key change needs.
        need: u32,
    },
    /// A key approval that names no pending proposal, or one it may not approve.
    #[error("key approval refused: {problem}")]
    BadKeyApproval {
        /// Why.
        problem: String,
    },
    /// Versions must rise.
    #[error("version {version} is not above the latest package {latest}; use --bump or a higher --version")]
    VersionNotIncreasing {
        /// Proposed.
        version: Version,
        /// Latest recorded.
        latest: Version,
    },
    /// The package was withdrawn.
    #[error("{version} was withdrawn at #{seq} ({reason}); it can never be approved or deployed: package the files again for a new version")]
    Withdrawn {
        /// The version.
        version: Version,
        /// The withdrawing entry.
        seq: u64,
        /// Why it was withdrawn.
        reason: String,
    },
    /// The same tarball was already packaged.
    #[error("these exact bytes are already packaged as {version}")]
    DuplicatePackage {
        /// The existing version.
        version: Version,
    },
    /// No such package, or version and hash disagree.
    #[error("no package {version} with tarball {package} in this ledger; see `pd ledger log`")]
    UnknownPackage {
        /// Version named.
        version: Version,
        /// Hash named.
        package: Hash,
    },
    /// An author approving their own package.
    #[error("{actor:?} authored {version} and cannot approve it: another approver must")]
    SelfApproval {
        /// Signer.
        actor: String,
        /// Package.
        version: Version,
    },
    /// A second approval by the same key.
    #[error("{actor:?} already approved {version}")]
    DuplicateApproval {
        /// Signer.
        actor: String,
        /// Package.
        version: Version,
    },
    /// Not enough approvals.
    #[error("{version} has {have} of {need} required approvals: an approver must run `pd ledger approve {version} --reason …`")]
    NotApproved {
        /// Package.
        version: Version,
        /// Approvals so far.
        have: usize,
        /// Approvals needed.
        need: u32,
    },
    /// The slot has fewer enrolled targets than its environment's fleet minimum.
    #[error("{env} has {have} enrolled target(s) following {set}, fewer than the {need} it expects: enrol targets (on each: `pd key gen NAME`; then `pd key new NAME --role target --env {env} --request NAME.request`) or lower the minimum with `pd env set {env} --min-targets N --reason …`")]
    TooFewTargets {
        /// Environment.
        env: String,
        /// Policy set.
        set: String,
        /// Active targets following it.
        have: usize,
        /// The fleet minimum.
        need: u32,
    },
    /// Promotion order skipped.
    #[error("{version} cannot go to {env} before it is fully adopted in {before}{}{}", waiting_for(.laggards), short(*.short_by))]
    PromotionSkip {
        /// Package.
        version: Version,
        /// Where it was pushed.
        env: String,
        /// The environment before it.
        before: String,
        /// Targets of `before` that have not loaded it (empty if it was never pushed there).
        laggards: Vec<String>,
        /// Targets `before` lacks to reach its fleet minimum.
        short_by: usize,
    },
    /// A push that would not move forward: a slot only ever moves to a version newer than
    /// every one it has had (a rolled-back version comes back only as a newer package).
    #[error("{env} has had {current}; a push must be newer than every version it has had, so {version} would not move forward (to go back, use `pd ledger rollback {env}`; to retry a rolled-back change, package it again as a newer version)")]
    NotForward {
        /// Environment.
        env: String,
        /// Proposed.
        version: Version,
        /// The newest version the slot has had.
        current: Version,
    },
    /// A rollback to a version the environment never had.
    #[error("cannot roll {env} back to {version}: {problem}")]
    BadRollback {
        /// Environment.
        env: String,
        /// Proposed.
        version: Version,
        /// Why not.
        problem: String,
    },
    /// An ack that is not about a version desired in the target's slot.
    #[error("ack refused: {problem}")]
    BadAck {
        /// Why.
        problem: String,
    },
    /// A retry of something that is not the desired version.
    #[error("retry refused: {problem}")]
    BadRetry {
        /// Why.
        problem: String,
    },
    /// A wave, gate or bake entry the rollout does not allow.
    #[error("rollout in {env}: {problem} (`pd state {env}` shows where the rollout stands)")]
    BadRollout {
        /// Environment.
        env: String,
        /// Why.
        problem: String,
    },
    /// The package lacks the approvals the environment's policy requires.
    #[error("{version} cannot go to {env}: its approval policy {problem}; approvers run `pd ledger approve {version} --reason …`")]
    ApprovalPolicy {
        /// Package.
        version: Version,
        /// Environment.
        env: String,
        /// What is missing.
        problem: String,
    },
    /// A push or wave start inside a freeze window without the overrides it needs.
    #[error("{env} is frozen ({window}): pushing {version} now {problem} in freeze overrides; approvers run `pd ledger override {version} --env {env} --reason …`, or wait for the window to end")]
    Frozen {
        /// Environment.
        env: String,
        /// The window the entry falls in.
        window: String,
        /// The version.
        version: Version,
        /// What is missing.
        problem: String,
    },
}

fn short(by: usize) -> String {
    if by == 0 {
        String::new()
    } else {
        format!(" (its fleet lacks {by} enrolled target(s))")
    }
}

fn waiting_for(laggards: &[String]) -> String {
    if laggards.is_empty() {
        String::new()
    } else {
        format!(" (waiting for {})", laggards.join(", "))
    }
}

/// Full check: chain, rules and the Ed25519 signature.
pub fn check(state: &State, signed: &SignedEntry) -> Result<(), RuleError> {
    let key = check_rules(state, signed)?;
    if !signed.entry.signature_valid(&state.ledger_id, &key) {
        return Err(RuleError::BadSignature { actor: signed.entry.actor.clone() });
    }
    Ok(())
}

/// Everything but the signature, which callers may verify in batches. Returns the key the
/// signature must verify against.
pub fn check_rules(state: &State, signed: &SignedEntry) -> Result<PublicKey, RuleError> {
    let e = &signed.entry;
    // A partial state (control entries only) cannot see the entries in between: it checks
    // order, and the checkpoints' control commitment binds the rest (see `crate::partial`).
    if e.seq != state.len && !(state.partial && e.seq > state.len) {
        return Err(RuleError::Seq { expected: state.len, got: e.seq });
    }
    if e.prev != state.head && !state.partial {
        return Err(RuleError::Prev { expected: state.head, got: e.prev });
    }
    if state.partial && !state.is_control(&e.body) {
        return Err(invalid(
            "entry",
            format!("a light replica folds control entries only, not a {}", e.body.kind()),
        ));
    }
    if e.time_ms < state.last_time_ms {
        return Err(RuleError::TimeWentBack { time_ms: e.time_ms, last_ms: state.last_time_ms });
    }
    check_statement(state, e)?;
    if let Body::Genesis(g) = &e.body {
        return check_genesis(state, e, g);
    }
    if state.len == 0 {
        return Err(RuleError::Genesis);
    }
    let key = match &e.body {
        Body::Genesis(_) => unreachable!("handled above"),
        Body::KeyAdd(_) | Body::KeyRotate(_) | Body::KeyRevoke(_) => {
            let key = authorize(state, e, Role::Admin, "change keys")?;
            check_key_change(state, &e.body)?;
            Ok(key)
        }
        Body::KeyApprove(a) => check_key_approve(state, e, a),
        Body::Package(p) => check_package(state, e, p),
        Body::Approve(a) => check_approve(state, e, a),
        Body::Push(p) => check_push(state, e, p),
        Body::Ack(a) => check_ack(state, e, a),
        Body::Rollback(r) => check_rollback(state, e, r),
        Body::Retry(r) => check_retry(state, e, r),
        Body::EnvSet(s) => {
            let key = authorize(state, e, Role::Admin, "change environment settings")?;
            check_env_set(state, s)?;
            Ok(key)
        }
        Body::Wave(w) => {
            let key = authorize_rollout(state, e)?;
            crate::rollout::check_wave(state, e, w)?;
            Ok(key)
        }
        Body::Gate(g) => {
            let key = authorize_rollout(state, e)?;
            check_text("gate value", &g.value, false)?;
            crate::rollout::check_gate(state, g)?;
            Ok(key)
        }
        Body::Bake(b) => {
            let key = authorize_rollout(state, e)?;
            check_text("reason", &b.reason, true)?;
            crate::rollout::check_bake(state, e, b)?;
            Ok(key)
        }
        Body::FreezeOverride(o) => check_freeze_override(state, e, o),
        Body::Withdraw(w) => check_withdraw(state, e, w),
        Body::Checkpoint(c) => check_checkpoint(state, e, c),
    }?;
    Ok(key)
}

/// A statement is fresh (based on entries that exist, at most [`STATEMENT_WINDOW`] behind,
/// signed near the time it is appended) and not already in the ledger.
fn check_statement(state: &State, e: &Entry) -> Result<(), RuleError> {
    if e.base > e.seq {
        return Err(RuleError::FutureBase { base: e.base, seq: e.seq });
    }
    if e.seq - e.base > STATEMENT_WINDOW {
        return Err(RuleError::StaleStatement { base: e.base, seq: e.seq, window: STATEMENT_WINDOW });
    }
    let ahead = e.signed_ms.saturating_sub(e.time_ms);
    let age = e.time_ms.saturating_sub(e.signed_ms);
    if ahead > MAX_CLOCK_AHEAD_MS || age > MAX_STATEMENT_AGE_MS {
        return Err(RuleError::StatementTime { signed_ms: e.signed_ms, time_ms: e.time_ms });
    }
    // A copy of this statement would lie at or after its base, so inside the window.
    if state.recent.contains(&e.signed_digest(&state.ledger_id)) {
        return Err(RuleError::Replayed { actor: e.actor.clone() });
    }
    Ok(())
}

fn invalid(field: &'static str, problem: impl Into<String>) -> RuleError {
    RuleError::Invalid { field, problem: problem.into() }
}

/// Key and environment names: lowercase letters, digits, `.`, `_`, `-`; starting alphanumeric.
pub fn check_name(field: &'static str, name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} must be 1-{MAX_NAME_BYTES} characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
        ))
    }
}

fn check_text(field: &'static str, text: &str, required: bool) -> Result<(), RuleError> {
    if required && text.trim().is_empty() {
        return Err(invalid(field, "must not be empty: say why, for the audit trail"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(invalid(field, format!("{} bytes is over the limit of {MAX_TEXT_BYTES}", text.len())));
    }
    Ok(())
}

/// A rollout's steps (waves, gates, bakes) are signed by a deployer or by the log key (the
/// server that drives them).
fn authorize_rollout(state: &State, e: &Entry) -> Result<PublicKey, RuleError> {
    let key = crate::adoption::active_with(state, &e.actor, None)?;
    if !key.decl.roles.iter().any(|r| matches!(r, Role::Deployer | Role::Log)) {
        return Err(RuleError::MissingRole {
            actor: e.actor.clone(),
            role: Role::Deployer,
            action: "drive a rollout (deployer or log)",
        });
    }
    Ok(key.decl.public_key)
}

/// A target label: `name` or `name=value`, each part a name (see [`check_name`]).
pub fn check_label(label: &str) -> Result<(), String> {
    let ok = |part: &str| check_name("label", part).is_ok();
    let valid = match label.split_once('=') {
        Some((k, v)) => ok(k) && ok(v),
        None => ok(label),
    };
    if valid {
        Ok(())
    } else {
        Err(format!("label {label:?} must be NAME or NAME=VALUE, each of a-z, 0-9, '.', '_', '-' (at most {MAX_NAME_BYTES} characters)"))
    }
}

/// The signer's key, which must be active and hold `role`.
fn authorize(state: &State, e: &Entry, role: Role, action: &'static str) -> Result<PublicKey, RuleError> {
    crate::adoption::active_with(state, &e.actor, Some((role, action))).map(|k| k.decl.public_key)
}

pub(crate) fn check_env(state: &State, env: &str) -> Result<(), RuleError> {
    if state.env_index(env).is_some() {
        Ok(())
    } else {
        Err(RuleError::UnknownEnv {
            env: env.chars().take(MAX_NAME_BYTES).collect(),
            known: state.envs.join(", "),
        })
    }
}

fn check_genesis(state: &State, e: &Entry, g: &Genesis) -> Result<PublicKey, RuleError> {
    if state.len != 0 || e.prev != Hash::ZERO {
        return Err(RuleError::Genesis);
    }
    if g.format != crate::entry::FORMAT_VERSION {
        let want = crate::entry::FORMAT_VERSION;
        return Err(invalid(
            "format",
            format!(
                "the ledger has format {}, this pd reads format {want}: use the pd release that wrote it",
                g.format
            ),
        ));
    }
    if g.envs.is_empty() || g.envs.len() > MAX_ENVS {
        return Err(invalid("envs", format!("need 1 to {MAX_ENVS} environments")));
    }
    let mut seen = BTreeSet::new();
    for env in &g.envs {
        check_name("environment name", env)?;
        if !seen.insert(env) {
            return Err(invalid("envs", format!("{env:?} is listed twice")));
        }
    }
    if g.approvals_required == 0 || g.approvals_required > MAX_APPROVALS_REQUIRED {
        return Err(invalid("approvals_required", format!("must be 1 to {MAX_APPROVALS_REQUIRED}")));
    }
    if g.admin_approvals == 0 || g.admin_approvals > MAX_ADMIN_APPROVALS {
        return Err(invalid("admin_approvals", format!("must be 1 to {MAX_ADMIN_APPROVALS}")));
    }
    let admins = g.keys.iter().filter(|k| k.roles.contains(&Role::Admin)).count();
    if admins < g.admin_approvals as usize {
        return Err(invalid(
            "admin_approvals",
            format!(
                "key changes need {} admins but genesis declares {admins}: enrol the other admins at init (--admin-request)",
                g.admin_approvals
            ),
        ));
    }
    check_min_targets(g.min_targets)?;
    if g.keys.is_empty() || g.keys.len() > MAX_GENESIS_KEYS {
        return Err(invalid("keys", format!("need 1 to {MAX_GENESIS_KEYS} keys")));
    }
    // Check the declared keys against a scratch state that knows the environments.
    let mut scratch = State::default();
    scratch.envs = g.envs.clone();
    scratch.admin_approvals = g.admin_approvals;
    for k in &g.keys {
        check_key_decl(&scratch, k)?;
        scratch.add_key(k, 0, 0);
    }
    authorize(&scratch, e, Role::Admin, "sign the genesis entry")
}

fn check_key_decl(state: &State, k: &KeyDecl) -> Result<(), RuleError> {
    check_name("key name", &k.name)?;
    if state.keys.contains_key(&k.name) || state.public_key_used(&k.public_key) {
        return Err(RuleError::DuplicateKey { name: k.name.clone() });
    }
    if k.roles.is_empty() || !k.roles.windows(2).all(|w| w[0] < w[1]) {
        return Err(invalid("roles", "need at least one role, listed once each in canonical order"));
    }
    let is_target = k.roles.contains(&Role::Target);
    match (&k.env, is_target) {
        (Some(env), true) if k.roles.len() == 1 => check_env(state, env)?,
        (_, true) => {
            return Err(invalid(
                "roles",
                "a target key holds only the target role and names exactly one environment (--env)",
            ))
        }
        (Some(_), false) => return Err(invalid("env", "only target keys are bound to an environment")),
        (None, false) => {}
    }
    if !k.sets.is_empty() && !is_target {
        return Err(invalid("sets", "only target keys follow policy sets"));
    }
    check_sorted_names("sets", &k.sets, check_set_name)?;
    if !k.labels.is_empty() && !is_target {
        return Err(invalid("labels", "only target keys carry labels (--label)"));
    }
    if !k.groups.is_empty() && !k.roles.contains(&Role::Approver) {
        return Err(invalid("groups", "only approver keys belong to approver groups (--group)"));
    }
    check_sorted_names("labels", &k.labels, |l| check_label(l).map_err(|p| invalid("label", p)))?;
    check_sorted_names("groups", &k.groups, |g| check_name("group", g))?;
    check_public_parts(state, &k.name, &k.public_key, k.openpgp.as_deref(), &k.custody, &k.roles)
}

/// The parts of a key a holder vouches for: certificate present where needed and bounded,
/// and, in holder custody, a proof of possession that verifies. Under an admin quorum an
/// admin key must be its holder's: one admin generating a second admin key would hold two
/// of the quorum's votes.
fn check_public_parts(
    state: &State,
    name: &str,
    public_key: &PublicKey,
    openpgp: Option<&str>,
    custody: &Custody,
    roles: &[Role],
) -> Result<(), RuleError> {
    match openpgp {
        Some(cert) if cert.len() > MAX_OPENPGP_BYTES => {
            return Err(invalid("openpgp", format!("certificate over {MAX_OPENPGP_BYTES} bytes")))
        }
        None if roles.contains(&Role::Author) => {
            return Err(invalid("openpgp", "an author key needs an OpenPGP certificate to sign packages"))
        }
        _ => {}
    }
    if state.admin_approvals > 1 && *custody == Custody::Admin && roles.contains(&Role::Admin) {
        return Err(invalid(
            "custody",
            format!("key changes need {} admins, so admin {name:?} must make their own key: enrol it from their `pd key gen` request, not --generate-here", state.admin_approvals),
        ));
    }
    if let Custody::Holder(proof) = custody {
        if !crate::enrol::proves_possession(name, public_key, openpgp, proof) {
            return Err(invalid(
                "custody",
                format!("the proof of possession for {name:?} does not verify: enrol from the holder's own `pd key gen` request"),
            ));
        }
    }
    Ok(())
}

/// Whether a change under the admin quorum (`KeyAdd`, `KeyRotate`, `KeyRevoke`, `EnvSet`) may
/// take effect now. Checked when it is proposed and again when the approval that completes
/// it is appended.
pub fn check_key_change(state: &State, change: &Body) -> Result<(), RuleError> {
    match change {
        Body::KeyAdd(k) => check_key_decl(state, k),
        Body::KeyRotate(r) => check_key_rotate(state, r),
        Body::KeyRevoke(r) => check_key_revoke(state, r),
        Body::EnvSet(s) => check_env_set(state, s),
        other => Err(invalid("key change", format!("a {} entry is not a key change", other.kind()))),
    }
}

fn check_key_rotate(state: &State, r: &KeyRotate) -> Result<(), RuleError> {
    check_text("reason", &r.reason, true)?;
    let old = active(state, &r.name)?;
    if state.public_key_used(&r.public_key) {
        return Err(invalid(
            "public_key",
            "this key was already enrolled: rotate to a freshly generated key",
        ));
    }
    check_public_parts(state, &r.name, &r.public_key, r.openpgp.as_deref(), &r.custody, &old.decl.roles)
}

fn active<'s>(state: &'s State, name: &str) -> Result<&'s crate::state::KeyState, RuleError> {
    match state.keys.get(name) {
        None => Err(RuleError::UnknownKey { actor: name.to_string() }),
        Some(k) => match &k.revoked {
            Some(r) => Err(RuleError::RevokedKey { actor: name.to_string(), reason: r.reason.clone() }),
            None => Ok(k),
        },
    }
}

fn check_key_revoke(state: &State, r: &KeyRevoke) -> Result<(), RuleError> {
    check_text("reason", &r.reason, true)?;
    let target = active(state, &r.name)?;
    if target.decl.roles.contains(&Role::Admin) {
        let left = state.active_with(Role::Admin).count() - 1;
        if left < state.admin_approvals.max(1) as usize {
            return Err(RuleError::LastAdmin {
                name: r.name.clone(),
                left,
                need: state.admin_approvals.max(1),
            });
        }
    }
    Ok(())
}

fn check_key_approve(state: &State, e: &Entry, a: &KeyApprove) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Admin, "approve key changes")?;
    let bad = |problem: String| RuleError::BadKeyApproval { problem };
    let Some(p) = state.proposals.get(&a.seq).filter(|p| p.id == a.id) else {
        return Err(bad(format!(
            "no pending key change at #{} with id {}: see `pd key pending`",
            a.seq,
            a.id.short()
        )));
    };
    if p.proposer == e.actor || p.approvals.contains(&e.actor) {
        return Err(bad(format!(
            "{} already stands behind the change at #{}: another admin must approve",
            e.actor, a.seq
        )));
    }
    if state.proposal_support(p, &e.actor) >= state.admin_approvals as usize {
        check_key_change(state, &p.change)?;
    }
    Ok(key)
}

fn check_package(state: &State, e: &Entry, p: &Package) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Author, "package policies")?;
    check_text("reason", &p.reason, true)?;
    check_set_name(&p.name)?;
    if let Some(latest) = state.latest_package() {
        if p.version <= latest.package.version {
            return Err(RuleError::VersionNotIncreasing {
                version: p.version,
                latest: latest.package.version,
            });
        }
    }
    if let Some(old) = state.package_by_hash(&p.tarball.blake3) {
        return Err(RuleError::DuplicatePackage { version: old.package.version });
    }
    if p.files.is_empty() || p.files.len() > MAX_FILES {
        return Err(invalid("files", format!("a package holds 1 to {MAX_FILES} files")));
    }
    if !p.files.windows(2).all(|w| w[0].path < w[1].path) {
        return Err(invalid("files", "paths must be sorted and unique"));
    }
    for f in &p.files {
        check_path(&f.path)?;
        if let Some(other) = state.set_of_path(&f.path).filter(|s| *s != p.name) {
            return Err(invalid(
                "file path",
                format!("{:?} belongs to the policy set {other}; a path belongs to one set, so that deploying one set never replaces another's file (package it as {other}, or rename it)", f.path),
            ));
        }
    }
    if p.openpgp_sig.is_empty() || p.openpgp_sig.len() > MAX_OPENPGP_BYTES {
        return Err(invalid("openpgp_sig", format!("must be 1 to {MAX_OPENPGP_BYTES} bytes")));
    }
    if let Some(cmd) = &p.checked.command {
        check_text("validator command", cmd, true)?;
    }
    if let Some(src) = &p.source {
        let hex = src.commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || !(src.commit.len() == 40 || src.commit.len() == 64) {
            return Err(invalid("source commit", "a git commit id: 40 or 64 lowercase hex digits"));
        }
    }
    Ok(key)
}

/// A relative path inside a package: no absolute paths, `..`, empty parts or odd bytes.
pub fn check_path(path: &str) -> Result<(), RuleError> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.bytes().any(|b| b < 0x20 || b == 0x7f)
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(invalid("file path", format!("{:?} must be a relative path without '.', '..' or empty parts, at most {MAX_PATH_BYTES} bytes", path)))
    }
}

/// A policy set's name (the package name): letters, digits, `.`, `_`, `-`.
pub fn check_set_name(name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "policy set name",
            format!("{name:?} must be 1-{MAX_NAME_BYTES} characters of letters, digits, '.', '_', '-'"),
        ))
    }
}

/// A short list of names, each valid, sorted and listed once.
fn check_sorted_names(
    field: &'static str,
    list: &[String],
    each: impl Fn(&str) -> Result<(), RuleError>,
) -> Result<(), RuleError> {
    if list.len() > MAX_TARGET_SETS || !list.windows(2).all(|w| w[0] < w[1]) {
        return Err(invalid(field, format!("at most {MAX_TARGET_SETS}, each once, sorted")));
    }
    list.iter().try_for_each(|x| each(x))
}

fn check_min_targets(n: u32) -> Result<(), RuleError> {
    if n == 0 || n > MAX_MIN_TARGETS {
        return Err(invalid(
            "min_targets",
            format!("must be 1 to {MAX_MIN_TARGETS}: zero targets never count as adopted"),
        ));
    }
    Ok(())
}

/// The package a version and hash name together.
pub(crate) fn named_package<'s>(
    state: &'s State,
    version: Version,
    package: &Hash,
) -> Result<&'s crate::state::PackageState, RuleError> {
    state
        .package(version)
        .filter(|p| &p.package.tarball.blake3 == package)
        .ok_or(RuleError::UnknownPackage { version, package: *package })
}

/// [`named_package`], refusing a withdrawn one: what may still be approved, pushed, rolled
/// back to or retried.
pub fn live_package<'s>(
    state: &'s State,
    version: Version,
    package: &Hash,
) -> Result<&'s crate::state::PackageState, RuleError> {
    let pkg = named_package(state, version, package)?;
    match &pkg.withdrawn {
        Some(w) => Err(RuleError::Withdrawn { version, seq: w.seq, reason: w.reason.clone() }),
        None => Ok(pkg),
    }
}

fn check_withdraw(state: &State, e: &Entry, w: &Withdraw) -> Result<PublicKey, RuleError> {
    let key = crate::adoption::active_with(state, &e.actor, None)?;
    if ![Role::Author, Role::Approver, Role::Admin].iter().any(|r| key.decl.roles.contains(r)) {
        return Err(RuleError::MissingRole {
            actor: e.actor.clone(),
            role: Role::Author,
            action: "withdraw packages (author, approver or admin)",
        });
    }
    check_text("reason", &w.reason, true)?;
    live_package(state, w.version, &w.package)?;
    Ok(key.decl.public_key)
}

fn check_approve(state: &State, e: &Entry, a: &Approve) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Approver, "approve packages")?;
    check_text("reason", &a.reason, true)?;
    let pkg = live_package(state, a.version, &a.package)?;
    if pkg.author == e.actor {
        return Err(RuleError::SelfApproval { actor: e.actor.clone(), version: a.version });
    }
    if pkg.approvals.iter().any(|x| x.approver == e.actor && x.void.is_none()) {
        return Err(RuleError::DuplicateApproval { actor: e.actor.clone(), version: a.version });
    }
    Ok(key)
}

fn check_push(state: &State, e: &Entry, p: &Push) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Deployer, "push versions")?;
    check_text("reason", &p.reason, true)?;
    check_waves(&p.waves)?;
    let (own, env_waves) =
        (crate::rollout::normalise(&p.waves).len(), crate::rollout::waves_for(state, &p.env, &[]).len());
    if !p.waves.is_empty() && own < env_waves {
        return Err(invalid(
            "waves",
            format!("{} goes out in {env_waves} waves; a deploy may add waves, never remove them", p.env),
        ));
    }
    crate::adoption::check_promotion(state, &p.env, p.version, &p.package)?;
    crate::rollout::check_freeze(state, e, &p.env, p.version)?;
    Ok(key)
}

/// Wave sizes: at most [`crate::rollout::MAX_WAVES`], counts and percentages rising.
fn check_waves(waves: &[WaveSize]) -> Result<(), RuleError> {
    if waves.len() > crate::rollout::MAX_WAVES {
        return Err(invalid("waves", format!("at most {}", crate::rollout::MAX_WAVES)));
    }
    let mut last: Option<&WaveSize> = None;
    for w in waves {
        match w {
            WaveSize::Count(0) => return Err(invalid("waves", "a wave of 0 targets reaches nobody")),
            WaveSize::Percent(p) if *p == 0 || *p > 100 => {
                return Err(invalid("waves", format!("{p}% is not 1% to 100%")))
            }
            WaveSize::Label(l) => check_label(l).map_err(|p| invalid("waves", p))?,
            _ => {}
        }
        let rising = match (last, w) {
            (Some(WaveSize::Count(a)), WaveSize::Count(b)) => a < b,
            (Some(WaveSize::Percent(a)), WaveSize::Percent(b)) => a < b,
            _ => true,
        };
        if !rising || last == Some(&WaveSize::Percent(100)) {
            return Err(invalid("waves", format!("{w} after {}: waves are cumulative, each reaching further than the one before, and 100% comes last", last.map(|l| l.to_string()).unwrap_or_default())));
        }
        last = Some(w);
    }
    Ok(())
}

fn check_freeze_override(state: &State, e: &Entry, o: &FreezeOverride) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Approver, "override freeze windows")?;
    check_text("reason", &o.reason, true)?;
    check_env(state, &o.env)?;
    let pkg = live_package(state, o.version, &o.package)?;
    if pkg.author == e.actor {
        return Err(RuleError::SelfApproval { actor: e.actor.clone(), version: o.version });
    }
    if pkg.overrides.iter().any(|x| x.env == o.env && x.approver == e.actor) {
        return Err(RuleError::DuplicateApproval { actor: e.actor.clone(), version: o.version });
    }
    Ok(key)
}

fn check_ack(state: &State, e: &Entry, a: &Ack) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Target, "acknowledge versions")?;
    if let crate::entry::Outcome::Failed(error) = &a.outcome {
        check_text("error", error, true)?;
    }
    crate::adoption::check_ack(state, e, a, &state.keys[&e.actor])?;
    Ok(key)
}

fn check_rollback(state: &State, e: &Entry, r: &Rollback) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Deployer, "roll back")?;
    check_text("reason", &r.reason, true)?;
    check_env(state, &r.env)?;
    let set = live_package(state, r.version, &r.package)?.package.name.as_str();
    let slot = state.slot(&r.env, set);
    may_return_to(state, slot, r.version).map_err(|problem| RuleError::BadRollback {
        env: r.env.clone(),
        version: r.version,
        problem: problem.to_string(),
    })?;
    Ok(key)
}

/// Whether a rollback of `slot` may return to `version` (the package being live aside).
fn may_return_to(state: &State, slot: Option<&Slot>, version: Version) -> Result<(), &'static str> {
    let Some(slot) = slot else { return Err("nothing was ever pushed there") };
    match &slot.desired {
        None => return Err("nothing was ever pushed there"),
        Some(d) if d.version == version => return Err("it is already the desired version"),
        Some(_) => {}
    }
    if !slot.history.iter().any(|d| d.version == version) {
        return Err("it was never deployed there; roll back only to a version the environment had");
    }
    // Only to a version that went through every wave and bake here (and was adopted), or
    // went out to every target at once: a rollback reaches every target at once, so it must
    // not carry what a rollout stopped.
    if !slot.was_through(version) && !state.is_partial() {
        return Err(
            "it went out in waves and never got through this environment (adopted, every wave started and baked); push a newer package instead",
        );
    }
    Ok(())
}

/// The newest version that `env`'s slot of `set` may be rolled back to, as the rule decides:
/// what `pd ledger rollback` without `--to` returns to.
pub fn rollback_target(state: &State, env: &str, set: &str) -> Option<Version> {
    let slot = state.slot(env, set)?;
    let allowed = |d: &&crate::state::Desired| {
        live_package(state, d.version, &d.package).is_ok()
            && may_return_to(state, Some(slot), d.version).is_ok()
    };
    slot.history.iter().rev().find(allowed).map(|d| d.version)
}

fn check_retry(state: &State, e: &Entry, r: &Retry) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Deployer, "ask targets to retry")?;
    check_text("reason", &r.reason, true)?;
    check_env(state, &r.env)?;
    let set = live_package(state, r.version, &r.package)?.package.name.as_str();
    match state.desired(&r.env, set) {
        Some(d) if d.version == r.version && d.package == r.package => Ok(key),
        Some(d) => Err(RuleError::BadRetry {
            problem: format!("{} wants {} of {set}, not {}", r.env, d.version, r.version),
        }),
        None => Err(RuleError::BadRetry { problem: format!("nothing of {set} was pushed to {} yet", r.env) }),
    }
}

fn check_env_set(state: &State, s: &EnvSet) -> Result<(), RuleError> {
    check_text("reason", &s.reason, true)?;
    check_env(state, &s.env)?;
    let p = &s.policy;
    check_min_targets(p.min_targets)?;
    check_waves(&p.waves)?;
    if p.bake_ms > MAX_BAKE_MS {
        return Err(invalid("bake", format!("at most {} hours", MAX_BAKE_MS / 3_600_000)));
    }
    let distinct = p.gates.iter().collect::<std::collections::BTreeSet<_>>().len();
    if p.gates.len() > crate::gate::MAX_GATES || distinct != p.gates.len() {
        return Err(invalid("gates", format!("at most {}, each once", crate::gate::MAX_GATES)));
    }
    for g in &p.gates {
        g.parse::<crate::gate::Gate>().map_err(|problem| invalid("gate", problem))?;
    }
    if p.freeze.len() > MAX_FREEZES {
        return Err(invalid("freeze", format!("at most {MAX_FREEZES} windows")));
    }
    for f in &p.freeze {
        f.parse::<crate::freeze::Window>().map_err(|problem| invalid("freeze", problem))?;
    }
    if p.approvals > MAX_APPROVALS_REQUIRED {
        return Err(invalid("approvals", format!("must be 0 (the ledger's) to {MAX_APPROVALS_REQUIRED}")));
    }
    check_sorted_names("approver groups", &p.approver_groups, |g| check_name("group", g))
}

fn check_checkpoint(state: &State, e: &Entry, c: &Checkpoint) -> Result<PublicKey, RuleError> {
    let key = authorize(state, e, Role::Log, "sign checkpoints")?;
    if c.size != e.seq {
        return Err(invalid(
            "checkpoint size",
            format!("is {}, but a checkpoint at seq {} covers exactly the entries before it", c.size, e.seq),
        ));
    }
    if c.root.0 != state.tree.root() {
        return Err(invalid("checkpoint root", "is not the head of the tree of the entries before it"));
    }
    if c.control_size != state.control.size() || c.control_root.0 != state.control.root() {
        return Err(invalid(
            "checkpoint control commitment",
            format!(
                "says {} control entries with head {}, but the ledger has {} before it",
                c.control_size,
                c.control_root.short(),
                state.control.size()
            ),
        ));
    }
    check_note(state, &e.actor, c, &key)?;
    Ok(key)
}

/// The checkpoint's C2SP note signature verifies with `actor`'s key under the origin's name.
fn check_note(state: &State, actor: &str, c: &Checkpoint, key: &PublicKey) -> Result<(), RuleError> {
    let note = state.checkpoint_note(c.size, c.root);
    let origin = state.origin();
    let sig = crate::note::NoteSignature {
        key_id: crate::note::key_id(&origin, key),
        name: origin.clone(),
        sig: c.note_sig,
    };
    if !note.signed_by(&sig, &origin, key) {
        return Err(invalid(
            "checkpoint note signature",
            format!("does not verify with the key of {actor:?}"),
        ));
    }
    Ok(())
}

/// Why a secret key cannot act as the caller asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    /// No active key has this public half.
    #[error("the key {public_key} is not an active key of this ledger: an admin enrols it with `pd key new NAME --role … --request NAME.request` (the request `pd key gen` wrote beside it)")]
    NotEnrolled {
        /// The key's public half.
        public_key: PublicKey,
    },
    /// The caller named another key.
    #[error("--as {given} does not match the key file, which this ledger enrols as {enrolled}: drop --as, or use {given}'s own key file")]
    Name {
        /// The name given.
        given: String,
        /// The name enrolled.
        enrolled: String,
    },
    /// The caller named another environment.
    #[error("--env {given} does not match the enrolment of {name}, a target of {enrolled}: drop --env, or use a key enrolled in {given}")]
    Env {
        /// The key's name.
        name: String,
        /// The environment given.
        given: String,
        /// The environment enrolled (or "no environment").
        enrolled: String,
    },
}

/// Which enrolled key a secret key holds: the active key whose public half is `public_key`,
/// checked against the name and environment a caller gave, if any. `pd --key` and
/// `pd agent --key` derive who acts from this, so a key file never acts under another name.
pub fn identify<'s>(
    state: &'s State,
    public_key: &PublicKey,
    name: Option<&str>,
    env: Option<&str>,
) -> Result<&'s KeyDecl, IdentifyError> {
    identify_decl(state.active_key_by_public(public_key).map(|k| &k.decl), public_key, name, env)
}

/// [`identify`] over a key found elsewhere (a light agent's own key, see [`crate::partial`]).
pub fn identify_decl<'s>(
    found: Option<&'s KeyDecl>,
    public_key: &PublicKey,
    name: Option<&str>,
    env: Option<&str>,
) -> Result<&'s KeyDecl, IdentifyError> {
    let key = found.ok_or(IdentifyError::NotEnrolled { public_key: *public_key })?;
    if let Some(given) = name.filter(|n| *n != key.name) {
        return Err(IdentifyError::Name { given: given.into(), enrolled: key.name.clone() });
    }
    if let Some(given) = env.filter(|e| Some(*e) != key.env.as_deref()) {
        return Err(IdentifyError::Env {
            name: key.name.clone(),
            given: given.into(),
            enrolled: key.env.clone().unwrap_or_else(|| "no environment".into()),
        });
    }
    Ok(key)
}
