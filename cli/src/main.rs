//! `pd`: package, sign, approve, deploy and roll back governance policies, with every step
//! recorded in a signed, hash-chained ledger. The commands live in the `pd_cli` library.

use std::io::Write;
use std::process::ExitCode;

/// mimalloc: `pd serve` and `pd agent` allocate from many threads at once (see the
/// workspace's Cargo.toml and BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let json = pd_cli::wants_json(&args);
    match pd_cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(clap_err) = err.downcast_ref::<clap::Error>().filter(|c| !json || !c.use_stderr()) {
                // --help and --version are not errors; clap prints and picks the code.
                let _ = clap_err.print();
                return ExitCode::from(if clap_err.use_stderr() { 2 } else { 0 });
            }
            if json {
                let error = pd_cli::error_json(&err);
                let text = match pd_cli::output::json_lines() {
                    true => serde_json::to_string(&error),
                    false => serde_json::to_string_pretty(&error),
                };
                let text = text.unwrap_or_default();
                // A reader that went away takes nothing more; the exit code still tells.
                let _ = writeln!(std::io::stdout(), "{text}");
            } else {
                eprintln!("error: {}", pd_cli::message(&err));
            }
            ExitCode::from(pd_cli::exit_code(&err))
        }
    }
}
