//! `pd serve`: the HTTP API over one home's ledger and artifact store.
//!
//! Appends are *statements*: a client signs its body with the ledger length it verified
//! (`base`) and its clock, and posts it (`POST /v1/entries`). One writer thread owns the
//! appends: it takes every statement waiting, places each after the last with the one pure
//! rule function ([`pd_ledger::ledger::Batch::push`]), writes them all with one flush (group
//! commit) and only then answers `201` with each one's position. Nobody holds the ledger
//! across a round trip, so a client can delay another by at most one group commit; each key
//! has at most [`MAX_IN_FLIGHT_PER_KEY`] statements waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use axum::body::{Body as HttpBody, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::Stream;
use pd_ledger::export::{Contents, Export, ExportArtifact, Head, FORMAT};
use pd_ledger::file_store::FileStore;
use pd_ledger::ledger::Batch;

use crate::sequencer::{self, ControlQuery};
use pd_ledger::proof::Proof;
use pd_ledger::{
    Hash, Ledger, LedgerError, LedgerStore, PublicKey, RuleError, SecretKey, SignedEntry, State, Statement,
    StorageError,
};
use pd_store::{BlobStore, StoreError};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::limits;
use crate::wire::{self, ApiError, Event, HeadInfo, Receipt};
use crate::Clock;

/// How `pd serve` runs.
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// When set, every request but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The key that signs export heads (the home's acting key), if this home has one.
    pub head_signer: Option<(String, SecretKey)>,
    /// The server's clock: entry times, heartbeat windows, export heads.
    pub clock: Clock,
    /// Largest object accepted (`PUT /v1/objects`); other routes have their own limits in
    /// [`crate::limits`].
    pub max_body: usize,
    /// Most connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and to send the next
    /// request on a kept-alive connection (so idle and slowloris connections are closed).
    pub header_read_timeout: Duration,
    /// Write a checkpoint (signed by `head_signer`, which needs the log role) once this many
    /// entries came after the last one; also right after every push, rollback and retry, so
    /// agents find them under a checkpoint at once. 0 turns automatic checkpoints off.
    pub checkpoint_every: u64,
    /// …and at least this often while entries keep coming.
    pub checkpoint_interval: Duration,
    /// Mirror the ledger and its artifacts to S3 this often (needs `head_signer`).
    pub mirror: Option<(Arc<crate::s3::S3Store>, Duration)>,
    /// Serve HTTPS with these settings ([`crate::tls::server_config`]) instead of HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// POST a JSON event to each of these URLs on pushes, rollbacks, failed acks, adoptions
    /// and stale targets ([`crate::notify`]).
    pub notify: Vec<String>,
}

impl ServeOptions {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            listen,
            token: None,
            head_signer: None,
            clock: crate::system_clock(),
            max_body: pd_store::Limits::default().max_tarball_bytes as usize,
            max_connections: limits::default_max_connections(),
            header_read_timeout: limits::HEADER_READ_TIMEOUT,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            mirror: None,
            notify: Vec::new(),
            tls: None,
        }
    }
}

#[derive(Default)]
struct Metrics {
    appends: AtomicU64,
    refused: AtomicU64,
    objects_served: AtomicU64,
    object_bytes: AtomicU64,
    event_streams: AtomicU64,
}

/// Work for the writer thread.
enum Job {
    /// Place a statement whose signature was checked against `verified` (none on an empty
    /// ledger) and answer with where it landed.
    Statement {
        statement: Box<Statement>,
        verified: Option<PublicKey>,
        reply: oneshot::Sender<Result<Receipt, Error>>,
    },
    /// Checkpoint the ledger's end unless the last entry is a checkpoint.
    Checkpoint,
}

struct Shared {
    /// Read by handlers; written only by the writer thread, whose disk writes hold only the
    /// read side (see [`Ledger::write`]), so readers wait at most for an in-memory swap.
    ledger: RwLock<Ledger<FileStore>>,
    reader: FileStore,
    store: Arc<dyn BlobStore>,
    /// The ledger's length after each append.
    len: watch::Sender<u64>,
    /// Control entries and the newest checkpoint's size, changed only when they change: what
    /// light agents wait on, so a wave of acks wakes none of them.
    control: watch::Sender<ControlHead>,
    /// Statements and checkpoint requests for the writer thread.
    jobs: mpsc::Sender<Job>,
    /// Statements waiting per key.
    in_flight: Mutex<HashMap<String, usize>>,
    /// Verified objects ready to serve.
    objects: Mutex<ObjectCache>,
    /// The object files mapped for sendfile.
    mappings: Arc<crate::sendfile::Mappings>,
    /// Objects whose file this process hashed (written or read whole) and found right, so
    /// they are mapped from then on without hashing again.
    verified: Mutex<std::collections::HashSet<Hash>>,
    /// The latest entries as encoded events, so a thousand followers cost one encoding.
    recent: Mutex<std::collections::VecDeque<(u64, SseEvent)>>,
    shutdown: watch::Receiver<bool>,
    /// The newest heartbeat per target: when it arrived (server clock), its time and bytes.
    heartbeats: Mutex<HashMap<String, KeptHeartbeat>>,
    /// Why the last object write failed, until a probe shows the store takes writes again.
    objects_failure: Mutex<Option<String>>,
    metrics: Metrics,
    opts: ServeOptions,
}

type App = Arc<Shared>;

/// A target's newest heartbeat: when it arrived (server clock), its own time, its bytes.
/// A target's newest heartbeat: as received, as read, and the key it verified against.
struct KeptHeartbeat {
    received_ms: u64,
    bytes: Vec<u8>,
    heartbeat: pd_ledger::heartbeat::Heartbeat,
    key: pd_ledger::PublicKey,
}

/// Object files up to this size are read into memory once verified; larger ones are mapped
/// and sent with sendfile (two system calls per answer instead of one pay off only then).
const MAP_ABOVE: u64 = 64 * 1024;
/// Objects from a store without local files are kept in memory up to this size…
const SMALL_OBJECT: usize = 4 * 1024 * 1024;
/// …and objects in memory up to this much in all…
const OBJECTS_IN_MEMORY: usize = 64 * 1024 * 1024;
/// …and this many mapped files (each holds a file descriptor); past either, the cache starts
/// over (answers in flight keep what they serve).
const OBJECTS_MAPPED: usize = 256;

/// Verified objects ready to serve: in memory or mapped from their file. Objects never
/// change, so an entry never goes stale.
#[derive(Default)]
struct ObjectCache {
    objects: HashMap<Hash, Bytes>,
    in_memory: usize,
    mapped: usize,
}

/// Encoded events kept for followers.
const RECENT_EVENTS: usize = 4096;

/// Statements one key may have waiting for the writer; more are refused with 429, so no key
/// can fill a group commit and delay everyone else.
pub const MAX_IN_FLIGHT_PER_KEY: usize = 4;

/// Statements waiting for the writer, all keys together.
const QUEUE: usize = 65_536;

/// Most statements placed by one group commit.
const MAX_BATCH: usize = 8192;

/// Deadline of every request except the long-poll and the event stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP error with a JSON body that says what to do.
struct Error(StatusCode, String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error(StatusCode::BAD_REQUEST, msg.to_string())
}

/// A failure of the server itself: the detail (which may name its files) goes to its log,
/// never to the client.
fn internal(msg: impl std::fmt::Display) -> Error {
    tracing::error!("{msg}");
    Error(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to serve this; its log says why".into())
}

/// A storage failure: the OS error (a full disk, say) is named, the file it hit is not.
fn storage_failed(e: &(dyn std::error::Error + 'static)) -> Error {
    tracing::error!("{e}");
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            let msg = format!("the server's storage failed: {io}; its log says where");
            return Error(StatusCode::INTERNAL_SERVER_ERROR, msg);
        }
        cause = c.source();
    }
    internal(e)
}

impl From<LedgerError> for Error {
    fn from(e: LedgerError) -> Error {
        match e {
            LedgerError::Refused(
                r @ (RuleError::Seq { .. }
                | RuleError::Prev { .. }
                | RuleError::Replayed { .. }
                | RuleError::StaleStatement { .. }),
            ) => Error(StatusCode::CONFLICT, r.to_string()),
            LedgerError::Refused(r) => Error(StatusCode::FORBIDDEN, r.to_string()),
            LedgerError::Storage(StorageError::Conflict { seq }) => {
                Error(StatusCode::CONFLICT, format!("seq {seq} is taken; retry"))
            }
            LedgerError::Storage(StorageError::Io(msg)) => {
                tracing::error!("{msg}");
                // The OS error ends the message; what comes before names the server's files.
                let os = msg.rsplit(": ").next().unwrap_or("an I/O error");
                let msg = format!("the server's ledger storage failed: {os}; its log says where");
                Error(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
            other => storage_failed(&other),
        }
    }
}

impl Shared {
    /// What keeps the server from taking writes now; probes what failed before.
    fn health(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.reader.probe() {
            problems.push(format!("ledger: {e}"));
        }
        let mut objects = self.objects_failure.lock().unwrap_or_else(|p| p.into_inner());
        if objects.is_some() {
            match self.store.probe() {
                Ok(()) => *objects = None,
                Err(e) => problems.push(format!("objects: {e}")),
            }
        }
        problems
    }

    /// The ledger, for reading; never held across I/O by the writer.
    fn read(&self) -> RwLockReadGuard<'_, Ledger<FileStore>> {
        self.ledger.read().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        (self.opts.clock)()
    }

    fn head(&self) -> HeadInfo {
        let l = self.read();
        let s = l.state();
        HeadInfo { ledger_id: s.ledger_id(), len: s.len(), head: s.head(), last_time_ms: s.last_time_ms() }
    }

    /// Events from `from` on (at most `limit`): from the recent ones when they reach back
    /// that far, else decoded from storage.
    fn events_from(&self, from: u64, limit: usize) -> Option<Vec<SseEvent>> {
        {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&(first, _)) = recent.front() {
                if first <= from {
                    let skip = (from - first) as usize;
                    let hit: Vec<SseEvent> =
                        recent.iter().skip(skip).take(limit).map(|(_, e)| e.clone()).collect();
                    if !hit.is_empty() {
                        return Some(hit);
                    }
                }
            }
        }
        let raw = self.entries(from, limit).ok()?;
        raw.iter().map(|b| SignedEntry::decode(b).ok().and_then(|e| sse_event(&e))).collect()
    }

    /// Keeps the event of a just-appended entry.
    fn remember(&self, seq: u64, event: SseEvent) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Only a gapless run is useful; after a gap (never expected) start over.
        if recent.back().is_some_and(|&(last, _)| last + 1 != seq) {
            recent.clear();
        }
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back((seq, event));
    }

    /// An object already read (or mapped) and verified.
    fn cached(&self, hash: &Hash) -> Option<Bytes> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).objects.get(hash).cloned()
    }

    /// Keeps a verified object: a mapped one, or one in memory up to [`SMALL_OBJECT`].
    fn cache(&self, hash: Hash, bytes: Bytes, mapped: bool) -> Bytes {
        if !mapped && bytes.len() > SMALL_OBJECT {
            return bytes;
        }
        let mut c = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let (memory, maps) = if mapped { (0, 1) } else { (bytes.len(), 0) };
        if c.in_memory + memory > OBJECTS_IN_MEMORY || c.mapped + maps > OBJECTS_MAPPED {
            *c = ObjectCache::default();
        }
        if c.objects.insert(hash, bytes.clone()).is_none() {
            c.in_memory += memory;
            c.mapped += maps;
        }
        bytes
    }

    /// Brings the S3 mirror up to the current state, with a head signed by `head_signer`.
    fn mirror_to(&self, s3: &crate::s3::S3Store) -> anyhow::Result<crate::mirror::Pushed> {
        let (actor, key) = anyhow::Context::context(
            self.opts.head_signer.as_ref(),
            "mirroring needs a key to sign the head",
        )?;
        let state = self.read().state().clone();
        let head =
            Head::sign(&state, actor, self.now_ms().max(state.last_time_ms()), Contents::WithArtifacts, key);
        let mut read = |from: u64, end: u64| -> anyhow::Result<Vec<Vec<u8>>> {
            Ok(self.reader.scan(from).take((end - from) as usize).collect::<Result<_, _>>()?)
        };
        let mut fetch = |h: &Hash| Ok(self.store.get(&h.0)?);
        crate::mirror::push(s3, &state, &head, &mut read, &mut fetch)
    }

    /// Raw entries from `from` on: at most `limit`, and no more than
    /// [`limits::PAGE_ENTRY_BYTES`] in all (but always one, if there is one).
    fn entries_page(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let (mut page, mut bytes) = (Vec::new(), 0);
        for entry in self.reader.scan(from).take(limit) {
            let entry = entry.map_err(internal)?;
            if !page.is_empty() && bytes + entry.len() > limits::PAGE_ENTRY_BYTES {
                break;
            }
            bytes += entry.len();
            page.push(entry);
        }
        Ok(page)
    }

    /// Raw entries `from..from+limit`.
    fn entries(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        self.reader.scan(from).take(limit).collect::<Result<_, _>>().map_err(internal)
    }
}

/// Opens the routes over a ledger and store and serves until SIGTERM or Ctrl-C; in-flight
/// requests (appends included) finish first. Calls `ready` with the bound address.
pub async fn serve(
    ledger: Ledger<FileStore>,
    store: Arc<dyn BlobStore>,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    ready(listener.local_addr()?);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    serve_on(listener, ledger, store, opts, stop_rx).await
}

/// Serves on `listener` until `stop` turns true; in-flight requests finish first.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    ledger: Ledger<FileStore>,
    store: Arc<dyn BlobStore>,
    opts: ServeOptions,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "pd serve listening");
    let connections =
        Connections { max: opts.max_connections, header_read_timeout: opts.header_read_timeout };
    let app = shared(ledger, store, opts, stop.clone());
    tokio::spawn(checkpoint_ticker(app.clone()));
    tokio::spawn(notifier(app.clone()));
    let mirror = tokio::spawn(mirror_ticker(app.clone()));
    let last_mirror = app.clone();
    accept(listener, app.clone(), routes(app), connections, stop).await;
    // The mirror's last push, after the last append.
    let _ = mirror.await;
    if let (Some((s3, _)), Some(_)) = (&last_mirror.opts.mirror, &last_mirror.opts.head_signer) {
        mirror_once(&last_mirror, s3).await;
    }
    Ok(())
}

/// Connection-level limits of the accept loop.
struct Connections {
    max: usize,
    header_read_timeout: Duration,
}

/// Over-limit connections being answered 503 at once; more are closed without an answer.
const REFUSING_AT_ONCE: usize = 64;

/// Accepts connections until `stop`, each served by hyper's HTTP/1 with a header-read (and
/// idle) timeout and `TCP_NODELAY`; one over the limit gets a 503 and is closed. At `stop`,
/// in-flight requests finish (event streams end themselves) before this returns.
async fn accept(
    listener: tokio::net::TcpListener,
    app: App,
    router: Router,
    limits: Connections,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max));
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING_AT_ONCE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: back off briefly rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tokio::spawn(refuse_connection(tcp, limits.max, slot));
            }
            continue;
        };
        let plain = crate::sendfile::Conn::new(tcp, app.mappings.clone());
        let tls = app.opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let (app, routed) = (app.clone(), TowerToHyperService::new(router.clone()));
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            use futures_util::future::{ready, Either, FutureExt};
            let Some(hex) = object_read(&req) else {
                return Either::Right(hyper::service::Service::call(&routed, req).boxed());
            };
            let headers = req.headers();
            let (hash, etag) = match object_request(&app, hex, headers) {
                Ok(wanted) => wanted,
                Err(answer) => return Either::Left(ready(Ok(*answer))),
            };
            // A cached object is answered here and now: no task state, no shared counts.
            if let Some(object) = app.cached(&hash) {
                return Either::Left(ready(Ok(object_answer(
                    &app,
                    object,
                    etag,
                    headers.get(header::RANGE),
                ))));
            }
            let (app, range) = (app.clone(), headers.get(header::RANGE).cloned());
            Either::Right(async move { Ok(read_object(app, hash, etag, range).await) }.boxed())
        });
        let (http, watcher, handshake) = (http.clone(), graceful.watcher(), limits.header_read_timeout);
        tokio::spawn(async move {
            let io = match tls {
                None => crate::tls::Stream::Left(plain),
                // The handshake gets the header-read deadline too: no slowloris before HTTP.
                Some(tls) => match tokio::time::timeout(handshake, tls.accept(plain.into_inner())).await {
                    Ok(Ok(stream)) => crate::tls::Stream::Right(Box::new(stream)),
                    Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                },
            };
            if let Err(e) = watcher.watch(http.serve_connection(TokioIo::new(io), service)).await {
                tracing::debug!("connection closed: {e}");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// Answers a connection over the limit with a 503 that says so, then closes it (reading
/// what the client sent meanwhile, briefly, so the close does not reset the answer away).
async fn refuse_connection(
    mut tcp: tokio::net::TcpStream,
    max: usize,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({
        "error": format!("this server is at its connection limit ({max} connections); retry shortly")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The routes, for [`serve`] and for tests and benches that bring their own listener.
pub fn router(
    ledger: Ledger<FileStore>,
    store: Arc<dyn BlobStore>,
    opts: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> Router {
    routes(shared(ledger, store, opts, shutdown))
}

/// Writes a checkpoint every `checkpoint_interval` when entries came since the last one, and
/// at start if the head is not covered (a push whose checkpoint was lost to a crash would
/// otherwise keep agents waiting a whole interval).
async fn checkpoint_ticker(app: App) {
    if app.opts.checkpoint_every == 0 || app.opts.head_signer.is_none() {
        return;
    }
    let mut shutdown = app.shutdown.clone();
    let mut tick = tokio::time::interval(app.opts.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let behind = {
            let l = app.read();
            let st = l.state();
            !st.is_empty() && st.latest_checkpoint().is_none_or(|c| c.seq + 1 < st.len())
        };
        if behind && app.jobs.send(Job::Checkpoint).await.is_err() {
            return;
        }
    }
}

/// How often the notifier looks for targets turning stale.
const STALE_CHECK: Duration = Duration::from_secs(2);

/// Sends `--notify` events: reads what the ledger gained since it last looked (and, every
/// [`STALE_CHECK`], the heartbeats) and hands each event to every receiver's queue.
async fn notifier(app: App) {
    if app.opts.notify.is_empty() {
        return;
    }
    let client = crate::tls::client_builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let queues: Vec<_> = app
        .opts
        .notify
        .iter()
        .map(|url| {
            let (tx, rx) = mpsc::channel(crate::notify::QUEUE);
            tokio::spawn(crate::notify::deliver(client.clone(), url.clone(), rx));
            (url.clone(), tx)
        })
        .collect();
    let mut seen = crate::notify::Seen::default();
    let (mut len, mut shutdown) = (app.read().state().len(), app.shutdown.clone());
    let mut grown = app.len.subscribe();
    loop {
        tokio::select! {
            _ = grown.changed() => {},
            () = tokio::time::sleep(STALE_CHECK) => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let worker = app.clone();
        let found = tokio::task::spawn_blocking(move || {
            let new = worker.read().state().len().saturating_sub(len) as usize;
            // Entries were checked when appended; one that no longer reads is said in the log
            // and skipped here (replicas and the verifier refuse it on their own).
            let read = |(i, b): (usize, Result<Vec<u8>, _>)| match b.map(|b| SignedEntry::decode(&b)) {
                Ok(Ok(e)) => Some(e),
                _ => {
                    tracing::warn!("notifications: entry #{} does not read; skipped", len + i as u64);
                    None
                }
            };
            let entries: Vec<SignedEntry> =
                worker.reader.scan(len).take(new).enumerate().filter_map(read).collect();
            // Judged under the read lock, against the state as it is now: no copy of it.
            let ledger = worker.read();
            let state = ledger.state();
            let beats = worker.seen_now(state);
            let stale = beats
                .seen
                .keys()
                .filter(|t| beats.liveness(t) == pd_ledger::heartbeat::Liveness::Stale)
                .cloned()
                .collect();
            let mut events: Vec<serde_json::Value> =
                entries.iter().flat_map(|e| seen.entry(e, state)).collect();
            events.extend(seen.stale(&stale, beats.now_ms));
            (seen, events, len + new as u64)
        })
        .await;
        // The notifier's memory went with a panicked read: start again from what comes next.
        let Ok((kept, events, read_to)) = found else {
            seen = crate::notify::Seen::default();
            len = app.read().state().len();
            continue;
        };
        (seen, len) = (kept, read_to);
        for event in events {
            for (url, tx) in &queues {
                if tx.try_send(event.clone()).is_err() {
                    tracing::warn!("{url} is {} notifications behind; dropping one", crate::notify::QUEUE);
                }
            }
        }
    }
}

/// Mirrors the ledger to S3 every interval while it grows (see [`crate::mirror`]), and once
/// more at shutdown.
async fn mirror_ticker(app: App) {
    let (Some((s3, every)), Some(_)) = (app.opts.mirror.clone(), &app.opts.head_signer) else {
        return;
    };
    let mut shutdown = app.shutdown.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mirrored = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if mirrored != Some(*app.len.borrow()) {
            mirrored = mirror_once(&app, &s3).await.or(mirrored);
        }
    }
}

/// One mirror push off the async threads; returns the entries mirrored, `None` on failure
/// (logged; the next push retries).
async fn mirror_once(app: &App, s3: &Arc<crate::s3::S3Store>) -> Option<u64> {
    let (worker, s3) = (app.clone(), s3.clone());
    match tokio::task::spawn_blocking(move || worker.mirror_to(&s3)).await {
        Ok(Ok(p)) => {
            tracing::info!(entries = p.entries, segments = p.segments, artifacts = p.artifacts, "mirrored");
            Some(p.entries)
        }
        Ok(Err(e)) => {
            tracing::warn!("mirroring failed, retrying next interval: {e:#}");
            None
        }
        Err(e) => {
            tracing::warn!("mirroring failed: {e}");
            None
        }
    }
}

fn shared(
    ledger: Ledger<FileStore>,
    store: Arc<dyn BlobStore>,
    opts: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> App {
    let reader = ledger.store().clone();
    let (len, _) = watch::channel(ledger.state().len());
    let (control, _) = watch::channel(ControlHead::of(ledger.state()));
    let (jobs, queue) = mpsc::channel(QUEUE);
    let app = Arc::new(Shared {
        ledger: RwLock::new(ledger),
        reader,
        store,
        len,
        control,
        jobs,
        in_flight: Mutex::default(),
        objects: Mutex::default(),
        mappings: Arc::default(),
        verified: Mutex::default(),
        recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_EVENTS)),
        shutdown,
        objects_failure: Mutex::new(None),
        heartbeats: Mutex::default(),
        metrics: Metrics::default(),
        opts,
    });
    let writer = Arc::downgrade(&app);
    // A thread of its own: it blocks on the disk by design. It ends when the last sender
    // (the app) is dropped.
    std::thread::Builder::new()
        .name("pd-ledger-writer".into())
        .spawn(move || writer_loop(writer, queue))
        .expect("spawning the ledger writer thread");
    app
}

fn routes(app: App) -> Router {
    // Requests that answer at once get a deadline; the long-poll and the stream wait by design.
    let bounded = Router::new()
        .route("/v1/entries", get(entries).post(append))
        // GET and HEAD are answered before the router: see `object_read`.
        .route("/v1/objects/{hash}", axum::routing::put(put_object))
        .route("/v1/state", get(state))
        .route("/v1/fleet", get(fleet))
        .route("/v1/heartbeats", get(heartbeats_list).post(heartbeat_post))
        .route("/v1/export", get(export))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/proofs/inclusion", get(inclusion_proof))
        .route("/v1/proofs/consistency", get(consistency_proof))
        .route("/metrics", get(metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    let v1 = Router::new()
        .route("/v1/head", get(head))
        .route("/v1/events", get(events))
        .route("/v1/control", get(control))
        .merge(bounded)
        .layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::console::routes())
        .merge(v1)
        // Bodies are limited per route by `limit_body`, before anything is read.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(app.clone(), limit_body))
        .with_state(app)
}

/// The largest body `method path` accepts, and what such a body is (for the error).
fn body_limit(method: &Method, path: &str, max_object: usize) -> (usize, &'static str) {
    match (method.as_str(), path) {
        ("POST", "/v1/entries") => (limits::ENTRY_BODY_BYTES, "a statement"),
        ("POST", "/v1/heartbeats") => (limits::HEARTBEAT_BODY_BYTES, "a heartbeat"),
        ("PUT", p) if p.starts_with("/v1/objects/") => (max_object, "an object"),
        _ => (limits::OTHER_BODY_BYTES, "a request to this route"),
    }
}

/// 413 with the limit in human units.
fn too_large(limit: usize, what: &str) -> Error {
    Error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is too large: {what} may be at most {}", limits::human_bytes(limit as u64)),
    )
}

/// Per-route body limits: a declared `Content-Length` over the limit is refused at once,
/// before a byte of the body is read; a chunked body is cut off at the limit. Both 413.
async fn limit_body(AxState(app): AxState<App>, req: Request, next: Next) -> Response {
    let (limit, what) = body_limit(req.method(), req.uri().path(), app.opts.max_body);
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit, what).into_response();
    }
    let req = req.map(|body| HttpBody::new(http_body_util::Limited::new(body, limit)));
    let response = next.run(req).await;
    let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t == "application/json");
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        // axum's own rejection when a chunked body passed the limit: say it the same way.
        return too_large(limit, what).into_response();
    }
    response
}

/// Whether `given` is `expected`, in time independent of where they differ (both are hashed
/// first, so not even the length leaks).
fn token_matches(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (g, e) = (blake3::hash(given.as_bytes()), blake3::hash(expected.as_bytes()));
    g.as_bytes().ct_eq(e.as_bytes()).into()
}

/// The `/v1` gate: the server's read token, if it has one.
fn authorize(app: &Shared, headers: &HeaderMap) -> Result<(), Error> {
    let Some(token) = &app.opts.token else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !given.and_then(|g| g.strip_prefix("Bearer ")).is_some_and(|g| token_matches(g, token)) {
        return Err(Error(
            StatusCode::UNAUTHORIZED,
            "this server needs `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(())
}

async fn require_token(AxState(app): AxState<App>, req: Request, next: Next) -> Response {
    match authorize(&app, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The object a request reads (`GET` or `HEAD /v1/objects/{hash}`), if it reads one. These
/// requests, most of a fleet's, are answered beside the router, without its layers: they
/// need only the token check and answer at once (no deadline to keep), and skipping the
/// layers is what brings small objects to nginx's rate.
fn object_read<B>(req: &hyper::Request<B>) -> Option<&str> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    req.uri().path().strip_prefix("/v1/objects/").filter(|hex| !hex.contains('/'))
}

#[derive(Deserialize)]
struct HeadQuery {
    /// Wait until the ledger holds more than this many entries…
    after: Option<u64>,
    /// …or this many milliseconds passed (at most 60 s).
    wait_ms: Option<u64>,
}

async fn head(AxState(app): AxState<App>, Query(q): Query<HeadQuery>) -> Json<HeadInfo> {
    if let Some(after) = q.after {
        let mut rx = app.len.subscribe();
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000).min(60_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(|len| *len > after)).await;
    }
    Json(app.head())
}

/// What light agents wait on: the ledger's control entries and its newest checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ControlHead {
    control_len: u64,
    checkpoint: u64,
}

impl ControlHead {
    fn of(st: &State) -> ControlHead {
        ControlHead {
            control_len: st.control_len(),
            checkpoint: st.latest_checkpoint().map_or(0, |c| c.checkpoint.size),
        }
    }
}

/// `GET /v1/control`: a light agent's view (see `pd_ledger::partial`). Waits (long poll)
/// until the ledger has control entries after `after` or, with `need`, a checkpoint over more
/// than `need` entries; then answers the next control entries, the newest checkpoint and a
/// consistency proof from `held` to it. Acks and checkpoints that nobody waits for wake no one.
async fn control(AxState(app): AxState<App>, Query(q): Query<ControlQuery>) -> Result<Response, Error> {
    if q.wait_ms > 0 {
        let mut rx = app.control.subscribe();
        let wake = |h: &ControlHead| h.control_len > q.after || q.need.is_some_and(|n| h.checkpoint > n);
        let wait = Duration::from_millis(q.wait_ms.min(60_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(wake)).await;
    }
    let key = match &q.key {
        Some(hex) => Some(
            PublicKey::from_hex(hex)
                .map_err(|_| bad(format!("key={hex:?} is not a hex Ed25519 public key")))?,
        ),
        None => None,
    };
    let uncovered = key.and_then(|k| sequencer::uncovered_target_key(app.read().state(), &k));
    if let Some(declared) = uncovered.filter(|_| app.opts.head_signer.is_some()) {
        // A target enrolled since the last checkpoint: checkpoint now rather than keep it
        // waiting for the next one to learn who it is.
        let _ = app.jobs.send(Job::Checkpoint).await;
        let mut rx = app.control.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|h| h.checkpoint > declared)).await;
    }
    let worker = app.clone();
    let page = tokio::task::spawn_blocking(move || {
        // Positions under one read lock (one ledger), bytes after it.
        let plan = sequencer::control_plan(&worker.read(), &q, key.as_ref()).map_err(internal)?;
        plan.page(|seq| match worker.reader.get(seq) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(internal(format!("entry #{seq} is missing"))),
            Err(e) => Err(internal(e)),
        })
    })
    .await
    .map_err(internal)??;
    let mut out = Vec::new();
    ciborium::into_writer(&page, &mut out).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], out).into_response())
}

#[derive(Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
}

const MAX_PAGE: usize = 10_000;

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"))
}

async fn entries(
    AxState(app): AxState<App>,
    Query(q): Query<EntriesQuery>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let (from, limit) = (q.from, q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE));
    let worker = app.clone();
    let raw =
        tokio::task::spawn_blocking(move || worker.entries_page(from, limit)).await.map_err(internal)??;
    if wants_json(&headers) {
        let decoded = raw
            .iter()
            .map(|b| SignedEntry::decode(b).map(|e| entry_json(&e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        return Ok(Json(decoded).into_response());
    }
    let body: wire::EntryBytes = raw.into_iter().map(serde_bytes::ByteBuf::from).collect();
    let mut out = Vec::new();
    ciborium::into_writer(&body, &mut out).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], out).into_response())
}

/// An entry as JSON, for people and scripts.
pub fn entry_json(e: &SignedEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": e.entry.seq, "id": e.id, "prev": e.entry.prev, "time_ms": e.entry.time_ms,
        "actor": e.entry.actor, "kind": e.entry.body.kind(), "body": e.entry.body, "sig": e.entry.sig,
    })
}

/// `POST /v1/entries`: a signed statement (CBOR, [`Statement::encode`]). Its signature is
/// checked here, on the request's thread, against the signer's current key; the writer
/// places it with the rule and answers `201` with a [`Receipt`] once it is on disk.
async fn append(AxState(app): AxState<App>, body: Bytes) -> Result<Response, Error> {
    let statement = Statement::decode(&body).map_err(|e| bad(format!("not a pd statement: {e}")))?;
    let verified = {
        let l = app.read();
        let st = l.state();
        match pd_ledger::adoption::may_submit(st, &statement.actor)
            .map_err(|e| Error::from(LedgerError::Refused(e)))?
        {
            None => None,
            Some(key) if statement.signature_valid(&st.ledger_id(), &key.decl.public_key) => {
                Some(key.decl.public_key)
            }
            Some(_) => {
                app.metrics.refused.fetch_add(1, Relaxed);
                let actor = statement.actor;
                return Err(LedgerError::Refused(RuleError::BadSignature { actor }).into());
            }
        }
    };
    let _slot = InFlight::take(&app, &statement.actor)?;
    let (reply, answer) = oneshot::channel();
    let job = Job::Statement { statement: Box::new(statement), verified, reply };
    let gone = || Error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down; retry".into());
    app.jobs.send(job).await.map_err(|_| gone())?;
    let receipt = answer.await.map_err(|_| gone())??;
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

/// A statement of one key waiting for the writer; dropping it frees the place.
struct InFlight {
    app: App,
    actor: String,
}

impl InFlight {
    fn take(app: &App, actor: &str) -> Result<InFlight, Error> {
        let mut waiting = app.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = waiting.entry(actor.to_string()).or_default();
        if *n >= MAX_IN_FLIGHT_PER_KEY {
            return Err(Error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{actor:?} already has {MAX_IN_FLIGHT_PER_KEY} statements waiting; retry when one is answered"),
            ));
        }
        *n += 1;
        Ok(InFlight { app: app.clone(), actor: actor.to_string() })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut waiting = self.app.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = waiting.get_mut(&self.actor) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.actor);
            }
        }
    }
}

/// The writer thread: takes every job waiting (up to [`MAX_BATCH`]), commits them as one
/// batch, answers, and waits for more. Ends when the server is gone.
fn writer_loop(app: std::sync::Weak<Shared>, mut queue: mpsc::Receiver<Job>) {
    // The state the next batch starts from, kept between commits: a copy of the ledger's
    // state made once (and again after a failed write), not once per commit.
    let mut next: Option<Batch> = None;
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(app) = app.upgrade() else { return };
        let batch = match next.take() {
            Some(b) if app.read().continues(&b) => b,
            _ => app.read().batch(),
        };
        next = group_commit(&app, batch, jobs);
    }
}

/// Places every job's statement with the rule, adds a checkpoint if one is due, writes the
/// batch with one flush, installs it, publishes it and answers each job. Returns the emptied
/// batch to start the next from, unless the write failed.
fn group_commit(app: &App, mut batch: Batch, jobs: Vec<Job>) -> Option<Batch> {
    let now = app.now_ms();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut statements = Vec::with_capacity(jobs.len());
    let mut asked = false;
    for job in jobs {
        match job {
            Job::Statement { statement, verified, reply } => {
                statements.push((*statement, verified));
                replies.push(reply);
            }
            Job::Checkpoint => asked = true,
        }
    }
    let checkpointing =
        sequencer::Checkpointing { every: app.opts.checkpoint_every, signer: app.opts.head_signer.as_ref() };
    let placed = sequencer::place(&mut batch, statements, now, checkpointing, asked);
    let answers: Vec<_> =
        replies.into_iter().zip(placed).map(|(reply, p)| (reply, p.map_err(LedgerError::Refused))).collect();
    let written = app.read().write(&batch);
    let refused = answers.iter().filter(|(_, a)| a.is_err()).count() as u64;
    app.metrics.refused.fetch_add(refused, Relaxed);
    match written {
        Ok(()) => {
            // Encoded before the swap (no copy of the entries), published after it.
            let events: Vec<(u64, SseEvent)> =
                batch.entries().iter().filter_map(|e| Some((e.entry.seq, sse_event(e)?))).collect();
            let (placed, len) = (batch.entries().len() as u64, batch.state().len());
            let control = ControlHead::of(batch.state());
            app.ledger.write().unwrap_or_else(|p| p.into_inner()).install(&mut batch);
            app.metrics.appends.fetch_add(placed, Relaxed);
            for (seq, ev) in events {
                app.remember(seq, ev);
            }
            app.len.send_replace(len);
            app.control.send_if_modified(|c| std::mem::replace(c, control) != control);
            for (reply, answer) in answers {
                let _ = reply.send(answer.map_err(Error::from));
            }
            Some(batch)
        }
        Err(e) => {
            let failed = LedgerError::Storage(e);
            let message = Error::from(failed);
            for (reply, answer) in answers {
                let answer = match answer {
                    Ok(_) => Err(Error(message.0, message.1.clone())),
                    Err(refused) => Err(Error::from(refused)),
                };
                let _ = reply.send(answer);
            }
            // Its state folded entries that were not written: the next batch starts afresh.
            None
        }
    }
}

fn parse_hash(hex: &str) -> Result<Hash, Error> {
    Hash::from_hex(hex).map_err(|_| bad(format!("{hex:?} is not a hex BLAKE3 hash (64 hex digits)")))
}

/// `"HEX"`: an object's strong ETag, built without a formatted string (it is on every GET).
fn etag_of(hash: &Hash) -> HeaderValue {
    let mut quoted = [b'"'; 66];
    let _ = hex::encode_to_slice(hash.0, &mut quoted[1..65]);
    HeaderValue::from_bytes(&quoted).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

impl Shared {
    /// The object `hash`, verified: from the cache, or its file (read into memory if small,
    /// else hashed the first time only and mapped), or read whole from a store without local
    /// files. Blocking.
    fn object(&self, hash: Hash) -> Result<Bytes, Error> {
        if let Some(b) = self.cached(&hash) {
            return Ok(b);
        }
        let not_found =
            || Error(StatusCode::NOT_FOUND, format!("no object {} on this server", hash.to_hex()));
        let Some(path) = self.store.local_path(&hash.0) else {
            return match self.store.get(&hash.0) {
                Ok(b) => Ok(self.cache(hash, Bytes::from(b), false)),
                Err(StoreError::NotFound { .. }) => Err(not_found()),
                Err(e) => Err(internal(e)),
            };
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(internal(format!("{}: {e}", path.display()))),
        };
        let len = file.metadata().map_err(internal)?.len();
        if len <= MAP_ABOVE {
            let mut bytes = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(internal)?;
            self.check_object(&hash, Hash::of(&bytes), &path)?;
            return Ok(self.cache(hash, Bytes::from(bytes), false));
        }
        if !self.is_verified(&hash) {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(&file).map_err(internal)?;
            self.check_object(&hash, Hash(*hasher.finalize().as_bytes()), &path)?;
        }
        let mapped = self.mappings.map(file).map_err(|e| internal(format!("{}: {e}", path.display())))?;
        if mapped.len() as u64 != len {
            return Err(internal(format!("{} changed size while it was opened", path.display())));
        }
        Ok(self.cache(hash, mapped, true))
    }

    /// Paired with the hash at write time: the file still holds what its name says. Logs
    /// the file; the client hears only that the server failed.
    fn check_object(&self, hash: &Hash, actual: Hash, path: &std::path::Path) -> Result<(), Error> {
        if actual != *hash {
            let e = StoreError::Corrupt { hash: hash.to_hex(), at: path.display().to_string() };
            return Err(internal(e));
        }
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(*hash);
        Ok(())
    }

    fn is_verified(&self, hash: &Hash) -> bool {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(hash)
    }
}

/// Answers an [`object_read`] request for an object not in the cache: reads it (verified,
/// and cached for the next request) on a blocking thread.
async fn read_object(app: App, hash: Hash, etag: HeaderValue, range: Option<HeaderValue>) -> Response {
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || worker.object(hash)).await.map_err(internal).and_then(|r| r) {
        Ok(object) => object_answer(&app, object, etag, range.as_ref()),
        Err(e) => e.into_response(),
    }
}

/// What an object read decides before it needs the object: the token, the hash and its
/// ETag, or the final answer (an error, or 304 for a client that holds it already).
fn object_request(
    app: &Shared,
    hex: &str,
    headers: &HeaderMap,
) -> Result<(Hash, HeaderValue), Box<Response>> {
    let answer = |e: Error| Box::new(e.into_response());
    authorize(app, headers).map_err(answer)?;
    let hash = parse_hash(hex).map_err(answer)?;
    let etag = etag_of(&hash);
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == etag || v == "*") {
        return Err(Box::new(immutable(StatusCode::NOT_MODIFIED, HttpBody::empty(), etag)));
    }
    Ok((hash, etag))
}

/// A response about an immutable object: its ETag, cacheable for a year.
fn immutable(status: StatusCode, body: HttpBody, etag: HeaderValue) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    r
}

/// The object, whole or the range asked for.
fn object_answer(app: &Shared, object: Bytes, etag: HeaderValue, range: Option<&HeaderValue>) -> Response {
    answer_range(app, object, etag, range).unwrap_or_else(IntoResponse::into_response)
}

/// [`object_answer`], with its header-building failures as errors.
fn answer_range(
    app: &Shared,
    object: Bytes,
    etag: HeaderValue,
    range: Option<&HeaderValue>,
) -> Result<Response, Error> {
    app.metrics.objects_served.fetch_add(1, Relaxed);
    let total = object.len() as u64;
    let range = range.and_then(|v| v.to_str().ok());
    let (status, start, end, content_range) = match range.map(|r| wire::parse_range(r, total)) {
        None => (StatusCode::OK, 0, total, None),
        Some(Some((start, last))) => {
            (StatusCode::PARTIAL_CONTENT, start, last + 1, Some(format!("bytes {start}-{last}/{total}")))
        }
        Some(None) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).map_err(internal)?,
            );
            return Ok(r);
        }
    };
    app.metrics.object_bytes.fetch_add(end - start, Relaxed);
    let mut r = immutable(status, HttpBody::from(object.slice(start as usize..end as usize)), etag);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).map_err(internal)?);
    }
    Ok(r)
}

/// Checks an upload's `pd-actor` and `pd-signature` headers: a key that may upload signed
/// this ledger's upload digest of `hash`. Runs before any byte of the body is read.
fn authorize_upload(app: &Shared, headers: &HeaderMap, hash: &Hash) -> Result<(), Error> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (actor, sig) =
        wire::upload_auth(text(wire::ACTOR_HEADER), text(wire::SIGNATURE_HEADER)).map_err(|e| match e {
            wire::UploadAuthError::Missing => Error(StatusCode::UNAUTHORIZED, e.to_string()),
            wire::UploadAuthError::BadSignature => bad(e),
        })?;
    let l = app.read();
    let st = l.state();
    let key = pd_ledger::adoption::may_upload(st, &actor)
        .map_err(|e| Error(StatusCode::FORBIDDEN, e.to_string()))?;
    let digest = wire::put_digest(&st.ledger_id(), hash);
    if !pd_ledger::keys::verify(&key.decl.public_key, wire::PUT_DOMAIN, &digest, &sig) {
        return Err(Error(
            StatusCode::FORBIDDEN,
            format!("the upload signature by {actor:?} does not verify"),
        ));
    }
    Ok(())
}

/// Body chunks in flight between the connection and the blocking store write.
const UPLOAD_CHUNKS_IN_FLIGHT: usize = 8;

/// How an upload's body ended, as seen from the connection.
enum Upload {
    /// Whole.
    Complete,
    /// Past the route's limit (chunked, or longer than declared).
    TooLarge,
    /// The client broke off.
    BrokeOff(String),
}

/// `PUT /v1/objects/{hash}`: the uploader's headers are checked first; then the body is
/// streamed into a temp file in the store while hashed, compared to `hash`, synced and
/// renamed. Never held whole in memory.
async fn put_object(
    AxState(app): AxState<App>,
    Path(hex): Path<String>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<StatusCode, Error> {
    let hash = parse_hash(&hex)?;
    authorize_upload(&app, &headers, &hash)?;
    let limit = app.opts.max_body;
    let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_CHUNKS_IN_FLIGHT);
    let worker = app.clone();
    let stored = tokio::task::spawn_blocking(move || {
        worker.store.put_stream(&mut ChannelReader { rx, buf: Bytes::new() }, &hash.0, limit as u64)
    });
    let upload = pump(body, tx).await;
    let stored = stored.await.map_err(internal)?;
    match upload {
        Upload::TooLarge => return Err(too_large(limit, "an object")),
        Upload::BrokeOff(why) => return Err(bad(format!("the upload broke off: {why}"))),
        Upload::Complete => {}
    }
    match stored {
        Ok(_) => {
            app.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(hash);
            Ok(StatusCode::CREATED)
        }
        Err(StoreError::Mismatch { .. }) => Err(bad(format!("the body does not hash to {hex}"))),
        Err(StoreError::TooLarge { .. }) => Err(too_large(limit, "an object")),
        Err(e) => {
            if matches!(e, StoreError::Io { .. }) {
                *app.objects_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            Err(storage_failed(&e))
        }
    }
}

/// Feeds `body` to the store's writer chunk by chunk; the bounded channel makes a slow disk
/// slow the client down instead of filling memory.
async fn pump(body: HttpBody, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Upload {
    use futures_util::StreamExt;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(chunk) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    // The writer stopped early (too long, or the disk failed): it says why.
                    return Upload::Complete;
                }
            }
            Err(e) => {
                let too_large = find_cause::<http_body_util::LengthLimitError>(&e);
                let _ = tx.send(Err(std::io::Error::other("the upload did not arrive whole"))).await;
                return if too_large { Upload::TooLarge } else { Upload::BrokeOff(e.to_string()) };
            }
        }
    }
    Upload::Complete
}

/// Whether `e` or any of its causes is an `E`.
fn find_cause<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<E>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The blocking side of an upload: reads the chunks the connection sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    buf: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.buf = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// `GET /healthz`: 200 while the ledger and the object store take writes; 503 with the
/// reasons after a write failed (a full disk, an I/O error), until a probe shows they take
/// writes again — so a supervisor sees the trouble, and no restart is needed once it is gone.
/// How far a heartbeat's own time may be from the server's.
const HEARTBEAT_WINDOW_MS: u64 = 60_000;

/// `POST /v1/heartbeats`: a target's signed heartbeat, kept as its newest if it verifies, is
/// within a minute of the server's clock and is newer than the one kept (a replay is refused).
async fn heartbeat_post(AxState(app): AxState<App>, body: Bytes) -> Result<StatusCode, Error> {
    use pd_ledger::heartbeat::SignedHeartbeat;
    let hb = SignedHeartbeat::decode(&body).map_err(bad)?;
    let key = {
        let l = app.read();
        hb.verify(l.state()).map_err(|e| Error(StatusCode::FORBIDDEN, e.to_string()))?.decl.public_key
    };
    let now = app.now_ms();
    let h = &hb.heartbeat;
    if now.abs_diff(h.time_ms) > HEARTBEAT_WINDOW_MS {
        return Err(Error(
            StatusCode::FORBIDDEN,
            "the heartbeat's time is more than a minute off; fix the clock".into(),
        ));
    }
    let mut kept = app.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
    if kept.get(&h.target).is_some_and(|k| k.heartbeat.time_ms >= h.time_ms) {
        return Err(Error(
            StatusCode::CONFLICT,
            "an equal or newer heartbeat of this target is kept: a replay is refused".into(),
        ));
    }
    let kept_one = KeptHeartbeat { received_ms: now, bytes: body.to_vec(), heartbeat: h.clone(), key };
    kept.insert(h.target.clone(), kept_one);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/heartbeats`: the newest heartbeat of each target, signed by it.
async fn heartbeats_list(AxState(app): AxState<App>) -> Json<wire::Heartbeats> {
    Json(app.heartbeats_now())
}

impl Shared {
    fn heartbeats_now(&self) -> wire::Heartbeats {
        let kept = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let heartbeats = kept
            .values()
            .map(|k| wire::HeartbeatSeen { received_ms: k.received_ms, heartbeat: hex::encode(&k.bytes) })
            .collect();
        wire::Heartbeats { now_ms: self.now_ms(), heartbeats }
    }

    /// The kept heartbeats that still verify against `state`: their signatures were checked
    /// when they came, so only that the same key is still an active target key is checked
    /// here (checking ten thousand signatures again on every request would cost half a second).
    fn seen_now(&self, state: &State) -> wire::SeenNow {
        let kept = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let seen = kept
            .iter()
            .filter(|(target, k)| {
                pd_ledger::adoption::may_heartbeat(state, target)
                    .is_ok_and(|key| key.decl.public_key == k.key)
            })
            .map(|(target, k)| {
                (target.clone(), wire::Seen { received_ms: k.received_ms, heartbeat: k.heartbeat.clone() })
            })
            .collect();
        wire::SeenNow { now_ms: self.now_ms(), seen }
    }
}

async fn healthz(AxState(app): AxState<App>) -> Response {
    let worker = app.clone();
    let problems = tokio::task::spawn_blocking(move || worker.health())
        .await
        .unwrap_or_else(|e| vec![format!("health check failed: {e}")]);
    if problems.is_empty() {
        return "ok\n".into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy\n{}\n", problems.join("\n"))).into_response()
}

async fn checkpoint(AxState(app): AxState<App>) -> Result<Response, Error> {
    let l = app.read();
    let st = l.state();
    let c = st.latest_checkpoint().ok_or_else(|| Error(StatusCode::NOT_FOUND, "no checkpoint yet".into()))?;
    let note = st.signed_note(c).render();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(Deserialize)]
struct InclusionQuery {
    /// The entry.
    seq: u64,
    /// The checkpoint's size (default: the newest checkpoint).
    size: Option<u64>,
}

/// The checkpoint entry of `size` entries, or the newest one.
fn checkpoint_of(st: &State, size: Option<u64>) -> Result<&pd_ledger::state::CheckpointState, Error> {
    let found = match size {
        Some(n) => st.checkpoints().iter().find(|c| c.checkpoint.size == n),
        None => st.latest_checkpoint(),
    };
    found.ok_or_else(|| match size {
        Some(n) => Error(StatusCode::NOT_FOUND, format!("no checkpoint of size {n}")),
        None => Error(StatusCode::NOT_FOUND, "no checkpoint yet".into()),
    })
}

fn proof_error(e: pd_ledger::proof::ProofError) -> Error {
    Error(StatusCode::NOT_FOUND, e.to_string())
}

async fn inclusion_proof(
    AxState(app): AxState<App>,
    Query(q): Query<InclusionQuery>,
) -> Result<Response, Error> {
    let l = app.read();
    let st = l.state();
    let at = checkpoint_of(st, q.size)?;
    let raw = app.entries(q.seq, 1)?;
    let bytes = raw.first().ok_or_else(|| Error(StatusCode::NOT_FOUND, format!("no entry #{}", q.seq)))?;
    let entry = SignedEntry::decode(bytes).map_err(internal)?;
    let proof = Proof::inclusion(st, l.tree(), &entry, at).map_err(proof_error)?;
    Ok(Json(proof).into_response())
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    /// The earlier checkpoint's size.
    old: u64,
    /// The later checkpoint's size (default: the newest checkpoint).
    new: Option<u64>,
}

async fn consistency_proof(
    AxState(app): AxState<App>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Response, Error> {
    let l = app.read();
    let st = l.state();
    let old = st.signed_note(checkpoint_of(st, Some(q.old))?);
    let new = checkpoint_of(st, q.new)?;
    let proof = Proof::consistency(st, l.tree(), &old, new).map_err(proof_error)?;
    Ok(Json(proof).into_response())
}

async fn state(AxState(app): AxState<App>) -> Response {
    let l = app.read();
    Json(l.state()).into_response()
}

/// `GET /v1/fleet`: the console's fleet view ([`crate::console::fleet`]).
/// Built on a blocking thread: at ten thousand targets it takes milliseconds under the read lock.
async fn fleet(AxState(app): AxState<App>) -> Result<Response, Error> {
    let body = tokio::task::spawn_blocking(move || {
        let l = app.read();
        crate::console::fleet(l.state(), &app.seen_now(l.state()))
    })
    .await
    .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/export`: the whole ledger with every artifact under a signed head. Built on a
/// blocking thread: the store may block (S3 drives its own runtime).
async fn export(AxState(app): AxState<App>) -> Result<Response, Error> {
    if app.opts.head_signer.is_none() {
        return Err(Error(
            StatusCode::NOT_IMPLEMENTED,
            "this server has no key to sign an export head".into(),
        ));
    }
    let worker = app.clone();
    let bytes = tokio::task::spawn_blocking(move || worker.export()).await.map_err(internal)??;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response())
}

impl Shared {
    /// The encoded export (blocking).
    fn export(&self) -> Result<Vec<u8>, Error> {
        let Some((actor, key)) = &self.opts.head_signer else {
            return Err(Error(
                StatusCode::NOT_IMPLEMENTED,
                "this server has no key to sign an export head".into(),
            ));
        };
        let (state, entries) = {
            let l = self.read();
            let st = l.state().clone();
            let raw = self.entries(0, st.len() as usize)?;
            (st, raw)
        };
        let mut artifacts = Vec::with_capacity(state.packages().len());
        for p in state.packages() {
            let hash = p.package.tarball.blake3;
            let bytes = self.store.get(&hash.0).map_err(internal)?;
            artifacts.push(ExportArtifact { blake3: hash, bytes: serde_bytes::ByteBuf::from(bytes) });
        }
        artifacts.sort_by_key(|a| a.blake3);
        let now = self.now_ms().max(state.last_time_ms());
        let head = Head::sign(&state, actor, now, Contents::WithArtifacts, key);
        let export = Export {
            format: FORMAT.to_string(),
            entries: entries.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            artifacts,
            head,
        };
        Ok(export.encode())
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<u64>,
}

/// Server-Sent Events: every entry from `Last-Event-ID + 1` (or `?from=`, or the current
/// end) on, as it is appended. Push and rollback are named `policyChanged`.
async fn events(
    AxState(app): AxState<App>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let after_last =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(wire::next_after_last_event_id);
    let len_rx = app.len.subscribe();
    let from = after_last.or(q.from).unwrap_or(*len_rx.borrow());
    app.metrics.event_streams.fetch_add(1, Relaxed);
    let stop = app.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (app, len_rx, stop, from, std::collections::VecDeque::new()),
        |(app, mut len_rx, mut stop, mut next, mut queue)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((Ok(ev), (app, len_rx, stop, next, queue)));
                }
                if *stop.borrow() {
                    return None;
                }
                let len = *len_rx.borrow_and_update();
                if next < len {
                    let batch = app.events_from(next, 256)?;
                    next += batch.len() as u64;
                    queue.extend(batch);
                    continue;
                }
                tokio::select! {
                    changed = len_rx.changed() => changed.ok()?,
                    _ = stop.changed() => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The SSE event of an entry: id = seq, name = [`Event::name`], data = [`Event`] as JSON.
fn sse_event(e: &SignedEntry) -> Option<SseEvent> {
    let data = Event::of(e);
    SseEvent::default().id(e.entry.seq.to_string()).event(data.name()).json_data(&data).ok()
}

async fn metrics(AxState(app): AxState<App>) -> impl IntoResponse {
    let len = *app.len.borrow();
    let m = &app.metrics;
    let mut text = format!(
        "# HELP pd_ledger_entries Entries in the ledger.\n# TYPE pd_ledger_entries gauge\npd_ledger_entries {len}\n\
         # HELP pd_appends_total Entries appended through this server.\n# TYPE pd_appends_total counter\npd_appends_total {}\n\
         # HELP pd_appends_refused_total Entries refused.\n# TYPE pd_appends_refused_total counter\npd_appends_refused_total {}\n\
         # HELP pd_objects_served_total Objects served.\n# TYPE pd_objects_served_total counter\npd_objects_served_total {}\n\
         # HELP pd_object_bytes_total Object bytes served.\n# TYPE pd_object_bytes_total counter\npd_object_bytes_total {}\n\
         # HELP pd_event_streams_total Event streams opened.\n# TYPE pd_event_streams_total counter\npd_event_streams_total {}\n",
        m.appends.load(Relaxed),
        m.refused.load(Relaxed),
        m.objects_served.load(Relaxed),
        m.object_bytes.load(Relaxed),
        m.event_streams.load(Relaxed),
    );
    let l = app.read();
    fleet_metrics(&mut text, l.state(), &app.seen_now(l.state()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Per-environment gauges (targets, stale; per set adopted and failed, by the adoption
/// rule) and each target's seconds since its last heartbeat.
fn fleet_metrics(out: &mut String, state: &State, beats: &wire::SeenNow) {
    use std::fmt::Write as _;
    let gauges = [
        ("pd_env_targets", "Active targets of an environment."),
        ("pd_env_stale_targets", "Targets with no heartbeat for three intervals."),
        ("pd_env_adopted_targets", "Targets that loaded the desired version of a policy set."),
        ("pd_env_failed_targets", "Targets that failed to load the desired version of a policy set."),
        ("pd_target_last_seen_seconds", "Seconds since a target's last heartbeat."),
    ];
    for (name, help) in gauges {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
    }
    for env in pd_ledger::adoption::overview(state) {
        let e = &env.env;
        let mut stale = 0;
        for t in &env.targets {
            if beats.liveness(t) != pd_ledger::heartbeat::Liveness::Live {
                stale += 1;
            }
            if let Some(s) = beats.seen.get(t) {
                let secs = beats.now_ms.saturating_sub(s.received_ms) as f64 / 1000.0;
                let _ = writeln!(out, "pd_target_last_seen_seconds{{env=\"{e}\",target=\"{t}\"}} {secs}");
            }
        }
        let _ = writeln!(out, "pd_env_targets{{env=\"{e}\"}} {}", env.targets.len());
        let _ = writeln!(out, "pd_env_stale_targets{{env=\"{e}\"}} {stale}");
        for slot in &env.sets {
            let (set, a) = (&slot.set, &slot.adoption);
            let _ = writeln!(out, "pd_env_adopted_targets{{env=\"{e}\",set=\"{set}\"}} {}", a.loaded());
            let _ = writeln!(out, "pd_env_failed_targets{{env=\"{e}\",set=\"{set}\"}} {}", a.failed().len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_body_limit() {
        let tarball = pd_store::Limits::default().max_tarball_bytes as usize;
        let object = format!("/v1/objects/{}", "ab".repeat(32));
        for (method, path, limit) in [
            (Method::POST, "/v1/entries", limits::ENTRY_BODY_BYTES),
            (Method::POST, "/v1/heartbeats", limits::HEARTBEAT_BODY_BYTES),
            (Method::PUT, object.as_str(), tarball),
            (Method::GET, object.as_str(), 0),
            (Method::GET, "/v1/entries", 0),
            (Method::GET, "/v1/state", 0),
            (Method::POST, "/v1/turn", 0),
            (Method::GET, "/healthz", 0),
        ] {
            assert_eq!(body_limit(&method, path, tarball).0, limit, "{method} {path}");
        }
        const { assert!(limits::ENTRY_BODY_BYTES > pd_ledger::limits::MAX_ENTRY_BYTES) };
        const { assert!(limits::ENTRY_BODY_BYTES < 5 * 1024 * 1024) };
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        for other in ["", "s3cre", "s3cret ", "S3cret", "s3cret\0"] {
            assert!(!token_matches(other, "s3cret"), "{other:?}");
        }
    }

    #[test]
    fn a_too_large_error_names_the_limit_in_human_units() {
        let Error(status, msg) = too_large(limits::HEARTBEAT_BODY_BYTES, "a heartbeat");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(msg, "the request body is too large: a heartbeat may be at most 17 KiB");
    }
}
