//! `pd agent`: follows one environment beside a target and converges it to the desired
//! version.
//!
//! The agent keeps its own replica of the ledger and checks every entry with the same rules
//! and signatures as everyone else, so a server cannot make it run anything the ledger does
//! not authorize. For the desired version it fetches the tarball by hash, checks BLAKE3,
//! SHA-256, size and the author's OpenPGP signature, unpacks it into `DIR/versions/<ver>`,
//! swaps the `DIR/current` symlink atomically, asks the target to reload, and only after the
//! target said yes signs a `loaded` ack. Anything it cannot verify or load is acked `failed`
//! with the reason, and the previous version stays current.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use pd_ledger::merkle::{verify_consistency, Sha256};
use pd_ledger::state::{Desired, Via};
use pd_ledger::{
    Ack, Body, Hash, Ledger, LedgerError, LedgerStore, Outcome, SecretKey, SignedEntry, Version,
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
    /// Where versions, the `current` link and the agent's own state live.
    pub dir: PathBuf,
    /// How to notify the target.
    pub reload: Reload,
    /// Where artifacts come from.
    pub objects: Objects,
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
struct Local {
    /// The version the target runs, after a successful reload.
    running: Option<(Version, Hash)>,
    /// The desired entry (seq) this agent already reported as failed.
    failed_seq: Option<u64>,
    /// The newest checkpoint this agent verified (size, root): every later ledger it
    /// follows must extend it.
    #[serde(default)]
    checkpoint: Option<(u64, Hash)>,
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
    replica: Ledger<S>,
    local: Local,
    http: reqwest::Client,
    /// The desired entry (seq) this agent acked and may not see in its replica yet.
    acked: Option<u64>,
}

const STATE_FILE: &str = "agent.json";

impl<S: LedgerStore> Agent<S> {
    /// An agent over `replica` (empty or from an earlier run), resuming `DIR/agent.json`.
    pub fn new(cfg: AgentConfig, replica: Ledger<S>) -> Result<Agent<S>> {
        std::fs::create_dir_all(cfg.dir.join("versions"))
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let path = cfg.dir.join(STATE_FILE);
        let local = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Local::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Agent { cfg, replica, local, http, acked: None })
    }

    /// The version the target runs, as far as this agent knows.
    pub fn running(&self) -> Option<Version> {
        self.local.running.map(|(v, _)| v)
    }

    /// Follows the server until `stop` turns true: catch up, converge, then wait for events
    /// (reconnecting with a growing pause when the server goes away).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut pause = Duration::from_millis(100);
        while !*stop.borrow() {
            match self.follow(&mut stop).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) if is_untrusted(&e) => {
                    return Err(e.context(format!(
                        "refusing to follow the server's ledger: it is forked, rewritten or tampered with; \
                         {} stays on {}",
                        self.cfg.actor,
                        self.running().map_or("nothing".into(), |v| v.to_string())
                    )))
                }
                Err(e) => {
                    tracing::warn!(env = %self.cfg.env, "agent: {e:#}; reconnecting in {pause:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {},
                        _ = stop.changed() => {},
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    /// One connection: sync, converge, and apply events until the stream ends.
    async fn follow(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        self.cfg.client.sync(&mut self.replica, None).await?;
        self.converge().await?;
        let events = match self.cfg.client.events(self.replica.state().len).await {
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
            for ev in batch {
                let ev = ev?;
                let next = self.replica.state().len + fresh.len() as u64;
                if ev.seq == next {
                    let bytes = hex::decode(&ev.entry).map_err(|e| anyhow!("event {}: {e}", ev.seq))?;
                    fresh.push(SignedEntry::decode(&bytes)?);
                }
                let ours = ev.env.as_deref() == Some(self.cfg.env.as_str());
                relevant |= ours && ev.kind != "ack"
                    || matches!(ev.kind.as_str(), "key_add" | "key_revoke" | "checkpoint");
                last = Some(ev.seq);
            }
            self.replica.append_batch(&fresh)?;
            if let Some(last) = last.filter(|l| *l >= self.replica.state().len) {
                // A gap in the stream: fetch what is missing.
                self.cfg.client.sync(&mut self.replica, Some(last + 1)).await?;
            }
            if relevant {
                self.converge().await?;
            }
        }
    }

    /// Follows by long-polling the head, for servers or proxies without event streams.
    async fn poll(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        loop {
            let len = self.replica.state().len;
            let head = tokio::select! {
                head = self.cfg.client.head_after(len, Duration::from_secs(25)) => head?,
                _ = stop.changed() => return Ok(()),
            };
            if head.len > len {
                self.cfg.client.sync(&mut self.replica, Some(head.len)).await?;
                self.converge().await?;
            }
        }
    }

    /// Brings the target to the desired version if it is not there, and makes sure the
    /// ledger knows. Transport errors propagate (retry later); anything else is acked.
    pub async fn converge(&mut self) -> Result<()> {
        self.check_checkpoints()?;
        let st = self.replica.state();
        let Some(desired) = st.env.get(&self.cfg.env).and_then(|e| e.desired.clone()) else {
            return Ok(());
        };
        // Only what a verified checkpoint commits to: the entry that made the version
        // desired (and so its package before it) must be under the newest checkpoint.
        if st.latest_checkpoint().is_none_or(|c| c.checkpoint.size <= desired.seq) {
            tracing::info!(env = %self.cfg.env, version = %desired.version, "waiting for a checkpoint over entry #{}", desired.seq);
            return Ok(());
        }
        if st.active_key(&self.cfg.actor).is_none() {
            bail!("{} is not an active key of this ledger", self.cfg.actor);
        }
        if self.local.running == Some((desired.version, desired.package)) {
            let report = st.env.get(&self.cfg.env).and_then(|e| e.reports.get(&self.cfg.actor));
            let acked = self.acked == Some(desired.seq)
                || report.is_some_and(|r| {
                    r.version == desired.version && r.outcome == Outcome::Loaded && r.seq > desired.seq
                });
            if !acked {
                self.ack(&desired, Outcome::Loaded).await?;
            }
            return Ok(());
        }
        if self.local.failed_seq == Some(desired.seq) {
            return Ok(());
        }
        match self.adopt(&desired).await {
            Ok(()) => {
                self.local.running = Some((desired.version, desired.package));
                self.save()?;
                tracing::info!(env = %self.cfg.env, version = %desired.version, "loaded");
                self.ack(&desired, Outcome::Loaded).await
            }
            Err(Adopt::Transport(e)) => Err(e),
            Err(Adopt::Refused(why)) => {
                tracing::warn!(env = %self.cfg.env, version = %desired.version, "refused: {why}");
                self.local.failed_seq = Some(desired.seq);
                self.save()?;
                self.ack(&desired, Outcome::Failed(why)).await
            }
        }
    }

    /// Holds the replica to the newest checkpoint this agent verified before: the newest
    /// checkpoint now must extend it (an RFC 9162 consistency proof over the replica's tree),
    /// then it becomes the one to hold later ledgers to.
    fn check_checkpoints(&mut self) -> Result<()> {
        let (st, tree) = (self.replica.state(), self.replica.tree());
        let Some(latest) = st.latest_checkpoint().map(|c| (c.checkpoint.size, c.checkpoint.root)) else {
            if let Some((size, _)) = self.local.checkpoint {
                if st.len >= size {
                    return Err(Untrusted(format!(
                        "the server's ledger has no checkpoint, but this agent verified one of {size} entries"
                    ))
                    .into());
                }
            }
            return Ok(());
        };
        if let Some((size, root)) = self.local.checkpoint {
            if latest == (size, root) {
                return Ok(());
            }
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
        self.local.checkpoint = Some(latest);
        self.save()
    }

    /// Signs and sends an ack of `desired`. It goes on the server's head without waiting for
    /// this replica to catch up, so a thousand targets acking at once do not each replay the
    /// others' acks inside their turn; the replica learns of it from the event stream.
    async fn ack(&mut self, desired: &Desired, outcome: Outcome) -> Result<()> {
        let body = Body::Ack(Ack {
            env: self.cfg.env.clone(),
            version: desired.version,
            package: desired.package,
            outcome,
        });
        let (c, id) = (&self.cfg, self.replica.state().ledger_id);
        match c.client.append_blind(&id, &c.actor, &c.key, crate::now_ms(), body).await {
            Ok(_) => {
                self.acked = Some(desired.seq);
                Ok(())
            }
            // The rules refused it: most likely another push came first. The next event
            // brings this agent up to date and it converges again.
            Err(ClientError::Refused { status: 403, message }) => {
                tracing::warn!(env = %c.env, "ack of {} refused: {message}", desired.version);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches, verifies, unpacks, switches and reloads one version.
    async fn adopt(&mut self, desired: &Desired) -> Result<(), Adopt> {
        let st = self.replica.state();
        if let Some((running, _)) = self.local.running {
            if desired.version < running && desired.via != Via::Rollback {
                return Err(Adopt::refused(format!(
                    "refusing to downgrade from {running} to {} without a rollback entry",
                    desired.version
                )));
            }
        }
        let pkg = st
            .package_by_hash(&desired.package)
            .ok_or_else(|| Adopt::refused(format!("no package {} in the ledger", desired.package.short())))?
            .clone();
        let cert = st
            .package_cert(&pkg)
            .map(str::to_string)
            .ok_or_else(|| Adopt::refused(format!("the author {} has no OpenPGP certificate", pkg.author)))?;
        let bytes = self.fetch(&desired.package).await?;
        let t = &pkg.package.tarball;
        let digest = pd_store::ArtifactDigest::of(&bytes);
        if digest.blake3 != t.blake3.0 || digest.sha256 != t.sha256.0 || digest.size != t.size {
            return Err(Adopt::refused("the artifact does not match the hashes in its package entry"));
        }
        pd_store::openpgp::verify_detached(&cert, &bytes, &pkg.package.openpgp_sig)
            .map_err(|e| Adopt::refused(format!("OpenPGP signature: {e}")))?;
        let version = desired.version;
        let dir = self.cfg.dir.clone();
        let unpacked = tokio::task::spawn_blocking(move || install(&dir, version, &bytes))
            .await
            .map_err(|e| Adopt::refused(e.to_string()))?;
        unpacked.map_err(|e| Adopt::refused(format!("unpacking: {e:#}")))?;
        let previous = self.local.running.map(|(v, _)| v);
        switch(&self.cfg.dir, version).map_err(|e| Adopt::refused(format!("switching: {e:#}")))?;
        if let Err(why) = self.reload(version).await {
            if let Some(prev) = previous {
                let _ = switch(&self.cfg.dir, prev);
            }
            return Err(Adopt::refused(format!("the target did not load it: {why}")));
        }
        Ok(())
    }

    /// The artifact `hash` from the configured source (the caller checks its hashes).
    /// Unreachable sources, and a bucket that does not hold it yet, are retried later.
    async fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, Adopt> {
        let h = *hash;
        let bytes = match &self.cfg.objects {
            Objects::Server => match self.cfg.client.get_object(hash).await {
                Ok(b) => b,
                Err(e @ ClientError::Unreachable { .. }) => return Err(Adopt::Transport(e.into())),
                Err(e) => return Err(Adopt::refused(format!("fetching the artifact: {e}"))),
            },
            Objects::S3(s3) => {
                let s3 = s3.clone();
                match tokio::task::spawn_blocking(move || pd_store::BlobStore::get(s3.as_ref(), &h.0)).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e @ pd_store::StoreError::Corrupt { .. })) => {
                        return Err(Adopt::refused(format!("fetching the artifact: {e}")))
                    }
                    Ok(Err(e)) => return Err(Adopt::Transport(e.into())),
                    Err(e) => return Err(Adopt::Transport(e.into())),
                }
            }
            Objects::Http(base) => {
                let url = format!("{base}/{}", hash.to_hex());
                let got = async { self.http.get(&url).send().await?.error_for_status()?.bytes().await };
                got.await.map_err(|e| Adopt::Transport(anyhow::anyhow!("fetching {url}: {e}")))?.to_vec()
            }
        };
        Ok(bytes)
    }

    async fn reload(&self, version: Version) -> Result<(), String> {
        match &self.cfg.reload {
            Reload::None => Ok(()),
            Reload::Url(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let resp = self
                    .http
                    .post(format!("{url}{sep}ver={version}"))
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                if resp.status().is_success() {
                    return Ok(());
                }
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Err(format!("{status} {}", text.trim()).chars().take(300).collect())
            }
            Reload::Command(cmd) => {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("PD_VERSION", version.to_string())
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

enum Adopt {
    /// The server or artifact source is unreachable: try again later, report nothing.
    Transport(anyhow::Error),
    /// The version cannot be adopted: report it with this reason.
    Refused(String),
}

impl Adopt {
    fn refused(why: impl std::fmt::Display) -> Adopt {
        Adopt::Refused(why.to_string())
    }
}

/// Unpacks a verified tarball into `DIR/versions/<version>` (replacing what was there).
fn install(dir: &Path, version: Version, bytes: &[u8]) -> Result<()> {
    let versions = dir.join("versions");
    let target = versions.join(version.to_string());
    let tmp = versions.join(format!(".tmp-{version}"));
    let _ = std::fs::remove_dir_all(&tmp);
    pd_store::tarball::unpack(bytes, &tmp, &pd_store::Limits::default())?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

/// Points `DIR/current` at `versions/<version>` atomically (symlink + rename).
fn switch(dir: &Path, version: Version) -> Result<()> {
    let link = dir.join("current");
    let tmp = dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(Path::new("versions").join(version.to_string()), &tmp)?;
    #[cfg(not(unix))]
    bail!("pd agent needs symlinks (unix)");
    std::fs::rename(&tmp, &link)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
