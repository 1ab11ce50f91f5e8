//! Notifications (`pd serve --notify URL`): a JSON event POSTed to each URL when a push,
//! rollback, failed ack, adoption or stale target happens. The event carries a `text` field,
//! so a Slack (or Mattermost, or Teams workflow) incoming webhook shows it as it is.
//!
//! What happened is read from the committed ledger and the heartbeats, never from a request,
//! so an event is sent only for what is on the record; adoption is the ledger's own rule
//! ([`pd_ledger::adoption`]). Delivery is best effort: each URL gets its events in order,
//! retried with exponential backoff, and a receiver that is down delays nothing but its own
//! queue; while [`QUEUE`] events wait for it, newer ones for it are dropped (and logged).

use pd_ledger::{Body, Outcome, SignedEntry, State, Version};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Events waiting per receiver; while that many wait, newer ones for it are dropped (and logged).
pub const QUEUE: usize = 1024;
/// Attempts per event and receiver.
pub const ATTEMPTS: u32 = 6;
/// The first retry's pause; each next one doubles (0.5 s, 1 s, … 8 s).
pub const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// What the notifier has announced already, so each thing is said once.
#[derive(Default)]
pub struct Seen {
    /// Adoptions said: environment, set, version and the entry that made it desired (a
    /// rollback to a version makes a new adoption of it).
    adopted: BTreeSet<(String, String, Version, u64)>,
    stale: BTreeSet<String>,
}

impl Seen {
    /// The events an appended entry makes, judged against `after`: the state when the
    /// notifier read it (so an adoption overtaken by a newer push in the same read is not
    /// announced; a restarted server announces from its start on).
    pub fn entry(&mut self, e: &SignedEntry, after: &State) -> Vec<Value> {
        let actor = &e.entry.actor;
        let at = (e.entry.seq, e.entry.time_ms);
        match &e.entry.body {
            Body::Push(p) => vec![event(
                "push",
                at,
                format!("{} pushed to {} by {actor}: {}", p.version, p.env, p.reason),
                json!({ "env": p.env, "version": p.version, "actor": actor, "reason": p.reason }),
            )],
            Body::Rollback(r) => vec![event(
                "rollback",
                at,
                format!("{} rolled back to {} by {actor}: {}", r.env, r.version, r.reason),
                json!({ "env": r.env, "version": r.version, "actor": actor, "reason": r.reason }),
            )],
            Body::Ack(a) => {
                let mut out = Vec::new();
                if let Outcome::Failed(why) = &a.outcome {
                    out.push(event(
                        "failed",
                        at,
                        format!("{actor} failed to load {} in {}: {why}", a.version, a.env),
                        json!({ "env": a.env, "version": a.version, "target": actor, "error": why }),
                    ));
                }
                let adoption = pd_ledger::adoption::adoption_of(after, &a.env, a.version);
                let set = after.package(a.version).map(|p| p.package.name.clone()).unwrap_or_default();
                let since = adoption.desired.as_ref().map_or(0, |d| d.seq);
                if adoption.adopted_version(a.version)
                    && self.adopted.insert((a.env.clone(), set, a.version, since))
                {
                    let n = adoption.targets.len();
                    out.push(event(
                        "adopted",
                        at,
                        format!("{} adopted in {}: {n}/{n} targets loaded it", a.version, a.env),
                        json!({ "env": a.env, "version": a.version, "targets": n }),
                    ));
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The events of targets turning stale (said once until they come back).
    pub fn stale(&mut self, stale_now: &BTreeSet<String>, now_ms: u64) -> Vec<Value> {
        self.stale.retain(|t| stale_now.contains(t));
        stale_now
            .iter()
            .filter(|t| self.stale.insert((*t).clone()))
            .map(|t| {
                event(
                    "stale",
                    (0, now_ms),
                    format!("{t} is stale: no heartbeat within 3 of its intervals"),
                    json!({ "target": t }),
                )
            })
            .collect()
    }
}

/// One event: its kind, a sentence, and its fields.
fn event(kind: &str, (seq, time_ms): (u64, u64), text: String, fields: Value) -> Value {
    let mut v = json!({
        "event": kind, "text": format!("pd: {text}"), "time_ms": time_ms,
        "time": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(time_ms)).to_string(),
    });
    if seq > 0 {
        v["seq"] = seq.into();
    }
    if let (Some(v), Value::Object(f)) = (v.as_object_mut(), fields) {
        v.extend(f);
    }
    v
}

/// Delivers events to one receiver, in order, each retried with backoff; runs until
/// `events` closes.
pub async fn deliver(client: reqwest::Client, url: String, mut events: tokio::sync::mpsc::Receiver<Value>) {
    while let Some(event) = events.recv().await {
        let mut pause = FIRST_PAUSE;
        for attempt in 1..=ATTEMPTS {
            match client.post(&url).json(&event).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => tracing::warn!("notification to {url} answered {} (attempt {attempt})", r.status()),
                Err(e) => tracing::warn!("notification to {url} failed (attempt {attempt}): {e}"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}
