//! `pd`: package, sign, approve, deploy and roll back governance policies, with every step
//! recorded in a signed, hash-chained ledger.
//!
//! The commands live here, behind [`run`], so that the `pd` binary and the Python API
//! (`hms_deploy`, which passes an [`Observer`]) run the very same code.

#![warn(missing_docs)]

/// `println!` for pd's output: when the reader went away (`pd ledger log | head`), the rest
/// is dropped and the command goes on to its own exit code instead of panicking; any other
/// write error still panics, as `println!` would.
macro_rules! outln {
    () => {
        $crate::output::emit(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!($($arg)*))
    };
}

mod backend;
mod demo;
mod deploy;
mod diff_cmd;
mod env_cmd;
mod gates;
mod home;
mod init;
mod key;
mod ledger_cmd;
mod mirror_cmd;
mod net;
pub mod output;
mod policy_cmd;
mod proof_cmd;
mod provenance;
mod state_cmd;
mod store_cmd;
mod validate;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::home::Home;
use pd_server::client::ClientError;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  an action was refused or a check failed (the refused step changed nothing)
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
    /// Sign with the secret key in FILE (as `pd key gen --out DIR` writes it: DIR/NAME.ed25519,
    /// with DIR/NAME.openpgp beside it) instead of a key in the home. Who acts is the name the
    /// ledger enrolled that key under; --as, if given, must match it.
    #[arg(long = "key", env = "PD_KEY", global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Use the ledger and artifacts of this `pd serve` instead of the home's own.
    #[arg(long, env = "PD_SERVER", global = true, value_name = "URL")]
    server: Option<String>,
    /// Artifact store: `s3://bucket/prefix` (endpoint, region and credentials from the usual
    /// AWS variables and profiles), or the home's `objects/` directory when unset.
    #[arg(long, env = "PD_STORE", global = true, value_name = "URL")]
    store: Option<String>,
    /// Trust the CA certificate(s) in this PEM file for `https://` servers (besides the
    /// system's roots): a `pd serve --tls-cert` signed by a private CA.
    #[arg(long, env = "PD_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Present this client certificate (one PEM file: certificate and private key) to a
    /// server started with `--client-ca`.
    #[arg(long, env = "PD_CLIENT_CERT", global = true, value_name = "FILE")]
    client_cert: Option<PathBuf>,
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
    /// Keys: generate where the holder is, enrol, rotate, revoke, approve key changes, list, export.
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
    /// Environment settings: the fleet each environment expects.
    Env {
        #[command(subcommand)]
        cmd: env_cmd::EnvCmd,
    },
    /// How each policy set's files are checked before packaging: JSON Schema, validator.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
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
    /// Print a shell completion script (bash: `pd completions bash > /etc/bash_completion.d/pd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: `pd.1` on standard output, or one page per command into a directory.
    Man {
        /// Write `pd.1`, `pd-ledger.1`, `pd-ledger-deploy.1`, … into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `pd completions` and `pd man`: both from the command definitions themselves. With
/// `--json`, the script or page is a string field (`schemas/completions.json`, `man.json`).
fn docs(ctx: &Ctx, cmd: Cmd) -> Result<()> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).context("generated text is not UTF-8");
    match cmd {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "pd", &mut script);
            match ctx.json {
                true => ctx.emit(&serde_json::json!({ "shell": shell.to_string(), "script": text(script)? })),
                false => output::raw(&script),
            }
        }
        Cmd::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display()))?;
            if !ctx.json {
                return Ok(());
            }
            let mut pages: Vec<String> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".1"))
                .collect();
            pages.sort();
            ctx.emit(&serde_json::json!({ "dir": dir, "pages": pages }))
        }
        Cmd::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            match ctx.json {
                true => ctx.emit(&serde_json::json!({ "page": text(page)? })),
                false => output::raw(&page),
            }
        }
        _ => unreachable!("docs() is called for Completions and Man only"),
    }
}

/// What every command gets: where the home is, who acts, how to print.
pub struct Ctx {
    /// Home directory.
    pub home_dir: PathBuf,
    /// `--as` / `PD_ACTOR`.
    pub actor: Option<String>,
    /// `--key` / `PD_KEY`.
    pub key_file: Option<PathBuf>,
    /// `--server` / `PD_SERVER`.
    pub server: Option<String>,
    /// `--token` / `PD_TOKEN`.
    pub token: Option<String>,
    /// `--store` / `PD_STORE`.
    pub store: Option<String>,
    /// `--json`.
    pub json: bool,
    /// A library caller: receives results and progress instead of stdout, may interrupt waits.
    pub observer: Option<Box<dyn Observer>>,
}

/// A program driving pd as a library (the Python API). Results that `--json` would print
/// go to [`Observer::result`]; long operations report steps and let the caller interrupt.
pub trait Observer: Send {
    /// A command's result, as `--json` would print it.
    fn result(&self, value: serde_json::Value);
    /// A step of a long operation, such as `{"event": "pushed", "env": "dev", …}`.
    fn progress(&self, event: serde_json::Value) -> Result<()>;
    /// Called often while waiting; an error (a Ctrl-C, say) ends the wait with it.
    fn check(&self) -> Result<()>;
}

impl Ctx {
    /// Opens the home (`--store` overriding its configured store).
    pub fn home(&self) -> Result<Home> {
        let mut home = match (Home::open(&self.home_dir), &self.key_file, &self.server) {
            // A holder with only their key file and the server's address needs no home.
            (Err(_), Some(key), Some(server)) if !self.home_dir.join("config.toml").exists() => {
                Home::keys_only(key, server)
            }
            (home, ..) => home?,
        };
        if self.store.is_some() {
            home.config.store.clone_from(&self.store);
        }
        Ok(home)
    }

    /// The acting key's name, when it comes from `--as` or the home (not from `--key`).
    pub fn actor(&self, home: &Home) -> String {
        self.actor.clone().unwrap_or_else(|| home.config.actor.clone())
    }

    /// Who acts and their secret key: the key in `--key FILE` under the name the ledger
    /// enrolled it with, else `--as` (or the home's actor) with its key from the home. Also
    /// returns the state it checked the key against, for the caller's own checks.
    pub fn signer(
        &self,
        home: &Home,
        backend: &mut backend::Backend,
    ) -> Result<(String, pd_ledger::SecretKey, pd_ledger::State)> {
        match &self.key_file {
            Some(path) => {
                let key = home::read_key_file(path)?;
                let state = backend.state()?;
                let found = pd_ledger::identify(&state, &key.public(), self.actor.as_deref(), None)
                    .map_err(|e| Refused(format!("{}: {e}", path.display())))?;
                let name = found.name.clone();
                Ok((name, key, state))
            }
            None => {
                let actor = self.actor(home);
                let state = backend.state()?;
                if let Some(k) = state.active_key(&actor) {
                    // A rotation done in this home (maybe completed by other admins since).
                    home.promote_next(&actor, &k.decl.public_key, k.since_seq)?;
                }
                let key = home.secret_key(&actor)?;
                if let Some(k) = state.active_key(&actor).filter(|k| k.decl.public_key != key.public()) {
                    let since = match k.past.len() {
                        0 => format!("enrolled at #{}", k.added_seq),
                        _ => format!("rotated; current since #{}", k.since_seq),
                    };
                    refuse!(
                        "the secret key of {actor} in {} is not {actor}'s key in the ledger ({since}): act with the key the ledger enrolled (--key FILE)",
                        home.keys_dir().display()
                    );
                }
                Ok((actor, key, state))
            }
        }
    }

    /// The OpenPGP secret key of `actor`: beside `--key FILE` (same name, `.openpgp`), else
    /// in the home.
    pub fn pgp_key(&self, home: &Home, actor: &str) -> Result<pd_store::PgpKey> {
        match &self.key_file {
            Some(path) => home::read_pgp_file(&path.with_extension("openpgp")),
            None => home.pgp_key(actor),
        }
    }

    /// A command's result: pretty JSON on stdout, or to the observer.
    pub fn emit<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        match &self.observer {
            Some(o) => o.result(serde_json::to_value(value)?),
            None => outln!("{}", serde_json::to_string_pretty(value)?),
        }
        Ok(())
    }

    /// Tells the observer, if any, about a step of a long operation.
    pub fn progress(&self, event: serde_json::Value) -> Result<()> {
        self.observer.as_ref().map_or(Ok(()), |o| o.progress(event))
    }

    /// Whether the observer, if any, wants to stop waiting.
    pub fn check(&self) -> Result<()> {
        self.observer.as_ref().map_or(Ok(()), |o| o.check())
    }
}

/// An action refused by a rule or a check: exit code 1, nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A signature, hash or replayed-ledger check failed: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Some targets of an environment did not load a version (failed, or did not answer in time):
/// exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotAdopted {
    /// The environment.
    pub env: String,
    /// The version pushed to it.
    pub version: pd_ledger::Version,
    /// Targets that reported a failed load, with their error.
    pub failed: Vec<(String, String)>,
    /// Targets that did not answer before the timeout.
    pub missing: Vec<String>,
    /// The version the environment was rolled back to, if it was.
    pub rolled_back_to: Option<pd_ledger::Version>,
    /// What happened and what to do.
    pub message: String,
}

/// Returns early with a [`Refused`] error.
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Refused(format!($($arg)*))))
    };
}

/// Parses `args` (the first is the program name) and runs the command, printing to stdout.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, None)
}

/// [`run`] for a library caller: with an observer, nothing is printed; results and progress
/// go to it (pass `--json` so that commands produce results rather than text).
pub fn run_with<I, T>(args: I, observer: Option<Box<dyn Observer>>) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    if let Some(ca) = &cli.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading the CA file {}", ca.display()))?;
        pd_server::tls::trust(&pem, &ca.display().to_string())?;
    }
    if let Some(id) = &cli.client_cert {
        let pem =
            std::fs::read(id).with_context(|| format!("reading the client certificate {}", id.display()))?;
        pd_server::tls::present(&pem, &id.display().to_string())?;
    }
    let ctx = Ctx {
        home_dir: cli.home,
        actor: cli.actor,
        key_file: cli.key_file,
        server: cli.server,
        token: cli.token,
        store: cli.store,
        json: cli.json || observer.is_some(),
        observer,
    };
    match cli.cmd {
        Cmd::Init(a) => init::run(&ctx, a),
        Cmd::Key { cmd } => key::run(&ctx, cmd),
        Cmd::Ledger { cmd } => ledger_cmd::run(&ctx, cmd),
        Cmd::State(a) => state_cmd::run(&ctx, a),
        Cmd::Env { cmd } => env_cmd::run(&ctx, cmd),
        Cmd::Policy { cmd } => policy_cmd::run(&ctx, cmd),
        Cmd::Store { cmd } => store_cmd::run(&ctx, cmd),
        Cmd::Serve(a) => net::serve(&ctx, a),
        Cmd::Agent(a) => net::agent(&ctx, a),
        Cmd::ExampleTarget(a) => net::example_target(&ctx, a),
        Cmd::Demo(a) => demo::run(&ctx, a),
        c @ (Cmd::Completions { .. } | Cmd::Man { .. }) => docs(&ctx, c),
    }
}

/// An error and its causes on one line, as `pd` prints it after `error: ` (for bad
/// arguments: clap's explanation without its `error: ` and `--help` hint).
pub fn message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<clap::Error>() {
        Some(c) => {
            let text = c.render().to_string();
            let lines = text.lines().take_while(|l| !l.starts_with("For more information"));
            lines.collect::<Vec<_>>().join("\n").trim().trim_start_matches("error: ").to_string()
        }
        None => output::chain(err),
    }
}

/// Whether `args` ask for `--json` (before any `--`): then errors are JSON too.
pub fn wants_json<T: AsRef<std::ffi::OsStr>>(args: &[T]) -> bool {
    args.iter().map(AsRef::as_ref).take_while(|a| *a != "--").any(|a| a == "--json")
}

/// An error as `--json` prints it, on stdout: `{"error": {"kind", "message", "exit_code"}}`
/// (see `schemas/error.json`).
pub fn error_json(err: &anyhow::Error) -> serde_json::Value {
    let f = failure(err);
    serde_json::json!({ "error": { "kind": f.kind(), "message": message(err), "exit_code": f.exit_code() } })
}

/// What kind of failure an error is: decides the exit code and the Python exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A ledger rule or pd refused the action; the refused step wrote nothing.
    Refused,
    /// A push of a package that lacks the approvals the ledger requires.
    NotApproved,
    /// Targets did not all load a version: a [`NotAdopted`] is in the chain.
    NotAdopted,
    /// A signature, hash, chain, head or export check failed.
    Verification,
    /// A server or store could not be reached, or answered with an error that is not a
    /// refusal (a missing token, say).
    Unreachable,
    /// Bad arguments or environment: no home, no key, an unreadable file.
    Usage,
}

impl Failure {
    /// The failure's name in `--json` errors.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::NotApproved => "not_approved",
            Failure::NotAdopted => "not_adopted",
            Failure::Verification => "verification",
            Failure::Unreachable => "unreachable",
            Failure::Usage => "usage",
        }
    }

    /// The exit code: 1 for refusals and failed checks, 2 for everything else.
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::Unreachable | Failure::Usage => 2,
            _ => 1,
        }
    }
}

/// Classifies an error by the first cause in its chain that pd knows.
pub fn failure(err: &anyhow::Error) -> Failure {
    use pd_ledger::RuleError;
    for e in err.chain() {
        if let Some(r) = rule_of(e) {
            return match r {
                RuleError::NotApproved { .. } => Failure::NotApproved,
                _ => Failure::Refused,
            };
        }
        if e.is::<NotAdopted>() {
            return Failure::NotAdopted;
        }
        if e.is::<Refused>() {
            return Failure::Refused;
        }
        let verification = e.is::<CheckFailed>()
            || e.is::<pd_store::PgpError>()
            || matches!(e.downcast_ref::<pd_store::StoreError>(), Some(pd_store::StoreError::Corrupt { .. }))
            || matches!(e.downcast_ref::<pd_verify::VerifyError>(), Some(v) if v.exit_code() == 1)
            || matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Diverged(_) | ClientError::Ledger(_))
            )
            || matches!(e.downcast_ref::<pd_ledger::LedgerError>(), Some(pd_ledger::LedgerError::Corrupt(_)));
        if verification {
            return Failure::Verification;
        }
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Refused { status: 403 | 409 | 410, .. }) => return Failure::Refused,
            Some(_) => return Failure::Unreachable,
            None => {}
        }
        if matches!(e.downcast_ref::<pd_store::StoreError>(), Some(pd_store::StoreError::Remote { .. })) {
            return Failure::Unreachable;
        }
    }
    Failure::Usage
}

/// The ledger rule an error reports breaking, wherever it sits in the chain.
pub fn rule_error(err: &anyhow::Error) -> Option<&pd_ledger::RuleError> {
    err.chain().find_map(rule_of)
}

fn rule_of<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e pd_ledger::RuleError> {
    use pd_ledger::LedgerError;
    e.downcast_ref::<pd_ledger::RuleError>()
        .or(match e.downcast_ref::<LedgerError>() {
            Some(LedgerError::Refused(r)) => Some(r),
            _ => None,
        })
        .or(match e.downcast_ref::<ClientError>() {
            Some(ClientError::Rule(r)) => Some(r),
            _ => None,
        })
}

/// 1 for refusals and failed checks, 2 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    failure(err).exit_code()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
