//! Packages are reproducible across homes, and their signatures verify with plain gpg.

use std::process::Command;

use pd_e2e::{text, World};

const POLICY: &str =
    "models:\n  openai:\n    daily_budget_usd: 50\n    allowed_roles: [nsf_research_staff]\n";

fn package_json(w: &World, version: &str) -> serde_json::Value {
    let show: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "show", version, "--json"])).unwrap();
    show["body"]["package"].clone()
}

#[test]
fn two_fresh_homes_build_byte_identical_tarballs() {
    let mut tarballs = Vec::new();
    for dir in ["a/governance", "b/somewhere/else"] {
        let w = World::new();
        w.ok("", &["init"]);
        let f = w.write(&format!("{dir}/llm_policy.yaml"), POLICY);
        w.ok(
            "",
            &["ledger", "package", f.to_str().unwrap(), "--version", "23.1.0", "--reason", "same input"],
        );
        let out = w.path("pkg.tgz");
        w.ok("", &["store", "get", "PD-23.1.0", "-o", out.to_str().unwrap()]);
        tarballs.push((package_json(&w, "PD-23.1.0")["tarball"].clone(), std::fs::read(out).unwrap()));
    }
    assert_eq!(tarballs[0].0, tarballs[1].0, "same BLAKE3, SHA-256 and size");
    assert_eq!(tarballs[0].1, tarballs[1].1, "byte-identical tarballs");
}

#[test]
fn gpg_verifies_a_pd_package_signature() {
    if Command::new("gpg").arg("--version").output().is_err() {
        eprintln!("skipped: gpg is not installed, so the signature cannot be checked with it");
        return;
    }
    let w = World::new();
    w.ok("", &["init"]);
    let f = w.write("llm_policy.yaml", POLICY);
    w.ok("", &["ledger", "package", f.to_str().unwrap(), "--reason", "r"]);
    let cert = w.write("admin.asc", &w.ok("", &["key", "export", "admin", "--openpgp"]));
    let sig = w.write("pkg.tgz.asc", package_json(&w, "PD-0.1.0")["openpgp_sig"].as_str().unwrap());
    let tgz = w.path("pkg.tgz");
    w.ok("", &["store", "get", "PD-0.1.0", "-o", tgz.to_str().unwrap()]);
    let gnupg = w.path("gnupg");
    std::fs::create_dir(&gnupg).unwrap();
    let gpg = |args: &[&std::path::Path]| {
        Command::new("gpg").arg("--batch").arg("--homedir").arg(&gnupg).args(args).output().unwrap()
    };
    let out = gpg(&["--import".as_ref(), &cert]);
    assert!(out.status.success(), "{}", text(&out));
    let out = gpg(&["--verify".as_ref(), &sig, &tgz]);
    assert!(out.status.success(), "gpg --verify rejected pd's signature: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Good signature"), "{}", text(&out));

    let mut bytes = std::fs::read(&tgz).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&tgz, bytes).unwrap();
    assert!(!gpg(&["--verify".as_ref(), &sig, &tgz]).status.success(), "a changed tarball must fail");
}
