//! `pd agent`: follows one environment beside a target and converges each policy set it
//! follows to the desired version.
//!
//! The agent keeps its own replica of the ledger and checks what it receives with the same
//! rules and signatures as everyone else, so a server cannot make it run anything the ledger
//! does not authorize. A full replica ([`Replica::Full`]) receives and checks every entry; a
//! light one ([`Replica::Light`], `pd agent --light`) only the control entries and the newest
//! checkpoint, whose signed control commitment binds them (see `pd_ledger::partial`), so its
//! work per wave does not grow with the fleet. For the desired version it fetches the tarball by hash, checks BLAKE3,
//! SHA-256, size and the author's OpenPGP signature, unpacks it into `DIR/versions/<ver>`,
//! composes `DIR/views/<id>` from every set's running files, swaps the `DIR/current` symlink
//! to it atomically, asks the target to reload, and only after the target said yes signs a
//! `loaded` ack. What it verified to be wrong, or the target refused, is acked `failed` with
//! the reason, and the previous view stays current; what only failed to arrive (the server,
//! a store) is retried with backoff and never reported as a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use pd_ledger::adoption::{self, AgentView, Step};
use pd_ledger::heartbeat::{Heartbeat, Running};
use pd_ledger::merkle::{verify_consistency, Sha256};
use pd_ledger::partial::Follower;
use pd_ledger::state::Desired;
use pd_ledger::{
    Ack, Body, Hash, Ledger, LedgerError, LedgerStore, Outcome, SecretKey, SignedEntry, State, Version,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::{Client, ClientError};

/// How the agent tells its target to load a new policy.
#[derive(Clone, Debug)]
pub enum Reload {
    /// `POST <url>?ver=PD-x.y.z` (the seed's webhook); non-2xx is a failed load.
    Url(String),
    /// `sh -c <cmd>` with `PD_VERSION` and `PD_POLICY_DIR` set; non-zero is a failed load.
    Command(String),
    /// Nothing to notify: the files in `DIR/current` are the deployment.
    None,
}

/// Everything an agent needs.
pub struct AgentConfig {
    /// The server.
    pub client: Client,
    /// The environment followed.
    pub env: String,
    /// The target key's name in the ledger.
    pub actor: String,
    /// The target key.
    pub key: SecretKey,
    /// Where versions, the `current` view and the agent's own state live.
    pub dir: PathBuf,
    /// How to notify the target.
    pub reload: Reload,
    /// Where artifacts come from.
    pub objects: Objects,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
    /// The service's health URL: each heartbeat says whether it answered with a 2xx.
    pub health_url: Option<String>,
    /// "Now", for statements and heartbeats ([`crate::system_clock`] outside tests).
    pub clock: crate::Clock,
    /// Randomness, for the pauses between reconnects ([`crate::system_random`]).
    pub random: crate::Random,
}

/// Where an agent fetches artifacts by content hash. Whatever the source, the agent checks
/// the bytes against the hashes and the OpenPGP signature in the ledger itself.
#[derive(Clone)]
pub enum Objects {
    /// The server it follows.
    Server,
    /// An S3 bucket prefix (`objects/<blake3 hex>` under it).
    S3(Arc<crate::s3::S3Store>),
    /// A plain HTTP(S) base: `GET <base>/<blake3 hex>`.
    Http(String),
}

impl Objects {
    /// `s3://bucket/prefix` or an `http(s)://` base URL.
    pub fn parse(spec: &str) -> Result<Objects> {
        if spec.starts_with("s3://") {
            Ok(Objects::S3(Arc::new(crate::s3::S3Store::open(spec)?)))
        } else if spec.starts_with("http://") || spec.starts_with("https://") {
            Ok(Objects::Http(spec.trim_end_matches('/').to_string()))
        } else {
            bail!("--objects {spec:?}: give s3://bucket/prefix or an http(s):// base URL")
        }
    }
}

/// What the agent remembers across restarts (`DIR/agent.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Local {
    /// What the target runs per policy set, after a successful reload.
    #[serde(default)]
    running: BTreeMap<String, (Version, Hash)>,
    /// The newest checkpoint this agent verified (size, root): every later ledger it
    /// follows must extend it.
    #[serde(default)]
    checkpoint: Option<(u64, Hash)>,
    /// Per set, the desired entry (seq) this agent acked loaded, so a restarted light agent,
    /// which never sees acks, does not ack again.
    #[serde(default)]
    acked: BTreeMap<String, u64>,
}

/// What the agent verifies the ledger with.
pub enum Replica<S: LedgerStore> {
    /// Every entry, checked with the rule and its signature (and kept in `S`): what auditors
    /// and deployers hold.
    Full(Box<Ledger<S>>),
    /// Control entries and checkpoints only, kept in memory and fetched again at start.
    Light(Box<Follower>),
}

impl<S: LedgerStore> Replica<S> {
    /// The state the install rule decides over.
    pub fn state(&self) -> &State {
        match self {
            Replica::Full(l) => l.state(),
            Replica::Light(f) => f.state(),
        }
    }

    /// The active key whose public half is `public_key`, as this replica verified it.
    pub fn key(&self, public_key: &pd_ledger::PublicKey) -> Option<&pd_ledger::KeyDecl> {
        match self {
            Replica::Full(l) => l.state().active_key_by_public(public_key).map(|k| &k.decl),
            Replica::Light(f) => f.key(public_key),
        }
    }

    /// How much of the ledger it verified: its length, or for a light replica the newest
    /// checkpoint's size if that is further. A statement's base.
    pub fn verified_len(&self) -> u64 {
        match self {
            Replica::Full(l) => l.state().len(),
            Replica::Light(f) => f.checkpoint().map_or(0, |c| c.0).max(f.state().len()),
        }
    }
}

/// What an agent reports about itself, in its heartbeats and on `/healthz`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The ledger followed (zero before the first sync).
    pub ledger_id: Hash,
    /// Entries in the verified replica.
    pub replica_len: u64,
    /// What the target runs, by set.
    pub running: Vec<Running>,
    /// Whether the agent is connected to the server and its replica verified.
    pub following: bool,
    /// Bytes of ledger data received since start (entries, pages, checkpoints, proofs).
    pub received_bytes: u64,
    /// Entry and checkpoint signatures verified since start.
    pub verified_signatures: u64,
    /// The followed sets whose desired version the target does not run, with why.
    pub behind: BTreeMap<String, String>,
}

impl Status {
    /// Healthy: it follows the server and the target runs what every followed set desires.
    pub fn healthy(&self) -> bool {
        self.following && self.behind.is_empty()
    }
}

/// The server's ledger cannot be trusted: it does not verify, or it does not extend a
/// checkpoint this agent verified before. The agent stops rather than follow it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(String);

/// Whether an agent error means the server's ledger is untrustworthy (so retrying is moot).
fn is_untrusted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Untrusted>()
            || matches!(
                c.downcast_ref::<LedgerError>(),
                Some(LedgerError::Refused(_) | LedgerError::Corrupt(_))
            )
            || matches!(
                c.downcast_ref::<ClientError>(),
                Some(
                    ClientError::Diverged(_)
                        | ClientError::Ledger(LedgerError::Refused(_) | LedgerError::Corrupt(_))
                )
            )
    })
}

/// A running agent over a replica kept in `S`.
pub struct Agent<S: LedgerStore> {
    cfg: AgentConfig,
    replica: Replica<S>,
    local: Local,
    http: reqwest::Client,
    /// A light agent waits for a checkpoint over more than this many entries (its desired
    /// entry's seq), as well as for control entries.
    need: Option<u64>,
    /// Per set, the desired entry it failed to load and the seq of its failed ack. Kept in
    /// memory only: a restarted agent tries again.
    failed: BTreeMap<String, (u64, u64)>,
    status: watch::Sender<Status>,
}

const STATE_FILE: &str = "agent.json";

/// Most of a reload webhook's error answer read (its first 300 characters are reported).
const RELOAD_ERROR_BYTES: u64 = 64 * 1024;

impl<S: LedgerStore> Agent<S> {
    /// An agent over `replica` (empty or from an earlier run), resuming `DIR/agent.json`.
    pub fn new(cfg: AgentConfig, replica: Replica<S>) -> Result<Agent<S>> {
        std::fs::create_dir_all(cfg.dir.join("versions"))
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let path = cfg.dir.join(STATE_FILE);
        let local = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Local::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let http = crate::tls::client_builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(crate::limits::CLIENT_POOL_IDLE)
            .build()?;
        let (status, _) = watch::channel(Status::default());
        Ok(Agent { cfg, replica, local, http, need: None, failed: BTreeMap::new(), status })
    }

    /// The version the target runs of `set`, as far as this agent knows.
    pub fn running(&self, set: &str) -> Option<Version> {
        self.local.running.get(set).map(|(v, _)| *v)
    }

    /// What the agent says about itself, updated as it goes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    fn running_text(&self) -> String {
        if self.local.running.is_empty() {
            return "nothing".into();
        }
        self.local.running.iter().map(|(s, (v, _))| format!("{s} {v}")).collect::<Vec<_>>().join(", ")
    }

    /// Follows the server until `stop` turns true: catch up, converge, then wait for events
    /// (reconnecting after a growing, jittered pause when the server or a store fails), and
    /// sends a heartbeat every interval meanwhile.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let beats = tokio::spawn(heartbeats(
            self.cfg.clock.clone(),
            self.cfg.client.clone(),
            self.cfg.actor.clone(),
            SecretKey::from_seed(self.cfg.key.seed()),
            (self.cfg.heartbeat, self.cfg.health_url.clone()),
            self.status.subscribe(),
            stop.clone(),
        ));
        let mut pause = Duration::from_millis(100);
        let outcome = loop {
            if *stop.borrow() {
                break Ok(());
            }
            let followed = self.follow(&mut stop).await;
            self.status.send_modify(|s| s.following = false);
            match followed {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) if is_untrusted(&e) => {
                    break Err(e.context(format!(
                        "refusing to follow the server's ledger: it is forked, rewritten or tampered with; \
                         {} stays on {}",
                        self.cfg.actor,
                        self.running_text()
                    )))
                }
                Err(e) => {
                    let wait = full_jitter(pause, (self.cfg.random)());
                    tracing::warn!(env = %self.cfg.env, "agent: {e:#}; retrying in {wait:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {},
                        _ = stop.changed() => {},
                    }
                    pause = (pause * 2).min(RECONNECT_CEILING);
                }
            }
        };
        beats.abort();
        outcome
    }

    /// One connection: sync, converge, and follow until the server goes away.
    async fn follow(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let Replica::Full(replica) = &mut self.replica else { return self.follow_light(stop).await };
        self.cfg.client.sync(replica, None).await?;
        self.touch();
        self.status.send_modify(|s| s.following = true);
        self.converge().await?;
        let events = match self.cfg.client.events(self.replica.state().len()).await {
            Ok(events) => events,
            Err(ClientError::Refused { status, message }) => {
                tracing::warn!(env = %self.cfg.env, "no event stream ({status} {message}); polling instead");
                return self.poll(stop).await;
            }
            Err(e) => return Err(e.into()),
        };
        // Whatever has arrived is taken together: one batch check of the signatures.
        let mut events = Box::pin(events.ready_chunks(1024));
        loop {
            let batch = tokio::select! {
                batch = events.next() => batch,
                _ = stop.changed() => return Ok(()),
            };
            let Some(batch) = batch else { bail!("the event stream ended") };
            let mut fresh = Vec::with_capacity(batch.len());
            let mut relevant = false;
            let mut last = None;
            let mut received = 0;
            for ev in batch {
                let ev = ev?;
                let next = self.replica.state().len() + fresh.len() as u64;
                if ev.seq == next {
                    let bytes = hex::decode(&ev.entry).map_err(|e| anyhow!("event {}: {e}", ev.seq))?;
                    received += bytes.len() as u64;
                    fresh.push(SignedEntry::decode(&bytes)?);
                }
                let ours = ev.env.as_deref() == Some(self.cfg.env.as_str());
                relevant |= ours && ev.kind != "ack"
                    || matches!(
                        ev.kind.as_str(),
                        "key_add" | "key_rotate" | "key_revoke" | "key_approve" | "checkpoint"
                    );
                last = Some(ev.seq);
            }
            let Replica::Full(replica) = &mut self.replica else {
                unreachable!("a full replica follows events")
            };
            replica.append_batch(&fresh)?;
            if let Some(last) = last.filter(|l| *l >= replica.state().len()) {
                // A gap in the stream: fetch what is missing.
                self.cfg.client.sync(replica, Some(last + 1)).await?;
            }
            self.count(received, fresh.len() as u64);
            self.touch();
            if relevant {
                self.converge().await?;
            }
        }
    }

    /// Follows by long-polling the head, for servers or proxies without event streams.
    async fn poll(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        loop {
            let len = self.replica.state().len();
            let head = tokio::select! {
                head = self.cfg.client.head_after(len, Duration::from_secs(25)) => head?,
                _ = stop.changed() => return Ok(()),
            };
            self.touch();
            if head.len > len {
                let Replica::Full(replica) = &mut self.replica else { unreachable!("a full replica polls") };
                self.cfg.client.sync(replica, Some(head.len)).await?;
                self.converge().await?;
            }
        }
    }

    /// A light agent: long-polls `GET /v1/control`, which answers when control entries come
    /// or, while its desired entry waits for one, a checkpoint; a wave of acks wakes nobody.
    async fn follow_light(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let mut wait = Duration::ZERO;
        loop {
            let Replica::Light(f) = &mut self.replica else { unreachable!("a light replica") };
            // The checkpoint this agent verified and kept (across restarts too) is what the
            // server's newest must extend, whatever the follower was started from.
            let held = self.local.checkpoint;
            let (after, need, me) = (f.control_len(), self.need, self.cfg.key.public());
            // Its own key's enrolment is asked for until verified.
            let asks = f.key(&me).is_none().then_some(&me);
            let has = f.checkpoint().is_some() && f.checkpoint() == held;
            let page = tokio::select! {
                page = self.cfg.client.control(asks, after, (held.map_or(0, |c| c.0), has), need, wait) => page?,
                _ = stop.changed() => return Ok(()),
            };
            let signatures =
                page.entries.len() as u64 + u64::from(page.checkpoint.is_some()) + page.own.len() as u64;
            let caught_up = crate::client::apply_page(f, &page, &me, held)?;
            let verified = f.checkpoint();
            self.count(page.bytes as u64, signatures);
            if verified != self.local.checkpoint {
                self.local.checkpoint = verified;
                self.save()?;
            }
            self.touch();
            self.status.send_modify(|s| s.following = true);
            if caught_up {
                self.converge().await?;
            }
            wait = if caught_up { LONG_POLL } else { Duration::ZERO };
        }
    }

    fn count(&self, bytes: u64, signatures: u64) {
        self.status.send_modify(|s| {
            s.received_bytes += bytes;
            s.verified_signatures += signatures;
        });
    }

    /// Records the replica's ledger and length for heartbeats.
    fn touch(&self) {
        let (id, len) = (self.replica.state().ledger_id(), self.replica.verified_len());
        self.status.send_modify(|s| {
            s.ledger_id = id;
            s.replica_len = len;
        });
    }

    /// The policy sets this target follows: those its key names, or every set there is.
    fn sets(&self) -> Result<Vec<String>> {
        let decl = self
            .replica
            .key(&self.cfg.key.public())
            .filter(|d| d.name == self.cfg.actor)
            .ok_or_else(|| anyhow!("{} is not an active key of this ledger", self.cfg.actor))?;
        Ok(match decl.sets.is_empty() {
            true => self.replica.state().sets().into_iter().map(String::from).collect(),
            false => decl.sets.clone(),
        })
    }

    /// Brings every followed set to its desired version, as the install rule
    /// ([`pd_ledger::adoption::agent_step`]) says, and makes sure the ledger knows. Transient
    /// trouble (the server, a store) propagates, to be retried; a version that does not
    /// verify or that the target refuses is acked `failed`.
    pub async fn converge(&mut self) -> Result<()> {
        self.publish_running();
        if let Replica::Full(replica) = &self.replica {
            let held = check_checkpoints(replica, self.local.checkpoint)?;
            if held != self.local.checkpoint {
                self.local.checkpoint = held;
                self.save()?;
            }
        }
        self.need = None;
        let sets = self.sets()?;
        self.status.send_modify(|s| s.behind.retain(|set, _| sets.contains(set)));
        for set in sets {
            let view = AgentView {
                running: self.local.running.get(&set).copied(),
                acked: self.local.acked.get(&set).copied(),
                failed: self.failed.get(&set).copied(),
            };
            let step = adoption::agent_step(self.replica.state(), &self.cfg.actor, &self.cfg.env, &set, view);
            // What /healthz says is set before the ledger hears of it, so nobody who read an
            // ack sees an older health.
            match step {
                Step::Idle | Step::Done | Step::Queued(_) => self.behind(&set, None),
                Step::Failed(d) => self.behind(&set, Some(format!("failed to load {}", d.version))),
                Step::AwaitCheckpoint(d) => {
                    self.need = Some(self.need.map_or(d.seq, |n| n.min(d.seq)));
                    tracing::info!(env = %self.cfg.env, %set, version = %d.version, "waiting for a checkpoint over entry #{}", d.seq);
                    self.behind(&set, Some(format!("{} waits for a checkpoint over #{}", d.version, d.seq)));
                }
                Step::Ack(d) => {
                    self.behind(&set, None);
                    self.ack(&set, &d, Outcome::Loaded).await?;
                }
                Step::Refuse(d, why) => {
                    self.behind(&set, Some(why.clone()));
                    self.ack(&set, &d, Outcome::Failed(why)).await?;
                }
                Step::Install(d) => {
                    self.behind(&set, Some(format!("installing {}", d.version)));
                    match self.adopt(&set, &d).await {
                        Ok(()) => {
                            self.local.running.insert(set.clone(), (d.version, d.package));
                            self.save()?;
                            tracing::info!(env = %self.cfg.env, %set, version = %d.version, "loaded");
                            self.publish_running();
                            self.behind(&set, None);
                            self.ack(&set, &d, Outcome::Loaded).await?;
                        }
                        Err(Adopt::Transport(e)) => return Err(e),
                        Err(Adopt::Refused(why)) => {
                            tracing::warn!(env = %self.cfg.env, %set, version = %d.version, "refused: {why}");
                            self.behind(&set, Some(format!("failed to load {}: {why}", d.version)));
                            self.ack(&set, &d, Outcome::Failed(why)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Records on the status why the target does not run `set`'s desired version (`None`: it does).
    fn behind(&self, set: &str, why: Option<String>) {
        self.status.send_modify(|s| match why {
            Some(why) => drop(s.behind.insert(set.to_string(), why)),
            None => drop(s.behind.remove(set)),
        });
    }

    fn publish_running(&self) {
        let running = self
            .local
            .running
            .iter()
            .map(|(set, (version, package))| Running {
                set: set.clone(),
                version: *version,
                package: *package,
            })
            .collect();
        self.status.send_modify(|s| s.running = running);
    }

    /// Signs and sends an ack of `desired` of `set` as a statement based on what this replica
    /// verified. The server sequences it without this agent catching up first, so a thousand
    /// targets acking at once are committed in groups; the replica learns of it from the stream.
    /// Any version it loaded is acked, even one a newer entry superseded meanwhile.
    async fn ack(&mut self, set: &str, desired: &Desired, outcome: Outcome) -> Result<()> {
        let failed = matches!(outcome, Outcome::Failed(_));
        let body = Body::Ack(Ack {
            env: self.cfg.env.clone(),
            version: desired.version,
            package: desired.package,
            outcome,
        });
        let (c, id) = (&self.cfg, self.replica.state().ledger_id());
        let base = self.replica.verified_len();
        match c.client.append_blind(&id, base, &c.actor, &c.key, (c.clock)(), body).await {
            Ok(receipt) if failed => {
                self.failed.insert(set.to_string(), (desired.seq, receipt.seq));
                Ok(())
            }
            Ok(_) => {
                self.local.acked.insert(set.to_string(), desired.seq);
                self.save()
            }
            // The rules refused it (a key change came first, say). The next event brings
            // this agent up to date and it converges again.
            Err(ClientError::Refused { status: 403, message }) => {
                tracing::warn!(env = %c.env, "ack of {} refused: {message}", desired.version);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches, verifies, unpacks, switches and reloads one version of `set`.
    async fn adopt(&mut self, set: &str, desired: &Desired) -> Result<(), Adopt> {
        let st = self.replica.state();
        let pkg = st
            .package_by_hash(&desired.package)
            .ok_or_else(|| Adopt::refused(format!("no package {} in the ledger", desired.package.short())))?
            .clone();
        let cert = st
            .package_cert(&pkg)
            .map(str::to_string)
            .ok_or_else(|| Adopt::refused(format!("the author {} has no OpenPGP certificate", pkg.author)))?;
        let bytes = self.fetch(&desired.package, pkg.package.tarball.size).await?;
        let t = &pkg.package.tarball;
        let digest = pd_store::ArtifactDigest::of(&bytes);
        if digest.blake3 != t.blake3.0 || digest.sha256 != t.sha256.0 || digest.size != t.size {
            return Err(Adopt::refused("the artifact does not match the hashes in its package entry"));
        }
        pd_store::openpgp::verify_detached(&cert, &bytes, &pkg.package.openpgp_sig)
            .map_err(|e| Adopt::refused(format!("OpenPGP signature: {e}")))?;
        let version = desired.version;
        let dir = self.cfg.dir.clone();
        let mut running = self.local.running.clone();
        running.insert(set.to_string(), (version, desired.package));
        let view = tokio::task::spawn_blocking(move || -> Result<PathBuf> {
            install(&dir, version, &bytes)?;
            compose(&dir, &running)
        })
        .await
        .map_err(|e| Adopt::refused(e.to_string()))?
        .map_err(|e| Adopt::refused(format!("installing: {e:#}")))?;
        let previous = std::fs::read_link(self.cfg.dir.join("current")).ok();
        switch(&self.cfg.dir, &view).map_err(|e| Adopt::refused(format!("switching: {e:#}")))?;
        if let Err(why) = self.reload(set, version).await {
            if let Some(prev) = previous {
                let _ = switch(&self.cfg.dir, &prev);
            }
            return Err(Adopt::refused(format!("the target did not load it: {why}")));
        }
        prune_views(&self.cfg.dir, &view, previous.as_deref());
        Ok(())
    }

    /// The artifact `hash` (of `size` bytes, as its package entry says) from the configured
    /// source; the caller checks its hashes. Anything that keeps the bytes from arriving is
    /// transient and retried; only bytes that arrived and are wrong are the package's fault.
    async fn fetch(&self, hash: &Hash, size: u64) -> Result<Vec<u8>, Adopt> {
        let h = *hash;
        let bytes = match &self.cfg.objects {
            Objects::Server => match self.cfg.client.get_object(hash, size).await {
                Ok(b) => b,
                Err(ClientError::Malformed { problem, .. }) => {
                    return Err(Adopt::refused(format!("the server sent a wrong artifact: {problem}")))
                }
                Err(e @ ClientError::TooLarge { .. }) => return Err(Adopt::refused(e)),
                Err(e) => return Err(Adopt::Transport(anyhow!("fetching the artifact: {e}"))),
            },
            Objects::S3(s3) => {
                let s3 = s3.clone();
                match tokio::task::spawn_blocking(move || s3.get_at_most(&h.0, size)).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e @ pd_store::StoreError::TooLarge { .. })) => {
                        return Err(Adopt::refused(format!("the artifact in S3: {e}")))
                    }
                    Ok(Err(e)) => {
                        return Err(Adopt::Transport(anyhow!("fetching the artifact from S3: {e}")))
                    }
                    Err(e) => return Err(Adopt::Transport(e.into())),
                }
            }
            Objects::Http(base) => self.fetch_http(base, hash, size).await?,
        };
        if bytes.len() as u64 != size {
            return Err(Adopt::refused(format!(
                "the artifact is {} bytes, its package entry says {size}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// `GET <base>/<hash>`, refused as soon as it is known to pass `size` bytes.
    async fn fetch_http(&self, base: &str, hash: &Hash, size: u64) -> Result<Vec<u8>, Adopt> {
        let url = format!("{base}/{}", hash.to_hex());
        let transport = |e: reqwest::Error| Adopt::Transport(anyhow!("fetching {url}: {e}"));
        let too_large = || {
            Adopt::refused(format!(
                "{url} sent more than {}, the size its package entry records; refusing it",
                crate::limits::human_bytes(size)
            ))
        };
        let resp = self.http.get(&url).send().await.and_then(|r| r.error_for_status()).map_err(transport)?;
        if resp.content_length().is_some_and(|n| n > size) {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(size as usize);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport)?;
            if (out.len() + chunk.len()) as u64 > size {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn reload(&self, set: &str, version: Version) -> Result<(), String> {
        match &self.cfg.reload {
            Reload::None => Ok(()),
            Reload::Url(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let resp = self
                    .http
                    .post(format!("{url}{sep}ver={version}&set={set}"))
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                if resp.status().is_success() {
                    return Ok(());
                }
                let status = resp.status();
                // The start of its answer says why; a longer one is not read.
                let text = crate::client::body_within(resp, RELOAD_ERROR_BYTES).await.ok().flatten();
                let text = String::from_utf8_lossy(text.as_deref().unwrap_or_default()).into_owned();
                Err(format!("{status} {}", text.trim()).chars().take(300).collect())
            }
            Reload::Command(cmd) => {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("PD_VERSION", version.to_string())
                    .env("PD_POLICY_SET", set)
                    .env("PD_POLICY_DIR", self.cfg.dir.join("current"))
                    .output()
                    .await
                    .map_err(|e| format!("{cmd}: {e}"))?;
                if out.status.success() {
                    return Ok(());
                }
                let err = String::from_utf8_lossy(&out.stderr);
                Err(format!("{cmd}: {} {}", out.status, err.trim()).chars().take(300).collect())
            }
        }
    }

    fn save(&self) -> Result<()> {
        let path = self.cfg.dir.join(STATE_FILE);
        let tmp = self.cfg.dir.join(".agent.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.local)?;
        let f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Serves `GET /healthz` for supervisors until `stop`: 200 while the agent follows the
/// server and the target runs the desired version of every set it follows, else 503; the
/// body is the agent's [`Status`] as JSON either way.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<Status>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let s = status.borrow().clone();
            let code = if s.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            async move { (code, axum::Json(serde_json::json!({ "healthy": s.healthy(), "status": s }))) }
        }),
    );
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// A pause drawn uniformly from `[0, ceiling]` ("full jitter"), the ceiling doubling per
/// failure up to [`RECONNECT_CEILING`]: a fleet that lost its server comes back spread over
/// the whole window, not in step.
fn full_jitter(ceiling: Duration, random: u64) -> Duration {
    ceiling.mul_f64(random as f64 / u64::MAX as f64)
}

/// Holds a full replica to the newest checkpoint this agent verified before (`held`): the
/// newest checkpoint now must extend it (an RFC 9162 consistency proof over the replica's
/// tree); returns the one to hold later ledgers to.
fn check_checkpoints<S: LedgerStore>(
    replica: &Ledger<S>,
    held: Option<(u64, Hash)>,
) -> Result<Option<(u64, Hash)>> {
    let (st, tree) = (replica.state(), replica.tree());
    let Some(latest) = st.latest_checkpoint().map(|c| (c.checkpoint.size, c.checkpoint.root)) else {
        if let Some((size, _)) = held.filter(|(size, _)| st.len() >= *size) {
            return Err(Untrusted(format!(
                "the server's ledger has no checkpoint, but this agent verified one of {size} entries"
            ))
            .into());
        }
        return Ok(held);
    };
    if let Some((size, root)) = held.filter(|h| *h != latest) {
        let holds = latest.0 >= size
            && tree.consistency_proof(size, latest.0).is_ok_and(|proof| {
                verify_consistency::<Sha256>(size, latest.0, &proof, &root.0, &latest.1 .0).is_ok()
            });
        if !holds {
            return Err(Untrusted(format!(
                "the server's newest checkpoint ({} entries, root {}) does not extend the one this agent \
                 verified before ({size} entries, root {root})",
                latest.0, latest.1
            ))
            .into());
        }
    }
    Ok(Some(latest))
}

/// How long a light agent's long poll waits for news.
const LONG_POLL: Duration = Duration::from_secs(25);

/// The longest pause between reconnects.
const RECONNECT_CEILING: Duration = Duration::from_secs(5);

/// Sends a signed heartbeat every `interval` with what `status` says and, with a health
/// URL, whether the service answers it with a 2xx (within a second), until `stop`.
async fn heartbeats(
    clock: crate::Clock,
    client: Client,
    target: String,
    key: SecretKey,
    (interval, health_url): (Duration, Option<String>),
    status: watch::Receiver<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let probe = crate::tls::client_builder().timeout(Duration::from_secs(1)).build().ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.changed() => return,
        }
        let s = status.borrow().clone();
        if s.ledger_id == Hash::ZERO {
            continue;
        }
        let healthy = match (&health_url, &probe) {
            (Some(url), Some(http)) => {
                Some(http.get(url).send().await.is_ok_and(|r| r.status().is_success()))
            }
            (Some(_), None) => Some(false),
            (None, _) => None,
        };
        let hb = Heartbeat {
            ledger_id: s.ledger_id,
            target: target.clone(),
            time_ms: clock(),
            interval_ms: interval.as_millis() as u64,
            running: s.running,
            replica_len: s.replica_len,
            healthy,
        }
        .sign(&key);
        if let Err(e) = client.heartbeat(&hb).await {
            tracing::debug!("heartbeat: {e}");
        }
    }
}

enum Adopt {
    /// The server or artifact source failed: try again later, report nothing.
    Transport(anyhow::Error),
    /// The version cannot be adopted: report it with this reason.
    Refused(String),
}

impl Adopt {
    fn refused(why: impl std::fmt::Display) -> Adopt {
        Adopt::Refused(why.to_string())
    }
}

/// Unpacks a verified tarball into `DIR/versions/<version>` (kept if already there: a
/// version's bytes never change).
fn install(dir: &Path, version: Version, bytes: &[u8]) -> Result<()> {
    let versions = dir.join("versions");
    let target = versions.join(version.to_string());
    if target.is_dir() {
        return Ok(());
    }
    let tmp = versions.join(format!(".tmp-{version}"));
    let _ = std::fs::remove_dir_all(&tmp);
    pd_store::tarball::unpack(bytes, &tmp, &pd_store::Limits::default())?;
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

/// Builds the view the target reads: every followed set's running files side by side in
/// `DIR/views/<id>` (hard links into `DIR/versions`; the ledger gives each path to one set,
/// so they never collide). Returns its path relative to `DIR`.
fn compose(dir: &Path, running: &BTreeMap<String, (Version, Hash)>) -> Result<PathBuf> {
    let mut h = blake3::Hasher::new();
    for (set, (v, _)) in running {
        h.update(format!("{set}={v};").as_bytes());
    }
    let name = PathBuf::from("views").join(&h.finalize().to_hex()[..16]);
    let view = dir.join(&name);
    if view.is_dir() {
        return Ok(name);
    }
    let tmp = dir.join("views").join(".tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for (v, _) in running.values() {
        link_tree(&dir.join("versions").join(v.to_string()), &tmp)?;
    }
    std::fs::rename(&tmp, &view)?;
    Ok(name)
}

fn link_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&dst)?;
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Removes views other than the current and the previous one.
fn prune_views(dir: &Path, current: &Path, previous: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(dir.join("views")) else { return };
    for e in entries.flatten() {
        let name = PathBuf::from("views").join(e.file_name());
        if name != current && Some(name.as_path()) != previous {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Points `DIR/current` at `view` (relative to `DIR`) atomically (symlink + rename).
fn switch(dir: &Path, view: &Path) -> Result<()> {
    let link = dir.join("current");
    let tmp = dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(view, &tmp)?;
    #[cfg(not(unix))]
    bail!("pd agent needs symlinks (unix)");
    std::fs::rename(&tmp, &link)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_spread_over_the_whole_window() {
        let ceiling = Duration::from_secs(4);
        let random = crate::system_random();
        let pauses: Vec<Duration> = (0..400).map(|_| full_jitter(ceiling, random())).collect();
        assert!(pauses.iter().all(|p| *p <= ceiling));
        // 400 uniform draws: each quarter of the window gets some (fails with odds ~1e-49).
        for q in 0..4u32 {
            let (lo, hi) = (ceiling * q / 4, ceiling * (q + 1) / 4);
            assert!(pauses.iter().any(|p| (lo..hi).contains(p)), "nothing in quarter {q}: {pauses:?}");
        }
    }
}
