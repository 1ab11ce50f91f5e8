//! `pd store`: content-addressed reads.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use pd_ledger::{Hash, Version};

use crate::backend::Backend;
use crate::ledger_cmd::package_of;
use crate::{home, output, Ctx};

/// Store subcommands.
#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy an artifact out of the store (or a server's), verifying its BLAKE3 on the way.
    Get {
        /// BLAKE3 hash (64 hex digits) or a package version such as PD-23.1.0.
        hash: String,
        /// Output file (written whole or not at all), or `-` for standard output.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Runs a store subcommand.
pub fn run(ctx: &Ctx, cmd: StoreCmd) -> Result<()> {
    let StoreCmd::Get { hash, output } = cmd;
    let mut backend = Backend::open(ctx, ctx.home().ok())?;
    let tarball_limit = pd_store::Limits::default().max_tarball_bytes;
    let (key, size) = match (Hash::from_hex(&hash), hash.parse::<Version>()) {
        (Ok(h), _) => (h, tarball_limit),
        (Err(_), Ok(v)) => {
            let state = backend.state()?;
            let t = &package_of(&state, v)?.package.tarball;
            (t.blake3, t.size)
        }
        (Err(e), Err(_)) => anyhow::bail!("{e}; pass a BLAKE3 hash or a version such as PD-23.1.0"),
    };
    let bytes = backend.get_object(&key, size)?;
    if output.as_os_str() == "-" {
        // Verified whole before the first byte goes out, so a reader never sees bad bytes.
        return output::raw(&bytes);
    }
    home::write_file_atomic(&output, &bytes)?;
    if ctx.json {
        return ctx.emit(&serde_json::json!({ "blake3": key, "bytes": bytes.len(), "file": output }));
    }
    output::ok(format!(
        "{} verified ({}) → {}",
        key.short(),
        output::size(bytes.len() as u64),
        output.display()
    ));
    Ok(())
}
