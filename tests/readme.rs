//! The README, run as written. Every `sh` block is accounted for here:
//! - the two at the top are the project's own commands (`scripts/test` is what `.ci/run`
//!   runs; `pd demo` is run by `tests/network.rs`);
//! - every block from "## A session" to "## Checkpoints and proofs" but the Python and S3
//!   ones runs in order, exactly as written, in one empty directory, as one session;
//! - the S3 block runs against a real Garage cluster;
//! - the two blocks of "Progressive rollouts" run as written against a real Prometheus;
//! - `pip install ./python` is what `scripts/python-env` runs (with the dev profile), and
//!   `python/tests/test_api.py` runs the Python block.
//!
//! A README that drifts from pd fails here.

use std::path::Path;
use std::process::{Command, Output};

/// A fenced block: the `## ` heading it is under, its language and its text.
struct Block {
    section: String,
    lang: String,
    text: String,
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README")
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for line in readme.lines() {
        // A fence pd's tests would not see (indented, or with tildes) is refused outright.
        let trimmed = line.trim_start();
        assert!(
            !(trimmed.starts_with("~~~") || (trimmed.starts_with("```") && trimmed.len() != line.len())),
            "a fence this test does not read: {line:?}"
        );
        match (&mut open, line.trim_end()) {
            (None, l) if l.starts_with("## ") => section = l[3..].to_string(),
            (None, l) if l.starts_with("```") => {
                open = Some(Block { section: section.clone(), lang: l[3..].to_string(), text: String::new() })
            }
            (Some(_), "```") => out.extend(open.take()),
            (Some(b), l) => {
                b.text.push_str(l);
                b.text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(open.is_none(), "the README ends inside a fenced block");
    for b in &out {
        let known = ["sh", "text", "python", ""].contains(&b.lang.as_str());
        assert!(
            known,
            "a ```{} block under ## {}: only sh blocks are run, so say sh or text",
            b.lang, b.section
        );
    }
    out
}

/// The `sh` blocks of `section`, joined.
fn sh(all: &[Block], section: &str) -> String {
    let text: String =
        all.iter().filter(|b| b.lang == "sh" && b.section == section).map(|b| b.text.as_str()).collect();
    assert!(!text.is_empty(), "no sh block under ## {section}");
    text
}

/// The sections whose blocks run as one session, in order, and what the test puts before
/// a section's blocks (the environment the README's text says they run in).
const SESSION: [(&str, &str); 5] = [
    ("A session", ""),
    ("Over the network", ""),
    ("Fleets, liveness and policy sets", ""),
    (
        "In a CI pipeline",
        // "here `governance/`, a git working tree where a merge just changed `llm_policy.yaml`".
        "printf '  anthropic:\\n    allowed_roles: [nsf_admins]\\n' >> governance/llm_policy.yaml\n\
         git -C governance init -q && git -C governance add -A && \
         git -C governance -c user.name=ci -c user.email=ci@example.org commit -qm 'Add anthropic'\n\
         CI_COMMIT_TITLE='Add anthropic'\n",
    ),
    ("Checkpoints and proofs", ""),
];

/// Sections whose `sh` blocks are run elsewhere (the module's doc says where).
const ELSEWHERE: [&str; 3] = ["From Python", "Artifacts and ledger backups in S3", "Progressive rollouts"];

/// Runs `script` with `sh -e -x` in `dir` with this build's `pd` and `pd-verify` first on
/// the PATH and no PD_* variables; whatever it leaves running goes with its process group.
fn run(script: &str, dir: &Path, env: &[(String, String)]) -> Output {
    let bin = pd_e2e::bin("pd");
    let bins = bin.parent().expect("bin dir");
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("timeout");
    // -e: the first command that fails fails the test; -x: the log shows which one.
    cmd.args(["300", "sh", "-e", "-x", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in ["PD_HOME", "PD_SERVER", "PD_ACTOR", "PD_KEY", "PD_TOKEN", "PD_STORE", "NO_COLOR"] {
        cmd.env_remove(var);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("run sh");
    let pid = child.id();
    let out = child.wait_with_output().expect("sh ends");
    let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).output();
    out
}

#[test]
fn every_sh_block_of_the_readme_is_run_by_a_test() {
    let readme = readme();
    let all = blocks(&readme);
    let top: Vec<&Block> = all.iter().filter(|b| b.section.is_empty() && b.lang == "sh").collect();
    assert_eq!(top.len(), 2, "two blocks before the first section");
    let first: Vec<&str> = top[0].text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).collect();
    assert_eq!(
        first,
        ["cargo run --release --bin pd -- demo", "scripts/test"],
        "the README's first two commands"
    );
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == "exec scripts/test"), ".ci/run runs the README's test command");
    for line in top[1].text.lines() {
        let script = line.split_whitespace().next().expect("a command");
        let meta = std::fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(script));
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.expect(script).permissions());
        assert!(mode & 0o111 != 0, "{script} is executable");
    }
    for b in all.iter().filter(|b| b.lang == "sh" && !b.section.is_empty()) {
        let known = SESSION.iter().any(|(s, _)| *s == b.section) || ELSEWHERE.contains(&b.section.as_str());
        assert!(known, "an sh block under ## {} that no test runs:\n{}", b.section, b.text);
    }
    let python: Vec<&Block> = all.iter().filter(|b| b.lang == "python").collect();
    assert_eq!(python.len(), 1, "python/tests/test_api.py runs the README's one Python block");
}

#[test]
fn the_readme_session_runs_as_written() {
    let all = blocks(&readme());
    let script: String =
        SESSION.iter().map(|(section, before)| format!("{before}{}", sh(&all, section))).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(&script, dir.path(), &[]);
    let text = pd_e2e::text(&out);
    let logs: String = ["serve.log", "agent.log", "agent-web-1.log"]
        .iter()
        .map(|f| format!("\n--- {f}\n{}", std::fs::read_to_string(dir.path().join(f)).unwrap_or_default()))
        .collect();
    assert!(out.status.success(), "the README's commands failed:\n{text}{logs}");
    // Shown with `--nocapture`: what a reader of the README would see.
    println!("{text}");
    for said in [
        "packaged as PD-23.1.0",
        "PD-23.1.0 approved by carol",
        "dev-1 loaded PD-23.1.0 in dev",
        "every rule hold",
        "packaged as PD-23.2.0",
        "✔ dev: 1/1 targets acknowledged PD-23.2.0",
        "✔ dev: 1/1 targets run PD-23.1.0 again",
        "packaged as PD-23.3.0",
        "✔ dev: 2/2 targets acknowledged PD-23.3.0",
        "dev/web_policy: desired PD-23.3.0",
        "\"version\": \"PD-23.4.0\"",
        "PD-23.4.0 approved by carol",
        "packaged as PD-23.5.0",
    ] {
        assert!(text.contains(said), "the README's run did not say {said:?}:\n{text}{logs}");
    }
}

#[test]
fn the_readme_rollout_runs_as_written_against_prometheus() {
    let all = blocks(&readme());
    let script = sh(&all, "Progressive rollouts");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(&script, dir.path(), &[]);
    let text = pd_e2e::text(&out);
    let logs: String = ["serve.log", "prometheus.log", "agent-prod-canary.log"]
        .iter()
        .map(|f| {
            format!(
                "\n--- {f}\n{}",
                std::fs::read_to_string(dir.path().join("rollouts").join(f)).unwrap_or_default()
            )
        })
        .collect();
    assert!(out.status.success(), "the README's rollout commands failed:\n{text}{logs}");
    for said in [
        "wave 1 (canary): prod-canary",
        "wave 2 (100%): prod-1, prod-2",
        "wave 1/2 of PD-0.1.0 in prod: prod-canary",
        "✔ wave 2 of PD-0.1.0 in prod passed its bake",
        "wave 1/2 of PD-0.2.0 in prod: prod-canary",
        "! wave 1 of PD-0.2.0 in prod failed its bake: gate prom:",
        "✔ prod: 3/3 targets run PD-0.1.0 again",
        "rolled prod back to PD-0.1.0",
        "exit 1: rolled back",
        "prod/llm_policy: desired PD-0.1.0 (rollback at",
        "every rule hold",
        "rollout timeline",
        "prod rolled back to PD-0.1.0 · automatic: gate prom:",
    ] {
        assert!(text.contains(said), "the README's rollout did not say {said:?}:\n{text}{logs}");
    }
    assert!(!text.contains("wave 2/2 of PD-0.2.0"), "the bad version never reached wave 2:\n{text}");
}

#[test]
fn the_readme_s3_block_runs_as_written_against_garage() {
    let all = blocks(&readme());
    let script = sh(&all, "Artifacts and ledger backups in S3");
    let garage = pd_e2e::garage::Garage::start();
    garage.bucket("policies");
    garage.bucket("backups");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("governance")).expect("mkdir");
    std::fs::write(
        dir.path().join("governance/llm_policy.yaml"),
        "models:\n  openai:\n    allowed_roles: [a]\n",
    )
    .expect("write");
    let out = run(&script, dir.path(), &garage.env());
    let text = pd_e2e::text(&out);
    assert!(out.status.success(), "the README's S3 commands failed:\n{text}");
    for said in ["packaged as PD-0.1.0", "restored"] {
        assert!(text.contains(said), "the README's S3 run did not say {said:?}:\n{text}");
    }
    assert!(dir.path().join("restored/ledger").is_dir(), "restore made a home");
}
