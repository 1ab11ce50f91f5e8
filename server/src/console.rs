//! The web console at `/`: a read-only page for deployers, approvers and auditors.
//!
//! Its files (`server/console/`: plain ES modules, HTML and CSS, no build step) are embedded
//! in the binary and served without the read token, because they hold no data: every figure
//! the page shows comes from the `/v1` API, which keeps its token rule (the page asks for the
//! token when the API answers 401 and keeps it in the tab's sessionStorage). Nothing secret
//! is ever sent to the browser, and the page checks inclusion proofs and checkpoint
//! signatures itself (`console/verify.js`) rather than take the server's word.
//!
//! [`fleet`] is the one view the API did not have: each environment's slots with their
//! adoption by [`pd_ledger::adoption`] and each target's liveness, so the page never
//! decides by itself what "adopted", "failed" or "stale" means.

use std::collections::{BTreeMap, HashMap};

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pd_ledger::adoption::{self, Status};
use pd_ledger::heartbeat::{self, Liveness};
use pd_ledger::{Hash, Outcome, State, Version};
use serde::Serialize;
use serde_json::{json, Value};

use crate::wire::SeenNow;

/// The Content-Security-Policy of every console answer: this origin only, no inline script
/// or style, never framed.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; \
                       script-src 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, bytes: include_bytes!(concat!("../console/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console; `/console/{name}` serves exactly these.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("fleet.js", JS),
    asset!("rollouts.js", JS),
    asset!("approvals.js", JS),
    asset!("audit.js", JS),
    asset!("verify.js", JS),
    asset!("tar.js", JS),
    asset!("diff.js", JS),
];

/// The console's routes: `/` and `/console/{file}`, open to all (see the module docs).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/console/{file}", get(|Path(file): Path<String>| async move { asset(&file) }))
}

/// An embedded file with the console's headers, or a 404 with the same headers.
fn asset(name: &str) -> Response {
    let mut r = match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no console file {name:?}\n")).into_response(),
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// `GET /v1/fleet` (JSON): every environment in promotion order, each slot (policy set) with
/// its desired version, adoption counts, what its targets run and its rollout's progress, and
/// each target with its labels, liveness, running versions, status and last ack per set.
/// Written straight from borrowed state (no `serde_json::Value` per target): at 10,000
/// targets it is the page's biggest answer.
pub fn fleet(state: &State, beats: &SeenNow) -> Vec<u8> {
    let overview = adoption::overview(state);
    let envs: Vec<EnvFleet<'_>> = overview.iter().map(|env| EnvFleet::new(state, env, beats)).collect();
    let fleet = FleetJson {
        ledger_id: state.ledger_id(),
        len: state.len(),
        head: state.head(),
        now_ms: beats.now_ms,
        envs: envs.iter().map(EnvFleet::json).collect(),
    };
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_vec(&fleet).unwrap_or_default()
}

#[derive(Serialize)]
struct FleetJson<'a> {
    ledger_id: Hash,
    len: u64,
    head: Hash,
    now_ms: u64,
    envs: Vec<EnvJson<'a>>,
}

#[derive(Serialize)]
struct EnvJson<'a> {
    env: &'a str,
    min_targets: u32,
    slots: Vec<Value>,
    targets: Vec<TargetJson<'a>>,
}

#[derive(Serialize)]
struct TargetJson<'a> {
    name: &'a str,
    labels: Option<&'a [String]>,
    sets: Option<&'a [String]>,
    liveness: Liveness,
    last_seen_ms: Option<u64>,
    running: Option<&'a BTreeMap<String, Version>>,
    status: BTreeMap<&'a str, &'a Status>,
    acks: BTreeMap<&'a str, AckJson<'a>>,
}

#[derive(Serialize)]
struct AckJson<'a> {
    version: Version,
    outcome: &'a Outcome,
    seq: u64,
    time_ms: u64,
}

/// One environment of [`fleet`], with what its slots and targets are looked up in.
struct EnvFleet<'a> {
    state: &'a State,
    env: &'a adoption::EnvView,
    beats: &'a SeenNow,
    /// Per target, what it runs per set.
    running: HashMap<&'a str, BTreeMap<String, Version>>,
    /// Per slot (in `env.sets` order), each target's status.
    status: Vec<HashMap<&'a str, &'a Status>>,
}

impl<'a> EnvFleet<'a> {
    fn new(state: &'a State, env: &'a adoption::EnvView, beats: &'a SeenNow) -> EnvFleet<'a> {
        let running = env
            .targets
            .iter()
            .map(|t| (t.as_str(), heartbeat::running(state, t, beats.seen.get(t).map(|s| &s.heartbeat))))
            .collect();
        let status = env
            .sets
            .iter()
            .map(|s| s.adoption.targets.iter().map(|(t, st)| (t.as_str(), st)).collect())
            .collect();
        EnvFleet { state, env, beats, running, status }
    }

    fn liveness(&self, target: &str) -> Liveness {
        self.beats.liveness(target)
    }

    fn json(&self) -> EnvJson<'_> {
        EnvJson {
            env: &self.env.env,
            min_targets: self.env.min_targets,
            slots: self.env.sets.iter().map(|s| self.slot(s)).collect(),
            targets: self.env.targets.iter().map(|t| self.target(t)).collect(),
        }
    }

    fn slot(&self, s: &adoption::SlotView) -> Value {
        let a = &s.adoption;
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        for (t, _) in &a.targets {
            if let Some(v) = self.running.get(t.as_str()).and_then(|r| r.get(&s.set)) {
                *versions.entry(v.to_string()).or_default() += 1;
            }
        }
        let stale = a.targets.iter().filter(|(t, _)| self.liveness(t) == Liveness::Stale).count();
        json!({
            "set": s.set, "desired": a.desired, "adopted": s.adopted, "min_targets": a.min_targets,
            "targets": a.targets.len(), "loaded": a.loaded(), "failed": a.failed().len(),
            "waiting": a.waiting().len(), "queued": a.queued(), "stale": stale, "running": versions,
            "rollout": pd_ledger::rollout::progress(self.state, &self.env.env, &s.set),
        })
    }

    fn target<'b>(&'b self, name: &'b str) -> TargetJson<'b> {
        let decl = self.state.keys().get(name).map(|k| &k.decl);
        let mut status = BTreeMap::new();
        let mut acks = BTreeMap::new();
        for (s, by_target) in self.env.sets.iter().zip(&self.status) {
            if let Some(st) = by_target.get(name) {
                status.insert(s.set.as_str(), *st);
            }
            if let Some(r) = self.state.slot(&self.env.env, &s.set).and_then(|slot| slot.report(name)) {
                let ack = AckJson { version: r.version, outcome: &r.outcome, seq: r.seq, time_ms: r.time_ms };
                acks.insert(s.set.as_str(), ack);
            }
        }
        TargetJson {
            name,
            labels: decl.map(|d| d.labels.as_slice()),
            sets: decl.map(|d| d.sets.as_slice()),
            liveness: self.liveness(name),
            last_seen_ms: self.beats.seen.get(name).map(|s| s.received_ms),
            running: self.running.get(name),
            status,
            acks,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pd_ledger::file_store::FileStore;

    use super::*;
    use crate::api::{router, ServeOptions};

    /// A server with a read token over the testkit's deployed ledger, and its URL.
    async fn start(dir: &std::path::Path) -> (String, tokio::sync::watch::Sender<bool>) {
        let d = pd_ledger::testkit::deployed(FileStore::open(&dir.join("ledger")).unwrap());
        let store = Arc::new(pd_store::FsStore::open(&dir.join("objects")).unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = ServeOptions::new(addr);
        opts.token = Some("s3cret".into());
        let app = router(d.ledger, store, opts, shutdown);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), stop)
    }

    #[tokio::test]
    async fn the_console_is_served_without_the_token_with_strict_headers_and_the_api_still_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _stop) = start(dir.path()).await;
        let http = reqwest::Client::new();
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/console/app.js", JS),
            ("/console/console.css", "text/css; charset=utf-8"),
        ] {
            let r = http.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
        let missing = http.get(format!("{url}/console/%2e%2e%2fCargo.toml")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        let unknown = http.get(format!("{url}/console/secret.key")).send().await.unwrap();
        assert_eq!(unknown.status(), 404);
        assert_eq!(unknown.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        for path in ["/v1/state", "/v1/fleet"] {
            let r = http.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} without the token");
            let r = http.get(format!("{url}{path}")).bearer_auth("s3cret").send().await.unwrap();
            assert_eq!(r.status(), 200, "{path} with the token");
        }
    }

    #[tokio::test]
    async fn the_fleet_counts_follow_the_adoption_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _stop) = start(dir.path()).await;
        let r =
            reqwest::Client::new().get(format!("{url}/v1/fleet")).bearer_auth("s3cret").send().await.unwrap();
        let fleet: Value = r.json().await.unwrap();
        let dev = fleet["envs"].as_array().unwrap().iter().find(|e| e["env"] == "dev").unwrap();
        let slot = &dev["slots"][0];
        assert_eq!(slot["desired"]["version"], "PD-1.0.0", "{slot}");
        assert_eq!((slot["targets"].as_u64(), slot["loaded"].as_u64()), (Some(1), Some(0)), "{slot}");
        assert_eq!(slot["waiting"], 1, "{slot}");
        assert_eq!(dev["targets"][0]["liveness"], "unknown", "no heartbeat yet: {dev}");
    }

    #[test]
    fn every_asset_exists_and_every_module_it_imports_is_served() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            let text = std::str::from_utf8(a.bytes).unwrap();
            let modules = text.split("from './").skip(1).map(|rest| rest.split('\'').next());
            let linked = text.split("\"/console/").skip(1).map(|rest| rest.split('"').next());
            for name in modules.chain(linked) {
                let name = name.unwrap();
                assert!(
                    ASSETS.iter().any(|b| b.name == name),
                    "{} imports {name}, which is not served",
                    a.name
                );
            }
        }
    }
}
