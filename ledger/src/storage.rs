//! Where entry bytes live. The ledger core sees storage only through this trait.

use std::sync::Mutex;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another writer holds the ledger.
    #[error("the ledger is in use by another pd process; wait for it to finish and retry")]
    Locked,
    /// An entry already exists at that position.
    #[error("an entry already exists at seq {seq}: another writer appended first; reload and retry")]
    Conflict {
        /// The taken position.
        seq: u64,
    },
    /// An append that would leave a gap.
    #[error("append at seq {seq} would leave a gap: the ledger holds {len} entries")]
    Gap {
        /// Requested first position.
        seq: u64,
        /// Entries present.
        len: u64,
    },
    /// The underlying storage failed.
    #[error("ledger storage failed: {0}")]
    Io(String),
}

/// An append-only sequence of entry bytes indexed by `seq`.
///
/// Architecture Invariant: an append is insert-if-absent at its `seq`, all-or-nothing for a
/// batch, and durable before it returns `Ok`.
pub trait LedgerStore {
    /// Number of entries.
    fn len(&self) -> Result<u64, StorageError>;
    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
    /// The bytes at `seq`.
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// Entries from `from` on, in order.
    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_>;
    /// Appends `entries` at `first_seq..`, which must be exactly the current length.
    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError>;
}

/// An in-memory store for tests and tools.
#[derive(Default)]
pub struct MemStore(Mutex<Vec<Vec<u8>>>);

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LedgerStore for MemStore {
    fn len(&self) -> Result<u64, StorageError> {
        Ok(self.lock().len() as u64)
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().get(seq as usize).cloned())
    }

    fn scan(&self, from: u64) -> Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + '_> {
        let all: Vec<_> = self.lock().iter().skip(from as usize).cloned().map(Ok).collect();
        Box::new(all.into_iter())
    }

    fn append(&self, first_seq: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        let mut v = self.lock();
        let len = v.len() as u64;
        if first_seq < len {
            return Err(StorageError::Conflict { seq: first_seq });
        }
        if first_seq > len {
            return Err(StorageError::Gap { seq: first_seq, len });
        }
        v.extend(entries.iter().map(|e| e.to_vec()));
        Ok(())
    }
}
