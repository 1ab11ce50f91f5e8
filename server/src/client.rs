//! The client of `pd serve`, used by the CLI, the agent and the tests.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use pd_ledger::{Body, Hash, Ledger, LedgerStore, SecretKey, SignedEntry, State};
use serde::de::DeserializeOwned;

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
            .pool_idle_timeout(Duration::from_secs(30))
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
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
        Err(ClientError::Refused { status, message })
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), source }
    }

    fn malformed(&self, problem: impl std::fmt::Display) -> ClientError {
        ClientError::Malformed { url: self.base.clone(), problem: problem.to_string() }
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let bytes = self.send(r).await?.bytes().await.map_err(|e| self.unreachable(e))?;
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
        let bytes = self.send(r).await?.bytes().await.map_err(|e| self.unreachable(e))?;
        let page: wire::EntryBytes = ciborium::from_reader(bytes.as_ref()).map_err(|e| self.malformed(e))?;
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

    /// Fetches an artifact and checks that it hashes to `hash`.
    pub async fn get_object(&self, hash: &Hash) -> Result<Vec<u8>, ClientError> {
        let r = self.req(reqwest::Method::GET, &format!("/v1/objects/{}", hash.to_hex()));
        let bytes = self.send(r).await?.bytes().await.map_err(|e| self.unreachable(e))?;
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
        self.json(self.req(reqwest::Method::GET, "/v1/heartbeats")).await
    }

    /// A signed export of the whole ledger with every artifact.
    pub async fn export(&self) -> Result<Vec<u8>, ClientError> {
        let r = self.req(reqwest::Method::GET, "/v1/export");
        Ok(self.send(r).await?.bytes().await.map_err(|e| self.unreachable(e))?.to_vec())
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
        Ok(resp.bytes_stream().eventsource().filter_map(move |ev| {
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
