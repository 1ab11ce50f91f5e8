//! `pd ledger`: package, approve, deploy, ack, roll back, log, show, export.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pd_ledger::export::{Contents, Export, ExportArtifact, Head, FORMAT};
use pd_ledger::state::PackageState;
use pd_ledger::{Ack, Approve, Body, Bump, Outcome, Rollback, SignedEntry, State, Version};

use crate::backend::{precheck, Backend};
use crate::home;
use crate::{output, refuse, Ctx};

/// Ledger subcommands.
#[derive(Subcommand)]
pub enum LedgerCmd {
    /// Build a deterministic, signed package of policy files and record it.
    Package(PackageArgs),
    /// Approve a package (an approver who did not author it).
    Approve {
        /// The package, e.g. PD-23.1.0.
        version: Version,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Ship an approved package env by env in promotion order, waiting for each env's targets.
    Deploy(crate::deploy::DeployArgs),
    /// As a target key: record that this target loaded (or failed to load) a version.
    Ack {
        /// The version loaded.
        version: Version,
        /// Record a failed load with this error instead.
        #[arg(long, value_name = "ERROR")]
        failed: Option<String>,
    },
    /// Make an earlier version desired again in one environment.
    Rollback(RollbackArgs),
    /// Withdraw a package (author, approver or admin): it can never be approved or
    /// deployed again, and it no longer blocks newer or older good packages.
    Withdraw {
        /// The package, e.g. PD-0.8.0.
        version: Version,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Override an environment's freeze window for one package (an approver who did not
    /// author it): a push into a freeze needs overrides from the approvals the
    /// environment's policy requires (`pd env show`).
    Override {
        /// The package, e.g. PD-0.8.0.
        version: Version,
        /// The frozen environment.
        #[arg(long)]
        env: String,
        /// Why it cannot wait (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// List the entries, oldest first (checkpoints only with --all or --kind checkpoint).
    Log(LogArgs),
    /// What a package changes, file by file, as a unified diff of verified artifacts:
    /// `diff PD-0.2.0` (against the version desired in its next environment), `diff PD-0.1.0
    /// PD-0.2.0`, `diff PD-0.2.0 llm_policy.yaml` (a local file); no argument: the newest
    /// package against its next environment.
    Diff(crate::diff_cmd::DiffArgs),
    /// Show one entry (by seq) or one package (by version) in full.
    Show {
        /// A seq number or a version such as PD-23.1.0.
        what: String,
    },
    /// Append a checkpoint: a signed head of the Merkle tree over every entry so far (a
    /// C2SP signed note). Needs a key with the log role; `pd serve` writes them on its own.
    Checkpoint(crate::proof_cmd::CheckpointArgs),
    /// Prove that an entry is in the ledger a checkpoint commits to (for `pd-verify --proof`).
    Prove(crate::proof_cmd::ProveArgs),
    /// Prove that a later checkpoint extends an earlier one (for `pd-verify --proof`).
    Consistency(crate::proof_cmd::ConsistencyArgs),
    /// Copy the ledger and its artifacts to S3: immutable numbered segments plus a signed
    /// head; never overwrites a segment (`pd serve --mirror` does it continuously).
    Mirror(crate::mirror_cmd::MirrorArgs),
    /// Rebuild a home (at --home, which must not exist yet) from an S3 mirror, verified
    /// with pd-verify's rules first.
    Restore(crate::mirror_cmd::MirrorArgs),
    /// Verify an S3 mirror in place: entries, chain, signatures, rules, signed head, artifacts.
    Verify(crate::mirror_cmd::MirrorArgs),
    /// Write the whole ledger, with a signed head, to one file for `pd-verify`.
    Export {
        /// Output file.
        file: PathBuf,
        /// Include every package tarball, so the verifier checks hashes and OpenPGP signatures.
        #[arg(long)]
        with_artifacts: bool,
    },
}

/// Arguments of `pd ledger package`.
#[derive(Args)]
pub struct PackageArgs {
    /// Policy files or directories.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
    /// Raise the latest version's major, minor (default) or patch part.
    #[arg(long, value_enum, conflicts_with = "version")]
    bump: Option<BumpArg>,
    /// Exact version instead of a bump.
    #[arg(long)]
    version: Option<Version>,
    /// Policy name (default: the first file's name without extension).
    #[arg(long)]
    name: Option<String>,
    /// Skip the checks before signing (parsing by type, the set's JSON Schema and validator,
    /// no empty files); the package entry records that it was not validated.
    #[arg(long)]
    no_validate: bool,
    /// Refuse unless the files are in a git working tree with no uncommitted changes (the
    /// commit is recorded either way when there is one).
    #[arg(long)]
    require_clean: bool,
}

impl PackageArgs {
    /// One file or directory with the default name and the next minor version.
    pub fn of(path: PathBuf, reason: String) -> PackageArgs {
        PackageArgs {
            files: vec![path],
            reason,
            bump: None,
            version: None,
            name: None,
            no_validate: false,
            require_clean: false,
        }
    }
}

/// `--bump` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BumpArg {
    /// x+1.0.0
    Major,
    /// x.y+1.0
    Minor,
    /// x.y.z+1
    Patch,
}

/// Arguments of `pd ledger rollback`.
#[derive(Args)]
pub struct RollbackArgs {
    /// The environment.
    env: String,
    /// The version to return to (default: the one before the current).
    #[arg(long)]
    to: Option<Version>,
    /// The policy set to roll back (needed when the environment runs several).
    #[arg(long)]
    set: Option<String>,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
    /// With a server: return after the entry instead of waiting for the targets.
    #[arg(long)]
    no_wait: bool,
    /// With a server: how long to wait for the targets to run the version again.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// Runs a ledger subcommand.
pub fn run(ctx: &Ctx, cmd: LedgerCmd) -> Result<()> {
    match cmd {
        LedgerCmd::Package(a) => package(ctx, a),
        LedgerCmd::Approve { version, reason } => approve(ctx, version, reason),
        LedgerCmd::Withdraw { version, reason } => withdraw(ctx, version, reason),
        LedgerCmd::Override { version, env, reason } => freeze_override(ctx, version, env, reason),
        LedgerCmd::Deploy(a) => crate::deploy::run(ctx, a),
        LedgerCmd::Ack { version, failed } => ack(ctx, version, failed),
        LedgerCmd::Rollback(a) => rollback(ctx, a),
        LedgerCmd::Log(a) => log(ctx, a),
        LedgerCmd::Diff(a) => crate::diff_cmd::run(ctx, a),
        LedgerCmd::Show { what } => show(ctx, &what),
        LedgerCmd::Export { file, with_artifacts } => export(ctx, &file, with_artifacts),
        LedgerCmd::Checkpoint(a) => crate::proof_cmd::checkpoint(ctx, a),
        LedgerCmd::Prove(a) => crate::proof_cmd::prove(ctx, a),
        LedgerCmd::Consistency(a) => crate::proof_cmd::consistency(ctx, a),
        LedgerCmd::Mirror(a) => crate::mirror_cmd::mirror(ctx, a),
        LedgerCmd::Restore(a) => crate::mirror_cmd::restore(ctx, a),
        LedgerCmd::Verify(a) => crate::mirror_cmd::verify(ctx, a),
    }
}

/// The package with this version, or a refusal that says how to find one.
pub fn package_of(state: &State, version: Version) -> Result<&PackageState> {
    match state.package(version) {
        Some(p) => Ok(p),
        None => refuse!("no package {version} in this ledger; `pd ledger log` lists the packages"),
    }
}

fn next_version(state: &State, a: &PackageArgs) -> Result<Version> {
    if let Some(v) = a.version {
        return Ok(v);
    }
    let bump = match a.bump.unwrap_or(BumpArg::Minor) {
        BumpArg::Major => Bump::Major,
        BumpArg::Minor => Bump::Minor,
        BumpArg::Patch => Bump::Patch,
    };
    let latest = state.latest_package().map(|p| p.package.version).unwrap_or_default();
    latest.bump(bump).context("version number overflow; pass --version")
}

pub(crate) fn policy_name(a: &PackageArgs) -> String {
    if let Some(n) = &a.name {
        return n.clone();
    }
    let first = &a.files[0];
    let stem = if first.is_dir() { first.file_name() } else { first.file_stem() };
    let stem = stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "policy".into());
    stem.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .take(64)
        .collect()
}

fn package(ctx: &Ctx, a: PackageArgs) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    match package_with(ctx, &home, &mut backend, &a)? {
        Packaged::New(new) => report_package(ctx, &new.0, &new.1, &new.2),
        Packaged::Reused(version, seq) => {
            if ctx.json {
                return ctx.emit(&serde_json::json!({ "version": version, "seq": seq, "reused": true }));
            }
            output::ok(format!(
                "already packaged as {version} (#{seq}): the same files with the same content"
            ));
            Ok(())
        }
    }
}

/// What `pd ledger package` did.
pub enum Packaged {
    /// A new package: its entry, tarball and the signer's OpenPGP fingerprint.
    New(Box<(SignedEntry, pd_store::tarball::Built, String)>),
    /// A package of exactly these files already exists: its version and entry.
    Reused(Version, u64),
}

/// A package of `a.files` with the same name exists: under the append turn, to stop.
#[derive(Debug, thiserror::Error)]
#[error("already packaged")]
struct AlreadyPackaged;

/// Another package was appended after this one's version was computed: build it again.
#[derive(Debug, thiserror::Error)]
#[error("the next version moved")]
struct VersionMoved;

/// Each file's path and BLAKE3, as a package entry lists them (sorted by path).
type Wanted = Vec<(String, [u8; 32])>;

fn wanted(files: &[pd_store::tarball::PolicyFile]) -> Wanted {
    files.iter().map(|f| (f.path.clone(), pd_ledger::Hash::of(&f.bytes).0)).collect()
}

/// The newest live package holding exactly `wanted` (same paths, same bytes), of policy set
/// `name` when given.
fn holding<'s>(state: &'s State, name: Option<&str>, wanted: &Wanted) -> Option<&'s PackageState> {
    state.packages().iter().rev().find(|p| {
        p.withdrawn.is_none()
            && name.is_none_or(|n| p.package.name == n)
            && p.package.files.len() == wanted.len()
            && p.package.files.iter().zip(wanted).all(|(f, (path, b3))| &f.path == path && f.blake3.0 == *b3)
    })
}

/// Builds, signs, stores and records a package of `a.files` as the acting key, or finds the
/// package that already holds exactly them. The version is checked again under the append
/// turn: when a concurrent run took it, this one rebuilds at the next version (or, if the
/// other run packaged the same files, reuses its package). Objects are never deleted: one
/// left by a failed append is unreferenced, content-addressed and harmless, while removing
/// it could remove the bytes of a concurrent run that did commit them.
pub fn package_with(
    ctx: &Ctx,
    home: &home::Home,
    backend: &mut Backend,
    a: &PackageArgs,
) -> Result<Packaged> {
    let limits = pd_store::Limits::default();
    let files = pd_store::tarball::collect(&a.files, &limits)?;
    let name = policy_name(a);
    let want = wanted(&files);
    let checked = match a.no_validate {
        true => pd_ledger::Checked::default(),
        false => crate::validate::check(home, &name, &files)?,
    };
    let source = crate::provenance::source(&a.files, a.require_clean)?;
    loop {
        let (actor, key, state) = ctx.signer(home, backend)?;
        if let Some(p) = holding(&state, Some(&name), &want) {
            return Ok(Packaged::Reused(p.package.version, p.seq));
        }
        let pgp = ctx.pgp_key(home, &actor)?;
        let version = next_version(&state, a)?;
        let built = pd_store::tarball::build(&name, &version.to_string(), &files, &limits)?;
        let sig = pgp.sign_detached_armored(&built.bytes)?;
        let package = built.to_package(version, sig.clone(), a.reason.clone());
        let body =
            Body::Package(pd_ledger::Package { checked: checked.clone(), source: source.clone(), ..package });
        // Every check before any write: the rule, then the signature as a verifier will see it.
        precheck(&state, &actor, &key, body.clone())?;
        let cert = state.active_key(&actor).and_then(|k| k.decl.openpgp.as_deref());
        pd_store::openpgp::verify_detached(cert.unwrap_or_default(), &built.bytes, &sig)?;
        backend.put_object(&state.ledger_id(), &actor, &key, &built.bytes)?;
        let appended = backend.append(&actor, &key, |st| {
            if holding(st, Some(&name), &want).is_some() {
                return Err(AlreadyPackaged.into());
            }
            if next_version(st, a)? != version {
                return Err(VersionMoved.into());
            }
            Ok(body.clone())
        });
        match appended {
            Ok((entry, _)) => return Ok(Packaged::New(Box::new((entry, built, pgp.fingerprint())))),
            Err(e) if e.is::<AlreadyPackaged>() || e.is::<VersionMoved>() => continue,
            Err(e) => return Err(e),
        }
    }
}

fn report_package(ctx: &Ctx, entry: &SignedEntry, built: &pd_store::tarball::Built, fpr: &str) -> Result<()> {
    let Body::Package(p) = &entry.entry.body else { unreachable!("built as a package") };
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "version": p.version, "name": p.name, "seq": entry.entry.seq, "entry_id": entry.id,
            "tarball": p.tarball, "files": p.files, "openpgp_fingerprint": fpr, "reused": false,
        }));
    }
    let n = built.files.len();
    output::ok(format!(
        "packaged as {} ({}: {n} file{} of {}; tarball {})",
        p.version,
        p.name,
        if n == 1 { "" } else { "s" },
        output::size(p.files.iter().map(|f| f.size).sum()),
        output::size(p.tarball.size)
    ));
    output::ok(format!("signature valid (OpenPGP {})", pd_store::openpgp::short_fingerprint(fpr)));
    outln!("  sha256  {}", p.tarball.sha256);
    outln!("  blake3  {}", p.tarball.blake3);
    outln!("  entry   #{} {}", entry.entry.seq, entry.id.short());
    output::next(format!("an approver runs `pd ledger approve {} --reason \"…\"`", p.version));
    Ok(())
}

/// Signs and appends `make(state)` as the acting key, on the home's ledger or the server.
pub(crate) fn append_with(
    ctx: &Ctx,
    make: impl FnMut(&State, &str) -> Result<Body>,
) -> Result<(SignedEntry, State)> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let mut make = make;
    backend.append(&actor, &key, |st| make(st, &actor))
}

fn freeze_override(ctx: &Ctx, version: Version, env: String, reason: String) -> Result<()> {
    let (entry, _) = append_with(ctx, |state, _| {
        let package = package_of(state, version)?.package.tarball.blake3;
        let (env, reason) = (env.clone(), reason.clone());
        Ok(Body::FreezeOverride(pd_ledger::FreezeOverride { env, version, package, reason }))
    })?;
    let seq = entry.entry.seq;
    if ctx.json {
        return ctx.emit(&serde_json::json!({ "version": version, "env": env, "seq": seq }));
    }
    output::ok(format!(
        "{version} may be pushed to {env} during a freeze, as far as {} is concerned (#{seq})",
        entry.entry.actor
    ));
    Ok(())
}

fn withdraw(ctx: &Ctx, version: Version, reason: String) -> Result<()> {
    let (entry, state) = append_with(ctx, |state, _| {
        let package = package_of(state, version)?.package.tarball.blake3;
        Ok(Body::Withdraw(pd_ledger::Withdraw { version, package, reason: reason.clone() }))
    })?;
    // Where it is still desired, targets keep what they run until a good version is pushed.
    let desired: Vec<String> = pd_ledger::adoption::overview(&state)
        .iter()
        .filter(|e| e.sets.iter().any(|s| s.adoption.desired.as_ref().is_some_and(|d| d.version == version)))
        .map(|e| e.env.clone())
        .collect();
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "version": version, "seq": entry.entry.seq, "still_desired_in": desired }),
        );
    }
    output::ok(format!("{version} withdrawn by {} at #{}", entry.entry.actor, entry.entry.seq));
    if !desired.is_empty() {
        output::next(format!(
            "{} still desire {version}: deploy a good version there (targets install nothing withdrawn)",
            desired.join(", ")
        ));
    }
    Ok(())
}

fn approve(ctx: &Ctx, version: Version, reason: String) -> Result<()> {
    // What the approver approves, shown before it is recorded; one backend (one sync with a
    // server) for both.
    let (home, mut backend) = Backend::of_home(ctx)?;
    let changes = {
        let state = backend.state()?;
        crate::diff_cmd::against_next_env(&mut backend, &state, version)?
    };
    if !ctx.json {
        outln!("  {}", changes.summary());
    }
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let (entry, state) = backend.append(&actor, &key, |state| {
        let package = package_of(state, version)?.package.tarball.blake3;
        Ok(Body::Approve(Approve { version, package, reason: reason.clone() }))
    })?;
    let pkg = package_of(&state, version)?;
    let (have, need) = (pkg.counted_approvals(), state.approvals_required());
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "version": version, "approver": entry.entry.actor, "seq": entry.entry.seq, "approvals": have, "required": need, "changes": changes }),
        );
    }
    output::ok(format!(
        "{version} approved by {} ({have} of {need} approvals) at #{}",
        entry.entry.actor, entry.entry.seq
    ));
    if have >= need as usize {
        output::next(format!("pd ledger deploy {version} --reason \"…\""));
    }
    Ok(())
}

/// Finds the version `deploy` means: a version, or the newest package holding exactly a
/// file (`None`: no package holds that file yet).
pub fn deploy_version(state: &State, target: &str) -> Result<Option<Version>> {
    let path = std::path::Path::new(target);
    if !path.exists() {
        return match target.parse() {
            Ok(v) => Ok(Some(package_of(state, v)?.package.version)),
            Err(_) => anyhow::bail!(
                "{target:?} is neither a file nor a version such as PD-23.1.0 (no such file here)"
            ),
        };
    }
    let files = pd_store::tarball::collect(&[path.to_path_buf()], &pd_store::Limits::default())?;
    Ok(holding(state, None, &wanted(&files)).map(|p| p.package.version))
}

fn ack(ctx: &Ctx, version: Version, failed: Option<String>) -> Result<()> {
    let (entry, _) = append_with(ctx, |state, actor| {
        let Some(env) = state.keys().get(actor).and_then(|k| k.decl.env.clone()) else {
            refuse!("{actor} is not a target key; act as a target with --as NAME");
        };
        let package = package_of(state, version)?.package.tarball.blake3;
        let outcome = failed.clone().map_or(Outcome::Loaded, Outcome::Failed);
        Ok(Body::Ack(Ack { env, version, package, outcome }))
    })?;
    let Body::Ack(a) = &entry.entry.body else { unreachable!("built as an ack") };
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "target": entry.entry.actor, "env": a.env, "version": a.version, "outcome": a.outcome, "seq": entry.entry.seq }),
        );
    }
    match &a.outcome {
        Outcome::Loaded => output::ok(format!(
            "{} loaded {} in {} (#{})",
            entry.entry.actor, a.version, a.env, entry.entry.seq
        )),
        Outcome::Failed(e) => outln!(
            "✘ {} failed to load {} in {}: {e} (#{})",
            entry.entry.actor,
            a.version,
            a.env,
            entry.entry.seq
        ),
    }
    Ok(())
}

/// The policy set a command on `env` means: the one named, or the only one pushed there.
pub fn slot_set(state: &State, env: &str, set: Option<&str>) -> Result<String> {
    let Some(e) = state.env(env) else {
        refuse!("unknown environment {env:?}; this ledger has: {}", state.envs().join(", "));
    };
    if let Some(set) = set {
        return Ok(set.to_string());
    }
    let sets: Vec<&String> = e.sets().keys().collect();
    match sets.as_slice() {
        [] => refuse!("nothing was ever deployed to {env}; there is nothing to roll back"),
        [one] => Ok(one.to_string()),
        many => refuse!(
            "{env} runs several policy sets ({}): name one with --set",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The version before the current one in a slot's history.
pub fn previous_version(state: &State, env: &str, set: &str) -> Result<Version> {
    let Some(slot) = state.slot(env, set) else {
        refuse!("nothing of {set} was ever deployed to {env}; there is nothing to roll back");
    };
    let Some(current) = slot.desired().map(|d| d.version) else {
        refuse!("nothing was ever deployed to {env}; there is nothing to roll back");
    };
    match pd_ledger::rules::rollback_target(state, env, set) {
        Some(v) => Ok(v),
        None => refuse!("no version before {current} got through {env} (adopted, every wave baked); there is nothing to return to"),
    }
}

fn rollback(ctx: &Ctx, a: RollbackArgs) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let mut from = None;
    let (entry, _) = backend.append(&actor, &key, |state| {
        let set = match a.to {
            Some(v) => package_of(state, v)?.package.name.clone(),
            None => slot_set(state, &a.env, a.set.as_deref())?,
        };
        from = state.desired(&a.env, &set).map(|d| d.version);
        let version = match a.to {
            Some(v) => v,
            None => previous_version(state, &a.env, &set)?,
        };
        let package = package_of(state, version)?.package.tarball.blake3;
        Ok(Body::Rollback(Rollback { env: a.env.clone(), version, package, reason: a.reason.clone() }))
    })?;
    let Body::Rollback(r) = &entry.entry.body else { unreachable!("built as a rollback") };
    if !ctx.json {
        let was = from.map(|v| format!(" (was {v})")).unwrap_or_default();
        output::ok(format!("{} rolled back to {}{was} at #{}", r.env, r.version, entry.entry.seq));
    }
    // Over the network agents converge at once: show them. Locally targets ack by script.
    let waited = backend.is_remote() && !a.no_wait;
    if waited {
        crate::deploy::converge(
            ctx,
            &mut backend,
            &r.env,
            r.version,
            crate::deploy::Until::after(a.timeout),
        )?;
    }
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "env": r.env, "version": r.version, "from": from, "seq": entry.entry.seq, "converged": waited }),
        );
    }
    Ok(())
}

/// One line about an entry.
pub fn summary(body: &Body) -> String {
    match body {
        Body::Genesis(g) => format!(
            "ledger {} · {} · {} approval(s)",
            g.ledger_id.short(),
            g.envs.join(" → "),
            g.approvals_required
        ),
        Body::KeyAdd(k) => {
            let roles: Vec<&str> = k.roles.iter().map(|r| r.as_str()).collect();
            format!(
                "{} ({}){}{} · custody {}",
                k.name,
                roles.join(","),
                k.env.as_ref().map(|e| format!(" in {e}")).unwrap_or_default(),
                if k.sets.is_empty() { String::new() } else { format!(" following {}", k.sets.join(",")) },
                k.custody.as_str()
            )
        }
        Body::KeyRotate(r) => {
            format!(
                "{}: new key (custody {}), old key {} · {}",
                r.name,
                r.custody.as_str(),
                r.old.as_str(),
                r.reason
            )
        }
        Body::KeyRevoke(r) => format!("{} ({}): {}", r.name, r.kind.as_str(), r.reason),
        Body::KeyApprove(a) => format!("approves the key change at #{} ({})", a.seq, a.id.short()),
        Body::Package(p) => {
            let source = p.source.as_ref().map(|s| {
                format!(
                    " · git {}{}",
                    &s.commit[..12.min(s.commit.len())],
                    if s.clean { "" } else { " (dirty)" }
                )
            });
            let checked = if p.checked.parsed { "" } else { " · NOT VALIDATED" };
            format!(
                "{} {} sha256:{}{}{checked} · {}",
                p.version,
                p.name,
                &p.tarball.sha256.to_hex()[..12],
                source.unwrap_or_default(),
                p.reason
            )
        }
        Body::Withdraw(w) => format!("{} WITHDRAWN · {}", w.version, w.reason),
        Body::Approve(a) => format!("{} · {}", a.version, a.reason),
        Body::Push(p) if p.waves.is_empty() => format!("{} → {} · {}", p.version, p.env, p.reason),
        Body::Push(p) => {
            let waves: Vec<String> = p.waves.iter().map(|w| w.to_string()).collect();
            format!("{} → {} in waves {} · {}", p.version, p.env, waves.join(","), p.reason)
        }
        Body::Ack(a) => match &a.outcome {
            Outcome::Loaded => format!("{} loaded in {}", a.version, a.env),
            Outcome::Failed(e) => format!("{} FAILED in {}: {e}", a.version, a.env),
        },
        Body::Rollback(r) => format!("{} ← {} · {}", r.env, r.version, r.reason),
        Body::Retry(r) => format!("failed targets in {} retry {} · {}", r.env, r.version, r.reason),
        Body::EnvSet(e) => {
            format!("{}: {} · {}", e.env, pd_ledger::rollout::describe_policy(&e.policy), e.reason)
        }
        Body::Wave(_) | Body::Gate(_) | Body::Bake(_) | Body::FreezeOverride(_) => {
            pd_ledger::rollout::describe(body).unwrap_or_default()
        }
        Body::Checkpoint(c) => format!("{} entries · root {}", c.size, c.root.short()),
    }
}

fn entry_json(e: &SignedEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": e.entry.seq, "id": e.id, "prev": e.entry.prev, "time_ms": e.entry.time_ms,
        "signed_ms": e.entry.signed_ms,
        "time": output::time(e.entry.time_ms), "actor": e.entry.actor, "kind": e.entry.body.kind(),
        "body": e.entry.body, "sig": e.entry.sig,
    })
}

/// Which entries `pd ledger log` lists.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Only entries of this kind (repeatable): package, approve, push, ack, rollback, …
    #[arg(long, value_name = "KIND")]
    kind: Vec<String>,
    /// Only entries about this environment (pushes, acks, rollbacks, retries, settings, and
    /// the keys enrolled in it).
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// Only entries signed by this key name.
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
    /// Only entries from this time on: RFC 3339 (`2026-12-06T10:00:00Z`) or an age (`2h`).
    #[arg(long, value_name = "TIME", value_parser = since_ms)]
    since: Option<u64>,
    /// Only the newest N of the entries that match.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Checkpoints too (the server writes many; hidden by default).
    #[arg(long)]
    all: bool,
}

/// `--since`: an RFC 3339 time or an age before now, as ms since the epoch.
fn since_ms(text: &str) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(text).map_err(|_| {
                format!("{text:?} is neither a time (2026-12-06T10:00:00Z) nor an age (2h, 30m)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    let since = at.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(since.as_millis() as u64)
}

impl LogArgs {
    fn wants(&self, e: &SignedEntry) -> bool {
        let kind = e.entry.body.kind();
        (self.all || kind != "checkpoint" || self.kind.iter().any(|k| k == "checkpoint"))
            && (self.kind.is_empty() || self.kind.iter().any(|k| k == kind))
            && self.env.as_deref().is_none_or(|env| e.entry.body.env() == Some(env))
            && self.actor.as_deref().is_none_or(|a| e.entry.actor == a)
            && self.since.is_none_or(|t| e.entry.time_ms >= t)
    }
}

fn log(ctx: &Ctx, a: LogArgs) -> Result<()> {
    if let Some(k) = a.kind.iter().find(|k| !Body::KINDS.contains(&k.as_str())) {
        anyhow::bail!("--kind {k:?} is not an entry kind; kinds: {}", Body::KINDS.join(", "));
    }
    let mut entries = Backend::open(ctx, ctx.home().ok())?.entries(0)?;
    entries.retain(|e| a.wants(e));
    if let Some(n) = a.limit {
        entries.drain(..entries.len().saturating_sub(n));
    }
    if ctx.json {
        return ctx.emit(&entries.iter().map(entry_json).collect::<Vec<_>>());
    }
    for e in entries {
        outln!(
            "#{:<5} {} {:<12} {:<10} {}",
            e.entry.seq,
            output::time(e.entry.time_ms),
            e.entry.actor,
            e.entry.body.kind(),
            summary(&e.entry.body)
        );
    }
    Ok(())
}

fn show(ctx: &Ctx, what: &str) -> Result<()> {
    let mut backend = Backend::open(ctx, ctx.home().ok())?;
    let state = &backend.state()?;
    let seq = match what.parse::<u64>() {
        Ok(seq) => seq,
        Err(_) => match what.parse::<Version>() {
            Ok(v) => package_of(state, v)?.seq,
            Err(_) => {
                anyhow::bail!("{what:?} is neither a seq number nor a version such as PD-23.1.0")
            }
        },
    };
    let Some(entry) = backend.entries(seq)?.into_iter().next() else {
        refuse!("no entry #{seq}: the ledger has {} entries", state.len());
    };
    let approvals = match &entry.entry.body {
        Body::Package(p) => package_of(state, p.version)?.approvals.clone(),
        _ => Vec::new(),
    };
    if ctx.json {
        let mut v = entry_json(&entry);
        v["approvals"] = serde_json::to_value(&approvals)?;
        return ctx.emit(&v);
    }
    outln!("entry #{} {}", entry.entry.seq, entry.entry.body.kind());
    outln!(
        "  id      {}\n  prev    {}\n  time    {}\n  actor   {}",
        entry.id,
        entry.entry.prev,
        output::time(entry.entry.time_ms),
        entry.entry.actor
    );
    outln!("  summary {}", summary(&entry.entry.body));
    if state.key_at(&entry.entry.actor, seq).is_some_and(|k| *k.custody == pd_ledger::Custody::Admin) {
        outln!("  custody {}'s key was created in admin's custody (not independent)", entry.entry.actor);
    }
    if let Body::Package(p) = &entry.entry.body {
        outln!(
            "  tarball sha256 {}\n          blake3 {}\n          size   {}",
            p.tarball.sha256,
            p.tarball.blake3,
            p.tarball.size
        );
        for f in &p.files {
            outln!("  file    {} ({} B) sha256 {}", f.path, f.size, f.sha256);
        }
        for a in &approvals {
            let mut note = String::new();
            if !a.independent {
                note.push_str(" (key created in admin's custody: not independent)");
            }
            if let Some(at) = a.void {
                note.push_str(&format!(" (void: key compromised, #{at})"));
            }
            outln!("  approved by {} at #{}{note}: {}", a.approver, a.seq, a.reason);
        }
        outln!("  reason  {}\n{}", p.reason, p.openpgp_sig.trim_end());
    }
    outln!("  sig     {}", entry.entry.sig);
    Ok(())
}

fn export(ctx: &Ctx, file: &std::path::Path, with_artifacts: bool) -> Result<()> {
    let home = ctx.home()?;
    let mut backend = Backend::open(ctx, Some(home.clone()))?;
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let entries: Vec<_> =
        backend.entries(0)?.into_iter().map(|e| serde_bytes::ByteBuf::from(e.bytes)).collect();
    // The state of exactly these entries (a server may have grown meanwhile).
    let state =
        &pd_ledger::replay(entries.iter().map(|b| b.as_slice()), pd_ledger::Signatures::TrustLocalStore)?;
    may_sign_head(state, &actor)?;
    let (artifacts, contents) = if with_artifacts {
        (artifacts(&mut backend, state)?, Contents::WithArtifacts)
    } else {
        (Vec::new(), Contents::EntriesOnly)
    };
    let head = Head::sign(state, &actor, home::now_ms().max(state.last_time_ms()), contents, &key);
    let export = Export { format: FORMAT.to_string(), entries, artifacts, head };
    let bytes = export.encode();
    home::write_file_atomic(file, &bytes)?;
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "file": file, "entries": state.len(), "artifacts": export.artifacts.len(), "bytes": bytes.len(), "head": state.head() }),
        );
    }
    output::ok(format!(
        "exported {} entries and {} artifacts ({}) to {}",
        state.len(),
        export.artifacts.len(),
        output::size(bytes.len() as u64),
        file.display()
    ));
    outln!("  head #{} {} signed by {actor}", state.len().saturating_sub(1), state.head());
    output::next(format!("pd-verify {}", file.display()));
    Ok(())
}

fn artifacts(backend: &mut Backend, state: &State) -> Result<Vec<ExportArtifact>> {
    let mut out: Vec<ExportArtifact> = Vec::with_capacity(state.packages().len());
    for p in state.packages() {
        let hash = p.package.tarball.blake3;
        let bytes = backend
            .get_object(&hash, p.package.tarball.size)
            .with_context(|| format!("artifact of {}", p.package.version))?;
        out.push(ExportArtifact { blake3: hash, bytes: serde_bytes::ByteBuf::from(bytes) });
    }
    out.sort_by_key(|a| a.blake3);
    Ok(out)
}

/// Refuses, before anything is written, a signer whose head an auditor would refuse.
pub fn may_sign_head(state: &pd_ledger::State, actor: &str) -> Result<()> {
    if Head::signer(state, actor).is_err() {
        refuse!(
            "{actor:?} may not sign an export's head: only an active log or admin key may; run as one with --as NAME"
        );
    }
    Ok(())
}
