//! Evaluating rollout gates during a bake: a Prometheus query, the targets' health as their
//! agents report it, and a smoke-test command. What a gate *is* is parsed by
//! `pd_ledger::gate`; whether a bake may pass is the rule's (`pd_ledger::rollout`). This only
//! measures.

use std::time::{Duration, Instant};

use pd_ledger::gate::Gate;

/// Largest Prometheus answer read.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a smoke test's stderr is kept (its end): the failure's last line comes from it.
const STDERR_TAIL: usize = 4096;

/// How often a running smoke test is looked at.
const COMMAND_POLL: Duration = Duration::from_millis(20);

/// What one evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// It holds; what was measured.
    Pass(String),
    /// It does not; what was measured.
    Fail(String),
    /// Nothing to judge yet (no data, no heartbeat since the acks): ask again.
    Pending(String),
}

impl Verdict {
    /// What was measured.
    pub fn value(&self) -> &str {
        match self {
            Verdict::Pass(v) | Verdict::Fail(v) | Verdict::Pending(v) => v,
        }
    }
}

/// What a `health` gate and a command gate need to know about the wave.
pub struct Wave<'a> {
    /// The environment.
    pub env: &'a str,
    /// The version rolling out.
    pub version: pd_ledger::Version,
    /// The wave baking.
    pub wave: u32,
    /// Targets of the waves started so far.
    pub targets: &'a [String],
    /// The server's time when the wave's targets had all acked.
    pub since_ms: u64,
    /// When the deploy gives up: a smoke test still running then is stopped.
    pub deadline: Instant,
}

/// Evaluates gates for one bake: one small runtime and HTTP client for all its checks.
pub struct Evaluator {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Evaluator {
    /// A runtime and a client with [`QUERY_TIMEOUT`].
    pub fn new() -> anyhow::Result<Evaluator> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let http = pd_server::tls::client_builder().timeout(QUERY_TIMEOUT).build()?;
        Ok(Evaluator { rt, http })
    }

    /// Evaluates one gate. `beats` are the targets' verified heartbeats (server clock).
    pub fn evaluate(
        &self,
        gate: &Gate,
        wave: &Wave<'_>,
        beats: &std::collections::BTreeMap<String, pd_server::wire::Seen>,
    ) -> Verdict {
        match gate {
            Gate::Prometheus { server, query, max, min } => self.prometheus(server, query, *max, *min),
            Gate::Health => health(wave, beats),
            Gate::Command(cmd) => command(cmd, wave),
        }
    }

    /// An instant query: `GET SERVER/api/v1/query?query=…`, the first sample's value.
    fn prometheus(&self, server: &str, query: &str, max: Option<f64>, min: Option<f64>) -> Verdict {
        let url = format!("{server}/api/v1/query?query={}", encode(query));
        judge(self.get(&url).and_then(|body| sample(&body)), max, min)
    }

    /// A GET with a timeout and a bounded body.
    fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        self.rt.block_on(async {
            let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = pd_server::client::body_within(resp, MAX_ANSWER_BYTES)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("answer over {MAX_ANSWER_BYTES} bytes"))?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(format!("HTTP {status}: {text}"));
            }
            Ok(body)
        })
    }
}

/// A Prometheus gate's verdict on what the query gave.
fn judge(answer: Result<Option<f64>, String>, max: Option<f64>, min: Option<f64>) -> Verdict {
    let value = match answer {
        Ok(Some(v)) => v,
        Ok(None) => return Verdict::Pending("no data yet".into()),
        Err(e) => return Verdict::Pending(format!("Prometheus did not answer: {e}")),
    };
    let shown = format!("{value}");
    if value.is_nan() {
        Verdict::Pending("NaN (no traffic yet)".into())
    } else if Gate::within(max, min, value) {
        Verdict::Pass(shown)
    } else {
        Verdict::Fail(shown)
    }
}

/// The value of a Prometheus query answer: the first sample of a vector, or a scalar.
fn sample(body: &[u8]) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("status {}: {}", v["status"], v["error"]));
    }
    let data = &v["data"];
    let pair = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().and_then(|r| r.first()) {
            None => return Ok(None),
            Some(first) => &first["value"],
        },
        Some("scalar") => &data["result"],
        other => return Err(format!("a {other:?} result; the query must give a number or a vector")),
    };
    let text = pair.get(1).and_then(|x| x.as_str()).ok_or("a sample without a value")?;
    text.parse::<f64>().map(Some).map_err(|_| format!("sample {text:?} is not a number"))
}

/// `%`-encodes what a query string cannot carry as is.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every target of the started waves sent a heartbeat after the wave's acks saying its
/// service is healthy.
fn health(wave: &Wave<'_>, beats: &std::collections::BTreeMap<String, pd_server::wire::Seen>) -> Verdict {
    let (mut healthy, mut pending, mut sick) = (0, Vec::new(), Vec::new());
    for t in wave.targets {
        match beats.get(t).filter(|s| s.received_ms >= wave.since_ms).map(|s| s.heartbeat.healthy) {
            Some(Some(true)) => healthy += 1,
            Some(Some(false)) => sick.push(t.as_str()),
            Some(None) => sick.push(t.as_str()),
            None => pending.push(t.as_str()),
        }
    }
    let n = wave.targets.len();
    if !sick.is_empty() {
        return Verdict::Fail(format!(
            "{healthy}/{n} healthy; unhealthy or no --health-url: {}",
            sick.join(", ")
        ));
    }
    if !pending.is_empty() {
        return Verdict::Pending(format!(
            "{healthy}/{n} healthy; no heartbeat since the acks from {}",
            pending.join(", ")
        ));
    }
    Verdict::Pass(format!("{healthy}/{n} healthy"))
}

/// Runs the smoke test by `sh -c` with PD_ENV, PD_VERSION and PD_WAVE; exit 0 passes. One
/// still running at the wave's deadline is killed and gives no answer. Its stderr is read to
/// the end as it runs (a full pipe would stop it), keeping the last [`STDERR_TAIL`] bytes.
fn command(cmd: &str, wave: &Wave<'_>) -> Verdict {
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("PD_ENV", wave.env)
        .env("PD_VERSION", wave.version.to_string())
        .env("PD_WAVE", wave.wave.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return Verdict::Fail(format!("cannot run sh: {e}")),
    };
    let tail = child.stderr.take().map(|stderr| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(last_bytes(stderr, STDERR_TAIL)));
        rx
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= wave.deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Verdict::Pending("still running at the deadline; stopped".into());
            }
            Ok(None) => std::thread::sleep(COMMAND_POLL),
            Err(e) => return Verdict::Fail(format!("cannot wait for sh: {e}")),
        }
    };
    if status.success() {
        return Verdict::Pass("exit 0".into());
    }
    // A process the command left behind may hold stderr open: wait for its end briefly.
    let err = tail.and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok()).unwrap_or_default();
    let err = String::from_utf8_lossy(&err);
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let code = status.code().map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
    Verdict::Fail(if last.is_empty() { code } else { format!("{code}: {}", truncate(last, 200)) })
}

/// The last `keep` bytes of what `from` gives until its end (or an error).
fn last_bytes(mut from: impl std::io::Read, keep: usize) -> Vec<u8> {
    let (mut tail, mut buf) = (Vec::with_capacity(2 * keep), [0u8; 8192]);
    while let Ok(n @ 1..) = from.read(&mut buf) {
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
    tail
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vector_and_scalar_answers_and_names_what_it_cannot_read() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(sample(vector), Ok(Some(0.25)));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(sample(empty), Ok(None));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(sample(scalar).unwrap().unwrap().is_nan());
        let bad = br#"{"status":"error","error":"parse error"}"#;
        assert!(sample(bad).unwrap_err().contains("parse error"));
        assert!(sample(b"<html>").unwrap_err().contains("not JSON"));
        assert_eq!(encode("sum(rate(x[1m]))/2 & y"), "sum%28rate%28x%5B1m%5D%29%29%2F2%20%26%20y");
    }

    #[test]
    fn a_prometheus_value_passes_within_bounds_fails_outside_and_waits_for_data() {
        assert_eq!(judge(Ok(Some(0.0)), Some(0.01), None), Verdict::Pass("0".into()));
        assert_eq!(judge(Ok(Some(0.25)), Some(0.01), None), Verdict::Fail("0.25".into()));
        assert!(matches!(judge(Ok(None), Some(0.01), None), Verdict::Pending(_)));
        assert!(matches!(judge(Ok(Some(f64::NAN)), Some(0.01), None), Verdict::Pending(_)));
        assert!(
            matches!(judge(Err("refused".into()), Some(0.01), None), Verdict::Pending(v) if v.contains("refused"))
        );
    }

    #[test]
    fn a_command_passes_on_exit_0_and_fails_with_its_last_error_line() {
        let wave = Wave {
            env: "dev",
            version: pd_ledger::Version::new(1, 2, 3),
            wave: 2,
            targets: &[],
            since_ms: 0,
            deadline: Instant::now() + Duration::from_secs(600),
        };
        assert_eq!(
            command("test \"$PD_ENV $PD_VERSION $PD_WAVE\" = 'dev PD-1.2.3 2'", &wave),
            Verdict::Pass("exit 0".into())
        );
        assert_eq!(
            command("echo 'smoke: 3 of 5 checks failed' >&2; exit 3", &wave),
            Verdict::Fail("exit 3: smoke: 3 of 5 checks failed".into())
        );
        // More stderr than a pipe holds: read as it comes, the last line still named.
        assert_eq!(
            command("head -c 300000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the end' >&2; exit 1", &wave),
            Verdict::Fail("exit 1: the end".into())
        );
    }

    #[test]
    fn health_passes_with_every_target_healthy_since_the_acks_and_fails_on_any_unhealthy_one() {
        use pd_server::wire::Seen;
        let targets = ["a".to_string(), "b".to_string()];
        let wave = Wave {
            env: "dev",
            version: pd_ledger::Version::new(1, 2, 3),
            wave: 1,
            targets: &targets,
            since_ms: 1_000,
            deadline: Instant::now(),
        };
        let beat = |target: &str, received_ms, healthy| {
            let heartbeat = pd_ledger::heartbeat::Heartbeat {
                ledger_id: pd_ledger::Hash::of(b"ledger"),
                target: target.into(),
                time_ms: received_ms,
                interval_ms: 10_000,
                running: Vec::new(),
                replica_len: 0,
                healthy,
            };
            (target.to_string(), Seen { received_ms, heartbeat })
        };
        let judge = |beats: &[(String, Seen)]| health(&wave, &beats.iter().cloned().collect());
        assert_eq!(
            judge(&[beat("a", 2_000, Some(true)), beat("b", 2_000, Some(true))]),
            Verdict::Pass("2/2 healthy".into())
        );
        // Before the acks, or not at all: wait for one.
        assert!(
            matches!(judge(&[beat("a", 2_000, Some(true)), beat("b", 500, Some(false))]), Verdict::Pending(v) if v.contains("from b"))
        );
        assert!(matches!(judge(&[beat("a", 2_000, Some(true))]), Verdict::Pending(_)));
        // Unhealthy, or no --health-url to say: fails.
        assert!(
            matches!(judge(&[beat("a", 2_000, Some(false)), beat("b", 2_000, Some(true))]), Verdict::Fail(v) if v.contains(": a"))
        );
        assert!(
            matches!(judge(&[beat("a", 2_000, Some(true)), beat("b", 2_000, None)]), Verdict::Fail(v) if v.contains(": b"))
        );
    }

    #[test]
    fn a_command_still_running_at_the_deadline_is_stopped_and_gives_no_answer() {
        let wave = Wave {
            env: "dev",
            version: pd_ledger::Version::new(1, 2, 3),
            wave: 1,
            targets: &[],
            since_ms: 0,
            deadline: Instant::now(),
        };
        assert!(matches!(command("sleep 600", &wave), Verdict::Pending(v) if v.contains("still running")));
    }
}
