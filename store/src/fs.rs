//! The content-addressed store on a filesystem: `DIR/ab/cdef…` by BLAKE3.

use std::fs;
use std::io::Write;
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

impl BlobStore for FsStore {
    fn put(&self, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
        let hash = *blake3::hash(bytes).as_bytes();
        let path = self.path_of(&hash);
        if path.exists() {
            return Ok(hash);
        }
        let dir = path.parent().unwrap_or(&self.dir);
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io(dir))?;
            // The new fan-out directory's name must be durable too.
            fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), hex::encode(&hash[..8])));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            // Paired with the hash check on every read: the file holds exactly what was hashed.
            assert_eq!(f.metadata()?.len(), bytes.len() as u64, "object {} written whole", hex::encode(hash));
            fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory is synced.
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        Ok(hash)
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
    fn corrupt_and_missing_objects_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let h = s.put(b"policy").unwrap();
        fs::write(s.path_of(&h), b"polic!").unwrap();
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt { .. })));
        assert!(matches!(s.get(&[0; 32]), Err(StoreError::NotFound { .. })));
    }
}
