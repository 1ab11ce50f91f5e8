//! `pd key`: enroll, revoke, list and export keys.

use anyhow::Result;
use clap::{Args, Subcommand};
use pd_ledger::{Body, KeyDecl, KeyRevoke, Role};

use crate::backend::{precheck, Backend};
use crate::{home, output, refuse, Ctx};

/// Key subcommands.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key in this home and enroll it in the ledger (signed by an admin).
    New(NewArgs),
    /// Revoke a key: it can no longer act. History keeps what it did.
    Revoke {
        /// The key's name.
        name: String,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// List every key the ledger knows.
    List,
    /// Print a key's public half.
    Export {
        /// The key's name.
        name: String,
        /// Print the armored OpenPGP certificate (for `gpg --import`) instead of the Ed25519 key.
        #[arg(long, conflicts_with = "vkey")]
        openpgp: bool,
        /// Print the signed-note verifier key (`name+id+key`) that checks its checkpoints,
        /// for `pd-verify --proof … --key`.
        #[arg(long)]
        vkey: bool,
    },
}

/// Arguments of `pd key new`.
#[derive(Args)]
pub struct NewArgs {
    /// Name of the new key (a-z, 0-9, '.', '_', '-').
    name: String,
    /// Roles: admin, author, approver, deployer, target (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<Role>,
    /// The environment of a target key.
    #[arg(long)]
    env: Option<String>,
}

/// Runs a key subcommand.
pub fn run(ctx: &Ctx, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::New(a) => new(ctx, a),
        KeyCmd::Revoke { name, reason } => revoke(ctx, name, reason),
        KeyCmd::List => list(ctx),
        KeyCmd::Export { name, openpgp, vkey } => export(ctx, &name, openpgp, vkey),
    }
}

fn new(ctx: &Ctx, mut a: NewArgs) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let actor = ctx.actor(&home);
    let signer = home.secret_key(&actor)?;
    let state = backend.state()?;
    a.roles.sort();
    a.roles.dedup();
    let key = home::new_secret_key()?;
    let pgp = pd_store::openpgp::generate(&format!("{} (pd)", a.name))?;
    let decl = KeyDecl {
        name: a.name.clone(),
        public_key: key.public(),
        openpgp: Some(pgp.public_armored()?),
        roles: a.roles.clone(),
        env: a.env.clone(),
    };
    // Refuse before touching the disk; then write the secret, then the entry.
    precheck(&state, &actor, &signer, Body::KeyAdd(decl.clone()))?;
    home.save_keys(&a.name, &key, &pgp)?;
    let entry = match backend.append(&actor, &signer, |_| Ok(Body::KeyAdd(decl.clone()))) {
        Ok((entry, _)) => entry,
        Err(e) => {
            home.forget_keys(&a.name);
            return Err(e);
        }
    };
    let roles: Vec<&str> = a.roles.iter().map(|r| r.as_str()).collect();
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "name": a.name, "roles": roles, "env": a.env, "seq": entry.entry.seq,
            "public_key": key.public(), "openpgp_fingerprint": pgp.fingerprint(),
        }));
    }
    let env = a.env.map(|e| format!(" in {e}")).unwrap_or_default();
    output::ok(format!(
        "key {} ({}){env} enrolled by {actor} at #{}",
        a.name,
        roles.join(", "),
        entry.entry.seq
    ));
    output::ok(format!("OpenPGP {} · secret kept in {}", pgp.fingerprint(), home.dir.join("keys").display()));
    Ok(())
}

fn revoke(ctx: &Ctx, name: String, reason: String) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let actor = ctx.actor(&home);
    let signer = home.secret_key(&actor)?;
    let (e, _) = backend.append(&actor, &signer, |_| {
        Ok(Body::KeyRevoke(KeyRevoke { name: name.clone(), reason: reason.clone() }))
    })?;
    if ctx.json {
        return ctx.emit(&serde_json::json!({ "revoked": name, "seq": e.entry.seq }));
    }
    output::ok(format!("key {name} revoked at #{}", e.entry.seq));
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let state = Backend::open(ctx, ctx.home().ok())?.state()?;
    let keys: Vec<_> = state.keys.values().collect();
    if ctx.json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| serde_json::json!({
                "name": k.decl.name, "roles": k.decl.roles, "env": k.decl.env,
                "public_key": k.decl.public_key, "added_seq": k.added_seq,
                "vkey": state.note_vkey(&k.decl.public_key),
                "revoked": k.revoked.as_ref().map(|(seq, reason)| serde_json::json!({"seq": seq, "reason": reason})),
            }))
            .collect();
        return ctx.emit(&rows);
    }
    for k in keys {
        let roles: Vec<&str> = k.decl.roles.iter().map(|r| r.as_str()).collect();
        let env = k.decl.env.as_ref().map(|e| format!(" env={e}")).unwrap_or_default();
        let status = match &k.revoked {
            Some((seq, reason)) => format!("revoked at #{seq}: {reason}"),
            None => "active".to_string(),
        };
        println!("{:<16} {:<28}{env} added #{} · {status}", k.decl.name, roles.join(","), k.added_seq);
    }
    Ok(())
}

fn export(ctx: &Ctx, name: &str, openpgp: bool, vkey: bool) -> Result<()> {
    let state = Backend::open(ctx, ctx.home().ok())?.state()?;
    let Some(key) = state.keys.get(name) else {
        refuse!("no key named {name:?} in this ledger; see `pd key list`");
    };
    match (openpgp, &key.decl.openpgp) {
        (true, Some(cert)) => print!("{cert}"),
        (true, None) => refuse!("key {name:?} has no OpenPGP certificate"),
        (false, _) if vkey => println!("{}", state.note_vkey(&key.decl.public_key)),
        (false, _) => println!("{}", key.decl.public_key),
    }
    Ok(())
}
