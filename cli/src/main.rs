//! `pd`: package, sign, approve, deploy and roll back governance policies, with every step
//! recorded in a signed, hash-chained ledger. The commands live in the `pd_cli` library.

use std::process::ExitCode;

/// mimalloc: `pd serve` and `pd agent` allocate from many threads at once (see the
/// workspace's Cargo.toml and BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match pd_cli::run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(clap_err) = err.downcast_ref::<clap::Error>() {
                // --help and --version are not errors; clap prints and picks the code.
                let _ = clap_err.print();
                return ExitCode::from(if clap_err.use_stderr() { 2 } else { 0 });
            }
            eprintln!("error: {}", pd_cli::message(&err));
            ExitCode::from(pd_cli::exit_code(&err))
        }
    }
}
