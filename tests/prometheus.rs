//! A real Prometheus for tests: Debian's `/usr/bin/prometheus` on a free loopback port, its
//! database in a temp dir, scraping the `/metrics` of the targets it is given; killed on drop.
//!
//! `scripts/install-test-tools` (run by `scripts/test`) installs it. The module needs nothing
//! from the rest of the harness, so a test file can include it with `#[path]` as well.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/bin/prometheus";
/// How long startup may take, through the first scrape of every target.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Tries at a port another process took between our probe and Prometheus' bind.
const PORT_TRIES: usize = 5;

/// A running Prometheus.
pub struct Prometheus {
    /// Config, database and logs.
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

/// One sample of an instant query: the series' labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port` or `http://host:port`) every second,
    /// and returns once every target has been scraped successfully.
    pub fn start(targets: &[&str]) -> Prometheus {
        Self::start_every(targets, Duration::from_secs(1))
    }

    /// [`Prometheus::start`] with another scrape and rule-evaluation interval.
    pub fn start_every(targets: &[&str], interval: Duration) -> Prometheus {
        Self::start_on(targets, interval, free_port)
    }

    /// [`Prometheus::start_every`] listening on the first port from `next_port` that
    /// Prometheus can bind.
    pub fn start_on(targets: &[&str], interval: Duration, mut next_port: impl FnMut() -> u16) -> Prometheus {
        assert!(
            Path::new(BIN).exists(),
            "{BIN} is missing: run scripts/install-test-tools (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, interval)).expect("write prometheus.yml");
        for attempt in 1..=PORT_TRIES {
            // Another process may take a free port between our probe and Prometheus' bind.
            let port = next_port();
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let mut child = spawn(&config, &dir.path().join("data"), port, &log);
            let failure = match wait_ready(&mut child, port, &log) {
                Ok(()) => {
                    let p = Prometheus { dir, child, port };
                    p.wait_scraped(targets.len());
                    return p;
                }
                Err(failure) => failure,
            };
            let _ = child.kill();
            let _ = child.wait();
            match failure {
                NotReady::PortTaken => continue,
                NotReady::Exited => panic!("prometheus exited: {}", read(&log)),
                NotReady::Late => panic!("prometheus not ready after {START_LIMIT:?}: {}", read(&log)),
            }
        }
        panic!("prometheus found its port taken {PORT_TRIES} times")
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of the first sample of the instant query `promql` (a vector's first series, or
    /// a scalar), `None` when the result is empty; panics if Prometheus rejects the query.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        match data["resultType"].as_str() {
            Some("scalar") => Some(value(&data["result"])),
            _ => self.series_of(&data).into_iter().next().map(|(_, v)| v),
        }
    }

    /// Every sample of the instant query `promql`, for a vector result.
    pub fn series(&self, promql: &str) -> Vec<Sample> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        self.series_of(&data)
    }

    fn series_of(&self, data: &serde_json::Value) -> Vec<Sample> {
        let result = data["result"].as_array().cloned().unwrap_or_default();
        let labels = |s: &serde_json::Value| {
            let m = s["metric"].as_object().cloned().unwrap_or_default();
            m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect()
        };
        result.iter().map(|s| (labels(s), value(&s["value"]))).collect()
    }

    /// `GET path` on the HTTP API; returns `data`, panicking unless the status is success.
    fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) =
            get(self.port, path).unwrap_or_else(|| panic!("prometheus gone: {}", self.logs()));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status} {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {status} {body}");
        v["data"].clone()
    }

    /// Waits until Prometheus has scraped each of its `n` targets successfully.
    fn wait_scraped(&self, n: usize) {
        let all_up = || {
            let data = self.api("/api/v1/targets?state=active");
            let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
            (targets.len() == n && targets.iter().all(|t| t["health"] == "up")).then_some(())
        };
        poll(START_LIMIT, all_up).unwrap_or_else(|| {
            let data = self.api("/api/v1/targets?state=active");
            panic!("targets not all up after {START_LIMIT:?}: {data}\n{}", self.logs())
        });
    }

    /// Everything Prometheus logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.flatten().map(|e| e.path()).filter(|p| p.extension() == Some("log".as_ref())).collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs.iter().map(|p| read(p)).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why Prometheus did not become ready.
enum NotReady {
    /// It exited because another process holds its port: try another.
    PortTaken,
    /// It exited for another reason (its log says which).
    Exited,
    /// Still not ready at the deadline.
    Late,
}

/// Waits for `GET /-/ready` to answer 200 from the process `child`.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), NotReady> {
    let ready = poll(START_LIMIT, || {
        // Checked first: a port taken by someone else could answer in Prometheus' place.
        if let Ok(Some(_)) = child.try_wait() {
            let taken = read(log).contains("address already in use");
            return Some(Err(if taken { NotReady::PortTaken } else { NotReady::Exited }));
        }
        let (status, body) = get(port, "/-/ready")?;
        (status == 200 && body.contains("Prometheus")).then_some(Ok(()))
    });
    ready.unwrap_or(Err(NotReady::Late))
}

fn config_text(targets: &[&str], interval: Duration) -> String {
    let every = format!("{}ms", interval.as_millis());
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("'{}'", t.trim_start_matches("http://").trim_end_matches('/')))
        .collect();
    format!(
        "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\n\
         scrape_configs:\n  - job_name: pd-example\n    metrics_path: /metrics\n\
         \x20   static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    )
}

fn spawn(config: &Path, data: &Path, port: u16, log: &Path) -> Child {
    let err = std::fs::File::create(log).expect("log file");
    Command::new(BIN)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Calls `check` with a backoff from 10 ms to 200 ms until it returns `Some`, for at most `limit`.
fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `GET path` on 127.0.0.1:`port`: status and body, `None` if it cannot connect or the reply
/// is cut short (Prometheus still starting or gone).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    // Prometheus' API answers in chunks.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The number in a `[timestamp, "value"]` pair (`NaN` and `±Inf` included).
fn value(pair: &serde_json::Value) -> f64 {
    let text = pair[1].as_str().unwrap_or_else(|| panic!("not a sample: {pair}"));
    text.parse().unwrap_or_else(|_| panic!("not a number: {text}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
