//! `pd-verify EXPORT`: replays a pd ledger export offline. Exit 0 only if every check holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Verify a pd ledger export offline: encoding, hash chain, every Ed25519 signature, every
/// authorization rule, the signed head (so truncation is caught) and, when the export carries
/// artifacts, their hashes, contents and OpenPGP signatures. Prints the derived state.
#[derive(Parser)]
#[command(
    name = "pd-verify",
    version,
    about,
    after_help = "Exit codes:\n  0  every check holds\n  1  a check failed (the first bad entry is named)\n  2  the file cannot be read or the arguments are wrong"
)]
struct Args {
    /// The export file written by `pd ledger export`.
    export: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match pd_verify::verify_file(&args.export) {
        Ok(report) => {
            if args.json {
                println!("{}", pd_verify::report_json(&report));
            } else {
                pd_verify::print_report(&report);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                let (seq, message) = match &e {
                    pd_verify::VerifyError::Entry(r) => (Some(r.seq), r.kind.to_string()),
                    other => (None, other.to_string()),
                };
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": { "seq": seq, "message": message } })
                );
            }
            eprintln!("✘ {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
