//! The content-addressed store on a filesystem: `DIR/ab/cdef…` by BLAKE3.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object with that hash.
    #[error("artifact {hash} is not in the store; fetch or import it again")]
    NotFound {
        /// Hex BLAKE3.
        hash: String,
    },
    /// The object's bytes do not hash to its key.
    #[error("artifact {hash} is corrupt at {at}: its bytes no longer hash to its name; delete it and fetch or upload it again")]
    Corrupt {
        /// Hex BLAKE3.
        hash: String,
        /// The file or object URL.
        at: String,
    },
    /// A remote store failed, after retries.
    #[error("artifact store {at}: {message}")]
    Remote {
        /// The store's URL.
        at: String,
        /// What failed.
        message: String,
    },
    /// Streamed bytes did not hash to the name they were sent under.
    #[error("the bytes sent as artifact {expected} hash to {actual}; send the artifact the name belongs to")]
    Mismatch {
        /// Hex BLAKE3 the bytes were sent under.
        expected: String,
        /// Hex BLAKE3 of what arrived.
        actual: String,
    },
    /// A stream was longer than its limit; nothing was stored.
    #[error("the artifact is larger than {limit_bytes} bytes, the most accepted; nothing was stored")]
    TooLarge {
        /// The limit that was passed.
        limit_bytes: u64,
    },
    /// The filesystem failed.
    #[error("artifact store I/O at {}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Bytes keyed by their BLAKE3, checked when written and when read.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` durably (idempotent) and returns their BLAKE3.
    fn put(&self, bytes: &[u8]) -> Result<[u8; 32], StoreError>;
    /// The bytes under `blake3`, verified.
    fn get(&self, blake3: &[u8; 32]) -> Result<Vec<u8>, StoreError>;
    /// Whether `blake3` is present (not verified).
    fn contains(&self, blake3: &[u8; 32]) -> Result<bool, StoreError>;
    /// After a failed write: whether the store takes writes again. Leaves nothing behind.
    fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Stores what `from` yields, at most `max_bytes`, if it hashes to `blake3`; returns
    /// its size. Stores that can spill to disk override this so nothing is held whole in
    /// memory; this default reads at most `max_bytes` into memory first.
    fn put_stream(&self, from: &mut dyn Read, blake3: &[u8; 32], max_bytes: u64) -> Result<u64, StoreError> {
        let mut bytes = Vec::new();
        let read = from.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes);
        read.map_err(|source| StoreError::Io { path: PathBuf::from("<upload>"), source })?;
        if bytes.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge { limit_bytes: max_bytes });
        }
        check_hash(blake3, blake3::hash(&bytes).as_bytes())?;
        self.put(&bytes)?;
        Ok(bytes.len() as u64)
    }
    /// The file holding `blake3` when the store is a local directory (not verified), so a
    /// server can stream it; `None` for remote stores.
    fn local_path(&self, _blake3: &[u8; 32]) -> Option<PathBuf> {
        None
    }
}

fn check_hash(expected: &[u8; 32], actual: &[u8; 32]) -> Result<(), StoreError> {
    if expected != actual {
        return Err(StoreError::Mismatch { expected: hex::encode(expected), actual: hex::encode(actual) });
    }
    Ok(())
}

/// A store in a directory.
pub struct FsStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

impl FsStore {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(FsStore { dir: dir.to_path_buf() })
    }

    /// Where the object `blake3` lives.
    pub fn path_of(&self, blake3: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(blake3);
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// Every object's hash (temp files skipped).
    pub fn list(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut out = Vec::new();
        for sub in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let sub = sub.map_err(io(&self.dir))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(io(&sub))? {
                let f = f.map_err(io(&sub))?.path();
                let name = format!(
                    "{}{}",
                    sub.file_name().unwrap_or_default().to_string_lossy(),
                    f.file_name().unwrap_or_default().to_string_lossy()
                );
                let mut h = [0u8; 32];
                if hex::decode_to_slice(&name, &mut h).is_ok() {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A unique temp file name in the store's top directory (never a valid object name).
fn temp_name(dir: &Path, tag: &[u8]) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}-{}", std::process::id(), hex::encode(tag)))
}

impl FsStore {
    /// The fan-out directory of `path`, created (and made durable) if new.
    fn fan_out_dir<'p>(&'p self, path: &'p Path) -> Result<&'p Path, StoreError> {
        let dir = path.parent().unwrap_or(&self.dir);
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io(dir))?;
            // The new fan-out directory's name must be durable too.
            fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        }
        Ok(dir)
    }

    /// Syncs `f` (at `tmp`, `len` bytes), renames it to `blake3`'s place and syncs the
    /// directory. Removes `tmp` on failure.
    fn commit(&self, f: fs::File, tmp: &Path, blake3: &[u8; 32], len: u64) -> Result<(), StoreError> {
        let path = self.path_of(blake3);
        let done = (|| {
            let dir = self.fan_out_dir(&path)?;
            let synced = (|| {
                f.sync_all()?;
                // Paired with the hash check on reads: the file holds exactly what was hashed.
                assert_eq!(f.metadata()?.len(), len, "object {} written whole", hex::encode(blake3));
                fs::rename(tmp, &path)?;
                // The rename is durable only once the directory is synced.
                fs::File::open(dir)?.sync_all()
            })();
            synced.map_err(io(&path))
        })();
        if done.is_err() {
            let _ = fs::remove_file(tmp);
        }
        done
    }
}

impl BlobStore for FsStore {
    fn put(&self, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
        let hash = *blake3::hash(bytes).as_bytes();
        if self.path_of(&hash).exists() {
            return Ok(hash);
        }
        let tmp = temp_name(&self.dir, &hash[..8]);
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).map(|()| f));
        match written {
            Ok(f) => self.commit(f, &tmp, &hash, bytes.len() as u64)?,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io(&tmp)(e));
            }
        }
        Ok(hash)
    }

    /// Streams into a temp file while hashing: memory stays at one buffer whatever the size.
    fn put_stream(&self, from: &mut dyn Read, blake3: &[u8; 32], max_bytes: u64) -> Result<u64, StoreError> {
        let tmp = temp_name(&self.dir, &blake3[..8]);
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        let streamed = copy_hashing(from, &mut f, max_bytes);
        let (len, actual) = match streamed {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io(&tmp)(e));
            }
        };
        if let Err(e) = check_hash(blake3, &actual) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.path_of(blake3).exists() {
            let _ = fs::remove_file(&tmp);
            return Ok(len);
        }
        self.commit(f, &tmp, blake3, len)?;
        Ok(len)
    }

    fn local_path(&self, blake3: &[u8; 32]) -> Option<PathBuf> {
        Some(self.path_of(blake3))
    }

    fn get(&self, blake3: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(blake3);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { hash: hex::encode(blake3) })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if blake3::hash(&bytes).as_bytes() != blake3 {
            return Err(StoreError::Corrupt { hash: hex::encode(blake3), at: path.display().to_string() });
        }
        Ok(bytes)
    }

    fn contains(&self, blake3: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.path_of(blake3).is_file())
    }

    fn probe(&self) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!(".probe-{}", std::process::id()));
        let tried = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&[0; 64 * 1024])?;
            f.sync_all()
        })();
        let _ = fs::remove_file(&tmp);
        tried.map_err(io(&tmp))
    }
}

/// Copies at most `max_bytes` from `from` to `to`, hashing; the outer error is I/O, the
/// inner one a stream over the limit.
fn copy_hashing(
    from: &mut dyn Read,
    to: &mut fs::File,
    max_bytes: u64,
) -> std::io::Result<Result<(u64, [u8; 32]), StoreError>> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n as u64;
        if len > max_bytes {
            return Ok(Err(StoreError::TooLarge { limit_bytes: max_bytes }));
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok(Ok((len, *hasher.finalize().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_idempotent_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let h = s.put(b"policy").unwrap();
        assert_eq!(s.put(b"policy").unwrap(), h);
        assert_eq!(s.get(&h).unwrap(), b"policy");
        assert!(s.contains(&h).unwrap());
        assert_eq!(s.list().unwrap(), vec![h]);
        let names: Vec<_> =
            fs::read_dir(s.path_of(&h).parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "no temp files left: {names:?}");
    }

    #[test]
    fn streamed_puts_store_verified_bytes_and_refuse_wrong_or_long_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let bytes = vec![7u8; 600 * 1024];
        let h = *blake3::hash(&bytes).as_bytes();
        assert_eq!(s.put_stream(&mut bytes.as_slice(), &h, 600 * 1024).unwrap(), 600 * 1024);
        assert_eq!(s.get(&h).unwrap(), bytes);
        // Again: idempotent.
        assert_eq!(s.put_stream(&mut bytes.as_slice(), &h, 600 * 1024).unwrap(), 600 * 1024);
        let other = *blake3::hash(b"other").as_bytes();
        assert!(matches!(
            s.put_stream(&mut bytes.as_slice(), &other, 1 << 20),
            Err(StoreError::Mismatch { .. })
        ));
        assert!(matches!(
            s.put_stream(&mut bytes.as_slice(), &h, 600 * 1024 - 1),
            Err(StoreError::TooLarge { limit_bytes }) if limit_bytes == 600 * 1024 - 1
        ));
        assert!(!s.contains(&other).unwrap());
        let top: Vec<_> =
            fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().is_file()).collect();
        assert!(top.is_empty(), "no temp files left: {top:?}");
    }

    #[test]
    fn corrupt_and_missing_objects_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let h = s.put(b"policy").unwrap();
        fs::write(s.path_of(&h), b"polic!").unwrap();
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt { .. })));
        assert!(matches!(s.get(&[0; 32]), Err(StoreError::NotFound { .. })));
    }
}
