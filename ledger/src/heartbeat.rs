//! Heartbeats: a target's small signed "alive, and running these versions" message, sent to
//! the server every interval. They are not ledger entries (liveness changes every few
//! seconds and proves nothing an audit needs); the server keeps the newest per target, and
//! whoever reads them checks the signature against its own replica's keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bytes::{Hash, Signature};
use crate::keys::{self, SecretKey};
use crate::limits::{MAX_HEARTBEAT_BYTES, MAX_TARGET_SETS};
use crate::state::{KeyState, State};
use crate::version::Version;

/// Domain tag of heartbeat signatures.
pub const HEARTBEAT_DOMAIN: &[u8] = b"pd/heartbeat/v1\0";

/// A target is stale when no heartbeat came for this many of its intervals.
pub const STALE_AFTER_INTERVALS: u64 = 3;

/// Shortest and longest heartbeat interval, in milliseconds.
pub const INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// The interval an agent sends at unless told otherwise (`pd agent --heartbeat`).
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

/// What a target says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The ledger it follows.
    pub ledger_id: Hash,
    /// The target key's name.
    pub target: String,
    /// When it was sent (the agent's clock).
    pub time_ms: u64,
    /// How often it sends one.
    pub interval_ms: u64,
    /// What it runs, one per policy set, sorted by set.
    pub running: Vec<Running>,
    /// Entries in its verified replica.
    pub replica_len: u64,
    /// Whether the service answered its health URL with a 2xx when the heartbeat was sent
    /// (`pd agent --health-url`); `None` without one. The `health` rollout gate reads it.
    pub healthy: Option<bool>,
}

/// One policy set a target runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Running {
    /// The policy set.
    pub set: String,
    /// The version loaded.
    pub version: Version,
    /// Its tarball BLAKE3.
    pub package: Hash,
}

/// A heartbeat and the target's Ed25519 signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHeartbeat {
    /// The message.
    pub heartbeat: Heartbeat,
    /// Signature by the target's key over [`HEARTBEAT_DOMAIN`] and the hash of the message.
    pub sig: Signature,
}

/// A heartbeat that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Over [`MAX_HEARTBEAT_BYTES`].
    #[error("heartbeat is {}, over the limit of {}", crate::limits::human_bytes(*.0 as u64), crate::limits::human_bytes(MAX_HEARTBEAT_BYTES as u64))]
    TooLarge(usize),
    /// Not CBOR of a heartbeat, or not its one canonical form.
    #[error("not a canonical pd heartbeat: {0}")]
    Malformed(String),
    /// For another ledger.
    #[error("the heartbeat is for ledger {0}, not this one")]
    OtherLedger(Hash),
    /// The sender may not send heartbeats.
    #[error("{0}")]
    Key(#[from] crate::rules::RuleError),
    /// The signature does not verify.
    #[error("the heartbeat signature by {0:?} does not verify")]
    BadSignature(String),
    /// A field out of bounds.
    #[error("invalid heartbeat: {0}")]
    Invalid(String),
}

impl Heartbeat {
    fn digest(&self) -> Hash {
        Hash::of(&crate::entry::canonical_cbor(self))
    }

    /// Signs it with the target's key.
    pub fn sign(self, key: &SecretKey) -> SignedHeartbeat {
        let sig = key.sign(HEARTBEAT_DOMAIN, &self.digest().0);
        SignedHeartbeat { heartbeat: self, sig }
    }
}

impl SignedHeartbeat {
    /// Its canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        crate::entry::canonical_cbor(self)
    }

    /// Decodes exactly one canonical heartbeat of bounded size.
    pub fn decode(bytes: &[u8]) -> Result<SignedHeartbeat, HeartbeatError> {
        if bytes.len() > MAX_HEARTBEAT_BYTES {
            return Err(HeartbeatError::TooLarge(bytes.len()));
        }
        let hb: SignedHeartbeat =
            ciborium::from_reader(bytes).map_err(|e| HeartbeatError::Malformed(e.to_string()))?;
        if hb.encode() != bytes {
            return Err(HeartbeatError::Malformed("re-encoding gives different bytes".into()));
        }
        Ok(hb)
    }

    /// Checks it against a ledger: this ledger, an active target key, a valid signature, sane
    /// fields. Returns the target's key.
    pub fn verify<'s>(&self, state: &'s State) -> Result<&'s KeyState, HeartbeatError> {
        let h = &self.heartbeat;
        if h.ledger_id != state.ledger_id() {
            return Err(HeartbeatError::OtherLedger(h.ledger_id));
        }
        let key = crate::adoption::may_heartbeat(state, &h.target)?;
        if !keys::verify(&key.decl.public_key, HEARTBEAT_DOMAIN, &h.digest().0, &self.sig) {
            return Err(HeartbeatError::BadSignature(h.target.clone()));
        }
        if !INTERVAL_MS.contains(&h.interval_ms) {
            return Err(HeartbeatError::Invalid(format!(
                "interval {} ms is outside {}..={} ms",
                h.interval_ms,
                INTERVAL_MS.start(),
                INTERVAL_MS.end()
            )));
        }
        if h.running.len() > MAX_TARGET_SETS || !h.running.windows(2).all(|w| w[0].set < w[1].set) {
            return Err(HeartbeatError::Invalid(format!(
                "at most {MAX_TARGET_SETS} running sets, each once, sorted"
            )));
        }
        Ok(key)
    }
}

/// Whether a target is alive, from when its newest heartbeat arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// A heartbeat came within [`STALE_AFTER_INTERVALS`] intervals.
    Live,
    /// None came for longer.
    Stale,
    /// None was ever seen (or nobody collects them here, as on a home without a server).
    Unknown,
}

/// The liveness of a target whose newest heartbeat (with `interval_ms`) arrived at
/// `last_seen_ms`, judged at `now_ms` on the same clock.
pub fn liveness(last_seen: Option<(u64, u64)>, now_ms: u64) -> Liveness {
    match last_seen {
        None => Liveness::Unknown,
        Some((seen, interval)) if now_ms.saturating_sub(seen) > STALE_AFTER_INTERVALS * interval => {
            Liveness::Stale
        }
        Some(_) => Liveness::Live,
    }
}

/// What `target` runs, per policy set: the newest thing the target signed about it, by its own
/// clock — its last heartbeat, or a `loaded` ack signed after that heartbeat (so a load shows
/// as soon as it is acked, not a heartbeat later). Sets it never reported are absent.
pub fn running(state: &State, target: &str, last: Option<&Heartbeat>) -> BTreeMap<String, Version> {
    let mut running: BTreeMap<String, Version> =
        last.map(|h| h.running.iter().map(|r| (r.set.clone(), r.version)).collect()).unwrap_or_default();
    let env = state.keys().get(target).and_then(|k| k.decl.env.clone()).unwrap_or_default();
    let Some(env) = state.env(&env) else { return running };
    for (set, slot) in env.sets() {
        let acked = slot.report(target).and_then(|r| r.loaded.as_ref());
        if let Some(l) = acked.filter(|l| last.is_none_or(|h| l.signed_ms > h.time_ms)) {
            running.insert(set.clone(), l.version);
        }
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_turns_stale_after_three_intervals_and_never_before() {
        assert_eq!(liveness(None, 5), Liveness::Unknown);
        assert_eq!(liveness(Some((1_000, 100)), 1_300), Liveness::Live);
        assert_eq!(liveness(Some((1_000, 100)), 1_301), Liveness::Stale);
        assert_eq!(liveness(Some((1_000, 100)), 900), Liveness::Live, "a clock behind is not stale");
    }

    #[test]
    fn a_heartbeat_round_trips_and_a_changed_byte_is_refused_or_breaks_the_signature() {
        let key = SecretKey::from_seed([4; 32]);
        let hb = Heartbeat {
            ledger_id: Hash([1; 32]),
            target: "dev-1".into(),
            time_ms: 7,
            interval_ms: 1000,
            running: vec![Running {
                set: "p".into(),
                version: Version::new(0, 1, 0),
                package: Hash([2; 32]),
            }],
            replica_len: 9,
            healthy: Some(true),
        }
        .sign(&key);
        let bytes = hb.encode();
        assert_eq!(SignedHeartbeat::decode(&bytes).unwrap(), hb);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok(d) = SignedHeartbeat::decode(&b) {
                let ok = keys::verify(&key.public(), HEARTBEAT_DOMAIN, &d.heartbeat.digest().0, &d.sig);
                assert!(!ok || d == hb, "flip at {i} verified");
            }
        }
        assert!(matches!(
            SignedHeartbeat::decode(&vec![0; MAX_HEARTBEAT_BYTES + 1]),
            Err(HeartbeatError::TooLarge(_))
        ));
    }
}
