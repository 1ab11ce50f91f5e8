//! Policy files are checked before they are signed: nothing empty, `.yaml`/`.yml`, `.json`
//! and `.toml` must parse, a policy set's JSON Schema (if it has one) must hold for each of
//! them, and its validator command (if it has one, like `opa check`) must accept the files.
//! What was checked is recorded in the package entry ([`Checked`]).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use pd_ledger::{Checked, Hash};
use pd_store::tarball::PolicyFile;

use crate::home::Home;
use crate::CheckFailed;

/// Refuses the package with `problem`, saying how to go on.
fn refused(problem: String) -> anyhow::Error {
    CheckFailed(format!("{problem}; fix the file, or package with --no-validate to skip the checks")).into()
}

/// Checks `files` of policy set `set` as the home configures it.
pub fn check(home: &Home, set: &str, files: &[PolicyFile]) -> Result<Checked> {
    let policy = home.config.policy.get(set);
    let schema = match policy.and_then(|p| p.schema.as_ref()) {
        Some(path) => Some(load_schema(&home.dir.join(path))?),
        None => None,
    };
    for f in files {
        if f.bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(refused(format!("{} is empty", f.path)));
        }
        let Some(value) = parse(f)? else { continue };
        if let Some((_, validator)) = &schema {
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .take(5)
                .map(|e| format!("{}: {e}", display_pointer(&e.instance_path().to_string())))
                .collect();
            if !errors.is_empty() {
                return Err(refused(format!(
                    "{} does not satisfy the JSON Schema of {set}: {}",
                    f.path,
                    errors.join("; ")
                )));
            }
        }
    }
    let command = policy.and_then(|p| p.validator.clone());
    if let Some(cmd) = &command {
        run_validator(cmd, set, files)?;
    }
    Ok(Checked { parsed: true, schema: schema.map(|(hash, _)| hash), command })
}

fn display_pointer(p: &str) -> &str {
    if p.is_empty() {
        "(the document)"
    } else {
        p
    }
}

/// A structured file's content as JSON (`None`: a type pd does not parse).
fn parse(f: &PolicyFile) -> Result<Option<serde_json::Value>> {
    let ext = Path::new(&f.path).extension().and_then(|e| e.to_str()).unwrap_or_default();
    let at = |line: usize, col: usize, kind: &str, e: &dyn std::fmt::Display| {
        refused(format!("{}:{line}:{col}: not valid {kind}: {e}", f.path))
    };
    let value = match ext.to_ascii_lowercase().as_str() {
        "yaml" | "yml" => serde_yaml_ng::from_slice(&f.bytes).map_err(|e| {
            let (l, c) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            at(l, c, "YAML", &strip_location(&e.to_string()))
        })?,
        "json" => serde_json::from_slice(&f.bytes).map_err(|e| at(e.line(), e.column(), "JSON", &e))?,
        "toml" => {
            let text = std::str::from_utf8(&f.bytes).map_err(|e| at(1, 1, "TOML", &e))?;
            toml::from_str(text).map_err(|e| {
                let (l, c) = e.span().map_or((1, 1), |s| line_col(text, s.start));
                at(l, c, "TOML", &e.message())
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// serde_yaml's message without its own " at line L column C" (the caller leads with it).
fn strip_location(m: &str) -> String {
    m.split(" at line ").next().unwrap_or(m).to_string()
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A JSON Schema file, compiled, with its BLAKE3 (recorded in packages it checked).
pub fn load_schema(path: &Path) -> Result<(Hash, jsonschema::Validator)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the JSON Schema {}", path.display()))?;
    compile_schema(path, &bytes)
}

/// The JSON Schema `bytes` (read from `path`, named in errors), compiled, with their BLAKE3.
pub fn compile_schema(path: &Path, bytes: &[u8]) -> Result<(Hash, jsonschema::Validator)> {
    let schema: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| CheckFailed(format!("{}:{}:{}: not JSON: {e}", path.display(), e.line(), e.column())))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| CheckFailed(format!("{} is not a usable JSON Schema: {e}", path.display())))?;
    Ok((Hash::of(bytes), validator))
}

/// Runs the set's validator command (`sh -c CMD`) over the files exactly as they will be
/// packaged: in a fresh directory holding them (its working directory and `PD_POLICY_DIR`),
/// their relative paths as arguments, `PD_POLICY_SET` set. Non-zero refuses the package.
fn run_validator(cmd: &str, set: &str, files: &[PolicyFile]) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a directory for the validator")?;
    for f in files {
        let path = dir.path().join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.bytes)?;
    }
    let script = format!("{cmd} \"$@\"");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg("pd-validate")
        .args(files.iter().map(|f| &f.path))
        .current_dir(dir.path())
        .env("PD_POLICY_DIR", dir.path())
        .env("PD_POLICY_SET", set)
        .output()
        .with_context(|| format!("running the validator of {set} ({cmd})"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr });
        let said: String = said.trim().chars().take(2000).collect();
        return Err(refused(format!(
            "the validator of {set} (`{cmd}`) refused the files ({}): {said}",
            out.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> PolicyFile {
        PolicyFile { path: path.into(), bytes: text.as_bytes().to_vec() }
    }

    fn said(f: &PolicyFile) -> String {
        parse(f).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn each_type_names_the_line_and_column_of_its_first_error() {
        assert!(said(&file("p.yaml", "a:\n  b: [1,\n")).starts_with("p.yaml:3:1: not valid YAML"));
        assert!(said(&file("p.json", "{\n  \"a\": 1,\n}")).starts_with("p.json:3:1: not valid JSON"));
        assert!(said(&file("p.toml", "a = 1\nb = = 2\n")).starts_with("p.toml:2:5: not valid TOML"));
        assert!(parse(&file("p.yml", "a: 1\n")).unwrap().is_some());
        assert!(parse(&file("p.rego", "package x\n")).unwrap().is_none(), "other types are not parsed");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
