//! The example target's metrics as a rollout gate sees them: two real `pd example-target`
//! processes scraped by a real Prometheus, one switched to a version passed as `--bad`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pd_e2e::{bin, http, Proc};

use pd_e2e::prometheus::Prometheus;

const GOOD: &str = "PD-0.1.0";
const BAD: &str = "PD-0.2.0";
/// The error ratio a gate would watch (issue 20's example, over a window of a few scrapes).
const ERROR_RATIO: &str = "sum(rate(pd_example_errors_total[5s])) / sum(rate(pd_example_requests_total[5s]))";

/// Starts `pd example-target --bad PD-0.2.0` over a policy directory of one file.
fn target(dir: &std::path::Path, name: &str) -> Proc {
    let policy = dir.join(name);
    std::fs::create_dir_all(&policy).expect("mkdir");
    std::fs::write(policy.join("llm_policy.yaml"), "max_tokens: 1000\n").expect("write policy");
    let mut cmd = Command::new(bin("pd"));
    cmd.args(["example-target", "--listen", "127.0.0.1:0", "--bad", BAD, "--policy-dir"]).arg(&policy);
    Proc::spawn(cmd, &dir.join(format!("{name}.log")), "listening on")
}

fn reload(t: &Proc, version: &str) {
    let (status, body) = http(&t.url, "POST", &format!("/reload?ver={version}"), b"");
    assert_eq!(status, 200, "reload {version}: {}", String::from_utf8_lossy(&body));
}

/// Queries `promql` after each scrape until `holds` accepts its value, for at most `limit`;
/// returns the value and how long it took.
fn wait_for(
    prom: &Prometheus,
    promql: &str,
    limit: Duration,
    holds: impl Fn(f64) -> bool,
) -> (f64, Duration) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        last = prom.query(promql);
        if let Some(v) = last.filter(|v| holds(*v)) {
            return (v, start.elapsed());
        }
        prom.next_scrape();
    }
    panic!("{promql} still {last:?} after {limit:?}:\n{}", prom.logs())
}

#[test]
fn a_bad_version_shows_as_an_error_spike_in_prometheus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (target(dir.path(), "a"), target(dir.path(), "b"));
    reload(&a, GOOD);
    reload(&b, GOOD);
    let prom = Prometheus::start(&[&a.url, &b.url]);
    let limit = Duration::from_secs(20);

    // Two targets at 100 simulated requests a second each, none failing. The rate is low
    // until Prometheus holds a window's worth of samples.
    let requests = "sum(rate(pd_example_requests_total[5s]))";
    wait_for(&prom, requests, limit, |v| (190.0..210.0).contains(&v));
    let (ratio, _) = wait_for(&prom, ERROR_RATIO, limit, |v| v.is_finite());
    assert_eq!(ratio, 0.0, "errors before any bad version");

    // Loading a bad version succeeds (it is not refused), and from then on half of a's
    // requests fail: a quarter of the two targets' traffic.
    reload(&a, BAD);
    let (ratio, after) = wait_for(&prom, ERROR_RATIO, limit, |v| v > 0.01);
    eprintln!("error ratio {ratio:.3} seen {:.1} s after the bad reload", after.as_secs_f64());
    let (ratio, _) = wait_for(&prom, ERROR_RATIO, limit, |v| v > 0.2);
    assert!(ratio < 0.3, "one of two targets failing half its requests gives {ratio}, not ~0.25");

    // One series per target naming what it runs (a's old one went stale at the next scrape).
    let instance = |t: &Proc| t.url.trim_start_matches("http://").to_string();
    let want = BTreeSet::from([(instance(&a), BAD.to_string()), (instance(&b), GOOD.to_string())]);
    let start = Instant::now();
    loop {
        let runs: BTreeSet<(String, String)> = prom
            .series("pd_example_policy_info == 1")
            .into_iter()
            .map(|(labels, _)| (labels["instance"].clone(), labels["version"].clone()))
            .collect();
        if runs == want {
            break;
        }
        assert!(start.elapsed() < limit, "pd_example_policy_info shows {runs:?}, not {want:?}");
        prom.next_scrape();
    }
}

#[test]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = target(dir.path(), "a");
    for versions in [&[][..], &[GOOD, BAD][..]] {
        for v in versions {
            reload(&t, v);
        }
        let (status, body) = http(&t.url, "GET", "/metrics", b"");
        assert_eq!(status, 200);
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed: run scripts/install-test-tools (scripts/test does)");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), &body).expect("write");
        let out = check.wait_with_output().expect("promtool");
        let metrics = String::from_utf8_lossy(&body);
        assert!(out.status.success(), "promtool: {}\n{metrics}", pd_e2e::text(&out));
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool lints: {}\n{metrics}",
            pd_e2e::text(&out)
        );
    }
}

#[test]
fn prometheus_moves_to_another_port_when_its_port_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = target(dir.path(), "a");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("address").port();
    let (mut ports, mut asked) = (vec![taken_port], 0);
    let prom = Prometheus::start_on(&[&t.url], Duration::from_secs(1), || {
        asked += 1;
        ports.pop().unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").port()
        })
    });
    assert!(asked >= 2, "the taken port was tried first, then another ({asked} asked)");
    assert_ne!(prom.url(), format!("http://127.0.0.1:{taken_port}"));
    assert_eq!(prom.query("up"), Some(1.0));
}
