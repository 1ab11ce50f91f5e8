//! Durability on the real binaries: the sync of the ledger's file comes before any report of
//! the append (traced with strace), and a full disk makes `pd serve` unhealthy, not stuck.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pd_e2e::{bin, http, text, Net, World};

const TRACED: &str = "trace=pwrite64,write,writev,sendto,sendmsg,fsync,fdatasync";

fn strace() -> Command {
    let found = Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    assert!(found, "strace is missing: run scripts/install-test-tools (scripts/test does)");
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-qq", "-s", "96", "-e", TRACED]);
    c
}

/// The traced calls in the order they returned. With several threads strace splits a call
/// into `PID name(args <unfinished ...>` and, later, `PID <... name resumed>) = ret`; the two
/// halves are joined at the place the call returned, which is what ordering is about.
fn lines(trace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(trace).expect("trace");
    let mut pending: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or_default().to_string();
        if let Some(start) = line.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start.to_string());
        } else if let Some((_, rest)) = line.split_once(" resumed>") {
            let start = pending.remove(&pid).unwrap_or_default();
            calls.push(format!("{start}{rest}"));
        } else {
            calls.push(line.to_string());
        }
    }
    calls
}

fn on_log(line: &str) -> Option<&'static str> {
    if !line.contains("/ledger/entries.log>") {
        return None;
    }
    if line.contains("pwrite64(") {
        Some("write")
    } else if (line.contains("fdatasync(") || line.contains("fsync(")) && line.trim_end().ends_with("= 0") {
        Some("sync")
    } else {
        None
    }
}

/// Asserts that at the first line matching `report`, every write to the ledger's file before
/// it was followed by a successful sync of that file; returns that line.
fn synced_before(trace: &[String], report: impl Fn(&str) -> bool) -> String {
    let at = trace
        .iter()
        .position(|l| report(l))
        .unwrap_or_else(|| panic!("no report in the trace:\n{}", trace.join("\n")));
    let ops: Vec<&str> = trace[..at].iter().filter_map(|l| on_log(l)).collect();
    assert!(
        ops.contains(&"write"),
        "the ledger file was not written before the report:\n{}",
        trace[..=at].join("\n")
    );
    assert_eq!(
        ops.last(),
        Some(&"sync"),
        "the report came before the ledger's file was synced:\n{}",
        trace[..=at].join("\n")
    );
    trace[at].clone()
}

fn packaged(w: &World) {
    let f = w.write("llm_policy.yaml", "models:\n  gpt: allowed\n");
    w.ok("", &["ledger", "package", f.to_str().unwrap(), "--reason", "r"]);
}

#[test]
fn the_cli_syncs_the_ledger_before_it_reports_an_append() {
    let w = World::standard();
    packaged(&w);
    let trace = w.path("cli.trace");
    let mut c = strace();
    c.arg("-o").arg(&trace).arg(bin("pd")).arg("--home").arg(&w.home);
    c.args(["--as", "carol", "ledger", "approve", "PD-0.1.0", "--reason", "ok"]).current_dir(w.dir.path());
    let out = c.output().expect("strace pd");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved by carol"));
    // The report of the append (approve shows the package's changes before it appends).
    let report = synced_before(&lines(&trace), |l| l.contains("write(1<") && l.contains("approved by"));
    assert!(report.contains("approved"), "{report}");
}

#[test]
fn the_server_syncs_the_ledger_before_it_answers_201() {
    let w = World::standard();
    packaged(&w);
    let n = Net::start(&w);
    let trace = w.path("serve.trace");
    let mut attach = strace();
    attach.arg("-o").arg(&trace).args(["-p", &n.server.pid().to_string()]);
    // Without -qq strace says when it attached; wait for that on its stderr.
    attach.args(["-e", "signal=none"]).stderr(Stdio::piped());
    let mut args: Vec<String> = attach.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    args.retain(|a| a != "-qq");
    let mut tracer = Command::new("strace").args(&args).stderr(Stdio::piped()).spawn().expect("strace -p");
    let mut err = std::io::BufReader::new(tracer.stderr.take().expect("stderr"));
    let mut line = String::new();
    while err.read_line(&mut line).expect("strace stderr") > 0 && !line.contains("attached") {
        line.clear();
    }
    assert!(line.contains("attached"), "strace did not attach: {line}");
    n.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    let _ = tracer.kill();
    let _ = tracer.wait();
    let report = synced_before(&lines(&trace), |l| l.contains("HTTP/1.1 201"));
    assert!(report.contains("HTTP/1.1 201"), "{report}");
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        let out = out.expect("run mount");
        assert!(out.status.success(), "mounting a tmpfs (the test needs root): {}", text(&out));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0xA5u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    // The last page or so: byte by byte.
    while f.write_all(&[0xA5]).and_then(|()| f.sync_data()).is_ok() {}
}

#[test]
fn a_full_disk_makes_the_server_unhealthy_and_it_recovers_when_space_is_back() {
    let mut w = World::new();
    let disk = Tmpfs::mount(&w.path("disk"), "16m");
    w.home = disk.0.join(".pd");
    w.ok("", &["init"]);
    w.ok("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
    packaged(&w);
    let n = Net::start(&w);
    let (code, _) = http(n.url(), "GET", "/healthz", b"");
    assert_eq!(code, 200);
    let filler = disk.0.join("filler");
    fill(&filler);

    // Appends go on while they fit in pages the log already has; one soon does not.
    let before = n.log().len();
    let mut acknowledged = 0;
    let refused = loop {
        let out = n.run("", &["ledger", "checkpoint"]);
        if !out.status.success() {
            break text(&out);
        }
        acknowledged += 1;
        assert!(acknowledged < 64, "the full disk never refused an append");
    };
    assert!(refused.contains("No space left"), "{refused}");
    let (code, body) = http(n.url(), "GET", "/healthz", b"");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ledger") && body.contains("No space left"), "{body}");
    // An upload fails too, and is named.
    let big = w.write("big.yaml", &format!("blob: \"{}\"\n", "x".repeat(256 * 1024)));
    let out = n.run("", &["ledger", "package", big.to_str().unwrap(), "--reason", "r"]);
    assert!(!out.status.success(), "{}", text(&out));
    let (code, body) = http(n.url(), "GET", "/healthz", b"");
    assert_eq!(code, 503);
    assert!(String::from_utf8_lossy(&body).contains("objects"), "{}", String::from_utf8_lossy(&body));

    std::fs::remove_file(&filler).expect("free the disk");
    let (code, body) = http(n.url(), "GET", "/healthz", b"");
    assert_eq!(code, 200, "healthy again without a restart: {}", String::from_utf8_lossy(&body));
    n.ok("", &["ledger", "checkpoint"]);
    n.ok("", &["ledger", "package", big.to_str().unwrap(), "--reason", "r"]);
    let log = n.log();
    assert_eq!(log.len(), before + acknowledged + 2, "every acknowledged append is there, nothing else");
    let export = w.path("after.pdx");
    n.ok("", &["ledger", "export", export.to_str().unwrap(), "--with-artifacts"]);
    let out = w.verify(&[export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_sync_strace_split_across_threads_counts_where_it_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("t");
    std::fs::write(
        &trace,
        "7 pwrite64(3</h/ledger/entries.log>, \"x\", 1, 0) = 1\n\
         7 fdatasync(3</h/ledger/entries.log> <unfinished ...>\n\
         8 write(5<anon_inode:[eventfd]>, \"\\1\", 8) = 8\n\
         7 <... fdatasync resumed>) = 0\n\
         8 writev(11<socket:[1]>, [{iov_base=\"HTTP/1.1 201 Created\"}], 1) = 20\n",
    )
    .expect("write trace");
    let calls = lines(&trace);
    assert_eq!(calls[2], "7 fdatasync(3</h/ledger/entries.log>) = 0");
    synced_before(&calls, |l| l.contains("HTTP/1.1 201"));
}
