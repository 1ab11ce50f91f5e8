//! Golden policy tarballs: `tarball::build` of fixed files must give exactly the bytes in
//! `tests/data/golden/`, so a tar or flate2 upgrade that changes one byte (and with it every
//! package hash) fails here. `PD_BLESS=1` rewrites them; see tests/data/golden/README.md.

#[path = "../../tests/data/golden/check.rs"]
mod check;

use check::Fixture;
use pd_store::tarball::{self, PolicyFile};
use pd_store::Limits;

const POLICY_1_0_0: &str = "\
# Golden fixture input (store/tests/golden.rs): changing it changes every golden id.
version: 1
models:
  allow: [small-model, large-model]
  default: small-model
limits:
  max_tokens: 4096
";

const POLICY_1_1_0: &str = "\
# Golden fixture input (store/tests/golden.rs): changing it changes every golden id.
version: 1
models:
  allow: [small-model, large-model]
  default: large-model
limits:
  max_tokens: 8192
";

const PII: &str = "\
rules:
  - id: no-pii
    match: [email, phone]
    action: redact
";

/// One golden package: its fixture, policy name, version and files (path, text).
struct GoldenPackage {
    fixture: &'static str,
    name: &'static str,
    version: &'static str,
    files: &'static [(&'static str, &'static str)],
}

/// The packages of the golden ledger. The files are listed out of order on purpose: sorting
/// is part of the format.
const PACKAGES: [GoldenPackage; 2] = [
    GoldenPackage {
        fixture: "package-1.0.0.tar.gz",
        name: "llm-policy",
        version: "PD-1.0.0",
        files: &[("rules/pii.yaml", PII), ("llm_policy.yaml", POLICY_1_0_0)],
    },
    GoldenPackage {
        fixture: "package-1.1.0.tar.gz",
        name: "llm-policy",
        version: "PD-1.1.0",
        files: &[("rules/pii.yaml", PII), ("llm_policy.yaml", POLICY_1_1_0)],
    },
];

/// Reads a package safely and builds it again from what it holds.
fn reencode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let limits = Limits::default();
    let contents = tarball::read(bytes, &limits).map_err(|e| e.to_string())?;
    let m = &contents.manifest;
    let again = tarball::build(&m.name, &m.version, &contents.files, &limits).map_err(|e| e.to_string())?;
    Ok(again.bytes)
}

#[test]
fn policy_tarballs_are_byte_identical_to_the_golden_files() {
    let mode = check::mode();
    let table: Vec<Fixture> = PACKAGES
        .iter()
        .map(|p| {
            let files: Vec<PolicyFile> = p
                .files
                .iter()
                .map(|(path, text)| PolicyFile { path: path.to_string(), bytes: text.as_bytes().to_vec() })
                .collect();
            let built =
                tarball::build(p.name, p.version, &files, &Limits::default()).expect("fixed files build");
            Fixture { name: p.fixture.to_string(), built: built.bytes, reencode }
        })
        .collect();
    let stored = check::run(mode, &table);
    // The stored packages hold exactly the fixed files, sorted, under their manifest.
    for p in &PACKAGES {
        let contents = tarball::read(&stored[p.fixture], &Limits::default()).expect("golden tarball reads");
        let m = &contents.manifest;
        assert_eq!((m.name.as_str(), m.version.as_str()), (p.name, p.version), "{}: manifest", p.fixture);
        let mut want: Vec<(&str, &[u8])> = p.files.iter().map(|(path, t)| (*path, t.as_bytes())).collect();
        want.sort();
        let got: Vec<(&str, &[u8])> =
            contents.files.iter().map(|f| (f.path.as_str(), f.bytes.as_slice())).collect();
        assert_eq!(got, want, "{}: files", p.fixture);
    }
}
