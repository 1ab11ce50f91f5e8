//! The Merkle tree at 1,000,000 entries: what keeping the SHA-256 (RFC 6962) tree costs per
//! appended entry, next to the BLAKE3 tree it replaced and a batched signed append, measured
//! in the same run; and inclusion and consistency proof generation and verification.
//! `cargo bench -p pd-ledger --features testkit --bench merkle`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pd_ledger::merkle::{verify_consistency, verify_inclusion, Digest32, Frontier, Sha256, Tree, TreeHasher};
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::deployed;

const N: u64 = 1_000_000;

/// The tree hash of ledger format 1, kept here only to measure what SHA-256 costs next to it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Blake3Tree;

impl TreeHasher for Blake3Tree {
    fn hash(parts: &[&[u8]]) -> Digest32 {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }
}

/// Grows a copy of a million-entry tree and frontier by `BATCH` entries per iteration.
fn grow<H: TreeHasher + Clone>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    ids: &[[u8; 32]],
) {
    let mut tree = Tree::<H>::new();
    let mut frontier = Frontier::<H>::default();
    for id in ids {
        tree.push(id);
        frontier.push(id);
    }
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (mut t, mut f) = (tree.clone(), frontier.clone());
            let start = std::time::Instant::now();
            for _ in 0..iters {
                for id in &ids[..BATCH] {
                    t.push(id);
                    f.push(id);
                }
            }
            start.elapsed()
        })
    });
}
const BATCH: usize = 1_000;

fn ids(n: u64) -> Vec<[u8; 32]> {
    (0..n).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect()
}

fn merkle(c: &mut Criterion) {
    let mut g = c.benchmark_group("merkle");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));

    // What the ledger does per appended entry: grow the full tree and the state's frontier,
    // on a tree that already holds a million entries.
    let ids = ids(N);
    g.throughput(Throughput::Elements(BATCH as u64));
    grow::<Sha256>(&mut g, "sha256_tree_and_frontier_per_1000_entries_at_1M", &ids);
    grow::<Blake3Tree>(&mut g, "blake3_tree_and_frontier_per_1000_entries_at_1M", &ids);
    let mut tree = Tree::<Sha256>::new();
    for id in &ids {
        tree.push(id);
    }

    // The same number of batched signed appends (in memory, so the tree's share is not
    // hidden behind disk flushes), with a million entries already in the ledger.
    let mut d = deployed(MemStore::default());
    d.append_acks(N as usize);
    g.bench_function("batched_signed_appends_1000_at_1M", |b| {
        b.iter(|| {
            let bodies = (0..BATCH).map(|_| d.ack()).collect();
            let batch = d.ledger.sign_batch("dev-1", &d.target, 2, bodies);
            d.ledger.append_batch(&batch).expect("valid acks");
        })
    });

    g.throughput(Throughput::Elements(1));
    let root = tree.root(N).expect("root");
    let mut i = 0u64;
    g.bench_function("inclusion_proof_at_1M", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            tree.inclusion_proof(i, N).expect("proof")
        })
    });
    let proofs: Vec<_> =
        (0..1000u64).map(|k| (k * 997, tree.inclusion_proof(k * 997, N).expect("proof"))).collect();
    let mut k = 0;
    g.bench_function("verify_inclusion_at_1M", |b| {
        b.iter(|| {
            k = (k + 1) % proofs.len();
            let (index, proof) = &proofs[k];
            let leaf = Sha256::leaf(&ids[*index as usize]);
            verify_inclusion::<Sha256>(*index, N, &leaf, proof, &root).expect("verifies")
        })
    });
    let old = 654_321;
    let old_root = tree.root(old).expect("root");
    g.bench_function("consistency_proof_at_1M", |b| {
        b.iter(|| tree.consistency_proof(old, N).expect("proof"))
    });
    let proof = tree.consistency_proof(old, N).expect("proof");
    g.bench_function("verify_consistency_at_1M", |b| {
        b.iter(|| verify_consistency::<Sha256>(old, N, &proof, &old_root, &root).expect("verifies"))
    });
    println!(
        "proof sizes at {N} entries: inclusion {} hashes ({} bytes), consistency {} hashes ({} bytes)",
        proofs[1].1.len(),
        proofs[1].1.len() * 32,
        proof.len(),
        proof.len() * 32
    );
    g.finish();
}

criterion_group!(benches, merkle);
criterion_main!(benches);
