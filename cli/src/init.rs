//! `pd init`: a new home with an admin key and the genesis entry.

use anyhow::Result;
use clap::Args;
use pd_ledger::file_store::FileStore;
use pd_ledger::{Body, Genesis, Hash, KeyDecl, Ledger, Role};

use crate::home::{self, Config, Home};
use crate::{output, Ctx};

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

/// Creates the home (all or nothing).
pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let (id, fpr) = home::create_new(&ctx.home_dir, |dir| build(dir, &args, ctx.store.clone()))?;
    report(ctx, &args, id, &fpr)
}

/// Creates the home in `dir`; `store` (from `--store`) is kept in its config.
fn build(dir: &std::path::Path, args: &InitArgs, store: Option<String>) -> Result<(Hash, String)> {
    let config = Config { actor: ADMIN.to_string(), server: None, store, auto_rollback: false };
    let home = Home::create(dir, config)?;
    let key = home::new_secret_key()?;
    let pgp = pd_store::openpgp::generate(&format!("{ADMIN} (pd)"))?;
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let genesis = Genesis {
        format: pd_ledger::entry::FORMAT_VERSION,
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
    let mut ledger = Ledger::open(FileStore::open(&dir.join("ledger"))?)?;
    ledger.sign_append(ADMIN, &key, home::now_ms(), Body::Genesis(genesis))?;
    home.save_keys(ADMIN, &key, &pgp)?;
    Ok((Hash(id), pgp.fingerprint()))
}

fn report(ctx: &Ctx, args: &InitArgs, id: Hash, fpr: &str) -> Result<()> {
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "home": ctx.home_dir, "ledger_id": id, "envs": args.envs,
            "approvals_required": args.approvals, "admin": ADMIN, "openpgp_fingerprint": fpr,
        }));
    }
    output::ok(format!("created ledger {} in {}", id.short(), ctx.home_dir.display()));
    output::ok(format!("environments {} · approvals required: {}", args.envs.join(" → "), args.approvals));
    output::ok(format!("key {ADMIN} (admin, author, deployer, log) · OpenPGP {fpr}"));
    output::next("pd key new carol --role approver");
    Ok(())
}
