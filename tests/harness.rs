//! One small harness for end-to-end tests: a temp home and a builder for the real `pd` and
//! `pd-verify` binaries (built by `cargo build --workspace --bins`, as `scripts/test` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a workspace binary next to the test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A throwaway pd home plus a scratch directory for policy files.
pub struct World {
    /// Owns the temp directory.
    pub dir: tempfile::TempDir,
    /// The home (`DIR/.pd`).
    pub home: PathBuf,
}

/// What a refused command left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    log: String,
    files: Vec<(String, u64)>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// A fresh world with no home yet.
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join(".pd");
        World { dir, home }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the scratch directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// `pd --home HOME [--as ACTOR] ARGS…`.
    pub fn pd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("pd"));
        c.arg("--home")
            .arg(&self.home)
            .current_dir(self.dir.path())
            .env_remove("PD_HOME")
            .env_remove("PD_ACTOR");
        if !actor.is_empty() {
            c.args(["--as", actor]);
        }
        c.args(args);
        c
    }

    /// Runs pd and asserts success; returns stdout.
    pub fn ok(&self, actor: &str, args: &[&str]) -> String {
        let out = self.pd(actor, args).output().expect("run pd");
        assert!(out.status.success(), "pd {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs pd, asserts exit code `code` and that the home did not change; returns stderr.
    pub fn refused_with(&self, code: i32, actor: &str, args: &[&str]) -> String {
        let before = self.snapshot();
        let out = self.pd(actor, args).output().expect("run pd");
        assert_eq!(out.status.code(), Some(code), "pd {args:?}: {}", text(&out));
        assert_eq!(self.snapshot(), before, "pd {args:?} was refused but changed the home");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A refusal by a rule: exit 1.
    pub fn refused(&self, actor: &str, args: &[&str]) -> String {
        self.refused_with(1, actor, args)
    }

    /// The ledger as JSON plus every file under the home with its size.
    pub fn snapshot(&self) -> Snapshot {
        let out = self.pd("", &["ledger", "log", "--json"]).output().expect("run pd");
        let mut files = Vec::new();
        walk(&self.home, &self.home, &mut files);
        files.retain(|(p, _)| !p.starts_with("ledger/"));
        files.sort();
        Snapshot { log: String::from_utf8_lossy(&out.stdout).into_owned(), files }
    }

    /// `pd ledger log --json`, parsed.
    pub fn log(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok("", &["ledger", "log", "--json"])).expect("log JSON")
    }

    /// `pd state --json`, parsed.
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok("", &["state", "--json"])).expect("state JSON")
    }

    /// Runs `pd-verify ARGS…`.
    pub fn verify(&self, args: &[&str]) -> Output {
        Command::new(bin("pd-verify")).args(args).output().expect("run pd-verify")
    }

    /// init, an approver `carol` and one target per environment (`dev-1`, `staging-1`, `prod-1`).
    pub fn standard() -> World {
        let w = World::new();
        w.ok("", &["init"]);
        w.ok("", &["key", "new", "carol", "--role", "approver"]);
        for env in ["dev", "staging", "prod"] {
            w.ok("", &["key", "new", &format!("{env}-1"), "--role", "target", "--env", env]);
        }
        w
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
}

/// Exit status, stdout and stderr for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
