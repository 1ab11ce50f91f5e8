//! Keys held by the people they name: holders generate their own keys and are enrolled from
//! requests, custody shows in every report, rotation, revocation kinds and the admin quorum.

use std::path::Path;

use pd_e2e::{text, World};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Files directly in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).expect("JSON output")
}

/// `pd key gen NAME --out DIR` in the scratch directory; returns DIR.
fn gen(w: &World, name: &str, dir: &str) -> std::path::PathBuf {
    let out = w.ok("", &["key", "gen", name, "--out", dir]);
    assert!(out.contains("enrolment request written"), "{out}");
    w.path(dir)
}

/// A package of one file, as the admin.
fn package(w: &World, body: &str) {
    w.write("llm_policy.yaml", body);
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "change"]);
}

fn pending(w: &World) -> Vec<Value> {
    w.state()["pending_approvals"].as_array().expect("pending").clone()
}

#[test]
fn holders_generate_their_own_keys_and_the_admin_enrols_only_public_parts() {
    let w = World::new();
    w.ok("", &["init"]);
    // The approver on their machine: secret files and a request in a directory of their own.
    let carol = gen(&w, "carol", "carol-keys");
    assert_eq!(files(&carol), ["carol.ed25519", "carol.openpgp", "carol.request"]);
    #[cfg(unix)]
    for f in ["carol.ed25519", "carol.openpgp"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(carol.join(f)).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let secret = std::fs::read_to_string(carol.join("carol.ed25519")).expect("secret");
    let request = std::fs::read_to_string(carol.join("carol.request")).expect("request");
    assert!(!request.contains(secret.trim()), "the request holds the secret");
    // The target in a keys-only home of its own: the request lands in the working directory.
    let out = std::process::Command::new(pd_e2e::bin("pd"))
        .args(["--home", s(&w.path("dev-1-home")), "key", "gen", "dev-1"])
        .current_dir(w.dir.path())
        .output()
        .expect("run pd");
    assert!(out.status.success(), "{}", text(&out));
    let dev1_key = w.path("dev-1-home/keys/dev-1.ed25519");
    assert!(dev1_key.exists() && w.path("dev-1.request").exists());
    let out = std::process::Command::new(pd_e2e::bin("pd"))
        .args(["--home", s(&w.path("dev-1-home")), "state"])
        .output()
        .expect("run pd");
    assert!(text(&out).contains("holds keys but no ledger"), "{}", text(&out));

    // The admin enrols the public parts only.
    w.ok("", &["key", "new", "carol", "--role", "approver", "--request", "carol-keys/carol.request"]);
    w.ok("", &["key", "new", "dev-1", "--role", "target", "--env", "dev", "--request", "dev-1.request"]);
    assert_eq!(files(&w.home.join("keys")), ["admin.ed25519", "admin.openpgp"]);
    let keys = json(&w.ok("", &["key", "list", "--json"]));
    let custody: Vec<(&str, &str)> = keys
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["name"].as_str().expect("name"), k["custody"].as_str().expect("custody")))
        .collect();
    assert_eq!(custody, [("admin", "holder"), ("carol", "holder"), ("dev-1", "holder")]);

    package(&w, "max_tokens: 1000\n");
    // The admin cannot act as them: their secrets are not in the admin's home.
    let forged: [(&str, &[&str]); 2] = [
        ("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "forged"]),
        ("dev-1", &["ledger", "ack", "PD-0.1.0"]),
    ];
    for (who, args) in forged {
        let out = w.pd(who, args).output().expect("run pd");
        assert!(!out.status.success(), "the admin acted as {who}: {}", text(&out));
        assert!(text(&out).contains("no secret key"), "{}", text(&out));
    }
    // A key file acts only as the name the ledger enrolled it under.
    let err = w.refused(
        "dev-1",
        &["--key", "carol-keys/carol.ed25519", "ledger", "approve", "PD-0.1.0", "--reason", "x"],
    );
    assert!(err.contains("dev-1") && err.contains("carol"), "{err}");
    // The holders act with their own files.
    let out = w.ok(
        "",
        &["--key", "carol-keys/carol.ed25519", "ledger", "approve", "PD-0.1.0", "--reason", "reviewed"],
    );
    assert!(out.contains("approved by carol"), "{out}");
    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--env", "dev", "--no-wait", "--reason", "first"]);
    w.ok("", &["--key", s(&dev1_key), "ledger", "ack", "PD-0.1.0"]);
    assert_eq!(w.state()["not_independent"], serde_json::json!([]));

    // A key the admin made here is flagged wherever an act by it is reported.
    w.ok("", &["key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here"]);
    w.ok("dev-2", &["ledger", "ack", "PD-0.1.0"]);
    let dependent = w.state()["not_independent"].clone();
    assert_eq!(dependent.as_array().map(Vec::len), Some(1), "{dependent}");
    assert_eq!(
        (&dependent[0]["act"], &dependent[0]["actor"]),
        (&serde_json::json!("ack"), &serde_json::json!("dev-2"))
    );
    let seq = dependent[0]["seq"].as_u64().expect("seq").to_string();
    assert!(w.ok("", &["ledger", "show", &seq]).contains("created in admin's custody (not independent)"));
    w.ok("", &["ledger", "export", "audit.pdx", "--with-artifacts"]);
    let out = w.verify(&["--json", s(&w.path("audit.pdx"))]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let flagged = report["not_independent"].as_array().expect("not_independent");
    assert_eq!(flagged.len(), 1, "{report}");
    assert!(flagged[0].to_string().contains("dev-2"), "{report}");
    let human = w.verify(&[s(&w.path("audit.pdx"))]);
    assert!(text(&human).contains("ack by dev-2 of PD-0.1.0"), "{}", text(&human));
}

#[test]
fn rotation_replaces_a_key_under_its_name_and_the_acting_default_follows() {
    let w = World::new();
    w.ok("", &["init"]);
    gen(&w, "carol", "carol-keys");
    w.ok("", &["key", "new", "carol", "--role", "approver", "--request", "carol-keys/carol.request"]);
    package(&w, "a: 1\n");
    w.ok("", &["--key", "carol-keys/carol.ed25519", "ledger", "approve", "PD-0.1.0", "--reason", "ok"]);

    // Names are reused only through rotation.
    let err = w.refused("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
    assert!(err.contains("pd key rotate"), "{err}");
    gen(&w, "carol", "carol-keys-2");
    w.ok(
        "",
        &["key", "rotate", "carol", "--request", "carol-keys-2/carol.request", "--reason", "new laptop"],
    );
    package(&w, "a: 2\n");
    let err = w.refused(
        "",
        &["--key", "carol-keys/carol.ed25519", "ledger", "approve", "PD-0.2.0", "--reason", "x"],
    );
    assert!(err.contains("not an active key"), "{err}");
    w.ok("", &["--key", "carol-keys-2/carol.ed25519", "ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    // A retired (not compromised) key's approvals still count.
    assert_eq!(pending(&w), Vec::<Value>::new());

    // The admin rotates their own key in their home; the configured actor keeps working.
    w.ok("", &["key", "rotate", "admin", "--generate-here", "--reason", "yearly"]);
    let keys = files(&w.home.join("keys"));
    assert!(keys.contains(&"admin.ed25519".to_string()), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("admin.ed25519.rotated-")), "{keys:?}");
    package(&w, "a: 3\n");
    let list = json(&w.ok("", &["key", "list", "--json"]));
    let admin = list.as_array().expect("keys").iter().find(|k| k["name"] == "admin").expect("admin").clone();
    assert_eq!((admin["rotations"].as_u64(), admin["custody"].as_str()), (Some(1), Some("admin")));
    // The export still verifies: every entry checks against the key its name had then.
    w.ok("", &["ledger", "export", "audit.pdx", "--with-artifacts"]);
    let out = w.verify(&[s(&w.path("audit.pdx"))]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_compromised_approvers_pending_approvals_stop_counting_and_a_left_ones_still_count() {
    let w = World::new();
    w.ok("", &["init"]);
    w.ok("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
    w.ok("", &["key", "new", "dana", "--role", "approver", "--generate-here"]);
    package(&w, "a: 1\n");
    w.ok("dana", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    package(&w, "a: 2\n");
    w.ok("carol", &["ledger", "approve", "PD-0.2.0", "--reason", "ok"]);
    assert_eq!(pending(&w), Vec::<Value>::new());

    w.ok("", &["key", "revoke", "dana", "--left", "--reason", "moved teams"]);
    w.ok("", &["key", "revoke", "carol", "--compromised", "--reason", "laptop stolen"]);
    let left = pending(&w);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (&left[0]["version"], &left[0]["approvals"]),
        (&serde_json::json!("PD-0.2.0"), &serde_json::json!(0))
    );
    let err = w.refused("", &["ledger", "deploy", "PD-0.2.0", "--reason", "x", "--no-wait"]);
    assert!(err.contains("approv"), "{err}");
    let shown = w.ok("", &["ledger", "show", "PD-0.2.0"]);
    assert!(shown.contains("void: key compromised"), "{shown}");
    // A revocation needs its kind.
    let out = w.pd("", &["key", "revoke", "admin", "--reason", "x"]).output().expect("run pd");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn with_an_admin_quorum_of_two_one_admin_cannot_enrol_a_key_and_two_can() {
    let w = World::new();
    // A quorum needs the other admins in genesis.
    let out = w.pd("", &["init", "--admin-approvals", "2"]).output().expect("run pd");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--admin-request"), "{}", text(&out));
    assert!(!w.home.exists(), "a refused init left a home");
    gen(&w, "bob", "bob-keys");
    w.ok("", &["init", "--admin-approvals", "2", "--admin-request", "bob-keys/bob.request"]);

    let out = w.ok("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
    assert!(out.contains("1 of 2 admins"), "{out}");
    let waiting = json(&w.ok("", &["key", "pending", "--json"]));
    let seq = waiting[0]["seq"].as_u64().expect("seq").to_string();
    // What the second admin approves names the key it installs.
    assert!(
        waiting[0]["what"].as_str().is_some_and(|w| w.contains("key ") && w.contains("OpenPGP")),
        "{waiting}"
    );
    package(&w, "a: 1\n");
    // Proposed is not enrolled: carol cannot act yet, and the proposer cannot complete it.
    let err = w.refused("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "x"]);
    assert!(err.contains("not enrolled") || err.contains("not an active key"), "{err}");
    let err = w.refused("", &["key", "approve", &seq]);
    assert!(err.contains("admin"), "{err}");
    // A second admin, with their own key, completes it.
    let out = w.ok("", &["--key", "bob-keys/bob.ed25519", "key", "approve", &seq]);
    assert!(out.contains("recorded by bob"), "{out}");
    assert_eq!(json(&w.ok("", &["key", "pending", "--json"])), serde_json::json!([]));
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
}

#[test]
fn bad_enrolment_requests_are_refused_with_a_reason_and_change_nothing() {
    let w = World::new();
    w.ok("", &["init"]);
    gen(&w, "carol", "carol-keys");
    let good: Value = json(&std::fs::read_to_string(w.path("carol-keys/carol.request")).expect("request"));
    let mut renamed = good.clone();
    renamed["name"] = "mallory".into();
    let mut other_key = good.clone();
    other_key["public_key"] = json(&std::fs::read_to_string(w.path("carol-keys/carol.request")).expect("r"))
        ["proof"]
        .as_str()
        .map(|p| Value::from(&p[..64]))
        .expect("hex");
    let mut format = good.clone();
    format["format"] = "pd-enrolment-request/9".into();
    let mut extra = good.clone();
    extra["roles"] = serde_json::json!(["admin"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"not json at all".to_vec(), "not a pd enrolment request"),
        ("huge", vec![b' '; 1 << 20], "over the limit"),
        ("renamed", renamed.to_string().into_bytes(), "proof of possession does not verify"),
        ("other-key", other_key.to_string().into_bytes(), "enrolment request"),
        ("format", format.to_string().into_bytes(), "pd-enrolment-request/9"),
        ("extra", extra.to_string().into_bytes(), "not a pd enrolment request"),
    ];
    for (name, bytes, says) in cases {
        let file = w.path(&format!("{name}.request"));
        std::fs::write(&file, bytes).expect("write");
        let err = w.refused("", &["key", "new", "carol", "--role", "approver", "--request", s(&file)]);
        assert!(err.contains(says), "{name}: {err}");
    }
    // A good request under another name.
    let err =
        w.refused("", &["key", "new", "dave", "--role", "approver", "--request", "carol-keys/carol.request"]);
    assert!(err.contains("asks to enrol \"carol\""), "{err}");
    // Neither a request nor --generate-here.
    let out = w.pd("", &["key", "new", "carol", "--role", "approver"]).output().expect("run pd");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
