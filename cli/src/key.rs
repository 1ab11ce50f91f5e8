//! `pd key`: generate keys where their holders are, enrol them from requests, rotate,
//! revoke, approve key changes under an admin quorum, list and export.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use pd_ledger::{
    Body, Custody, EnrolmentRequest, KeyApprove, KeyDecl, KeyRevoke, KeyRotate, RevokeKind, Role,
};
use pd_ledger::{SecretKey, SignedEntry, State};
use pd_store::PgpKey;

use crate::backend::{precheck, Backend};
use crate::home::{self, Config, Home};
use crate::{output, refuse, Ctx};

/// Key subcommands.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Generate a key on the holder's own machine: writes the secret files (mode 0600, never
    /// printed) and an enrolment request (public parts and a proof of possession) to hand to
    /// an admin, who runs `pd key new NAME --role … --request NAME.request`.
    Gen {
        /// The name to ask for (a-z, 0-9, '.', '_', '-').
        name: String,
        /// Write NAME.ed25519, NAME.openpgp and NAME.request into DIR (act with
        /// `pd --key DIR/NAME.ed25519`). Without it the secrets go into the home's keys/
        /// (a keys-only home is created, acting as NAME, if there is none) and the request
        /// into ./NAME.request.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Enrol a key in the ledger (as an admin): from the holder's request, or generated here.
    New(NewArgs),
    /// Replace a name's key in one entry: the old key stops acting from it on, the name keeps
    /// its roles.
    Rotate(RotateArgs),
    /// Revoke a key: it can no longer act. History keeps what it did.
    #[command(group(ArgGroup::new("kind").required(true).args(["compromised", "left"])))]
    Revoke {
        /// The key's name.
        name: String,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
        /// The secret may be in other hands: its approvals of packages not yet pushed
        /// anywhere stop counting.
        #[arg(long)]
        compromised: bool,
        /// The holder left or the key is retired: everything it signed still counts.
        #[arg(long)]
        left: bool,
    },
    /// Approve another admin's proposed key change (ledgers made with `--admin-approvals K`).
    Approve {
        /// The proposal's entry number, as `pd key pending` lists it.
        seq: u64,
    },
    /// List key changes waiting for more admins.
    Pending,
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

/// Where a new key's public parts come from.
#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["request", "generate_here"])))]
pub struct Source {
    /// The holder's enrolment request, as `pd key gen` wrote it: only its public parts are
    /// recorded, after its proof of possession is checked. The ledger records custody `holder`.
    #[arg(long, value_name = "FILE")]
    request: Option<PathBuf>,
    /// Generate the secret in this home instead (demos, single-person setups). The ledger
    /// records custody `admin`, and pd-verify reports every approval and ack by this key as
    /// not independent of the admin.
    #[arg(long)]
    generate_here: bool,
}

/// Arguments of `pd key new`.
#[derive(Args)]
pub struct NewArgs {
    /// Name of the new key (a-z, 0-9, '.', '_', '-'); a request must be for this name.
    name: String,
    /// Roles: admin, author, approver, deployer, target, log (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<Role>,
    /// The environment of a target key.
    #[arg(long)]
    env: Option<String>,
    /// A policy set a target key follows (repeat for several; default: every set).
    #[arg(long = "set", value_name = "SET")]
    sets: Vec<String>,
    /// A label of a target key (repeatable): `canary` or `region=eu`. Rollout waves select
    /// by labels (`pd env set ENV --waves canary,50%`); targets labelled `canary` go first.
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// An approver group of an approver key (repeatable): environments can require
    /// approvals from distinct groups (`pd env set prod --approver-groups security,platform`).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    #[command(flatten)]
    source: Source,
}

/// Arguments of `pd key rotate`.
#[derive(Args)]
pub struct RotateArgs {
    /// The key's name.
    name: String,
    #[command(flatten)]
    source: Source,
    /// The old secret may be in other hands: its approvals of packages not yet pushed
    /// anywhere stop counting (default: the old key retires and its approvals count).
    #[arg(long)]
    compromised: bool,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
}

/// Runs a key subcommand.
pub fn run(ctx: &Ctx, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Gen { name, out } => gen(ctx, &name, out),
        KeyCmd::New(a) => new(ctx, a),
        KeyCmd::Rotate(a) => rotate(ctx, a),
        KeyCmd::Revoke { name, reason, compromised, left: _ } => {
            let kind = if compromised { RevokeKind::Compromised } else { RevokeKind::Left };
            let body = Body::KeyRevoke(KeyRevoke { name, kind, reason });
            change(ctx, None, |_| Ok((body.clone(), body)))
        }
        KeyCmd::Approve { seq } => approve(ctx, seq),
        KeyCmd::Pending => pending(ctx),
        KeyCmd::List => list(ctx),
        KeyCmd::Export { name, openpgp, vkey } => export(ctx, &name, openpgp, vkey),
    }
}

/// A fresh Ed25519 key and OpenPGP key for `name`.
fn fresh(name: &str) -> Result<Secret> {
    Ok((home::new_secret_key()?, pd_store::openpgp::generate(&format!("{name} (pd)"))?))
}

fn gen(ctx: &Ctx, name: &str, out: Option<PathBuf>) -> Result<()> {
    pd_ledger::rules::check_name("name", name).map_err(|e| crate::Refused(e.to_string()))?;
    let (key, pgp) = fresh(name)?;
    let request = EnrolmentRequest::create(name, &key, Some(pgp.public_armored()?));
    let request_path = match &out {
        Some(dir) => dir.join(format!("{name}.request")),
        None => PathBuf::from(format!("{name}.request")),
    };
    if request_path.exists() {
        refuse!(
            "{} already exists; pd never overwrites a request (move it, or use --out DIR)",
            request_path.display()
        );
    }
    let keys_dir = match &out {
        Some(dir) => {
            home::secret_dir(dir)?;
            dir.clone()
        }
        None => match Home::open(&ctx.home_dir) {
            Ok(home) => home.keys_dir(),
            Err(_) => {
                // No home yet: a keys-only one acting as NAME, using the server if one was given.
                let config = Config {
                    actor: name.into(),
                    server: ctx.server.clone(),
                    store: None,
                    auto_rollback: false,
                    policy: Default::default(),
                };
                home::create_new(&ctx.home_dir, |dir| Home::create(dir, config).map(drop))?;
                Home::open(&ctx.home_dir)?.keys_dir()
            }
        },
    };
    home::save_keys(&keys_dir, name, &key, &pgp)?;
    if let Err(e) = home::write_file_atomic(&request_path, request.to_json().as_bytes()) {
        // No request, no use for the key: leave nothing half-made.
        let _ = std::fs::remove_file(keys_dir.join(format!("{name}.ed25519")));
        let _ = std::fs::remove_file(keys_dir.join(format!("{name}.openpgp")));
        return Err(e);
    }
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "name": name, "keys_dir": keys_dir, "request_file": request_path, "request": request,
            "openpgp_fingerprint": pgp.fingerprint(),
        }));
    }
    output::ok(format!("key {name} generated · secret files in {} (mode 0600)", keys_dir.display()));
    output::ok(format!(
        "enrolment request written to {} (public key, OpenPGP {}, proof of possession)",
        request_path.display(),
        pd_store::openpgp::short_fingerprint(&pgp.fingerprint())
    ));
    let request = request_path.display();
    output::next(format!(
        "hand {request} to an admin, who runs `pd key new {name} --role approver --request {request}`"
    ));
    Ok(())
}

/// Reads and checks an enrolment request (for `name`, if given), bounded.
pub fn read_request(path: &Path, name: Option<&str>) -> Result<EnrolmentRequest> {
    let reading = || format!("reading the enrolment request {}", path.display());
    let file = std::fs::File::open(path).with_context(reading)?;
    let limit = pd_ledger::limits::MAX_REQUEST_BYTES as u64;
    let size = file.metadata().with_context(reading)?.len();
    if size > limit {
        refuse!(
            "{}: {}",
            path.display(),
            pd_ledger::RequestError::TooLarge { size: size as usize, limit: limit as usize }
        );
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).with_context(reading)?;
    let request =
        EnrolmentRequest::decode(&bytes).map_err(|e| crate::Refused(format!("{}: {e}", path.display())))?;
    if let Some(name) = name.filter(|n| *n != request.name) {
        refuse!(
            "{} asks to enrol {:?}, not {name:?}: check the file, or enrol it under its own name",
            path.display(),
            request.name
        );
    }
    Ok(request)
}

/// A secret generated here: the Ed25519 key and the OpenPGP key.
type Secret = (SecretKey, PgpKey);

/// A new key's public parts and custody, and the secret when generated here.
fn public_parts(source: &Source, name: &str) -> Result<(Option<Secret>, EnrolmentRequest, Custody)> {
    match &source.request {
        Some(path) => {
            let r = read_request(path, Some(name))?;
            let custody = Custody::Holder(r.proof);
            Ok((None, r, custody))
        }
        None => {
            let (key, pgp) = fresh(name)?;
            let r = EnrolmentRequest::create(name, &key, Some(pgp.public_armored()?));
            Ok((Some((key, pgp)), r, Custody::Admin))
        }
    }
}

fn new(ctx: &Ctx, mut a: NewArgs) -> Result<()> {
    a.roles.sort();
    a.roles.dedup();
    for list in [&mut a.sets, &mut a.labels, &mut a.groups] {
        list.sort();
        list.dedup();
    }
    let (secret, r, custody) = public_parts(&a.source, &a.name)?;
    let decl =
        KeyDecl { custody, sets: a.sets, labels: a.labels, groups: a.groups, ..r.decl(a.roles, a.env) };
    let body = Body::KeyAdd(decl);
    let generated = secret.map(|secret| Generated { name: a.name, secret, rotation: false });
    change(ctx, generated, |_| Ok((body.clone(), body)))
}

fn rotate(ctx: &Ctx, a: RotateArgs) -> Result<()> {
    let (secret, r, custody) = public_parts(&a.source, &a.name)?;
    let old = if a.compromised { RevokeKind::Compromised } else { RevokeKind::Left };
    let body = Body::KeyRotate(KeyRotate {
        name: a.name.clone(),
        public_key: r.public_key,
        openpgp: r.openpgp,
        custody,
        old,
        reason: a.reason,
    });
    let generated = secret.map(|secret| Generated { name: a.name, secret, rotation: true });
    change(ctx, generated, |_| Ok((body.clone(), body)))
}

/// A secret generated in this home for a key change.
struct Generated {
    name: String,
    secret: Secret,
    /// A rotation's secret waits beside the name's current one and takes its place once the
    /// ledger makes it the name's key (at once, or when the last admin of a quorum approves).
    rotation: bool,
}

impl Generated {
    fn save(&self, home: &Home) -> Result<()> {
        let (key, pgp) = &self.secret;
        match self.rotation {
            true => home.save_next_keys(&self.name, key, pgp),
            false => home.save_keys(&self.name, key, pgp),
        }
    }

    fn forget(&self, home: &Home) {
        match self.rotation {
            true => home.forget_next_keys(&self.name),
            false => home.forget_keys(&self.name),
        }
    }
}

/// Appends the entry `make` builds from the state — `(subject, body)`: the key change
/// itself, or an approval of it — as the acting admin: checks it first, writes a secret
/// `generated` here before the entry and removes it if the entry did not land, follows a
/// rotation this home prepared once it takes effect, then reports whether the change took
/// effect or waits for more admins.
fn change(
    ctx: &Ctx,
    generated: Option<Generated>,
    make: impl FnOnce(&State) -> Result<(Body, Body)>,
) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let (actor, signer, state) = ctx.signer(&home, &mut backend)?;
    let (subject, body) = make(&state)?;
    // Refuse before touching the disk; then write the secret, then the entry.
    precheck(&state, &actor, &signer, body.clone())?;
    if let Some(g) = &generated {
        g.save(&home)?;
    }
    let (entry, state) = match backend.append(&actor, &signer, |_| Ok(body.clone())) {
        Ok(done) => done,
        Err(e) => {
            // A server may have committed the entry before its answer was lost: then the
            // secret is the key the ledger now holds, and is kept.
            let from = state.len();
            let landed = backend.entries(from).ok().and_then(|entries| {
                entries.into_iter().find(|x| x.entry.actor == actor && x.entry.body == body)
            });
            match landed {
                Some(entry) => (entry, backend.state()?),
                None => {
                    if let Some(g) = &generated {
                        g.forget(&home);
                    }
                    return Err(e);
                }
            }
        }
    };
    if let Some(k) = match &subject {
        Body::KeyRotate(r) => state.active_key(&r.name),
        _ => None,
    } {
        home.promote_next(&k.decl.name, &k.decl.public_key, k.since_seq)?;
    }
    report(ctx, &entry, &state, &describe(&subject))
}

/// What a key change did, in words.
/// What a key change does, in words (the ledger log's summary of it), with the key it
/// installs, so an admin approving it can compare that key with the one its holder made.
fn describe(body: &Body) -> String {
    let what = match body {
        Body::KeyAdd(_) => "enrolment of",
        Body::KeyRotate(_) => "rotation of",
        Body::KeyRevoke(_) => "revocation of",
        other => other.kind(),
    };
    let installs = match body {
        Body::KeyAdd(k) => Some((&k.public_key, k.openpgp.as_deref())),
        Body::KeyRotate(r) => Some((&r.public_key, r.openpgp.as_deref())),
        _ => None,
    };
    let key = installs.map_or_else(String::new, |(pk, cert)| {
        let fpr = cert.and_then(|c| pd_store::openpgp::cert_fingerprint(c).ok());
        let pgp = fpr.map(|f| format!(", OpenPGP {f}")).unwrap_or_default();
        format!(" · key {}{pgp}", pk.to_string().get(..16).unwrap_or_default())
    });
    format!("{what} {}{key}", crate::ledger_cmd::summary(body))
}

fn report(ctx: &Ctx, entry: &SignedEntry, state: &State, what: &str) -> Result<()> {
    let seq = entry.entry.seq;
    let proposal_seq = match &entry.entry.body {
        Body::KeyApprove(a) => a.seq,
        _ => seq,
    };
    let waiting = state.proposals().get(&proposal_seq);
    let have = waiting.map(|p| state.proposal_support(p, &p.proposer));
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "change": entry.entry.body.kind(), "what": what, "seq": seq, "entry_id": entry.id,
            "by": entry.entry.actor, "applied": waiting.is_none(), "proposal_seq": proposal_seq,
            "admin_approvals": have, "admin_approvals_required": state.admin_approvals(),
        }));
    }
    match have {
        None => output::ok(format!("{what} recorded by {} at #{seq}", entry.entry.actor)),
        Some(have) => {
            let need = state.admin_approvals();
            output::ok(format!(
                "{what} proposed by {} at #{proposal_seq}: {have} of {need} admins",
                state.proposals()[&proposal_seq].proposer
            ));
            output::next(format!("another admin runs `pd key approve {proposal_seq}`"));
        }
    }
    Ok(())
}

fn approve(ctx: &Ctx, seq: u64) -> Result<()> {
    change(ctx, None, |state| {
        let Some(p) = state.proposals().get(&seq) else {
            refuse!("no key change waiting at #{seq}; see `pd key pending`");
        };
        Ok((p.change.clone(), Body::KeyApprove(KeyApprove { seq, id: p.id })))
    })
}

fn pending(ctx: &Ctx) -> Result<()> {
    let state = Backend::open(ctx, ctx.home().ok())?.state()?;
    let rows: Vec<_> = state
        .proposals()
        .values()
        .map(|p| {
            let approvers: Vec<&str> =
                std::iter::once(p.proposer.as_str()).chain(p.approvals.iter().map(String::as_str)).collect();
            (p, approvers, state.proposal_support(p, &p.proposer))
        })
        .collect();
    if ctx.json {
        let json: Vec<_> = rows
            .iter()
            .map(|(p, approvers, have)| serde_json::json!({
                "seq": p.seq, "id": p.id, "change": p.change.kind(), "what": describe(&p.change),
                "approved_by": approvers, "admin_approvals": have, "admin_approvals_required": state.admin_approvals(),
            }))
            .collect();
        return ctx.emit(&json);
    }
    if rows.is_empty() {
        output::ok("no key changes waiting");
    }
    for (p, approvers, have) in rows {
        outln!(
            "#{:<6} {} · {have} of {} admins ({}) · pd key approve {}",
            p.seq,
            describe(&p.change),
            state.admin_approvals(),
            approvers.join(", "),
            p.seq
        );
    }
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let state = Backend::open(ctx, ctx.home().ok())?.state()?;
    let keys: Vec<_> = state.keys().values().collect();
    if ctx.json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.decl.name, "roles": k.decl.roles, "env": k.decl.env, "sets": k.decl.sets,
                    "labels": k.decl.labels, "groups": k.decl.groups,
                    "public_key": k.decl.public_key, "custody": k.decl.custody.as_str(),
                    "added_seq": k.added_seq, "since_seq": k.since_seq, "rotations": k.past.len(),
                    "vkey": state.note_vkey(&k.decl.public_key),
                    "revoked": k.revoked,
                })
            })
            .collect();
        return ctx.emit(&rows);
    }
    for k in keys {
        let roles: Vec<&str> = k.decl.roles.iter().map(|r| r.as_str()).collect();
        let mut env = k.decl.env.as_ref().map(|e| format!(" env={e}")).unwrap_or_default();
        for (what, list) in [("sets", &k.decl.sets), ("labels", &k.decl.labels), ("groups", &k.decl.groups)] {
            if !list.is_empty() {
                env.push_str(&format!(" {what}={}", list.join(",")));
            }
        }
        let status = match &k.revoked {
            Some(r) => format!("revoked at #{} ({}): {}", r.seq, r.kind.as_str(), r.reason),
            None => "active".to_string(),
        };
        let rotated = match k.past.len() {
            0 => String::new(),
            n => format!(" · rotated {n}× (current since #{})", k.since_seq),
        };
        outln!(
            "{:<16} {:<28}{env} added #{} · custody {}{rotated} · {status}",
            k.decl.name,
            roles.join(","),
            k.added_seq,
            k.decl.custody.as_str()
        );
    }
    Ok(())
}

fn export(ctx: &Ctx, name: &str, openpgp: bool, vkey: bool) -> Result<()> {
    let state = Backend::open(ctx, ctx.home().ok())?.state()?;
    let Some(key) = state.keys().get(name) else {
        refuse!("no key named {name:?} in this ledger; see `pd key list`");
    };
    if openpgp && key.decl.openpgp.is_none() {
        refuse!("key {name:?} has no OpenPGP certificate");
    }
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "name": name, "public_key": key.decl.public_key,
            "vkey": state.note_vkey(&key.decl.public_key), "openpgp": key.decl.openpgp,
        }));
    }
    match (openpgp, &key.decl.openpgp) {
        (true, cert) => out!("{}", cert.as_deref().unwrap_or_default()),
        (false, _) if vkey => outln!("{}", state.note_vkey(&key.decl.public_key)),
        (false, _) => outln!("{}", key.decl.public_key),
    }
    Ok(())
}
