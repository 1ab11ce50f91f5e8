//! The hashes pd records for an artifact.

use sha2::{Digest as _, Sha256};

/// BLAKE3 (the store key), SHA-256 (what gpg users check) and size of some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactDigest {
    /// BLAKE3.
    pub blake3: [u8; 32],
    /// SHA-256.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

impl ArtifactDigest {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ArtifactDigest {
            blake3: *blake3::hash(bytes).as_bytes(),
            sha256: Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
        }
    }
}
