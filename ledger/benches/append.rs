//! Appends: batched signed appends, single durable appends, and a raw fsync loop on the same
//! disk as the floor for the latter.
//! `cargo bench -p pd-ledger --features sled,testkit --bench append`

use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pd_ledger::sled_store::SledStore;
use pd_ledger::testkit::{deployed, Deployed};

const BATCH: usize = 1_000;

/// A temp dir on the project's disk (under `target/`), where the ledger would live.
fn disk_dir() -> tempfile::TempDir {
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "../target".into());
    tempfile::tempdir_in(target).or_else(|_| tempfile::tempdir()).expect("temp dir")
}

fn on_disk(dir: &tempfile::TempDir) -> Deployed<SledStore> {
    deployed(SledStore::open(dir.path()).expect("sled"))
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));

    let dir = disk_dir();
    let mut b = on_disk(&dir);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batched_signed_appends_1000", |bench| {
        bench.iter(|| {
            let bodies = (0..BATCH).map(|_| b.ack()).collect();
            let entries = b.ledger.sign_batch("dev-1", &b.target, 2, bodies);
            b.ledger.append_batch(&entries).expect("append batch");
        })
    });

    let dir = disk_dir();
    let mut b = on_disk(&dir);
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_durable_append", |bench| {
        bench.iter(|| {
            let body = b.ack();
            b.ledger.sign_append("dev-1", &b.target, 2, body).expect("append");
        })
    });

    let dir = disk_dir();
    let mut f = std::fs::File::create(dir.path().join("fsync-loop")).expect("file");
    let record = [7u8; 200];
    g.bench_function("raw_fsync_loop_200B", |bench| {
        bench.iter(|| {
            f.write_all(&record).expect("write");
            f.sync_data().expect("fsync");
        })
    });
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
