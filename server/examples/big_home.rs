//! Writes a pd home whose ledger holds N entries (default 1,000,000), for the memory bench:
//! `cargo run --release -p pd-server --example big_home -- DIR [N]`, then `pd --home DIR serve`.
//!
//! The ledger is the testkit's: genesis, keys, one package pushed to `dev`, then acks.

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir =
        std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: big_home DIR [N]"))?);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    anyhow::ensure!(!dir.exists(), "{} exists; pass a new directory", dir.display());
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::create_dir_all(dir.join("objects"))?;
    std::fs::write(dir.join("config.toml"), "actor = \"admin\"\n")?;
    let store = pd_ledger::file_store::FileStore::open(&dir.join("ledger"))?;
    let mut deployed = pd_ledger::testkit::deployed(store);
    // The testkit's admin seed, so `pd serve` can sign export heads.
    let mut key = std::fs::OpenOptions::new();
    key.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut key, 0o600);
    writeln!(key.open(dir.join("keys/admin.ed25519"))?, "{}", hex::encode(deployed.admin.seed()))?;
    let have = deployed.ledger.state().len() as usize;
    deployed.append_acks(n.saturating_sub(have));
    println!("{} entries in {}", deployed.ledger.state().len(), dir.display());
    Ok(())
}
