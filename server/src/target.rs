//! A small reference target for tests and the demo: an HTTP service that loads the policy
//! files under a directory into memory on `POST /reload?ver=PD-x.y.z` (the seed's webhook)
//! and reports what it runs on `GET /version`. It also serves a simulated load, counted on
//! `GET /metrics` for Prometheus, which fails while a version marked bad is loaded: the error
//! spike that rollout gates watch for in tests and demos.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use pd_ledger::Version;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the target runs now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Loaded {
    /// The version loaded last (none before the first reload).
    pub version: Option<Version>,
    /// The version loaded per policy set (reloads that name their set).
    #[serde(default)]
    pub sets: std::collections::BTreeMap<String, Version>,
    /// Policy files held in memory.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Simulated requests per second, counted on `GET /metrics`.
pub const REQUESTS_PER_S: u32 = 100;

const NANOS_PER_S: u128 = 1_000_000_000;

struct Target {
    policy_dir: PathBuf,
    refuse: Vec<Version>,
    bad: Vec<Version>,
    /// What it runs and the traffic served so far, under one lock so that `/metrics` shows
    /// the counters and the version of one moment.
    state: Mutex<Running>,
}

struct Running {
    loaded: Loaded,
    traffic: Traffic,
}

/// Whether the policy a target runs fails requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Good,
    /// Every second request fails.
    Bad,
}

/// The simulated load, counted from elapsed time instead of by a task: each `advance`
/// credits the requests served since the last one at [`REQUESTS_PER_S`], carrying the
/// fraction of a request over, so the counters are exact over any span.
#[derive(Debug)]
struct Traffic {
    at: Instant,
    /// Request-nanoseconds not yet a whole request (less than a second's worth).
    carry: u128,
    health: Health,
    requests: u64,
    /// Requests served while `Bad`: half of them failed.
    served_bad: u64,
}

impl Traffic {
    fn new(start: Instant) -> Traffic {
        Traffic { at: start, carry: 0, health: Health::Good, requests: 0, served_bad: 0 }
    }

    /// Counts the requests served until `now`; an instant before the last one counts nothing
    /// (the counters never go back).
    fn advance(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.at) else { return };
        self.at = now;
        let owed = self.carry + elapsed.as_nanos() * u128::from(REQUESTS_PER_S);
        self.carry = owed % NANOS_PER_S;
        let whole = u64::try_from(owed / NANOS_PER_S).unwrap_or(u64::MAX);
        self.requests = self.requests.saturating_add(whole);
        if self.health == Health::Bad {
            self.served_bad = self.served_bad.saturating_add(whole);
        }
    }

    /// Counts the requests served until `now` at the old health, then serves at `health`.
    fn switch(&mut self, now: Instant, health: Health) {
        self.advance(now);
        self.health = health;
    }

    fn requests(&self) -> u64 {
        self.requests
    }

    fn errors(&self) -> u64 {
        self.served_bad / 2
    }
}

#[derive(Deserialize)]
struct ReloadQuery {
    ver: Version,
    set: Option<String>,
}

/// Serves until `stop` turns true. `refuse` lists versions this target fails to load, to
/// show a failing target in tests and the demo; `bad` lists versions it loads but then fails
/// half of its simulated requests with, to show an error spike to rollout gates.
pub async fn run(
    listen: SocketAddr,
    policy_dir: PathBuf,
    refuse: Vec<Version>,
    bad: Vec<Version>,
    ready: impl FnOnce(SocketAddr),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let running = Running { loaded: Loaded::default(), traffic: Traffic::new(Instant::now()) };
    let target = Arc::new(Target { policy_dir, refuse, bad, state: Mutex::new(running) });
    let app = Router::new()
        .route("/reload", post(reload))
        .route("/version", get(version))
        .route("/metrics", get(metrics_get))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(target);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    ready(listener.local_addr()?);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn reload(
    State(t): State<Arc<Target>>,
    Query(q): Query<ReloadQuery>,
) -> Result<String, (StatusCode, String)> {
    if t.refuse.contains(&q.ver) {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("this target refuses to load {}", q.ver)));
    }
    let dir = t.policy_dir.clone();
    let read = tokio::task::spawn_blocking(move || load(&dir)).await;
    let (files, bytes) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("cannot load the policy: {e}"))),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let mut state = t.state.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = &mut state.loaded;
    let mut sets = std::mem::take(&mut loaded.sets);
    if let Some(set) = q.set {
        sets.insert(set, q.ver);
    }
    *loaded = Loaded { version: Some(q.ver), sets, files, bytes };
    // Any bad version among those it runs (the last one, or one per set) fails requests.
    let runs_bad = loaded.version.iter().chain(loaded.sets.values()).any(|v| t.bad.contains(v));
    let health = if runs_bad { Health::Bad } else { Health::Good };
    state.traffic.switch(Instant::now(), health);
    Ok(format!("loaded {}\n", q.ver))
}

async fn version(State(t): State<Arc<Target>>) -> Json<Loaded> {
    Json(t.state.lock().unwrap_or_else(|p| p.into_inner()).loaded.clone())
}

async fn metrics_get(State(t): State<Arc<Target>>) -> impl axum::response::IntoResponse {
    let mut state = t.state.lock().unwrap_or_else(|p| p.into_inner());
    state.traffic.advance(Instant::now());
    let text = metrics_text(&state.loaded, &state.traffic);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// The counters and the loaded version in Prometheus' text exposition format.
fn metrics_text(loaded: &Loaded, traffic: &Traffic) -> String {
    let mut out = format!(
        "# HELP pd_example_requests_total Simulated requests served ({REQUESTS_PER_S} per second).\n\
         # TYPE pd_example_requests_total counter\n\
         pd_example_requests_total {}\n\
         # HELP pd_example_errors_total Simulated requests that failed: half while a bad version runs.\n\
         # TYPE pd_example_errors_total counter\n\
         pd_example_errors_total {}\n\
         # HELP pd_example_policy_info The policy version loaded last (always 1).\n\
         # TYPE pd_example_policy_info gauge\n",
        traffic.requests(),
        traffic.errors(),
    );
    if let Some(v) = &loaded.version {
        // A version prints as PD-x.y.z: nothing in it needs escaping in a label value.
        out.push_str(&format!("pd_example_policy_info{{version=\"{v}\"}} 1\n"));
    }
    out
}

/// Reads every file under `dir` as UTF-8 text: the policy this target would enforce.
fn load(dir: &Path) -> std::io::Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            files += 1;
            bytes += text.len() as u64;
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn traffic_counts_100_requests_a_second_and_errors_only_while_bad() {
        let t0 = Instant::now();
        let mut t = Traffic::new(t0);
        t.advance(t0 + ms(1000));
        assert_eq!((t.requests(), t.errors()), (100, 0));
        // Bad from 1.5 s: the half second before is counted as good.
        t.switch(t0 + ms(1500), Health::Bad);
        assert_eq!((t.requests(), t.errors()), (150, 0));
        t.advance(t0 + ms(3500));
        assert_eq!((t.requests(), t.errors()), (350, 100));
        t.switch(t0 + ms(4000), Health::Good);
        t.advance(t0 + ms(10_000));
        assert_eq!((t.requests(), t.errors()), (1000, 125));
    }

    #[test]
    fn traffic_carries_fractions_of_a_request_over() {
        let t0 = Instant::now();
        let mut t = Traffic::new(t0);
        t.switch(t0, Health::Bad);
        // 7 ms steps are 0.7 requests each: 1000 of them are exactly 700 requests.
        for i in 1..=1000 {
            t.advance(t0 + ms(7 * i));
            assert!(t.errors() * 2 <= t.requests());
        }
        assert_eq!((t.requests(), t.errors()), (700, 350));
    }

    #[test]
    fn traffic_never_goes_back() {
        let t0 = Instant::now();
        let mut t = Traffic::new(t0);
        t.advance(t0 + ms(2000));
        t.advance(t0 + ms(1000));
        assert_eq!(t.requests(), 200);
        t.advance(t0 + ms(2010));
        assert_eq!(t.requests(), 201);
    }

    #[test]
    fn metrics_name_the_loaded_version_once_there_is_one() {
        let t0 = Instant::now();
        let mut traffic = Traffic::new(t0);
        traffic.switch(t0 + ms(20), Health::Bad);
        traffic.advance(t0 + ms(60));
        let mut loaded = Loaded::default();
        let before = metrics_text(&loaded, &traffic);
        assert!(before.contains("\npd_example_requests_total 6\n"), "{before}");
        assert!(before.contains("\npd_example_errors_total 2\n"), "{before}");
        assert!(!before.contains("pd_example_policy_info{"), "{before}");
        loaded.version = Some("PD-1.2.3".parse().expect("version"));
        let after = metrics_text(&loaded, &traffic);
        assert!(after.ends_with("\npd_example_policy_info{version=\"PD-1.2.3\"} 1\n"), "{after}");
    }
}
