//! Time from a `push` being appended to every target's ack, with 10, 100 and 1,000 agents
//! on loopback. The server and the agents run as tasks in this one process (each agent
//! with its own client state, replica and directory); packages are real: a deterministic
//! tarball with an OpenPGP signature that every agent fetches and checks.
//!
//! `cargo bench -p pd-server --bench converge` (optionally `-- 10 100` for some sizes).

use std::time::{Duration, Instant};

use pd_ledger::file_store::FileStore;
use pd_ledger::storage::MemStore;
use pd_ledger::{Approve, Body, Genesis, Hash, KeyDecl, Ledger, Push, Role, SecretKey, State, Version};
use pd_server::agent::{Agent, AgentConfig, Reload};
use pd_server::{Client, ServeOptions};
use pd_store::{FsStore, PgpKey};

fn decl(name: &str, key: &SecretKey, roles: &[Role], env: Option<&str>, pgp: Option<&PgpKey>) -> KeyDecl {
    KeyDecl {
        name: name.into(),
        public_key: key.public(),
        openpgp: pgp.map(|p| p.public_armored().expect("armored cert")),
        roles: roles.to_vec(),
        env: env.map(String::from),
        sets: Vec::new(),
        custody: pd_ledger::Custody::Admin,
    }
}

fn target_key(i: usize) -> SecretKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SecretKey::from_seed(seed)
}

struct Fixture {
    admin: SecretKey,
    carol: SecretKey,
    pgp: PgpKey,
}

/// A ledger with `n` targets in `dev`, on disk, ready to serve.
fn ledger(dir: &std::path::Path, n: usize, fx: &Fixture) -> Ledger<FileStore> {
    let mut l = Ledger::open(FileStore::open(&dir.join("ledger")).expect("ledger")).expect("open");
    let admin_roles = [Role::Admin, Role::Author, Role::Deployer, Role::Log];
    let genesis = Body::Genesis(Genesis {
        format: pd_ledger::entry::FORMAT_VERSION,
        ledger_id: Hash([3; 32]),
        envs: vec!["dev".into()],
        approvals_required: 1,
        admin_approvals: 1,
        min_targets: 1,
        keys: vec![decl("admin", &fx.admin, &admin_roles, None, Some(&fx.pgp))],
    });
    l.sign_append("admin", &fx.admin, 1, genesis).expect("genesis");
    let mut bodies = vec![Body::KeyAdd(decl("carol", &fx.carol, &[Role::Approver], None, None))];
    for i in 0..n {
        bodies.push(Body::KeyAdd(decl(&format!("t{i}"), &target_key(i), &[Role::Target], Some("dev"), None)));
    }
    let batch = l.sign_batch("admin", &fx.admin, 2, bodies);
    l.append_batch(&batch).expect("keys");
    l
}

/// Packages and approves `version` through the server; returns its tarball hash.
async fn package(client: &Client, replica: &mut Ledger<MemStore>, fx: &Fixture, version: Version) -> Hash {
    let files = [pd_store::tarball::PolicyFile {
        path: "llm_policy.yaml".into(),
        bytes: format!("version: {version}\nmax_tokens: 1000\n").into_bytes(),
    }];
    let built = pd_store::tarball::build("llm_policy", &version.to_string(), &files, &Default::default())
        .expect("tarball");
    let sig = fx.pgp.sign_detached_armored(&built.bytes).expect("sign");
    let id = replica.state().ledger_id();
    client.put_object(&id, "admin", &fx.admin, built.bytes.clone()).await.expect("upload");
    let body = Body::Package(built.to_package(version, sig, "bench".into()));
    let now = pd_server::now_ms();
    client
        .append(replica, "admin", &fx.admin, now, |_| Ok::<_, pd_server::client::ClientError>(body.clone()))
        .await
        .expect("package");
    let hash = Hash(built.digest.blake3);
    let approve = Body::Approve(Approve { version, package: hash, reason: "bench".into() });
    client
        .append(replica, "carol", &fx.carol, now, |_| {
            Ok::<_, pd_server::client::ClientError>(approve.clone())
        })
        .await
        .expect("approve");
    hash
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One size: start the server and `n` agents, then time `runs` pushes.
fn run(n: usize, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture {
        admin: SecretKey::from_seed([1; 32]),
        carol: SecretKey::from_seed([2; 32]),
        pgp: pd_store::openpgp::generate("bench").expect("pgp"),
    };
    let l = ledger(dir.path(), n, &fx);
    let store = std::sync::Arc::new(FsStore::open(&dir.path().join("objects")).expect("store"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // The server checkpoints after each push, as `pd serve` does, so agents may adopt.
        let mut opts = ServeOptions::new(addr);
        opts.head_signer = Some(("admin".into(), SecretKey::from_seed(fx.admin.seed())));
        let server = tokio::spawn(pd_server::api::serve_on(listener, l, store, opts, stop_rx.clone()));
        let url = format!("http://{addr}");
        let client = Client::new(&url, None).expect("client");
        let mut agents = Vec::new();
        for i in 0..n {
            let cfg = AgentConfig {
                client: client.clone(),
                env: "dev".into(),
                actor: format!("t{i}"),
                key: target_key(i),
                dir: dir.path().join("agents").join(i.to_string()),
                reload: Reload::None,
                objects: pd_server::agent::Objects::Server,
                heartbeat: Duration::from_secs(10),
            };
            let replica = Ledger::open(MemStore::default()).expect("replica");
            agents.push(tokio::spawn(Agent::new(cfg, replica).expect("agent").run(stop_rx.clone())));
        }
        // Every agent subscribed: the server counts event streams.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text =
                reqwest::get(format!("{url}/metrics")).await.expect("metrics").text().await.expect("text");
            let streams = text
                .lines()
                .find_map(|l| l.strip_prefix("pd_event_streams_total "))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if streams >= n {
                break;
            }
            assert!(Instant::now() < deadline, "agents did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut replica = Ledger::open(MemStore::default()).expect("replica");
        client.sync(&mut replica, None).await.expect("sync");
        let (mut totals, mut acks) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let version = Version::new(1, r as u32 + 1, 0);
            let hash = package(&client, &mut replica, &fx, version).await;
            let push = Body::Push(Push { env: "dev".into(), version, package: hash, reason: "bench".into() });
            let start = Instant::now();
            let entry = client
                .append(&mut replica, "admin", &fx.admin, pd_server::now_ms(), |_| {
                    Ok::<_, pd_server::client::ClientError>(push.clone())
                })
                .await
                .expect("push");
            loop {
                let len = replica.state().len();
                if done(replica.state(), version) {
                    break;
                }
                client.head_after(len, Duration::from_secs(30)).await.expect("head");
                client.sync(&mut replica, None).await.expect("sync");
            }
            totals.push(start.elapsed().as_secs_f64());
            let pushed_ms = entry.entry.time_ms;
            let set = replica.state().package(version).expect("packaged").package.name.clone();
            let slot = replica.state().slot("dev", &set).expect("pushed").clone();
            acks.extend(
                slot.reports()
                    .values()
                    .filter(|r| r.version == version)
                    .map(|r| (r.time_ms - pushed_ms) as f64 / 1e3),
            );
        }
        let _ = stop.send(true);
        for a in agents {
            let _ = a.await;
        }
        let _ = server.await;
        totals.sort_by(f64::total_cmp);
        acks.sort_by(f64::total_cmp);
        (totals, acks)
    })
}

fn done(state: &State, version: Version) -> bool {
    pd_ledger::adoption::adoption_of(state, "dev", version).adopted_version(version)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if args.is_empty() { vec![10, 100, 1000] } else { args };
    println!("| agents | runs | all acked: p50 | all acked: p99 (max) | per-ack p50 | per-ack p99 |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let runs = if n >= 1000 { 3 } else { 5 };
        let (totals, acks) = run(n, runs);
        println!(
            "| {n} | {runs} | {:.3} s | {:.3} s | {:.3} s | {:.3} s |",
            percentile(&totals, 0.5),
            percentile(&totals, 1.0),
            percentile(&acks, 0.5),
            percentile(&acks, 0.99)
        );
    }
}
