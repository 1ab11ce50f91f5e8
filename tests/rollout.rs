//! Progressive rollouts through a real `pd serve`, real agents and example targets, and a
//! real Prometheus scraping them: waves, bakes, gates, automatic rollback, freezes and
//! approval policy, each step a signed entry that `pd-verify` replays. Nothing sleeps: the
//! waits are the deploy's own, the server's long poll, or a deadline-bounded poll.

use pd_e2e::prometheus::Prometheus;
use pd_e2e::{Net, World};
use serde_json::Value;

const ERROR_RATIO: &str = "sum(rate(pd_example_errors_total[5s]))/sum(rate(pd_example_requests_total[5s]))";

/// The standard world plus two more prod targets, one labelled `canary`: prod's fleet is
/// prod-1, prod-2 and prod-canary. PD-0.1.0 is packaged and approved.
fn world() -> World {
    let w = World::standard();
    w.ok("", &["key", "new", "prod-2", "--role", "target", "--env", "prod", "--generate-here"]);
    let canary = ["key", "new", "prod-canary", "--role", "target", "--env", "prod", "--label", "canary"];
    w.ok("", &[&canary[..], &["--generate-here"]].concat());
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "first"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w
}

const PROD: [&str; 3] = ["prod-1", "prod-2", "prod-canary"];

/// Agents and example targets for every target; prod's treat `bad` as a bad version (it
/// loads, then fails half the requests). prod-2's agent is a light one: it learns its wave
/// from the entries it fetches with proofs, not from a replica.
fn fleet<'w>(w: &'w World, bad: &[&str]) -> Net<'w> {
    let mut net = Net::start(w);
    for (t, env) in [("dev-1", "dev"), ("staging-1", "staging")] {
        net.agent_with(t, env, &[], &["--heartbeat", "1s"]);
    }
    let bad: Vec<&str> = bad.iter().flat_map(|v| ["--bad", v]).collect();
    for t in PROD {
        let light: &[&str] = if t == "prod-2" { &["--light"] } else { &[] };
        let args = [&["--heartbeat", "1s", "--health-url", "{target}/healthz"][..], light].concat();
        net.agent_and_target(t, "prod", &bad, &args);
    }
    net
}

fn prometheus(net: &Net) -> Prometheus {
    let urls: Vec<String> = PROD.iter().map(|t| net.target_url(t)).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    Prometheus::start(&urls)
}

fn acked(net: &Net, target: &str, version: &str) -> bool {
    net.log()
        .iter()
        .any(|e| e["kind"] == "ack" && e["actor"] == target && e["body"]["ack"]["version"] == version)
}

fn kinds(net: &Net, kind: &str) -> Vec<Value> {
    net.log().into_iter().filter(|e| e["kind"] == kind).collect()
}

fn verify(net: &Net) -> String {
    let file = net.w.path("ledger.pdx");
    net.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    let out = net.w.verify(&[file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_good_version_goes_wave_by_wave_with_bakes_and_ends_adopted_everywhere() {
    let w = world();
    let net = fleet(&w, &[]);
    let prom = prometheus(&net);
    let gate = format!("prom:{}?query={ERROR_RATIO}&max=0.01", prom.url());
    let set =
        ["env", "set", "prod", "--waves", "canary", "--bake", "2s", "--gate", &gate, "--gate", "health"];
    net.ok("", &[&set[..], &["--reason", "canary"]].concat());
    let plan = net.ok("", &["ledger", "deploy", "PD-0.1.0", "--plan", "--reason", "v1"]);
    assert!(plan.contains("prod: 2 wave(s), each baking 2s"), "{plan}");
    assert!(plan.contains("wave 1 (canary): prod-canary"), "{plan}");
    assert!(plan.contains("wave 2 (100%): prod-1, prod-2"), "{plan}");
    assert!(net.log().iter().all(|e| e["kind"] != "push"), "--plan pushes nothing");

    // A push alone starts no wave: nobody in prod installs until a deploy drives the rollout,
    // and a rerun continues from where the ledger stands.
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "staging", "--reason", "v1"]);
    let pushed =
        net.run("", &["ledger", "deploy", "PD-0.1.0", "--env", "prod", "--no-wait", "--reason", "v1"]);
    assert!(
        pd_e2e::text(&pushed).contains("no target installs it before wave 1 starts"),
        "{}",
        pd_e2e::text(&pushed)
    );
    let state = net.ok("", &["state", "prod"]);
    assert!(state.contains("rollout: wave 1/2 not started yet"), "{state}");
    assert!(kinds(&net, "wave").is_empty());
    let out = net.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "v1", "--timeout", "120s"]);
    assert!(out.contains("wave 1/2 of PD-0.1.0 in prod: prod-canary"), "{out}");
    assert!(out.contains("all targets acknowledged"), "{out}");
    for t in PROD {
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0", "{t}");
    }
    // The ledger has each step, in order: wave 1, its gate and bake, wave 2, its gate and bake.
    let steps: Vec<String> = net
        .log()
        .iter()
        .filter(|e| ["wave", "gate", "bake"].contains(&e["kind"].as_str().unwrap_or_default()))
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(steps, ["wave", "gate", "gate", "bake", "wave", "gate", "gate", "bake"]);
    let gates = kinds(&net, "gate");
    assert!(gates.iter().all(|g| g["body"]["gate"]["passed"] == true), "{gates:?}");
    assert_eq!(gates[0]["body"]["gate"]["value"], "0", "no errors during the canary's bake");
    assert_eq!(gates[1]["body"]["gate"]["value"], "1/1 healthy", "the canary's agent saw it healthy");
    assert_eq!(gates[3]["body"]["gate"]["value"], "3/3 healthy");
    // The canary acked before the wave that reached the others started.
    let wave2 = kinds(&net, "wave")[1]["seq"].as_u64().expect("seq");
    let first_ack = |t: &str| {
        net.log().iter().find(|e| e["kind"] == "ack" && e["actor"] == t).and_then(|e| e["seq"].as_u64())
    };
    assert!(first_ack("prod-canary").expect("canary acked") < wave2);
    assert!(first_ack("prod-1").expect("prod-1 acked") > wave2);
    let state = net.ok("", &["state", "prod"]);
    assert!(state.contains("rollout: all 2 wave(s) done"), "{state}");
    let report = verify(&net);
    assert!(report.contains("PD-0.1.0 wave 1 started in prod: prod-canary"), "{report}");
    assert!(report.contains("PD-0.1.0 wave 2 in prod: bake passed"), "{report}");

    // A gate that never answers (no Prometheus there) records nothing: the deploy ends with
    // an error, and a rerun would resume the bake.
    let dead =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let gate = format!("prom:http://127.0.0.1:{dead}?query={ERROR_RATIO}&max=0.01");
    net.ok("", &["env", "set", "prod", "--gate", &gate, "--bake", "1s", "--reason", "new prometheus"]);
    w.write("llm_policy.yaml", "max_tokens: 1500\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "more"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    let out = net.run("", &["ledger", "deploy", "PD-0.2.0", "--reason", "more", "--timeout", "5s"]);
    let said = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("had no answer before the timeout") && said.contains("rerun the deploy"), "{said}");
    let about_v2 = |kind: &str| {
        kinds(&net, kind).iter().filter(|e| e["body"][kind]["stage"]["version"] == "PD-0.2.0").count()
    };
    assert_eq!((about_v2("gate"), about_v2("bake")), (0, 0), "nothing recorded for an unanswered gate");
}

#[test]
fn a_bad_version_is_rolled_back_from_the_canary_and_never_reaches_wave_2() {
    let w = world();
    let net = fleet(&w, &["PD-0.2.0"]);
    let prom = prometheus(&net);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "v1", "--timeout", "120s"]);
    let gate = format!("prom:{}?query={ERROR_RATIO}&max=0.01", prom.url());
    let set =
        ["env", "set", "prod", "--waves", "canary", "--bake", "60s", "--gate", &gate, "--auto-rollback"];
    net.ok("", &[&set[..], &["--reason", "canary first"]].concat());
    w.write("llm_policy.yaml", "max_tokens: 100000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "a bigger budget"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);

    let args = ["ledger", "deploy", "PD-0.2.0", "--reason", "bigger budget", "--timeout", "120s"];
    let out = net.run("", &args);
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));
    let said = pd_e2e::text(&out);
    assert!(said.contains("stopped at wave 1"), "{said}");
    assert!(said.contains("rolled prod back to PD-0.1.0"), "{said}");
    // The gate saw the spike, and the ledger holds its value.
    let failed = kinds(&net, "gate")
        .into_iter()
        .find(|g| g["body"]["gate"]["passed"] == false)
        .expect("a failed gate");
    let value: f64 = failed["body"]["gate"]["value"].as_str().and_then(|v| v.parse().ok()).expect("a number");
    assert!(value > 0.01, "{failed}");
    assert!(kinds(&net, "bake").iter().any(|b| b["body"]["bake"]["passed"] == false));
    let rollback = kinds(&net, "rollback").pop().expect("a rollback");
    assert!(rollback["body"]["rollback"]["reason"]
        .as_str()
        .unwrap_or_default()
        .starts_with("automatic: gate prom:"));
    // The canary runs the old version again; wave 2 never loaded the bad one.
    assert!(acked(&net, "prod-canary", "PD-0.2.0"));
    assert_eq!(net.loaded("prod-canary")["version"], "PD-0.1.0");
    for t in ["prod-1", "prod-2"] {
        assert!(!acked(&net, t, "PD-0.2.0"), "{t} never acked PD-0.2.0");
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0", "{t}");
    }
    let report = verify(&net);
    assert!(report.contains("wave 1 in prod: gate prom:"), "{report}");
    assert!(report.contains("FAILED"), "{report}");
    assert!(report.contains("prod rolled back to PD-0.1.0 · automatic: gate"), "{report}");
}

#[test]
fn a_failing_smoke_test_stops_the_rollout_and_pd_verify_refuses_a_forged_wave() {
    let w = world();
    let net = fleet(&w, &[]);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "v1", "--timeout", "120s"]);
    w.write("smoke.sh", "echo \"smoke: /chat answered 500 in $PD_ENV wave $PD_WAVE\" >&2\nexit 1\n");
    let smoke = format!("cmd:sh {}", w.path("smoke.sh").display());
    net.ok("", &["env", "set", "prod", "--waves", "canary", "--gate", &smoke, "--reason", "smoke test"]);
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "more"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    let out = net.run("", &["ledger", "deploy", "PD-0.2.0", "--reason", "more", "--timeout", "120s"]);
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));
    let said = pd_e2e::text(&out);
    assert!(said.contains("smoke: /chat answered 500 in prod wave 1"), "{said}");
    assert!(said.contains("later waves never received it"), "{said}");
    assert!(kinds(&net, "rollback").is_empty(), "no automatic rollback was asked for");
    let state = net.ok("", &["state", "prod"]);
    assert!(state.contains("rollout: STOPPED at wave 1/2"), "{state}");
    for t in ["prod-1", "prod-2"] {
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0", "{t} keeps what it ran");
    }
    // A wave 2 that an insider appends without a passed bake is refused by pd-verify.
    let file = w.path("ledger.pdx");
    net.ok("", &["ledger", "export", file.to_str().expect("path")]);
    let forged = pd_e2e::forge::append(&file, &w.home, "PD-0.2.0", |version, package| {
        let stage = pd_ledger::Stage { env: "prod".into(), version, package, wave: 2 };
        pd_ledger::Body::Wave(pd_ledger::WaveStart { stage, targets: Vec::new() })
    });
    let forged_file = w.path("forged.pdx");
    std::fs::write(&forged_file, forged).expect("write");
    let out = w.verify(&["--no-artifacts", forged_file.to_str().expect("path")]);
    assert!(!out.status.success());
    let said = pd_e2e::text(&out);
    assert!(said.contains("stopped when wave 1 failed its bake"), "{said}");
}

#[test]
fn a_freeze_refuses_a_push_until_overridden_and_prod_needs_two_groups() {
    let w = World::packaged();
    for (name, group) in [("sec-1", "security"), ("sec-2", "security"), ("plat-1", "platform")] {
        w.ok("", &["key", "new", name, "--role", "approver", "--group", group, "--generate-here"]);
    }
    let policy = ["env", "set", "prod", "--approvals", "2", "--approver-groups", "security,platform"];
    w.ok("", &[&policy[..], &["--reason", "two groups"]].concat());
    let push_prod = ["ledger", "deploy", "PD-0.1.0", "--env", "prod", "--no-wait", "--reason", "r"];
    let said = w.refused("", &push_prod);
    assert!(said.contains("needs 2 approval(s) from distinct approvers covering 2 of the groups platform, security; counted: none"), "{said}");
    w.ok("sec-1", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w.ok("sec-2", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    let said = w.refused("", &push_prod);
    assert!(said.contains("counted: sec-1 (security), sec-2 (security)"), "two of one group: {said}");
    w.ok("plat-1", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    let said = w.refused("", &push_prod);
    assert!(
        said.contains("cannot go to prod before it is fully adopted in staging"),
        "the policy is met: {said}"
    );

    // dev is frozen from yesterday to tomorrow (UTC): a push needs an override.
    let day = |offset: &str| {
        let out =
            std::process::Command::new("date").args(["-u", "-d", offset, "+%F"]).output().expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let window = format!("{}..{} UTC", day("yesterday"), day("tomorrow"));
    w.ok("", &["env", "set", "dev", "--freeze", &window, "--reason", "holidays"]);
    let shown = w.ok("", &["env", "show", "dev"]);
    assert!(shown.contains(&format!("freeze {window}")), "{shown}");
    let push_dev = ["ledger", "deploy", "PD-0.1.0", "--env", "dev", "--no-wait", "--reason", "r"];
    let said = w.refused("", &push_dev);
    assert!(said.contains(&format!("dev is frozen ({window})")), "{said}");
    assert!(said.contains("pd ledger override PD-0.1.0 --env dev"), "{said}");
    let said = w.refused("", &["ledger", "override", "PD-0.1.0", "--env", "dev", "--reason", "fix"]);
    assert!(said.contains("lacks the approver role"), "the author/admin cannot override: {said}");
    w.ok("carol", &["ledger", "override", "PD-0.1.0", "--env", "dev", "--reason", "incident fix"]);
    w.ok("", &push_dev);
    let log = w.log();
    assert!(log.iter().any(|e| e["kind"] == "freeze_override" && e["actor"] == "carol"));
}
