use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

fn open(dir: &Path) -> FileStore {
    FileStore::open(dir).expect("open")
}

#[test]
fn append_is_insert_if_absent_and_gapless_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.append(0, &[b"a", b"bb"]).unwrap();
    assert_eq!(s.len().unwrap(), 2);
    assert!(matches!(s.append(1, &[b"x"]), Err(StorageError::Conflict { seq: 1 })));
    assert!(matches!(s.append(5, &[b"x"]), Err(StorageError::Gap { seq: 5, len: 2 })));
    s.append(2, &[b"ccc"]).unwrap();
    assert_eq!(s.get(1).unwrap().as_deref(), Some(&b"bb"[..]));
    assert_eq!(s.get(3).unwrap(), None);
    let all: Vec<_> = s.scan(1).collect::<Result<_, _>>().unwrap();
    assert_eq!(all, vec![b"bb".to_vec(), b"ccc".to_vec()]);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.len().unwrap(), 3, "entries survive reopening");
    assert_eq!(s.torn(), None);
    let file = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(&file[..8], &MAGIC);
    assert_eq!(file.len(), 8 + 3 * RECORD_HEADER + 6);
}

#[test]
fn a_second_opener_is_told_the_ledger_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "file_store::tests::open_locked_child", "--nocapture"])
        .env("PD_LOCK_TEST_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// Runs in a child process of the test above: the lock is per process.
#[test]
fn open_locked_child() {
    let Some(dir) = std::env::var_os("PD_LOCK_TEST_DIR") else {
        return;
    };
    assert!(matches!(FileStore::open(Path::new(&dir)), Err(StorageError::Locked)));
    assert!(FileStore::in_use(Path::new(&dir)), "the probe sees the holder");
}

#[test]
fn a_torn_tail_is_set_aside_and_cut_and_every_whole_record_stays() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.append(0, &[b"first", b"second"]).unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    let whole = std::fs::read(&path).unwrap();
    // Half of a third record, as a power cut in the middle of its write would leave it.
    let mut torn = whole.clone();
    let mut rec = Vec::new();
    encode_record(&mut rec, 2, b"third entry");
    torn.extend_from_slice(&rec[..rec.len() / 2]);
    std::fs::write(&path, &torn).unwrap();
    let s = open(dir.path());
    assert_eq!(s.len().unwrap(), 2);
    let t = s.torn().cloned().expect("reported");
    assert_eq!((t.offset, t.bytes, t.entries), (whole.len() as u64, (rec.len() / 2) as u64, 2));
    assert_eq!(std::fs::read(&t.kept).unwrap(), &rec[..rec.len() / 2], "kept, not deleted");
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    s.append(2, &[b"third"]).unwrap();
    assert_eq!(s.get(2).unwrap().as_deref(), Some(&b"third"[..]));
    drop(s);
    // Torn at the same offset again: kept under a second name, and the log still opens.
    std::fs::write(&path, &torn).unwrap();
    let again = open(dir.path()).torn().cloned().expect("reported");
    assert_ne!(again.kept, t.kept);
    assert!(std::path::Path::new(&t.kept).exists() && std::path::Path::new(&again.kept).exists());
}

#[test]
fn a_decayed_record_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.append(0, &[b"alpha", b"beta"]).unwrap();
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = s.get(1).unwrap_err().to_string();
    assert!(err.contains("entry #1 fails its checksum"), "{err}");
    let scanned: Vec<_> = s.scan(0).collect();
    assert!(scanned[0].is_ok() && scanned[1].is_err());
}

#[test]
fn a_file_that_is_not_a_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    std::fs::write(&path, b"something else entirely").unwrap();
    let err = FileStore::open(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("not a pd ledger log"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"something else entirely");
}

#[test]
fn a_home_of_the_sled_format_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db"), b"sled").unwrap();
    let err = FileStore::open(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("older pd") && err.contains("pd init"), "{err}");
}

/// A disk file whose writes fail while `full` is set, as a full disk's do.
struct Full {
    disk: DiskFile,
    full: Arc<AtomicBool>,
}

impl LogFile for Full {
    fn name(&self) -> String {
        self.disk.name()
    }
    fn size(&self) -> io::Result<u64> {
        self.disk.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            // Part of the write lands, then the disk is full.
            self.disk.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.disk.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.disk.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.set_len(len)
    }
    fn set_aside(&self, offset: u64) -> io::Result<String> {
        self.disk.set_aside(offset)
    }
}

#[test]
fn a_full_disk_fails_the_append_and_the_log_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let s = Log::recover(Full { disk: DiskFile { file, path: path.clone() }, full: full.clone() }).unwrap();
    s.append(0, &[b"kept"]).unwrap();
    let before = std::fs::read(&path).unwrap();
    full.store(true, Ordering::SeqCst);
    let err = s.append(1, &[b"lost with the disk full"]).unwrap_err().to_string();
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the half-written record is cut off");
    assert!(s.failure().is_some_and(|f| f.contains("No space left")));
    assert!(s.probe().is_err(), "still full");
    assert_eq!(s.len().unwrap(), 1);
    full.store(false, Ordering::SeqCst);
    s.probe().unwrap();
    assert_eq!(s.failure(), None, "healthy again without a restart");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the probe leaves nothing behind");
    s.append(1, &[b"after"]).unwrap();
    assert_eq!(s.get(1).unwrap().as_deref(), Some(&b"after"[..]));
}
