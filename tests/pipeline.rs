//! What a CI pipeline does to pd: reruns, concurrent runs, reverted files and a server that
//! restarts while it waits. Each must end the way a rerun-safe tool ends: exit 0, one entry
//! per real change, nothing lost.

use pd_e2e::{Net, Proc, World};

/// A standard world plus `dev-2`, with PD-0.1.0 packaged and approved.
fn world() -> World {
    let w = World::standard();
    w.ok("", &["key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here"]);
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "first"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w
}

fn count(log: &[serde_json::Value], kind: &str) -> usize {
    log.iter().filter(|e| e["kind"] == kind).count()
}

#[test]
fn the_same_deploy_run_twice_and_twice_at_once_exits_0_and_pushes_once() {
    let w = world();
    let mut net = Net::start(&w);
    for t in ["dev-1", "dev-2"] {
        net.agent(t, "dev", &[]);
    }
    let args =
        ["ledger", "deploy", "llm_policy.yaml", "--until", "dev", "--reason", "ci", "--timeout", "60s"];
    // Twice at once: one pushes, the other waits for the same adoption.
    let spawn = |n: &str| {
        let mut full = vec!["--server", net.url()];
        full.extend_from_slice(&args);
        Proc::spawn(w.pd("", &full), &w.path(&format!("deploy-{n}.log")), "packaged as")
    };
    let (mut one, mut two) = (spawn("one"), spawn("two"));
    assert!(one.wait_exit(), "{}", std::fs::read_to_string(w.path("deploy-one.log")).unwrap_or_default());
    assert!(two.wait_exit(), "{}", std::fs::read_to_string(w.path("deploy-two.log")).unwrap_or_default());
    // And once more, after it is done.
    let again = net.ok("", &args);
    assert!(again.contains("PD-0.1.0 is already adopted in dev"), "{again}");
    let log = net.log();
    assert_eq!(count(&log, "push"), 1, "one push for three deploys");
    assert_eq!(count(&log, "package"), 1);
}

#[test]
fn concurrent_package_runs_all_succeed_and_the_export_verifies() {
    let w = world();
    for (i, text) in ["a: 1\n", "b: 2\n", "c: 3\n"].iter().enumerate() {
        w.write(&format!("p{i}.yaml"), text);
    }
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    // Four runs of one file and three of others, all at once.
    let files = [
        "llm_policy.yaml",
        "llm_policy.yaml",
        "llm_policy.yaml",
        "llm_policy.yaml",
        "p0.yaml",
        "p1.yaml",
        "p2.yaml",
    ];
    let runs: Vec<std::process::Child> = files
        .iter()
        .map(|f| {
            let mut c = w.pd("", &["ledger", "package", f, "--reason", "ci"]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            c.spawn().expect("spawn pd")
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().expect("pd");
        assert!(out.status.success(), "{}", pd_e2e::text(&out));
    }
    let log = w.log();
    assert_eq!(count(&log, "package"), 5, "PD-0.1.0, the new llm_policy once, and p0–p2");
    let file = w.path("all.pdx");
    w.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    let out = w.verify(&[file.to_str().expect("path")]);
    assert!(out.status.success(), "no object may be missing: {}", pd_e2e::text(&out));
}

#[test]
fn identical_content_reuses_its_package_and_a_reverted_file_deploys_as_a_rollback() {
    let w = world();
    let again = w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "rerun"]);
    assert!(again.contains("already packaged as PD-0.1.0"), "{again}");
    assert_eq!(count(&w.log(), "package"), 1);
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &[]);
    let deploy =
        ["ledger", "deploy", "llm_policy.yaml", "--until", "dev", "--reason", "ci", "--timeout", "60s"];
    net.ok("", &deploy);
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "raise"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    net.ok("", &deploy);
    // `git revert`: the file holds PD-0.1.0's content again; the deploy needs nothing more.
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    let out = net.ok("", &deploy);
    assert!(out.contains("PD-0.1.0 rolled back to dev"), "{out}");
    let rerun = net.ok("", &deploy);
    assert!(rerun.contains("already adopted"), "{rerun}");
    let log = net.log();
    assert_eq!((count(&log, "package"), count(&log, "rollback")), (2, 1), "no new version for old content");
}

#[test]
fn a_deploy_whose_server_restarts_mid_wait_completes_after_the_restart() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    // dev-2 is down when the deploy starts waiting.
    let args = [
        "--server",
        net.url(),
        "ledger",
        "deploy",
        "PD-0.1.0",
        "--until",
        "dev",
        "--reason",
        "ci",
        "--timeout",
        "90s",
    ];
    let mut deploy = Proc::spawn(w.pd("", &args), &w.path("deploy.log"), "waiting for 2 target(s)");
    net.restart_server();
    net.agent("dev-2", "dev", &[]);
    assert!(deploy.wait_exit(), "{}", std::fs::read_to_string(w.path("deploy.log")).unwrap_or_default());
    let out = std::fs::read_to_string(w.path("deploy.out")).unwrap_or_default();
    assert!(out.contains("2/2 targets acknowledged"), "{out}");
}
