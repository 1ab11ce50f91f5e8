//! Where a package's files came from: the git commit of the working tree holding them, and
//! whether the tree matched it. Read with the `git` binary (hooks and fsmonitor off); files
//! outside a git tree, or no `git` installed, record no source.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use pd_ledger::Source;

use crate::refuse;

/// `git -C dir ARGS…` with nothing configured able to run code; `None` when git is missing
/// or says no (not a repository, no commit yet).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-C"])
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The source of `files` (their first one's working tree), refusing a tree that is not
/// clean (or no tree at all) when `require_clean`.
pub fn source(files: &[PathBuf], require_clean: bool) -> Result<Option<Source>> {
    let Some(first) = files.first() else { return Ok(None) };
    let abs = std::fs::canonicalize(first).unwrap_or_else(|_| first.clone());
    let dir = if abs.is_dir() { abs.as_path() } else { abs.parent().unwrap_or(Path::new(".")) };
    let commit = git(dir, &["rev-parse", "--verify", "HEAD"]).map(|c| c.trim().to_string());
    let Some(commit) = commit.filter(|c| !c.is_empty()) else {
        if require_clean {
            refuse!(
                "--require-clean: {} is not in a git working tree with a commit (or git is not installed)",
                dir.display()
            );
        }
        return Ok(None);
    };
    let changes = git(dir, &["status", "--porcelain=v1", "--untracked-files=normal"]).unwrap_or_default();
    let clean = changes.trim().is_empty();
    if require_clean && !clean {
        let shown: Vec<&str> = changes.lines().take(5).map(str::trim).collect();
        refuse!(
            "--require-clean: the working tree at {} has changes not in commit {} ({}); commit or stash them",
            dir.display(),
            &commit[..commit.len().min(12)],
            shown.join(", ")
        );
    }
    Ok(Some(Source { commit, clean }))
}
