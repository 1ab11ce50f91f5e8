//! Checkpoints and proofs through the real binaries: `pd ledger checkpoint | prove |
//! consistency`, `pd-verify --proof` and `--since`, and a forked ledger caught by
//! `pd-verify` and by an agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pd_e2e::{bin, text, Net, World};

/// A standard world with PD-0.1.0 packaged and approved.
fn world() -> World {
    let w = World::standard();
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "first"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn verify(w: &World, args: &[&str]) -> Output {
    w.verify(args)
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pd --home HOME ARGS…` for a second home (a fork of the world's).
fn pd_at(home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("pd")).arg("--home").arg(home).args(args).env_remove("PD_ACTOR").output();
    ok(out.expect("run pd"))
}

/// Copies the world's home: from here on the two ledgers may diverge.
fn fork(w: &World, name: &str) -> PathBuf {
    let to = w.path(name);
    let st = Command::new("cp").arg("-a").arg(&w.home).arg(&to).status().expect("cp");
    assert!(st.success());
    to
}

#[test]
fn proofs_verify_offline_and_any_tampering_fails() {
    let w = world();
    let err = w.refused("", &["ledger", "prove", "PD-0.1.0"]);
    assert!(err.contains("no checkpoint covers entry"), "{err}");

    let cp1 = w.path("cp1.note");
    let out = w.ok("", &["ledger", "checkpoint", "-o", s(&cp1)]);
    assert!(out.contains("✔ checkpoint #"), "{out}");
    let note = std::fs::read_to_string(&cp1).expect("note");
    assert!(note.starts_with("pd.ledger/"), "{note}");
    // tlog-checkpoint: the log's signature is under the origin's name.
    let origin = note.lines().next().expect("origin line");
    assert!(note.contains(&format!("\n\n— {origin} ")), "{note}");
    let log = w.log();
    assert_eq!(log.last().expect("entries")["kind"], "checkpoint");

    // Inclusion of the package entry, checked offline, with and without a pinned key.
    let proof = w.path("pkg.proof");
    w.ok("", &["ledger", "prove", "PD-0.1.0", "-o", s(&proof)]);
    let out = ok(verify(&w, &["--proof", s(&proof)]));
    assert!(out.contains("is in the ledger of"), "{out}");
    assert!(out.contains("signer keys taken from the proof file"), "{out}");
    let admin = w.ok("", &["key", "export", "admin", "--vkey"]);
    let out = ok(verify(&w, &["--proof", s(&proof), "--key", admin.trim()]));
    assert!(!out.contains("taken from the proof file"), "{out}");
    let carol = w.ok("", &["key", "export", "carol", "--vkey"]);
    let err = fails(verify(&w, &["--proof", s(&proof), "--key", carol.trim()]));
    assert!(err.contains("no valid signature by a trusted key"), "{err}");

    // Any change to the proof breaks it.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).expect("proof")).expect("proof JSON");
    let bad = w.path("bad.proof");
    let mut tampered = Vec::new();
    let mut h = json.clone();
    let first = h["hashes"][0].as_str().expect("a hash").to_string();
    h["hashes"][0] = format!("{}{}", if first.starts_with('0') { '1' } else { '0' }, &first[1..]).into();
    tampered.push(h);
    let mut e = json.clone();
    let entry = e["entry"].as_str().expect("entry hex").to_string();
    // The package's reason, "first", in the entry's hex: change one letter.
    assert!(entry.contains("6669727374"), "the entry holds the reason");
    e["entry"] = entry.replace("6669727374", "6669723574").into();
    tampered.push(e);
    let mut c = json.clone();
    c["checkpoint"] = json["checkpoint"].as_str().expect("note").replacen('\n', "\n1", 1).into();
    tampered.push(c);
    for t in tampered {
        std::fs::write(&bad, serde_json::to_vec(&t).expect("JSON")).expect("write");
        fails(verify(&w, &["--proof", s(&bad)]));
    }

    // The ledger grows; a later checkpoint is consistent with the first.
    w.ok("", &["key", "new", "dave", "--role", "approver", "--generate-here"]);
    w.ok("", &["ledger", "checkpoint"]);
    let cons = w.path("cons.proof");
    w.ok("", &["ledger", "consistency", s(&cp1), "-o", s(&cons)]);
    let out = ok(verify(&w, &["--proof", s(&cons), "--key", admin.trim()]));
    assert!(out.contains("extends the one of"), "{out}");

    // The export extends the checkpoint kept from before.
    let export = w.path("ledger.pdx");
    w.ok("", &["ledger", "export", s(&export)]);
    let out = ok(verify(&w, &["--no-artifacts", "--since", s(&cp1), s(&export)]));
    assert!(out.contains("✔ extends the checkpoint of"), "{out}");
}

#[test]
fn a_forked_ledger_is_caught_by_pd_verify_since() {
    let w = world();
    let fork_home = fork(&w, "forked-home");
    // Same prefix; then each home appends a different, validly signed entry.
    w.ok("", &["key", "new", "dave", "--role", "approver", "--generate-here"]);
    let kept = w.path("kept.note");
    w.ok("", &["ledger", "checkpoint", "-o", s(&kept)]);
    pd_at(&fork_home, &["key", "new", "mallory", "--role", "approver", "--generate-here"]);
    pd_at(&fork_home, &["ledger", "checkpoint"]);
    let forked = w.path("forked.pdx");
    pd_at(&fork_home, &["ledger", "export", s(&forked)]);

    // On its own the forked export is a valid ledger…
    ok(verify(&w, &["--no-artifacts", s(&forked)]));
    // …but it does not extend what the auditor kept.
    let err = fails(verify(&w, &["--no-artifacts", "--since", s(&kept), s(&forked)]));
    assert!(err.contains("history was rewritten"), "{err}");
    let out = Command::new(bin("pd"))
        .arg("--home")
        .arg(&fork_home)
        .args(["ledger", "consistency", s(&kept)])
        .output()
        .expect("run pd");
    assert!(fails(out).contains("history was rewritten"));
    // A checkpoint of another ledger is refused as such.
    let other = World::standard();
    let other_cp = other.path("other.note");
    other.ok("", &["ledger", "checkpoint", "-o", s(&other_cp)]);
    let err = fails(verify(&w, &["--no-artifacts", "--since", s(&other_cp), s(&forked)]));
    assert!(err.contains("this export is of"), "{err}");
}

#[test]
fn an_agent_refuses_a_server_whose_ledger_forked() {
    let w = world();
    w.ok("", &["key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here"]);
    let fork_home = fork(&w, "forked-home");
    pd_at(&fork_home, &["key", "new", "mallory", "--role", "approver", "--generate-here"]);
    pd_at(&fork_home, &["ledger", "checkpoint"]);

    let mut net = Net::start(&w);
    net.agent("dev-1", "dev", &[]);
    net.agent("dev-2", "dev", &[]);
    net.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "r", "--until", "dev", "--timeout", "60s"]);
    let log = net.log();
    assert!(log.iter().any(|e| e["kind"] == "checkpoint"), "the server checkpointed the push");

    // The server now serves the fork. dev-1 keeps its replica: the entries do not chain.
    // dev-2 lost its replica: the fork replays, but its checkpoint does not extend the one
    // dev-2 verified before.
    net.kill_agent("dev-2");
    std::fs::remove_dir_all(net.agent_dir("dev-2").join("ledger")).expect("remove replica");
    net.swap_home(&fork_home);
    assert!(!net.agent_proc("dev-1").wait_exit(), "dev-1 must fail");
    let log1 = std::fs::read_to_string(w.path("agent-dev-1.log")).expect("agent log");
    assert!(log1.contains("refusing to follow the server's ledger"), "{log1}");
    net.restart_agent("dev-2", "dev");
    assert!(!net.agent_proc("dev-2").wait_exit(), "dev-2 must fail");
    let log2 = std::fs::read_to_string(w.path("agent-dev-2.log")).expect("agent log");
    assert!(log2.contains("does not extend the one this agent verified before"), "{log2}");
    // Both still run what they verified.
    for t in ["dev-1", "dev-2"] {
        assert_eq!(net.loaded(t)["version"], "PD-0.1.0");
    }
}
