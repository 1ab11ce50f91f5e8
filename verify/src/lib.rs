//! Offline verification of a pd ledger export: encoding, chain, every signature, every rule,
//! the signed head, and artifacts with their OpenPGP signatures where present.
//!
//! Architecture Invariant: no network, no storage engine, no async runtime. Validity is
//! decided by `pd_ledger::check_rules` (the appender's own rule) plus batch Ed25519.
#![warn(missing_docs)]

use std::path::Path;

use pd_ledger::export::{Contents, Export, ExportError, Head};
use pd_ledger::note::SignedCheckpoint;
use pd_ledger::replay::{replay_onto, ReplayError, Signatures};
use pd_ledger::state::PackageState;
use pd_ledger::{Hash, State};

/// What a passing verification established.
#[derive(Debug)]
pub struct Report {
    /// The folded state.
    pub state: State,
    /// The signed head.
    pub head: Head,
    /// Artifacts checked (0 when the export carries none).
    pub artifacts_checked: usize,
    /// The earlier checkpoint this export was shown to extend, and its signer.
    pub extends: Option<(u64, Hash, String)>,
}

/// Why an export fails verification. The first bad thing is named.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any valid one; it was not read.
    #[error("{path} is {}, over the limit of {}", pd_ledger::limits::human_bytes(*len), pd_ledger::limits::human_bytes(*limit))]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A proof file does not hold.
    #[error(transparent)]
    Proof(#[from] pd_ledger::proof::ProofError),
    /// The file is not a well-formed export.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// An entry is bad.
    #[error(transparent)]
    Entry(#[from] ReplayError),
    /// The head does not match or does not verify.
    #[error("signed head: {0}")]
    Head(String),
    /// The export does not extend the checkpoint it was checked against.
    #[error("checkpoint: {0}")]
    Since(String),
    /// The export does not reach the head the auditor expected.
    #[error("expected head: {0}")]
    ExpectHead(String),
    /// The export carries no artifacts and the caller did not accept that.
    #[error("the export carries entries only (its signed head says so), so no tarball or OpenPGP signature was checked: pass --no-artifacts to accept that, or export with --with-artifacts")]
    NoArtifacts,
    /// An artifact is bad.
    #[error("artifact {hash}: {problem}")]
    Artifact {
        /// Its BLAKE3.
        hash: Hash,
        /// What is wrong.
        problem: String,
    },
}

impl Report {
    /// Refuses an entries-only export: an auditor accepts one only by saying so
    /// (`pd-verify --no-artifacts`), because without artifacts no tarball hash or OpenPGP
    /// signature was checked.
    pub fn require_artifacts(&self) -> Result<(), VerifyError> {
        match self.head.contents {
            Contents::WithArtifacts => Ok(()),
            Contents::EntriesOnly => Err(VerifyError::NoArtifacts),
        }
    }
}

/// Checks that entry `seq` of an export (already verified) has id `id`: the export then holds
/// everything up to a head the auditor learned elsewhere, so nothing before it was cut.
pub fn check_expected_head(export: &Export, seq: u64, id: &Hash) -> Result<(), VerifyError> {
    let fail = |m: String| Err(VerifyError::ExpectHead(m));
    let Some(bytes) = usize::try_from(seq).ok().and_then(|i| export.entries.get(i)) else {
        return fail(format!(
            "the export holds {} entries and ends before #{seq}: entries were cut off, or the export is older than that head",
            export.entries.len()
        ));
    };
    let got = Hash::of(bytes);
    if &got != id {
        return fail(format!(
            "entry #{seq} has id {got}, not {id}: this is another history (a fork or a rewrite)"
        ));
    }
    Ok(())
}

/// Parses `SEQ:ID` (ID in full hex), as `pd state` and `pd ledger log` print a head.
pub fn parse_head(s: &str) -> Result<(u64, Hash), String> {
    let (seq, id) = s.split_once(':').ok_or_else(|| format!("{s:?} is not SEQ:ID"))?;
    let seq = seq.trim_start_matches('#').parse().map_err(|_| format!("{seq:?} is not an entry number"))?;
    let id =
        Hash::from_hex(id).map_err(|e| format!("{e} (give the full id, as `pd state --json` prints it)"))?;
    Ok((seq, id))
}

impl VerifyError {
    /// 2 if the file could not be read at all, 1 if a check failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Read { .. } => 2,
            _ => 1,
        }
    }
}

/// Reads a file of at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, VerifyError> {
    let read_err = |source| VerifyError::Read { path: path.display().to_string(), source };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > limit {
        return Err(VerifyError::TooLarge { path: path.display().to_string(), len, limit });
    }
    std::fs::read(path).map_err(read_err)
}

/// Verifies an export file, and when `since` is given, that it extends that checkpoint.
pub fn verify_file(path: &Path, since: Option<&SignedCheckpoint>) -> Result<Report, VerifyError> {
    let bytes = read_file(path, pd_ledger::limits::MAX_EXPORT_BYTES)?;
    verify_bytes(&bytes, since)
}

/// Verifies export bytes, and when `since` is given, that they extend that checkpoint: its
/// signer is a key of this ledger and the first `size` entries have its root, so a history
/// rewritten after the checkpoint was taken fails even if every entry is validly signed.
pub fn verify_bytes(bytes: &[u8], since: Option<&SignedCheckpoint>) -> Result<Report, VerifyError> {
    let export = Export::decode(bytes)?;
    let mut report = verify_entries(&export, since)?;
    report.artifacts_checked = check_artifacts(&report.state, &export)?;
    Ok(report)
}

/// Everything [`verify_bytes`] checks except the artifacts the export carries: for a caller
/// that reads and checks each package's artifact itself with [`check_package_artifact`] (an
/// S3 mirror keeps them beside the entries, not inside an export).
pub fn verify_entries(export: &Export, since: Option<&SignedCheckpoint>) -> Result<Report, VerifyError> {
    let entries = &export.entries;
    let mut state = State::default();
    let cut = since.map_or(0, |s| (s.checkpoint.size as usize).min(entries.len()));
    replay_onto(&mut state, entries[..cut].iter().map(|e| e.as_slice()), Signatures::Verify)?;
    let prefix_root = Hash(state.tree().root());
    replay_onto(&mut state, entries[cut..].iter().map(|e| e.as_slice()), Signatures::Verify)?;
    check_head(&state, &export.head)?;
    let extends = since.map(|s| check_since(&state, s, cut as u64, prefix_root)).transpose()?;
    Ok(Report { state, head: export.head.clone(), artifacts_checked: 0, extends })
}

fn check_since(
    state: &State,
    since: &SignedCheckpoint,
    have: u64,
    root: Hash,
) -> Result<(u64, Hash, String), VerifyError> {
    let c = &since.checkpoint;
    let fail = |m: String| Err(VerifyError::Since(m));
    let origin = pd_ledger::note::origin(&state.ledger_id());
    if c.origin != origin {
        return fail(format!("it is of {}, this export is of {origin}", c.origin));
    }
    let Some((signer, _)) = state.note_signer(since) else {
        return fail("no key of this ledger signed it: it was not issued by this ledger".into());
    };
    if have < c.size {
        return fail(format!(
            "it covers {} entries but the export holds only {have}: the ledger was truncated or forked",
            c.size
        ));
    }
    if root != c.root {
        return fail(format!(
            "the export's first {} entries have root {root}, the checkpoint signed by {signer} says {}: \
             history was rewritten after the checkpoint was taken",
            c.size, c.root
        ));
    }
    Ok((c.size, c.root, signer))
}

fn check_head(state: &State, head: &Head) -> Result<(), VerifyError> {
    head.check(state).map_err(|e| VerifyError::Head(e.to_string()))
}

/// Checks every artifact an export carries against the verified state; returns how many.
pub fn check_artifacts(state: &State, export: &Export) -> Result<usize, VerifyError> {
    if export.head.contents == Contents::EntriesOnly {
        if let Some(a) = export.artifacts.first() {
            return Err(VerifyError::Artifact {
                hash: a.blake3,
                problem: "the signed head says the export carries entries only, yet it holds artifacts"
                    .into(),
            });
        }
        return Ok(0);
    }
    if !export.artifacts.windows(2).all(|w| w[0].blake3 < w[1].blake3) {
        return Err(VerifyError::Artifact {
            hash: export.artifacts[0].blake3,
            problem: "artifacts are not sorted and unique".into(),
        });
    }
    for a in &export.artifacts {
        let problem = |p: String| VerifyError::Artifact { hash: a.blake3, problem: p };
        if Hash::of(&a.bytes) != a.blake3 {
            return Err(problem("its bytes do not hash to its BLAKE3".into()));
        }
        let pkg =
            state.package_by_hash(&a.blake3).ok_or_else(|| problem("no package entry names it".into()))?;
        check_package_artifact(state, pkg, &a.bytes).map_err(problem)?;
    }
    if let Some(missing) = state
        .packages()
        .iter()
        .find(|p| export.artifacts.binary_search_by(|a| a.blake3.cmp(&p.package.tarball.blake3)).is_err())
    {
        return Err(VerifyError::Artifact {
            hash: missing.package.tarball.blake3,
            problem: format!(
                "the tarball of {} is missing, but the signed head says the export carries every artifact: artifacts were stripped",
                missing.package.version
            ),
        });
    }
    Ok(export.artifacts.len())
}

/// Checks a tarball against its package entry: size, SHA-256, contents, OpenPGP signature.
pub fn check_package_artifact(state: &State, pkg: &PackageState, bytes: &[u8]) -> Result<(), String> {
    let p = &pkg.package;
    let digest = pd_store::ArtifactDigest::of(bytes);
    if digest.blake3 != p.tarball.blake3.0
        || digest.sha256 != p.tarball.sha256.0
        || digest.size != p.tarball.size
    {
        return Err(format!("{}: size or hashes differ from the package entry", p.version));
    }
    let contents = pd_store::tarball::read(bytes, &pd_store::Limits::default())
        .map_err(|e| format!("{}: {e}", p.version))?;
    let m = &contents.manifest;
    let files_match = m.files.len() == p.files.len()
        && m.files.iter().zip(&p.files).all(|(a, b)| {
            a.path == b.path
                && a.size == b.size
                && a.sha256 == b.sha256.to_hex()
                && a.blake3 == b.blake3.to_hex()
        });
    if m.name != p.name || m.version != p.version.to_string() || !files_match {
        return Err(format!("{}: the tarball's manifest does not match the package entry", p.version));
    }
    let cert = state.package_cert(pkg);
    let cert =
        cert.ok_or_else(|| format!("{}: author {} has no OpenPGP certificate", p.version, pkg.author))?;
    pd_store::openpgp::verify_detached(cert, bytes, &p.openpgp_sig)
        .map_err(|e| format!("{}: OpenPGP signature: {e}", p.version))
}

/// Prints a passing report for humans.
pub fn print_report(r: &Report) {
    let s = &r.state;
    println!(
        "✔ ledger {} · {} entries: encoding, chain, Ed25519 signatures and every rule hold",
        s.ledger_id().short(),
        s.len()
    );
    let role = s
        .keys()
        .get(&r.head.actor)
        .map(|k| k.decl.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","));
    println!(
        "✔ signed head #{} {} by {} ({}) at {} matches",
        s.len().saturating_sub(1),
        s.head().short(),
        r.head.actor,
        role.unwrap_or_default(),
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.head.time_ms)
        )
    );
    if let Some((size, root, signer)) = &r.extends {
        println!("✔ extends the checkpoint of {size} entries (root {}) signed by {signer}", root.short());
    }
    for d in s.not_independent() {
        println!("! {d}");
    }
    if r.artifacts_checked > 0 {
        println!(
            "✔ {} artifacts: BLAKE3, SHA-256, contents and OpenPGP signatures hold",
            r.artifacts_checked
        );
    } else {
        println!(
            "- entries only, accepted with --no-artifacts: tarball hashes and OpenPGP signatures not checked"
        );
    }
    for p in s.packages() {
        let pkg = &p.package;
        let source = match &pkg.source {
            Some(src) => {
                format!("git {}{}", src.commit, if src.clean { "" } else { " (uncommitted changes)" })
            }
            None => "no git source".into(),
        };
        let checked = match (&pkg.checked.parsed, &pkg.checked.schema, &pkg.checked.command) {
            (false, ..) => "NOT VALIDATED".to_string(),
            (true, schema, cmd) => {
                let mut how = vec!["parsed".to_string()];
                how.extend(schema.map(|h| format!("schema {}", h.short())));
                how.extend(cmd.as_ref().map(|c| format!("validator `{c}`")));
                how.join(", ")
            }
        };
        let withdrawn = p.withdrawn.as_ref().map(|w| format!(" · WITHDRAWN at #{}: {}", w.seq, w.reason));
        println!("  {} {} · {source} · {checked}{}", pkg.version, pkg.name, withdrawn.unwrap_or_default());
    }
    for env in pd_ledger::adoption::overview(s) {
        if env.sets.is_empty() {
            println!("  {}: nothing deployed", env.env);
        }
        for slot in &env.sets {
            let a = &slot.adoption;
            let desired = a.desired.as_ref().map_or("nothing".to_string(), |d| d.version.to_string());
            let mark = if slot.adopted { "adopted" } else { "not adopted" };
            println!(
                "  {}/{}: {desired} · {}/{} targets loaded (fleet minimum {}) · {mark}",
                env.env,
                slot.set,
                a.loaded(),
                a.targets.len(),
                a.min_targets
            );
        }
    }
    if !s.timeline().is_empty() {
        println!("rollout timeline (each step a signed entry the rule checked):");
        for t in s.timeline() {
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.time_ms),
            );
            println!("  #{} {at} {}: {}", t.seq, t.actor, t.text);
        }
    }
}

/// The report as JSON.
pub fn report_json(r: &Report) -> serde_json::Value {
    let packages: Vec<_> = r
        .state
        .packages()
        .iter()
        .map(|p| serde_json::json!({ "version": p.package.version, "set": p.package.name, "seq": p.seq, "author": p.author, "blake3": p.package.tarball.blake3, "sha256": p.package.tarball.sha256, "source": p.package.source, "checked": p.package.checked, "withdrawn": p.withdrawn, "approvals": p.approvals.iter().map(|a| serde_json::json!({ "approver": a.approver, "seq": a.seq, "independent": a.independent, "void": a.void })).collect::<Vec<_>>() }))
        .collect();
    serde_json::json!({
        "ok": true, "ledger_id": r.state.ledger_id(), "entries": r.state.len(), "head": r.state.head(),
        "head_signed_by": r.head.actor, "head_signed_at_ms": r.head.time_ms, "contents": r.head.contents, "artifacts_checked": r.artifacts_checked,
        "extends": r.extends.as_ref().map(|(size, root, signer)| serde_json::json!({ "size": size, "root": root, "signer": signer })),
        "envs": pd_ledger::adoption::overview(&r.state), "packages": packages, "not_independent": r.state.not_independent(),
        "timeline": r.state.timeline(),
    })
}
