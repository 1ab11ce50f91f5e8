//! `pd env`: an environment's fleet, rollout and approval policy, as signed `env_set` entries.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use pd_ledger::rollout::{describe_policy, millis};
use pd_ledger::{Body, EnvPolicy, EnvSet, WaveSize};

use crate::backend::Backend;
use crate::{output, Ctx};

/// Environment subcommands.
#[derive(Subcommand)]
pub enum EnvCmd {
    /// Change an environment's policy (an admin's signed entry). Options not given keep
    /// their current value.
    ///
    /// Example: pd env set prod --waves 1,10%,100% --bake 10m
    /// --gate 'prom:http://prom:9090?query=sum(rate(errors[1m]))/sum(rate(requests[1m]))&max=0.01'
    /// --auto-rollback --freeze "Fri 16:00-Mon 08:00 Europe/Berlin" --approvals 2
    /// --approver-groups security,platform --reason "prod policy"
    Set(SetArgs),
    /// Show each environment's policy.
    Show {
        /// Only this environment.
        env: Option<String>,
    },
}

/// Arguments of `pd env set`.
#[derive(clap::Args)]
pub struct SetArgs {
    /// The environment.
    env: String,
    /// Targets it expects (at least 1): a push to fewer is refused, and a version counts as
    /// adopted only once that many loaded it.
    #[arg(long, value_name = "N")]
    min_targets: Option<u32>,
    /// Waves a push goes out in, cumulative: a count (`1`), a percentage (`10%`) or a target
    /// label (`canary`, `region=eu`); the last wave always takes every target. `100%`: one
    /// wave. Targets labelled `canary` come first, then the order of a hash of their names.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    waves: Option<Vec<WaveSize>>,
    /// How long each wave runs, after its targets acked, with every gate holding before the
    /// next wave or environment may start (`0s`: none).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    bake: Option<Duration>,
    /// A gate checked during each bake (repeatable; replaces the list):
    /// `prom:http://HOST:9090?query=EXPR&max=0.01` (a Prometheus query within bounds),
    /// `health` (every target's agent reports its service healthy, see `pd agent
    /// --health-url`), or `cmd:COMMAND` (a smoke test: exit 0 passes; PD_ENV, PD_VERSION
    /// and PD_WAVE are set).
    #[arg(long = "gate", value_name = "GATE")]
    gates: Vec<String>,
    /// Remove every gate.
    #[arg(long, conflicts_with = "gates")]
    no_gates: bool,
    /// Roll the environment back to its previous version when a gate fails.
    #[arg(long, overrides_with = "no_auto_rollback")]
    auto_rollback: bool,
    /// Stop a failed rollout without rolling back.
    #[arg(long)]
    no_auto_rollback: bool,
    /// A freeze window (repeatable; replaces the list): weekly `Fri 16:00-Mon 08:00
    /// Europe/Berlin`, or one-off `2026-12-24..2027-01-02 Europe/Berlin` or
    /// `2026-12-24T18:00..2026-12-27T08:00 UTC`. A push into one needs freeze overrides
    /// (`pd ledger override`) from the approvals this environment requires.
    #[arg(long = "freeze", value_name = "WINDOW")]
    freeze: Vec<String>,
    /// Remove every freeze window.
    #[arg(long, conflicts_with = "freeze")]
    no_freeze: bool,
    /// Approvals a package needs before it may be pushed here (0: the ledger's default).
    #[arg(long, value_name = "N")]
    approvals: Option<u32>,
    /// Only approvers of these groups count, and distinct approvers must cover as many
    /// distinct groups as approvals required (`pd key new … --group NAME`). `none` clears.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    approver_groups: Option<Vec<String>>,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
}

impl SetArgs {
    /// The policy `current` becomes with the options given.
    fn apply(&self, current: &EnvPolicy) -> Result<EnvPolicy> {
        let mut p = current.clone();
        if let Some(n) = self.min_targets {
            p.min_targets = n;
        }
        if let Some(w) = &self.waves {
            p.waves = if w.as_slice() == [WaveSize::Percent(100)] { Vec::new() } else { w.clone() };
        }
        if let Some(b) = self.bake {
            p.bake_ms = u64::try_from(b.as_millis()).unwrap_or(u64::MAX);
        }
        if !self.gates.is_empty() || self.no_gates {
            p.gates = self.gates.clone();
        }
        if self.auto_rollback || self.no_auto_rollback {
            p.auto_rollback = self.auto_rollback && !self.no_auto_rollback;
        }
        if !self.freeze.is_empty() || self.no_freeze {
            // Stored in canonical form, so the record reads the same whatever spelling was given.
            p.freeze = self
                .freeze
                .iter()
                .map(|f| f.parse::<pd_ledger::freeze::Window>().map(|w| w.to_string()))
                .collect::<Result<_, _>>()
                .map_err(|e| crate::Refused(format!("--freeze: {e}")))?;
        }
        if let Some(n) = self.approvals {
            p.approvals = n;
        }
        if let Some(g) = &self.approver_groups {
            let mut g: Vec<String> = g.iter().filter(|g| *g != "none").cloned().collect();
            g.sort();
            g.dedup();
            p.approver_groups = g;
        }
        for gate in &p.gates {
            gate.parse::<pd_ledger::gate::Gate>().map_err(|e| crate::Refused(format!("--gate: {e}")))?;
        }
        Ok(p)
    }
}

/// Runs an environment subcommand.
pub fn run(ctx: &Ctx, cmd: EnvCmd) -> Result<()> {
    match cmd {
        EnvCmd::Set(a) => set(ctx, a),
        EnvCmd::Show { env } => show(ctx, env),
    }
}

fn set(ctx: &Ctx, a: SetArgs) -> Result<()> {
    let (entry, state) = crate::ledger_cmd::append_with(ctx, |st, _| {
        let Some(current) = st.policy(&a.env) else {
            crate::refuse!("unknown environment {:?}; this ledger has: {}", a.env, st.envs().join(", "));
        };
        Ok(Body::EnvSet(EnvSet { env: a.env.clone(), policy: a.apply(current)?, reason: a.reason.clone() }))
    })?;
    let Body::EnvSet(s) = &entry.entry.body else { unreachable!("built as env_set") };
    let seq = entry.entry.seq;
    // Under an admin quorum the change is a proposal until other admins approve it.
    let proposed = state.proposals().get(&seq).map(|p| state.proposal_support(p, &p.proposer));
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "env": a.env, "policy": s.policy, "seq": seq, "applied": proposed.is_none() }),
        );
    }
    match proposed {
        None => output::ok(format!("{} expects {} (#{seq})", a.env, describe_policy(&s.policy))),
        Some(have) => {
            let need = state.admin_approvals();
            output::ok(format!("{} policy proposed at #{seq}: {have} of {need} admins", a.env));
            output::next(format!("another admin runs `pd key approve {seq}`"));
        }
    }
    Ok(())
}

fn show(ctx: &Ctx, only: Option<String>) -> Result<()> {
    let (_, mut b) = Backend::of_home(ctx)?;
    let state = b.state()?;
    if let Some(e) = only.as_deref().filter(|e| state.env_index(e).is_none()) {
        crate::refuse!("unknown environment {e:?}; this ledger has: {}", state.envs().join(", "));
    }
    let envs: Vec<&String> =
        state.envs().iter().filter(|e| only.as_deref().is_none_or(|o| o == *e)).collect();
    if ctx.json {
        let list: Vec<serde_json::Value> =
            envs.iter().map(|e| serde_json::json!({ "env": e, "policy": state.policy(e) })).collect();
        return ctx.emit(&serde_json::json!({ "envs": list }));
    }
    for e in envs {
        let Some(p) = state.policy(e) else { continue };
        outln!("{e}: {}", describe_policy(p));
        if p.bake_ms > 0 {
            outln!("  each wave bakes {} after its acks", millis(p.bake_ms));
        }
    }
    Ok(())
}
