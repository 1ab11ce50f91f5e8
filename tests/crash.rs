//! kill -9 during runs of appends: afterwards the ledger opens, verifies, and holds every
//! append that had been reported done.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pd_e2e::{bin, text, World};

/// xorshift: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn acks(w: &World) -> usize {
    w.log().iter().filter(|e| e["kind"] == "ack").count()
}

#[test]
fn kill_dash_nine_loses_no_reported_append() {
    let w = World::standard();
    let f = w.write("llm_policy.yaml", "a: 1\n");
    w.ok(
        "",
        &["ledger", "package", f.to_str().unwrap(), "--reason", "r"],
    );
    w.ok(
        "carol",
        &["ledger", "approve", "PD-0.1.0", "--reason", "ok"],
    );
    w.ok(
        "",
        &[
            "ledger",
            "deploy",
            "PD-0.1.0",
            "--reason",
            "go",
            "--no-wait",
        ],
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut reported = 0usize;
    let rounds = 24;
    for round in 0..rounds {
        // A run of appends, each reported on stdout only after pd exited 0 (the entry is durable).
        let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do \"$PD\" --home \"$H\" --as dev-1 ledger ack PD-0.1.0 >/dev/null && echo done || exit 3; done";
        let mut child = Command::new("sh")
            .args(["-c", script])
            .env("PD", bin("pd"))
            .env("H", &w.home)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wait_for = rng.next(4);
        for _ in 0..wait_for {
            match lines.next() {
                Some(Ok(_)) => reported += 1,
                _ => break,
            }
        }
        // Land the kill at a random point inside the next pd process: spin, do not sleep.
        let spin = Duration::from_micros(rng.next(40_000));
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        let pgid = child.id() as i32;
        Command::new("kill")
            .args(["-9", &format!("-{pgid}")])
            .status()
            .unwrap();
        // Whatever was reported before the kill is still in the pipe.
        reported += lines.map_while(Result::ok).filter(|l| l == "done").count();
        child.wait().unwrap();
        let have = acks(&w);
        assert!(have >= reported, "round {round}: {reported} appends reported done but only {have} in the ledger (seed {seed})");
        assert!(
            have <= reported + round + 1,
            "round {round}: more appends than were attempted (seed {seed})"
        );
    }

    let export = w.path("after-crashes.pdx");
    w.ok(
        "",
        &[
            "ledger",
            "export",
            export.to_str().unwrap(),
            "--with-artifacts",
        ],
    );
    let out = Command::new(bin("pd-verify"))
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ledger does not verify after {rounds} kills (seed {seed}): {}",
        text(&out)
    );
}
