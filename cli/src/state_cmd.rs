//! `pd state`: each environment as folded from the ledger.

use anyhow::Result;
use clap::Args;
use pd_ledger::{Outcome, State};
use serde_json::json;

use crate::{output, refuse, Ctx};

/// Arguments of `pd state`.
#[derive(Args)]
pub struct StateArgs {
    /// Only this environment.
    env: Option<String>,
}

/// Prints desired versions, each target's adopted version and pending approvals.
pub fn run(ctx: &Ctx, a: StateArgs) -> Result<()> {
    let state = &crate::backend::Backend::open(ctx, ctx.home().ok())?.state()?;
    let envs: Vec<String> = match a.env {
        Some(e) if state.env_index(&e).is_some() => vec![e],
        Some(e) => refuse!("unknown environment {e:?}; this ledger has: {}", state.envs.join(", ")),
        None => state.envs.clone(),
    };
    if ctx.json {
        return ctx.emit(&state_json(state, &envs));
    }
    print_text(state, &envs);
    Ok(())
}

/// The state of `envs` plus pending approvals, as JSON (shared with `pd-verify --json`).
pub fn state_json(state: &State, envs: &[String]) -> serde_json::Value {
    let envs: Vec<_> = envs
        .iter()
        .map(|env| {
            let e = &state.env[env];
            let desired = e.desired.as_ref();
            let targets: Vec<_> = state
                .targets(env)
                .map(|t| {
                    let r = e.reports.get(&t.decl.name);
                    json!({ "name": t.decl.name, "version": r.map(|r| r.version),
                            "outcome": r.map(|r| &r.outcome), "time": r.map(|r| output::time(r.time_ms)),
                            "independent": r.map(|r| r.independent) })
                })
                .collect();
            json!({
                "env": env, "desired": desired.map(|d| d.version), "via": desired.map(|d| d.via),
                "desired_seq": desired.map(|d| d.seq), "targets": targets,
                "laggards": desired.map(|d| state.laggards(env, d.version)).unwrap_or_default(),
            })
        })
        .collect();
    let dependent: Vec<_> = state
        .not_independent()
        .into_iter()
        .map(|d| json!({ "act": d.act, "actor": d.actor, "version": d.version, "seq": d.seq, "message": d.to_string() }))
        .collect();
    json!({
        "ledger_id": state.ledger_id, "entries": state.len, "head": state.head, "envs": envs,
        "pending_approvals": pending(state), "not_independent": dependent,
    })
}

fn pending(state: &State) -> Vec<serde_json::Value> {
    state
        .packages
        .iter()
        .filter(|p| !state.is_approved(p))
        .map(|p| json!({ "version": p.package.version, "approvals": p.counted_approvals(), "required": state.approvals_required }))
        .collect()
}

fn print_text(state: &State, envs: &[String]) {
    println!("ledger {} · {} entries · head {}", state.ledger_id.short(), state.len, state.head.short());
    for env in envs {
        let e = &state.env[env];
        match &e.desired {
            None => println!("{env}: nothing deployed"),
            Some(d) => {
                let lag = state.laggards(env, d.version);
                let n = state.targets(env).count();
                let via = match d.via {
                    pd_ledger::state::Via::Push => "push",
                    pd_ledger::state::Via::Rollback => "rollback",
                };
                println!(
                    "{env}: desired {} ({via} at #{}) · {}/{n} targets adopted",
                    d.version,
                    d.seq,
                    n - lag.len()
                );
            }
        }
        for t in state.targets(env) {
            let line = match e.reports.get(&t.decl.name) {
                None => "no report yet".to_string(),
                Some(r) => match &r.outcome {
                    Outcome::Loaded => {
                        format!("{} loaded at {}", r.version, output::time(r.time_ms))
                    }
                    Outcome::Failed(err) => {
                        format!("{} FAILED at {}: {err}", r.version, output::time(r.time_ms))
                    }
                },
            };
            println!("  {:<16} {line}", t.decl.name);
        }
    }
    for d in state.not_independent() {
        println!("! {d}");
    }
    for p in pending(state) {
        println!(
            "pending approval: {} ({} of {})",
            p["version"].as_str().unwrap_or("?"),
            p["approvals"],
            p["required"]
        );
    }
}
