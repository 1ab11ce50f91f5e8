//! What "adopted" means, and every decision built on it, defined once.
//!
//! Architecture Invariant: a target adopted version V of policy set P in environment E when
//! its latest report in the slot (E, P) is a `loaded` ack of exactly V's tarball, appended
//! after the entry that made V desired there; a slot is adopted when V is desired, it has at
//! least the environment's fleet minimum (never zero) of active targets following P, and all
//! of them adopted it. The promotion rule, the deploy wait, `pd state`, the agent, the server
//! and `pd-verify` all ask this module; none of them reads reports to decide by itself.
//! Pure: no I/O, no clock; what an agent knows locally comes in as [`AgentView`].

use crate::entry::{Ack, Entry, Outcome, Role};
use crate::rules::RuleError;
use crate::state::{Desired, KeyState, Slot, State, Via};
use crate::version::Version;
use crate::Hash;

/// Where one target stands on the desired version of a slot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It acked the desired version loaded after it became desired.
    Loaded,
    /// It acked a failure to load it (not retried since).
    Failed(String),
    /// No answer for it yet (or a failure that a `retry` asked it to retry).
    Waiting,
    /// In a wave of the rollout that has not started: it keeps what it runs.
    Queued,
}

/// A slot's adoption of its desired version.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Adoption {
    /// The desired version, with the entry that made it desired.
    pub desired: Option<Desired>,
    /// The fleet minimum the environment declares.
    pub min_targets: u32,
    /// Every active target following the set, by name.
    pub targets: Vec<(String, Status)>,
}

impl Adoption {
    /// Whether the desired version is adopted: a full fleet, every target loaded it.
    pub fn adopted(&self) -> bool {
        self.desired.is_some()
            && self.targets.len() >= self.min_targets.max(1) as usize
            && self.targets.iter().all(|(_, s)| *s == Status::Loaded)
    }

    /// Whether the desired version is `version` and adopted.
    pub fn adopted_version(&self, version: Version) -> bool {
        self.desired.as_ref().is_some_and(|d| d.version == version) && self.adopted()
    }

    /// Targets that loaded it.
    pub fn loaded(&self) -> usize {
        self.targets.iter().filter(|(_, s)| *s == Status::Loaded).count()
    }

    /// Targets that failed, with their error.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|(n, s)| match s {
                Status::Failed(e) => Some((n.clone(), e.clone())),
                _ => None,
            })
            .collect()
    }

    /// Targets in waves that have not started.
    pub fn queued(&self) -> usize {
        self.targets.iter().filter(|(_, s)| *s == Status::Queued).count()
    }

    /// Targets with no answer yet.
    pub fn waiting(&self) -> Vec<String> {
        self.targets.iter().filter(|(_, s)| *s == Status::Waiting).map(|(n, _)| n.clone()).collect()
    }

    /// How many enrolled targets the fleet lacks to reach its minimum.
    pub fn short_by(&self) -> usize {
        (self.min_targets.max(1) as usize).saturating_sub(self.targets.len())
    }
}

/// The adoption of the version desired for `set` in `env`.
pub fn adoption(state: &State, env: &str, set: &str) -> Adoption {
    let slot = state.slot(env, set);
    let desired = slot.and_then(Slot::desired).cloned();
    let targets = state
        .targets(env, set)
        .map(|t| {
            let status = match (&desired, slot) {
                (Some(d), Some(slot)) => status(slot, d, &t.decl.name),
                _ => Status::Waiting,
            };
            (t.decl.name.clone(), status)
        })
        .collect();
    Adoption { desired, min_targets: state.min_targets(env), targets }
}

/// The adoption in `env` of the policy set `version` belongs to.
pub fn adoption_of(state: &State, env: &str, version: Version) -> Adoption {
    let set = state.package(version).map_or("", |p| p.package.name.as_str());
    adoption(state, env, set)
}

fn status(slot: &Slot, d: &Desired, target: &str) -> Status {
    if !crate::rollout::may_install(slot, target) {
        return Status::Queued;
    }
    match slot.report(target) {
        Some(r) if r.version == d.version && r.package == d.package && r.seq > d.seq => match &r.outcome {
            Outcome::Loaded => Status::Loaded,
            Outcome::Failed(_) if slot.retry_seq().is_some_and(|retry| retry > r.seq) => Status::Waiting,
            Outcome::Failed(e) => Status::Failed(e.clone()),
        },
        _ => Status::Waiting,
    }
}

/// One environment as reports show it: its fleet minimum and each slot's adoption.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnvView {
    /// Environment.
    pub env: String,
    /// Its fleet minimum.
    pub min_targets: u32,
    /// Active targets of the environment, whatever sets they follow.
    pub targets: Vec<String>,
    /// Every policy set pushed there, by name.
    pub sets: Vec<SlotView>,
}

/// One slot as reports show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotView {
    /// The policy set.
    pub set: String,
    /// Whether its desired version is adopted.
    pub adopted: bool,
    /// The adoption itself.
    #[serde(flatten)]
    pub adoption: Adoption,
}

/// Every environment in promotion order with the adoption of each of its slots: what
/// `pd state` and `pd-verify` print.
pub fn overview(state: &State) -> Vec<EnvView> {
    state
        .envs()
        .iter()
        .map(|env| {
            let sets =
                state.env(env).map(|e| e.sets().keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let sets = sets
                .into_iter()
                .map(|set| {
                    let adoption = adoption(state, env, &set);
                    SlotView { adopted: adoption.adopted(), set, adoption }
                })
                .collect();
            let targets = state.env_targets(env).map(|k| k.decl.name.clone()).collect();
            EnvView { env: env.clone(), min_targets: state.min_targets(env), targets, sets }
        })
        .collect()
}

/// Whether `version` may be pushed to `env` now: approved, its slot's fleet enrolled, fully
/// adopted in the environment before (in promotion order), and above every version the slot
/// ever had (going back is a rollback).
pub fn check_promotion(state: &State, env: &str, version: Version, package: &Hash) -> Result<(), RuleError> {
    crate::rules::check_env(state, env)?;
    let pkg = crate::rules::live_package(state, version, package)?;
    let approvers = pkg.approvals.iter().filter(|a| a.void.is_none()).map(|a| a.approver.as_str());
    if let Err(problem) = crate::rollout::approvals_met(state, env, approvers) {
        let policy = state.policy(env).is_some_and(|p| p.approvals > 0 || !p.approver_groups.is_empty());
        if !policy {
            return Err(RuleError::NotApproved {
                version,
                have: pkg.counted_approvals(),
                need: state.approvals_required(),
            });
        }
        return Err(RuleError::ApprovalPolicy { version, env: env.to_string(), problem });
    }
    let set = pkg.package.name.as_str();
    // The fleet (target keys) and its adoption before are not control entries: a partial
    // state (a light agent's) takes them on the log's signed word; full replicas check them.
    let here = adoption(state, env, set);
    if here.short_by() > 0 && !state.is_partial() {
        return Err(RuleError::TooFewTargets {
            env: env.to_string(),
            set: set.to_string(),
            have: here.targets.len(),
            need: here.min_targets,
        });
    }
    let idx = state.env_index(env).unwrap_or(0);
    if idx > 0 && !state.is_partial() {
        let before = &state.envs()[idx - 1];
        let there = adoption(state, before, set);
        if there.adopted_version(version) && !crate::rollout::through(state, before, set, version) {
            return Err(RuleError::BadRollout {
                env: before.clone(),
                problem: format!("{version} cannot go on to {env} before its rollout in {before} ends (last wave started and baked)"),
            });
        }
        if !there.adopted_version(version) {
            let pushed = there.desired.as_ref().is_some_and(|d| d.version == version);
            let mut laggards = if pushed { there.waiting() } else { Vec::new() };
            laggards.extend(there.failed().into_iter().map(|(n, _)| n).filter(|_| pushed));
            return Err(RuleError::PromotionSkip {
                version,
                env: env.to_string(),
                before: before.clone(),
                laggards,
                short_by: if pushed { there.short_by() } else { 0 },
            });
        }
    }
    // A withdrawn version does not block: the slot moves on from what it had before.
    let live = |v: &Version| state.package(*v).is_some_and(|p| p.withdrawn.is_none());
    let highest = state.slot(env, set).and_then(|s| s.history().iter().map(|d| d.version).filter(live).max());
    if let Some(current) = highest.filter(|h| version <= *h) {
        return Err(RuleError::NotForward { env: env.to_string(), version, current });
    }
    Ok(())
}

/// Whether a target's ack may be appended: by a target of that environment following the
/// package's set, of a version that was made desired in the slot before it, and, for a
/// `loaded` ack, no downgrade from what the target loaded before unless a rollback made the
/// lower version desired after the higher one was.
pub fn check_ack(state: &State, e: &Entry, a: &Ack, key: &KeyState) -> Result<(), RuleError> {
    let bad = |problem: String| RuleError::BadAck { problem };
    let bound = key.decl.env.as_deref();
    if bound != Some(a.env.as_str()) {
        let env = bound.unwrap_or("no environment");
        return Err(bad(format!("{} is a target of {env}, not of {:?}", e.actor, a.env)));
    }
    let pkg = crate::rules::named_package(state, a.version, &a.package)?;
    let set = pkg.package.name.as_str();
    if !key.decl.follows(set) {
        return Err(bad(format!("{} does not follow the policy set {set}", e.actor)));
    }
    let Some(slot) = state.slot(&a.env, set) else {
        return Err(bad(format!("nothing of {set} was pushed to {} yet", a.env)));
    };
    let made_desired = |d: &&Desired| d.version == a.version && d.package == a.package;
    let Some(latest) = slot.history().iter().rev().find(made_desired) else {
        return Err(bad(format!("{} was never desired for {set} in {}", a.version, a.env)));
    };
    let desired = slot.desired().is_some_and(|d| d.version == a.version && d.package == a.package);
    if desired && !crate::rollout::may_install(slot, &e.actor) {
        return Err(bad(format!(
            "{} is in a wave of the rollout of {} in {} that has not started",
            e.actor, a.version, a.env
        )));
    }
    if a.outcome != Outcome::Loaded {
        return Ok(());
    }
    let before = slot.report(&e.actor).and_then(|r| r.loaded.as_ref());
    if let Some(l) = before.filter(|l| l.version > a.version) {
        // The higher version was loaded while it was desired: a rollback made after that
        // desire allows going back, even if the target's ack of the higher version landed
        // after the rollback (acks of superseded versions are facts too).
        let higher_desired = slot.history().iter().rev().find(|d| d.version == l.version && d.seq < l.seq);
        let since = higher_desired.map_or(l.seq, |d| d.seq);
        if !(latest.via == Via::Rollback && latest.seq > since) {
            return Err(bad(format!(
                "{} loaded {} before (#{}): loading the lower {} needs a rollback to it after {} was made desired",
                e.actor, l.version, l.seq, a.version, l.version
            )));
        }
    }
    Ok(())
}

/// What an agent knows that the ledger does not (yet): what its target runs, the desired
/// entry it already acked, and the failure it already reported (with that ack's seq).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentView {
    /// The version and tarball the target runs.
    pub running: Option<(Version, Hash)>,
    /// The desired entry it acked loaded (its ack may not be in the replica yet).
    pub acked: Option<u64>,
    /// The desired entry it failed to load, and the seq of its failed ack.
    pub failed: Option<(u64, u64)>,
}

/// What an agent should do next for one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing of the set is desired in its environment.
    Idle,
    /// The entry that made the version desired is not under a checkpoint yet: wait.
    AwaitCheckpoint(Desired),
    /// Fetch, verify, install and load it.
    Install(Desired),
    /// The target runs it but the ledger has no ack after it became desired: ack.
    Ack(Desired),
    /// It failed here, was reported, and no `retry` came since.
    Failed(Desired),
    /// The target's wave of the rollout has not started: keep what runs.
    Queued(Desired),
    /// Refuse it and report why.
    Refuse(Desired, String),
    /// Running and acknowledged.
    Done,
}

/// The install rule for an agent following `set` as `target` in `env`, over its verified
/// replica: only the desired version, only once its desiring entry is under the newest
/// checkpoint, never a downgrade unless a rollback made the lower version desired.
pub fn agent_step(state: &State, target: &str, env: &str, set: &str, view: AgentView) -> Step {
    let Some(slot) = state.slot(env, set) else { return Step::Idle };
    let Some(d) = slot.desired().cloned() else { return Step::Idle };
    if state.package(d.version).is_some_and(|p| p.withdrawn.is_some()) {
        // Withdrawn after it was pushed: install nothing, keep what runs until a push.
        return if view.running == Some((d.version, d.package)) { Step::Done } else { Step::Idle };
    }
    if !crate::rollout::may_install(slot, target) {
        return Step::Queued(d);
    }
    if state.latest_checkpoint().is_none_or(|c| c.checkpoint.size <= d.seq) {
        return Step::AwaitCheckpoint(d);
    }
    if view.running == Some((d.version, d.package)) {
        let acked = view.acked == Some(d.seq) || status(slot, &d, target) == Status::Loaded;
        return if acked { Step::Done } else { Step::Ack(d) };
    }
    if let Some((seq, ack)) = view.failed {
        if seq == d.seq && slot.retry_seq().is_none_or(|r| r <= ack) {
            return Step::Failed(d);
        }
    }
    if let Some((running, _)) = view.running {
        if d.version < running && d.via != Via::Rollback {
            let why =
                format!("refusing to downgrade from {running} to {} without a rollback entry", d.version);
            return Step::Refuse(d, why);
        }
    }
    Step::Install(d)
}

/// Who may submit a statement: on an empty ledger whoever brings its genesis, then any
/// active key (the rule decides what it may append).
pub fn may_submit<'s>(state: &'s State, actor: &str) -> Result<Option<&'s KeyState>, RuleError> {
    if state.is_empty() {
        return Ok(None);
    }
    active_with(state, actor, None).map(Some)
}

/// Who may upload an object: an active author key (objects come before the package naming them).
pub fn may_upload<'s>(state: &'s State, actor: &str) -> Result<&'s KeyState, RuleError> {
    active_with(state, actor, Some((Role::Author, "upload packages")))
}

/// Who may send a heartbeat: an active target key.
pub fn may_heartbeat<'s>(state: &'s State, actor: &str) -> Result<&'s KeyState, RuleError> {
    active_with(state, actor, Some((Role::Target, "send heartbeats")))
}

pub(crate) fn active_with<'s>(
    state: &'s State,
    actor: &str,
    role: Option<(Role, &'static str)>,
) -> Result<&'s KeyState, RuleError> {
    let key = state.keys().get(actor).ok_or_else(|| RuleError::UnknownKey { actor: actor.to_string() })?;
    if let Some(r) = &key.revoked {
        let reason = format!("{}: {}", r.kind.as_str(), r.reason);
        return Err(RuleError::RevokedKey { actor: actor.to_string(), reason });
    }
    match role {
        Some((role, action)) if !key.decl.roles.contains(&role) => {
            Err(RuleError::MissingRole { actor: actor.to_string(), role, action })
        }
        _ => Ok(key),
    }
}
