//! What a CI pipeline does to pd: reruns, concurrent runs, reverted files and a server that
//! restarts while it waits. Each must end the way a rerun-safe tool ends: exit 0, one entry
//! per real change, nothing lost.

use pd_e2e::{Net, Proc, World};

/// A standard world plus `dev-2`, with PD-0.1.0 packaged and approved.
fn world() -> World {
    World::packaged()
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
    let s: serde_json::Value = serde_json::from_str(&net.ok("", &["state", "--json"])).expect("state");
    let dev = &s["envs"][0]["sets"][0];
    assert_eq!((dev["adopted"].as_bool(), dev["loaded"].as_u64()), (Some(true), Some(2)), "{dev}");
}

#[test]
fn files_that_do_not_parse_are_refused_with_line_and_column_and_change_nothing() {
    let w = World::standard();
    for (file, text, at) in [
        ("bad.yaml", "a:\n  b: [1,\n", "bad.yaml:3:1"),
        ("bad.json", "{\n  \"a\": 1,\n}\n", "bad.json:3:1"),
        ("bad.toml", "a = 1\nb = = 2\n", "bad.toml:2:5"),
        ("empty.yaml", "\n", "empty.yaml is empty"),
    ] {
        w.write(file, text);
        let said = w.refused_with(1, "", &["ledger", "package", file, "--reason", "ci"]);
        assert!(said.contains(at) && said.contains("--no-validate"), "{file}: {said}");
    }
    // Skipping the checks is possible, and the entry says so.
    w.ok("", &["ledger", "package", "bad.yaml", "--no-validate", "--reason", "as is"]);
    let p = w.log().into_iter().find(|e| e["kind"] == "package").expect("a package");
    assert_eq!(p["body"]["package"]["checked"]["parsed"], false, "{p}");
    assert!(w.ok("", &["ledger", "log"]).contains("NOT VALIDATED"));
}

#[test]
fn a_sets_schema_and_validator_refuse_bad_content_and_are_recorded() {
    let w = World::standard();
    w.write(
        "schema.json",
        r#"{"type": "object", "required": ["max_tokens"], "properties": {"max_tokens": {"type": "integer", "maximum": 100000}}}"#,
    );
    w.ok("", &["policy", "schema", "llm_policy", "schema.json"]);
    w.write("llm_policy.yaml", "max_tokens: many\n");
    let said = w.refused_with(1, "", &["ledger", "package", "llm_policy.yaml", "--reason", "ci"]);
    assert!(said.contains("JSON Schema of llm_policy") && said.contains("/max_tokens"), "{said}");
    w.ok("", &["policy", "validator", "llm_policy", "grep -q 'max_tokens: [0-9]*$'"]);
    w.write("llm_policy.yaml", "max_tokens: 1000 # generous\n");
    let said = w.refused_with(1, "", &["ledger", "package", "llm_policy.yaml", "--reason", "ci"]);
    assert!(said.contains("the validator of llm_policy"), "{said}");
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "ci"]);
    let p = w.log().into_iter().find(|e| e["kind"] == "package").expect("a package");
    let checked = &p["body"]["package"]["checked"];
    assert_eq!(checked["parsed"], true, "{p}");
    assert!(
        checked["schema"].is_string() && checked["command"].as_str().is_some_and(|c| c.contains("grep")),
        "{p}"
    );
}

#[test]
fn a_withdrawn_package_cannot_be_approved_or_pushed_and_no_longer_blocks_a_good_one() {
    let w = world();
    w.write("llm_policy.yaml", "junk\u{1}\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--no-validate", "--reason", "oops"]);
    w.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "looked fine"]);
    w.ok("", &["ledger", "deploy", "PD-0.2.0", "--env", "dev", "--reason", "go", "--no-wait"]);
    let blocked = w.refused_with(
        1,
        "",
        &["ledger", "deploy", "PD-0.1.0", "--env", "dev", "--reason", "good", "--no-wait"],
    );
    assert!(blocked.contains("PD-0.2.0"), "{blocked}");
    w.ok("", &["ledger", "withdraw", "PD-0.2.0", "--reason", "binary junk"]);
    let said = w.refused_with(1, "", &["ledger", "deploy", "PD-0.2.0", "--env", "dev", "--reason", "again"]);
    assert!(said.contains("withdrawn"), "{said}");
    w.ok("", &["key", "new", "dave", "--role", "approver", "--generate-here"]);
    let said = w.refused_with(1, "dave", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    assert!(said.contains("withdrawn"), "{said}");
    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--env", "dev", "--reason", "good", "--no-wait"]);
    assert!(w.ok("", &["ledger", "log"]).contains("PD-0.2.0 WITHDRAWN"));
    let s = w.state();
    assert_eq!(s["withdrawn"][0]["version"], "PD-0.2.0", "{s}");
    assert_eq!(s["envs"][0]["sets"][0]["desired"], "PD-0.1.0");
    let file = w.path("w.pdx");
    w.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    let out = w.verify(&[file.to_str().expect("path")]);
    assert!(out.status.success() && pd_e2e::text(&out).contains("WITHDRAWN"), "{}", pd_e2e::text(&out));
}

#[test]
fn a_package_built_in_a_git_tree_records_its_commit_and_require_clean_refuses_a_dirty_tree() {
    let w = World::standard();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=ci", "-c", "user.email=ci@example.org"])
            .args(args)
            .current_dir(w.dir.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", pd_e2e::text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    w.write(".gitignore", ".pd/\n");
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    git(&["add", "."]);
    git(&["commit", "-qm", "policy"]);
    let head = git(&["rev-parse", "HEAD"]);
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--require-clean", "--reason", "ci"]);
    let show: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "show", "PD-0.1.0", "--json"])).expect("show JSON");
    assert_eq!(
        show["body"]["package"]["source"],
        serde_json::json!({ "commit": head, "clean": true }),
        "{show}"
    );
    w.write("llm_policy.yaml", "max_tokens: 2000\n");
    let said =
        w.refused_with(1, "", &["ledger", "package", "llm_policy.yaml", "--require-clean", "--reason", "ci"]);
    assert!(said.contains("llm_policy.yaml") && said.contains(&head[..12]), "{said}");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "ci"]);
    assert!(w.ok("", &["ledger", "log"]).contains("(dirty)"));
    let file = w.path("g.pdx");
    w.ok("", &["ledger", "export", file.to_str().expect("path"), "--with-artifacts"]);
    let out = w.verify(&[file.to_str().expect("path")]);
    assert!(pd_e2e::text(&out).contains(&format!("git {head}")), "{}", pd_e2e::text(&out));
}

/// `pd … | head` closes the pipe before pd is done writing: pd ends quietly with the exit
/// code of what it did (0 here), and a write it reports was made all the same.
#[test]
fn a_closed_pipe_ends_pd_quietly_with_the_commands_own_exit_code() {
    let w = world();
    w.write("web_policy.yaml", "csp: strict\n");
    let commands: [&[&str]; 4] = [
        &["ledger", "log"],
        &["state"],
        &["key", "list", "--json"],
        &["ledger", "package", "web_policy.yaml", "--reason", "piped"],
    ];
    for args in commands {
        let mut child = w
            .pd("", args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run pd");
        // The reader is gone before pd writes a byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("pd ends");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "pd {args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "pd {args:?}: {err}");
    }
    let log = w.ok("", &["ledger", "log", "--json"]);
    assert!(log.contains("PD-0.2.0"), "the package written with a closed pipe is in the ledger");
}
