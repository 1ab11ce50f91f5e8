//! `pd init`: a new home with an admin key and the genesis entry.

use anyhow::{Context, Result};
use clap::Args;
use pd_ledger::sled_store::SledStore;
use pd_ledger::{Body, Genesis, Hash, KeyDecl, Ledger, Role};

use crate::home::{self, Config, Home};
use crate::{output, refuse, Ctx};

/// Arguments of `pd init`.
#[derive(Args)]
pub struct InitArgs {
    /// Environments in promotion order.
    #[arg(long, value_delimiter = ',', default_value = "dev,staging,prod")]
    envs: Vec<String>,
    /// Distinct approvals each package needs before it can be deployed.
    #[arg(long, default_value_t = 1)]
    approvals: u32,
}

const ADMIN: &str = "admin";

/// Creates the home. Builds it in a sibling temp directory and renames it into place, so a
/// failure leaves nothing behind.
pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let dir = &ctx.home_dir;
    if dir.join("config.toml").exists() || dir.join("ledger").exists() {
        refuse!("{} already holds a pd ledger; pd init never overwrites one", dir.display());
    }
    if dir.exists() && dir.read_dir()?.next().is_some() {
        refuse!("{} exists and is not empty; choose another --home", dir.display());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".pd-init-").tempdir_in(parent)?;
    let (id, fpr) = build(tmp.path(), &args)?;
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(tmp.path(), dir)
        .with_context(|| format!("moving the new home into {}", dir.display()))?;
    std::mem::forget(tmp);
    report(ctx, &args, id, &fpr)
}

fn build(dir: &std::path::Path, args: &InitArgs) -> Result<(Hash, String)> {
    let home = Home::create(dir, Config { actor: ADMIN.to_string(), server: None, auto_rollback: false })?;
    let key = home::new_secret_key()?;
    let pgp = pd_store::openpgp::generate(&format!("{ADMIN} (pd)"))?;
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let genesis = Genesis {
        ledger_id: Hash(id),
        envs: args.envs.iter().map(|e| e.trim().to_string()).collect(),
        approvals_required: args.approvals,
        keys: vec![KeyDecl {
            name: ADMIN.to_string(),
            public_key: key.public(),
            openpgp: Some(pgp.public_armored()?),
            roles: vec![Role::Admin, Role::Author, Role::Deployer, Role::Log],
            env: None,
        }],
    };
    let mut ledger = Ledger::open(SledStore::open(&dir.join("ledger"))?)?;
    ledger.sign_append(ADMIN, &key, home::now_ms(), Body::Genesis(genesis))?;
    home.save_keys(ADMIN, &key, &pgp)?;
    Ok((Hash(id), pgp.fingerprint()))
}

fn report(ctx: &Ctx, args: &InitArgs, id: Hash, fpr: &str) -> Result<()> {
    if ctx.json {
        return output::json(&serde_json::json!({
            "home": ctx.home_dir, "ledger_id": id, "envs": args.envs,
            "approvals_required": args.approvals, "admin": ADMIN, "openpgp_fingerprint": fpr,
        }));
    }
    output::ok(format!("created ledger {} in {}", id.short(), ctx.home_dir.display()));
    output::ok(format!("environments {} · approvals required: {}", args.envs.join(" → "), args.approvals));
    output::ok(format!("key {ADMIN} (admin, author, deployer) · OpenPGP {fpr}"));
    output::next("pd key new carol --role approver");
    Ok(())
}
