//! The client of `pd serve`, used by the CLI, the agent and the tests.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use pd_ledger::partial::Follower;
use pd_ledger::{Body, Hash, Ledger, LedgerStore, PublicKey, SecretKey, SignedEntry, State, Statement};
use serde::de::DeserializeOwned;

use crate::limits::{self, human_bytes};
use crate::wire::{self, ApiError, Event, HeadInfo, Receipt};

/// Folds a control page into `follower` and verifies its checkpoint against `held`; true when
/// the follower holds every control entry the server had.
pub fn apply_page(
    follower: &mut Follower,
    page: &ControlPage,
    key: &PublicKey,
    held: Option<(u64, Hash)>,
) -> Result<bool, ClientError> {
    let untrusted = |e: pd_ledger::partial::FollowError| ClientError::Diverged(e.to_string());
    follower.apply(&page.entries).map_err(untrusted)?;
    if let Some(cp) = &page.checkpoint {
        follower.accept_checkpoint(cp, &page.consistency, held).map_err(untrusted)?;
    }
    if !page.own.is_empty() {
        follower.accept_own(key, &page.own).map_err(untrusted)?;
    }
    Ok(follower.control_len() >= page.control_len)
}

/// A decoded `GET /v1/control` page (see [`Client::control`]).
#[derive(Clone, Debug)]
pub struct ControlPage {
    /// Control entries the ledger holds.
    pub control_len: u64,
    /// The next control entries, in order.
    pub entries: Vec<SignedEntry>,
    /// The newest checkpoint entry, if this page reaches every control entry before it.
    pub checkpoint: Option<SignedEntry>,
    /// Consistency proof from the held checkpoint to that one.
    pub consistency: Vec<pd_ledger::merkle::Digest32>,
    /// The entries declaring the asking target key, with inclusion proofs in that checkpoint.
    pub own: Vec<(SignedEntry, Vec<pd_ledger::merkle::Digest32>)>,
    /// Bytes received for it.
    pub bytes: usize,
}

impl ControlPage {
    /// Decodes a page's entries (`bytes`: what it took on the wire). Not yet verified.
    pub fn decode(
        page: wire::ControlPage,
        bytes: usize,
    ) -> Result<ControlPage, pd_ledger::entry::EncodingError> {
        Ok(ControlPage {
            control_len: page.control_len,
            entries: page.entries.iter().map(|b| SignedEntry::decode(b)).collect::<Result<_, _>>()?,
            checkpoint: page.checkpoint.as_deref().map(|b| SignedEntry::decode(b)).transpose()?,
            consistency: page.consistency.into_iter().map(|h| h.0).collect(),
            own: page
                .own
                .iter()
                .map(|(b, proof)| Ok((SignedEntry::decode(b)?, proof.iter().map(|h| h.0).collect())))
                .collect::<Result<_, pd_ledger::entry::EncodingError>>()?,
            bytes,
        })
    }
}

/// A failure talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the pd server at {url}: {source}; is `pd serve` running there?")]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server refused the request; `message` says why.
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something that is not what pd sends.
    #[error("the server at {url} sent a malformed reply: {problem}")]
    Malformed {
        /// The server.
        url: String,
        /// What was wrong.
        problem: String,
    },
    /// The server sent more than this client accepts for one answer; nothing of it is used.
    #[error("the server at {url} sent more than {} for {what}; refusing it", human_bytes(*limit_bytes))]
    TooLarge {
        /// The server.
        url: String,
        /// What the answer was (`one entries page`, `artifact ab12…`).
        what: String,
        /// The most this client accepts for it.
        limit_bytes: u64,
    },
    /// The entry this client was about to sign breaks a rule.
    #[error(transparent)]
    Rule(#[from] pd_ledger::RuleError),
    /// The server's ledger is not an extension of what this client verified before.
    #[error("{0}")]
    Diverged(String),
    /// An entry from the server failed the local check.
    #[error("the server's ledger does not verify here: {0}")]
    Ledger(#[from] pd_ledger::LedgerError),
}

impl ClientError {
    /// Whether the server refused a statement under the rule (403).
    pub fn is_refused(&self) -> bool {
        matches!(self, ClientError::Refused { status: 403, .. })
    }

    /// Whether the server said the request conflicts with the ledger (a stale statement).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Refused { status: 409 | 410, .. })
    }

    /// Whether the server refused for now and asks to retry (too many statements waiting,
    /// or shutting down).
    pub fn is_busy(&self) -> bool {
        matches!(self, ClientError::Refused { status: 429 | 503, .. })
    }
}

/// Tries of one append before its refusal is final.
const APPEND_ATTEMPTS: u32 = 5;

/// Waits before retry `attempt` (1-based): 20 ms doubling, with full jitter, so clients that
/// were refused together do not come back together.
async fn backoff(attempt: u32) {
    let cap_ms = 20u64 << attempt.min(8);
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    tokio::time::sleep(Duration::from_millis(u64::from_le_bytes(r) % cap_ms)).await;
}

/// A connection to one `pd serve`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:8700`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let http = crate::tls::client_builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(limits::CLIENT_POOL_IDLE)
            .build()
            .map_err(|source| ClientError::Unreachable { url: url.into(), source })?;
        Ok(Client { http, base: url.trim_end_matches('/').to_string(), token })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = r.send().await.map_err(|source| self.unreachable(source))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = match self.read_limited(resp, limits::JSON_ANSWER_BYTES, "an error message").await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => e.to_string(),
        };
        let message = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
        Err(ClientError::Refused { status, message })
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), source }
    }

    fn malformed(&self, problem: impl std::fmt::Display) -> ClientError {
        ClientError::Malformed { url: self.base.clone(), problem: problem.to_string() }
    }

    /// The body of `resp` within `limit_bytes` ([`body_within`]).
    async fn read_limited(
        &self,
        resp: reqwest::Response,
        limit_bytes: u64,
        what: &str,
    ) -> Result<Vec<u8>, ClientError> {
        body_within(resp, limit_bytes).await.map_err(|e| self.unreachable(e))?.ok_or_else(|| {
            ClientError::TooLarge { url: self.base.clone(), what: what.to_string(), limit_bytes }
        })
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, ClientError> {
        self.json_within(r, limits::JSON_ANSWER_BYTES, "one answer").await
    }

    async fn json_within<T: DeserializeOwned>(
        &self,
        r: reqwest::RequestBuilder,
        limit_bytes: u64,
        what: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.read_limited(self.send(r).await?, limit_bytes, what).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.malformed(e))
    }

    /// The ledger's head.
    pub async fn head(&self) -> Result<HeadInfo, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/head")).await
    }

    /// The head once the ledger holds more than `after` entries, or after `wait`.
    pub async fn head_after(&self, after: u64, wait: Duration) -> Result<HeadInfo, ClientError> {
        let path = format!("/v1/head?after={after}&wait_ms={}", wait.as_millis());
        self.json(self.req(reqwest::Method::GET, &path).timeout(wait + Duration::from_secs(10))).await
    }

    /// A light agent's next page (`GET /v1/control`): the control entries after the first
    /// `after`, the newest checkpoint and a consistency proof to it from the one of `held.0`
    /// entries (not sent again when `held.1` says the follower holds it and it is the newest).
    /// Waits up to `wait` for control entries after `after` or, with `need`, for a checkpoint
    /// over more than `need` entries. Entries are decoded, not yet verified.
    pub async fn control(
        &self,
        key: Option<&PublicKey>,
        after: u64,
        held: (u64, bool),
        need: Option<u64>,
        wait: Duration,
    ) -> Result<ControlPage, ClientError> {
        let (held, has) = held;
        let need = need.map(|n| format!("&need={n}")).unwrap_or_default();
        let key = key.map(|k| format!("&key={}", k.to_hex())).unwrap_or_default();
        let path = format!(
            "/v1/control?after={after}&held={held}&has={has}{need}{key}&wait_ms={}",
            wait.as_millis()
        );
        let r = self.req(reqwest::Method::GET, &path).timeout(wait + Duration::from_secs(30));
        let resp = self.send(r).await?;
        let bytes = self.read_limited(resp, limits::PAGE_ANSWER_BYTES, "one control page").await?;
        let page: wire::ControlPage =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| self.malformed(e))?;
        ControlPage::decode(page, bytes.len()).map_err(|e| self.malformed(e))
    }

    /// Brings a light follower up to the server's control entries (page after page, without
    /// waiting) and verifies the newest checkpoint against them and against `held`, the one
    /// verified before. A page that does not verify is [`ClientError::Diverged`].
    pub async fn catch_up(
        &self,
        follower: &mut Follower,
        key: &PublicKey,
        held: Option<(u64, Hash)>,
    ) -> Result<(), ClientError> {
        loop {
            let has = follower.checkpoint().is_some();
            let held_size = follower.checkpoint().or(held).map_or(0, |c| c.0);
            let asks = follower.key(key).is_none().then_some(key);
            let page =
                self.control(asks, follower.control_len(), (held_size, has), None, Duration::ZERO).await?;
            let done = apply_page(follower, &page, key, follower.checkpoint().or(held))?;
            if done {
                return Ok(());
            }
        }
    }

    /// Raw entries from `from` on (one page).
    pub async fn entries(&self, from: u64) -> Result<Vec<Vec<u8>>, ClientError> {
        let r = self.req(reqwest::Method::GET, &format!("/v1/entries?from={from}"));
        let resp = self.send(r).await?;
        let bytes = self.read_limited(resp, limits::PAGE_ANSWER_BYTES, "one entries page").await?;
        let page: wire::EntryBytes =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| self.malformed(e))?;
        Ok(page.into_iter().map(|b| b.into_vec()).collect())
    }

    /// Brings `replica` up to at least `len` entries (the server's length if `None`),
    /// checking every entry with the same rules and signatures as the server.
    pub async fn sync<S: LedgerStore>(
        &self,
        replica: &mut Ledger<S>,
        len: Option<u64>,
    ) -> Result<(), ClientError> {
        let len = match len {
            Some(l) => l,
            None => {
                let head = self.head().await?;
                let st = replica.state();
                let same_prefix = head.len > st.len() || (head.len == st.len() && head.head == st.head());
                if !st.is_empty() && !same_prefix {
                    return Err(ClientError::Diverged(format!(
                        "the server's ledger has {} entries (head {}), but this replica verified {} (head {}): \
                         the server's ledger was truncated or forked",
                        head.len, head.head, st.len(), st.head()
                    )));
                }
                head.len
            }
        };
        while replica.state().len() < len {
            let page = self.entries(replica.state().len()).await?;
            if page.is_empty() {
                return Err(self.malformed(format!(
                    "it announced {len} entries but sent none after {}",
                    replica.state().len()
                )));
            }
            let decoded = page
                .iter()
                .map(|b| SignedEntry::decode(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.malformed(format!("an entry does not decode: {e}")))?;
            replica.append_batch(&decoded)?;
        }
        Ok(())
    }

    /// Syncs `replica`, signs `make(state)` as a statement based on it and has the server
    /// append it; returns the entry as it landed, which `replica` then holds too.
    ///
    /// The body is checked with the rule on the replica before it is sent, so a refusal here
    /// is the rule's. If the server refuses what the replica accepted, entries landed in
    /// between: the replica syncs and `make` decides again (a few times).
    pub async fn append<S: LedgerStore, E: From<ClientError>>(
        &self,
        replica: &mut Ledger<S>,
        actor: &str,
        key: &SecretKey,
        now_ms: u64,
        mut make: impl FnMut(&State) -> Result<Body, E>,
    ) -> Result<SignedEntry, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.sync(replica, None).await?;
            let body = make(replica.state())?;
            let entry = replica.sign_next(actor, key, now_ms, body);
            pd_ledger::check(replica.state(), &entry).map_err(ClientError::Rule)?;
            let statement = entry.entry.statement();
            match self.submit(&statement).await {
                Ok(receipt) => return Ok(self.landed(replica, &receipt).await?),
                Err(e) if attempt < APPEND_ATTEMPTS && (e.is_conflict() || e.is_busy() || e.is_refused()) => {
                    backoff(attempt).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Syncs `replica` past `receipt` and returns the entry there, checking it is the one
    /// the receipt names.
    async fn landed<S: LedgerStore>(
        &self,
        replica: &mut Ledger<S>,
        receipt: &Receipt,
    ) -> Result<SignedEntry, ClientError> {
        self.sync(replica, Some(receipt.seq + 1)).await?;
        let entry = replica.entries(receipt.seq).next().transpose()?;
        match entry {
            Some(e) if e.id == receipt.id => Ok(e),
            _ => Err(self.malformed(format!(
                "its receipt names entry #{} {}, which its ledger does not hold",
                receipt.seq, receipt.id
            ))),
        }
    }

    /// Signs `body` as a statement based on the first `base` entries (which the caller
    /// verified) and has the server append it, without replaying the entries since: for acks,
    /// which state a fact about the signer and vouch for nothing after their base. The
    /// server checks the rules; the caller's replica learns of the entry when it next syncs.
    pub async fn append_blind(
        &self,
        ledger_id: &Hash,
        base: u64,
        actor: &str,
        key: &SecretKey,
        now_ms: u64,
        body: Body,
    ) -> Result<Receipt, ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Signed anew each time: a retried statement is a new one, never a replay.
            let statement =
                Statement::sign(ledger_id, actor, base, now_ms + attempt as u64 - 1, body.clone(), key);
            match self.submit(&statement).await {
                Err(e) if attempt < APPEND_ATTEMPTS && e.is_busy() => backoff(attempt).await,
                other => return other,
            }
        }
    }

    /// Posts a signed statement; the server answers where it landed once it is on disk.
    pub async fn submit(&self, statement: &Statement) -> Result<Receipt, ClientError> {
        let r = self
            .req(reqwest::Method::POST, "/v1/entries")
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(statement.encode());
        self.json(r).await
    }

    /// Uploads an artifact, signed by an author key of the ledger.
    pub async fn put_object(
        &self,
        ledger_id: &Hash,
        actor: &str,
        key: &SecretKey,
        bytes: Vec<u8>,
    ) -> Result<(), ClientError> {
        let hash = Hash::of(&bytes);
        let sig = key.sign(wire::PUT_DOMAIN, &wire::put_digest(ledger_id, &hash));
        let r = self
            .req(reqwest::Method::PUT, &format!("/v1/objects/{}", hash.to_hex()))
            .header(wire::ACTOR_HEADER, actor)
            .header(wire::SIGNATURE_HEADER, sig.to_hex())
            .body(bytes);
        self.send(r).await.map(drop)
    }

    /// Fetches an artifact of at most `max_bytes` (the size its package entry records) and
    /// checks that it hashes to `hash`; a larger body is refused as it streams in.
    pub async fn get_object(&self, hash: &Hash, max_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let r = self.req(reqwest::Method::GET, &format!("/v1/objects/{}", hash.to_hex()));
        let what = format!("artifact {}", hash.short());
        let bytes = self.read_limited(self.send(r).await?, max_bytes, &what).await?;
        if Hash::of(&bytes) != *hash {
            return Err(self.malformed(format!("object {} does not hash to its name", hash.short())));
        }
        Ok(bytes.to_vec())
    }

    /// Sends a signed heartbeat.
    pub async fn heartbeat(&self, hb: &pd_ledger::heartbeat::SignedHeartbeat) -> Result<(), ClientError> {
        let r = self
            .req(reqwest::Method::POST, "/v1/heartbeats")
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(hb.encode());
        self.send(r).await.map(drop)
    }

    /// The newest heartbeat of each target, as the server received them. Each is signed by
    /// its target: check it with [`wire::Heartbeats::verified`] against a verified replica.
    pub async fn heartbeats(&self) -> Result<wire::Heartbeats, ClientError> {
        let r = self.req(reqwest::Method::GET, "/v1/heartbeats");
        self.json_within(r, limits::HEARTBEATS_ANSWER_BYTES, "the heartbeats").await
    }

    /// A signed export of the whole ledger with every artifact.
    pub async fn export(&self) -> Result<Vec<u8>, ClientError> {
        let r = self.req(reqwest::Method::GET, "/v1/export");
        self.read_limited(self.send(r).await?, limits::EXPORT_ANSWER_BYTES, "an export").await
    }

    /// Events from `from` on; ends when the connection does.
    pub async fn events(
        &self,
        from: u64,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        use eventsource_stream::Eventsource;
        let r = self
            .req(reqwest::Method::GET, &format!("/v1/events?from={from}"))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let resp = self.send(r).await?;
        let base = self.base.clone();
        let bounded = bounded_events(resp.bytes_stream(), self.base.clone());
        Ok(bounded.eventsource().filter_map(move |ev| {
            let base = base.clone();
            async move {
                match ev {
                    Ok(ev) if ev.data.is_empty() => None,
                    Ok(ev) => Some(
                        serde_json::from_str::<Event>(&ev.data)
                            .map_err(|e| ClientError::Malformed { url: base, problem: e.to_string() }),
                    ),
                    Err(e) => Some(Err(ClientError::Malformed { url: base, problem: e.to_string() })),
                }
            }
        }))
    }
}

/// The body of `resp`, or `None` as soon as it is known to pass `limit_bytes`: by its
/// `Content-Length`, or while streaming (a server may send more than it declared). Every
/// answer pd reads from the network goes through here.
pub async fn body_within(
    resp: reqwest::Response,
    limit_bytes: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit_bytes) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > limit_bytes {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// An event stream's bytes, cut off with an error once one event (the bytes since the last
/// blank line) passes [`limits::EVENT_BYTES`], so a server cannot fill memory with one event.
fn bounded_events(
    bytes: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>>,
    url: String,
) -> impl Stream<Item = Result<bytes::Bytes, BoundedEventError>> {
    bytes.scan((0usize, false), move |(pending, over), chunk| {
        let next = match chunk {
            _ if *over => None,
            Err(e) => Some(Err(BoundedEventError::Transport(e))),
            Ok(chunk) => {
                *pending = match chunk.windows(2).rposition(|w| w == b"\n\n") {
                    Some(at) => chunk.len() - at - 2,
                    None => *pending + chunk.len(),
                };
                *over = *pending > limits::EVENT_BYTES;
                Some(match *over {
                    true => Err(BoundedEventError::TooLarge(ClientError::TooLarge {
                        url: url.clone(),
                        what: "one event".into(),
                        limit_bytes: limits::EVENT_BYTES as u64,
                    })),
                    false => Ok(chunk),
                })
            }
        };
        futures_util::future::ready(next)
    })
}

/// Why an event stream was cut off.
#[derive(Debug, thiserror::Error)]
enum BoundedEventError {
    #[error(transparent)]
    Transport(reqwest::Error),
    #[error(transparent)]
    TooLarge(ClientError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile server: answers every request with `body` (declaring its length or not).
    async fn hostile(body: Vec<u8>, declare_length: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    let head = match declare_length {
                        true => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
                        false => "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn answers_larger_than_the_limit_are_refused_by_name() {
        for declare in [true, false] {
            let url = hostile(vec![b' '; limits::JSON_ANSWER_BYTES as usize + 1], declare).await;
            let c = Client::new(&url, None).unwrap();
            let e = c.head().await.expect_err("refused");
            assert!(matches!(e, ClientError::TooLarge { limit_bytes: limits::JSON_ANSWER_BYTES, .. }), "{e}");
            assert!(e.to_string().contains("more than 1 MiB for one answer; refusing it"), "{e}");
            let e = c.get_object(&Hash::of(b"x"), 1000).await.expect_err("refused");
            assert!(e.to_string().contains("more than 1000 B for artifact"), "{e}");
        }
    }

    #[tokio::test]
    async fn an_answer_at_the_limit_is_read() {
        let url = hostile(b"policy".to_vec(), false).await;
        let c = Client::new(&url, None).unwrap();
        assert_eq!(c.get_object(&Hash::of(b"policy"), 6).await.unwrap(), b"policy");
    }
}
