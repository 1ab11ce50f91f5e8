//! A small reference target for tests and the demo: an HTTP service that loads the policy
//! files under a directory into memory on `POST /reload?ver=PD-x.y.z` (the seed's webhook)
//! and reports what it runs on `GET /version`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
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

struct Target {
    policy_dir: PathBuf,
    refuse: Vec<Version>,
    loaded: Mutex<Loaded>,
}

#[derive(Deserialize)]
struct ReloadQuery {
    ver: Version,
    set: Option<String>,
}

/// Serves until `stop` turns true. `refuse` lists versions this target fails to load, to
/// show a failing target in tests and the demo.
pub async fn run(
    listen: SocketAddr,
    policy_dir: PathBuf,
    refuse: Vec<Version>,
    ready: impl FnOnce(SocketAddr),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let target = Arc::new(Target { policy_dir, refuse, loaded: Mutex::new(Loaded::default()) });
    let app = Router::new()
        .route("/reload", post(reload))
        .route("/version", get(version))
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
    let mut loaded = t.loaded.lock().unwrap_or_else(|p| p.into_inner());
    let mut sets = std::mem::take(&mut loaded.sets);
    if let Some(set) = q.set {
        sets.insert(set, q.ver);
    }
    *loaded = Loaded { version: Some(q.ver), sets, files, bytes };
    Ok(format!("loaded {}\n", q.ver))
}

async fn version(State(t): State<Arc<Target>>) -> Json<Loaded> {
    Json(t.loaded.lock().unwrap_or_else(|p| p.into_inner()).clone())
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
