//! Appends: batched signed appends, and single durable appends next to what they are made
//! of on the same disk in the same run: a raw `write` + `fdatasync` loop (the floor), and
//! sled 0.34 made durable the only way it can be (its flush, then `fdatasync` of its file),
//! which `FileStore` replaced.
//! `cargo bench -p pd-ledger --features file,testkit --bench append`

use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pd_ledger::file_store::FileStore;
use pd_ledger::testkit::{deployed, Deployed};
use pd_ledger::{LedgerStore, StorageError};

const BATCH: usize = 1_000;

/// A temp dir on the project's disk (under `target/`), where the ledger would live.
fn disk_dir() -> tempfile::TempDir {
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "../target".into());
    tempfile::tempdir_in(target).or_else(|_| tempfile::tempdir()).expect("temp dir")
}

fn on_disk(dir: &tempfile::TempDir) -> Deployed<FileStore> {
    deployed(FileStore::open(dir.path()).expect("ledger"))
}

/// sled with an explicit `fdatasync` of its `db` file after every flush: durable on power
/// loss, for comparison only.
struct DurableSled {
    db: sled::Db,
    file: std::fs::File,
    len: std::sync::atomic::AtomicU64,
}

impl DurableSled {
    fn open(dir: &std::path::Path) -> Self {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().expect("sled");
        let file = std::fs::File::open(dir.join("db")).expect("sled's db file");
        DurableSled { db, file, len: 0.into() }
    }
}

impl LedgerStore for DurableSled {
    fn len(&self) -> Result<u64, StorageError> {
        Ok(self.len.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(seq.to_be_bytes()).expect("get").map(|v| v.to_vec()))
    }
    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_> {
        Box::new(self.db.range(from.to_be_bytes()..).map(|kv| Ok(kv.expect("scan").1.to_vec())))
    }
    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (i, bytes) in entries.iter().enumerate() {
            batch.insert(&(first_seq + i as u64).to_be_bytes(), *bytes);
        }
        self.db.apply_batch(batch).expect("batch");
        self.db.flush().expect("flush");
        self.file.sync_data().expect("fdatasync");
        self.len.store(first_seq + entries.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn single<S: LedgerStore>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut b: Deployed<S>,
) {
    g.bench_function(name, |bench| {
        bench.iter(|| {
            let body = b.ack();
            b.ledger.sign_append("dev-1", &b.target, 2, body).expect("append");
        })
    });
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

    g.throughput(Throughput::Elements(1));
    let dir = disk_dir();
    single(&mut g, "single_durable_append", on_disk(&dir));
    let sled_dir = disk_dir();
    single(&mut g, "single_durable_append_sled_with_fdatasync", deployed(DurableSled::open(sled_dir.path())));

    let dir = disk_dir();
    let mut f = std::fs::File::create(dir.path().join("fsync-loop")).expect("file");
    let record = [7u8; 200];
    g.bench_function("raw_write_fdatasync_loop_200B", |bench| {
        bench.iter(|| {
            f.write_all(&record).expect("write");
            f.sync_data().expect("fdatasync");
        })
    });
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
