//! The seed chapter's whole story through the real binaries, and every refusal on the way.

use pd_e2e::{text, World};

const POLICY: &str = "models:\n  claude:\n    allowed_roles: [nsf_research_staff]\n";

fn version_of(log: &[serde_json::Value], kind: &str) -> Vec<String> {
    log.iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["body"][kind]["version"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn init_keys_package_approve_deploy_ack_promote_rollback_export_verify() {
    let w = World::standard();
    let policy = w.write("governance/llm_policy.yaml", POLICY);
    let p = policy.to_str().unwrap();

    let out = w.ok("", &["ledger", "package", p, "--version", "23.0.0", "--reason", "baseline"]);
    assert!(out.contains("✔ packaged as PD-23.0.0"), "{out}");
    assert!(out.contains("✔ signature valid (OpenPGP "), "{out}");
    w.ok("carol", &["ledger", "approve", "PD-23.0.0", "--reason", "reviewed"]);
    for (env, target) in [("dev", "dev-1"), ("staging", "staging-1"), ("prod", "prod-1")] {
        let out = w.ok("", &["ledger", "deploy", p, "--reason", "baseline", "--no-wait"]);
        assert!(out.contains(&format!("PD-23.0.0 pushed to {env}")), "{out}");
        w.ok(target, &["ledger", "ack", "PD-23.0.0"]);
    }

    std::fs::write(&policy, format!("{POLICY}  openai:\n    daily_budget_usd: 50\n")).unwrap();
    let out = w.ok("", &["ledger", "package", p, "--reason", "Enable OpenAI GPT for nsf_research_staff"]);
    assert!(out.contains("✔ packaged as PD-23.1.0"), "default bump is minor: {out}");
    w.ok("carol", &["ledger", "approve", "PD-23.1.0", "--reason", "HITL"]);
    // With a waiting deploy the acks come from another process: run it after the ack exists.
    w.ok("", &["ledger", "deploy", "PD-23.1.0", "--reason", "go", "--no-wait"]);
    w.ok("dev-1", &["ledger", "ack", "PD-23.1.0"]);
    let out = w.ok("", &["ledger", "deploy", p, "--reason", "go", "--no-wait"]);
    assert!(out.contains("pushed to staging"), "{out}");
    w.ok("staging-1", &["ledger", "ack", "PD-23.1.0"]);
    w.ok("", &["ledger", "deploy", p, "--reason", "go", "--no-wait"]);
    w.ok("prod-1", &["ledger", "ack", "PD-23.1.0"]);

    let state = w.state();
    assert_eq!(state["envs"][2]["env"], "prod");
    assert_eq!(state["envs"][2]["sets"][0]["desired"], "PD-23.1.0");
    assert_eq!(state["envs"][2]["sets"][0]["waiting"], serde_json::json!([]));

    let out = w.ok("", &["ledger", "rollback", "prod", "--reason", "error spike"]);
    assert!(out.contains("prod rolled back to PD-23.0.0 (was PD-23.1.0)"), "{out}");
    let state = w.state();
    assert_eq!(state["envs"][2]["sets"][0]["desired"], "PD-23.0.0");
    assert_eq!(state["envs"][2]["sets"][0]["via"], "rollback");
    assert_eq!(state["envs"][2]["sets"][0]["waiting"], serde_json::json!(["prod-1"]));
    w.ok("prod-1", &["ledger", "ack", "PD-23.0.0"]);

    let log = w.log();
    assert_eq!(version_of(&log, "package"), ["PD-23.0.0", "PD-23.1.0"]);
    assert_eq!(log.iter().filter(|e| e["kind"] == "push").count(), 6);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
        if i > 0 {
            assert_eq!(e["prev"], log[i - 1]["id"], "hash chain");
        }
    }

    let show: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "show", "PD-23.1.0", "--json"])).unwrap();
    let sig = show["body"]["package"]["openpgp_sig"].as_str().unwrap();
    assert!(sig.starts_with("-----BEGIN PGP SIGNATURE-----"), "{sig}");
    assert_eq!(show["approvals"][0]["approver"], "carol");
    let text_show = w.ok("", &["ledger", "show", "PD-23.1.0"]);
    assert!(
        text_show.contains("sha256")
            && text_show.contains("blake3")
            && text_show.contains("BEGIN PGP SIGNATURE")
    );

    let tgz = w.path("out.tgz");
    w.ok("", &["store", "get", "PD-23.1.0", "-o", tgz.to_str().unwrap()]);
    let sha = show["body"]["package"]["tarball"]["sha256"].as_str().unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&tgz).unwrap()), sha);

    let export = w.path("audit.pdx");
    w.ok("", &["ledger", "export", export.to_str().unwrap(), "--with-artifacts"]);
    let out = w.verify(&[export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = w.verify(&["--json", export.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["artifacts_checked"], 2);
    assert_eq!(report["entries"], log.len() as u64);
    assert_eq!(report["envs"][2]["sets"][0]["desired"]["version"], "PD-23.0.0");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn every_refusal_exits_non_zero_and_changes_nothing() {
    let w = World::standard();
    let policy = w.write("llm_policy.yaml", POLICY);
    let p = policy.to_str().unwrap();

    // Malformed input: a missing file, an empty reason, a bad version.
    w.refused_with(2, "", &["ledger", "package", "missing.yaml", "--reason", "x"]);
    let err = w.refused("", &["ledger", "package", p, "--reason", " "]);
    assert!(err.contains("reason"), "{err}");
    w.refused_with(2, "", &["ledger", "approve", "PD-1.x", "--reason", "x"]);

    // Deploying a file nobody packaged packages it (a step of its own), then stops at the
    // approval: the package entry is the only change.
    let before = w.log().len();
    let out = w.pd("", &["ledger", "deploy", p, "--reason", "first", "--no-wait"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(pd_e2e::text(&out).contains("✔ packaged as PD-0.1.0 (new, #"), "{}", pd_e2e::text(&out));
    assert!(pd_e2e::text(&out).contains("0 of 1 required approvals"), "{}", pd_e2e::text(&out));
    let kinds: Vec<_> = w.log()[before..].iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds, ["package"]);
    let err = w.refused("", &["ledger", "deploy", "PD-0.1.0", "--reason", "x", "--no-wait"]);
    assert!(err.contains("0 of 1 required approvals"), "{err}");
    // The admin is the author: it lacks the approver role, and an author-approver may not self-approve.
    let err = w.refused("", &["ledger", "approve", "PD-0.1.0", "--reason", "x"]);
    assert!(err.contains("lacks the approver role"), "{err}");
    w.ok("", &["key", "new", "dana", "--role", "author", "--role", "approver", "--generate-here"]);
    let p2 = w.write("other.yaml", "x: 1\n");
    w.ok("dana", &["ledger", "package", p2.to_str().unwrap(), "--reason", "mine"]);
    let err = w.refused("dana", &["ledger", "approve", "PD-0.2.0", "--reason", "self"]);
    assert!(err.contains("authored PD-0.2.0 and cannot approve it"), "{err}");

    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    let err =
        w.refused("", &["ledger", "deploy", "PD-0.1.0", "--env", "staging", "--reason", "skip", "--no-wait"]);
    assert!(err.contains("cannot go to staging before it is fully adopted in dev"), "{err}");
    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "x", "--no-wait"]);
    // A rerun changes nothing and exits 0: the push stands, its targets are named.
    let before = w.log().len();
    let again = w.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "x", "--no-wait"]);
    assert!(again.contains("already pushed to dev; waiting for dev-1"), "{again}");
    assert_eq!(w.log().len(), before, "a rerun appends nothing");
    let err = w.refused("staging-1", &["ledger", "ack", "PD-0.1.0"]);
    assert!(err.contains("ack refused"), "{err}");

    // Revoked keys cannot act; unknown keys cannot act.
    w.ok("", &["key", "revoke", "carol", "--reason", "left the team", "--left"]);
    let err = w.refused("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "x"]);
    assert!(err.contains("was revoked"), "{err}");
    let err = w.refused_with(2, "nobody", &["ledger", "approve", "PD-0.2.0", "--reason", "x"]);
    assert!(err.contains("no secret key \"nobody\""), "{err}");
    w.refused("", &["key", "revoke", "admin", "--reason", "oops", "--left"]);

    // A secret key that no longer matches its enrolled public key: refused before signing.
    let ed = w.home.join("keys/dev-1.ed25519");
    std::fs::write(&ed, format!("{}\n", "11".repeat(32))).unwrap();
    let err = w.refused("dev-1", &["ledger", "ack", "PD-0.1.0"]);
    assert!(err.contains("is not dev-1's key in the ledger (enrolled at #"), "{err}");

    // A corrupted artifact is never handed out.
    let obj = find_object(&w.home.join("objects"));
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&obj, bytes).unwrap();
    let out = w.path("x.tgz");
    let hash = format!(
        "{}{}",
        obj.parent().unwrap().file_name().unwrap().to_string_lossy(),
        obj.file_name().unwrap().to_string_lossy()
    );
    w.refused("", &["store", "get", &hash, "-o", out.to_str().unwrap()]);
    assert!(!out.exists());

    // Secret keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for f in std::fs::read_dir(w.home.join("keys")).unwrap().flatten() {
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", f.path().display());
    }

    // init never overwrites.
    w.refused("", &["init"]);
}

fn find_object(dir: &std::path::Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    for d in std::fs::read_dir(dir).unwrap().flatten() {
        if d.path().is_dir() {
            found.extend(std::fs::read_dir(d.path()).unwrap().flatten().map(|f| f.path()));
        }
    }
    found.sort();
    found.into_iter().next().expect("an object in the store")
}

#[test]
fn a_waiting_deploy_returns_when_the_targets_ack() {
    let w = World::standard();
    let policy = w.write("llm_policy.yaml", POLICY);
    w.ok("", &["ledger", "package", policy.to_str().unwrap(), "--reason", "r"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    let mut deploy = w
        .pd("", &["ledger", "deploy", "PD-0.1.0", "--reason", "go", "--until", "dev", "--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the deploy's own report that its push is in the ledger, then acknowledge from
    // the target's process; the deploy's poll sees the ack.
    use std::io::BufRead;
    let stdout = std::io::BufReader::new(deploy.stdout.take().unwrap());
    let mut lines = stdout.lines().map_while(Result::ok);
    assert!(lines.by_ref().any(|l| l.contains("pushed to dev")), "deploy never reported its push");
    w.ok("dev-1", &["ledger", "ack", "PD-0.1.0"]);
    let rest: Vec<String> = lines.collect();
    assert!(deploy.wait().unwrap().success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("✔ dev: 1/1 targets acknowledged PD-0.1.0")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("✔ all targets acknowledged")), "{rest:?}");

    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "go", "--no-wait"]);
    w.ok("staging-1", &["ledger", "ack", "PD-0.1.0", "--failed", "parse error at line 3"]);
    let err = w.refused_with(1, "", &["ledger", "deploy", "PD-0.1.0", "--reason", "go", "--timeout", "5s"]);
    assert!(err.contains("staging-1 failed: parse error at line 3"), "{err}");
}

#[test]
fn tampered_exports_fail_verification_naming_the_entry() {
    let w = World::standard();
    let policy = w.write("llm_policy.yaml", POLICY);
    w.ok("", &["ledger", "package", policy.to_str().unwrap(), "--reason", "tamper-me-here"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "fine"]);
    let package_seq = w.log().iter().find(|e| e["kind"] == "package").unwrap()["seq"].as_u64().unwrap();
    let export = w.path("e.pdx");
    w.ok("", &["ledger", "export", export.to_str().unwrap(), "--with-artifacts"]);
    let good = std::fs::read(&export).unwrap();
    assert!(w.verify(&[export.to_str().unwrap()]).status.success());

    // Alter one letter of the package entry's reason: only that entry's signature breaks.
    let needle = b"tamper-me-here";
    let pos = good.windows(needle.len()).position(|x| x == needle).expect("reason inside the export");
    let mut bad = good.clone();
    bad[pos] = b'T';
    std::fs::write(&export, &bad).unwrap();
    let out = w.verify(&["--json", export.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["kind"], "verification");
    assert_eq!(report["error"]["seq"], package_seq);
    let out = w.verify(&[export.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("entry {package_seq}:")),
        "{}",
        text(&out)
    );

    // A truncated file, and an unreadable one.
    std::fs::write(&export, &good[..good.len() - 1]).unwrap();
    assert_eq!(w.verify(&[export.to_str().unwrap()]).status.code(), Some(1));
    assert_eq!(w.verify(&["no-such-file.pdx"]).status.code(), Some(2));
}

#[test]
fn pd_verify_refuses_an_entries_only_export_unless_told_and_names_the_head_signer() {
    let w = World::standard();
    let export = w.path("entries.pdx");
    w.ok("", &["ledger", "export", export.to_str().unwrap()]);
    let out = w.verify(&[export.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-artifacts"), "{}", pd_e2e::text(&out));
    let out = w.verify(&["--no-artifacts", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("by admin (admin,"), "{stdout}");
    // A target may not sign an export's head: refused before anything is written.
    let err = w.refused("dev-1", &["ledger", "export", w.path("by-target.pdx").to_str().unwrap()]);
    assert!(err.contains("only an active log or admin key"), "{err}");
    assert!(!w.path("by-target.pdx").exists());
}

#[test]
fn a_push_to_an_environment_short_of_its_fleet_minimum_is_refused_with_the_way_out() {
    let w = World::standard();
    let policy = w.write("governance/llm_policy.yaml", POLICY);
    let p = policy.to_str().unwrap();
    w.ok("", &["ledger", "package", p, "--reason", "baseline"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "reviewed"]);
    let out = w.ok("", &["env", "set", "dev", "--min-targets", "3", "--reason", "three regions"]);
    assert!(out.contains("dev expects at least 3 target(s)"), "{out}");
    let said = w.refused_with(1, "", &["ledger", "deploy", p, "--reason", "go", "--no-wait"]);
    assert!(
        said.contains("fewer than the 3 it expects") && said.contains("pd env set dev --min-targets"),
        "{said}"
    );
    let refused = w.refused_with(1, "", &["env", "set", "dev", "--min-targets", "0", "--reason", "none"]);
    assert!(refused.contains("zero targets never count"), "{refused}");
    w.ok("", &["env", "set", "dev", "--min-targets", "1", "--reason", "one region for now"]);
    let out = w.ok("", &["ledger", "deploy", p, "--reason", "go", "--no-wait"]);
    assert!(out.contains("PD-0.1.0 pushed to dev"), "{out}");
}
