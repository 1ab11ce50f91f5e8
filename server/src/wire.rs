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
    /// Environment, for entries about one (every kind `Body::env` names one for).
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
        let (version, hash) = match &e.entry.body {
            Body::Push(p) => (Some(p.version), Some(p.package)),
            Body::Rollback(r) => (Some(r.version), Some(r.package)),
            Body::Ack(a) => (Some(a.version), Some(a.package)),
            Body::Package(p) => (Some(p.version), Some(p.tarball.blake3)),
            Body::Approve(a) => (Some(a.version), Some(a.package)),
            Body::Wave(w) => (Some(w.stage.version), Some(w.stage.package)),
            Body::Gate(g) => (Some(g.stage.version), Some(g.stage.package)),
            Body::Bake(b) => (Some(b.stage.version), Some(b.stage.package)),
            Body::FreezeOverride(o) => (Some(o.version), Some(o.package)),
            _ => (None, None),
        };
        // Agents of an environment act on every entry about it but acks (a wave start
        // reaches new targets; a retry asks failed ones again).
        let env = e.entry.body.env().map(str::to_string);
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

/// `GET /v1/control` (CBOR): a light agent's page of the ledger (see `pd_ledger::partial`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPage {
    /// Control entries the ledger holds now.
    pub control_len: u64,
    /// The control entries after the follower's, in order, as canonical bytes.
    pub entries: EntryBytes,
    /// The newest checkpoint entry, sent when every control entry before it is in this page
    /// or before it.
    pub checkpoint: Option<serde_bytes::ByteBuf>,
    /// An RFC 9162 consistency proof from the follower's checkpoint to that one.
    pub consistency: Vec<Hash>,
    /// With `key`, a target-only key: the entries declaring it, each with its inclusion proof
    /// in that checkpoint.
    pub own: Vec<(serde_bytes::ByteBuf, Vec<Hash>)>,
}

/// Entries in a `GET /v1/entries` CBOR body: an array of byte strings.
pub type EntryBytes = Vec<serde_bytes::ByteBuf>;

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range as inclusive bounds; `None` if it
/// cannot be satisfied. Multiple ranges are not served.
pub fn parse_range(spec: &str, total: u64) -> Option<(u64, u64)> {
    let spec = spec.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (total.checked_sub(n.min(total))?, total.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, total.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(total.checked_sub(1)?)),
    };
    (start <= end && end < total).then_some((start, end))
}

/// Why an object upload's headers do not name a signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadAuthError {
    /// A header is missing (or not text).
    #[error("uploads need pd-actor and pd-signature headers")]
    Missing,
    /// `pd-signature` is not 64 bytes of hex.
    #[error("pd-signature is not a hex Ed25519 signature")]
    BadSignature,
}

/// The signer and signature an upload's `pd-actor` and `pd-signature` headers name.
pub fn upload_auth(
    actor: Option<&str>,
    signature: Option<&str>,
) -> Result<(String, pd_ledger::Signature), UploadAuthError> {
    let (Some(actor), Some(sig)) = (actor, signature) else { return Err(UploadAuthError::Missing) };
    let sig = pd_ledger::Signature::from_hex(sig).map_err(|_| UploadAuthError::BadSignature)?;
    Ok((actor.to_string(), sig))
}

/// The first event to send after a `Last-Event-ID` header: the one after it, if it is a
/// number that has a next one (`u64::MAX` has none, and does not wrap to 0).
pub fn next_after_last_event_id(header: &str) -> Option<u64> {
    header.trim().parse::<u64>().ok()?.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse_range("bytes=2-", 10), Some((2, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=5-100", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn upload_headers_and_last_event_ids() {
        assert_eq!(upload_auth(None, Some("00")), Err(UploadAuthError::Missing));
        assert_eq!(upload_auth(Some("a"), Some("zz")), Err(UploadAuthError::BadSignature));
        let hex = "ab".repeat(64);
        assert_eq!(upload_auth(Some("a"), Some(&hex)).unwrap().0, "a");
        assert_eq!(next_after_last_event_id(" 41 "), Some(42));
        assert_eq!(next_after_last_event_id(&u64::MAX.to_string()), None, "no wrap to 0");
        assert_eq!(next_after_last_event_id("x"), None);
    }
}

/// `GET /v1/heartbeats`: the newest heartbeat per target and the server's clock.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeats {
    /// The server's time when it answered; `received_ms` is on the same clock.
    pub now_ms: u64,
    /// One per target that sent any.
    pub heartbeats: Vec<HeartbeatSeen>,
}

/// One target's newest heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatSeen {
    /// When the server received it (server clock).
    pub received_ms: u64,
    /// The signed heartbeat's CBOR, hex.
    pub heartbeat: String,
}

/// A heartbeat whose signature verified against a replica.
#[derive(Clone, Debug, Serialize)]
pub struct Seen {
    /// When the server received it (server clock).
    pub received_ms: u64,
    /// What the target said.
    pub heartbeat: pd_ledger::heartbeat::Heartbeat,
}

/// Verified heartbeats by target, with the server's clock they are judged on.
#[derive(Clone, Debug, Default)]
pub struct SeenNow {
    /// The server's time.
    pub now_ms: u64,
    /// Each target's newest heartbeat that verifies against the state they were read with.
    pub seen: std::collections::BTreeMap<String, Seen>,
}

impl SeenNow {
    /// A target's liveness by its heartbeat, on the server's clock.
    pub fn liveness(&self, target: &str) -> pd_ledger::heartbeat::Liveness {
        let seen = self.seen.get(target);
        pd_ledger::heartbeat::liveness(seen.map(|s| (s.received_ms, s.heartbeat.interval_ms)), self.now_ms)
    }
}

impl Heartbeats {
    /// A target's liveness by its verified heartbeat (from [`Heartbeats::verified`]), on
    /// the server's clock.
    pub fn liveness(&self, seen: Option<&Seen>) -> pd_ledger::heartbeat::Liveness {
        pd_ledger::heartbeat::liveness(seen.map(|s| (s.received_ms, s.heartbeat.interval_ms)), self.now_ms)
    }

    /// The heartbeats that verify against `state` (an active target key signed each), by
    /// target; the rest are dropped, as a server cannot speak for a target.
    pub fn verified(&self, state: &pd_ledger::State) -> std::collections::BTreeMap<String, Seen> {
        self.heartbeats
            .iter()
            .filter_map(|h| {
                let bytes = hex::decode(&h.heartbeat).ok()?;
                let hb = pd_ledger::heartbeat::SignedHeartbeat::decode(&bytes).ok()?;
                hb.verify(state).ok()?;
                Some((
                    hb.heartbeat.target.clone(),
                    Seen { received_ms: h.received_ms, heartbeat: hb.heartbeat },
                ))
            })
            .collect()
    }
}
