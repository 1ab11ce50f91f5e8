//! A real Prometheus for tests: Debian's `/usr/bin/prometheus` on a free loopback port, its
//! database in a temp dir, scraping the `/metrics` of the targets it is given; killed on drop.
//!
//! `scripts/install-test-tools` (run by `scripts/test`) installs it. The module needs nothing
//! from the rest of the harness, so a test file can include it with `#[path]` as well.
//!
//! Nothing here sleeps: readiness is the line Prometheus logs when it serves, and each target
//! is scraped through a relay that counts the scrapes, so a test waits for the next scrape
//! (an event) rather than polling a query on a timer. A scrape loop stores one scrape before
//! it starts the next, so once a target's next scrape has begun, its last one is queryable.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/bin/prometheus";
/// How long startup may take, through the first scrape of every target.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Tries at a port another process took between our probe and Prometheus' bind.
const PORT_TRIES: usize = 5;

/// How long a test waits for the next scrape of every target.
const SCRAPE_LIMIT: Duration = Duration::from_secs(30);

/// A running Prometheus.
pub struct Prometheus {
    /// Config, database and logs.
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    /// Scrapes begun, per target, and a signal on each.
    scrapes: Arc<(Mutex<Vec<u64>>, Condvar)>,
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
        let scrapes = Arc::new((Mutex::new(vec![0; targets.len()]), Condvar::new()));
        let relays: Vec<String> =
            targets.iter().enumerate().map(|(i, t)| relay(address(t), i, scrapes.clone())).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, &relays, interval)).expect("write prometheus.yml");
        for attempt in 1..=PORT_TRIES {
            // Another process may take a free port between our probe and Prometheus' bind.
            let port = next_port();
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let (mut child, lines) = spawn(&config, &dir.path().join("data"), port, &log);
            let failure = match wait_ready(&lines) {
                Ok(()) => {
                    let p = Prometheus { dir, child, port, scrapes };
                    p.wait_up(targets.len());
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

    /// Waits until every target's next scrape has begun, so every earlier scrape is stored.
    pub fn next_scrape(&self) {
        let (counts, signal) = &*self.scrapes;
        let start = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (guard, timeout) = signal
            .wait_timeout_while(counts.lock().unwrap_or_else(|p| p.into_inner()), SCRAPE_LIMIT, |now| {
                now.iter().zip(&start).any(|(n, s)| n <= s)
            })
            .unwrap_or_else(|p| p.into_inner());
        drop(guard);
        assert!(!timeout.timed_out(), "no scrape of every target within {SCRAPE_LIMIT:?}: {}", self.logs());
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
    fn wait_up(&self, n: usize) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            // Two scrapes begun: the first one is stored.
            self.next_scrape();
            self.next_scrape();
            let up = self.series("up");
            if up.len() == n && up.iter().all(|(_, v)| *v == 1.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "targets not all up after {START_LIMIT:?}: {up:?}\n{}",
                self.logs()
            );
        }
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

/// Waits for the line Prometheus logs once it serves requests, or for its exit.
fn wait_ready(lines: &Receiver<String>) -> Result<(), NotReady> {
    let deadline = Instant::now() + START_LIMIT;
    let mut taken = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("Server is ready to receive web requests") => return Ok(()),
            Ok(line) => taken |= line.contains("address already in use"),
            // Its stderr closed: it exited.
            Err(RecvTimeoutError::Disconnected) => {
                return Err(if taken { NotReady::PortTaken } else { NotReady::Exited })
            }
            Err(RecvTimeoutError::Timeout) => return Err(NotReady::Late),
        }
    }
}

/// `host:port` of a target given as `host:port` or `http://host:port/`.
fn address(target: &str) -> String {
    target.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// One scrape job per target, each scraped through its relay and labelled with the target's
/// own address as `instance`.
fn config_text(targets: &[&str], relays: &[String], interval: Duration) -> String {
    let every = format!("{}ms", interval.as_millis());
    let list: String = targets
        .iter()
        .zip(relays)
        .map(|(t, r)| format!("      - targets: ['{r}']\n        labels: {{instance: '{}'}}\n", address(t)))
        .collect();
    format!(
        "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\n\
         scrape_configs:\n  - job_name: pd-example\n    metrics_path: /metrics\n\
         \x20   static_configs:\n{list}"
    )
}

/// A loopback relay in front of `target`: each request counts as scrape `index` begun (with a
/// signal), is answered from one fresh request to the target with `Connection: close`, and
/// its connection is closed, so every scrape is a connection of its own. Returns its address.
fn relay(target: String, index: usize, scrapes: Arc<(Mutex<Vec<u64>>, Condvar)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay");
    let addr = listener.local_addr().expect("relay address").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (counts, signal) = &*scrapes;
            counts.lock().unwrap_or_else(|p| p.into_inner())[index] += 1;
            signal.notify_all();
            let _ = forward(conn, &target);
        }
    });
    addr
}

fn forward(mut conn: TcpStream, target: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let mut upstream = TcpStream::connect(target)?;
    upstream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(upstream, "GET /metrics HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer)?;
    conn.write_all(&answer)
}

/// Starts Prometheus with its stderr copied to `log` and sent, line by line, to the receiver
/// (which disconnects when Prometheus exits).
fn spawn(config: &Path, data: &Path, port: u16, log: &Path) -> (Child, Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let mut file = std::fs::File::create(log).expect("log file");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
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
