//! `pd init`: a new home with an admin key and the genesis entry.

use anyhow::Result;
use clap::Args;
use pd_ledger::file_store::FileStore;
use pd_ledger::{Body, EnrolmentRequest, Genesis, Hash, KeyDecl, Ledger, Role};

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
    /// Distinct admins every key change (enrol, rotate, revoke) needs, so one stolen admin
    /// key cannot enrol a fake approver. Above 1, give the other admins' requests with
    /// --admin-request.
    #[arg(long, default_value_t = 1, value_name = "K")]
    admin_approvals: u32,
    /// Another admin's enrolment request (from their `pd key gen NAME`), enrolled in genesis
    /// with the admin role; repeat for several.
    #[arg(long = "admin-request", value_name = "FILE")]
    admin_requests: Vec<std::path::PathBuf>,
    /// Targets every environment expects (change one with `pd env set ENV --min-targets N`):
    /// a push to fewer enrolled targets is refused, and adoption needs them all.
    #[arg(long, default_value_t = 1, value_name = "N")]
    min_targets: u32,
}

const ADMIN: &str = "admin";

/// Creates the home (all or nothing).
pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let mut admins = Vec::new();
    for path in &args.admin_requests {
        let request = crate::key::read_request(path, None)?;
        admins.push(request.decl(vec![Role::Admin], None));
    }
    if args.admin_approvals as usize > admins.len() + 1 {
        crate::refuse!(
            "--admin-approvals {} needs {} admins, and genesis would have {}: give the others' requests with --admin-request FILE (each made by `pd key gen NAME`)",
            args.admin_approvals,
            args.admin_approvals,
            admins.len() + 1
        );
    }
    let (id, fpr) = home::create_new(&ctx.home_dir, |dir| build(dir, &args, admins, ctx.store.clone()))?;
    report(ctx, &args, id, &fpr)
}

/// Creates the home in `dir`; `store` (from `--store`) is kept in its config.
fn build(
    dir: &std::path::Path,
    args: &InitArgs,
    admins: Vec<KeyDecl>,
    store: Option<String>,
) -> Result<(Hash, String)> {
    let config = Config {
        actor: ADMIN.to_string(),
        server: None,
        store,
        auto_rollback: false,
        policy: Default::default(),
    };
    let home = Home::create(dir, config)?;
    let key = home::new_secret_key()?;
    let pgp = pd_store::openpgp::generate(&format!("{ADMIN} (pd)"))?;
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let cert = pgp.public_armored()?;
    let request = EnrolmentRequest::create(ADMIN, &key, Some(cert));
    let mut keys = vec![request.decl(vec![Role::Admin, Role::Author, Role::Deployer, Role::Log], None)];
    keys.extend(admins);
    let genesis = Genesis {
        format: pd_ledger::entry::FORMAT_VERSION,
        ledger_id: Hash(id),
        envs: args.envs.iter().map(|e| e.trim().to_string()).collect(),
        approvals_required: args.approvals,
        admin_approvals: args.admin_approvals,
        min_targets: args.min_targets,
        keys,
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
            "approvals_required": args.approvals, "admin_approvals": args.admin_approvals, "admin": ADMIN, "openpgp_fingerprint": fpr,
        }));
    }
    output::ok(format!("created ledger {} in {}", id.short(), ctx.home_dir.display()));
    output::ok(format!("environments {} · approvals required: {}", args.envs.join(" → "), args.approvals));
    output::ok(format!("key {ADMIN} (admin, author, deployer, log) · OpenPGP {fpr}"));
    if args.admin_approvals > 1 {
        output::ok(format!("key changes need {} admins", args.admin_approvals));
    }
    output::next("the approver runs `pd key gen carol` on their machine; you run `pd key new carol --role approver --request carol.request`");
    Ok(())
}
