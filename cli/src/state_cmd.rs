//! `pd state`: each environment as folded from the ledger.

use anyhow::Result;
use clap::Args;
use pd_ledger::heartbeat::Liveness;
use pd_ledger::State;
use pd_server::wire::{Heartbeats, Seen};
use serde_json::json;

use crate::{output, refuse, Ctx};

/// Arguments of `pd state`.
#[derive(Args)]
pub struct StateArgs {
    /// Only this environment.
    env: Option<String>,
}

/// Prints each environment's slots (desired version, adoption by the one rule), each
/// target's running version, last heartbeat and liveness, and pending approvals.
pub fn run(ctx: &Ctx, a: StateArgs) -> Result<()> {
    let mut backend = crate::backend::Backend::open(ctx, ctx.home().ok())?;
    let state = &backend.state()?;
    let envs: Vec<String> = match a.env {
        Some(e) if state.env_index(&e).is_some() => vec![e],
        Some(e) => refuse!("unknown environment {e:?}; this ledger has: {}", state.envs().join(", ")),
        None => state.envs().to_vec(),
    };
    let beats = backend.heartbeats()?;
    if ctx.json {
        return ctx.emit(&state_json(state, &envs, &beats));
    }
    print_text(state, &envs, &beats);
    Ok(())
}

/// One target as `pd state` shows it: what it runs (from its signed heartbeat or a later
/// ack), when it was last seen and whether it is stale, next to its latest ack per set.
fn target_json(state: &State, name: &str, seen: Option<&Seen>, beats: &Heartbeats) -> serde_json::Value {
    let (liveness, now_ms) = (beats.liveness(seen), beats.now_ms);
    let env = state.keys().get(name).and_then(|k| k.decl.env.clone()).unwrap_or_default();
    let running = pd_ledger::heartbeat::running(state, name, seen.map(|s| &s.heartbeat));
    let reports: serde_json::Map<String, serde_json::Value> = state
        .env(&env)
        .map(|e| {
            e.sets()
                .iter()
                .filter_map(|(set, slot)| slot.report(name).map(|r| (set.clone(), r)))
                .map(|(set, r)| {
                    let v = json!({ "version": r.version, "outcome": r.outcome, "seq": r.seq,
                                    "time": output::time(r.time_ms), "time_ms": r.time_ms,
                                    "independent": r.independent });
                    (set, v)
                })
                .collect()
        })
        .unwrap_or_default();
    // What it should run: the desired version of every set of its environment it follows.
    let follows = |set: &str| state.keys().get(name).is_some_and(|k| k.decl.follows(set));
    let desired: serde_json::Map<String, serde_json::Value> = state
        .env(&env)
        .map(|e| {
            e.sets()
                .iter()
                .filter(|(set, _)| follows(set))
                .filter_map(|(set, slot)| slot.desired().map(|d| (set.clone(), json!(d.version))))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": name, "running": running, "desired": desired, "last_seen": seen.map(|s| output::time(s.received_ms)),
        "last_seen_ms": seen.map(|s| s.received_ms),
        "last_seen_ago_ms": seen.map(|s| now_ms.saturating_sub(s.received_ms)),
        "liveness": liveness, "stale": liveness == Liveness::Stale, "acks": reports,
    })
}

/// The state of `envs` plus pending approvals, as JSON.
pub fn state_json(state: &State, envs: &[String], beats: &Heartbeats) -> serde_json::Value {
    let seen = beats.verified(state);
    let envs: Vec<_> = pd_ledger::adoption::overview(state)
        .into_iter()
        .filter(|e| envs.contains(&e.env))
        .map(|e| {
            let targets: Vec<_> =
                e.targets.iter().map(|t| target_json(state, t, seen.get(t), beats)).collect();
            let stale: Vec<_> = targets.iter().filter(|t| t["stale"] == true).map(|t| t["name"].clone()).collect();
            let sets: Vec<_> = e
                .sets
                .iter()
                .map(|s| {
                    let d = s.adoption.desired.as_ref();
                    let rollout = pd_ledger::rollout::progress(state, &e.env, &s.set).map(|p| {
                        let waves: Vec<_> = p.waves.iter().map(|w| json!({ "wave": w.number, "size": w.size, "targets": w.targets.len(), "started": w.started, "baked": w.baked })).collect();
                        json!({ "waves": waves, "started": p.started, "next": p.next })
                    });
                    json!({ "set": s.set, "desired": d.map(|d| d.version), "via": d.map(|d| d.via),
                            "desired_seq": d.map(|d| d.seq), "adopted": s.adopted,
                            "loaded": s.adoption.loaded(), "targets": s.adoption.targets.len(),
                            "failed": s.adoption.failed(), "waiting": s.adoption.waiting(),
                            "queued": s.adoption.queued(), "rollout": rollout })
                })
                .collect();
            json!({ "env": e.env, "min_targets": e.min_targets, "sets": sets, "targets": targets, "stale": stale })
        })
        .collect();
    let dependent: Vec<_> = state
        .not_independent()
        .into_iter()
        .map(|d| json!({ "act": d.act, "actor": d.actor, "version": d.version, "seq": d.seq, "message": d.to_string() }))
        .collect();
    json!({
        "ledger_id": state.ledger_id(), "entries": state.len(), "head": state.head(), "envs": envs,
        "pending_approvals": pending(state), "not_independent": dependent,
        "withdrawn": state.packages().iter().filter_map(|p| p.withdrawn.as_ref().map(|w| json!({ "version": p.package.version, "set": p.package.name, "seq": w.seq, "by": w.by, "reason": w.reason }))).collect::<Vec<_>>(),
    })
}

fn pending(state: &State) -> Vec<serde_json::Value> {
    state
        .packages()
        .iter()
        .filter(|p| !state.is_approved(p) && p.withdrawn.is_none())
        .map(|p| json!({ "version": p.package.version, "approvals": p.counted_approvals(), "required": state.approvals_required() }))
        .collect()
}

/// Where a rollout stands, in a few words.
fn rollout_line(p: &pd_ledger::rollout::Progress) -> String {
    use pd_ledger::rollout::Next;
    let n = p.waves.len();
    match &p.next {
        Next::Start { wave } => format!("wave {wave}/{n} not started yet"),
        Next::Acks { wave, waiting } => format!("wave {wave}/{n} waiting for {}", waiting.join(", ")),
        Next::Bake { wave, until_ms, .. } => {
            format!("wave {wave}/{n} baking until {}", crate::output::time(*until_ms))
        }
        Next::Done => format!("all {n} wave(s) done"),
        Next::Halted { wave, reason } => format!("STOPPED at wave {wave}/{n}: {reason}"),
    }
}

fn print_text(state: &State, envs: &[String], beats: &Heartbeats) {
    outln!("ledger {} · {} entries · head {}", state.ledger_id().short(), state.len(), state.head().short());
    let seen = beats.verified(state);
    for e in pd_ledger::adoption::overview(state).into_iter().filter(|e| envs.contains(&e.env)) {
        let env = &e.env;
        if e.sets.is_empty() {
            outln!(
                "{env}: nothing deployed · {} target(s), fleet minimum {}",
                e.targets.len(),
                e.min_targets
            );
        }
        for s in &e.sets {
            let a = &s.adoption;
            let Some(d) = &a.desired else { continue };
            let via = match d.via {
                pd_ledger::state::Via::Push => "push",
                pd_ledger::state::Via::Rollback => "rollback",
            };
            let mark = if s.adopted { "adopted" } else { "not adopted" };
            outln!(
                "{env}/{}: desired {} ({via} at #{}) · {}/{} targets loaded, fleet minimum {} · {mark}",
                s.set,
                d.version,
                d.seq,
                a.loaded(),
                a.targets.len(),
                a.min_targets
            );
            if let Some(p) = pd_ledger::rollout::progress(state, env, &s.set)
                .filter(|p| p.waves.len() > 1 || p.bake_ms > 0 || !p.gates.is_empty())
            {
                outln!("  rollout: {}", rollout_line(&p));
            }
        }
        for t in &e.targets {
            let j = target_json(state, t, seen.get(t), beats);
            let running = match j["running"].as_object() {
                Some(m) if !m.is_empty() => m
                    .iter()
                    .map(|(s, v)| format!("{s} {}", v.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "running: unknown".into(),
            };
            let seen = match (j["last_seen_ago_ms"].as_u64(), j["stale"] == true) {
                (None, _) => "never seen".to_string(),
                (Some(ms), stale) => {
                    let ago = humantime::format_duration(std::time::Duration::from_secs(ms / 1000));
                    format!("last seen {ago} ago{}", if stale { " · STALE" } else { "" })
                }
            };
            let acks: Vec<String> = j["acks"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(set, r)| match r["outcome"].as_str() {
                            Some("loaded") => {
                                format!("{set}: acked {}", r["version"].as_str().unwrap_or("?"))
                            }
                            _ => format!(
                                "{set}: {} FAILED: {}",
                                r["version"].as_str().unwrap_or("?"),
                                r["outcome"]["failed"].as_str().unwrap_or("")
                            ),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let acks = if acks.is_empty() { "no ack yet".to_string() } else { acks.join(", ") };
            outln!("  {t:<16} {running} · {seen} · {acks}");
        }
    }
    for d in state.not_independent() {
        outln!("! {d}");
    }
    for p in state.packages().iter().filter(|p| p.withdrawn.is_some()) {
        let w =
            p.withdrawn.as_ref().map(|w| format!("#{} by {}: {}", w.seq, w.by, w.reason)).unwrap_or_default();
        outln!("withdrawn: {} ({}) {w}", p.package.version, p.package.name);
    }
    for p in pending(state) {
        outln!(
            "pending approval: {} ({} of {})",
            p["version"].as_str().unwrap_or("?"),
            p["approvals"],
            p["required"]
        );
    }
}
