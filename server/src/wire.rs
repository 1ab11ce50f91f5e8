//! What travels between the server and its clients, shared by both sides.

use pd_ledger::{Body, Hash, SignedEntry, Version};
use serde::{Deserialize, Serialize};

/// `GET /v1/head`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadInfo {
    /// The genesis entry's ledger id.
    pub ledger_id: Hash,
    /// Number of entries: the next entry's seq.
    pub len: u64,
    /// Id of the last entry.
    pub head: Hash,
    /// Time of the last entry.
    pub last_time_ms: u64,
}

/// `POST /v1/turn`: the right to append the next entry, for a short while.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Turn {
    /// Pass back in the `pd-lease` header of the append.
    pub lease: String,
    /// The position to sign for.
    pub seq: u64,
    /// The entry to chain to.
    pub prev: Hash,
    /// The entry's time must be at least this.
    pub min_time_ms: u64,
    /// The lease ends this many milliseconds after it was granted.
    pub expires_in_ms: u64,
}

/// `POST /v1/turn` request, signed so only enrolled keys can hold the ledger's turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TurnRequest {
    /// The enrolled key that will sign.
    pub actor: String,
    /// The requester's clock; the server refuses requests more than a minute off its own.
    pub time_ms: u64,
    /// Random, fresh per request: the server grants a turn once per nonce, so a request seen
    /// on the wire cannot be replayed.
    pub nonce: Hash,
    /// Ed25519 over [`turn_digest`] with [`TURN_DOMAIN`].
    pub sig: pd_ledger::Signature,
}

/// Domain of turn-request signatures.
pub const TURN_DOMAIN: &[u8] = b"pd/turn/v2\0";

/// The digest a turn request signs: BLAKE3 of the ledger id, the actor, the time and the nonce.
pub fn turn_digest(ledger_id: &Hash, actor: &str, time_ms: u64, nonce: &Hash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&ledger_id.0);
    h.update(&(actor.len() as u64).to_be_bytes());
    h.update(actor.as_bytes());
    h.update(&time_ms.to_be_bytes());
    h.update(&nonce.0);
    *h.finalize().as_bytes()
}

/// `POST /v1/entries` success.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receipt {
    /// Where the entry landed.
    pub seq: u64,
    /// Its id, the new head.
    pub id: Hash,
}

/// Every error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and what to do.
    pub error: String,
}

/// The data of one `GET /v1/events` event; the SSE id is `seq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Entry position.
    pub seq: u64,
    /// Entry kind (`push`, `ack`, …).
    pub kind: String,
    /// Signer.
    pub actor: String,
    /// Environment, for push, rollback and ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Version, for entries about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Tarball BLAKE3, for entries about one package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
    /// The entry's canonical bytes, hex: followers append them without another request.
    pub entry: String,
}

/// SSE event name of entries that change an environment's desired version.
pub const POLICY_CHANGED: &str = "policyChanged";

impl Event {
    /// The event for one entry.
    pub fn of(e: &SignedEntry) -> Event {
        let (env, version, hash) = match &e.entry.body {
            Body::Push(p) => (Some(p.env.clone()), Some(p.version), Some(p.package)),
            Body::Rollback(r) => (Some(r.env.clone()), Some(r.version), Some(r.package)),
            Body::Ack(a) => (Some(a.env.clone()), Some(a.version), Some(a.package)),
            Body::Package(p) => (None, Some(p.version), Some(p.tarball.blake3)),
            Body::Approve(a) => (None, Some(a.version), Some(a.package)),
            _ => (None, None, None),
        };
        Event {
            seq: e.entry.seq,
            kind: e.entry.body.kind().to_string(),
            actor: e.entry.actor.clone(),
            env,
            version,
            hash,
            entry: hex::encode(&e.bytes),
        }
    }

    /// The SSE event name: [`POLICY_CHANGED`] for push and rollback, else the kind.
    pub fn name(&self) -> &str {
        match self.kind.as_str() {
            "push" | "rollback" => POLICY_CHANGED,
            k => k,
        }
    }
}

/// Header carrying a [`Turn::lease`].
pub const LEASE_HEADER: &str = "pd-lease";
/// Header naming the key that signed an object upload.
pub const ACTOR_HEADER: &str = "pd-actor";
/// Header carrying the hex Ed25519 signature of an object upload.
pub const SIGNATURE_HEADER: &str = "pd-signature";
/// Domain of object-upload signatures: over the ledger id and the object's BLAKE3.
pub const PUT_DOMAIN: &[u8] = b"pd/put-object/v1\0";

/// The digest an uploader signs: BLAKE3 of the ledger id and the object hash.
pub fn put_digest(ledger_id: &Hash, object: &Hash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&ledger_id.0);
    h.update(&object.0);
    *h.finalize().as_bytes()
}

/// Entries in a `GET /v1/entries` CBOR body: an array of byte strings.
pub type EntryBytes = Vec<serde_bytes::ByteBuf>;
