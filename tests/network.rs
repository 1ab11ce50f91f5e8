//! The story over the network: a real `pd serve`, real `pd agent`s and example targets on
//! loopback. Waiting is done by `pd ledger deploy` itself (long-polling the server), never
//! by sleeping.

use pd_e2e::{http, Net, Proc, World};

/// A standard world plus `dev-2`, with PD-0.1.0 packaged and approved.
fn world() -> World {
    World::packaged()
}

fn package_v2(net: &Net) {
    net.w.write("llm_policy.yaml", "max_tokens: 2000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "second"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
}

fn current_policy(net: &Net, target: &str) -> String {
    std::fs::read_to_string(net.agent_dir(target).join("current/llm_policy.yaml")).expect("current policy")
}

fn env_state(net: &Net, env: &str) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_str(&net.ok("", &["state", "--json"])).expect("state JSON");
    s["envs"].as_array().expect("envs").iter().find(|e| e["env"] == env).expect("env")["sets"][0].clone()
}

fn verify_export(net: &Net) {
    let file = net.w.path("ledger.pdx");
    net.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    let out = net.w.verify(&[file.to_str().expect("path")]);
    assert!(out.status.success(), "pd-verify: {}", pd_e2e::text(&out));
}

#[test]
fn a_deploy_promotes_through_every_environment_as_agents_acknowledge() {
    let w = world();
    let mut net = Net::start(&w);
    for (t, env) in [("dev-1", "dev"), ("dev-2", "dev"), ("staging-1", "staging"), ("prod-1", "prod")] {
        net.agent(t, env, &[]);
    }
    let out =
        net.ok("", &["ledger", "deploy", "llm_policy.yaml", "--reason", "roll out", "--timeout", "60s"]);
    for line in [
        "✔ packaged as PD-0.1.0",
        "✔ signature valid (OpenPGP",
        "⟳ deploying to dev… staging… prod…",
        "✔ all targets acknowledged",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    for env in ["dev", "staging", "prod"] {
        let e = env_state(&net, env);
        assert_eq!(e["desired"], "PD-0.1.0");
        assert_eq!(e["waiting"].as_array().map(Vec::len), Some(0), "{e}");
    }
    for t in ["dev-1", "dev-2", "staging-1", "prod-1"] {
        assert_eq!(current_policy(&net, t), "max_tokens: 1000\n");
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0");
    }
    // The server's own export verifies too.
    let (status, bytes) = http(net.url(), "GET", "/v1/export", b"");
    assert_eq!(status, 200);
    std::fs::write(w.path("served.pdx"), bytes).expect("write");
    let out = w.verify(&[w.path("served.pdx").to_str().expect("path")]);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    verify_export(&net);
}

#[test]
fn a_target_that_fails_to_load_triggers_an_automatic_rollback() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &["PD-0.2.0"]);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    package_v2(&net);
    let out = net.run(
        "",
        &[
            "ledger",
            "deploy",
            "PD-0.2.0",
            "--until",
            "dev",
            "--reason",
            "v2",
            "--auto-rollback",
            "--timeout",
            "60s",
        ],
    );
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("dev-2 failed") && text.contains("refuses to load PD-0.2.0"), "{text}");
    assert!(text.contains("rolled dev back to PD-0.1.0"), "{text}");
    let dev = env_state(&net, "dev");
    assert_eq!(dev["desired"], "PD-0.1.0");
    assert_eq!(dev["via"], "rollback");
    assert_eq!(dev["waiting"].as_array().map(Vec::len), Some(0), "{dev}");
    for t in ["dev-1", "dev-2"] {
        assert_eq!(current_policy(&net, t), "max_tokens: 1000\n", "{t} runs the old policy again");
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0");
    }
    verify_export(&net);
}

#[test]
fn an_agent_killed_mid_deploy_resumes_and_converges() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &[]);
    net.kill_agent("dev-2");
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    // The deploy has planned (dev-2 still missing) before the agent comes back.
    let args = ["--server", net.url(), "ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "wait"];
    let mut deploy = Proc::spawn(w.pd("", &args), &w.path("deploy.log"), "deploying to");
    net.restart_agent("dev-2", "dev");
    assert!(deploy.wait_exit(), "the deploy waits for the restarted agent");
    assert_eq!(current_policy(&net, "dev-2"), "max_tokens: 1000\n");
    // A restart after adoption acks nothing new: the agent knows what it runs.
    let acks = |net: &Net| net.log().iter().filter(|e| e["kind"] == "ack" && e["actor"] == "dev-2").count();
    let before = acks(&net);
    net.kill_agent("dev-2");
    net.restart_agent("dev-2", "dev");
    package_v2(&net);
    net.ok("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--timeout", "60s"]);
    assert_eq!(acks(&net), before + 1, "one ack for PD-0.2.0, none repeated for PD-0.1.0");
}

#[test]
fn a_server_restarted_mid_deploy_loses_nothing() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &[]);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    net.restart_server();
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "wait", "--timeout", "60s"]);
    package_v2(&net);
    net.restart_server();
    net.ok("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--timeout", "60s"]);
    for t in ["dev-1", "dev-2"] {
        assert_eq!(current_policy(&net, t), "max_tokens: 2000\n");
    }
    verify_export(&net);
}

#[test]
fn a_rollback_that_does_not_converge_either_names_both_versions() {
    // Regression: the deploy reported the rollback's failure as if PD-0.1.0 had been deployed.
    let w = world();
    let mut net = Net::start(&w);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    package_v2(&net);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &["PD-0.1.0", "PD-0.2.0"]);
    let args = ["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--auto-rollback"];
    let out = net.run("", &[&args[..], &["--timeout", "60s"]].concat());
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PD-0.2.0 failed in dev (dev-2 failed: "), "{text}");
    assert!(
        text.contains("rolled dev back to PD-0.1.0, but dev did not converge back to PD-0.1.0: dev-2 failed"),
        "{text}"
    );
    assert_eq!(env_state(&net, "dev")["desired"], "PD-0.1.0");
}

#[test]
fn a_server_checkpoints_an_uncovered_head_when_it_starts() {
    // Regression: a push whose checkpoint was lost (a crash between the two appends; here the
    // push was made without a server) kept agents waiting a whole checkpoint interval.
    let w = world();
    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    let mut net = Net::start_with(&w, &["--checkpoint-interval", "1h"]);
    net.agent("dev-1", "dev", &[]);
    net.wait_for(|n| n.log().iter().any(|e| e["kind"] == "ack" && e["actor"] == "dev-1").then_some(()));
}

#[test]
fn a_corrupt_object_on_the_server_is_retried_never_acked_failed_and_loads_once_repaired() {
    let w = world();
    let mut net = Net::start(&w);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    let hash =
        serde_json::from_str::<serde_json::Value>(&net.ok("", &["ledger", "show", "PD-0.1.0", "--json"]))
            .expect("show JSON")["body"]["package"]["tarball"]["blake3"]
            .as_str()
            .expect("hash")
            .to_string();
    let object = w.home.join("objects").join(&hash[..2]).join(&hash[2..]);
    let good = std::fs::read(&object).expect("object");
    let mut bad = good.clone();
    bad[20] ^= 1;
    std::fs::write(&object, bad).expect("tamper");
    // The server keeps small objects it has verified in memory; a fresh one reads the disk.
    net.restart_server();
    // A deployer's own check refuses it before waiting on anything, without the server's paths.
    let out = net.run("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "wait"]);
    let said = pd_e2e::text(&out);
    assert!(!out.status.success() && !said.contains(&*w.home.to_string_lossy()), "{said}");
    net.agent_with("dev-1", "dev", &[], &["--heartbeat", "200ms"]);
    net.agent_with("dev-2", "dev", &[], &["--heartbeat", "200ms"]);
    // Both follow the server (their heartbeats arrive) while every fetch answers 500.
    net.wait_for(|net| {
        let s: serde_json::Value = serde_json::from_str(&net.ok("", &["state", "--json"])).ok()?;
        let dev = s["envs"].as_array()?.iter().find(|e| e["env"] == "dev")?.clone();
        let live = dev["targets"].as_array()?.iter().filter(|t| t["liveness"] == "live").count();
        (live == 2).then_some(())
    });
    assert!(!net.agent_dir("dev-1").join("current").exists(), "nothing was installed");
    std::fs::write(&object, &good).expect("repair");
    net.wait_for(|net| (env_state(net, "dev")["loaded"] == 2).then_some(()));
    let log = net.ok("", &["ledger", "log"]);
    assert!(!log.contains("FAILED"), "a transient server error became a failed ack:\n{log}");
}

#[test]
fn replayed_and_downgrading_pushes_are_refused() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &[]);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    package_v2(&net);
    net.ok("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--timeout", "60s"]);
    let len = net.log().len();
    // Replay the signed push of PD-0.1.0 byte for byte.
    let seq = net.log().iter().find(|e| e["kind"] == "push").expect("a push")["seq"].as_u64().expect("seq");
    let (status, page) = http(net.url(), "GET", &format!("/v1/entries?from={seq}&limit=1"), b"");
    assert_eq!(status, 200);
    let entry = pd_ledger::SignedEntry::decode(single_bstr(&page)).expect("an entry");
    let statement = entry.entry.statement().encode();
    let (status, body) = http(net.url(), "POST", "/v1/entries", &statement);
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("replayed"), "{}", String::from_utf8_lossy(&body));
    // A fresh push of the older version is refused by the rules.
    let out = net.run("", &["ledger", "deploy", "PD-0.1.0", "--env", "dev", "--reason", "downgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));
    assert_eq!(net.log().len(), len, "nothing appended");
    for t in ["dev-1", "dev-2"] {
        assert_eq!(net.loaded(t)["version"], "PD-0.2.0");
    }
}

/// The one byte string inside a CBOR array of one (`GET /v1/entries` with limit=1).
fn single_bstr(cbor: &[u8]) -> &[u8] {
    assert_eq!(cbor[0], 0x81, "an array of one");
    let (len, start) = match cbor[1] {
        b @ 0x40..=0x57 => ((b - 0x40) as usize, 2),
        0x58 => (cbor[2] as usize, 3),
        0x59 => (u16::from_be_bytes([cbor[2], cbor[3]]) as usize, 4),
        b => panic!("unexpected CBOR byte {b:#x}"),
    };
    &cbor[start..start + len]
}

#[test]
fn fifty_concurrent_appenders_neither_fork_nor_lose_entries() {
    let w = world();
    let net = Net::start(&w);
    let before = net.log().len();
    let children: Vec<_> = (0..50)
        .map(|i| {
            let name = format!("approver-{i}");
            let args =
                ["--server", net.url(), "key", "new", name.as_str(), "--role", "approver", "--generate-here"];
            w.pd("", &args).stdout(std::process::Stdio::null()).spawn().expect("spawn")
        })
        .collect();
    for mut c in children {
        let status = c.wait().expect("wait");
        assert!(status.success(), "an appender failed");
    }
    let log = net.log();
    let keys = log.iter().skip(before).filter(|e| e["kind"] == "key_add").count();
    assert_eq!(keys, 50, "every appender's entry is there once");
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64));
    }
    verify_export(&net);
}

#[test]
fn objects_are_immutable_cacheable_and_served_in_ranges() {
    let w = world();
    let net = Net::start(&w);
    let show: serde_json::Value =
        serde_json::from_str(&net.ok("", &["ledger", "show", "PD-0.1.0", "--json"])).expect("show JSON");
    let tarball = &show["body"]["package"]["tarball"];
    let (hash, size) = (tarball["blake3"].as_str().expect("hash"), tarball["size"].as_u64().expect("size"));
    let path = format!("/v1/objects/{hash}");
    let (status, head, body) = pd_e2e::http_with(net.url(), "GET", &path, &[], b"");
    assert_eq!((status, body.len() as u64), (200, size));
    assert!(head.contains(&format!("etag: \"{hash}\"")), "{head}");
    assert!(head.contains("immutable"), "{head}");
    let etag = format!("\"{hash}\"");
    let (status, _, body) = pd_e2e::http_with(net.url(), "GET", &path, &[("If-None-Match", &etag)], b"");
    assert_eq!((status, body.len()), (304, 0));
    let (status, head, part) = pd_e2e::http_with(net.url(), "GET", &path, &[("Range", "bytes=2-5")], b"");
    assert_eq!(status, 206);
    assert_eq!(part, body_of(&net, &path)[2..=5]);
    assert!(head.contains(&format!("content-range: bytes 2-5/{size}")), "{head}");
    // A target without a home fetches by content hash through the CLI, verified.
    let file = w.path("fetched.tgz");
    net.ok("", &["store", "get", hash, "-o", file.to_str().expect("path")]);
    assert_eq!(std::fs::read(&file).expect("fetched"), body_of(&net, &path));
    let missing = format!("/v1/objects/{}", "0".repeat(64));
    assert_eq!(http(net.url(), "GET", &missing, b"").0, 404);
    assert_eq!(http(net.url(), "GET", "/v1/objects/not-a-hash", b"").0, 400);
    // Uploads need an author's signature, checked before the body is read.
    assert_eq!(http(net.url(), "PUT", &missing, b"").0, 401, "no pd-actor or pd-signature");
    let (_, metrics) = http(net.url(), "GET", "/metrics", b"");
    assert!(String::from_utf8_lossy(&metrics).contains("pd_objects_served_total 5"));
    assert_eq!(http(net.url(), "GET", "/healthz", b"").0, 200);
}

#[test]
fn a_large_object_is_sent_from_its_file_whole_in_ranges_and_to_head() {
    // Objects over 64 KiB are mapped and sent with sendfile: the same bytes, any range.
    let w = world();
    let net = Net::start(&w);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blob: String = (0..150_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x % 16) as usize])
        })
        .collect();
    w.write("llm_policy.yaml", &format!("blob: \"{blob}\"\n"));
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "large"]);
    let show: serde_json::Value =
        serde_json::from_str(&net.ok("", &["ledger", "show", "PD-0.2.0", "--json"])).expect("show JSON");
    let tarball = &show["body"]["package"]["tarball"];
    let (hash, size) = (tarball["blake3"].as_str().expect("hash"), tarball["size"].as_u64().expect("size"));
    assert!(size > 64 * 1024, "the tarball is large enough to be mapped: {size} B");
    let path = format!("/v1/objects/{hash}");
    let file = w.path("fetched.tgz");
    net.ok("", &["store", "get", hash, "-o", file.to_str().expect("path")]);
    let expected = std::fs::read(&file).expect("fetched");
    for _ in 0..2 {
        // The first answer maps the file; the second comes from the cache.
        assert_eq!(body_of(&net, &path), expected);
    }
    let (status, head, part) =
        pd_e2e::http_with(net.url(), "GET", &path, &[("Range", "bytes=70000-70999")], b"");
    assert_eq!(status, 206, "{head}");
    assert_eq!(part, expected[70_000..71_000]);
    let (status, head, body) = pd_e2e::http_with(net.url(), "HEAD", &path, &[], b"");
    assert_eq!((status, body.len()), (200, 0), "{head}");
    assert!(head.contains(&format!("content-length: {size}")), "{head}");
}

#[test]
fn local_commands_on_a_served_home_go_through_its_server() {
    let w = world();
    let net = Net::start(&w);
    // No --server: the home's ledger is held by `pd serve`, so pd goes through it.
    let out = w.pd("", &["state"]).output().expect("run pd");
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("`pd serve` at {}", net.url())));
    w.write("llm_policy.yaml", "max_tokens: 3000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "through the server"]);
    assert!(net.log().iter().any(|e| e["body"]["package"]["reason"] == "through the server"));
    // What must own the ledger fails at once, naming the command to run instead.
    let out = w.pd("", &["serve", "--listen", "127.0.0.1:0"]).output().expect("run pd");
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("is held by `pd serve` at {}", net.url())), "{text}");
    assert!(text.contains(&format!("pd --server {} ", net.url())), "{text}");
}

fn body_of(net: &Net, path: &str) -> Vec<u8> {
    http(net.url(), "GET", path, b"").1
}

#[test]
fn a_server_with_a_token_refuses_requests_without_it() {
    let w = world();
    let net = Net::start_with(&w, &["--require-token", "s3cret"]);
    assert_eq!(http(net.url(), "GET", "/v1/head", b"").0, 401);
    let object = format!("/v1/objects/{}", "0".repeat(64));
    assert_eq!(http(net.url(), "GET", &object, b"").0, 401, "objects are answered beside the router");
    assert_eq!(http(net.url(), "HEAD", &object, b"").0, 401);
    assert_eq!(http(net.url(), "GET", "/healthz", b"").0, 200, "health stays open");
    let out = net.run("", &["state"]);
    assert!(!out.status.success() && pd_e2e::text(&out).contains("Bearer"), "{}", pd_e2e::text(&out));
    net.ok("", &["--token", "s3cret", "state"]);
}

#[test]
fn the_demo_tells_the_whole_story_and_ends_verified() {
    let w = World::new();
    let out = w.pd("", &["demo", "--dir", w.path("demo").to_str().expect("path")]).output().expect("run");
    let text = pd_e2e::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("every rule hold"), "pd-verify's report: {text}");
    for line in [
        "✔ packaged as PD-23.1.0",
        "✔ signature valid (OpenPGP",
        "⟳ deploying to dev… staging… prod…",
        "✔ all targets acknowledged",
        "rolled prod back to PD-23.0.0",
        "✔ staging: 3/3 targets run PD-23.0.0 again",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    // Commands are shown as a user types them, with the server they went to.
    let server =
        text.lines().find_map(|l| l.strip_prefix("$ pd --server ")).expect("a command through the server");
    assert!(server.starts_with("http://127.0.0.1:"), "{server}");
    assert!(text.contains("\n$ pd-verify audit.pdx\n") && !text.contains("next: pd-verify /"), "{text}");
    let export = w.path("demo/audit.pdx");
    let verified = w.verify(&["--json", export.to_str().expect("path")]);
    assert!(verified.status.success(), "{}", pd_e2e::text(&verified));
}

#[test]
fn the_demo_with_json_tells_its_story_on_stderr_and_prints_the_report() {
    let w = World::new();
    let dir = w.path("demo");
    let args = ["--json", "demo", "--dir", dir.to_str().expect("path")];
    let out = w.pd("", &args).output().expect("run");
    let text = pd_e2e::text(&out);
    assert!(out.status.success(), "{text}");
    pd_e2e::check_json(&args, &out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("✔ all targets acknowledged"), "the story: {text}");
}

#[test]
fn events_resume_after_the_last_id_and_end_on_graceful_shutdown() {
    use std::io::{BufRead, Write};
    let w = world();
    let mut net = Net::start(&w);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--no-wait"]);
    let push = net.log().iter().find(|e| e["kind"] == "push").expect("push")["seq"].as_u64().expect("seq");
    let addr = net.url().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    let req = format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: {}\r\n\r\n", push - 1);
    s.write_all(req.as_bytes()).expect("write");
    let mut lines = std::io::BufReader::new(s).lines().map_while(Result::ok);
    // One event block: its id, event and data lines up to the blank line that ends it.
    let field = |l: &String| ["id:", "event:", "data:"].iter().any(|f| l.starts_with(f));
    let event: Vec<String> = lines.by_ref().skip_while(|l| !field(l)).take_while(|l| !l.is_empty()).collect();
    assert!(event.iter().any(|l| l == "event: policyChanged"), "{event:?}");
    let data = event.iter().find_map(|l| l.strip_prefix("data: ")).expect("data line");
    let data: serde_json::Value = serde_json::from_str(data).expect("event JSON");
    assert_eq!(
        (data["seq"].as_u64(), data["env"].as_str(), data["version"].as_str()),
        (Some(push), Some("dev"), Some("PD-0.1.0"))
    );
    assert!(event.iter().any(|l| l == &format!("id: {push}")), "{event:?}");
    // SIGTERM: the server ends the open stream and exits cleanly.
    assert!(net.server.terminate(), "pd serve exits 0 on SIGTERM with a stream open");
    drop(lines);
}

#[test]
fn an_agent_with_a_key_file_and_a_reload_command_reports_a_failing_command() {
    let w = world();
    let mut net = Net::start(&w);
    net.agent("dev-2", "dev", &[]);
    let dir = net.agent_dir("dev-1");
    let key = w.home.join("keys/dev-1.ed25519");
    let reload = "test \"$PD_VERSION\" != PD-0.2.0 && test -f \"$PD_POLICY_DIR/llm_policy.yaml\" || { echo cannot parse >&2; exit 3; }";
    // A name or environment that is not the key's enrolment: refused, naming both.
    for (flag, given, enrolled) in [("--as", "dev-2", "dev-1"), ("--env", "prod", "dev")] {
        let mut cmd = std::process::Command::new(pd_e2e::bin("pd"));
        cmd.args(["--home", "/nonexistent", "--server", net.url(), "--key"]).arg(&key);
        let out = match flag {
            "--as" => cmd.args(["--as", given, "agent"]),
            _ => cmd.args(["agent", "--env", given]),
        }
        .arg("--dir")
        .arg(w.path("agent-refused"))
        .output()
        .expect("run pd agent");
        let t = pd_e2e::text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains(given) && t.contains(enrolled), "{t}");
    }
    // No home at all: the key comes from a file, the name and environment from its enrolment.
    let mut cmd = std::process::Command::new(pd_e2e::bin("pd"));
    cmd.args(["--home", "/nonexistent", "--server", net.url(), "agent"])
        .arg("--dir")
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .args(["--reload-cmd", reload]);
    let _agent = pd_e2e::Proc::spawn(cmd, &w.path("agent-dev-1-cmd.log"), "following");
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "v1", "--timeout", "60s"]);
    assert_eq!(current_policy(&net, "dev-1"), "max_tokens: 1000\n");
    package_v2(&net);
    let out = net
        .run("", &["ledger", "deploy", "PD-0.2.0", "--until", "dev", "--reason", "v2", "--timeout", "60s"]);
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("dev-1 failed") && text.contains("cannot parse"), "{text}");
    // The failed load left the old version current.
    assert_eq!(current_policy(&net, "dev-1"), "max_tokens: 1000\n");
}
