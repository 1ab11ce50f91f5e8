//! The README's first sections, run as written: every `sh` block from "## A session" up to
//! "## Fleets, liveness and policy sets", in order, in one empty directory, with this build's
//! `pd` and `pd-verify` first on the PATH. A README that drifts from pd fails here.

use std::process::Command;

/// The `sh` blocks between the two headings, in order.
fn blocks(readme: &str, from: &str, to: &str) -> Vec<String> {
    let start = readme.find(from).expect("the first heading");
    let end = readme[start..].find(to).map(|i| start + i).expect("the last heading");
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in readme[start..end].lines() {
        match (&mut block, line.trim_end()) {
            (None, "```sh") => block = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn the_readme_session_and_network_sections_run_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
    let script = blocks(&readme, "## A session", "## Fleets, liveness and policy sets").join("");
    assert!(script.contains("pd ledger deploy") && script.contains("pd serve"), "{script}");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = pd_e2e::bin("pd");
    let bins = bin.parent().expect("bin dir");
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("timeout");
    // -e: the first command that fails fails the test; -x: the log shows which one.
    cmd.args(["300", "sh", "-e", "-x", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("PD_HOME")
        .env_remove("PD_SERVER")
        .env_remove("PD_ACTOR")
        .env_remove("PD_KEY")
        .env_remove("PD_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("run sh");
    let pid = child.id();
    let out = child.wait_with_output().expect("sh ends");
    // Whatever the script left running (after a failure) goes with its process group.
    let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).output();
    let text = pd_e2e::text(&out);
    let logs: String = ["serve.log", "agent.log"]
        .iter()
        .map(|f| format!("\n--- {f}\n{}", std::fs::read_to_string(dir.path().join(f)).unwrap_or_default()))
        .collect();
    assert!(out.status.success(), "the README's commands failed:\n{text}{logs}");
    for said in [
        "packaged as PD-23.1.0",
        "PD-23.1.0 approved by carol",
        "dev-1 loaded PD-23.1.0 in dev",
        "every rule hold",
        "packaged as PD-23.2.0",
        "✔ dev: 1/1 targets acknowledged PD-23.2.0",
        "✔ dev: 1/1 targets run PD-23.1.0 again",
    ] {
        assert!(text.contains(said), "the README's run did not say {said:?}:\n{text}");
    }
}
