//! `pd policy`: how each policy set's files are checked before they are packaged — a JSON
//! Schema and a validator command, kept in the home's `config.toml`. Each package entry
//! records the schema's BLAKE3 and the command that checked it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::home::Home;
use crate::{output, refuse, Ctx};

/// Policy subcommands.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Attach a JSON Schema to a policy set: every `.yaml`/`.yml`/`.json`/`.toml` file of
    /// its packages must satisfy it (copied into the home as `schemas/SET.json`).
    Schema {
        /// The policy set (a package name, such as llm_policy).
        set: String,
        /// The JSON Schema file.
        #[arg(required_unless_present = "clear")]
        file: Option<PathBuf>,
        /// Remove the set's schema instead.
        #[arg(long, conflicts_with = "file")]
        clear: bool,
    },
    /// Give a policy set a validator command (run by `sh -c` in a directory holding the
    /// files, their paths as arguments, for example `opa check`); non-zero refuses a package.
    Validator {
        /// The policy set.
        set: String,
        /// The command.
        #[arg(required_unless_present = "clear")]
        command: Option<String>,
        /// Remove the set's validator instead.
        #[arg(long, conflicts_with = "command")]
        clear: bool,
    },
    /// List each policy set's checks.
    List,
}

/// Runs a policy subcommand.
pub fn run(ctx: &Ctx, cmd: PolicyCmd) -> Result<()> {
    let mut home = ctx.home()?;
    match cmd {
        PolicyCmd::Schema { set, file, clear } => {
            pd_ledger::rules::check_set_name(&set).map_err(|e| crate::Refused(e.to_string()))?;
            let entry = home.config.policy.entry(set.clone()).or_default();
            entry.schema = match file {
                Some(file) if !clear => {
                    let bytes =
                        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                    let (hash, _) = crate::validate::compile_schema(&file, &bytes)?;
                    let rel = PathBuf::from("schemas").join(format!("{set}.json"));
                    std::fs::create_dir_all(home.dir.join("schemas"))?;
                    crate::home::write_file_atomic(&home.dir.join(&rel), &bytes)?;
                    if !ctx.json {
                        output::ok(format!(
                            "{set}: files must satisfy {} (blake3 {})",
                            file.display(),
                            hash.short()
                        ));
                    }
                    Some(rel)
                }
                _ => None,
            };
            save(ctx, &mut home, &set)
        }
        PolicyCmd::Validator { set, command, clear } => {
            pd_ledger::rules::check_set_name(&set).map_err(|e| crate::Refused(e.to_string()))?;
            if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                refuse!("give a command, or --clear to remove the validator");
            }
            let entry = home.config.policy.entry(set.clone()).or_default();
            entry.validator = if clear { None } else { command };
            save(ctx, &mut home, &set)
        }
        PolicyCmd::List => list(ctx, &home),
    }
}

/// Writes the config, dropping a set left without checks; prints the set's checks.
fn save(ctx: &Ctx, home: &mut Home, set: &str) -> Result<()> {
    home.config.policy.retain(|_, p| p.schema.is_some() || p.validator.is_some());
    home.save_config()?;
    if ctx.json {
        let checks =
            home.config.policy.get(set).map_or_else(|| serde_json::json!({}), |p| serde_json::json!(p));
        return ctx.emit(&serde_json::json!({ "set": set, "checks": checks }));
    }
    match home.config.policy.get(set) {
        Some(p) => {
            let schema = p.schema.as_ref().map(|s| format!("schema {}", s.display()));
            let validator = p.validator.as_ref().map(|v| format!("validator `{v}`"));
            let checks: Vec<String> = schema.into_iter().chain(validator).collect();
            output::ok(format!("{set} is checked by {}", checks.join(" and ")))
        }
        None => output::ok(format!("{set} is checked by file type only")),
    }
    Ok(())
}

fn list(ctx: &Ctx, home: &Home) -> Result<()> {
    if ctx.json {
        return ctx.emit(&home.config.policy);
    }
    if home.config.policy.is_empty() {
        outln!("no schemas or validators: files are checked by type (.yaml/.yml, .json, .toml must parse)");
    }
    for (set, p) in &home.config.policy {
        let schema = p.schema.as_ref().map(|s| s.display().to_string()).unwrap_or_else(|| "-".into());
        outln!("{set:<24} schema {schema} · validator {}", p.validator.as_deref().unwrap_or("-"));
    }
    Ok(())
}
