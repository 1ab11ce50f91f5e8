//! Compare-or-bless for the golden fixtures in this directory, shared by `ledger/tests/golden.rs`
//! and `store/tests/golden.rs` (each includes it with `#[path]`). Not a fixture itself.
//!
//! Every fixture is checked both ways: the crate's decoder reads the stored bytes and
//! re-encodes them to exactly those bytes, and the bytes the fixed inputs encode to today are
//! exactly the stored bytes. With `PD_BLESS=1` the second direction writes instead of comparing.

use std::io::Write as _;
use std::path::PathBuf;

/// The directory of the fixtures (and of their README.md).
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/golden");

/// The command that regenerates the fixtures of the crate running the test.
pub const BLESS: &str = concat!("PD_BLESS=1 cargo test -p ", env!("CARGO_PKG_NAME"), " --test golden");

/// Decodes fixture bytes with the crate's own decoder and encodes the result again.
pub type Reencode = fn(&[u8]) -> Result<Vec<u8>, String>;

/// One row of a golden table.
pub struct Fixture {
    /// File name in [`DIR`].
    pub name: String,
    /// What the fixed inputs encode to now.
    pub built: Vec<u8>,
    /// The decoder that must read the fixture back byte for byte.
    pub reencode: Reencode,
}

/// Whether this run compares the fixtures or rewrites them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The default, and the only mode in CI.
    Compare,
    /// `PD_BLESS=1`: write the fixtures that differ, and say which.
    Bless,
}

/// The mode from `PD_BLESS`. Refuses to bless in CI, so a changed encoding can never be
/// accepted there without a human reading the diff.
pub fn mode() -> Mode {
    match std::env::var_os("PD_BLESS") {
        None => Mode::Compare,
        Some(v) if v == "1" => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PD_BLESS=1 is set in CI: golden fixtures are only ever compared there; bless locally and commit"
            );
            Mode::Bless
        }
        Some(v) => panic!("PD_BLESS={v:?}: set PD_BLESS=1 to rewrite the golden fixtures, or unset it"),
    }
}

/// Path of a fixture.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

/// Reads a fixture that is an input of the test (not compared), naming it if it is missing.
pub fn read_input(name: &str) -> Vec<u8> {
    std::fs::read(path(name))
        .unwrap_or_else(|e| panic!("golden input tests/data/golden/{name}: {e} (see its README.md)"))
}

/// Checks (or, blessing, writes) every fixture of the table and returns the stored bytes by
/// name. Panics once, naming every fixture that failed and how.
pub fn run(mode: Mode, table: &[Fixture]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let readme = String::from_utf8(read_input("README.md")).expect("README.md is UTF-8");
    let mut failures = Vec::new();
    let mut stored = std::collections::BTreeMap::new();
    for f in table {
        if !readme.contains(&format!("`{}`", f.name)) {
            failures.push(format!("{}: not listed in tests/data/golden/README.md", f.name));
        }
        // Never bless bytes our own decoder cannot read back identically.
        if let Err(problem) = round_trip(f.reencode, &f.built) {
            failures.push(format!("{}: the freshly built bytes {problem}", f.name));
            continue;
        }
        let old = std::fs::read(path(&f.name)).ok();
        let result = match mode {
            Mode::Bless => bless(f, old.as_deref()),
            Mode::Compare => compare(f, old.as_deref()),
        };
        match result {
            Ok(bytes) => {
                stored.insert(f.name.clone(), bytes);
            }
            Err(problem) => failures.push(format!("{}: {problem}", f.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "golden fixtures in tests/data/golden/ do not match:\n  {}\n\
         An encoder or format change alters ids and package hashes. If that is intended, run\n  {BLESS}\n\
         and review `git diff tests/data/golden/` before committing.",
        failures.join("\n  ")
    );
    stored
}

fn compare(f: &Fixture, old: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let old = old.ok_or("missing")?;
    round_trip(f.reencode, old).map_err(|p| format!("the stored bytes {p}"))?;
    if f.built != old {
        return Err(format!(
            "differs from what the fixed inputs encode to now: {}",
            difference(("fixture", old), ("built", &f.built))
        ));
    }
    Ok(old.to_vec())
}

fn bless(f: &Fixture, old: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let what = match old {
        Some(old) if old == f.built => return Ok(f.built.clone()),
        Some(old) => format!("changed ({})", difference(("old", old), ("new", &f.built))),
        None => "new".to_string(),
    };
    std::fs::write(path(&f.name), &f.built).map_err(|e| format!("cannot write: {e}"))?;
    // Straight to stderr, past the test harness's capture, so blessing is never silent.
    let _ = writeln!(std::io::stderr(), "PD_BLESS: wrote tests/data/golden/{}: {what}", f.name);
    Ok(f.built.clone())
}

fn round_trip(reencode: Reencode, bytes: &[u8]) -> Result<(), String> {
    match reencode(bytes) {
        Err(e) => Err(format!("do not decode: {e}")),
        Ok(again) if again != bytes => Err(format!(
            "decode but re-encode differently: {}",
            difference(("read", bytes), ("re-encoded", &again))
        )),
        Ok(_) => Ok(()),
    }
}

/// Where two named byte strings first differ, for a message a human can act on.
fn difference((a_name, a): (&str, &[u8]), (b_name, b): (&str, &[u8])) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let byte = |s: &[u8]| s.get(at).map_or("end".to_string(), |x| format!("{x:#04x}"));
    format!(
        "first difference at byte {at} ({a_name} {}, {b_name} {}); {a_name} {} bytes, {b_name} {}",
        byte(a),
        byte(b),
        a.len(),
        b.len()
    )
}
