//! Progressive rollouts, defined once: which targets are in which wave, when a wave may
//! start, when a bake passes, when a version is through an environment, and which approvals
//! an environment's policy (and its freeze windows) require.
//!
//! Architecture Invariant: a push whose waves number more than one reaches no target until a
//! `wave` entry starts wave 1; wave N+1 starts only after every target of the waves before
//! it acked the version loaded and a `bake` entry of wave N passed (its targets ran it for
//! the bake time after their acks, every gate of the environment holding, with `gate`
//! entries showing it); the next environment takes the version only after the last wave
//! started, every target acked, and (when the environment bakes) its bake passed. Who is in
//! which wave is [`plan`], a pure function of the fleet: each `wave` entry names the targets
//! it adds, so a light agent, which does not see the fleet, still knows its own wave.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::adoption::{adoption, Status};
use crate::bytes::Hash;
use crate::entry::{Bake, Entry, EnvPolicy, GateCheck, Stage, WaveSize, WaveStart};
use crate::rules::RuleError;
use crate::state::{Slot, State, Via};
use crate::version::Version;

/// Most waves one rollout may have.
pub const MAX_WAVES: usize = 16;

/// A push's rollout, as folded.
#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    /// The push that began it.
    pub push_seq: u64,
    /// Its waves: at least one, the last taking every target.
    pub waves: Vec<WaveSize>,
    /// Each wave's bake time, as the environment's policy had it at the push (a later
    /// `env_set` changes later pushes, not this one).
    pub bake_ms: u64,
    /// The gates each bake checks, as of the push.
    pub gates: Vec<String>,
    /// The waves started, in order (for a single wave, the push started it).
    pub started: Vec<Mark>,
    /// The targets named by the waves started so far, with their wave (from 1).
    pub members: BTreeMap<String, u32>,
    /// The newest of: the newest wave start, and the newest `loaded` ack of the version.
    pub settled_ms: u64,
    /// Gate evaluations, in order.
    pub checks: Vec<GateRecord>,
    /// Bakes, in order.
    pub bakes: Vec<BakeRecord>,
}

/// Where and when something happened.
#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    /// The entry.
    pub seq: u64,
    /// Its time.
    pub time_ms: u64,
    /// Its signer.
    pub by: String,
}

/// One gate evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct GateRecord {
    /// The wave.
    pub wave: u32,
    /// The gate.
    pub gate: String,
    /// What it measured.
    pub value: String,
    /// Whether it held.
    pub passed: bool,
    /// The entry.
    pub at: Mark,
}

/// One bake's end.
#[derive(Clone, Debug, Serialize)]
pub struct BakeRecord {
    /// The wave.
    pub wave: u32,
    /// Whether it passed.
    pub passed: bool,
    /// What happened.
    pub reason: String,
    /// The entry.
    pub at: Mark,
}

impl Rollout {
    /// The rollout a push begins with `waves` (already [`normalise`]d).
    pub(crate) fn begin(e: &Entry, waves: Vec<WaveSize>, policy: &EnvPolicy) -> Rollout {
        let mark = Mark { seq: e.seq, time_ms: e.time_ms, by: e.actor.clone() };
        let started = if waves.len() == 1 { vec![mark] } else { Vec::new() };
        Rollout {
            push_seq: e.seq,
            waves,
            bake_ms: policy.bake_ms,
            gates: policy.gates.clone(),
            started,
            members: BTreeMap::new(),
            settled_ms: e.time_ms,
            checks: Vec::new(),
            bakes: Vec::new(),
        }
    }

    /// Waves started so far.
    pub fn current(&self) -> u32 {
        self.started.len() as u32
    }

    /// Whether the last wave must bake before the version is through (a bake time or gates).
    pub fn bakes(&self) -> bool {
        self.bake_ms > 0 || !self.gates.is_empty()
    }

    /// Whether every wave started.
    pub fn all_started(&self) -> bool {
        self.started.len() == self.waves.len()
    }

    /// The bake of `wave`, if it ended.
    pub fn bake(&self, wave: u32) -> Option<&BakeRecord> {
        self.bakes.iter().find(|b| b.wave == wave)
    }

    /// A failed bake, which stops the rollout.
    pub fn halted(&self) -> Option<&BakeRecord> {
        self.bakes.iter().find(|b| !b.passed)
    }

    /// Whether `target` is in a wave that started.
    pub fn reached(&self, target: &str) -> bool {
        self.all_started() || self.members.contains_key(target)
    }

    pub(crate) fn fold_wave(&mut self, e: &Entry, w: &WaveStart) {
        self.started.push(Mark { seq: e.seq, time_ms: e.time_ms, by: e.actor.clone() });
        for t in &w.targets {
            self.members.insert(t.clone(), w.stage.wave);
        }
        self.settled_ms = self.settled_ms.max(e.time_ms);
    }

    pub(crate) fn fold_gate(&mut self, e: &Entry, g: &GateCheck) {
        let at = Mark { seq: e.seq, time_ms: e.time_ms, by: e.actor.clone() };
        let (gate, value) = (g.gate.clone(), g.value.clone());
        self.checks.push(GateRecord { wave: g.stage.wave, gate, value, passed: g.passed, at });
    }

    pub(crate) fn fold_bake(&mut self, e: &Entry, b: &Bake) {
        let at = Mark { seq: e.seq, time_ms: e.time_ms, by: e.actor.clone() };
        self.bakes.push(BakeRecord { wave: b.stage.wave, passed: b.passed, reason: b.reason.clone(), at });
    }
}

/// `waves` as a rollout takes them: none is one wave of all, and a last wave of every
/// target is added unless the last already is `100%`.
pub fn normalise(waves: &[WaveSize]) -> Vec<WaveSize> {
    let mut out = waves.to_vec();
    if out.last() != Some(&WaveSize::Percent(100)) {
        out.push(WaveSize::Percent(100));
    }
    out
}

/// The waves a push to `env` goes out in: its own, or the environment's.
pub fn waves_for(state: &State, env: &str, own: &[WaveSize]) -> Vec<WaveSize> {
    let policy_waves = state.policy(env).map(|p| p.waves.as_slice()).unwrap_or_default();
    normalise(if own.is_empty() { policy_waves } else { own })
}

/// The rollout order of a slot's targets: those labelled `canary` first, then by the
/// BLAKE3 of the name (stable, and unrelated to when or in which order targets enrolled).
fn order(state: &State, env: &str, set: &str) -> Vec<(String, Vec<String>)> {
    let mut targets: Vec<(bool, Hash, String, Vec<String>)> = state
        .targets(env, set)
        .map(|k| {
            let canary = k.decl.labels.iter().any(|l| l == "canary");
            (!canary, Hash::of(k.decl.name.as_bytes()), k.decl.name.clone(), k.decl.labels.clone())
        })
        .collect();
    targets.sort();
    targets.into_iter().map(|(_, _, name, labels)| (name, labels)).collect()
}

/// Which targets each wave adds, in wave order (names sorted within a wave). Waves are
/// cumulative: `N` reaches the first N targets in rollout order (canaries first, then by
/// name hash), `P%` the first P percent rounded up, a label every target carrying it; the
/// last wave takes the rest.
pub fn plan(state: &State, env: &str, set: &str, waves: &[WaveSize]) -> Vec<Vec<String>> {
    let order = order(state, env, set);
    let n = order.len();
    let mut wave_of: Vec<Option<usize>> = vec![None; n];
    let mut taken = 0;
    for (w, size) in waves.iter().enumerate() {
        let reach = match size {
            WaveSize::Count(c) => (*c as usize).min(n),
            WaveSize::Percent(p) => (n * *p as usize).div_ceil(100),
            WaveSize::Label(l) => {
                for (i, (_, labels)) in order.iter().enumerate() {
                    if wave_of[i].is_none() && labels.iter().any(|x| x == l) {
                        wave_of[i] = Some(w);
                        taken += 1;
                    }
                }
                continue;
            }
        };
        for slot in wave_of.iter_mut().filter(|s| s.is_none()) {
            if taken >= reach {
                break;
            }
            *slot = Some(w);
            taken += 1;
        }
    }
    let last = waves.len().saturating_sub(1);
    let mut out = vec![Vec::new(); waves.len()];
    for (i, (name, _)) in order.into_iter().enumerate() {
        out[wave_of[i].unwrap_or(last)].push(name);
    }
    for w in &mut out {
        w.sort();
    }
    out
}

/// The rollout of the slot's desired version, when a push made it desired (a rollback
/// reaches every target at once).
pub fn active(slot: &Slot) -> Option<&Rollout> {
    let d = slot.desired()?;
    slot.rollout().filter(|r| d.via == Via::Push && r.push_seq == d.seq)
}

/// Whether `target` may install the slot's desired version: no rollout holds it back.
pub fn may_install(slot: &Slot, target: &str) -> bool {
    active(slot).is_none_or(|r| r.reached(target))
}

/// Where a slot's rollout stands: what `pd state` shows and the deploy drives.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// The version rolling out.
    pub version: Version,
    /// Each wave.
    pub waves: Vec<WaveView>,
    /// Waves started.
    pub started: u32,
    /// The bake time, as fixed at the push.
    pub bake_ms: u64,
    /// The gates, as fixed at the push.
    pub gates: Vec<String>,
    /// What comes next.
    pub next: Next,
}

/// One wave of a rollout.
#[derive(Clone, Debug, Serialize)]
pub struct WaveView {
    /// From 1.
    pub number: u32,
    /// As given (`1`, `10%`, `canary`).
    pub size: String,
    /// The targets it adds: as started, or as planned now.
    pub targets: Vec<String>,
    /// The entry that started it.
    pub started: Option<u64>,
    /// Its bake's outcome, once it ended.
    pub baked: Option<bool>,
}

/// What a rollout needs next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Next {
    /// A `wave` entry starting this wave.
    Start {
        /// The wave.
        wave: u32,
    },
    /// Acks from these targets of the started waves.
    Acks {
        /// The current wave.
        wave: u32,
        /// Who has not loaded it yet.
        waiting: Vec<String>,
    },
    /// The bake of this wave: gates held until at least `until_ms`.
    Bake {
        /// The wave.
        wave: u32,
        /// When its targets had all acked.
        since_ms: u64,
        /// When the bake time is over.
        until_ms: u64,
    },
    /// Every wave started, acked and baked.
    Done,
    /// A bake failed: the rollout stopped.
    Halted {
        /// The wave.
        wave: u32,
        /// Why.
        reason: String,
    },
}

/// The progress of the rollout of the slot's desired version, if a push made it desired.
pub fn progress(state: &State, env: &str, set: &str) -> Option<Progress> {
    let slot = state.slot(env, set)?;
    let r = active(slot)?;
    let version = slot.desired()?.version;
    let planned = plan(state, env, set, &r.waves);
    let waves = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let number = i as u32 + 1;
            let started = r.started.get(i).map(|m| m.seq);
            let targets = match started {
                Some(_) if i + 1 < r.waves.len() => {
                    r.members.iter().filter(|(_, w)| **w == number).map(|(n, _)| n.clone()).collect()
                }
                _ => planned[i].clone(),
            };
            WaveView {
                number,
                size: size.to_string(),
                targets,
                started,
                baked: r.bake(number).map(|b| b.passed),
            }
        })
        .collect();
    Some(Progress {
        version,
        waves,
        started: r.current(),
        bake_ms: r.bake_ms,
        gates: r.gates.clone(),
        next: next(state, env, set, r),
    })
}

fn next(state: &State, env: &str, set: &str, r: &Rollout) -> Next {
    if let Some(h) = r.halted() {
        return Next::Halted { wave: h.wave, reason: h.reason.clone() };
    }
    let wave = r.current();
    if wave == 0 {
        return Next::Start { wave: 1 };
    }
    let waiting = laggards(state, env, set, r);
    if !waiting.is_empty() {
        return Next::Acks { wave, waiting };
    }
    let last = r.all_started();
    if r.bake(wave).is_none() && (!last || r.bakes()) {
        return Next::Bake { wave, since_ms: r.settled_ms, until_ms: r.settled_ms.saturating_add(r.bake_ms) };
    }
    if last {
        Next::Done
    } else {
        Next::Start { wave: wave + 1 }
    }
}

/// Targets of the started waves that have not loaded the version (the whole fleet once the
/// last wave started, and its shortfall below the fleet minimum as `(short by N)`).
fn laggards(state: &State, env: &str, set: &str, r: &Rollout) -> Vec<String> {
    let a = adoption(state, env, set);
    let mut out: Vec<String> = a
        .targets
        .iter()
        .filter(|(t, s)| *s != Status::Loaded && (r.all_started() || r.members.contains_key(t)))
        .map(|(t, _)| t.clone())
        .collect();
    if r.all_started() && a.short_by() > 0 {
        out.push(format!("(short by {})", a.short_by()));
    }
    out
}

/// Whether `version` is through `env`: desired there, adopted, and (when its rollout has
/// waves or the environment bakes) every wave started and the last bake passed.
pub fn through(state: &State, env: &str, set: &str, version: Version) -> bool {
    let Some(slot) = state.slot(env, set) else { return false };
    if !adoption(state, env, set).adopted_version(version) {
        return false;
    }
    match active(slot) {
        // Made desired by a rollback, which returns only to a version that was through.
        None => true,
        Some(r) => r.all_started() && (!r.bakes() || r.bake(r.current()).is_some_and(|b| b.passed)),
    }
}

/// The rollout a `wave`, `gate` or `bake` entry names: the slot's, when the stage's version
/// is the desired one by a push.
fn rollout_of<'s>(state: &'s State, stage: &Stage) -> Result<(&'s str, &'s Rollout), RuleError> {
    let bad = |problem: String| RuleError::BadRollout { env: stage.env.clone(), problem };
    crate::rules::check_env(state, &stage.env)?;
    let pkg = crate::rules::live_package(state, stage.version, &stage.package)?;
    let set = pkg.package.name.as_str();
    let slot = state.slot(&stage.env, set);
    let desired = slot.and_then(Slot::desired);
    if desired.is_none_or(|d| d.version != stage.version) {
        return Err(bad(format!("{} is not the desired version of {set} there", stage.version)));
    }
    let r = slot.and_then(active).ok_or_else(|| {
        bad(format!("{} was made desired by a rollback, which has no waves", stage.version))
    })?;
    if let Some(h) = r.halted() {
        return Err(bad(format!(
            "the rollout of {} stopped when wave {} failed its bake (#{})",
            stage.version, h.wave, h.at.seq
        )));
    }
    Ok((set, r))
}

/// Whether a `wave` entry may start its wave now.
pub fn check_wave(state: &State, e: &Entry, w: &WaveStart) -> Result<(), RuleError> {
    let (set, r) = rollout_of(state, &w.stage)?;
    let env = w.stage.env.as_str();
    let bad = |problem: String| RuleError::BadRollout { env: env.to_string(), problem };
    let n = w.stage.wave;
    if n != r.current() + 1 || n as usize > r.waves.len() {
        return Err(bad(format!(
            "wave {n} cannot start: {} of {} wave(s) started, so the next is {}",
            r.current(),
            r.waves.len(),
            r.current() + 1
        )));
    }
    if n > 1 {
        if !state.is_partial() {
            let waiting = laggards(state, env, set, r);
            if !waiting.is_empty() {
                return Err(bad(format!(
                    "wave {n} cannot start before wave {} acked (waiting for {})",
                    n - 1,
                    waiting.join(", ")
                )));
            }
        }
        if r.bake(n - 1).is_none_or(|b| !b.passed) {
            return Err(bad(format!("wave {n} cannot start before wave {} passed its bake", n - 1)));
        }
    }
    let last = n as usize == r.waves.len();
    if last && !w.targets.is_empty() {
        return Err(bad(format!("the last wave ({n}) takes every target and names none")));
    }
    if !w.targets.windows(2).all(|p| p[0] < p[1]) {
        return Err(bad("a wave's targets are sorted and unique".into()));
    }
    if !last && w.targets.is_empty() {
        return Err(bad(format!(
            "wave {n} ({}) reaches no target of {set}: label targets for it, or change the waves",
            r.waves[n as usize - 1]
        )));
    }
    if !last && !state.is_partial() {
        let planned = &plan(state, env, set, &r.waves)[n as usize - 1];
        if &w.targets != planned {
            return Err(bad(format!(
                "wave {n} names {}, but the plan for it is {}",
                names(&w.targets),
                names(planned)
            )));
        }
    }
    check_freeze(state, e, env, w.stage.version)
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "no target".into()
    } else {
        list.join(", ")
    }
}

/// The current wave of the rollout a `gate` or `bake` entry names, whose bake has not ended.
fn baking<'s>(state: &'s State, stage: &Stage) -> Result<(&'s str, &'s Rollout), RuleError> {
    let (set, r) = rollout_of(state, stage)?;
    if stage.wave == 0 || stage.wave != r.current() || r.bake(stage.wave).is_some() {
        return Err(RuleError::BadRollout {
            env: stage.env.clone(),
            problem: format!(
                "wave {} is not baking: wave {} is the current one{}",
                stage.wave,
                r.current(),
                if r.bake(r.current()).is_some() { " and its bake ended" } else { "" }
            ),
        });
    }
    Ok((set, r))
}

/// Whether a gate evaluation may be recorded: of a gate fixed at the push, in the current
/// wave's bake.
pub fn check_gate(state: &State, g: &GateCheck) -> Result<(), RuleError> {
    let (_, r) = baking(state, &g.stage)?;
    let gates = &r.gates;
    if !gates.contains(&g.gate) {
        return Err(RuleError::BadRollout {
            env: g.stage.env.clone(),
            problem: format!("{:?} is not one of its gates ({})", g.gate, gates.join(", ")),
        });
    }
    Ok(())
}

/// Whether a bake may end: failed at any time; passed once the wave's targets all acked,
/// the bake time has run since, and every gate of the environment held (a passing `gate`
/// entry of each since the acks, and no failing one during the wave).
pub fn check_bake(state: &State, e: &Entry, b: &Bake) -> Result<(), RuleError> {
    let (set, r) = baking(state, &b.stage)?;
    if !b.passed {
        return Ok(());
    }
    let env = b.stage.env.as_str();
    let wave = b.stage.wave;
    let bad = |problem: String| RuleError::BadRollout { env: env.to_string(), problem };
    if let Some(g) = r.checks.iter().find(|g| g.wave == wave && !g.passed) {
        return Err(bad(format!(
            "wave {wave} cannot pass its bake: gate {} failed at #{} ({})",
            g.gate, g.at.seq, g.value
        )));
    }
    if state.is_partial() {
        return Ok(());
    }
    let waiting = laggards(state, env, set, r);
    if !waiting.is_empty() {
        return Err(bad(format!(
            "wave {wave} cannot pass its bake before its targets acked (waiting for {})",
            waiting.join(", ")
        )));
    }
    let reached = |t: &String| r.all_started() || r.members.contains_key(t);
    let a = adoption(state, env, set);
    if !a.targets.iter().any(|(t, s)| *s == Status::Loaded && reached(t)) {
        return Err(bad(format!("wave {wave} cannot pass its bake: no target of it runs the version")));
    }
    let baked = e.time_ms.saturating_sub(r.settled_ms);
    if baked < r.bake_ms {
        return Err(bad(format!(
            "wave {wave} has baked {baked} ms since its last ack, less than the {} ms the environment requires",
            r.bake_ms
        )));
    }
    for gate in &r.gates {
        let held = r
            .checks
            .iter()
            .any(|g| g.wave == wave && &g.gate == gate && g.passed && g.at.time_ms >= r.settled_ms);
        if !held {
            return Err(bad(format!("wave {wave} has no passing check of gate {gate} since its last ack")));
        }
    }
    Ok(())
}

/// Whether `approvers` (distinct keys, never the package's author) satisfy the approval
/// policy of `env`: enough of them, and, when the policy names groups, only members of those
/// groups count and distinct approvers cover as many distinct groups as approvals required
/// (at most all the groups). `Err` says what is missing.
pub fn approvals_met<'a>(
    state: &State,
    env: &str,
    approvers: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    let policy = state.policy(env);
    // An environment may ask for more approvals than the ledger's default, never fewer.
    let need = policy.map_or(0, |p| p.approvals).max(state.approvals_required()) as usize;
    let groups = policy.map(|p| p.approver_groups.as_slice()).unwrap_or_default();
    let mut approvers: Vec<&str> = approvers.collect();
    approvers.sort_unstable();
    approvers.dedup();
    let key_groups =
        |a: &str| -> Vec<String> { state.keys().get(a).map(|k| k.decl.groups.clone()).unwrap_or_default() };
    if groups.is_empty() {
        return if approvers.len() >= need {
            Ok(())
        } else {
            Err(format!("has {} of {need} approvals", approvers.len()))
        };
    }
    let eligible: Vec<(&str, Vec<String>)> = approvers
        .iter()
        .map(|a| (*a, key_groups(a).into_iter().filter(|g| groups.contains(g)).collect::<Vec<_>>()))
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let covered = matching(groups, &eligible);
    let need_groups = need.min(groups.len());
    let shown: Vec<String> = eligible.iter().map(|(a, g)| format!("{a} ({})", g.join(", "))).collect();
    if eligible.len() >= need && covered >= need_groups {
        return Ok(());
    }
    Err(format!(
        "needs {need} approval(s) from distinct approvers covering {need_groups} of the groups {}; counted: {}",
        groups.join(", "),
        if shown.is_empty() { "none".into() } else { shown.join(", ") }
    ))
}

/// The most groups distinct approvers can cover, one group each (bipartite matching by
/// augmenting paths; groups and approvers are few).
fn matching(groups: &[String], approvers: &[(&str, Vec<String>)]) -> usize {
    fn augment(
        a: usize,
        approvers: &[(&str, Vec<String>)],
        groups: &[String],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for (g, name) in groups.iter().enumerate() {
            if seen[g] || !approvers[a].1.contains(name) {
                continue;
            }
            seen[g] = true;
            if owner[g].is_none_or(|o| augment(o, approvers, groups, owner, seen)) {
                owner[g] = Some(a);
                return true;
            }
        }
        false
    }
    let mut owner = vec![None; groups.len()];
    (0..approvers.len())
        .filter(|&a| augment(a, approvers, groups, &mut owner, &mut vec![false; groups.len()]))
        .count()
}

/// A push or wave start at `e.time_ms` inside a freeze window of `env` needs
/// `freeze_override` entries for the version that satisfy the environment's approval policy.
pub fn check_freeze(state: &State, e: &Entry, env: &str, version: Version) -> Result<(), RuleError> {
    let Some(policy) = state.policy(env) else { return Ok(()) };
    let Some(window) = frozen_by(policy, e.time_ms).next() else { return Ok(()) };
    let overrides = state.package(version).map(|p| p.overrides.as_slice()).unwrap_or_default();
    let by = overrides.iter().filter(|o| o.env == env).map(|o| o.approver.as_str());
    approvals_met(state, env, by).map_err(|problem| RuleError::Frozen {
        env: env.to_string(),
        window: window.clone(),
        version,
        problem,
    })
}

/// The freeze windows of `policy` that hold at `time_ms`. A window this build cannot read
/// (zone data that moved) counts as holding: fail closed.
pub fn frozen_by(policy: &EnvPolicy, time_ms: u64) -> impl Iterator<Item = &String> {
    policy
        .freeze
        .iter()
        .filter(move |f| f.parse::<crate::freeze::Window>().map_or(true, |w| w.contains(time_ms)))
}

/// One step of a rollout as the ledger recorded it: what `pd-verify` prints as the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The entry.
    pub seq: u64,
    /// When it was appended.
    pub time_ms: u64,
    /// Who signed it.
    pub actor: String,
    /// Its kind.
    pub kind: &'static str,
    /// The environment.
    pub env: String,
    /// What happened ([`describe`]).
    pub text: String,
}

/// An environment's policy in one line, as `pd env show` and the log print it.
pub fn describe_policy(p: &EnvPolicy) -> String {
    let mut parts = vec![format!("at least {} target(s)", p.min_targets)];
    if !p.waves.is_empty() {
        parts.push(format!("waves {}", p.waves.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",")));
    }
    if p.bake_ms > 0 {
        parts.push(format!("bake {}", millis(p.bake_ms)));
    }
    for g in &p.gates {
        parts.push(format!("gate {g}"));
    }
    if p.auto_rollback {
        parts.push("auto-rollback".into());
    }
    for f in &p.freeze {
        parts.push(format!("freeze {f}"));
    }
    if p.approvals > 0 || !p.approver_groups.is_empty() {
        let n = if p.approvals == 0 { "the ledger's".to_string() } else { p.approvals.to_string() };
        let groups = if p.approver_groups.is_empty() {
            String::new()
        } else {
            format!(" from {}", p.approver_groups.join(", "))
        };
        parts.push(format!("{n} approval(s){groups}"));
    }
    parts.join(" · ")
}

/// A duration in ms as `10s`, `1m30s` or `250ms`.
pub fn millis(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

/// One line for a rollout step (a push, a wave, a gate, a bake, a freeze override or a
/// rollback): the log and `pd-verify`'s timeline print it.
pub fn describe(body: &crate::entry::Body) -> Option<String> {
    use crate::entry::Body;
    Some(match body {
        Body::Push(p) => {
            let waves = if p.waves.is_empty() {
                String::new()
            } else {
                format!(" in waves {}", p.waves.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(","))
            };
            format!("{} pushed to {}{waves} · {}", p.version, p.env, p.reason)
        }
        Body::Wave(w) => {
            let who =
                if w.targets.is_empty() { "every other target".to_string() } else { w.targets.join(", ") };
            format!("{} wave {} started in {}: {who}", w.stage.version, w.stage.wave, w.stage.env)
        }
        Body::Gate(g) => format!(
            "{} wave {} in {}: gate {} {} ({})",
            g.stage.version,
            g.stage.wave,
            g.stage.env,
            g.gate,
            if g.passed { "held" } else { "FAILED" },
            g.value
        ),
        Body::Bake(b) => format!(
            "{} wave {} in {}: bake {} · {}",
            b.stage.version,
            b.stage.wave,
            b.stage.env,
            if b.passed { "passed" } else { "FAILED" },
            b.reason
        ),
        Body::FreezeOverride(o) => {
            format!("{} may be pushed to {} during a freeze · {}", o.version, o.env, o.reason)
        }
        Body::Rollback(r) => format!("{} rolled back to {} · {}", r.env, r.version, r.reason),
        _ => return None,
    })
}
