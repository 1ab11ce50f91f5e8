//! Power loss: a disk that keeps only what was synced, plus any part of what was not, cut at
//! a random point; the reopened ledger must hold every append that was reported and verify.

use std::io;
use std::sync::{Arc, Mutex};

use pd_ledger::file_store::{Log, LogFile};
use pd_ledger::testkit::deployed;
use pd_ledger::{replay, LedgerStore, Signatures};

/// Sector size: a power cut keeps or loses whole sectors of an unsynced write.
const SECTOR: usize = 512;

/// What a write not yet synced did.
#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Default)]
struct Disk {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Op>,
    /// Operations left before the power goes; `None`: it never does.
    ops_left: Option<u64>,
    cut: bool,
}

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(at, data) => {
            let end = *at as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*at as usize..end].copy_from_slice(data);
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

impl Disk {
    /// Counts one operation; false once the power is gone.
    fn powered(&mut self) -> bool {
        match &mut self.ops_left {
            _ if self.cut => false,
            Some(0) => {
                self.cut = true;
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    /// The disk after the cut: everything synced, and a random part of each unsynced change
    /// (whole sectors of writes, in any combination).
    fn after_cut(&self, rng: &mut Rng) -> Vec<u8> {
        let mut image = self.durable.clone();
        for op in &self.pending {
            match op {
                Op::Write(at, data) => {
                    for (i, sector) in data.chunks(SECTOR).enumerate() {
                        if rng.below(2) == 0 {
                            apply(&mut image, &Op::Write(at + (i * SECTOR) as u64, sector.to_vec()));
                        }
                    }
                }
                Op::SetLen(_) if rng.below(2) == 0 => apply(&mut image, op),
                Op::SetLen(_) => {}
            }
        }
        image
    }
}

#[derive(Clone)]
struct CrashFile(Arc<Mutex<Disk>>);

fn dark() -> io::Error {
    io::Error::other("power cut")
}

impl CrashFile {
    fn with(image: Vec<u8>) -> Self {
        CrashFile(Arc::new(Mutex::new(Disk { durable: image.clone(), current: image, ..Disk::default() })))
    }
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.0.lock().unwrap()
    }
    fn change(&self, op: Op) -> io::Result<()> {
        let mut d = self.disk();
        if !d.powered() {
            return Err(dark());
        }
        apply(&mut d.current, &op);
        d.pending.push(op);
        Ok(())
    }
}

impl LogFile for CrashFile {
    fn name(&self) -> String {
        "crash-file".into()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.disk().current.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.disk();
        let src = d
            .current
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(Op::Write(offset, buf.to_vec()))
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.disk();
        if !d.powered() {
            return Err(dark());
        }
        d.durable = d.current.clone();
        d.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Op::SetLen(len))
    }
    fn set_aside(&self, _offset: u64) -> io::Result<String> {
        Ok("kept in memory".into())
    }
}

/// xorshift64*: a seeded source for the test, printed on failure.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let file = CrashFile::with(Vec::new());
    let mut d = deployed(Log::recover(file.clone()).expect("empty log"));
    // The power goes at a random operation from here on.
    file.disk().ops_left = Some(rng.below(60));
    let mut reported: Vec<Vec<u8>> = d.ledger.entries(0).map(|e| e.expect("entry").bytes).collect();
    loop {
        let n = 1 + rng.below(8) as usize;
        let bodies = (0..n).map(|_| d.ack()).collect();
        let batch = d.ledger.sign_batch("dev-1", &d.target, 2, bodies);
        let appended = if n == 1 { d.ledger.append(batch[0].clone()) } else { d.ledger.append_batch(&batch) };
        match appended {
            Ok(()) => reported.extend(batch.into_iter().map(|e| e.bytes)),
            Err(_) => break,
        }
    }
    let image = file.disk().after_cut(&mut rng);
    let log = Log::recover(CrashFile::with(image)).unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
    let ledger = pd_ledger::Ledger::open(log).unwrap_or_else(|e| panic!("seed {seed}: replay: {e}"));
    let kept: Vec<Vec<u8>> = ledger.entries(0).map(|e| e.expect("entry").bytes).collect();
    assert!(kept.len() >= reported.len(), "seed {seed}: {} reported, {} kept", reported.len(), kept.len());
    assert_eq!(kept[..reported.len()], reported[..], "seed {seed}: a reported append changed");
    replay(kept.iter().map(|b| b.as_slice()), Signatures::Verify)
        .unwrap_or_else(|e| panic!("seed {seed}: the reopened ledger does not verify: {e}"));
    assert_eq!(ledger.store().len().unwrap(), kept.len() as u64);
}

#[test]
fn every_reported_append_survives_a_power_cut_at_any_point() {
    for seed in 0..400 {
        run(seed);
    }
}

#[test]
fn the_model_loses_unsynced_writes() {
    // The test above proves nothing if the disk keeps everything: check that cuts do lose.
    let mut lost = 0;
    for seed in 0..50u64 {
        let file = CrashFile::with(Vec::new());
        let log = Log::recover(file.clone()).unwrap();
        file.disk().ops_left = Some(1);
        let _ = log.append(0, &[&[1u8; 2000]]);
        let image = file.disk().after_cut(&mut Rng(seed + 1));
        if Log::recover(CrashFile::with(image)).unwrap().len().unwrap() == 0 {
            lost += 1;
        }
    }
    assert!(lost > 0, "no cut lost the unsynced write");
}
