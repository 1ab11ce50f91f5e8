//! The client of `pd serve`, used by the CLI, the agent and the tests.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use pd_ledger::{Body, Hash, Ledger, LedgerStore, SecretKey, SignedEntry, State};
use serde::de::DeserializeOwned;

use crate::limits::{self, human_bytes};
use crate::wire::{self, ApiError, Event, HeadInfo, Receipt, Turn, TurnRequest};

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
    /// Whether the server said the request conflicts with the ledger (stale position).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Refused { status: 409 | 410, .. })
    }
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
        let http = reqwest::Client::builder()
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

    /// The body of `resp`, refused as soon as it is known to pass `limit_bytes`: by its
    /// `Content-Length`, or while streaming (a server may send more than it declared).
    async fn read_limited(
        &self,
        resp: reqwest::Response,
        limit_bytes: u64,
        what: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let too_large =
            || ClientError::TooLarge { url: self.base.clone(), what: what.to_string(), limit_bytes };
        if resp.content_length().is_some_and(|n| n > limit_bytes) {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            if (out.len() + chunk.len()) as u64 > limit_bytes {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
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

    /// Takes a turn, syncs `replica` to it, signs `make(state)` as `actor` and appends it on
    /// the server and in `replica`. Retries once if the turn expired.
    pub async fn append<S: LedgerStore, E: From<ClientError>>(
        &self,
        replica: &mut Ledger<S>,
        actor: &str,
        key: &SecretKey,
        now_ms: u64,
        mut make: impl FnMut(&State) -> Result<Body, E>,
    ) -> Result<SignedEntry, E> {
        if replica.state().is_empty() {
            self.sync(replica, None).await?;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let turn = self.turn(&replica.state().ledger_id(), actor, key, now_ms).await?;
            self.sync(replica, Some(turn.seq)).await?;
            if replica.state().len() != turn.seq || replica.head() != turn.prev {
                self.release(&turn.lease).await;
                return Err(self.malformed("its turn does not match the entries it served").into());
            }
            let body = match make(replica.state()) {
                Ok(b) => b,
                Err(e) => {
                    self.release(&turn.lease).await;
                    return Err(e);
                }
            };
            let entry = replica.sign_next(actor, key, now_ms.max(turn.min_time_ms), body);
            if let Err(e) = pd_ledger::check(replica.state(), &entry) {
                self.release(&turn.lease).await;
                return Err(ClientError::Rule(e).into());
            }
            match self.post_entry(&entry, Some(&turn.lease)).await {
                Ok(_) => {
                    replica.append(entry.clone()).map_err(ClientError::from)?;
                    return Ok(entry);
                }
                Err(e) if e.is_conflict() && attempts < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Appends `body` on the head the server's turn names, without replaying the entries
    /// since the caller's replica: for acks, which state a fact about the signer and vouch
    /// for nothing before them. The server checks the rules; the caller's replica learns of
    /// the entry when it next syncs.
    pub async fn append_blind(
        &self,
        ledger_id: &Hash,
        actor: &str,
        key: &SecretKey,
        now_ms: u64,
        body: Body,
    ) -> Result<SignedEntry, ClientError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let turn = self.turn(ledger_id, actor, key, now_ms).await?;
            let time_ms = now_ms.max(turn.min_time_ms);
            let entry = pd_ledger::Entry::sign(turn.seq, turn.prev, time_ms, actor, body.clone(), key);
            match self.post_entry(&entry, Some(&turn.lease)).await {
                Ok(_) => return Ok(entry),
                Err(e) if e.is_conflict() && attempts < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits in line for the right to append the next entry.
    async fn turn(
        &self,
        ledger_id: &Hash,
        actor: &str,
        key: &SecretKey,
        now_ms: u64,
    ) -> Result<Turn, ClientError> {
        let mut nonce = [0u8; 32];
        // The OS random source does not fail on Linux once booted; if it did, nothing is safe.
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let nonce = Hash(nonce);
        let sig = key.sign(wire::TURN_DOMAIN, &wire::turn_digest(ledger_id, actor, now_ms, &nonce));
        let request = TurnRequest { actor: actor.into(), time_ms: now_ms, nonce, sig };
        self.json(self.req(reqwest::Method::POST, "/v1/turn").json(&request)).await
    }

    async fn release(&self, lease: &str) {
        let _ = self.send(self.req(reqwest::Method::DELETE, &format!("/v1/turn/{lease}"))).await;
    }

    /// Posts a signed entry (with a lease from a turn, or chained to the current head).
    pub async fn post_entry(&self, entry: &SignedEntry, lease: Option<&str>) -> Result<Receipt, ClientError> {
        let mut r = self
            .req(reqwest::Method::POST, "/v1/entries")
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(entry.bytes.clone());
        if let Some(l) = lease {
            r = r.header(wire::LEASE_HEADER, l);
        }
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
