//! `pd demo`: the seed chapter's story on a throwaway home, step by step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `pd demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's home and files in this new directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const BASELINE: &str = "\
# llm_policy.yaml — which models each role may use
models:
  claude:
    allowed_roles: [nsf_research_staff]
    daily_budget_usd: 50
";

const WITH_OPENAI: &str = "\
  openai:
    allowed_roles: [nsf_research_staff]
    daily_budget_usd: 50
";

/// Runs the story. Every step is a real `pd` command on the demo's home.
pub fn run(a: DemoArgs) -> Result<()> {
    let tmp;
    let keep = a.dir.is_some();
    let dir = match a.dir {
        Some(d) => {
            std::fs::create_dir(&d)
                .with_context(|| format!("creating {} (it must not exist yet)", d.display()))?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let home = dir.join(".pd");
    let policy = dir.join("governance").join("llm_policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap_or(&dir))?;
    std::fs::write(&policy, BASELINE)?;
    let step = Step { home: &home, policy: &policy };
    story(&step)?;
    let export = dir.join("audit.pdx");
    step.pd("", &format!("ledger export {} --with-artifacts", export.display()))?;
    println!("\n$ pd-verify {}", export.display());
    let report = pd_verify::verify_file(&export).context("pd-verify on the demo's export")?;
    pd_verify::print_report(&report);
    if keep {
        println!("\ndemo files kept in {}", dir.display());
    }
    Ok(())
}

struct Step<'a> {
    home: &'a Path,
    policy: &'a Path,
}

impl Step<'_> {
    /// Runs `pd --home H [--as ACTOR] ARGS` and echoes it as a user would type it.
    fn pd(&self, actor: &str, args: &str) -> Result<()> {
        self.run(actor, args, Expect::Success)
    }

    /// The same, for a step the ledger must refuse.
    fn refused(&self, actor: &str, args: &str) -> Result<()> {
        self.run(actor, args, Expect::Refusal)
    }

    fn run(&self, actor: &str, args: &str, expect: Expect) -> Result<()> {
        let shown = args.replace(&self.policy.display().to_string(), "governance/llm_policy.yaml");
        let who = if actor.is_empty() { String::new() } else { format!("--as {actor} ") };
        println!("\n$ pd {who}{shown}");
        let mut argv = vec!["pd".to_string(), "--home".into(), self.home.display().to_string()];
        if !actor.is_empty() {
            argv.extend(["--as".to_string(), actor.to_string()]);
        }
        argv.extend(split(args));
        match (crate::run(argv), expect) {
            (Ok(()), Expect::Success) => Ok(()),
            (Err(e), Expect::Refusal) => {
                println!("✘ refused: {}", crate::output::chain(&e));
                Ok(())
            }
            (Ok(()), Expect::Refusal) => {
                anyhow::bail!("demo step `pd {shown}` should have been refused")
            }
            (Err(e), Expect::Success) => Err(e.context(format!("demo step `pd {shown}`"))),
        }
    }
}

#[derive(Clone, Copy)]
enum Expect {
    Success,
    Refusal,
}

/// Splits on spaces, keeping "quoted text" together.
fn split(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in args.split('"').enumerate() {
        if i % 2 == 1 {
            out.push(part.to_string());
        } else {
            out.extend(part.split_whitespace().map(String::from));
        }
    }
    out
}

fn story(s: &Step) -> Result<()> {
    let p = s.policy.display().to_string();
    s.pd("", "init")?;
    s.pd("", "key new carol --role approver")?;
    for (t, env) in [("dev-1", "dev"), ("dev-2", "dev"), ("staging-1", "staging"), ("prod-1", "prod")] {
        s.pd("", &format!("key new {t} --role target --env {env}"))?;
    }
    s.pd("", &format!("ledger package {p} --version 23.0.0 --reason \"Baseline: Claude for NSF staff\""))?;
    s.pd("carol", "ledger approve PD-23.0.0 --reason \"Reviewed in HITL\"")?;
    roll_out(s, "PD-23.0.0", "Baseline rollout")?;

    println!("\n# Governance adds an openai block to llm_policy.yaml");
    let mut text = std::fs::read_to_string(s.policy)?;
    text.push_str(WITH_OPENAI);
    std::fs::write(s.policy, text)?;
    s.refused(
        "",
        &format!("ledger deploy {p} --reason \"Enable OpenAI GPT for nsf_research_staff\" --no-wait"),
    )?;
    s.pd("", &format!("ledger package {p} --reason \"Enable OpenAI GPT for nsf_research_staff\""))?;
    s.refused(
        "",
        &format!("ledger deploy {p} --reason \"Enable OpenAI GPT for nsf_research_staff\" --no-wait"),
    )?;
    s.refused("", "ledger approve PD-23.1.0 --reason \"I wrote it, ship it\"")?;
    s.pd("carol", "ledger approve PD-23.1.0 --reason \"Approved in HITL by Carol\"")?;
    s.refused("", "ledger deploy PD-23.1.0 --env prod --reason \"skip ahead\" --no-wait")?;
    roll_out(s, "PD-23.1.0", "Enable OpenAI GPT for nsf_research_staff")?;

    println!("\n# Error rates spike in prod: one command rolls it back");
    s.pd("", "ledger rollback prod --reason \"Error rate spike after PD-23.1.0\"")?;
    s.pd("prod-1", "ledger ack PD-23.0.0")?;
    s.pd("", "state")?;
    s.pd("", "ledger log")
}

/// Deploys dev → staging → prod, each target acknowledging before the next promotion.
fn roll_out(s: &Step, version: &str, reason: &str) -> Result<()> {
    for targets in [&["dev-1", "dev-2"][..], &["staging-1"], &["prod-1"]] {
        s.pd("", &format!("ledger deploy {version} --reason \"{reason}\" --no-wait"))?;
        for t in targets {
            s.pd(t, &format!("ledger ack {version}"))?;
        }
    }
    Ok(())
}
