//! pd-verify on a 100,000-entry export, next to raw Ed25519 batch verification of the same
//! signatures in the same run. `cargo bench -p pd-verify --bench verify`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pd_ledger::keys::{verify_batch, SignedMessage};
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::deployed;
use pd_ledger::SignedEntry;

const ENTRIES: usize = 100_000;

fn verify(c: &mut Criterion) {
    let mut fixture = deployed(MemStore::default());
    let setup = fixture.ledger.state().len() as usize;
    fixture.append_acks(ENTRIES - setup);
    let export = fixture.export();
    let bytes = export.encode();
    let state = pd_verify::verify_bytes(&bytes, None).expect("the bench export verifies").state;
    let triples: Vec<SignedMessage> = export
        .entries
        .iter()
        .map(|b| {
            let e = SignedEntry::decode(b).expect("entry").entry;
            SignedMessage {
                key: state.keys()[&e.actor].decl.public_key,
                message: e.signed_message(&state.ledger_id()),
                sig: e.sig,
            }
        })
        .collect();

    let mut g = c.benchmark_group("verify_100k");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(ENTRIES as u64));
    g.bench_function("pd_verify", |b| b.iter(|| pd_verify::verify_bytes(&bytes, None).expect("verifies")));
    g.bench_function("raw_ed25519_batch_1_thread", |b| b.iter(|| verify_batch(&triples).expect("valid")));
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
