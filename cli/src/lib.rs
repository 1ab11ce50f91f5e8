//! `pd`: package, sign, approve, deploy and roll back governance policies, with every step
//! recorded in a signed, hash-chained ledger.

mod backend;
mod demo;
mod deploy;
mod home;
mod init;
mod key;
mod ledger_cmd;
mod mirror_cmd;
mod net;
mod output;
mod proof_cmd;
mod state_cmd;
mod store_cmd;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::home::Home;
use pd_server::client::ClientError;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  an action was refused or a check failed (nothing was changed)
  2  usage or environment error (bad arguments, missing home, unreadable file)";

/// pd: policy deployment with an auditable ledger.
#[derive(Parser)]
#[command(name = "pd", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The pd home: ledger, artifact store, keys and config.
    #[arg(long, env = "PD_HOME", default_value = ".pd", global = true, value_name = "DIR")]
    home: PathBuf,
    /// The key to act as (default: the home's configured actor, `admin` after `pd init`).
    #[arg(long = "as", env = "PD_ACTOR", global = true, value_name = "NAME")]
    actor: Option<String>,
    /// Use the ledger and artifacts of this `pd serve` instead of the home's own.
    #[arg(long, env = "PD_SERVER", global = true, value_name = "URL")]
    server: Option<String>,
    /// Artifact store: `s3://bucket/prefix` (endpoint, region and credentials from the usual
    /// AWS variables and profiles), or the home's `objects/` directory when unset.
    #[arg(long, env = "PD_STORE", global = true, value_name = "URL")]
    store: Option<String>,
    /// Bearer token for a server started with --require-token.
    #[arg(long, env = "PD_TOKEN", global = true, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a home: an admin key and the signed genesis entry.
    Init(init::InitArgs),
    /// Enroll, revoke, list and export keys.
    Key {
        #[command(subcommand)]
        cmd: key::KeyCmd,
    },
    /// Package, approve, deploy, acknowledge, roll back, inspect and export the ledger.
    Ledger {
        #[command(subcommand)]
        cmd: ledger_cmd::LedgerCmd,
    },
    /// Show the state of each environment, derived from the ledger.
    State(state_cmd::StateArgs),
    /// Read artifacts from the content-addressed store.
    Store {
        #[command(subcommand)]
        cmd: store_cmd::StoreCmd,
    },
    /// Serve this home's ledger and artifacts over HTTP to agents, deployers and auditors.
    Serve(net::ServeArgs),
    /// Run beside a target: follow one environment, verify, install, reload and acknowledge.
    Agent(net::AgentArgs),
    /// A small reference target: loads a policy directory on `POST /reload?ver=`.
    ExampleTarget(net::TargetArgs),
    /// Walk the whole story on a throwaway home and show each step.
    Demo(demo::DemoArgs),
}

/// What every command gets: where the home is, who acts, how to print.
pub struct Ctx {
    /// Home directory.
    pub home_dir: PathBuf,
    /// `--as` / `PD_ACTOR`.
    pub actor: Option<String>,
    /// `--server` / `PD_SERVER`.
    pub server: Option<String>,
    /// `--token` / `PD_TOKEN`.
    pub token: Option<String>,
    /// `--store` / `PD_STORE`.
    pub store: Option<String>,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// Opens the home (`--store` overriding its configured store).
    pub fn home(&self) -> Result<Home> {
        let mut home = Home::open(&self.home_dir)?;
        if self.store.is_some() {
            home.config.store.clone_from(&self.store);
        }
        Ok(home)
    }

    /// The acting key's name.
    pub fn actor(&self, home: &Home) -> String {
        self.actor.clone().unwrap_or_else(|| home.config.actor.clone())
    }
}

/// An action refused by a rule or a check: exit code 1, nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Returns early with a [`Refused`] error.
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Refused(format!($($arg)*))))
    };
}

/// Parses `args` and runs the command.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let ctx = Ctx {
        home_dir: cli.home,
        actor: cli.actor,
        server: cli.server,
        token: cli.token,
        store: cli.store,
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Init(a) => init::run(&ctx, a),
        Cmd::Key { cmd } => key::run(&ctx, cmd),
        Cmd::Ledger { cmd } => ledger_cmd::run(&ctx, cmd),
        Cmd::State(a) => state_cmd::run(&ctx, a),
        Cmd::Store { cmd } => store_cmd::run(&ctx, cmd),
        Cmd::Serve(a) => net::serve(&ctx, a),
        Cmd::Agent(a) => net::agent(&ctx, a),
        Cmd::ExampleTarget(a) => net::example_target(a),
        Cmd::Demo(a) => demo::run(a),
    }
}

/// 1 for refusals and failed checks, 2 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let refused = err.chain().any(|e| {
        e.is::<Refused>()
            || matches!(e.downcast_ref::<pd_ledger::LedgerError>(), Some(pd_ledger::LedgerError::Refused(_)))
            || e.is::<pd_ledger::RuleError>()
            || e.is::<pd_store::PgpError>()
            || matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Rule(_) | ClientError::Refused { status: 403 | 409 | 410, .. })
            )
            || matches!(e.downcast_ref::<pd_store::StoreError>(), Some(pd_store::StoreError::Corrupt { .. }))
    });
    if refused {
        1
    } else {
        2
    }
}

fn main() -> ExitCode {
    match run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(clap_err) = err.downcast_ref::<clap::Error>() {
                // --help and --version are not errors; clap prints and picks the code.
                let _ = clap_err.print();
                return ExitCode::from(if clap_err.use_stderr() { 2 } else { 0 });
            }
            eprintln!("error: {}", output::chain(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
