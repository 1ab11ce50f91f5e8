//! The embedded default: every entry in one append-only file, `DIR/entries.log`, synced to
//! the disk before an append returns.
//!
//! The file is an 8-byte magic (`pdlog` and a format byte) followed by one record per entry:
//! `len: u32 LE`, `check: [u8; 8]`, then the entry's `len` bytes. `check` is the first eight
//! bytes of BLAKE3(`seq` as u64 LE ‖ `len` ‖ bytes), so a record read at the wrong position,
//! torn, or decayed is detected. An append writes all its records with one positioned write
//! and then calls `fdatasync` (which also persists the file's new length); the file and its
//! directory are fsync'd when the file is created. Nothing is reported appended before that
//! returns.
//!
//! A power cut can leave the unsynced tail of the last append half-written. Opening reads
//! every record; at the first one that is incomplete or fails its check, the rest of the file
//! is copied aside into `entries.log.torn-OFFSET-N` (nothing is deleted) and the log is cut
//! there. An append that was reported was synced before any later one began, so it is never
//! in the cut tail; a record that decayed after it was synced is, and then the cut-off copy
//! and the ledger's export or mirror are where to recover it from.
//!
//! A write or sync that fails (a full disk, an I/O error) cuts the file back to its last
//! synced length and leaves the store marked failed; the next append, or [`Log::probe`],
//! retries, so the store recovers by itself once the cause is gone.
//!
//! The index is the records' offsets in memory (8 bytes an entry): the ledger is replayed in
//! full at every open anyway, so an on-disk index would only add a second thing to keep true.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::limits::MAX_ENTRY_BYTES;
use crate::storage::{LedgerStore, StorageError};

/// First bytes of the file: `pdlog`, three zero bytes reserved, and the log format (1).
pub const MAGIC: [u8; 8] = *b"pdlog\0\0\x01";
/// Bytes before each record's entry bytes.
const RECORD_HEADER: usize = 12;
/// How much a scan reads at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Bytes [`Log::probe`] writes (and removes) to see whether the disk takes writes again.
const PROBE_BYTES: usize = 64 * 1024;

/// The file a [`Log`] lives in: positioned reads and writes, sync, truncation. The disk
/// implementation is [`DiskFile`]; tests put a file that forgets unsynced writes in its place.
pub trait LogFile: Send + Sync {
    /// What to call the file in messages.
    fn name(&self) -> String;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fails if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Keeps a copy of everything from `offset` to the end somewhere else, durably, before the
    /// log cuts it off; returns where.
    fn set_aside(&self, offset: u64) -> io::Result<String>;
}

/// A tail that was cut off when the log was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Torn {
    /// Where the first unreadable record began.
    pub offset: u64,
    /// Bytes cut off.
    pub bytes: u64,
    /// Entries before it.
    pub entries: u64,
    /// Where the cut-off bytes were kept.
    pub kept: String,
}

/// An append-only log of entry bytes in a [`LogFile`]. Clones share the file: a server
/// reads through one clone while it appends through another.
pub struct Log<F: LogFile> {
    inner: Arc<Inner<F>>,
}

impl<F: LogFile> Clone for Log<F> {
    fn clone(&self) -> Self {
        Log { inner: self.inner.clone() }
    }
}

struct Inner<F> {
    file: F,
    index: RwLock<Index>,
    /// Held for the whole of an append; holds why the last write failed, until one succeeds.
    append: Mutex<Option<String>>,
    torn: Option<Torn>,
}

/// Where each record starts, and where the synced file ends.
#[derive(Default)]
struct Index {
    offsets: Vec<u64>,
    end: u64,
}

/// The log on disk.
pub type FileStore = Log<DiskFile>;

fn check_of(seq: u64, bytes: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
    let mut out = [0; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fn encode_record(out: &mut Vec<u8>, seq: u64, bytes: &[u8]) {
    assert!(!bytes.is_empty() && bytes.len() <= MAX_ENTRY_BYTES, "entry of {} bytes", bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&check_of(seq, bytes));
    out.extend_from_slice(bytes);
}

/// Reads records in order from a position, a chunk at a time.
struct Reader<'a, F> {
    file: &'a F,
    end: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

/// Why a record could not be read.
enum Bad {
    /// Incomplete, or its check fails: a torn or decayed record.
    Record(String),
    /// The file could not be read.
    Io(io::Error),
}

impl<'a, F: LogFile> Reader<'a, F> {
    fn new(file: &'a F, end: u64) -> Self {
        Reader { file, end, buf: Vec::new(), buf_at: 0 }
    }

    /// `n` bytes at `offset`, which must lie before `end`.
    fn bytes(&mut self, offset: u64, n: usize) -> Result<&[u8], Bad> {
        let have = offset >= self.buf_at && offset + n as u64 <= self.buf_at + self.buf.len() as u64;
        if !have {
            let want = (n.max(CHUNK_BYTES) as u64).min(self.end.saturating_sub(offset)) as usize;
            if want < n {
                return Err(Bad::Record(format!("the record at byte {offset} is incomplete")));
            }
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, offset).map_err(Bad::Io)?;
            self.buf_at = offset;
        }
        let start = (offset - self.buf_at) as usize;
        Ok(&self.buf[start..start + n])
    }

    /// The entry `seq` whose record starts at `offset`, and where the next record starts.
    fn record(&mut self, seq: u64, offset: u64) -> Result<(Vec<u8>, u64), Bad> {
        let header = self.bytes(offset, RECORD_HEADER)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let check: [u8; 8] = header[4..].try_into().expect("8 bytes");
        if len == 0 || len > MAX_ENTRY_BYTES {
            return Err(Bad::Record(format!("the record of entry #{seq} claims {len} bytes")));
        }
        let bytes = self.bytes(offset + RECORD_HEADER as u64, len)?.to_vec();
        // The read half of the pair whose write half is `encode_record`.
        if check_of(seq, &bytes) != check {
            return Err(Bad::Record(format!("the record of entry #{seq} fails its checksum")));
        }
        Ok((bytes, offset + (RECORD_HEADER + len) as u64))
    }
}

impl<F: LogFile> Log<F> {
    /// Opens the log in `file`: writes the magic into an empty file, reads every record, and
    /// cuts off (after setting aside) a tail that does not read.
    pub fn recover(file: F) -> Result<Self, StorageError> {
        let fail = |e: io::Error| StorageError::Io(format!("{}: {e}", file.name()));
        let mut len = file.size().map_err(fail)?;
        let mut magic = [0u8; MAGIC.len()];
        let have = len.min(MAGIC.len() as u64) as usize;
        file.read_exact_at(&mut magic[..have], 0).map_err(fail)?;
        if magic[..have] != MAGIC[..have] {
            return Err(StorageError::Io(format!(
                "{} is not a pd ledger log (it does not start with the pdlog magic)",
                file.name()
            )));
        }
        if len < MAGIC.len() as u64 {
            // Empty, or the creation itself was cut short.
            file.write_all_at(&MAGIC, 0).and_then(|()| file.sync_data()).map_err(fail)?;
            len = MAGIC.len() as u64;
        }
        let mut index = Index { offsets: Vec::new(), end: MAGIC.len() as u64 };
        let mut reader = Reader::new(&file, len);
        let mut torn = None;
        while index.end < len {
            match reader.record(index.offsets.len() as u64, index.end) {
                Ok((_, next)) => {
                    index.offsets.push(index.end);
                    index.end = next;
                }
                Err(Bad::Io(e)) => return Err(fail(e)),
                Err(Bad::Record(_)) => {
                    let kept = file.set_aside(index.end).map_err(fail)?;
                    file.set_len(index.end).and_then(|()| file.sync_data()).map_err(fail)?;
                    torn = Some(Torn {
                        offset: index.end,
                        bytes: len - index.end,
                        entries: index.offsets.len() as u64,
                        kept,
                    });
                    break;
                }
            }
        }
        let inner = Inner { file, index: RwLock::new(index), append: Mutex::new(None), torn };
        Ok(Log { inner: Arc::new(inner) })
    }

    /// The tail cut off when this log was opened, if any: an append that was under way at a
    /// power cut or crash (never one that was reported), or decay.
    pub fn torn(&self) -> Option<&Torn> {
        self.inner.torn.as_ref()
    }

    /// Why the last write failed, while no write has succeeded since.
    pub fn failure(&self) -> Option<String> {
        self.lock_append().clone()
    }

    /// After a failed write: checks whether the file takes writes again (by writing, syncing
    /// and removing a few blocks past its end) and clears the failure if it does.
    pub fn probe(&self) -> Result<(), StorageError> {
        let mut failure = self.lock_append();
        if failure.is_none() {
            return Ok(());
        }
        let end = self.read_index().end;
        let f = &self.inner.file;
        let tried = f
            .set_len(end)
            .and_then(|()| f.write_all_at(&[0; PROBE_BYTES], end))
            .and_then(|()| f.sync_data())
            .and_then(|()| f.set_len(end))
            .and_then(|()| f.sync_data());
        match tried {
            Ok(()) => {
                *failure = None;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(end);
                Err(self.failed(&mut failure, e))
            }
        }
    }

    fn lock_append(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner.append.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, failure: &mut Option<String>, e: io::Error) -> StorageError {
        let msg = format!("writing {} failed: {e}", self.inner.file.name());
        *failure = Some(msg.clone());
        StorageError::Io(msg)
    }

    /// Where entry `seq`'s record starts and ends.
    fn span(&self, seq: u64) -> Option<(u64, u64)> {
        let ix = self.read_index();
        let start = *ix.offsets.get(seq as usize)?;
        let end = ix.offsets.get(seq as usize + 1).copied().unwrap_or(ix.end);
        Some((start, end))
    }

    fn corrupt(&self, why: String) -> StorageError {
        StorageError::Io(format!(
            "{}: {why}; restore the ledger from an export or mirror",
            self.inner.file.name()
        ))
    }
}

impl<F: LogFile> LedgerStore for Log<F> {
    fn len(&self) -> Result<u64, StorageError> {
        Ok(self.read_index().offsets.len() as u64)
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let Some((start, end)) = self.span(seq) else { return Ok(None) };
        let mut reader = Reader::new(&self.inner.file, end);
        match reader.record(seq, start) {
            Ok((bytes, next)) if next == end => Ok(Some(bytes)),
            Ok(_) => Err(self.corrupt(format!("entry #{seq} does not end where the index says"))),
            Err(Bad::Record(why)) => Err(self.corrupt(why)),
            Err(Bad::Io(e)) => Err(StorageError::Io(format!("{}: {e}", self.inner.file.name()))),
        }
    }

    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_> {
        let (mut offset, end, count) = {
            let ix = self.read_index();
            (ix.offsets.get(from as usize).copied().unwrap_or(ix.end), ix.end, ix.offsets.len() as u64)
        };
        let mut reader = Reader::new(&self.inner.file, end);
        let mut seq = from;
        Box::new(std::iter::from_fn(move || {
            if seq >= count {
                return None;
            }
            let got = match reader.record(seq, offset) {
                Ok((bytes, next)) => {
                    offset = next;
                    Ok(bytes)
                }
                Err(Bad::Record(why)) => Err(self.corrupt(why)),
                Err(Bad::Io(e)) => Err(StorageError::Io(format!("{}: {e}", self.inner.file.name()))),
            };
            // After an error, stop: what follows cannot be located.
            seq = if got.is_ok() { seq + 1 } else { count };
            Some(got)
        }))
    }

    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        let mut failure = self.lock_append();
        let (len, end) = {
            let ix = self.read_index();
            (ix.offsets.len() as u64, ix.end)
        };
        if first_seq < len {
            return Err(StorageError::Conflict { seq: first_seq });
        }
        if first_seq > len {
            return Err(StorageError::Gap { seq: first_seq, len });
        }
        let f = &self.inner.file;
        if failure.is_some() {
            // A failed write may have left bytes past the synced end: cut them first.
            f.set_len(end).and_then(|()| f.sync_data()).map_err(|e| self.failed(&mut failure, e))?;
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.len() + RECORD_HEADER).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        for (i, bytes) in entries.iter().enumerate() {
            offsets.push(end + buf.len() as u64);
            encode_record(&mut buf, first_seq + i as u64, bytes);
        }
        // Durable before reported: nothing returns Ok before fdatasync did.
        if let Err(e) = f.write_all_at(&buf, end).and_then(|()| f.sync_data()) {
            let _ = f.set_len(end).and_then(|()| f.sync_data());
            return Err(self.failed(&mut failure, e));
        }
        *failure = None;
        {
            let mut ix = self.inner.index.write().unwrap_or_else(|p| p.into_inner());
            ix.offsets.extend(offsets);
            ix.end = end + buf.len() as u64;
        }
        // Paired with the write: the first record reads back as written.
        if let Ok(Some(back)) = self.get(first_seq) {
            assert_eq!(back.as_slice(), entries[0], "entry #{first_seq} reads back as written");
        }
        Ok(())
    }
}

/// `entries.log` on disk, locked for this process.
pub struct DiskFile {
    file: File,
    path: PathBuf,
}

/// The log's file name inside its directory.
pub const LOG_FILE: &str = "entries.log";

impl FileStore {
    /// Whether another process has the log in `dir` open (so [`FileStore::open`] would fail
    /// with `Locked`). A log that does not exist is not in use.
    pub fn in_use(dir: &Path) -> bool {
        let Ok(file) = OpenOptions::new().read(true).open(dir.join(LOG_FILE)) else { return false };
        // The probe's own lock, if it got one, goes when `file` is closed.
        fs2::FileExt::try_lock_exclusive(&file).is_err()
    }

    /// Opens (or creates) the log in directory `dir`. Fails with `Locked` if another process
    /// has it open.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let fail = |e: io::Error| StorageError::Io(format!("{}: {e}", dir.display()));
        let path = dir.join(LOG_FILE);
        if !path.exists() && dir.join("db").exists() {
            return Err(StorageError::Io(format!(
                "{} holds a ledger of an older pd (format 1, in sled); pd has no migrations before 1.0: \
                 create a new home with `pd init`",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(fail)?;
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(fail)?;
        fs2::FileExt::try_lock_exclusive(&file).map_err(|_| StorageError::Locked)?;
        if created {
            // The new name must survive a power cut too: sync the directory and its parent.
            sync_dir(dir).map_err(fail)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(fail)?;
            }
        }
        Log::recover(DiskFile { file, path })
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogFile for DiskFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn set_aside(&self, offset: u64) -> io::Result<String> {
        // A name of its own even if the log was torn at this offset before.
        let (aside, mut out) = (0..)
            .map(|n| self.path.with_file_name(format!("{LOG_FILE}.torn-{offset}-{n}")))
            .find_map(|path| match OpenOptions::new().write(true).create_new(true).open(&path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                opened => Some(opened.map(|f| (path, f))),
            })
            .expect("an unbounded range of names")?;
        let mut from = std::io::Read::take(self.file.try_clone()?, u64::MAX);
        std::io::Seek::seek(from.get_mut(), std::io::SeekFrom::Start(offset))?;
        std::io::copy(&mut from, &mut out)?;
        out.sync_all()?;
        if let Some(dir) = aside.parent() {
            sync_dir(dir)?;
        }
        Ok(aside.display().to_string())
    }
}

#[cfg(test)]
mod tests;
