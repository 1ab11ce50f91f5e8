//! `pd ledger mirror | restore | verify`: the ledger and its artifacts in S3 (the layout is
//! in `pd_server::mirror`). Verification runs `pd-verify`'s own checks, here in `pd` so that
//! `pd-verify` stays free of network crates.

use anyhow::{Context, Result};
use clap::Args;
use pd_ledger::export::{Contents, Head};
use pd_ledger::{Hash, Role, SignedEntry, State};
use pd_server::s3::S3Store;
use pd_store::{BlobStore, FsStore};
use pd_verify::Report;

use crate::backend::Backend;
use crate::home::{self, Config, Home};
use crate::{output, CheckFailed, Ctx};

/// The S3 location of a mirror.
#[derive(Args)]
pub struct MirrorArgs {
    /// Where: `s3://bucket/prefix` (endpoint, region and credentials from AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile).
    #[arg(value_name = "s3://BUCKET/PREFIX")]
    url: String,
}

/// Entries appended per batch when restoring.
const RESTORE_BATCH: usize = 10_000;

/// `pd ledger mirror`: uploads missing artifacts, then new segments, then a signed head.
pub fn mirror(ctx: &Ctx, a: MirrorArgs) -> Result<()> {
    let home = ctx.home()?;
    let mut backend = Backend::open(ctx, Some(home.clone()))?;
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let s3 = S3Store::open(&a.url)?;
    let entries = backend.entries(0)?;
    // The state of exactly these entries (a server may have grown meanwhile).
    let state = pd_ledger::replay(
        entries.iter().map(|e| e.bytes.as_slice()),
        pd_ledger::Signatures::TrustLocalStore,
    )?;
    crate::ledger_cmd::may_sign_head(&state, &actor)?;
    let head =
        Head::sign(&state, &actor, home::now_ms().max(state.last_time_ms()), Contents::WithArtifacts, &key);
    let mut read = |from: u64, end: u64| {
        Ok(entries[from as usize..end as usize].iter().map(|e| e.bytes.clone()).collect())
    };
    let sizes: std::collections::HashMap<Hash, u64> =
        state.packages().iter().map(|p| (p.package.tarball.blake3, p.package.tarball.size)).collect();
    let tarball_limit = pd_store::Limits::default().max_tarball_bytes;
    let mut fetch = |h: &Hash| backend.get_object(h, sizes.get(h).copied().unwrap_or(tarball_limit));
    let pushed = pd_server::mirror::push(&s3, &state, &head, &mut read, &mut fetch)?;
    if ctx.json {
        return ctx.emit(
            &serde_json::json!({ "url": s3.url().to_string(), "head": state.head(), "pushed": pushed }),
        );
    }
    if pushed.before == pushed.entries {
        output::ok(format!(
            "{} already holds all {} entries; its head is re-signed",
            s3.url(),
            pushed.entries
        ));
    } else {
        output::ok(format!(
            "mirrored entries {}..{} to {} ({} new segment{}, {} artifact{} uploaded)",
            pushed.before,
            pushed.entries,
            s3.url(),
            pushed.segments,
            if pushed.segments == 1 { "" } else { "s" },
            pushed.artifacts,
            if pushed.artifacts == 1 { "" } else { "s" },
        ));
    }
    outln!("  head #{} {} signed by {actor}", state.len().saturating_sub(1), state.head());
    output::next(format!("pd ledger verify {}", s3.url()));
    Ok(())
}

/// A mirror read back and checked.
struct Verified {
    report: Report,
    /// The entries the report covers, exact bytes.
    entries: Vec<serde_bytes::ByteBuf>,
    /// Every package's artifact, checked.
    artifacts: Vec<Vec<u8>>,
}

/// Reads the mirror at `s3` and checks it like `pd-verify` checks an export with artifacts.
fn read_verified(ctx: &Ctx, s3: &S3Store) -> Result<Verified> {
    let refused = |e: String| {
        anyhow::Error::new(CheckFailed(format!("the mirror at {} does not verify: {e}", s3.url())))
    };
    let bar = progress(ctx);
    let export = pd_server::mirror::pull(s3, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    // A store that cannot be reached is an error of the environment; anything read that
    // does not hold together is a failed check.
    let export =
        export.map_err(|e| if e.is::<pd_store::StoreError>() { e } else { refused(format!("{e:#}")) })?;
    // The head must say the mirror carries every artifact; each is read and checked below.
    let mut report = pd_verify::verify_entries(&export, None).map_err(|e| refused(e.to_string()))?;
    report.require_artifacts().map_err(|e| refused(e.to_string()))?;
    let mut artifacts = Vec::with_capacity(report.state.packages().len());
    for p in report.state.packages() {
        let hash = p.package.tarball.blake3;
        let bytes = match s3.get(&hash.0) {
            Ok(b) => b,
            Err(e @ (pd_store::StoreError::Corrupt { .. } | pd_store::StoreError::NotFound { .. })) => {
                return Err(refused(format!("the artifact of {}: {e}", p.package.version)))
            }
            Err(e) => return Err(e.into()),
        };
        pd_verify::check_package_artifact(&report.state, p, &bytes)
            .map_err(|e| refused(format!("the artifact of {}: {e}", p.package.version)))?;
        artifacts.push(bytes);
    }
    report.artifacts_checked = artifacts.len();
    Ok(Verified { report, entries: export.entries, artifacts })
}

fn progress(ctx: &Ctx) -> indicatif::ProgressBar {
    if ctx.json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("reading the mirror {bar:30} {pos}/{len} entries")
    {
        bar.set_style(style);
    }
    bar
}

/// `pd ledger verify s3://…`: verifies a mirror in place.
pub fn verify(ctx: &Ctx, a: MirrorArgs) -> Result<()> {
    let s3 = S3Store::open(&a.url)?;
    let report = read_verified(ctx, &s3)?.report;
    if ctx.json {
        return ctx.emit(&pd_verify::report_json(&report));
    }
    outln!("mirror {}", s3.url());
    pd_verify::print_report(&report);
    Ok(())
}

/// `pd ledger restore s3://…`: a new home (at `--home`) from a verified mirror, with its
/// artifacts in `objects/`. Secret keys are never mirrored: the new home has none.
pub fn restore(ctx: &Ctx, a: MirrorArgs) -> Result<()> {
    let s3 = S3Store::open(&a.url)?;
    let Verified { report, entries, artifacts } = read_verified(ctx, &s3)?;
    let actor = admin_of(&report.state);
    home::create_new(&ctx.home_dir, |dir| {
        let config = Config {
            actor: actor.clone(),
            server: None,
            store: None,
            auto_rollback: false,
            policy: Default::default(),
        };
        let home = Home::create(dir, config)?;
        let store = FsStore::open(&home.objects_dir())?;
        for bytes in &artifacts {
            store.put(bytes)?;
        }
        let mut ledger = home.ledger()?;
        // The exact bytes just verified; appending checks every rule again.
        let entries: Vec<SignedEntry> = entries
            .iter()
            .map(|b| SignedEntry::decode(b))
            .collect::<Result<_, _>>()
            .context("decoding mirrored entries")?;
        for batch in entries.chunks(RESTORE_BATCH) {
            ledger.append_batch(batch)?;
        }
        anyhow::ensure!(
            ledger.head() == report.state.head(),
            "the restored ledger's head differs from the verified one"
        );
        Ok(())
    })?;
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "home": ctx.home_dir, "url": s3.url().to_string(), "entries": report.state.len(),
            "head": report.state.head(), "artifacts": artifacts.len(), "actor": actor,
        }));
    }
    output::ok(format!(
        "restored {} entries and {} artifacts from {} into {} (verified like pd-verify)",
        report.state.len(),
        artifacts.len(),
        s3.url(),
        ctx.home_dir.display()
    ));
    outln!("  head #{} {}", report.state.len().saturating_sub(1), report.state.head());
    outln!(
        "  secret keys are never mirrored: put {actor}'s key files into {}/keys/ to act",
        ctx.home_dir.display()
    );
    output::next(format!("pd --home {} state", ctx.home_dir.display()));
    Ok(())
}

/// The first active admin key, to be the restored home's default actor.
fn admin_of(state: &State) -> String {
    let mut admins: Vec<&String> = state
        .keys()
        .iter()
        .filter(|(n, k)| k.decl.roles.contains(&Role::Admin) && state.active_key(n).is_some())
        .map(|(n, _)| n)
        .collect();
    admins.sort();
    admins.first().map_or_else(|| "admin".to_string(), |n| n.to_string())
}
