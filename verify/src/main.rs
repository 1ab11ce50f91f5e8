//! `pd-verify EXPORT`: replays a pd ledger export offline. Exit 0 only if every check holds.
//! `pd-verify --since CHECKPOINT EXPORT` also checks the export extends a kept checkpoint;
//! `pd-verify --proof FILE` checks an inclusion or consistency proof.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use pd_ledger::note::{self, SignedCheckpoint};
use pd_ledger::proof::Proof;
use pd_verify::VerifyError;

/// Verify a pd ledger export offline: encoding, hash chain, every Ed25519 signature, every
/// authorization rule, the signed head (so truncation is caught) and, when the export carries
/// artifacts, their hashes, contents and OpenPGP signatures. Prints the derived state.
///
/// With --since, also proves the export extends a checkpoint you kept from earlier, which
/// catches a rewritten history even when every entry in it is validly signed. With --proof,
/// checks an inclusion or consistency proof from `pd ledger prove` / `pd ledger consistency`
/// against the checkpoints it carries, without any export.
#[derive(Parser)]
#[command(
    name = "pd-verify",
    version,
    about,
    after_help = "Examples:\n  pd-verify ledger.pdx\n  pd-verify --expect-head 41:3f9a…(64 hex digits) ledger.pdx\n  pd-verify --since checkpoint-1200.note ledger.pdx\n  pd-verify --proof PD-23.1.0.proof --key 'admin+1a2b3c4d+AX…'\n\nExit codes:\n  0  every check holds\n  1  a check failed (the first bad entry is named)\n  2  a file cannot be read or the arguments are wrong"
)]
struct Args {
    /// The export file written by `pd ledger export`.
    #[arg(required_unless_present = "proof")]
    export: Option<PathBuf>,
    /// A checkpoint note kept from earlier: the export must extend it.
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "proof")]
    since: Option<PathBuf>,
    /// Check this proof file instead of an export.
    #[arg(long, value_name = "FILE")]
    proof: Option<PathBuf>,
    /// With --proof: trust only this checkpoint signer (a verifier key `name+id+key`, as
    /// `pd key list --json` prints it); repeatable. Without it the keys in the file are used.
    #[arg(long = "key", value_name = "VKEY", requires = "proof")]
    keys: Vec<String>,
    /// The export must hold this head (entry SEQ with id ID, as `pd state --json` prints
    /// them), learned from somewhere the exporter does not control: proves nothing was cut.
    #[arg(long, value_name = "SEQ:ID", value_parser = pd_verify::parse_head, conflicts_with = "proof")]
    expect_head: Option<(u64, pd_ledger::Hash)>,
    /// Accept an export that carries entries only (its signed head says so): the tarballs'
    /// hashes, contents and OpenPGP signatures are then not checked.
    #[arg(long, conflicts_with = "proof")]
    no_artifacts: bool,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.proof {
        Some(path) => check_proof(path, &args),
        None => check_export(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if args.json {
                let (seq, message) = match &e {
                    VerifyError::Entry(r) => (Some(r.seq), r.kind.to_string()),
                    other => (None, other.to_string()),
                };
                // pd's error form (cli/schemas/error.json), with the entry it stopped at.
                let kind = if e.exit_code() == 1 { "verification" } else { "usage" };
                let error = serde_json::json!({ "error": {
                    "kind": kind, "message": message, "exit_code": e.exit_code(), "seq": seq,
                } });
                println!("{}", serde_json::to_string_pretty(&error).unwrap_or_default());
                return ExitCode::from(e.exit_code());
            }
            eprintln!("✘ {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn read_text(path: &Path) -> Result<String, VerifyError> {
    let bytes = pd_verify::read_file(path, 1 << 20)?;
    String::from_utf8(bytes).map_err(|_| VerifyError::Read {
        path: path.display().to_string(),
        source: std::io::Error::other("not UTF-8 text"),
    })
}

fn check_export(args: &Args) -> Result<(), VerifyError> {
    let export = args.export.as_deref().expect("clap requires EXPORT without --proof");
    let since = match &args.since {
        Some(path) => Some(
            SignedCheckpoint::parse(&read_text(path)?)
                .map_err(|e| VerifyError::Since(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let bytes = pd_verify::read_file(export, pd_ledger::limits::MAX_EXPORT_BYTES)?;
    let decoded = pd_ledger::Export::decode(&bytes)?;
    let mut report = pd_verify::verify_entries(&decoded, since.as_ref())?;
    if let Some((seq, id)) = &args.expect_head {
        pd_verify::check_expected_head(&decoded, *seq, id)?;
    }
    report.artifacts_checked = pd_verify::check_artifacts(&report.state, &decoded)?;
    if !args.no_artifacts {
        report.require_artifacts()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pd_verify::report_json(&report)).unwrap_or_default());
    } else {
        pd_verify::print_report(&report);
    }
    Ok(())
}

fn check_proof(path: &Path, args: &Args) -> Result<(), VerifyError> {
    let proof: Proof = serde_json::from_str(&read_text(path)?).map_err(|e| {
        VerifyError::Proof(pd_ledger::proof::ProofError::Malformed(format!("{}: {e}", path.display())))
    })?;
    let trusted = args
        .keys
        .iter()
        .map(|k| note::parse_vkey(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VerifyError::Proof(e.into()))?;
    let proven = proof.verify(&trusted)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ok": true, "proof": proven, "pinned_keys": !trusted.is_empty() })
        );
        return Ok(());
    }
    match (&proven.entry, &proven.extends) {
        (Some((seq, kind, id)), _) => println!(
            "✔ entry #{seq} ({kind}, id {}) is in the ledger of {} entries (root {})",
            id.short(),
            proven.size,
            proven.root.short()
        ),
        (_, Some((old, old_root))) => println!(
            "✔ the ledger of {} entries (root {}) extends the one of {old} entries (root {})",
            proven.size,
            proven.root.short(),
            old_root.short()
        ),
        _ => unreachable!("a proof proves an entry or an extension"),
    }
    println!("✔ checkpoint of {} signed by {}", proven.origin, proven.signer);
    if trusted.is_empty() {
        println!(
            "- signer keys taken from the proof file; pin one with --key NAME+ID+KEY from a source you trust"
        );
    }
    Ok(())
}
