//! Time from a `push` being appended to every target's ack, with 10 to 10,000 agents on
//! loopback. The server and the agents run as tasks in this one process (each agent with its
//! own replica and directory); packages are real: a deterministic tarball with an OpenPGP
//! signature that every agent fetches and checks. Also reports what each agent received and
//! how many signatures it checked per wave.
//!
//! `cargo bench -p pd-server --bench converge -- [full|light] [SIZES…]` (default: both
//! modes at 10 and 100, light at 1,000). `PD_BENCH_DIR` puts the agents' directories
//! somewhere else than the temp dir (a tmpfs keeps 10,000 agents' fsyncs out of the timing).

use std::time::{Duration, Instant};

/// The allocator of the `pd` binary, which this bench stands in for.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pd_ledger::file_store::FileStore;
use pd_ledger::storage::MemStore;
use pd_ledger::{Approve, Body, Genesis, Hash, KeyDecl, Ledger, Push, Role, SecretKey, State, Version};
use pd_server::agent::{Agent, AgentConfig, Reload, Replica, Status};
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
        labels: Vec::new(),
        groups: Vec::new(),
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

/// What one size measured.
struct Measured {
    totals: Vec<f64>,
    acks: Vec<f64>,
    /// Per agent per wave: bytes received and signatures checked (mean, max).
    bytes: (f64, u64),
    signatures: (f64, u64),
}

/// One size: start the server and `n` agents, then time `runs` pushes.
fn run(n: usize, runs: usize, light: bool) -> Measured {
    let dir = match std::env::var_os("PD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let fx = Fixture {
        admin: SecretKey::from_seed([1; 32]),
        carol: SecretKey::from_seed([2; 32]),
        pgp: pd_store::openpgp::generate("bench").expect("pgp"),
    };
    drop(ledger(dir.path(), n, &fx));
    // The server runs in a process of its own, as `pd serve` does: each side of every
    // agent's connection needs a file descriptor, more than one process may hold here.
    let mut server = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .arg("--serve")
        .arg(dir.path())
        .arg(n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the server process");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the server's address");
    let addr: std::net::SocketAddr = line.trim().parse().expect("an address");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let measured = rt.block_on(async move {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let url = format!("http://{addr}");
        let client = Client::new(&url, None).expect("client");
        let mut agents = Vec::new();
        let mut statuses = Vec::new();
        for i in 0..n {
            let cfg = AgentConfig {
                client: client.clone(),
                env: "dev".into(),
                actor: format!("t{i}"),
                key: target_key(i),
                dir: dir.path().join("agents").join(i.to_string()),
                reload: Reload::None,
                objects: pd_server::agent::Objects::Server,
                heartbeat: Duration::from_secs(60),
                health_url: None,
                clock: pd_server::system_clock(),
                random: pd_server::system_random(),
            };
            let replica = match light {
                true => Replica::Light(Box::default()),
                false => Replica::Full(Box::new(Ledger::open(MemStore::default()).expect("replica"))),
            };
            let agent = Agent::new(cfg, replica).expect("agent");
            statuses.push(agent.status());
            agents.push(tokio::spawn(agent.run(stop_rx.clone())));
        }
        // Every agent is following: full ones hold an event stream, light ones a long poll.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let following = statuses.iter().filter(|s| s.borrow().following).count();
            let ready = if light {
                following == n
            } else {
                let text = reqwest::get(format!("{url}/metrics"))
                    .await
                    .expect("metrics")
                    .text()
                    .await
                    .expect("text");
                let streams = text
                    .lines()
                    .find_map(|l| l.strip_prefix("pd_event_streams_total "))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                streams >= n
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "only {following} of {n} agents started following");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut replica = Ledger::open(MemStore::default()).expect("replica");
        client.sync(&mut replica, None).await.expect("sync");
        let (mut totals, mut acks) = (Vec::new(), Vec::new());
        let counters = |statuses: &[tokio::sync::watch::Receiver<Status>]| -> Vec<(u64, u64)> {
            statuses.iter().map(|s| (s.borrow().received_bytes, s.borrow().verified_signatures)).collect()
        };
        let (mut bytes, mut signatures) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let before = counters(&statuses);
            let version = Version::new(1, r as u32 + 1, 0);
            let hash = package(&client, &mut replica, &fx, version).await;
            let push = Body::Push(Push {
                env: "dev".into(),
                version,
                package: hash,
                waves: Vec::new(),
                reason: "bench".into(),
            });
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
            // Counted from before the package to the last ack: one whole wave per agent.
            for ((b0, s0), (b1, s1)) in before.into_iter().zip(counters(&statuses)) {
                bytes.push(b1 - b0);
                signatures.push(s1 - s0);
            }
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
        totals.sort_by(f64::total_cmp);
        acks.sort_by(f64::total_cmp);
        let mean_max = |v: &[u64]| {
            (v.iter().sum::<u64>() as f64 / v.len().max(1) as f64, v.iter().copied().max().unwrap_or(0))
        };
        Measured { totals, acks, bytes: mean_max(&bytes), signatures: mean_max(&signatures) }
    });
    drop(server.stdin.take());
    let _ = server.wait();
    measured
}

/// `converge --serve DIR N`: serves the ledger the parent wrote in DIR, prints the address,
/// and stops when its stdin closes.
fn serve(dir: &std::path::Path, n: usize) {
    let l = Ledger::open(FileStore::open(&dir.join("ledger")).expect("ledger")).expect("open");
    let store = std::sync::Arc::new(FsStore::open(&dir.join("objects")).expect("store"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            let _ = stop.send(true);
        });
        // The server checkpoints after each push, as `pd serve` does, so agents may adopt.
        let mut opts = ServeOptions::new(listener.local_addr().expect("addr"));
        opts.head_signer = Some(("admin".into(), SecretKey::from_seed([1; 32])));
        // Every agent holds a connection (an event stream or a long poll).
        opts.max_connections = opts.max_connections.max(n + 512);
        pd_server::api::serve_on(listener, l, store, opts, stop_rx).await.expect("serve");
    });
}

fn done(state: &State, version: Version) -> bool {
    pd_ledger::adoption::adoption_of(state, "dev", version).adopted_version(version)
}

/// Lifts the open-file limit (to 65,536 where allowed, else to the hard maximum): both ends
/// of every agent's connection live in this process.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct owned here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let wanted = libc::rlimit { rlim_cur: 65_536, rlim_max: lim.rlim_max.max(65_536) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

fn main() {
    // Library errors without backtraces, as in production: sequoia's certificate parser makes
    // anyhow errors internally, and under RUST_BACKTRACE=1 each one would capture a
    // backtrace, 10,000 times a wave. Panics keep theirs. Set before any thread starts; the
    // server process inherits it.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir, n, ..] = args.as_slice() {
        if flag == "--serve" {
            return serve(std::path::Path::new(dir), n.parse().expect("agents"));
        }
    }
    let modes: Vec<bool> = match (args.iter().any(|a| a == "full"), args.iter().any(|a| a == "light")) {
        (true, false) => vec![false],
        (false, true) => vec![true],
        _ => vec![false, true],
    };
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    println!("| agents | mode | runs | all acked: p50 | all acked: p99 (max) | per-ack p50 | per-ack p99 | bytes/agent/wave (mean, max) | signatures/agent/wave (mean, max) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for light in modes {
        let default = if light { vec![10, 100, 1000] } else { vec![10, 100] };
        for &n in if sizes.is_empty() { &default } else { &sizes } {
            let runs = 5;
            let m = run(n, runs, light);
            println!(
                "| {n} | {} | {runs} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.0}, {} | {:.1}, {} |",
                if light { "light" } else { "full" },
                percentile(&m.totals, 0.5),
                percentile(&m.totals, 1.0),
                percentile(&m.acks, 0.5),
                percentile(&m.acks, 0.99),
                m.bytes.0,
                m.bytes.1,
                m.signatures.0,
                m.signatures.1,
            );
        }
    }
}
