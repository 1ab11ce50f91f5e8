//! `pd env`: an environment's fleet settings, as signed `env_set` entries.

use anyhow::Result;
use clap::Subcommand;
use pd_ledger::{Body, EnvSet};

use crate::{output, Ctx};

/// Environment subcommands.
#[derive(Subcommand)]
pub enum EnvCmd {
    /// Set how many enrolled targets an environment expects (an admin's signed entry): a push
    /// to fewer is refused, and a version counts as adopted only once that many loaded it.
    Set {
        /// The environment.
        env: String,
        /// Targets it expects (at least 1: zero targets never count as adopted).
        #[arg(long, value_name = "N")]
        min_targets: u32,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
}

/// Runs an environment subcommand.
pub fn run(ctx: &Ctx, cmd: EnvCmd) -> Result<()> {
    let EnvCmd::Set { env, min_targets, reason } = cmd;
    let (entry, _) = crate::ledger_cmd::append_with(ctx, |_, _| {
        Ok(Body::EnvSet(EnvSet { env: env.clone(), min_targets, reason: reason.clone() }))
    })?;
    if ctx.json {
        return ctx
            .emit(&serde_json::json!({ "env": env, "min_targets": min_targets, "seq": entry.entry.seq }));
    }
    output::ok(format!("{env} expects at least {min_targets} target(s) (#{})", entry.entry.seq));
    Ok(())
}
