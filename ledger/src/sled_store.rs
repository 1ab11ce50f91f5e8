//! The embedded default: entries in a sled tree keyed by big-endian `seq`.

use std::path::Path;

use crate::storage::{LedgerStore, StorageError};

/// A ledger in a sled database directory. Clones share the database: a server reads
/// through one clone while it appends through another.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    entries: sled::Tree,
    /// Serializes appends within the process; sled's file lock excludes other processes.
    append_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

fn io(e: sled::Error) -> StorageError {
    match e {
        // sled reports a held file lock as an I/O error with this text (sled 0.34).
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            StorageError::Locked
        }
        other => StorageError::Io(other.to_string()),
    }
}

impl SledStore {
    /// Opens (or creates) the database at `dir`. Fails with `Locked` if another process has it.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        // The ledger is read in order, once per open and then at its end: a small page cache
        // does (sled's default of 1 GiB would keep a large ledger resident).
        let config =
            sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).cache_capacity(CACHE_BYTES);
        let db = match config.open() {
            Err(sled::Error::Corruption { .. }) if discard_partial_snapshots(dir)? => config.open(),
            opened => opened,
        }
        .map_err(io)?;
        let entries = db.open_tree("entries").map_err(io)?;
        Ok(SledStore { db, entries, append_lock: Default::default() })
    }
}

/// sled 0.34 writes a snapshot to `snap.N.generating` and renames it once complete, but its
/// open reads every `snap.*` file: a process killed while writing one leaves a ledger that
/// fails to open as corrupt. Such a file is never a finished snapshot (the log holds what it
/// would summarize), so it is removed — under sled's own lock on `db`, so that no live
/// process is writing it. Returns whether one was.
fn discard_partial_snapshots(dir: &Path) -> Result<bool, StorageError> {
    use fs2::FileExt;
    let fail = |e: std::io::Error| StorageError::Io(format!("{}: {e}", dir.display()));
    let db = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("db")).map_err(fail)?;
    db.try_lock_exclusive().map_err(|_| StorageError::Locked)?;
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let name = entry.map_err(fail)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(dir.join(&*name)).map_err(fail)?;
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    FileExt::unlock(&db).map_err(fail)?;
    Ok(removed)
}

/// sled's page cache.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

fn seq_of(key: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] =
        key.try_into().map_err(|_| StorageError::Io(format!("corrupt ledger key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(arr))
}

impl LedgerStore for SledStore {
    fn len(&self) -> Result<u64, StorageError> {
        match self.entries.last().map_err(io)? {
            Some((k, _)) => Ok(seq_of(&k)? + 1),
            None => Ok(0),
        }
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.entries.get(seq.to_be_bytes()).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_> {
        let mut expected = from;
        Box::new(self.entries.range(from.to_be_bytes()..).map(move |kv| {
            let (k, v) = kv.map_err(io)?;
            let seq = seq_of(&k)?;
            if seq != expected {
                return Err(StorageError::Io(format!(
                    "ledger has a gap: expected seq {expected}, found {seq}"
                )));
            }
            expected += 1;
            Ok(v.to_vec())
        }))
    }

    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        // sled's file lock gives one process the database and the mutex one appender within
        // it, so checking the first position and applying one atomic batch is an
        // insert-if-absent: nobody can write between the two.
        let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        if first_seq > 0 && !self.entries.contains_key((first_seq - 1).to_be_bytes()).map_err(io)? {
            return Err(StorageError::Gap { seq: first_seq, len: self.len()? });
        }
        if self.entries.contains_key(first_seq.to_be_bytes()).map_err(io)? {
            return Err(StorageError::Conflict { seq: first_seq });
        }
        let mut batch = sled::Batch::default();
        for (i, bytes) in entries.iter().enumerate() {
            batch.insert(&(first_seq + i as u64).to_be_bytes(), *bytes);
        }
        self.entries.apply_batch(batch).map_err(io)?;
        // Durable before reported.
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_is_insert_if_absent_and_gapless() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.append(0, &[b"a", b"b"]).unwrap();
        assert_eq!(s.len().unwrap(), 2);
        assert!(matches!(s.append(1, &[b"x"]), Err(StorageError::Conflict { seq: 1 })));
        assert!(matches!(s.append(5, &[b"x"]), Err(StorageError::Gap { .. })));
        assert_eq!(s.get(1).unwrap().as_deref(), Some(&b"b"[..]));
        let all: Vec<_> = s.scan(0).collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![b"a".to_vec(), b"b".to_vec()]);
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len().unwrap(), 2, "entries survive reopening");
    }

    #[test]
    fn a_second_opener_is_told_the_ledger_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sled_store::tests::open_locked_child", "--nocapture"])
            .env("PD_LOCK_TEST_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    /// Runs in a child process of the test above: sled's lock is per process.
    #[test]
    fn open_locked_child() {
        let Some(dir) = std::env::var_os("PD_LOCK_TEST_DIR") else {
            return;
        };
        assert!(matches!(SledStore::open(std::path::Path::new(&dir)), Err(StorageError::Locked)));
    }

    #[test]
    fn a_snapshot_left_half_written_by_a_kill_does_not_stop_the_ledger_opening() {
        // Regression: kill -9 while sled wrote `snap.N.generating` left a ledger that failed to
        // open with "Read corrupted data" (sled 0.34 reads that file as a snapshot).
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.append(0, &[b"a", b"b"]).unwrap();
        }
        let partial = dir.path().join("snap.FFFFFFFFFFFFFFF0.generating");
        std::fs::write(&partial, b"half a snapshot").unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len().unwrap(), 2, "every entry is still there");
        assert!(!partial.exists());
    }

    #[test]
    fn a_failed_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.append(0, &[b"a"]).unwrap();
        assert!(s.append(0, &[b"x", b"y"]).is_err());
        assert_eq!(s.len().unwrap(), 1);
    }
}
