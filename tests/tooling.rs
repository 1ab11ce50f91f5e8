//! What an operator installs pd with and scripts it by: completions, man pages, systemd units,
//! JSON errors, and raw artifact bytes on stdout.

use pd_e2e::World;
use std::path::Path;

#[test]
fn completions_are_printed_for_each_shell() {
    let w = World::new();
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef pd"), ("fish", "complete -c pd")] {
        let script = w.ok("", &["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(script.contains("deploy") && script.contains("rollback"), "{shell} completes subcommands");
    }
    let out = w.pd("", &["completions", "tcsh"]).output().expect("run pd");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_cover_every_command() {
    let w = World::new();
    let page = w.ok("", &["man"]);
    assert!(page.contains(".TH pd 1"), "{page:.200}");
    let dir = w.path("man");
    w.ok("", &["man", "--dir", dir.to_str().expect("path")]);
    for name in
        ["pd.1", "pd-ledger.1", "pd-ledger-deploy.1", "pd-ledger-rollback.1", "pd-serve.1", "pd-agent.1"]
    {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".SH"), "{name} is a man page");
    }
}

/// The shipped units, with the binary path pointed at this build, pass `systemd-analyze
/// verify` without a warning (skipped where systemd is not installed).
#[test]
fn the_systemd_units_verify() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed; the units are not checked here");
        return;
    };
    let w = World::new();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/dist/systemd");
    let pd = pd_e2e::bin("pd");
    let mut paths = Vec::new();
    for (file, as_name) in
        [("pd-serve.service", "pd-serve.service"), ("pd-agent@.service", "pd-agent@dev-1.service")]
    {
        let text = std::fs::read_to_string(units.join(file)).expect("unit file");
        assert!(text.contains("ExecStart=/usr/local/bin/pd "), "{file} runs pd");
        let path = w.path(as_name);
        std::fs::write(&path, text.replace("/usr/local/bin/pd", pd.to_str().expect("path"))).expect("write");
        paths.push(path);
    }
    let out =
        std::process::Command::new(analyze).arg("verify").arg("--man=no").args(&paths).output().expect("run");
    let text = pd_e2e::text(&out);
    assert!(out.status.success() && !text.contains(".service:"), "systemd-analyze verify: {text}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).ok_or(())
}

#[test]
fn errors_are_json_with_json_and_text_without() {
    let w = World::packaged();
    let out = w.pd("", &["--json", "ledger", "approve", "PD-9.9.9", "--reason", "x"]).output().expect("run");
    pd_e2e::check_json(&["--json", "ledger", "approve"], &out);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(e["error"]["kind"], "refused");
    assert_eq!(e["error"]["exit_code"], 1);
    assert!(e["error"]["message"].as_str().expect("message").contains("PD-9.9.9"), "{e}");
    assert!(out.stderr.is_empty(), "nothing on stderr: {}", pd_e2e::text(&out));
    // Bad arguments are JSON too, with --json.
    let out = w.pd("", &["--json", "ledger", "nonsense"]).output().expect("run");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!((out.status.code(), e["error"]["kind"].as_str()), (Some(2), Some("usage")));
    // Without --json, the error is text on stderr.
    let out = w.pd("", &["ledger", "approve", "PD-9.9.9", "--reason", "x"]).output().expect("run");
    assert!(out.stdout.is_empty() && String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

#[test]
fn store_get_to_dash_writes_the_verified_bytes_to_stdout() {
    let w = World::packaged();
    let show: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "show", "PD-0.1.0", "--json"])).expect("show JSON");
    let hash = show["body"]["package"]["tarball"]["blake3"].as_str().expect("hash").to_string();
    let out = w.pd("", &["store", "get", "PD-0.1.0", "-o", "-"]).output().expect("run");
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    assert_eq!(blake3::hash(&out.stdout).to_hex().as_str(), hash);
    assert!(!w.dir.path().join("-").exists(), "no file named -");
}

#[test]
fn the_log_filters_by_kind_env_actor_time_and_count_and_hides_checkpoints() {
    let w = World::packaged();
    w.ok("", &["ledger", "checkpoint"]);
    let log = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut full = vec!["ledger", "log", "--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&w.ok("", &full)).expect("log JSON")
    };
    let kinds = |entries: &[serde_json::Value]| -> Vec<String> {
        entries.iter().map(|e| e["kind"].as_str().expect("kind").to_string()).collect()
    };
    let all = log(&["--all"]);
    assert!(kinds(&all).contains(&"checkpoint".to_string()));
    let shown = log(&[]);
    assert_eq!(shown.len(), all.len() - 1, "the checkpoint is hidden by default");
    assert_eq!(kinds(&log(&["--kind", "checkpoint"])), ["checkpoint"]);
    let packages = log(&["--kind", "package", "--kind", "approve"]);
    assert_eq!(kinds(&packages), ["package", "approve"]);
    let carol = log(&["--actor", "carol"]);
    assert!(!carol.is_empty() && carol.iter().all(|e| e["actor"] == "carol"), "{carol:?}");
    let dev = log(&["--env", "dev"]);
    assert!(
        !dev.is_empty() && dev.iter().all(|e| e["kind"] == "key_add"),
        "targets enrolled in dev: {dev:?}"
    );
    let newest = log(&["--limit", "2"]);
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[1]["seq"], shown.last().expect("entries")["seq"], "the newest two");
    assert_eq!(log(&["--since", "1h"]).len(), shown.len());
    assert!(log(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let out = w.pd("", &["ledger", "log", "--kind", "deploy"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(pd_e2e::text(&out).contains("not an entry kind; kinds: genesis"), "{}", pd_e2e::text(&out));
}

#[test]
fn diff_shows_what_a_package_changes_and_approve_shows_it_before_recording() {
    let w = World::packaged();
    let pushed = w.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "first", "--no-wait", "--json"]);
    assert!(pushed.contains("\"waited\": false"), "{pushed}");
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "more tokens"]);
    // By default: the newest package against what its next environment (dev) runs.
    let text = w.ok("", &["ledger", "diff"]);
    for line in [
        "--- PD-0.1.0/llm_policy.yaml",
        "+++ PD-0.2.0/llm_policy.yaml",
        "-max_tokens: 1000",
        "+max_tokens: 2000",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(text.contains("(desired in dev)"), "{text}");
    // The approver sees the same summary before the approval is recorded.
    let approved = w.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    assert!(approved.contains("llm_policy.yaml (+1 −1)"), "{approved}");
    // Files added and removed, against a local directory, structured.
    w.write("next/llm_policy.yaml", "max_tokens: 2000\n");
    w.write("next/extra.yaml", "a: 1\n");
    let next = w.path("next");
    let diff = |from: &str, to: &str| -> serde_json::Value {
        serde_json::from_str(&w.ok("", &["ledger", "diff", from, to, "--json"])).expect("diff JSON")
    };
    let added = diff("PD-0.2.0", next.to_str().expect("path"));
    assert_eq!(added["files"].as_array().map(Vec::len), Some(1), "only the new file: {added}");
    assert_eq!(
        (added["files"][0]["path"].as_str(), added["files"][0]["change"].as_str()),
        (Some("extra.yaml"), Some("added"))
    );
    let removed = diff(next.to_str().expect("path"), "PD-0.1.0");
    let changes: Vec<(&str, &str)> = removed["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| (f["path"].as_str().expect("path"), f["change"].as_str().expect("change")))
        .collect();
    assert_eq!(changes, [("extra.yaml", "removed"), ("llm_policy.yaml", "modified")]);
}

#[test]
fn a_wait_without_a_terminal_prints_lines_naming_the_missing_targets() {
    let w = World::packaged();
    let mut net = pd_e2e::Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    // dev-2 has no agent: it is missing until the deadline.
    let args = ["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "go", "--timeout", "8s"];
    let out = net.run("", &args);
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("  dev: 1/2 acknowledged PD-0.1.0; missing dev-2"), "{text}");
    assert!(!text.contains('\r') && !text.contains('\x1b'), "no bar, no colour without a terminal: {text:?}");
    let pushed = text.find("pushed to dev").expect("the push line");
    assert!(text.find("⟳ deploying to dev").is_some_and(|at| at < pushed), "announced with the push: {text}");
    // The server's log, written to a file, has no colour codes either.
    let log = std::fs::read_to_string(w.path("serve-0.log")).expect("server log");
    assert!(log.contains("pd serve listening") && !log.contains('\x1b'), "{log:?}");
}

#[test]
fn bad_paths_are_named_and_refused_whole() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::standard();
    // A file name that is not UTF-8 is refused, given directly or inside a directory.
    let name = std::ffi::OsStr::from_bytes(b"bad\xff.yaml");
    std::fs::create_dir_all(w.path("dir")).expect("mkdir");
    for path in [w.path("dir").join(name), w.dir.path().join(name)] {
        std::fs::write(&path, "a: 1\n").expect("write");
    }
    for arg in [std::path::PathBuf::from(name), w.path("dir")] {
        let mut cmd = w.pd("", &["ledger", "package"]);
        let out = cmd.arg(&arg).args(["--reason", "x"]).output().expect("run");
        let text = pd_e2e::text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("not UTF-8; rename it"), "{text}");
    }
    assert!(w.log().iter().all(|e| e["kind"] != "package"), "nothing was packaged");
    // A home path that is a file is named.
    let file = w.write("afile", "x");
    let out = std::process::Command::new(pd_e2e::bin("pd"))
        .args(["--home", file.to_str().expect("path"), "init"])
        .output()
        .expect("run");
    assert!(pd_e2e::text(&out).contains("afile exists and is not a directory"), "{}", pd_e2e::text(&out));
}

/// A webhook receiver on loopback: records each POST body; answers 500 to the first one,
/// so the sender has to retry.
fn receiver() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (url, rx)
}

#[test]
fn notifications_tell_a_receiver_about_pushes_failures_rollbacks_adoptions_and_stale_targets() {
    let w = World::packaged();
    let (url, events) = receiver();
    let mut net = pd_e2e::Net::start_with(&w, &["--notify", &url]);
    net.agent_with("dev-1", "dev", &[], &["--heartbeat", "1s"]);
    net.agent_with("dev-2", "dev", &["PD-0.2.0"], &["--heartbeat", "1s"]);
    let deployed =
        net.ok("", &["ledger", "deploy", "PD-0.1.0", "--until", "dev", "--reason", "first", "--json"]);
    assert!(deployed.contains("\"outcome\": \"adopted\""), "{deployed}");
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    net.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "second"]);
    net.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    let args = [
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
    ];
    assert_eq!(net.run("", &args).status.code(), Some(1), "dev-2 refuses PD-0.2.0");
    // dev-1 goes silent once the server has seen it alive.
    net.wait_for(|net| {
        let state: serde_json::Value = serde_json::from_str(&net.ok("", &["state", "--json"])).ok()?;
        let dev = state["envs"].as_array()?.iter().find(|e| e["env"] == "dev")?.clone();
        dev["targets"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == "dev-1" && t["last_seen_ms"].is_u64())
            .then_some(())
    });
    net.kill_agent("dev-1");
    // In order: the first deploy, the failed one and its rollback, then dev-1 going stale.
    let mut got: Vec<serde_json::Value> = Vec::new();
    let wanted = [
        ("push", "PD-0.1.0"),
        ("adopted", "PD-0.1.0"),
        ("push", "PD-0.2.0"),
        ("failed", "PD-0.2.0"),
        ("rollback", "PD-0.1.0"),
        ("adopted", "PD-0.1.0"),
    ];
    let key = |e: &serde_json::Value| {
        (e["event"].as_str().unwrap_or("").to_string(), e["version"].as_str().unwrap_or("").to_string())
    };
    while !got.iter().any(|e| e["event"] == "stale" && e["target"] == "dev-1") {
        let e = events.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(w.path("serve-0.log")).unwrap_or_default()
                + &std::fs::read_to_string(w.path("agent-dev-1.log")).unwrap_or_default();
            panic!("no event within 60 s after {got:#?}\nserver log:\n{log}")
        });
        assert!(e["text"].as_str().is_some_and(|t| t.starts_with("pd: ")), "a Slack-style text: {e}");
        got.push(e);
    }
    let first = &got[0];
    assert_eq!(got.iter().filter(|e| *e == first).count(), 2, "the first event was retried after the 500");
    got.dedup();
    let kinds: Vec<(String, String)> = got.iter().filter(|e| e["event"] != "stale").map(key).collect();
    let wanted: Vec<(String, String)> = wanted.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // An ack of the rolled-back version may land around the rollback; the order of what
    // the ledger decided is fixed.
    let decided: Vec<&(String, String)> =
        kinds.iter().filter(|k| k.0 != "failed" || k.1 == "PD-0.2.0").collect();
    assert_eq!(decided, wanted.iter().collect::<Vec<_>>(), "{got:#?}");
    let failed = got.iter().find(|e| e["event"] == "failed").expect("a failed ack");
    assert_eq!((failed["target"].as_str(), failed["env"].as_str()), (Some("dev-2"), Some("dev")));
}

#[test]
fn the_commands_of_a_session_answer_json_that_matches_their_schemas() {
    // Each `ok` below checks its output against cli/schemas/ (see `check_json`).
    let w = World::new();
    w.write("p.yaml", "a: 1\n");
    w.ok("", &["--json", "init"]);
    w.ok("", &["--json", "key", "new", "carol", "--role", "approver", "--generate-here"]);
    w.ok("", &["--json", "key", "new", "dev-1", "--role", "target", "--env", "dev", "--generate-here"]);
    w.ok("", &["--json", "env", "set", "dev", "--min-targets", "1", "--reason", "one"]);
    let policy = ["--waves", "1,50%", "--bake", "1s", "--gate", "cmd:true", "--auto-rollback"];
    w.ok("", &[&["--json", "env", "set", "staging"][..], &policy, &["--reason", "waves"]].concat());
    w.ok("", &["--json", "env", "show"]);
    w.ok("", &["--json", "ledger", "package", "p.yaml", "--reason", "r"]);
    w.ok("carol", &["--json", "ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w.ok("", &["--json", "ledger", "deploy", "PD-0.1.0", "--plan", "--reason", "r"]);
    w.ok("carol", &["--json", "ledger", "override", "PD-0.1.0", "--env", "dev", "--reason", "r"]);
    w.ok("", &["--json", "ledger", "deploy", "PD-0.1.0", "--until", "dev", "--no-wait", "--reason", "r"]);
    w.ok("dev-1", &["--json", "ledger", "ack", "PD-0.1.0"]);
    w.ok("", &["--json", "ledger", "export", "x.pdx"]);
    w.write("p.yaml", "a: 2\n");
    w.ok("", &["--json", "ledger", "package", "p.yaml", "--reason", "r"]);
    w.ok("carol", &["--json", "ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    w.ok("", &["--json", "ledger", "deploy", "PD-0.2.0", "--until", "dev", "--no-wait", "--reason", "r"]);
    let rolled = w.ok("", &["--json", "ledger", "rollback", "dev", "--no-wait", "--reason", "bad"]);
    assert!(rolled.contains("\"from\": \"PD-0.2.0\""), "{rolled}");
    let withdrawn = w.ok("", &["--json", "ledger", "withdraw", "PD-0.2.0", "--reason", "junk"]);
    assert!(withdrawn.contains("\"still_desired_in\""), "{withdrawn}");
    w.ok("", &["--json", "ledger", "checkpoint", "-o", "kept.note"]);
    w.ok("", &["--json", "ledger", "prove", "PD-0.1.0", "-o", "p.proof"]);
    w.ok("", &["--json", "ledger", "consistency", "kept.note", "-o", "c.proof"]);
    w.ok("", &["--json", "key", "gen", "bob", "--out", "bob-keys"]);
    let exported = w.ok("", &["--json", "key", "export", "carol"]);
    assert!(exported.contains("\"vkey\": \"pd.ledger/"), "{exported}");
    w.ok("", &["--json", "key", "new", "eve", "--role", "approver", "--generate-here"]);
    w.ok("", &["--json", "key", "rotate", "eve", "--generate-here", "--reason", "new laptop"]);
    w.ok("", &["--json", "key", "revoke", "eve", "--left", "--reason", "left"]);
    w.ok("", &["--json", "policy", "validator", "p", "true"]);
    w.write("schema.json", "{\"type\": \"object\"}");
    w.ok("", &["--json", "policy", "schema", "p", "schema.json"]);
    let sets = w.ok("", &["--json", "policy", "list"]);
    assert!(sets.contains("\"validator\": \"true\""), "{sets}");
    w.ok("", &["--json", "policy", "validator", "p", "--clear"]);
    let cleared = w.ok("", &["--json", "policy", "schema", "p", "--clear"]);
    assert!(cleared.contains("\"checks\": {}"), "a set without checks: {cleared}");
    let script = w.ok("", &["--json", "completions", "bash"]);
    assert!(script.contains("\"shell\": \"bash\""), "{script}");
    w.ok("", &["--json", "man"]);
    let pages = w.ok("", &["--json", "man", "--dir", "man1"]);
    assert!(pages.contains("pd-ledger-deploy.1"), "{pages}");
}

#[test]
fn long_running_commands_print_json_lines_with_json() {
    let w = World::standard();
    let args = ["--json", "serve", "--listen", "127.0.0.1:0"];
    let mut server = pd_e2e::Proc::spawn(w.pd("", &args), &w.path("serve.log"), "\"listening\"");
    let ready: serde_json::Value = serde_json::from_str(&server.line).expect("a JSON line");
    pd_e2e::check_value("events", &args, &ready);
    assert!(server.url.starts_with("http://127.0.0.1:"), "{}", server.line);
    let args = ["--json", "agent", "--server", &server.url, "--as", "dev-1", "--dir", "a", "--light"];
    let args: Vec<&str> = args.to_vec();
    let agent = pd_e2e::Proc::spawn(w.pd("", &args), &w.path("agent.log"), "\"following\"");
    let following: serde_json::Value = serde_json::from_str(&agent.line).expect("a JSON line");
    pd_e2e::check_value("events", &args, &following);
    assert_eq!(
        (following["target"].as_str(), following["env"].as_str()),
        (Some("dev-1"), Some("dev")),
        "{following}"
    );
    drop(agent);
    let args = ["--json", "example-target", "--listen", "127.0.0.1:0", "--policy-dir", "policy"];
    let target = pd_e2e::Proc::spawn(w.pd("", &args), &w.path("target.log"), "\"listening\"");
    let listening: serde_json::Value = serde_json::from_str(&target.line).expect("a JSON line");
    pd_e2e::check_value("events", &args, &listening);
    assert!(target.url.starts_with("http://127.0.0.1:"), "{}", target.line);
    drop(target);
    assert!(server.terminate(), "pd serve ends cleanly on SIGTERM");
    let logs = std::fs::read_to_string(w.path("serve.log")).expect("log");
    assert!(logs.lines().count() >= 2, "pd serve logged its start and its end: {logs}");
    for l in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

/// `ARGS` as a `pd --home HOME …` command line for `script -c`.
fn command_line(w: &World, args: &[&str]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let bin = pd_e2e::bin("pd");
    let line: Vec<String> = [bin.to_str().expect("path"), "--home", w.home.to_str().expect("path")]
        .iter()
        .chain(args)
        .map(|a| quote(a))
        .collect();
    line.join(" ")
}

/// `script` (util-linux) running `pd --home HOME ARGS…` on a pseudo-terminal, with `env`.
fn script(w: &World, env: &[(&str, &str)], args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfec", &command_line(w, args), "/dev/null"])
        .current_dir(w.dir.path())
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    cmd
}

#[test]
fn on_a_terminal_the_bar_names_the_missing_targets_and_the_error_starts_its_own_line() {
    let w = World::packaged();
    let mut net = pd_e2e::Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    let server = net.url().to_string();
    // dev-2 has no agent: it is missing until the deadline.
    let args = [
        "--server",
        &server,
        "ledger",
        "deploy",
        "PD-0.1.0",
        "--until",
        "dev",
        "--reason",
        "go",
        "--timeout",
        "6s",
    ];
    let out = script(&w, &[], &args).output().expect("util-linux script runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{shown:?}");
    assert!(
        shown.contains("dev: targets acknowledged PD-0.1.0; missing dev-2"),
        "the bar names dev-2: {shown:?}"
    );
    assert!(!shown.contains("  dev: 1/2 acknowledged"), "a bar, not lines, on a terminal: {shown:?}");
    let at = shown.find("error:").expect("an error");
    let before = &shown[..at];
    assert!(
        before.ends_with('\n') || before.ends_with("\x1b[2K"),
        "the error starts its own line: {shown:?}"
    );
}

/// Starts `pd --home HOME ARGS…` on a pseudo-terminal with `env`, reads what the terminal
/// shows until a line contains `marker`, then ends it; returns what it showed.
fn on_terminal_until(w: &World, env: &[(&str, &str)], args: &[&str], marker: &str) -> String {
    use std::io::BufRead;
    let mut child =
        script(w, env, args).stdout(std::process::Stdio::piped()).spawn().expect("util-linux script runs");
    let mut shown = String::new();
    for l in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok) {
        shown.push_str(&l);
        shown.push('\n');
        if l.contains(marker) {
            break;
        }
    }
    // Killing script closes the terminal: pd, its session's leader, gets SIGHUP.
    let _ = child.kill();
    let _ = child.wait();
    shown
}

#[test]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    let w = World::standard();
    // The log line (stderr) after the ready line (stdout).
    let coloured = on_terminal_until(&w, &[], &serve, "INFO");
    assert!(coloured.contains("\x1b[32m INFO"), "colour on a terminal: {coloured:?}");
    let w = World::standard();
    let plain = on_terminal_until(&w, &[("NO_COLOR", "1")], &serve, "INFO");
    assert!(plain.contains(" INFO") && !plain.contains('\x1b'), "no colour with NO_COLOR: {plain:?}");
}
