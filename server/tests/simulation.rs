//! Deterministic simulation of one server and a fleet of light agents, driven by one seed.
//!
//! The server is the real sequencing code (`sequencer::place` for group commits, the same
//! checkpoint policy, `control_plan` for the agents' pages) over an in-memory ledger store
//! that can fail; the agents are the real partial verification (`client::apply_page`,
//! `partial::Follower`) and install rule (`adoption::agent_step`). Between them, a network
//! that delays, reorders and drops every message; meanwhile agents and the server restart and
//! the store refuses writes. A deployer packages, approves, pushes dev → prod and rolls back
//! when a target refuses a version. Time is a simulated clock, randomness one seeded
//! generator: a seed replays exactly.
//!
//! After every step: no agent runs a version its environment never had desired or that was
//! never approved. Every 100 steps: the ledger replays with every signature checked. At the
//! end (faults off): every deploy converged, or failed with the targets' named reasons.
//!
//! `cargo test -p pd-server --test simulation` runs the fixed seeds; `PD_SIM_SEED=N` one seed;
//! `PD_SIM_SEEDS=K` K random seeds (`scripts/simulate K`). A failure prints its seed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pd_ledger::adoption::{adoption, agent_step, AgentView, Step};
use pd_ledger::ledger::Batch;
use pd_ledger::partial::Follower;
use pd_ledger::storage::{LedgerStore, MemStore, StorageError};
use pd_ledger::testkit::{decl, package};
use pd_ledger::{
    Ack, Approve, Body, Genesis, Hash, Ledger, Outcome, Role, Rollback, SecretKey, Signatures, Statement,
    Version,
};
use pd_server::client::{apply_page, ControlPage};
use pd_server::sequencer::{self, Checkpointing, ControlQuery};

/// The seeds the README's test command runs (the last one found the late-ack rollback bug).
const FIXED_SEEDS: [u64; 4] = [1, 2, 3, 2028609229881526261];
const TARGETS: usize = 6;
const FAULT_STEPS: usize = 4000;
const CALM_STEPS: usize = 20_000;
const SET: &str = "p";

/// splitmix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// An in-memory store whose appends fail while `failing` is set (a full or broken disk).
#[derive(Clone, Default)]
struct Flaky {
    inner: Arc<MemStore>,
    failing: Arc<AtomicBool>,
}

impl LedgerStore for Flaky {
    fn len(&self) -> Result<u64, StorageError> {
        self.inner.len()
    }
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(seq)
    }
    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_> {
        self.inner.scan(from)
    }
    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StorageError::Io("simulated disk error".into()));
        }
        self.inner.append(first_seq, entries)
    }
}

/// Who sent a statement: an agent (by index) or the deployer.
type From = Option<usize>;

struct Server {
    store: Flaky,
    ledger: Ledger<Flaky>,
    next: Option<Batch>,
    queue: Vec<(From, Statement)>,
    asked: bool,
    log: (String, SecretKey),
}

impl Server {
    /// One group commit of everything queued, as `pd serve`'s writer does it.
    fn commit(&mut self, now: u64) -> Vec<(From, Result<u64, String>)> {
        let mut batch = match self.next.take() {
            Some(b) if self.ledger.continues(&b) => b,
            _ => self.ledger.batch(),
        };
        let (from, statements): (Vec<From>, Vec<_>) =
            self.queue.drain(..).map(|(f, s)| (f, (s, None))).unzip();
        let cp = Checkpointing { every: 50, signer: Some(&self.log) };
        let placed = sequencer::place(&mut batch, statements, now, cp, std::mem::take(&mut self.asked));
        match self.ledger.write(&batch) {
            Ok(()) => {
                self.ledger.install(&mut batch);
                self.next = Some(batch);
                from.into_iter()
                    .zip(placed)
                    .map(|(f, p)| (f, p.map(|r| r.seq).map_err(|e| e.to_string())))
                    .collect()
            }
            Err(e) => from.into_iter().map(|f| (f, Err(e.to_string()))).collect(),
        }
    }

    /// A crash and restart: what was queued is lost, the store's entries are replayed.
    fn restart(&mut self) {
        self.ledger = Ledger::open(self.store.clone()).expect("the store replays after a crash");
        self.next = None;
        self.queue.clear();
    }

    /// The answer to an agent's poll, as `GET /v1/control` builds it.
    fn page(&mut self, q: &ControlQuery, key: &pd_ledger::PublicKey) -> ControlPage {
        if sequencer::uncovered_target_key(self.ledger.state(), key).is_some() {
            self.asked = true;
        }
        let plan = sequencer::control_plan(&self.ledger, q, Some(key)).expect("plan");
        let wire =
            plan.page(|seq| self.store.get(seq).map(|b| b.expect("entry present"))).expect("the store reads");
        ControlPage::decode(wire, 0).expect("the server's entries decode")
    }
}

struct Agent {
    name: String,
    env: &'static str,
    key: SecretKey,
    refuses: BTreeSet<Version>,
    follower: Follower,
    // What survives a restart (DIR/agent.json).
    running: Option<(Version, Hash)>,
    acked: Option<u64>,
    checkpoint: Option<(u64, Hash)>,
    // In memory only.
    failed: Option<(u64, u64)>,
    polling: Option<u64>,
    poll_at: u64,
    need: Option<u64>,
    acking: Option<(u64, u64)>,
}

enum Msg {
    Poll { agent: usize, q: ControlQuery },
    Page { agent: usize, page: Box<ControlPage> },
    Statement { agent: usize, statement: Box<Statement>, desired: u64, failed: bool },
    Receipt { agent: usize, result: Result<u64, String>, desired: u64, failed: bool },
}

impl Msg {
    fn agent(&self) -> usize {
        match self {
            Msg::Poll { agent, .. }
            | Msg::Page { agent, .. }
            | Msg::Statement { agent, .. }
            | Msg::Receipt { agent, .. } => *agent,
        }
    }
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    server: Server,
    agents: Vec<Agent>,
    net: Vec<(u64, Msg)>,
    admin: SecretKey,
    carol: SecretKey,
    versions: u32,
    /// Statements of acks waiting for their receipt: which agent, which desired entry.
    pending: Vec<(usize, u64, bool)>,
    faults: bool,
    /// Faults injected: dropped messages, agent restarts, server restarts, failed writes.
    injected: [u32; 4],
}

fn target_key(i: usize) -> SecretKey {
    SecretKey::from_seed([10 + i as u8; 32])
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let admin = SecretKey::from_seed([1; 32]);
        let carol = SecretKey::from_seed([2; 32]);
        let store = Flaky::default();
        let mut ledger = Ledger::open(store.clone()).expect("empty store");
        let genesis = Body::Genesis(Genesis {
            format: pd_ledger::entry::FORMAT_VERSION,
            ledger_id: Hash([seed as u8; 32]),
            envs: vec!["dev".into(), "prod".into()],
            approvals_required: 1,
            admin_approvals: 1,
            min_targets: 1,
            keys: vec![decl("admin", &admin, &[Role::Admin, Role::Author, Role::Deployer, Role::Log], None)],
        });
        let now = 1_000_000;
        ledger.sign_append("admin", &admin, now, genesis).expect("genesis");
        ledger
            .sign_append("admin", &admin, now, Body::KeyAdd(decl("carol", &carol, &[Role::Approver], None)))
            .expect("carol");
        let mut agents = Vec::new();
        for i in 0..TARGETS {
            let env = if i % 2 == 0 { "dev" } else { "prod" };
            let name = format!("t{i}");
            ledger
                .sign_append(
                    "admin",
                    &admin,
                    now,
                    Body::KeyAdd(decl(&name, &target_key(i), &[Role::Target], Some(env))),
                )
                .expect("target");
            // Some targets refuse one of the first versions: a deploy that fails by name.
            let refuses = (2..=8).filter(|_| rng.percent(8)).map(|k| Version::new(1, k, 0)).collect();
            agents.push(Agent {
                name,
                env,
                key: target_key(i),
                refuses,
                follower: Follower::new(),
                running: None,
                acked: None,
                checkpoint: None,
                failed: None,
                polling: None,
                poll_at: now + rng.below(200),
                need: None,
                acking: None,
            });
        }
        let server = Server {
            store: store.clone(),
            ledger,
            next: None,
            queue: Vec::new(),
            asked: true,
            log: ("admin".into(), SecretKey::from_seed([1; 32])),
        };
        Sim {
            seed,
            rng,
            now,
            server,
            agents,
            net: Vec::new(),
            admin,
            carol,
            versions: 0,
            pending: Vec::new(),
            faults: true,
            injected: [0; 4],
        }
    }

    fn send(&mut self, msg: Msg) {
        let delay = 1 + self.rng.below(if self.faults { 400 } else { 20 });
        self.net.push((self.now + delay, msg));
    }

    fn step(&mut self) {
        self.now += 1 + self.rng.below(30);
        let faults = self.faults;
        // Faults.
        if faults && !self.net.is_empty() && self.rng.percent(6) {
            let i = self.rng.below(self.net.len() as u64) as usize;
            self.net.swap_remove(i);
            self.injected[0] += 1;
        }
        if faults && self.rng.percent(1) {
            let i = self.rng.below(TARGETS as u64) as usize;
            self.restart_agent(i);
            self.injected[1] += 1;
        }
        if faults && self.rng.below(1000) < 4 {
            self.server.restart();
            self.injected[2] += 1;
        }
        let failing = faults && self.rng.percent(4);
        self.injected[3] += u32::from(failing);
        self.server.store.failing.store(failing, Ordering::Relaxed);
        // Agents poll when due (and again when a poll was lost).
        for i in 0..self.agents.len() {
            let a = &mut self.agents[i];
            if a.polling.is_some_and(|since| self.now - since > 2_000) {
                a.polling = None;
            }
            if a.polling.is_none() && a.poll_at <= self.now {
                a.polling = Some(self.now);
                let q = ControlQuery {
                    after: a.follower.control_len(),
                    held: a.follower.checkpoint().or(a.checkpoint).map_or(0, |c| c.0),
                    has: a.follower.checkpoint().is_some() && a.follower.checkpoint() == a.checkpoint,
                    need: a.need,
                    ..Default::default()
                };
                self.send(Msg::Poll { agent: i, q });
            }
        }
        // The network delivers: mostly in order of arrival, sometimes any message due.
        let due: Vec<usize> = (0..self.net.len()).filter(|&i| self.net[i].0 <= self.now).collect();
        if !due.is_empty() {
            let pick = if faults && self.rng.percent(30) {
                due[self.rng.below(due.len() as u64) as usize]
            } else {
                *due.iter().min_by_key(|&&i| self.net[i].0).expect("some due")
            };
            let (_, msg) = self.net.swap_remove(pick);
            self.deliver(msg);
        }
        if self.rng.percent(25) || !faults && !self.server.queue.is_empty() {
            self.commit();
        }
        if faults && self.rng.percent(6) {
            self.deploy();
        }
        self.check_installs();
    }

    fn commit(&mut self) {
        if self.server.queue.is_empty() && !self.server.asked {
            return;
        }
        for (from, result) in self.server.commit(self.now) {
            let Some(agent) = from else { continue };
            let Some(i) = self.pending.iter().position(|(a, _, _)| *a == agent) else { continue };
            let (_, desired, failed) = self.pending.remove(i);
            self.send(Msg::Receipt { agent, result, desired, failed });
        }
    }

    fn restart_agent(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.follower = Follower::new();
        a.failed = None;
        a.polling = None;
        a.need = None;
        a.acking = None;
        self.net.retain(|(_, m)| m.agent() != i);
        self.pending.retain(|(a, _, _)| *a != i);
        self.server.queue.retain(|(f, _)| *f != Some(i));
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Poll { agent, q } => {
                let key = self.agents[agent].key.public();
                let page = self.server.page(&q, &key);
                self.send(Msg::Page { agent, page: Box::new(page) });
            }
            Msg::Statement { agent, statement, desired, failed } => {
                self.pending.retain(|(a, _, _)| *a != agent);
                self.pending.push((agent, desired, failed));
                self.server.queue.push((Some(agent), *statement));
            }
            Msg::Receipt { agent, result, desired, failed } => {
                let a = &mut self.agents[agent];
                a.acking = None;
                match (result, failed) {
                    (Ok(seq), true) => a.failed = Some((desired, seq)),
                    (Ok(_), false) => a.acked = Some(desired),
                    (Err(_), _) => {}
                }
            }
            Msg::Page { agent, page } => self.on_page(agent, &page),
        }
    }

    /// What `pd agent --light` does with a page: verify it, then take the install step.
    fn on_page(&mut self, i: usize, page: &ControlPage) {
        let (now, seed) = (self.now, self.seed);
        let a = &mut self.agents[i];
        a.polling = None;
        a.poll_at = now + 50 + self.rng.below(400);
        let held = a.checkpoint;
        if let Err(e) = apply_page(&mut a.follower, page, &a.key.public(), held) {
            panic!("seed {seed}: {} refused an honest server's page: {e}", a.name);
        }
        a.checkpoint = a.follower.checkpoint().or(a.checkpoint);
        if a.follower.key(&a.key.public()).is_none() {
            return;
        }
        let view = AgentView { running: a.running, acked: a.acked, failed: a.failed };
        a.need = None;
        let (desired, outcome) = match agent_step(a.follower.state(), &a.name, a.env, SET, view) {
            Step::Install(d) if a.refuses.contains(&d.version) => {
                (d, Outcome::Failed("the target refused it".into()))
            }
            Step::Install(d) => {
                a.running = Some((d.version, d.package));
                (d, Outcome::Loaded)
            }
            Step::Ack(d) => (d, Outcome::Loaded),
            Step::Refuse(d, why) => (d, Outcome::Failed(why)),
            Step::AwaitCheckpoint(d) => {
                a.need = Some(d.seq);
                return;
            }
            Step::Idle | Step::Done | Step::Failed(_) | Step::Queued(_) => return,
        };
        if a.acking.is_some_and(|(seq, at)| seq == desired.seq && now - at < 2_000) {
            return;
        }
        a.acking = Some((desired.seq, now));
        let failed = matches!(outcome, Outcome::Failed(_));
        let body =
            Body::Ack(Ack { env: a.env.into(), version: desired.version, package: desired.package, outcome });
        let base = a.follower.checkpoint().map_or(0, |c| c.0).max(a.follower.state().len());
        let id = a.follower.state().ledger_id();
        let statement = Statement::sign(&id, &a.name, base, now, body, &a.key);
        self.send(Msg::Statement { agent: i, statement: Box::new(statement), desired: desired.seq, failed });
    }

    /// The deployer: packages and approves the next version, pushes dev → prod, and rolls an
    /// environment back when a target refused its version.
    fn deploy(&mut self) {
        let st = self.server.ledger.state();
        let (id, base, now) = (st.ledger_id(), st.len(), self.now);
        let sign =
            |actor: &str, key: &SecretKey, body: Body| Statement::sign(&id, actor, base, now, body, key);
        let mut out = Vec::new();
        let latest =
            st.latest_package().map(|p| (p.package.version, p.package.tarball.blake3, st.is_approved(p)));
        match latest {
            Some((v, h, false)) => out.push(sign(
                "carol",
                &self.carol,
                Body::Approve(Approve { version: v, package: h, reason: "ok".into() }),
            )),
            Some((v, h, true)) if pd_ledger::adoption::check_promotion(st, "dev", v, &h).is_ok() => {
                out.push(sign("admin", &self.admin, pd_ledger::testkit::push("dev", v, h)))
            }
            Some((v, h, true)) if pd_ledger::adoption::check_promotion(st, "prod", v, &h).is_ok() => {
                out.push(sign("admin", &self.admin, pd_ledger::testkit::push("prod", v, h)))
            }
            _ if self.versions < 8 && self.rng.percent(30) => {
                self.versions += 1;
                let v = Version::new(1, self.versions, 0);
                out.push(sign("admin", &self.admin, package(v, Hash::of(format!("v{v}").as_bytes()))));
            }
            _ => {}
        }
        // A refused version is rolled back where it is desired, to the one before it.
        for env in ["dev", "prod"] {
            let a = adoption(st, env, SET);
            let Some(d) = a.desired.as_ref().filter(|_| !a.failed().is_empty()) else { continue };
            let slot = st.slot(env, SET).expect("pushed");
            let back = slot.history().iter().rev().find(|h| {
                h.version < d.version
                    && !self.agents.iter().any(|t| t.env == env && t.refuses.contains(&h.version))
            });
            if let Some(b) = back {
                let body = Body::Rollback(Rollback {
                    env: env.into(),
                    version: b.version,
                    package: b.package,
                    reason: format!("{:?} refused it", a.failed()),
                });
                out.push(sign("admin", &self.admin, body));
            }
        }
        self.server.queue.extend(out.into_iter().map(|s| (None, s)));
    }

    /// No agent runs what its environment never had desired, or what was never approved.
    fn check_installs(&self) {
        let st = self.server.ledger.state();
        for a in &self.agents {
            let Some((v, h)) = a.running else { continue };
            let desired_here = st
                .slot(a.env, SET)
                .is_some_and(|s| s.history().iter().any(|d| d.version == v && d.package == h));
            let approved = st.package(v).is_some_and(|p| st.is_approved(p) && p.package.tarball.blake3 == h);
            assert!(
                desired_here && approved,
                "seed {}: {} runs {v}, which {} never had desired (or was not approved)",
                self.seed,
                a.name,
                a.env
            );
        }
    }

    /// The ledger replays from its store with every signature checked.
    fn check_ledger(&self) {
        let bytes: Vec<Vec<u8>> = self.server.store.scan(0).map(|b| b.expect("read")).collect();
        if let Err(e) = pd_ledger::replay(bytes.iter().map(Vec::as_slice), Signatures::Verify) {
            panic!("seed {}: the ledger does not verify: {e}", self.seed);
        }
    }

    /// Faults off: runs until every deploy converged or failed by name.
    fn settle(&mut self) {
        self.faults = false;
        self.server.store.failing.store(false, Ordering::Relaxed);
        for _ in 0..CALM_STEPS {
            self.step();
            if self.settled() {
                return;
            }
        }
        let st = self.server.ledger.state();
        let report: Vec<_> = ["dev", "prod"].iter().map(|e| (e, adoption(st, e, SET))).collect();
        let agents: Vec<_> = self
            .agents
            .iter()
            .map(|a| {
                let step = agent_step(a.follower.state(), &a.name, a.env, SET, AgentView { running: a.running, acked: a.acked, failed: a.failed });
                format!(
                    "{} running {:?} acked {:?} failed {:?} acking {:?} need {:?} checkpoint {:?} control {}: {step:?}",
                    a.name, a.running.map(|r| r.0), a.acked, a.failed, a.acking, a.need, a.follower.checkpoint().map(|c| c.0), a.follower.control_len()
                )
            })
            .collect();
        panic!(
            "seed {}: did not settle in {CALM_STEPS} calm steps: {report:?}\nserver: {} entries, {} control, checkpoint {:?}\n{}",
            self.seed,
            st.len(),
            st.control_len(),
            st.latest_checkpoint().map(|c| c.checkpoint.size),
            agents.join("\n")
        );
    }

    fn settled(&self) -> bool {
        if !self.net.is_empty() || !self.server.queue.is_empty() {
            return false;
        }
        let st = self.server.ledger.state();
        ["dev", "prod"].iter().all(|env| {
            let a = adoption(st, env, SET);
            a.desired.is_none() || a.waiting().is_empty() && (a.adopted() || !a.failed().is_empty())
        })
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    for step in 0..FAULT_STEPS {
        sim.step();
        if step % 100 == 0 {
            sim.check_ledger();
        }
    }
    sim.settle();
    sim.check_ledger();
    let st = sim.server.ledger.state();
    assert!(
        st.desired("dev", SET).is_some(),
        "seed {seed}: the deployer never pushed: the simulation tested nothing"
    );
    // What the run did, for whoever reads the output: entries by kind, in one pass.
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for bytes in sim.server.store.scan(0) {
        let e = pd_ledger::SignedEntry::decode(&bytes.expect("read")).expect("a stored entry decodes");
        *kinds.entry(e.entry.body.kind()).or_default() += 1;
    }
    let kinds = |k: &str| kinds.get(k).copied().unwrap_or(0);
    eprintln!(
        "seed {seed}: {} entries: {} pushes, {} rollbacks, {} acks, {} checkpoints; dev {:?}, prod {:?}; \
         injected: {:?} (dropped, agent restarts, server restarts, failed writes)",
        st.len(),
        kinds("push"),
        kinds("rollback"),
        kinds("ack"),
        kinds("checkpoint"),
        st.desired("dev", SET).map(|d| d.version),
        st.desired("prod", SET).map(|d| d.version),
        sim.injected,
    );
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("PD_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    match std::env::var("PD_SIM_SEEDS").ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(k) => {
            let mut r = Rng(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64));
            (0..k).map(|_| r.next()).collect()
        }
        None => FIXED_SEEDS.to_vec(),
    }
}

#[test]
fn a_fleet_under_faults_runs_only_authorized_versions_and_every_deploy_settles() {
    for seed in seeds() {
        if let Err(e) = std::panic::catch_unwind(|| run(seed)) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!(
                "simulation seed {seed} failed: {}\nrerun it: PD_SIM_SEED={seed} cargo test -p pd-server --test simulation",
                why.unwrap_or_default()
            );
        }
    }
}
