//! `pd ledger deploy` and the wait behind it and behind `pd ledger rollback`: push env by
//! env in promotion order, wait for every target to acknowledge, roll back on failure.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use pd_ledger::state::PackageState;
use pd_ledger::{Body, Push, Retry, Rollback, SecretKey, State, Version};
use serde_json::json;

use crate::backend::Backend;
use crate::home::Home;
use crate::ledger_cmd::{deploy_version, package_of, package_with, previous_version, PackageArgs, Packaged};
use crate::{output, refuse, CheckFailed, Ctx, NotAdopted};
use pd_ledger::adoption::Status;
use pd_ledger::heartbeat::Liveness;

/// Arguments of `pd ledger deploy`.
#[derive(Args)]
pub struct DeployArgs {
    /// A policy file (the newest package holding exactly it; packaged now, as `pd ledger
    /// package` would, if none does) or a version such as PD-23.1.0.
    target: String,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
    /// Push to this environment only (default: every environment in promotion order).
    #[arg(long, conflicts_with = "until")]
    env: Option<String>,
    /// Stop after this environment.
    #[arg(long)]
    until: Option<String>,
    /// Push one environment and return instead of waiting for acknowledgements.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for each environment's targets.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// When targets fail, roll the environment back to its previous version and wait for
    /// them to converge (default: the home's `auto_rollback` setting).
    #[arg(long)]
    auto_rollback: bool,
    /// Fraction of an environment's targets that may fail before it counts as failed.
    #[arg(long, default_value_t = 0.0, value_name = "RATIO", value_parser = ratio)]
    max_failed: f64,
    /// End the wait as failed (rolling back with --auto-rollback) as soon as a target of the
    /// environment is stale: no heartbeat within 3 of its intervals.
    #[arg(long)]
    fail_on_stale: bool,
    /// The version is already pushed and some targets failed to load it: ask them to try
    /// again (a signed `retry` entry) and wait; their earlier failures stop counting.
    #[arg(long)]
    retry_failed: bool,
    /// Show which targets each wave of each environment would reach, its bake, gates and
    /// freezes, and push nothing.
    #[arg(long)]
    plan: bool,
    /// Waves for this deploy instead of each environment's (`1,10%,100%`, a label such as
    /// `canary`; see `pd env set --waves`), recorded in each push.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    waves: Option<Vec<pd_ledger::WaveSize>>,
}

/// When a wait ends without adoption.
#[derive(Clone, Copy)]
pub struct Until {
    /// The wait gives up then.
    pub deadline: Instant,
    /// Fraction of targets that may fail.
    pub max_failed: f64,
    /// A stale target ends it.
    pub fail_on_stale: bool,
}

impl Until {
    /// Waits up to `timeout` for all targets, however many fail, stale or not.
    pub fn after(timeout: Duration) -> Until {
        Until { deadline: Instant::now() + timeout, max_failed: 1.0, fail_on_stale: false }
    }
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1 (0.1 = one target in ten)")),
    }
}

/// How one environment's wait ended.
#[derive(serde::Serialize)]
pub struct Waited {
    /// Targets expected.
    pub targets: usize,
    /// Targets that reported the version loaded.
    pub loaded: usize,
    /// Targets that reported failure, with their error.
    pub failed: Vec<(String, String)>,
    /// Targets that did not report in time.
    pub missing: Vec<String>,
    /// Targets expected when the wait began and revoked during it.
    pub revoked: Vec<String>,
    /// Enrolled targets the fleet lacks to reach its minimum.
    pub short_by: usize,
    /// Targets with no heartbeat within 3 of their intervals, when the wait ended.
    pub stale: Vec<String>,
    /// Targets in waves of the rollout that have not started (not waited for).
    pub queued: usize,
}

impl Waited {
    /// Adopted by the one rule ([`pd_ledger::adoption`]), and nobody the wait began with
    /// was revoked meanwhile (a revocation must not turn a wait into a success).
    fn adopted(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty() && self.revoked.is_empty() && self.short_by == 0
    }

    /// Who the wait still waits for, briefly: the first few missing, failed and stale targets.
    fn waiting_for(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", few(&self.missing)));
        }
        if !self.failed.is_empty() {
            let failed: Vec<String> = self.failed.iter().map(|(t, _)| t.clone()).collect();
            parts.push(format!("failed {}", few(&failed)));
        }
        if !self.stale.is_empty() {
            parts.push(format!("stale {}", few(&self.stale)));
        }
        parts.join("; ")
    }

    fn problems(&self) -> String {
        let mut parts: Vec<String> = self.failed.iter().map(|(t, e)| format!("{t} failed: {e}")).collect();
        if !self.missing.is_empty() {
            parts.push(format!("no answer yet from {}", self.missing.join(", ")));
        }
        if !self.revoked.is_empty() {
            parts.push(format!(
                "{} revoked during the wait (a rerun of the deploy counts the fleet as it is now)",
                self.revoked.join(", ")
            ));
        }
        if self.short_by > 0 {
            parts.push(format!("the fleet lacks {} enrolled target(s) of its minimum", self.short_by));
        }
        if !self.stale.is_empty() {
            parts.push(format!("stale (no heartbeat within 3 intervals): {}", self.stale.join(", ")));
        }
        parts.join("; ")
    }
}

/// The first few names, and how many more.
fn few(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(|n| n.as_str()).collect();
    match names.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

/// A progress bar that is cleared however its owner ends.
struct ClearOnDrop(indicatif::ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Runs `pd ledger deploy`.
pub fn run(ctx: &Ctx, a: DeployArgs) -> Result<()> {
    if a.plan {
        return show_plan(ctx, &a);
    }
    let (home, mut b) = Backend::of_home(ctx)?;
    let (actor, key, _) = ctx.signer(&home, &mut b)?;
    let auto_rollback = a.auto_rollback || home.config.auto_rollback;
    let (version, state) = version_to_deploy(ctx, &home, &mut b, &a)?;
    let envs = plan(&state, version, &a)?;
    if envs.is_empty() {
        let end = a.until.as_deref().and_then(|u| state.env_index(u)).unwrap_or(state.envs().len() - 1);
        let done = state.envs()[..=end].join(", ");
        if ctx.json {
            return ctx.emit(&json!({ "version": version, "envs": [], "already_adopted": done }));
        }
        output::ok(format!("{version} is already adopted in {done}: nothing to do"));
        return Ok(());
    }
    // Announced once the first push is recorded: a refused push shows no step under way.
    let mut plan = (!ctx.json).then(|| envs.iter().map(|e| format!("{e}…")).collect::<Vec<_>>().join(" "));
    let mut announce = move || {
        if let Some(names) = plan.take() {
            output::working(format!("deploying to {names}"));
        }
    };
    let mut report = Vec::new();
    for env in &envs {
        let state = b.state()?;
        let here = pd_ledger::adoption::adoption_of(&state, env, version);
        let desired = here.desired.as_ref().map(|d| d.version);
        let mut seq = None;
        if a.retry_failed && desired == Some(version) && !here.failed().is_empty() {
            let failed: Vec<String> = here.failed().into_iter().map(|(t, _)| t).collect();
            let (entry, _) = b.append(&actor, &key, |st| {
                let package = package_of(st, version)?.package.tarball.blake3;
                Ok(Body::Retry(Retry { env: env.clone(), version, package, reason: a.reason.clone() }))
            })?;
            seq = Some(entry.entry.seq);
            announce();
            ctx.progress(
                json!({ "event": "retry", "env": env, "version": version, "seq": seq, "targets": failed }),
            )?;
            if !ctx.json {
                outln!("  {} asked to retry {version} in {env} at #{}", failed.join(", "), entry.entry.seq);
            }
        } else if desired != Some(version) {
            let revert = std::path::Path::new(&a.target).exists();
            let waves = a.waves.clone().unwrap_or_default();
            match make_desired(&mut b, (&actor, &key), (env, version, revert), (&waves, &a.reason))? {
                Some(entry) => {
                    seq = Some(entry.entry.seq);
                    announce();
                    let how =
                        if matches!(entry.entry.body, Body::Rollback(_)) { "rolled back" } else { "pushed" };
                    ctx.progress(json!({ "event": how, "env": env, "version": version, "seq": seq }))?;
                    if !ctx.json {
                        outln!("  {version} {how} to {env} at #{}", entry.entry.seq);
                    }
                }
                None if !ctx.json => outln!("  {version} was just pushed to {env} by another deploy"),
                None => {}
            }
        } else if through(&state, env, version) {
            report.push(json!({ "env": env, "outcome": "already adopted" }));
            continue;
        }
        if a.no_wait {
            return pushed_only(ctx, &state, (env, version, seq), a.waves.as_deref().unwrap_or_default());
        }
        announce();
        let until =
            Until { max_failed: a.max_failed, fail_on_stale: a.fail_on_stale, ..Until::after(a.timeout) };
        let waited = match roll_out(ctx, &mut b, (&actor, &key), (env, version), until, a.timeout)? {
            Rolled::Waited(w) => w,
            Rolled::Halted { wave, reason } => {
                let policy = b.state()?.policy(env).is_some_and(|p| p.auto_rollback);
                let failure = halted(
                    ctx,
                    &mut b,
                    (&actor, &key),
                    (env, version, wave),
                    &reason,
                    policy || auto_rollback,
                    &a,
                )?;
                report.push(json!({ "env": env, "seq": seq, "outcome": if failure.rolled_back_to.is_some() { "rolled back" } else { "halted" }, "wave": wave, "reason": reason, "rolled_back_to": failure.rolled_back_to }));
                if ctx.json {
                    ctx.emit(&json!({ "version": version, "envs": report }))?;
                }
                return Err(failure.into());
            }
        };
        if waited.adopted() {
            ctx.progress(
                json!({ "event": "adopted", "env": env, "version": version, "targets": waited.targets }),
            )?;
            if !ctx.json {
                output::ok(format!("{env}: {n}/{n} targets acknowledged {version}", n = waited.targets));
            }
            report.push(json!({ "env": env, "seq": seq, "outcome": "adopted", "targets": waited.targets }));
            continue;
        }
        let rollback =
            auto_rollback.then(|| Until { fail_on_stale: a.fail_on_stale, ..Until::after(a.timeout) });
        let failure = not_adopted(ctx, &mut b, (&actor, &key), env, version, &waited, rollback)?;
        let outcome = if auto_rollback { "rolled back" } else { "failed" };
        report.push(json!({ "env": env, "seq": seq, "outcome": outcome, "wait": waited, "rolled_back_to": failure.rolled_back_to }));
        if ctx.json {
            ctx.emit(&json!({ "version": version, "envs": report }))?;
        }
        return Err(failure.into());
    }
    if ctx.json {
        return ctx.emit(&json!({ "version": version, "envs": report }));
    }
    output::ok("all targets acknowledged");
    let state = b.state()?;
    if let Some(next) = envs.last().and_then(|e| state.env_index(e)).and_then(|i| state.envs().get(i + 1)) {
        output::next(format!("pd ledger deploy {version} --reason \"…\" (promotes to {next})"));
    }
    Ok(())
}

/// `pd ledger deploy --plan`: each environment's waves and the targets in them, as a push now
/// would have them, with bake, gates and freezes. Appends nothing.
fn show_plan(ctx: &Ctx, a: &DeployArgs) -> Result<()> {
    let (_, mut b) = Backend::of_home(ctx)?;
    let state = b.state()?;
    check_envs(&state, a)?;
    let (version, set) = match deploy_version(&state, &a.target)? {
        Some(v) => (Some(v), package_of(&state, v)?.package.name.clone()),
        None => {
            (None, crate::ledger_cmd::policy_name(&PackageArgs::of(a.target.clone().into(), String::new())))
        }
    };
    let envs = match (version, &a.env) {
        (Some(v), _) => plan(&state, v, a)?,
        (None, Some(env)) => vec![env.clone()],
        (None, None) => {
            let end = a.until.as_deref().and_then(|u| state.env_index(u)).unwrap_or(state.envs().len() - 1);
            state.envs()[..=end].to_vec()
        }
    };
    let now = crate::home::now_ms();
    let own = a.waves.clone().unwrap_or_default();
    let mut out = Vec::new();
    for env in &envs {
        let policy = state.policy(env).cloned().unwrap_or_else(|| pd_ledger::EnvPolicy::with_min_targets(1));
        let waves = pd_ledger::rollout::waves_for(&state, env, &own);
        let planned = pd_ledger::rollout::plan(&state, env, &set, &waves);
        let frozen: Vec<String> = pd_ledger::rollout::frozen_by(&policy, now).cloned().collect();
        let list: Vec<serde_json::Value> = waves
            .iter()
            .zip(&planned)
            .enumerate()
            .map(
                |(i, (size, targets))| json!({ "wave": i + 1, "size": size.to_string(), "targets": targets }),
            )
            .collect();
        if !ctx.json {
            outln!(
                "{env}: {} wave(s){}",
                waves.len(),
                match policy.bakes() {
                    true => format!(", each baking {}", pd_ledger::rollout::millis(policy.bake_ms)),
                    false => String::new(),
                }
            );
            for (i, (size, targets)) in waves.iter().zip(&planned).enumerate() {
                let who = if targets.is_empty() { "no target".to_string() } else { few(targets) };
                outln!("  wave {} ({size}): {who}", i + 1);
            }
            for g in &policy.gates {
                outln!("  gate {g}");
            }
            if policy.auto_rollback {
                outln!("  a failed gate rolls {env} back");
            }
            for f in &frozen {
                outln!("  FROZEN now ({f}): a push needs freeze overrides (`pd ledger override`)");
            }
        }
        out.push(json!({ "env": env, "waves": list, "bake_ms": policy.bake_ms, "gates": policy.gates, "auto_rollback": policy.auto_rollback, "frozen": frozen }));
    }
    if ctx.json {
        return ctx.emit(&json!({ "version": version, "set": set, "envs": out }));
    }
    Ok(())
}

/// How a rollout through one environment ended.
enum Rolled {
    /// Every wave's targets answered (adopted, or not: see the wait).
    Waited(Waited),
    /// A bake failed: the rollout stopped at this wave.
    Halted {
        /// The wave.
        wave: u32,
        /// Why.
        reason: String,
    },
}

/// Drives the rollout of `version` through `env` as the ledger's rule allows it
/// (`pd_ledger::rollout`): start each wave, wait for its targets, bake it with the gates
/// holding, and on to the next, each step a signed entry. Picks up where the ledger stands,
/// so a rerun of the deploy (or a second deployer) continues a rollout instead of restarting it.
///
/// `until` bounds each wait on its own: each wave's acks get the whole timeout, and each bake
/// its bake time plus the timeout for gates that have no answer yet.
fn roll_out(
    ctx: &Ctx,
    b: &mut Backend,
    signer: (&str, &SecretKey),
    (env, version): (&str, Version),
    until: Until,
    timeout: Duration,
) -> Result<Rolled> {
    use pd_ledger::rollout::{progress, Next};
    let mut last = None;
    loop {
        let until = Until { deadline: Instant::now() + timeout, ..until };
        let state = b.state()?;
        let set = package_of(&state, version)?.package.name.clone();
        let Some(p) = progress(&state, env, &set).filter(|p| p.version == version) else {
            // Made desired by a rollback (a revert): every target at once, nothing to bake.
            return Ok(Rolled::Waited(wait(ctx, b, env, version, until)?));
        };
        let moved_on = |b: &mut Backend, next: &Next| -> Result<bool> {
            Ok(progress(&b.state()?, env, &set).is_none_or(|p| p.next != *next))
        };
        match p.next.clone() {
            Next::Start { wave } => {
                if let Err(e) = start_wave(ctx, b, signer, (env, &set, version), wave, p.waves.len()) {
                    // Another deployer may have started it first.
                    if !moved_on(b, &p.next)? {
                        return Err(e);
                    }
                }
            }
            Next::Acks { .. } => {
                let w = wait(ctx, b, env, version, until)?;
                if !w.adopted() {
                    return Ok(Rolled::Waited(w));
                }
                last = Some(w);
            }
            Next::Bake { wave, since_ms, until_ms } => {
                let targets: Vec<String> =
                    p.waves.iter().filter(|w| w.started.is_some()).flat_map(|w| w.targets.clone()).collect();
                let baking =
                    Baking { env, version, wave, since_ms, until_ms, targets: &targets, gates: &p.gates };
                let left = until_ms.saturating_sub(crate::home::now_ms());
                match bake(ctx, b, signer, &baking, until.deadline + Duration::from_millis(left))? {
                    Baked::Passed | Baked::Again => {}
                    Baked::Failed(reason) => return Ok(Rolled::Halted { wave, reason }),
                }
            }
            Next::Done => {
                let w = match last.take() {
                    Some(w) => w,
                    None => wait(ctx, b, env, version, until)?,
                };
                return Ok(Rolled::Waited(w));
            }
            Next::Halted { wave, reason } => return Ok(Rolled::Halted { wave, reason }),
        }
    }
}

/// Appends the `wave` entry starting `wave` (of `count`), naming its targets as the plan has them.
fn start_wave(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    (env, set, version): (&str, &str, Version),
    wave: u32,
    count: usize,
) -> Result<()> {
    let (entry, _) = b.append(actor, key, |st| {
        let package = package_of(st, version)?.package.tarball.blake3;
        let waves = st.slot(env, set).and_then(|s| s.rollout()).map(|r| r.waves.clone()).unwrap_or_default();
        let targets = match wave as usize == waves.len() {
            true => Vec::new(),
            false => pd_ledger::rollout::plan(st, env, set, &waves)
                .get(wave as usize - 1)
                .cloned()
                .unwrap_or_default(),
        };
        let stage = pd_ledger::Stage { env: env.to_string(), version, package, wave };
        Ok(Body::Wave(pd_ledger::WaveStart { stage, targets }))
    })?;
    let Body::Wave(w) = &entry.entry.body else { unreachable!("built as a wave") };
    let seq = entry.entry.seq;
    ctx.progress(json!({ "event": "wave", "env": env, "version": version, "wave": wave, "waves": count, "targets": w.targets, "seq": seq }))?;
    if !ctx.json {
        let who = if w.targets.is_empty() { "every other target".to_string() } else { w.targets.join(", ") };
        outln!("  wave {wave}/{count} of {version} in {env}: {who} (#{seq})");
    }
    Ok(())
}

/// A wave's bake, as the deploy measures it.
struct Baking<'a> {
    env: &'a str,
    version: Version,
    wave: u32,
    /// The server's time of the wave's last ack.
    since_ms: u64,
    /// When the bake time is over (server clock).
    until_ms: u64,
    /// Targets of the started waves.
    targets: &'a [String],
    gates: &'a [String],
}

/// How often gates are checked during a bake. A smoke-test command runs once per bake.
const GATE_INTERVAL: Duration = Duration::from_millis(500);

/// How a bake ended.
enum Baked {
    /// Recorded as passed.
    Passed,
    /// Recorded as failed, with why.
    Failed(String),
    /// The ledger moved under it (an ack reset the bake, another deployer recorded it):
    /// look again at where the rollout stands.
    Again,
}

/// Bakes a wave: checks every gate every [`GATE_INTERVAL`] until the bake time is over,
/// then records each gate's passing check and the passed bake. A failing gate is recorded
/// with the failed bake. A gate still without an answer at `deadline` (Prometheus down, no
/// traffic) records nothing and ends the deploy with an error: a rerun continues the bake.
fn bake(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    w: &Baking<'_>,
    deadline: Instant,
) -> Result<Baked> {
    use crate::gates::Verdict;
    let gates: Vec<(String, pd_ledger::gate::Gate)> = w
        .gates
        .iter()
        .map(|g| Ok((g.clone(), g.parse().map_err(|e: String| crate::Refused(e))?)))
        .collect::<Result<_>>()?;
    let bake_ms = w.until_ms.saturating_sub(w.since_ms);
    ctx.progress(json!({ "event": "baking", "env": w.env, "version": w.version, "wave": w.wave, "bake_ms": bake_ms, "gates": w.gates }))?;
    if !ctx.json {
        let gates =
            if w.gates.is_empty() { String::new() } else { format!(", checking {}", w.gates.join(", ")) };
        outln!("  wave {} baking {}{gates}", w.wave, pd_ledger::rollout::millis(bake_ms));
    }
    let stage = |st: &State| -> Result<pd_ledger::Stage> {
        let package = package_of(st, w.version)?.package.tarball.blake3;
        Ok(pd_ledger::Stage { env: w.env.to_string(), version: w.version, package, wave: w.wave })
    };
    let gauge = crate::gates::Evaluator::new()?;
    let health = gates.iter().any(|(_, g)| matches!(g, pd_ledger::gate::Gate::Health));
    let mut once: std::collections::BTreeMap<usize, Verdict> = Default::default();
    let mut recorded = false;
    loop {
        let state = b.state()?;
        let next = pd_ledger::rollout::progress(&state, w.env, &package_of(&state, w.version)?.package.name);
        if !next.is_some_and(|p| matches!(p.next, pd_ledger::rollout::Next::Bake { wave, since_ms, .. } if wave == w.wave && since_ms == w.since_ms)) {
            return Ok(Baked::Again);
        }
        // Heartbeats (each one's signature checked) only for a `health` gate.
        let beats = match health.then(|| b.heartbeats()) {
            None => Default::default(),
            Some(Ok(h)) => h.verified(&state),
            Some(Err(e)) if crate::backend::is_transient(&e) => Default::default(),
            Some(Err(e)) => return Err(e),
        };
        let view = crate::gates::Wave {
            env: w.env,
            version: w.version,
            wave: w.wave,
            targets: w.targets,
            since_ms: w.since_ms,
            deadline,
        };
        let mut verdicts = Vec::new();
        for (i, (text, gate)) in gates.iter().enumerate() {
            let v = match (gate, once.get(&i)) {
                (pd_ledger::gate::Gate::Command(_), Some(v)) => v.clone(),
                _ => gauge.evaluate(gate, &view, &beats),
            };
            if matches!(gate, pd_ledger::gate::Gate::Command(_)) {
                once.insert(i, v.clone());
            }
            verdicts.push((text.clone(), v));
        }
        let timed_out = Instant::now() >= deadline;
        if let Some((text, v)) =
            verdicts.iter().find(|(_, v)| matches!(v, Verdict::Pending(_))).filter(|_| timed_out)
        {
            crate::refuse!(
                "gate {text} had no answer before the timeout ({}): nothing was recorded; rerun the deploy to continue the bake of wave {}",
                v.value(),
                w.wave
            );
        }
        if let Some((text, v)) = verdicts.iter().find(|(_, v)| matches!(v, Verdict::Fail(_))) {
            let reason = format!("gate {text} failed in wave {}: {}", w.wave, v.value());
            record_gate(ctx, b, (actor, key), w, (text, v.value(), false), &stage)?;
            record_bake(ctx, b, (actor, key), w, false, &reason, &stage)?;
            return Ok(Baked::Failed(reason));
        }
        let all_pass = verdicts.iter().all(|(_, v)| matches!(v, Verdict::Pass(_)));
        if all_pass && crate::home::now_ms() >= w.until_ms {
            // Each gate's passing check once per bake, however often the bake entry waits
            // for the server's clock.
            for (text, v) in verdicts.iter().filter(|_| !recorded) {
                record_gate(ctx, b, (actor, key), w, (text, v.value(), true), &stage)?;
            }
            recorded = true;
            let reason =
                format!("baked {} after the last ack, every gate held", pd_ledger::rollout::millis(bake_ms));
            match record_bake(ctx, b, (actor, key), w, true, &reason, &stage) {
                Ok(()) => return Ok(Baked::Passed),
                // This clock runs ahead of the server's: the bake is not over by its clock yet
                // (checked first: this refusal names the rollout too).
                Err(e) if e.chain().any(|c| c.to_string().contains("less than the")) => {
                    if timed_out {
                        return Err(e);
                    }
                }
                // The ledger moved (an ack, another deployer): look again.
                Err(e) if e.chain().any(|c| c.to_string().contains("rollout in ")) => {
                    return Ok(Baked::Again)
                }
                Err(e) => return Err(e),
            }
        }
        // Never a busy loop: the pause is GATE_INTERVAL even past the deadline.
        let wake = Instant::now() + GATE_INTERVAL;
        crate::backend::pause(wake, &|| ctx.check())?;
    }
}

/// Appends one gate's check (gate, value, passed) of the wave baking.
fn record_gate(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    w: &Baking<'_>,
    (gate, value, passed): (&str, &str, bool),
    stage: &dyn Fn(&State) -> Result<pd_ledger::Stage>,
) -> Result<()> {
    b.append(actor, key, |st| {
        let (gate, value) = (gate.to_string(), value.to_string());
        Ok(Body::Gate(pd_ledger::GateCheck { stage: stage(st)?, gate, value, passed }))
    })?;
    ctx.progress(json!({ "event": "gate", "env": w.env, "wave": w.wave, "gate": gate, "value": value, "passed": passed }))
}

fn record_bake(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    w: &Baking<'_>,
    passed: bool,
    reason: &str,
    stage: &dyn Fn(&State) -> Result<pd_ledger::Stage>,
) -> Result<()> {
    let (entry, _) = b.append(actor, key, |st| {
        Ok(Body::Bake(pd_ledger::Bake { stage: stage(st)?, passed, reason: reason.to_string() }))
    })?;
    let seq = entry.entry.seq;
    ctx.progress(json!({ "event": "bake", "env": w.env, "version": w.version, "wave": w.wave, "passed": passed, "reason": reason, "seq": seq }))?;
    if !ctx.json {
        match passed {
            true => {
                output::ok(format!("wave {} of {} in {} passed its bake (#{seq})", w.wave, w.version, w.env))
            }
            false => output::warn(format!(
                "wave {} of {} in {} failed its bake: {reason} (#{seq})",
                w.wave, w.version, w.env
            )),
        }
    }
    Ok(())
}

/// A deploy's end when a bake failed in `env`: with `rollback`, every target of the
/// environment goes back to the previous version (later waves never had the new one).
fn halted(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    (env, version, wave): (&str, Version, u32),
    reason: &str,
    rollback: bool,
    a: &DeployArgs,
) -> Result<NotAdopted> {
    let mut failure = NotAdopted {
        env: env.to_string(),
        version,
        message: format!("the rollout of {version} in {env} stopped at wave {wave}: {reason}; later waves never received it. Roll back with `pd ledger rollback {env} --reason \"…\"`, or set `pd env set {env} --auto-rollback`"),
        failed: Vec::new(),
        missing: Vec::new(),
        rolled_back_to: None,
    };
    if rollback {
        let until = Until { fail_on_stale: a.fail_on_stale, ..Until::after(a.timeout) };
        let (back, stuck) = roll_back_after(ctx, b, (actor, key), (env, version), reason, until)?;
        failure.message = format!("the rollout of {version} in {env} stopped at wave {wave} ({reason}); rolled {env} back to {back}{stuck}");
        failure.rolled_back_to = Some(back);
    }
    Ok(failure)
}

/// Rolls `env` back from `version` because of `why`: the version it went back to, and, when
/// the rollback's own targets did not all come back either, what is still wrong (", but …").
fn roll_back_after(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    (env, version): (&str, Version),
    why: &str,
    until: Until,
) -> Result<(Version, String)> {
    let set = b.state()?.package(version).map(|p| p.package.name.clone());
    let back = roll_back(
        ctx,
        b,
        actor,
        key,
        (env, set.as_deref()),
        Some(version),
        format!("automatic: {why}"),
        until,
    );
    match back {
        Ok(back) => Ok((back, String::new())),
        // The rollback entry is written but its targets did not all come back either.
        Err(e) => match e.downcast::<NotAdopted>() {
            Ok(n) => Ok((n.version, format!(", but {}", n.message))),
            Err(e) => Err(e),
        },
    }
}

/// A deploy's end when `env` did not adopt `version`: with `rollback` (a timeout) the
/// environment is rolled back first and its targets waited for.
fn not_adopted(
    ctx: &Ctx,
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    env: &str,
    version: Version,
    waited: &Waited,
    rollback: Option<Until>,
) -> Result<NotAdopted> {
    let problems = waited.problems();
    let mut failure = NotAdopted {
        env: env.to_string(),
        version,
        message: format!("{version} did not converge in {env}: {problems}; roll back with `pd ledger rollback {env} --reason \"…\"` or rerun with --auto-rollback"),
        failed: waited.failed.clone(),
        missing: waited.missing.clone(),
        rolled_back_to: None,
    };
    if let Some(until) = rollback {
        let (back, stuck) = roll_back_after(ctx, b, (actor, key), (env, version), &problems, until)?;
        failure.message =
            format!("{version} failed in {env} ({problems}); rolled {env} back to {back}{stuck}");
        failure.rolled_back_to = Some(back);
    }
    Ok(failure)
}

/// The version a deploy ships: the one named, the newest package holding exactly the file,
/// or (no package holds it yet) a new package of it, as `pd ledger package` would build.
/// Its artifact is checked as a target will check it. Returns it with the state after it.
fn version_to_deploy(ctx: &Ctx, home: &Home, b: &mut Backend, a: &DeployArgs) -> Result<(Version, State)> {
    let state = b.state()?;
    // Every argument is checked before a new package is written.
    check_envs(&state, a)?;
    let (version, new_at, state) = match deploy_version(&state, &a.target)? {
        Some(v) => (v, None, state),
        None => {
            let args = PackageArgs::of(a.target.clone().into(), a.reason.clone());
            let (version, new_at) = match package_with(ctx, home, b, &args)? {
                Packaged::New(new) => {
                    let entry = &new.0;
                    let Body::Package(p) = &entry.entry.body else { unreachable!("built as a package") };
                    (p.version, Some(entry.entry.seq))
                }
                // A concurrent deploy of the same file packaged it first.
                Packaged::Reused(v, _) => (v, None),
            };
            (version, new_at, b.state()?)
        }
    };
    // The rule's own refusal of a withdrawn package, before a wait on it could begin.
    let pkg = package_of(&state, version)?;
    pd_ledger::rules::live_package(&state, version, &pkg.package.tarball.blake3)
        .map_err(|e| crate::Refused(e.to_string()))?;
    let fpr = check_artifact(b, &state, pkg)?;
    ctx.progress(json!({ "event": "packaged", "version": version, "new_at": new_at, "openpgp": fpr }))?;
    if !ctx.json {
        let new = new_at.map(|seq| format!(" (new, #{seq})")).unwrap_or_default();
        output::ok(format!("packaged as {version}{new}"));
        output::ok(format!("signature valid (OpenPGP {})", pd_store::openpgp::short_fingerprint(&fpr)));
    }
    Ok((version, state))
}

/// A version already desired where a deploy was asked to push it: a rerun, or a concurrent
/// deploy that pushed first. Raised under the append turn, so one of them pushes.
#[derive(Debug, thiserror::Error)]
#[error("already desired")]
struct AlreadyDesired;

/// Makes `version` desired in `env`, deciding under the append turn: a push, or, with `revert`
/// (the deploy named files whose content an older package holds: a `git revert`) and a version
/// the environment ran before and has since moved past, a rollback to it. A version named
/// outright is always a push, which the rules refuse if it moves backwards. `None`: it
/// already is desired there.
fn make_desired(
    b: &mut Backend,
    (actor, key): (&str, &SecretKey),
    (env, version, revert): (&str, Version, bool),
    (waves, reason): (&[pd_ledger::WaveSize], &str),
) -> Result<Option<pd_ledger::SignedEntry>> {
    let appended = b.append(actor, key, |st| {
        let pkg = package_of(st, version)?;
        let slot = st.slot(env, &pkg.package.name);
        if slot.and_then(|s| s.desired()).is_some_and(|d| d.version == version) {
            return Err(AlreadyDesired.into());
        }
        let history = slot.map(|s| s.history()).unwrap_or_default();
        let back = revert
            && history.iter().any(|d| d.version == version)
            && history.iter().any(|d| d.version > version);
        let (env, package, reason) = (env.to_string(), pkg.package.tarball.blake3, reason.to_string());
        Ok(match back {
            true => Body::Rollback(Rollback { env, version, package, reason }),
            false => Body::Push(Push { env, version, package, waves: waves.to_vec(), reason }),
        })
    });
    match appended {
        Ok((entry, _)) => Ok(Some(entry)),
        Err(e) if e.is::<AlreadyDesired>() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The end of `deploy --no-wait`: one environment pushed, nobody waited for.
fn pushed_only(
    ctx: &Ctx,
    state: &State,
    (env, version, seq): (&str, Version, Option<u64>),
    own_waves: &[pd_ledger::WaveSize],
) -> Result<()> {
    if seq.is_none() {
        let waiting = pd_ledger::adoption::adoption_of(state, env, version).waiting().join(", ");
        if ctx.json {
            return ctx.emit(
                &json!({ "version": version, "env": env, "seq": null, "waited": false, "waiting": waiting }),
            );
        }
        output::ok(format!("{version} is already pushed to {env}; waiting for {waiting}"));
        return Ok(());
    }
    if ctx.json {
        return ctx.emit(&json!({ "version": version, "env": env, "seq": seq, "waited": false }));
    }
    // The state is from before the push: the rule's waves for it (the deploy's own, or the
    // environment's) say whether it goes in waves.
    if pd_ledger::rollout::waves_for(state, env, own_waves).len() > 1 {
        output::next(format!(
            "{env} takes it in waves and no target installs it before wave 1 starts: `pd ledger deploy {version} --env {env} --reason \"…\"` drives them"
        ));
        return Ok(());
    }
    output::next(format!(
        "targets in {env} acknowledge with `pd ledger ack {version}`; `pd state {env}` shows progress"
    ));
    Ok(())
}

/// Checks the package as a target will: hashes and the author's OpenPGP signature. Returns
/// the signer's fingerprint.
fn check_artifact(b: &mut Backend, state: &State, pkg: &PackageState) -> Result<String> {
    let t = &pkg.package.tarball;
    let bytes = b.get_object(&t.blake3, t.size)?;
    if pd_store::ArtifactDigest::of(&bytes).sha256 != t.sha256.0 {
        let v = pkg.package.version;
        return Err(CheckFailed(format!("the artifact of {v} does not match its recorded SHA-256")).into());
    }
    let cert = state.package_cert(pkg).unwrap_or_default().to_string();
    pd_store::openpgp::verify_detached(&cert, &bytes, &pkg.package.openpgp_sig)?;
    Ok(pd_store::openpgp::cert_fingerprint(&cert)?)
}

/// Refuses `--env` or `--until` naming an environment the ledger does not have.
fn check_envs(state: &State, a: &DeployArgs) -> Result<()> {
    for e in a.env.iter().chain(&a.until) {
        if state.env_index(e).is_none() {
            refuse!("unknown environment {e:?}; this ledger has: {}", state.envs().join(", "));
        }
    }
    Ok(())
}

/// Whether `version` is through `env`: adopted, and its rollout there done (the rule's
/// `pd_ledger::rollout::through`).
fn through(state: &State, env: &str, version: Version) -> bool {
    let set = state.package(version).map_or("", |p| p.package.name.as_str());
    pd_ledger::rollout::through(state, env, set, version)
}

/// The environments to go through, in promotion order.
fn plan(state: &State, version: Version, a: &DeployArgs) -> Result<Vec<String>> {
    debug_assert!(check_envs(state, a).is_ok(), "version_to_deploy checked the names");
    if let Some(env) = &a.env {
        return Ok(vec![env.clone()]);
    }
    // From the first environment that has not adopted the version yet (none: a rerun of a
    // deploy that is done, which succeeds).
    let start = state.envs().iter().position(|e| !through(state, e, version)).unwrap_or(state.envs().len());
    let end = a.until.as_deref().and_then(|u| state.env_index(u)).unwrap_or(state.envs().len() - 1);
    Ok(state.envs().get(start..=end).unwrap_or_default().to_vec())
}

/// Waits until every target of `env` reported `version`, or `until` ends the wait; shows
/// progress and names stale targets within one heartbeat interval of their turning stale.
pub fn wait(ctx: &Ctx, b: &mut Backend, env: &str, version: Version, until: Until) -> Result<Waited> {
    let bar = indicatif::ProgressBar::new(0).with_message(format!("{env}: targets acknowledged {version}"));
    bar.set_style(
        indicatif::ProgressStyle::with_template("⟳ {msg} {pos}/{len} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if ctx.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // However the wait ends (an error included), the bar goes, so what follows starts on a
    // line of its own.
    let bar = ClearOnDrop(bar);
    // Without a terminal there is no bar: a line per change instead, at most every 2 s.
    let lines = !ctx.json && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (mut said, mut said_at) = (String::new(), None::<Instant>);
    let mut state = b.state()?;
    let (mut last, mut last_stale) = (None, Vec::<String>::new());
    let (mut beats, mut outage) = (pd_server::wire::Heartbeats::default(), None::<Duration>);
    let queued = |s: &Status| *s == Status::Queued;
    let expected: Vec<String> = pd_ledger::adoption::adoption_of(&state, env, version)
        .targets
        .into_iter()
        .filter(|(_, s)| !queued(s))
        .map(|(n, _)| n)
        .collect();
    if !ctx.json {
        outln!("  waiting for {} target(s) in {env}: {}", expected.len(), few(&expected));
    }
    loop {
        let a = pd_ledger::adoption::adoption_of(&state, env, version);
        let current = a.desired.as_ref().is_some_and(|d| d.version == version);
        match b.heartbeats() {
            Ok(h) => beats = h,
            Err(e) if crate::backend::is_transient(&e) => {}
            Err(e) => return Err(e),
        }
        let seen = beats.verified(&state);
        let stale: Vec<String> = a
            .targets
            .iter()
            .filter(|(t, _)| beats.liveness(seen.get(t)) == Liveness::Stale)
            .map(|(t, _)| t.clone())
            .collect();
        // Wake at least once per heartbeat interval, so a target turning stale is named in time.
        let interval = a
            .targets
            .iter()
            .filter_map(|(t, _)| seen.get(t).map(|s| s.heartbeat.interval_ms))
            .min()
            .unwrap_or(pd_ledger::heartbeat::DEFAULT_INTERVAL_MS);
        if stale != last_stale {
            ctx.progress(json!({ "event": "stale", "env": env, "targets": stale }))?;
            for t in stale.iter().filter(|t| !ctx.json && !last_stale.contains(t)) {
                let ago = seen.get(t).map(|s| beats.now_ms.saturating_sub(s.received_ms)).unwrap_or_default();
                let ago = humantime::format_duration(Duration::from_secs(ago / 1000));
                bar.0.suspend(|| output::warn(format!("{t} is stale: its last heartbeat came {ago} ago")));
            }
            last_stale = stale.clone();
        }
        let w = Waited {
            targets: a.targets.len() - a.queued(),
            queued: a.queued(),
            loaded: if current { a.loaded() } else { 0 },
            failed: if current { a.failed() } else { Vec::new() },
            missing: if current { a.waiting() } else { a.targets.iter().map(|(n, _)| n.clone()).collect() },
            revoked: expected.iter().filter(|n| !a.targets.iter().any(|(t, _)| t == *n)).cloned().collect(),
            short_by: a.short_by(),
            stale,
        };
        if last != Some((w.loaded, w.failed.len())) {
            last = Some((w.loaded, w.failed.len()));
            let failed: serde_json::Map<String, serde_json::Value> =
                w.failed.iter().map(|(t, e)| (t.clone(), e.clone().into())).collect();
            let (loaded, targets) = (w.loaded, w.targets);
            ctx.progress(json!({ "event": "acks", "env": env, "version": version, "loaded": loaded, "targets": targets, "failed": failed }))?;
        }
        bar.0.set_length(w.targets as u64);
        bar.0.set_position(w.loaded as u64);
        let tail = match w.waiting_for() {
            waiting if waiting.is_empty() => waiting,
            waiting => format!("; {waiting}"),
        };
        bar.0.set_message(format!("{env}: targets acknowledged {version}{tail}"));
        let too_many = w.failed.len() as f64 > until.max_failed * w.targets as f64;
        let ended = !w.revoked.is_empty() || w.short_by > 0 || (until.fail_on_stale && !w.stale.is_empty());
        let done = w.missing.is_empty() || too_many || ended || Instant::now() >= until.deadline;
        let line = format!("{env}: {}/{} acknowledged {version}{tail}", w.loaded, w.targets);
        if lines && line != said && (done || said_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2))) {
            outln!("  {line}");
            (said, said_at) = (line, Some(Instant::now()));
        }
        if done {
            return Ok(w);
        }
        let wake = until.deadline.min(Instant::now() + Duration::from_millis(interval));
        // The server restarting (or a proxy failing) does not end the wait: retry, with
        // growing pauses, until the deadline; agents retry the same way meanwhile.
        match b.wait(state.len(), wake, &|| ctx.check()) {
            Ok(s) => {
                if outage.take().is_some() && !ctx.json {
                    bar.0.suspend(|| output::ok("the server is back"));
                }
                state = s;
            }
            Err(e) if crate::backend::is_transient(&e) => {
                let pause =
                    outage.map_or(Duration::from_millis(200), |p| (p * 2).min(Duration::from_secs(5)));
                if outage.is_none() && !ctx.json {
                    bar.0.suspend(|| {
                        output::warn(format!("{}; retrying until the timeout", output::chain(&e)))
                    });
                }
                ctx.progress(json!({ "event": "server unreachable", "error": output::chain(&e) }))?;
                outage = Some(pause);
                crate::backend::pause(until.deadline.min(Instant::now() + pause), &|| ctx.check())?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Appends a rollback of `env` to its previous version and waits for its targets to run
/// it again. Returns that version. With `from`, only while `from` is still the desired
/// version (another deployer may have rolled back first: then nothing is appended).
#[allow(clippy::too_many_arguments)] // one call site per kind of failure, each names them all
pub fn roll_back(
    ctx: &Ctx,
    b: &mut Backend,
    actor: &str,
    key: &SecretKey,
    (env, set): (&str, Option<&str>),
    from: Option<Version>,
    reason: String,
    until: Until,
) -> Result<Version> {
    let (entry, _) = b.append(actor, key, |st| {
        let set = crate::ledger_cmd::slot_set(st, env, set)?;
        let desired = st.desired(env, &set).map(|d| d.version);
        if let Some(from) = from.filter(|f| desired != Some(*f)) {
            let now = desired.map_or("nothing".to_string(), |d| d.to_string());
            crate::refuse!(
                "{env} no longer wants {from} (it wants {now}): someone rolled it back or pushed first"
            );
        }
        let version = previous_version(st, env, &set)?;
        let package = package_of(st, version)?.package.tarball.blake3;
        Ok(Body::Rollback(Rollback { env: env.to_string(), version, package, reason: reason.clone() }))
    })?;
    let Body::Rollback(r) = &entry.entry.body else { unreachable!("built as a rollback") };
    ctx.progress(
        json!({ "event": "rolled back", "env": env, "version": r.version, "seq": entry.entry.seq }),
    )?;
    if !ctx.json {
        output::working(format!("rolling {env} back to {} (#{})", r.version, entry.entry.seq));
    }
    converge(ctx, b, env, r.version, until)?;
    Ok(r.version)
}

/// Waits for every target of `env` to report `version` loaded after a rollback.
pub fn converge(ctx: &Ctx, b: &mut Backend, env: &str, version: Version, until: Until) -> Result<()> {
    let w = wait(ctx, b, env, version, until)?;
    if !w.adopted() {
        let message = format!("{env} did not converge back to {version}: {}", w.problems());
        let (failed, missing) = (w.failed, w.missing);
        return Err(NotAdopted {
            env: env.to_string(),
            version,
            failed,
            missing,
            rolled_back_to: None,
            message,
        }
        .into());
    }
    ctx.progress(json!({ "event": "converged", "env": env, "version": version, "targets": w.targets }))?;
    if !ctx.json {
        output::ok(format!("{env}: {n}/{n} targets run {version} again", n = w.targets));
    }
    Ok(())
}
