//! `pd ledger diff`: what a package changes, file by file, from verified artifacts. Also the
//! summary `pd ledger approve` prints before it records an approval.

use anyhow::Result;
use pd_ledger::{State, Version};
use pd_store::tarball::PolicyFile;
use serde::Serialize;
use std::path::Path;

use crate::backend::Backend;
use crate::ledger_cmd::package_of;
use crate::{output, Ctx};

/// What `pd ledger diff` compares.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The older side: a version, or a policy file or directory here. Given alone, it is the
    /// newer side instead, compared with the version its set has desired in its next
    /// environment (the first one that does not run it yet).
    from: Option<String>,
    /// The newer side: a version, or a policy file or directory here.
    to: Option<String>,
}

/// The label of an empty side.
const NOTHING: &str = "nothing";

/// One side of a diff: its name (a version, `local` for files here) and files.
struct Side {
    label: String,
    files: Vec<PolicyFile>,
}

/// How one file changed.
#[derive(Serialize)]
pub struct FileChange {
    path: String,
    /// `added`, `removed` or `modified`.
    change: &'static str,
    added_lines: usize,
    removed_lines: usize,
    /// A unified diff, or `null` for a file that is not UTF-8 text.
    diff: Option<String>,
}

/// A whole comparison.
#[derive(Serialize)]
pub struct Changes {
    from: String,
    to: String,
    /// Where the older side is desired now, when it was found that way.
    env: Option<String>,
    files: Vec<FileChange>,
}

impl Changes {
    /// One line per changed file: `llm_policy.yaml (+1 −1)`.
    pub fn summary(&self) -> String {
        if self.files.is_empty() {
            return format!("no file changes from {} to {}", self.from, self.to);
        }
        let files: Vec<String> = self
            .files
            .iter()
            .map(|f| match f.change {
                "modified" => format!("{} (+{} −{})", f.path, f.added_lines, f.removed_lines),
                change => format!("{} ({change})", f.path),
            })
            .collect();
        let against = match &self.env {
            Some(e) if self.from == NOTHING => format!(" ({e} has no version yet)"),
            Some(e) => format!(" (desired in {e})"),
            None => String::new(),
        };
        format!("changes from {}{against} to {}: {}", self.from, self.to, files.join(", "))
    }
}

/// Runs `pd ledger diff`.
pub fn run(ctx: &Ctx, a: DiffArgs) -> Result<()> {
    let mut backend = Backend::open(ctx, ctx.home().ok())?;
    let state = backend.state()?;
    let changes = match (a.from, a.to) {
        (Some(from), Some(to)) => {
            let (from, to) = (side(&mut backend, &state, &from)?, side(&mut backend, &state, &to)?);
            compare(from, to, None)
        }
        (Some(one), None) => match one.parse::<Version>() {
            Ok(v) if !Path::new(&one).exists() => against_next_env(&mut backend, &state, v)?,
            _ => {
                let to = side(&mut backend, &state, &one)?;
                let newest = state.latest_package().map(|p| p.package.version);
                let from = match newest {
                    Some(v) => side(&mut backend, &state, &v.to_string())?,
                    None => Side { label: NOTHING.into(), files: Vec::new() },
                };
                compare(from, to, None)
            }
        },
        (None, _) => {
            let Some(newest) = state.latest_package().map(|p| p.package.version) else {
                crate::refuse!("no package in this ledger yet: `pd ledger package FILE` makes one");
            };
            against_next_env(&mut backend, &state, newest)?
        }
    };
    if ctx.json {
        return ctx.emit(&changes);
    }
    for f in &changes.files {
        match &f.diff {
            Some(d) => out!("{d}"),
            None => outln!("binary file {} differs", f.path),
        }
    }
    output::ok(changes.summary());
    Ok(())
}

/// `version` against the version its set has desired in the first environment that does not
/// run it (or nothing, if that environment has none).
pub fn against_next_env(backend: &mut Backend, state: &State, version: Version) -> Result<Changes> {
    let set = package_of(state, version)?.package.name.clone();
    let next = state.envs().iter().find_map(|env| {
        let desired = state.desired(env, &set).map(|d| d.version);
        (desired != Some(version)).then(|| (env.clone(), desired))
    });
    let to = side(backend, state, &version.to_string())?;
    Ok(match next {
        Some((env, Some(v))) => compare(side(backend, state, &v.to_string())?, to, Some(env)),
        Some((env, None)) => compare(Side { label: NOTHING.into(), files: Vec::new() }, to, Some(env)),
        None => compare(side(backend, state, &version.to_string())?, to, None),
    })
}

/// A version's verified files, or the policy files at a local path.
fn side(backend: &mut Backend, state: &State, what: &str) -> Result<Side> {
    let limits = pd_store::Limits::default();
    let path = Path::new(what);
    if path.exists() {
        let files = pd_store::tarball::collect(&[path.to_path_buf()], &limits)?;
        return Ok(Side { label: "local".to_string(), files });
    }
    let Ok(version) = what.parse::<Version>() else {
        anyhow::bail!("{what:?} is neither a file here nor a version such as PD-23.1.0");
    };
    let tarball = &package_of(state, version)?.package.tarball;
    let bytes = backend.get_object(&tarball.blake3, tarball.size)?;
    // `read` checks the bytes against the manifest; the hash was checked on the way in.
    let contents = pd_store::tarball::read(&bytes, &limits)?;
    Ok(Side { label: version.to_string(), files: contents.files })
}

fn compare(from: Side, to: Side, env: Option<String>) -> Changes {
    fn find<'a>(files: &'a [PolicyFile], path: &str) -> Option<&'a [u8]> {
        files.iter().find(|f| f.path == path).map(|f| f.bytes.as_slice())
    }
    /// A missing side is empty text; a side that is not UTF-8 has no text diff.
    fn text(b: Option<&[u8]>) -> Option<&str> {
        b.map_or(Ok(""), std::str::from_utf8).ok()
    }
    let mut paths: Vec<&str> = from.files.iter().chain(&to.files).map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let files = paths
        .into_iter()
        .filter_map(|path| {
            let (old, new) = (find(&from.files, path), find(&to.files, path));
            if old == new {
                return None;
            }
            let change = match (&old, &new) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "modified",
            };

            let (diff, added_lines, removed_lines) = match (text(old), text(new)) {
                (Some(o), Some(n)) => {
                    let d = similar::TextDiff::from_lines(o, n);
                    let count = |tag| d.iter_all_changes().filter(|c| c.tag() == tag).count();
                    let (added, removed) =
                        (count(similar::ChangeTag::Insert), count(similar::ChangeTag::Delete));
                    let header = (format!("{}/{path}", from.label), format!("{}/{path}", to.label));
                    let unified = d.unified_diff().context_radius(3).header(&header.0, &header.1).to_string();
                    (Some(unified), added, removed)
                }
                _ => (None, 0, 0),
            };
            Some(FileChange { path: path.to_string(), change, added_lines, removed_lines, diff })
        })
        .collect();
    Changes { from: from.label, to: to.label, env, files }
}
