//! Limits on tarballs that come from outside, as tough's `Limits` does.

/// Bounds on what reading or building a tarball accepts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most files in one package.
    pub max_files: usize,
    /// Largest single file, in bytes.
    pub max_file_bytes: u64,
    /// Largest compressed tarball, in bytes.
    pub max_tarball_bytes: u64,
    /// Largest total unpacked size, in bytes.
    pub max_unpacked_bytes: u64,
    /// Highest unpacked/compressed ratio (decompression bombs).
    pub max_ratio: u64,
    /// Longest path inside a package, in bytes.
    pub max_path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_file_bytes: 64 << 20,
            max_tarball_bytes: 256 << 20,
            max_unpacked_bytes: 1 << 30,
            max_ratio: 200,
            max_path_bytes: 255,
        }
    }
}
