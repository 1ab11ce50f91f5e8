//! Appends through `pd serve`, next to the same appends in process, in one run:
//!
//! 1. **Acks from 1,000 concurrent clients.** 1,000 target keys each sign and post `loaded`
//!    acks in a loop over HTTP for a few seconds (statements, group-committed by the server's
//!    writer): entries/s. Beside it, the same kind of statements placed in process with the
//!    server's own writer code (`sequencer::place`, one write and `fdatasync` per 1,000):
//!    the rate HTTP is compared with (goal ≥ 0.5 of it).
//! 2. **A deployer's push under a flood.** 100 clients append acks in a loop while one target
//!    key floods statements from 64 tasks at once (the server refuses it past 4 waiting with
//!    429); the deployer packages, approves and pushes a new version again and again, and the
//!    push is timed from signing to its receipt (after the deployer synced): p50 and p99
//!    (goal p99 < 250 ms).
//!
//! The ledger is on the project's disk (under `target/`), as a server's would be.
//! `cargo bench -p pd-server --bench appends`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator of the `pd` binary, which this bench stands in for.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pd_ledger::file_store::FileStore;
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::{decl, package};
use pd_ledger::{Ack, Approve, Body, Genesis, Hash, Ledger, Outcome, Role, SecretKey, Statement, Version};
use pd_server::client::ClientError;
use pd_server::sequencer::{self, Checkpointing};
use pd_server::{Client, ServeOptions};

const TARGETS: usize = 1000;
const SECONDS: u64 = 8;

fn target_key(i: usize) -> SecretKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SecretKey::from_seed(seed)
}

fn admin() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

fn carol() -> SecretKey {
    SecretKey::from_seed([2; 32])
}

fn v1() -> (Version, Hash) {
    (Version::new(1, 0, 0), Hash([5; 32]))
}

/// Genesis, an approver, 1,000 targets in `dev`, and v1 packaged, approved and pushed.
fn fixture(dir: &std::path::Path) -> Ledger<FileStore> {
    let mut l = Ledger::open(FileStore::open(dir).expect("ledger")).expect("open");
    let (admin, carol) = (admin(), carol());
    let genesis = Body::Genesis(Genesis {
        format: pd_ledger::entry::FORMAT_VERSION,
        ledger_id: Hash([3; 32]),
        envs: vec!["dev".into()],
        approvals_required: 1,
        admin_approvals: 1,
        min_targets: 1,
        keys: vec![decl("admin", &admin, &[Role::Admin, Role::Author, Role::Deployer, Role::Log], None)],
    });
    let now = pd_server::now_ms();
    l.sign_append("admin", &admin, now, genesis).expect("genesis");
    let mut keys = vec![Body::KeyAdd(decl("carol", &carol, &[Role::Approver], None))];
    keys.extend(
        (0..TARGETS)
            .map(|i| Body::KeyAdd(decl(&format!("t{i}"), &target_key(i), &[Role::Target], Some("dev")))),
    );
    let batch = l.sign_batch("admin", &admin, now, keys);
    l.append_batch(&batch).expect("keys");
    let (v, h) = v1();
    l.sign_append("admin", &admin, now, package(v, h)).expect("package");
    l.sign_append(
        "carol",
        &carol,
        now,
        Body::Approve(Approve { version: v, package: h, reason: "ok".into() }),
    )
    .expect("approve");
    l.sign_append("admin", &admin, now, pd_ledger::testkit::push("dev", v, h)).expect("push");
    l
}

fn ack_body() -> Body {
    let (version, package) = v1();
    Body::Ack(Ack { env: "dev".into(), version, package, outcome: Outcome::Loaded })
}

/// A temp dir on the project's disk.
fn disk_dir() -> tempfile::TempDir {
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "../target".into());
    tempfile::tempdir_in(target).or_else(|_| tempfile::tempdir()).expect("temp dir")
}

/// Statements placed in process by the server's writer code, 1,000 per group commit.
fn in_process() -> f64 {
    let dir = disk_dir();
    let mut l = fixture(dir.path());
    let (id, now) = (l.state().ledger_id(), pd_server::now_ms());
    let keys: Vec<SecretKey> = (0..TARGETS).map(target_key).collect();
    let rounds = 20;
    let statements: Vec<Statement> = (0..rounds * TARGETS)
        .map(|i| {
            let t = i % TARGETS;
            // A different base per round keeps each statement distinct.
            Statement::sign(
                &id,
                &format!("t{t}"),
                l.state().len() + (i / TARGETS) as u64,
                now,
                ack_body(),
                &keys[t],
            )
        })
        .collect();
    let signer = ("admin".to_string(), admin());
    let cp = Checkpointing { every: 1000, signer: Some(&signer) };
    let start = Instant::now();
    let mut batch = l.batch();
    let mut placed = 0;
    for chunk in statements.chunks(1000) {
        let group = chunk.iter().map(|s| (s.clone(), None)).collect();
        placed += sequencer::place(&mut batch, group, now, cp, false).iter().filter(|r| r.is_ok()).count();
        l.write(&batch).expect("write");
        l.install(&mut batch);
    }
    assert_eq!(placed, statements.len(), "every statement lands");
    placed as f64 / start.elapsed().as_secs_f64()
}

async fn server(dir: &std::path::Path) -> (String, tokio::sync::watch::Sender<bool>) {
    let l = fixture(&dir.join("ledger"));
    let store = Arc::new(pd_store::FsStore::open(&dir.join("objects")).expect("store"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut opts = ServeOptions::new(addr);
    opts.head_signer = Some(("admin".into(), admin()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(pd_server::api::serve_on(listener, l, store, opts, stop_rx));
    (format!("http://{addr}"), stop)
}

/// Target `t` acks in a loop until `stop`; counts what landed.
async fn acker(
    client: Client,
    id: Hash,
    t: usize,
    mut base: u64,
    stop: Arc<AtomicBool>,
    landed: Arc<AtomicU64>,
) {
    let key = target_key(t);
    let name = format!("t{t}");
    while !stop.load(Relaxed) {
        let statement = Statement::sign(&id, &name, base, pd_server::now_ms(), ack_body(), &key);
        match client.submit(&statement).await {
            Ok(r) => {
                landed.fetch_add(1, Relaxed);
                base = r.seq + 1;
            }
            Err(ClientError::Refused { status: 429 | 409, .. }) => base += 1,
            Err(e) => panic!("ack by {name}: {e}"),
        }
    }
}

/// Runs `body` with a client of a fresh server over the fixture and the server's head, then
/// stops the server.
fn with_server<T>(body: impl AsyncFnOnce(Client, pd_server::wire::HeadInfo) -> T) -> T {
    let dir = disk_dir();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (url, stop_server) = server(dir.path()).await;
        let client = Client::new(&url, None).expect("client");
        let head = client.head().await.expect("head");
        let out = body(client, head).await;
        let _ = stop_server.send(true);
        out
    })
}

/// One [`acker`] per target in `targets` (a target may repeat), counting into `landed`.
fn ackers(
    client: &Client,
    head: &pd_server::wire::HeadInfo,
    targets: impl Iterator<Item = usize>,
    stop: &Arc<AtomicBool>,
    landed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    targets
        .map(|t| {
            tokio::spawn(acker(client.clone(), head.ledger_id, t, head.len, stop.clone(), landed.clone()))
        })
        .collect()
}

/// 1,000 clients acking over HTTP: entries/s.
fn over_http() -> f64 {
    with_server(async |client, head| {
        let (stop, landed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let tasks = ackers(&client, &head, 0..TARGETS, &stop, &landed);
        // Warm up (connections, caches), then count.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (from, start) = (landed.load(Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let rate = (landed.load(Relaxed) - from) as f64 / start.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        for t in tasks {
            t.await.expect("acker");
        }
        rate
    })
}

/// The deployer's push latencies (s) while 100 clients ack and one key floods.
fn push_under_flood(pushes: u32) -> (Vec<f64>, u64, u64) {
    with_server(async |client, head| {
        let (stop, landed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut tasks = ackers(&client, &head, 0..100, &stop, &landed);
        // The flood: one key, 64 statements at a time.
        let flooded = Arc::new(AtomicU64::new(0));
        tasks.extend(ackers(&client, &head, std::iter::repeat_n(TARGETS - 1, 64), &stop, &flooded));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut replica = Ledger::open(MemStore::default()).expect("replica");
        let (admin, carol) = (admin(), carol());
        let mut latencies = Vec::new();
        for i in 1..=pushes {
            let (v, h) = (Version::new(1, i, 0), Hash::of(format!("v{i}").as_bytes()));
            let now = pd_server::now_ms();
            let approve = Body::Approve(Approve { version: v, package: h, reason: "ok".into() });
            client
                .append(&mut replica, "admin", &admin, now, |_| Ok::<_, ClientError>(package(v, h)))
                .await
                .expect("package");
            client
                .append(&mut replica, "carol", &carol, now, |_| Ok::<_, ClientError>(approve.clone()))
                .await
                .expect("approve");
            client.sync(&mut replica, None).await.expect("sync");
            let push = pd_ledger::testkit::push("dev", v, h);
            let start = Instant::now();
            let statement = replica.sign_statement("admin", &admin, pd_server::now_ms(), push);
            client.submit(&statement).await.expect("push");
            latencies.push(start.elapsed().as_secs_f64());
        }
        stop.store(true, Relaxed);
        for t in tasks {
            t.await.expect("acker");
        }
        latencies.sort_by(f64::total_cmp);
        (latencies, landed.load(Relaxed), flooded.load(Relaxed))
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let local = in_process();
    let http = over_http();
    println!("| what | entries/s |");
    println!("|---|---|");
    println!("| in process: the server's writer code, 1,000 statements per group commit | {local:.0} |");
    println!(
        "| over HTTP: 1,000 concurrent clients posting acks | {http:.0} ({:.2}× in process) |",
        http / local
    );
    let (latencies, acks, flood) = push_under_flood(40);
    println!();
    println!(
        "deployer push under a flood ({} pushes; {acks} acks by 100 clients and {flood} by the flooding key landed meanwhile): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.5) * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        percentile(&latencies, 1.0) * 1e3,
    );
}
