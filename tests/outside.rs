//! pd's Merkle roots, checkpoint notes, inclusion and consistency proofs checked by code
//! pd's authors did not write: Go's golang.org/x/mod/sumdb/tlog (RFC 6962) and sumdb/note
//! (C2SP signed notes), from Debian's golang-golang-x-mod-dev. The Go side is
//! `outside/tlogcheck`, built here offline in GOPATH mode; `scripts/install-test-tools`
//! installs Go and the package.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pd_e2e::{text, World};
use serde_json::{json, Value};

const INSTALL: &str = "run scripts/install-test-tools (it installs Go and golang.org/x/mod from Debian)";
/// Where Debian's golang-*-dev packages put their sources (a GOPATH entry).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// One `pd ledger checkpoint`, as its `--json` result reported it.
struct Checkpoint {
    seq: u64,
    size: u64,
    root: String,
    note: String,
    file: PathBuf,
    vkey: String,
}

/// A ledger built with the real `pd`, and what its checkpoints said.
struct Ledger {
    w: World,
    checkpoints: Vec<Checkpoint>,
    /// The newest checkpoint's note, signed by `logger` (a second log key).
    logger_note: String,
    admin_vkey: String,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn checkpoint(w: &World, actor: &str, vkey: &str) -> Checkpoint {
    let file = w.path(&format!("cp-{}.note", w.log().len()));
    let out: Value = serde_json::from_str(&w.ok(actor, &["--json", "ledger", "checkpoint", "-o", s(&file)]))
        .expect("checkpoint JSON");
    let note = std::fs::read_to_string(&file).expect("note file");
    assert_eq!(out["note"], note.as_str(), "the note file holds the note pd reported");
    assert_eq!(out["vkey"], vkey, "checkpoint and `pd key export --vkey` agree on the key");
    Checkpoint {
        seq: out["seq"].as_u64().expect("seq"),
        size: out["size"].as_u64().expect("size"),
        root: out["root"].as_str().expect("root hex").to_string(),
        note,
        file,
        vkey: vkey.to_string(),
    }
}

/// init, keys, two packages approved and deployed through every environment, with
/// checkpoints of several sizes between (the last one by a second log key) and one entry
/// after the last checkpoint.
fn ledger() -> Ledger {
    let w = World::standard();
    w.ok("", &["key", "new", "logger", "--role", "log", "--generate-here"]);
    let admin_vkey = w.ok("", &["key", "export", "admin", "--vkey"]).trim().to_string();
    let logger_vkey = w.ok("", &["key", "export", "logger", "--vkey"]).trim().to_string();
    let mut checkpoints = vec![checkpoint(&w, "", &admin_vkey)];
    let policy = w.write("llm_policy.yaml", "max_tokens: 1000\n");
    for (n, version) in [(1, "PD-0.1.0"), (2, "PD-0.2.0")] {
        std::fs::write(&policy, format!("max_tokens: {n}000\n")).expect("write policy");
        w.ok("", &["ledger", "package", s(&policy), "--reason", "outside check"]);
        w.ok("carol", &["ledger", "approve", version, "--reason", "ok"]);
        checkpoints.push(checkpoint(&w, "", &admin_vkey));
        for target in ["dev-1", "staging-1", "prod-1"] {
            w.ok("", &["ledger", "deploy", version, "--reason", "go", "--no-wait"]);
            w.ok(target, &["ledger", "ack", version]);
        }
        checkpoints.push(checkpoint(&w, "", &admin_vkey));
    }
    w.ok("", &["key", "new", "dave", "--role", "approver", "--generate-here"]);
    let by_logger = checkpoint(&w, "logger", &logger_vkey);
    let logger_note = by_logger.note.clone();
    checkpoints.push(by_logger);
    w.ok("", &["key", "new", "erin", "--role", "approver", "--generate-here"]);
    Ledger { w, checkpoints, logger_note, admin_vkey }
}

fn proof_file(w: &World, args: &[&str], name: &str) -> Value {
    let file = w.path(name);
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", s(&file)]);
    w.ok("", &full);
    serde_json::from_str(&std::fs::read_to_string(&file).expect("proof file")).expect("proof JSON")
}

/// The checker's input: every entry id, every checkpoint's root and note, an inclusion
/// proof of every entry under every checkpoint, and a consistency proof between every two.
fn input(l: &Ledger) -> Value {
    let w = &l.w;
    let leaves: Vec<Value> = w.log().iter().map(|e| e["id"].clone()).collect();
    let origin = l.checkpoints[0].note.lines().next().expect("origin line").to_string();
    let id = origin.strip_prefix("pd.ledger/").expect("origin is pd.ledger/<ledger id>");
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{origin}");

    let mut inclusions = Vec::new();
    for cp in &l.checkpoints {
        for seq in 0..cp.size {
            let (seq_arg, at_arg) = (seq.to_string(), cp.seq.to_string());
            let p = proof_file(w, &["ledger", "prove", &seq_arg, "--at", &at_arg], "inclusion.proof");
            assert_eq!(p["kind"], "inclusion");
            assert_eq!(p["checkpoint"], cp.note.as_str(), "the proof carries the checkpoint's note");
            inclusions.push(json!({
                "name": format!("#{seq} under checkpoint #{}", cp.seq),
                "index": seq, "size": cp.size, "root": cp.root, "hashes": p["hashes"],
            }));
        }
    }

    let mut consistencies = Vec::new();
    for (i, old) in l.checkpoints.iter().enumerate() {
        for new in &l.checkpoints[i + 1..] {
            // The first pair names the old checkpoint by its note file, as an auditor would.
            let old_arg = if i == 0 { s(&old.file).to_string() } else { old.seq.to_string() };
            let new_arg = new.seq.to_string();
            let p = proof_file(w, &["ledger", "consistency", &old_arg, &new_arg], "consistency.proof");
            assert_eq!(p["kind"], "consistency");
            assert_eq!((&p["old"], &p["new"]), (&json!(old.note), &json!(new.note)));
            consistencies.push(json!({
                "name": format!("checkpoint #{} to #{}", old.seq, new.seq),
                "old_size": old.size, "old_root": old.root,
                "new_size": new.size, "new_root": new.root, "hashes": p["hashes"],
            }));
        }
    }

    let roots: Vec<Value> = l.checkpoints.iter().map(|c| json!({ "size": c.size, "root": c.root })).collect();
    let notes: Vec<Value> = l
        .checkpoints
        .iter()
        .map(|c| json!({ "name": format!("of checkpoint #{}", c.seq), "note": c.note, "vkey": c.vkey }))
        .collect();
    json!({
        "origin": origin, "leaves": leaves, "roots": roots, "notes": notes,
        "inclusions": inclusions, "consistencies": consistencies,
    })
}

/// Builds the Go checker into `dir`, offline, from Debian's packages only.
fn build_checker(dir: &Path) -> PathBuf {
    let tlog = Path::new(DEBIAN_GOPATH).join("src/golang.org/x/mod/sumdb/tlog");
    assert!(tlog.is_dir(), "{} is missing: {INSTALL}", tlog.display());
    let bin = dir.join("tlogcheck");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("outside/tlogcheck"))
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:{DEBIAN_GOPATH}", dir.join("gopath").display()))
        .env("GOCACHE", Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output();
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("`go` is not installed: {INSTALL}"),
        other => other.expect("run go build"),
    };
    assert!(out.status.success(), "go build of the checker failed ({INSTALL}): {}", text(&out));
    bin
}

/// What the checker said about one input.
struct Verdict {
    code: Option<i32>,
    summary: Value,
    failures: Vec<String>,
    output: String,
}

fn run_checker(checker: &Path, input: &Value) -> Verdict {
    let mut child = Command::new(checker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tlogcheck");
    let bytes = serde_json::to_vec(input).expect("input JSON");
    child.stdin.take().expect("stdin").write_all(&bytes).expect("write stdin");
    let out = child.wait_with_output().expect("wait for tlogcheck");
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tlogcheck printed no summary ({e}): {}", text(&out)));
    let failures = summary["failures"]
        .as_array()
        .expect("failures list")
        .iter()
        .map(|f| f.as_str().expect("failure text").to_string())
        .collect();
    Verdict { code: out.status.code(), summary, failures, output: text(&out) }
}

/// Runs the checker on `input` and asserts it failed with exactly `expected`: one failure
/// per entry, each containing every fragment of its entry.
fn assert_fails(checker: &Path, input: &Value, expected: &[&[&str]]) {
    let v = run_checker(checker, input);
    assert_eq!(v.code, Some(1), "tlogcheck must fail: {}", v.output);
    assert_eq!(v.failures.len(), expected.len(), "{}", v.output);
    for (failure, fragments) in v.failures.iter().zip(expected) {
        for f in *fragments {
            assert!(failure.contains(f), "{failure:?} should contain {f:?}: {}", v.output);
        }
    }
}

/// A hex hash with its first digit changed.
fn flipped(hash: &Value) -> Value {
    let h = hash.as_str().expect("hex hash");
    let first = if h.starts_with('0') { '1' } else { '0' };
    json!(format!("{first}{}", &h[1..]))
}

#[test]
fn go_tlog_and_note_accept_pd_roots_notes_and_proofs_and_catch_tampering() {
    // First, so that a machine without Go fails at once, saying what to install.
    let tools = tempfile::tempdir().expect("temp dir");
    let checker = build_checker(tools.path());
    let l = ledger();
    let input = input(&l);

    let v = run_checker(&checker, &input);
    assert_eq!(v.code, Some(0), "Go's tlog and note disagree with pd: {}", v.output);
    println!("tlogcheck: {}", v.summary);
    let count = |k: &str| input[k].as_array().expect(k).len();
    for k in ["leaves", "roots", "notes", "inclusions", "consistencies"] {
        assert_eq!(v.summary[k], count(k), "every {k} was checked: {}", v.output);
    }
    assert_eq!(count("roots"), 6);
    assert_eq!(count("consistencies"), 15, "every pair of the 6 checkpoints");
    let sizes: u64 = l.checkpoints.iter().map(|c| c.size).sum();
    assert_eq!(count("inclusions") as u64, sizes, "every entry under every checkpoint");
    assert!(count("leaves") as u64 > l.checkpoints.last().expect("checkpoints").size);

    // Each tampering below is caught by tlog or note, not only by pd.
    let newest = count("inclusions") - 1;
    let mut t = input.clone();
    t["inclusions"][newest]["hashes"][0] = flipped(&t["inclusions"][newest]["hashes"][0]);
    assert_fails(&checker, &t, &[&["inclusion #", "tlog.CheckRecord"]]);

    let mut t = input.clone();
    t["inclusions"][newest]["root"] = flipped(&t["inclusions"][newest]["root"]);
    assert_fails(&checker, &t, &[&["differs from tlog's tree hash"], &["tlog.CheckRecord"]]);

    let mut t = input.clone();
    t["roots"][2]["root"] = flipped(&t["roots"][2]["root"]);
    assert_fails(&checker, &t, &[&["pd root of size", "differs from tlog's tree hash"]]);

    let last = count("consistencies") - 1;
    let mut t = input.clone();
    t["consistencies"][last]["hashes"][0] = flipped(&t["consistencies"][last]["hashes"][0]);
    assert_fails(&checker, &t, &[&["consistency checkpoint #", "tlog.CheckTree"]]);

    // The note of the second log key, opened with the admin's verifier key.
    let mut t = input.clone();
    t["notes"] = json!([{ "name": "by logger", "note": l.logger_note, "vkey": l.admin_vkey }]);
    assert_fails(&checker, &t, &[&["note by logger", "note.Open"]]);

    // A note whose root line was changed after signing.
    let note = &l.checkpoints[1].note;
    let root_line = note.lines().nth(2).expect("root line");
    let other = if root_line.starts_with('A') { "B" } else { "A" };
    let forged = note.replacen(root_line, &format!("{other}{}", &root_line[1..]), 1);
    let mut t = input.clone();
    t["notes"] = json!([{ "name": "forged", "note": forged, "vkey": l.admin_vkey }]);
    assert_fails(&checker, &t, &[&["note forged", "note.Open"]]);

    // A validly signed note of another ledger: its own key opens it, but the origin differs.
    let other = World::standard();
    let other_vkey = other.ok("", &["key", "export", "admin", "--vkey"]).trim().to_string();
    let other_cp = checkpoint(&other, "", &other_vkey);
    let mut t = input.clone();
    t["notes"] = json!([{ "name": "of another ledger", "note": other_cp.note, "vkey": other_vkey }]);
    assert_fails(&checker, &t, &[&["note of another ledger", "signed as"]]);
}
