//! Where a command's ledger lives: the home's own ledger file, or a `pd serve` whose
//! entries this process replays into memory and checks before it signs on top of them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pd_ledger::merkle::{Sha256, Tree};
use pd_ledger::storage::MemStore;
use pd_ledger::{Body, Hash, Ledger, SecretKey, SignedEntry, State};
use pd_server::client::ClientError;
use pd_server::Client;

use crate::home::{self, Home};
use crate::Ctx;

/// A ledger and artifact store, local or remote.
// One per process, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// The home's ledger, opened per operation so other pd processes can take turns.
    Local(Home),
    /// A server, with a verified in-memory replica of its ledger.
    Remote {
        /// Runs the async client.
        rt: tokio::runtime::Runtime,
        /// The server.
        client: Client,
        /// Every entry the server served, checked here.
        replica: Ledger<MemStore>,
    },
}

impl Backend {
    /// The server from `--server` / `PD_SERVER` / the home's config, else the `pd serve`
    /// that holds the home's ledger now, else the home itself.
    pub fn open(ctx: &Ctx, home: Option<Home>) -> Result<Backend> {
        let server = ctx.server.clone().or_else(|| home.as_ref().and_then(|h| h.config.server.clone()));
        let server = server.or_else(|| {
            let url = home.as_ref()?.served_by()?;
            eprintln!("note: `pd serve` at {url} holds this home's ledger; going through it");
            Some(url)
        });
        match (server, home) {
            (Some(url), _) => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let client = Client::new(&url, ctx.token.clone())?;
                let mut replica = Ledger::open(MemStore::default())?;
                rt.block_on(client.sync(&mut replica, None))?;
                Ok(Backend::Remote { rt, client, replica })
            }
            (None, Some(home)) if home.has_ledger() => Ok(Backend::Local(home)),
            (None, Some(home)) => anyhow::bail!(
                "{} holds keys but no ledger (`pd key gen` made it): pass --server URL, or set `server` in its config.toml",
                home.dir.display()
            ),
            (None, None) => anyhow::bail!(
                "no pd home at {} and no server: run `pd init` there, or pass --home DIR or --server URL",
                ctx.home_dir.display()
            ),
        }
    }

    /// The backend of a command that needs a home (for keys) and maybe a server.
    pub fn of_home(ctx: &Ctx) -> Result<(Home, Backend)> {
        let home = ctx.home()?;
        let backend = Backend::open(ctx, Some(home.clone()))?;
        Ok((home, backend))
    }

    /// Whether this talks to a server.
    pub fn is_remote(&self) -> bool {
        matches!(self, Backend::Remote { .. })
    }

    /// The current state.
    pub fn state(&mut self) -> Result<State> {
        match self {
            Backend::Local(home) => Ok(home.ledger()?.state().clone()),
            Backend::Remote { rt, client, replica } => {
                rt.block_on(client.sync(replica, None))?;
                Ok(replica.state().clone())
            }
        }
    }

    /// The server's newest heartbeat per target (none on a home without a server: nobody
    /// collects them there).
    pub fn heartbeats(&mut self) -> Result<pd_server::wire::Heartbeats> {
        match self {
            Backend::Local(_) => Ok(pd_server::wire::Heartbeats::default()),
            Backend::Remote { rt, client, .. } => Ok(rt.block_on(client.heartbeats())?),
        }
    }

    /// The current state and the Merkle tree over every entry, for proofs.
    pub fn tree(&mut self) -> Result<(State, Tree<Sha256>)> {
        match self {
            Backend::Local(home) => {
                let ledger = home.ledger()?;
                Ok((ledger.state().clone(), ledger.tree().clone()))
            }
            Backend::Remote { rt, client, replica } => {
                rt.block_on(client.sync(replica, None))?;
                Ok((replica.state().clone(), replica.tree().clone()))
            }
        }
    }

    /// Every entry from `from` on.
    pub fn entries(&mut self, from: u64) -> Result<Vec<SignedEntry>> {
        match self {
            Backend::Local(home) => Ok(home.ledger()?.entries(from).collect::<Result<_, _>>()?),
            Backend::Remote { rt, client, replica } => {
                rt.block_on(client.sync(replica, None))?;
                Ok(replica.entries(from).collect::<Result<_, _>>()?)
            }
        }
    }

    /// Signs `make(state)` as `actor` at the next position and appends it, durably. Returns
    /// the entry and the state after it.
    pub fn append(
        &mut self,
        actor: &str,
        key: &SecretKey,
        make: impl FnMut(&State) -> Result<Body>,
    ) -> Result<(SignedEntry, State)> {
        let now = home::now_ms();
        match self {
            Backend::Local(home) => {
                let mut make = make;
                let mut ledger = home.ledger()?;
                let body = make(ledger.state())?;
                let entry = ledger.sign_append(actor, key, now, body)?;
                Ok((entry, ledger.state().clone()))
            }
            Backend::Remote { rt, client, replica } => {
                let entry = rt.block_on(client.append(replica, actor, key, now, make))?;
                Ok((entry, replica.state().clone()))
            }
        }
    }

    /// Stores an artifact (uploads it, signed by `actor`, to a server).
    pub fn put_object(&mut self, ledger_id: &Hash, actor: &str, key: &SecretKey, bytes: &[u8]) -> Result<()> {
        match self {
            Backend::Local(home) => home.store()?.put(bytes).map(drop).map_err(Into::into),
            Backend::Remote { rt, client, .. } => {
                rt.block_on(client.put_object(ledger_id, actor, key, bytes.to_vec()))?;
                Ok(())
            }
        }
    }

    /// An artifact by BLAKE3, verified.
    pub fn get_object(&mut self, hash: &Hash, max_bytes: u64) -> Result<Vec<u8>> {
        match self {
            Backend::Local(home) => Ok(home.store()?.get(&hash.0)?),
            Backend::Remote { rt, client, .. } => Ok(rt.block_on(client.get_object(hash, max_bytes))?),
        }
    }

    /// Waits until the ledger grows past `len` entries or `deadline` passes, then returns
    /// the state. Locally it polls (other processes append through the ledger file's lock).
    /// `check` runs every 100 ms; its error (an interrupt) ends the wait.
    pub fn wait(&mut self, len: u64, deadline: Instant, check: &dyn Fn() -> Result<()>) -> Result<State> {
        const TICK: Duration = Duration::from_millis(100);
        let left = deadline.saturating_duration_since(Instant::now());
        match self {
            Backend::Local(_) => pause(Instant::now() + left.min(Duration::from_millis(200)), check)?,
            Backend::Remote { rt, client, .. } => rt.block_on(async {
                let grown = client.head_after(len, left.min(Duration::from_secs(25)));
                tokio::pin!(grown);
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        r = &mut grown => return r.context("waiting for the server").map(drop),
                        _ = tick.tick() => check()?,
                    }
                }
            })?,
        }
        self.state()
    }
}

/// Whether `e` only says the server could not be reached or failed for now (a restart, an
/// overloaded proxy): worth retrying, never a verdict on the request.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::Unreachable { .. }) | Some(ClientError::Refused { status: 500.., .. })
        )
    })
}

/// Sleeps until `until`, running `check` every 100 ms; its error (an interrupt) ends it.
pub fn pause(until: Instant, check: &dyn Fn() -> Result<()>) -> Result<()> {
    while Instant::now() < until {
        check()?;
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}

/// Refuses `body` before anything is written if the rules would refuse it now.
pub fn precheck(state: &State, actor: &str, key: &SecretKey, body: Body) -> Result<()> {
    let probe = pd_ledger::Entry::sign(
        &state.ledger_id(),
        state.len(),
        state.head(),
        home::now_ms().max(state.last_time_ms()),
        actor,
        body,
        key,
    );
    pd_ledger::check(state, &probe)?;
    Ok(())
}
