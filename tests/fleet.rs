//! "All targets acknowledged" that means it, over the network: a known fleet, liveness,
//! independent policy sets and honest failures, through a real `pd serve` and real
//! `pd agent`s beside example targets. Nothing here sleeps: waits are `pd ledger deploy`'s
//! own, the server's long-poll, or a FIFO the test holds.

use pd_e2e::{http, Net, Proc, World};
use serde_json::Value;

/// A standard world plus `dev-2`, with PD-0.1.0 (llm_policy) packaged and approved.
fn world() -> World {
    World::packaged()
}

/// Packages `file` with `text` as `version` (the next one) and approves it, through the
/// server when one runs.
fn package(w: &World, net: Option<&Net>, file: &str, text: &str, version: &str) {
    w.write(file, text);
    let ok = |actor: &str, args: &[&str]| net.map_or_else(|| w.ok(actor, args), |n| n.ok(actor, args));
    let out = ok("", &["ledger", "package", file, "--reason", "new content"]);
    assert!(out.contains(version), "{out}");
    ok("carol", &["ledger", "approve", version, "--reason", "ok"]);
}

fn state(net: &Net) -> Value {
    serde_json::from_str(&net.ok("", &["state", "--json"])).expect("state JSON")
}

fn env_of(s: &Value, env: &str) -> Value {
    s["envs"].as_array().expect("envs").iter().find(|e| e["env"] == env).expect("env").clone()
}

fn slot(s: &Value, env: &str, set: &str) -> Value {
    let e = env_of(s, env);
    e["sets"].as_array().expect("sets").iter().find(|x| x["set"] == set).cloned().unwrap_or(Value::Null)
}

fn file(net: &Net, target: &str, name: &str) -> Option<Vec<u8>> {
    std::fs::read(net.agent_dir(target).join("current").join(name)).ok()
}

fn acks_by(net: &Net, target: &str) -> Vec<(String, String)> {
    net.log()
        .iter()
        .filter(|e| e["kind"] == "ack" && e["actor"] == target)
        .map(|e| {
            let b = &e["body"]["ack"];
            let outcome = if b["outcome"] == "loaded" { "loaded".to_string() } else { "failed".to_string() };
            (b["version"].as_str().unwrap_or_default().to_string(), outcome)
        })
        .collect()
}

fn export_and_verify(net: &Net) -> std::process::Output {
    let file = net.w.path("ledger.pdx");
    net.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    net.w.verify(&[file.to_str().expect("path")])
}

#[test]
fn a_wait_whose_target_is_revoked_midway_does_not_succeed() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    // dev-2 never comes up; the deploy's wait starts with both.
    let args = ["--server", net.url(), "ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1"];
    let mut deploy = Proc::spawn(w.pd("", &args), &w.path("deploy.log"), "waiting for 2 target(s) in dev");
    net.wait_for(|net| (slot(&state(net), "dev", "llm_policy")["loaded"] == 1).then_some(()));
    net.ok("", &["key", "revoke", "dev-2", "--reason", "decommissioned", "--left"]);
    assert!(!deploy.wait_exit(), "revoking a target must not turn the wait into a success");
    let said = std::fs::read_to_string(w.path("deploy.log")).expect("log");
    assert!(said.contains("dev-2 revoked during the wait"), "{said}");
    let out = std::fs::read_to_string(w.path("deploy.out")).unwrap_or_default();
    assert!(!out.contains("all targets acknowledged"), "{out}");
    // Accepting the smaller fleet is a rerun, which counts the fleet as it is now.
    let again = net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1"]);
    assert!(again.contains("PD-0.1.0 is already adopted in dev"), "{again}");
}

#[test]
fn state_shows_a_load_as_soon_as_it_is_acked_without_waiting_for_a_heartbeat() {
    let w = world();
    let mut net = Net::start(&w);
    // Heartbeats an hour apart: none tells the server what dev-1 runs during this test.
    for t in ["dev-1", "dev-2"] {
        net.agent_with(t, "dev", &[], &["--heartbeat", "1h"]);
    }
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1"]);
    let dev = env_of(&state(&net), "dev");
    let targets = dev["targets"].as_array().expect("targets");
    for t in targets {
        assert_eq!(t["running"]["llm_policy"], "PD-0.1.0", "from its ack: {t}");
    }
    let text = net.ok("", &["state", "dev"]);
    assert!(text.contains("dev-1            llm_policy PD-0.1.0 ·"), "{text}");
}

#[test]
fn a_killed_agent_turns_stale_and_fail_on_stale_ends_the_wait_with_a_rollback() {
    let w = world();
    let mut net = Net::start(&w);
    for t in ["dev-1", "dev-2"] {
        net.agent_with(t, "dev", &[], &["--heartbeat", "200ms"]);
    }
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    let liveness = |net: &Net, t: &str| {
        let dev = env_of(&state(net), "dev");
        dev["targets"].as_array()?.iter().find(|x| x["name"] == t).cloned()
    };
    // It has been seen (a heartbeat) and runs PD-0.1.0.
    net.wait_for(|net| {
        let t = liveness(net, "dev-2")?;
        (t["last_seen_ms"].is_u64() && t["running"]["llm_policy"] == "PD-0.1.0").then_some(())
    });
    net.kill_agent("dev-2");
    let seen = net.wait_for(|net| liveness(net, "dev-2").filter(|t| t["stale"] == true));
    assert_eq!(seen["running"]["llm_policy"], "PD-0.1.0", "{seen}");
    assert_eq!(seen["desired"]["llm_policy"], "PD-0.1.0", "{seen}");
    assert!(seen["last_seen_ago_ms"].as_u64().is_some_and(|ms| ms > 600), "stale after 3 intervals: {seen}");
    let dev = env_of(&state(&net), "dev");
    assert_eq!(dev["stale"], serde_json::json!(["dev-2"]), "{dev}");
    let text = net.ok("", &["state", "dev"]);
    assert!(text.contains("STALE"), "{text}");
    // The server's gauges say the same.
    let (status, metrics) = http(net.url(), "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, 200);
    for line in [
        "pd_env_targets{env=\"dev\"} 2",
        "pd_env_stale_targets{env=\"dev\"} 1",
        "pd_env_adopted_targets{env=\"dev\",set=\"llm_policy\"} 2",
        "pd_env_failed_targets{env=\"dev\",set=\"llm_policy\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    assert!(metrics.contains("pd_target_last_seen_seconds{env=\"dev\",target=\"dev-2\"}"), "{metrics}");

    package(&w, Some(&net), "llm_policy.yaml", "max_tokens: 2000\n", "PD-0.2.0");
    let args = [
        "ledger",
        "deploy",
        "PD-0.2.0",
        "--until",
        "dev",
        "--reason",
        "v2",
        "--fail-on-stale",
        "--auto-rollback",
    ];
    let out = net.run("", &args);
    let said = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("dev-2 is stale"), "the wait names the stale target: {said}");
    assert!(said.contains("rolled dev back to PD-0.1.0"), "{said}");
    let dev = slot(&state(&net), "dev", "llm_policy");
    assert_eq!((dev["desired"].as_str(), dev["via"].as_str()), (Some("PD-0.1.0"), Some("rollback")), "{dev}");
    // The rollback's wait ended at the stale target too; dev-1 converges on its own.
    net.wait_for(|net| (file(net, "dev-1", "llm_policy.yaml")? == b"max_tokens: 1000\n").then_some(()));
}

#[test]
fn two_policy_sets_deploy_and_roll_back_independently() {
    let w = world();
    // web-1 follows only the web set; dev-1 and dev-2 follow every set.
    w.ok(
        "",
        &[
            "key",
            "new",
            "web-1",
            "--role",
            "target",
            "--env",
            "dev",
            "--set",
            "web_policy",
            "--generate-here",
        ],
    );
    let mut net = Net::start(&w);
    for t in ["dev-1", "dev-2", "web-1"] {
        net.agent(t, "dev", &[]);
    }
    let deploy = |net: &Net, v: &str| {
        net.ok("", &["ledger", "deploy", v, "--until", "dev", "--reason", "go", "--timeout", "60s"]);
    };
    deploy(&net, "PD-0.1.0");
    package(&w, Some(&net), "web_policy.yaml", "csp: strict\n", "PD-0.2.0");
    deploy(&net, "PD-0.2.0");
    let web_v1 = file(&net, "dev-1", "web_policy.yaml").expect("web policy on dev-1");
    let llm_v1 = file(&net, "dev-1", "llm_policy.yaml").expect("llm policy kept on dev-1");
    assert_eq!(llm_v1, b"max_tokens: 1000\n");
    assert_eq!(file(&net, "web-1", "llm_policy.yaml"), None, "web-1 follows only web_policy");

    // (a) A changed llm_policy leaves the web policy byte-identical on every target.
    package(&w, Some(&net), "llm_policy.yaml", "max_tokens: 2000\n", "PD-0.3.0");
    deploy(&net, "PD-0.3.0");
    assert_eq!(file(&net, "dev-1", "llm_policy.yaml").as_deref(), Some(&b"max_tokens: 2000\n"[..]));
    for t in ["dev-1", "dev-2", "web-1"] {
        assert_eq!(file(&net, t, "web_policy.yaml").as_ref(), Some(&web_v1), "{t}'s web policy moved");
    }
    package(&w, Some(&net), "web_policy.yaml", "csp: report-only\n", "PD-0.4.0");
    deploy(&net, "PD-0.4.0");

    // (b) Each set has its own version line, and rolls back alone.
    let s = state(&net);
    assert_eq!(slot(&s, "dev", "llm_policy")["desired"], "PD-0.3.0");
    assert_eq!(slot(&s, "dev", "web_policy")["desired"], "PD-0.4.0");
    let rollback = |net: &Net, set: &str| {
        net.ok("", &["ledger", "rollback", "dev", "--set", set, "--reason", "back", "--timeout", "60s"]);
    };
    rollback(&net, "llm_policy");
    let s = state(&net);
    assert_eq!(slot(&s, "dev", "llm_policy")["desired"], "PD-0.1.0");
    assert_eq!(slot(&s, "dev", "web_policy")["desired"], "PD-0.4.0", "the web set stays");
    assert_eq!(file(&net, "dev-2", "llm_policy.yaml"), Some(llm_v1.clone()));
    assert_eq!(file(&net, "dev-2", "web_policy.yaml").as_deref(), Some(&b"csp: report-only\n"[..]));
    rollback(&net, "web_policy");
    let s = state(&net);
    assert_eq!(slot(&s, "dev", "llm_policy")["desired"], "PD-0.1.0", "the llm set stays");
    assert_eq!(slot(&s, "dev", "web_policy")["desired"], "PD-0.2.0");
    for t in ["dev-1", "dev-2", "web-1"] {
        assert_eq!(file(&net, t, "web_policy.yaml").as_ref(), Some(&web_v1), "{t}");
    }
    let out = export_and_verify(&net);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
}

#[test]
fn a_fixed_target_acks_the_same_push_after_retry_failed_and_that_counts() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent_with("dev-1", "dev", &[], &["--health-listen", "127.0.0.1:0"]);
    net.agent("dev-2", "dev", &["PD-0.1.0"]);
    let health = |net: &mut Net| {
        let url = net.agent_proc("dev-1").url.clone();
        let (code, body) = http(&url, "GET", "/healthz", b"");
        (code, serde_json::from_slice::<Value>(&body).expect("health JSON"))
    };
    let out = net
        .run("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));
    // The wait ends at dev-2's failure; dev-1 may still be installing. Its ack follows its
    // status, so once the ack is in the ledger the health endpoint must say it runs.
    let loaded = [("PD-0.1.0".to_string(), "loaded".to_string())];
    net.wait_for(|net| (acks_by(net, "dev-1") == loaded).then_some(()));
    let (code, h) = health(&mut net);
    assert_eq!(code, 200, "dev-1 follows and runs the desired version: {h}");
    assert_eq!(h["status"]["running"][0]["version"], "PD-0.1.0", "{h}");
    let dev = slot(&state(&net), "dev", "llm_policy");
    assert_eq!(dev["failed"][0][0], "dev-2", "{dev}");

    // The owner fixes dev-2's target; the same push is retried and its loaded ack counts.
    net.fix_target("dev-2");
    let args = [
        "ledger",
        "deploy",
        "PD-0.1.0",
        "--until",
        "dev",
        "--reason",
        "fixed",
        "--retry-failed",
        "--timeout",
        "60s",
    ];
    let out = net.ok("", &args);
    assert!(
        out.contains("dev-2 asked to retry PD-0.1.0") && out.contains("2/2 targets acknowledged"),
        "{out}"
    );
    assert_eq!(
        acks_by(&net, "dev-2"),
        [("PD-0.1.0".into(), "failed".into()), ("PD-0.1.0".into(), "loaded".into())]
    );
    let dev = slot(&state(&net), "dev", "llm_policy");
    assert_eq!((dev["adopted"].as_bool(), dev["loaded"].as_u64()), (Some(true), Some(2)), "{dev}");
    assert_eq!(net.loaded("dev-2")["version"], "PD-0.1.0");

    // An agent that cannot reach its server is unhealthy, and says why.
    net.kill_agent("dev-1");
    net.server.kill();
    net.restart_agent_with("dev-1", "dev", &["--health-listen", "127.0.0.1:0"]);
    let (code, h) = health(&mut net);
    assert_eq!((code, &h["status"]["following"]), (503, &Value::Bool(false)), "{h}");
}

#[test]
fn a_version_loaded_but_superseded_before_its_ack_is_still_acked() {
    let w = world();
    package(&w, None, "llm_policy.yaml", "max_tokens: 2000\n", "PD-0.2.0");
    let net = Net::start(&w);
    // dev-1's reload says which version it loads, then waits for the test's go.
    let (started, go) = (w.path("started.fifo"), w.path("go.fifo"));
    for f in [&started, &go] {
        assert!(std::process::Command::new("mkfifo").arg(f).status().expect("mkfifo").success());
    }
    let reload =
        format!("echo \"$PD_VERSION\" > '{}' && cat '{}' > /dev/null", started.display(), go.display());
    let dir = net.agent_dir("dev-1");
    let dir = dir.to_str().expect("path");
    let args = ["--server", net.url(), "agent", "--env", "dev", "--dir", dir, "--reload-cmd", &reload];
    let _agent = Proc::spawn(w.pd("dev-1", &args), &w.path("agent-dev-1.log"), "following");
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    let loading = std::fs::read_to_string(&started).expect("the reload starts");
    assert_eq!(loading.trim(), "PD-0.1.0");
    // While dev-1 loads PD-0.1.0, PD-0.2.0 supersedes it.
    net.ok("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--no-wait"]);
    std::fs::write(&go, "go\n").expect("let the reload finish");
    let loading = std::fs::read_to_string(&started).expect("the next reload starts");
    assert_eq!(loading.trim(), "PD-0.2.0");
    std::fs::write(&go, "go\n").expect("let the reload finish");
    net.wait_for(|net| (acks_by(net, "dev-1").len() == 2).then_some(()));
    let want: [(String, String); 2] =
        [("PD-0.1.0".into(), "loaded".into()), ("PD-0.2.0".into(), "loaded".into())];
    assert_eq!(acks_by(&net, "dev-1"), want, "the ledger shows dev-1 ran PD-0.1.0 for a while");
}

#[test]
fn a_promotion_relying_on_a_pre_rollback_ack_is_refused_by_the_rule_and_by_pd_verify() {
    let w = world();
    let mut net = Net::start(&w);
    for (t, env) in [("dev-1", "dev"), ("dev-2", "dev")] {
        net.agent(t, env, &[]);
    }
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    package(&w, Some(&net), "llm_policy.yaml", "max_tokens: 2000\n", "PD-0.2.0");
    net.ok("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--timeout", "60s"]);
    net.ok("", &["ledger", "rollback", "dev", "--reason", "bad numbers", "--timeout", "60s"]);
    // dev acked PD-0.2.0 before the rollback: that ack no longer counts for staging.
    let before = net.log();
    let out = net.run("", &["ledger", "deploy", "PD-0.2.0", "--env", "staging", "--reason", "promote"]);
    let said = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(net.log(), before, "the refused promotion appended nothing");
    assert!(said.contains("dev") && said.contains("PD-0.2.0"), "{said}");
    // An export with that promotion forged in (validly signed, chained) fails pd-verify.
    net.server.kill();
    let file = w.path("forged.pdx");
    let out = w
        .pd("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"])
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    let forged = pd_e2e::forge::append_push(&file, &w.home, "staging", "PD-0.2.0");
    std::fs::write(&file, forged).expect("write forged export");
    let out = w.verify(&[file.to_str().expect("path")]);
    let said = pd_e2e::text(&out);
    assert!(!out.status.success(), "pd-verify accepted a promotion past a rollback: {said}");
    assert!(said.contains("PD-0.2.0") && said.contains("dev"), "{said}");
}

#[test]
fn light_agents_deploy_roll_back_and_resume_without_receiving_other_targets_acks() {
    let w = world();
    // A third target, so there are other targets' acks to leave out.
    w.ok("", &["key", "new", "dev-3", "--role", "target", "--env", "dev", "--generate-here"]);
    let mut net = Net::start(&w);
    let light = ["--light", "--health-listen", "127.0.0.1:0"];
    net.agent_with("dev-1", "dev", &[], &light);
    net.agent("dev-2", "dev", &[]);
    net.agent_with("dev-3", "dev", &[], &light);
    let status = |net: &mut Net, target: &str| {
        let url = net.agent_proc(target).url.clone();
        let (code, body) = http(&url, "GET", "/healthz", b"");
        let h: Value = serde_json::from_slice(&body).expect("health JSON");
        (code, h["status"].clone())
    };
    let deploy = |net: &Net, v: &str| {
        net.ok("", &["ledger", "deploy", v, "--until", "dev", "--reason", "go", "--timeout", "60s"]);
    };
    deploy(&net, "PD-0.1.0");
    package(&w, Some(&net), "llm_policy.yaml", "max_tokens: 2000\n", "PD-0.2.0");
    deploy(&net, "PD-0.2.0");
    for t in ["dev-1", "dev-2", "dev-3"] {
        assert_eq!(file(&net, t, "llm_policy.yaml").as_deref(), Some(&b"max_tokens: 2000\n"[..]), "{t}");
    }
    net.ok("", &["ledger", "rollback", "dev", "--reason", "back", "--timeout", "60s"]);
    assert_eq!(file(&net, "dev-1", "llm_policy.yaml").as_deref(), Some(&b"max_tokens: 1000\n"[..]));
    let (code, s) = status(&mut net, "dev-1");
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["running"][0]["version"], "PD-0.1.0", "{s}");

    // What the light agent checked: the control entries, its own enrolment and checkpoints,
    // never an ack. Fewer signatures than the ledger has acks alone.
    let log = net.log();
    let acks = log.iter().filter(|e| e["kind"] == "ack").count() as u64;
    let control =
        log.iter().filter(|e| !matches!(e["kind"].as_str(), Some("ack" | "checkpoint"))).count() as u64;
    let checked = s["verified_signatures"].as_u64().expect("a count");
    assert!(acks >= 9 && checked > 0, "{acks} acks, {checked} signatures checked");
    assert!(
        checked <= control + 2 * 8,
        "{checked} signatures for {control} control entries: acks were checked"
    );
    assert!(s["replica_len"].as_u64().expect("len") > 0, "{s}");

    // A restarted light agent verifies the server's checkpoint against the one it kept, and
    // neither reinstalls nor acks again what it already acked.
    let before = acks_by(&net, "dev-1");
    net.kill_agent("dev-1");
    net.restart_agent_with("dev-1", "dev", &light);
    package(&w, Some(&net), "llm_policy.yaml", "max_tokens: 3000\n", "PD-0.3.0");
    let out = net
        .ok("", &["ledger", "deploy", "PD-0.3.0", "--until", "dev", "--reason", "again", "--timeout", "60s"]);
    assert!(out.contains("3/3 targets acknowledged"), "{out}");
    let (code, s) = status(&mut net, "dev-1");
    assert_eq!((code, &s["following"]), (200, &Value::Bool(true)), "{s}");
    let after = acks_by(&net, "dev-1");
    assert_eq!(after.len(), before.len() + 1, "one ack for the new push, none again: {after:?}");
    let out = export_and_verify(&net);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
}
