//! kill -9 during runs of appends: afterwards the ledger opens, verifies, and holds every
//! append that had been reported done.

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
    w.ok("", &["ledger", "package", f.to_str().unwrap(), "--reason", "r"]);
    w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
    w.ok("", &["ledger", "deploy", "PD-0.1.0", "--reason", "go", "--no-wait"]);

    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let (mut reported, mut killed_after_durable, mut killed) = (0usize, 0usize, 0usize);
    let rounds = 24;
    // How long one append takes here: kills are spread over that whole span (start-up, fold,
    // sign, write, flush, exit).
    let mut typical = Duration::from_millis(20);
    for round in 0..rounds {
        // A run of appends, each reported done when its process exits 0; one is killed.
        let run = 1 + rng.next(4);
        for i in 0..run {
            let started = Instant::now();
            let mut child = w
                .pd("dev-1", &["ledger", "ack", "PD-0.1.0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if i + 1 < run {
                assert!(child.wait().unwrap().success());
                typical = started.elapsed();
                reported += 1;
                continue;
            }
            // Land SIGKILL at a random point in the second half of this process's life, where the
            // append is written and flushed: spin, do not sleep.
            let t_us = typical.as_micros() as u64;
            let spin = Duration::from_micros(t_us / 2 + rng.next(t_us * 6 / 10 + 1));
            let t = Instant::now();
            while t.elapsed() < spin {
                std::hint::spin_loop();
            }
            let _ = child.kill();
            if child.wait().unwrap().success() {
                reported += 1; // It finished before the signal: reported done.
            } else {
                killed += 1;
            }
        }
        let have = acks(&w);
        assert!(
            have >= reported,
            "round {round}: {reported} appends reported done but only {have} in the ledger (seed {seed})"
        );
        assert!(
            have <= reported + round + 1,
            "round {round}: more appends than were attempted (seed {seed})"
        );
        killed_after_durable = have - reported;
    }
    println!("{killed} of {rounds} appenders killed mid-run; {killed_after_durable} of those had already made their append durable");
    assert!(killed > 0, "no appender was killed mid-run: the test proved nothing (seed {seed})");

    let export = w.path("after-crashes.pdx");
    w.ok("", &["ledger", "export", export.to_str().unwrap(), "--with-artifacts"]);
    let out = Command::new(bin("pd-verify")).arg(&export).output().unwrap();
    assert!(
        out.status.success(),
        "ledger does not verify after {rounds} kills (seed {seed}): {}",
        text(&out)
    );
}
