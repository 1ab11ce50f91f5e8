//! Deterministic policy tarballs, and reading them back safely.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::ArtifactDigest;
use crate::limits::Limits;

/// Name of the manifest, the first member of every package.
pub const MANIFEST: &str = "pd-manifest.json";
/// Largest manifest accepted, in bytes.
const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// Small packages may compress far better than `max_ratio` (tar headers are mostly zeros).
const RATIO_FLOOR_BYTES: u64 = 1 << 20;

/// A policy file to package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    /// Relative, '/'-separated path inside the package.
    pub path: String,
    /// Content.
    pub bytes: Vec<u8>,
}

/// Digests of one file in a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Path inside the package.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: [u8; 32],
    /// BLAKE3.
    pub blake3: [u8; 32],
}

/// `pd-manifest.json`: what the package claims to hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Policy name.
    pub name: String,
    /// Version, `PD-x.y.z`.
    pub version: String,
    /// Files, sorted by path.
    pub files: Vec<ManifestFile>,
}

/// One file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path inside the package.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Lowercase hex BLAKE3.
    pub blake3: String,
}

/// A built package.
#[derive(Clone, Debug)]
pub struct Built {
    /// The `.tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// Their digests.
    pub digest: ArtifactDigest,
    /// Per-file digests, sorted by path.
    pub files: Vec<FileDigest>,
    /// The manifest inside.
    pub manifest: Manifest,
}

impl Built {
    /// The ledger's record of this package: its files' and tarball's digests, the detached
    /// OpenPGP signature and why it was made.
    pub fn to_package(
        &self,
        version: pd_ledger::Version,
        openpgp_sig: String,
        reason: String,
    ) -> pd_ledger::Package {
        let hash = pd_ledger::Hash;
        pd_ledger::Package {
            version,
            name: self.manifest.name.clone(),
            files: self
                .files
                .iter()
                .map(|f| pd_ledger::FileDigest {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: hash(f.sha256),
                    blake3: hash(f.blake3),
                })
                .collect(),
            tarball: pd_ledger::Artifact {
                blake3: hash(self.digest.blake3),
                sha256: hash(self.digest.sha256),
                size: self.digest.size,
            },
            openpgp_sig,
            checked: Default::default(),
            source: None,
            reason,
        }
    }
}

/// What a verified tarball holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// The manifest.
    pub manifest: Manifest,
    /// The files, in manifest order.
    pub files: Vec<PolicyFile>,
}

/// A package that cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tar extension header or a header that is not plain ustar: pd reads exactly what it
    /// writes, so that the bytes it checks are the bytes every other tar reader extracts.
    #[error("the tarball holds a {what}: pd packages are plain ustar without extension headers (PAX, GNU long names, sparse files); rebuild it with `pd ledger package`")]
    Extension {
        /// What was found.
        what: String,
    },
    /// A symlink, device or other non-regular file.
    #[error("{path} is not a regular file (links, devices and special files are refused)")]
    NotRegular {
        /// Which.
        path: String,
    },
    /// A path that could escape or is ambiguous.
    #[error("bad path {path:?}: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
    /// Two files with the same path.
    #[error("{path} appears twice; give each policy file a distinct name")]
    DuplicatePath {
        /// The path.
        path: String,
    },
    /// Too many files.
    #[error("more than {limit} files in one package")]
    TooManyFiles {
        /// The limit.
        limit: usize,
    },
    /// One file too large.
    #[error("{path} is over the limit of {} per file", pd_ledger::limits::human_bytes(*limit))]
    FileTooLarge {
        /// Which.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// Tarball too large.
    #[error("tarball of {} is over the limit of {}", pd_ledger::limits::human_bytes(*size), pd_ledger::limits::human_bytes(*limit))]
    TarballTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Unpacks to too much.
    #[error("tarball unpacks to more than {}", pd_ledger::limits::human_bytes(*limit))]
    UnpackedTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Compressed too well to be honest.
    #[error("tarball expands more than {ratio}x: refused as a decompression bomb")]
    Bomb {
        /// The ratio limit.
        ratio: u64,
    },
    /// Not a gzip'd tar, or a truncated one.
    #[error("not a valid pd package tarball: {0}")]
    Malformed(String),
    /// The manifest is missing, unreadable or disagrees with the files.
    #[error("package manifest: {0}")]
    Manifest(String),
    /// `unpack` into a directory that has content.
    #[error("{} already exists and is not empty; unpack into a new directory", .0.display())]
    DirNotEmpty(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TarballError + '_ {
    move |source| TarballError::Io { path: path.to_path_buf(), source }
}

fn check_path(path: &str, limits: &Limits) -> Result<(), TarballError> {
    if path == MANIFEST {
        return Err(TarballError::BadPath {
            path: path.into(),
            why: format!("{MANIFEST} is reserved for pd's manifest"),
        });
    }
    if path.len() > limits.max_path_bytes {
        return Err(TarballError::BadPath {
            path: path.into(),
            why: format!("longer than {} bytes", limits.max_path_bytes),
        });
    }
    pd_ledger::rules::check_path(path)
        .map_err(|e| TarballError::BadPath { path: path.into(), why: e.to_string() })
}

/// Reads policy files: a file becomes one entry named by its file name, a directory
/// contributes every regular file under it, relative to it. Sorted by path.
pub fn collect(paths: &[PathBuf], limits: &Limits) -> Result<Vec<PolicyFile>, TarballError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = fs::symlink_metadata(p).map_err(io_err(p))?;
        if meta.is_dir() {
            walk(p, "", &mut files, limits)?;
        } else {
            let name = p.file_name().unwrap_or_default();
            let name = name.to_str().ok_or_else(|| TarballError::BadPath {
                path: name.to_string_lossy().into(),
                why: "not UTF-8; rename it".into(),
            })?;
            add_file(p, name.to_string(), &meta, &mut files, limits)?;
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(TarballError::DuplicatePath { path: w[0].path.clone() });
    }
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<PolicyFile>, limits: &Limits) -> Result<(), TarballError> {
    let mut entries: Vec<_> =
        fs::read_dir(dir).map_err(io_err(dir))?.collect::<Result<_, _>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().into_string().map_err(|n| TarballError::BadPath {
            path: path.with_file_name(n.to_string_lossy().as_ref()).display().to_string(),
            why: "not UTF-8; rename it".into(),
        })?;
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            walk(&path, &rel, out, limits)?;
        } else {
            add_file(&path, rel, &meta, out, limits)?;
        }
    }
    Ok(())
}

fn add_file(
    path: &Path,
    rel: String,
    meta: &fs::Metadata,
    out: &mut Vec<PolicyFile>,
    limits: &Limits,
) -> Result<(), TarballError> {
    if !meta.is_file() {
        return Err(TarballError::NotRegular { path: path.display().to_string() });
    }
    check_path(&rel, limits)?;
    if meta.len() > limits.max_file_bytes {
        return Err(TarballError::FileTooLarge { path: rel, limit: limits.max_file_bytes });
    }
    if out.len() >= limits.max_files {
        return Err(TarballError::TooManyFiles { limit: limits.max_files });
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    out.push(PolicyFile { path: rel, bytes });
    Ok(())
}

/// Builds the deterministic `.tar.gz`: same files and version, same bytes, on any machine.
pub fn build(
    name: &str,
    version: &str,
    files: &[PolicyFile],
    limits: &Limits,
) -> Result<Built, TarballError> {
    if files.len() > limits.max_files {
        return Err(TarballError::TooManyFiles { limit: limits.max_files });
    }
    let mut sorted: Vec<&PolicyFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut digests = Vec::with_capacity(sorted.len());
    for (i, f) in sorted.iter().enumerate() {
        check_path(&f.path, limits)?;
        if i > 0 && sorted[i - 1].path == f.path {
            return Err(TarballError::DuplicatePath { path: f.path.clone() });
        }
        if f.bytes.len() as u64 > limits.max_file_bytes {
            return Err(TarballError::FileTooLarge { path: f.path.clone(), limit: limits.max_file_bytes });
        }
        let d = ArtifactDigest::of(&f.bytes);
        digests.push(FileDigest { path: f.path.clone(), size: d.size, sha256: d.sha256, blake3: d.blake3 });
    }
    let manifest = Manifest {
        name: name.to_string(),
        version: version.to_string(),
        files: digests
            .iter()
            .map(|d| ManifestFile {
                path: d.path.clone(),
                size: d.size,
                sha256: hex::encode(d.sha256),
                blake3: hex::encode(d.blake3),
            })
            .collect(),
    };
    let mut manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| TarballError::Manifest(e.to_string()))?;
    manifest_bytes.push(b'\n');
    let bytes = write_tar_gz(
        std::iter::once((MANIFEST, manifest_bytes.as_slice()))
            .chain(sorted.iter().map(|f| (f.path.as_str(), f.bytes.as_slice()))),
    )
    .map_err(io_err(Path::new("<tarball in memory>")))?;
    if bytes.len() as u64 > limits.max_tarball_bytes {
        return Err(TarballError::TarballTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_tarball_bytes,
        });
    }
    Ok(Built { digest: ArtifactDigest::of(&bytes), bytes, files: digests, manifest })
}

fn write_tar_gz<'a>(members: impl Iterator<Item = (&'a str, &'a [u8])>) -> std::io::Result<Vec<u8>> {
    // Fixed gzip header: no name, no comment, mtime 0, OS "unknown"; fixed level.
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_size(bytes.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("")?;
        h.set_groupname("")?;
        h.set_cksum();
        tar.append(&h, bytes)?;
    }
    tar.into_inner()?.finish()
}

/// Counts inflated bytes and stops at a cap, so a bomb is caught early.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // Anything more is over the cap: probe one byte to tell "exactly at the cap" from "over".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(CapExceeded)),
            };
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

#[derive(Debug)]
struct CapExceeded;
impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unpacked size cap exceeded")
    }
}
impl std::error::Error for CapExceeded {}

/// Reads a package in memory, refusing anything unsafe, and checks it against its manifest.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Contents, TarballError> {
    let size = bytes.len() as u64;
    if size > limits.max_tarball_bytes {
        return Err(TarballError::TarballTooLarge { size, limit: limits.max_tarball_bytes });
    }
    let by_ratio = size.saturating_mul(limits.max_ratio).max(RATIO_FLOOR_BYTES);
    let cap = by_ratio.min(limits.max_unpacked_bytes);
    let over = || {
        if by_ratio < limits.max_unpacked_bytes {
            TarballError::Bomb { ratio: limits.max_ratio }
        } else {
            TarballError::UnpackedTooLarge { limit: limits.max_unpacked_bytes }
        }
    };
    let map = |e: std::io::Error| {
        if e.get_ref().is_some_and(|i| i.is::<CapExceeded>()) {
            over()
        } else {
            TarballError::Malformed(e.to_string())
        }
    };
    let reader = Capped { inner: flate2::bufread::GzDecoder::new(bytes), left: cap };
    let mut archive = tar::Archive::new(reader);
    let mut members: Vec<PolicyFile> = Vec::new();
    let mut total = 0u64;
    // Raw entries: the tar crate would otherwise apply PAX records and GNU long names
    // silently, and another reader could apply them differently.
    for entry in archive.entries().map_err(map)?.raw(true) {
        let mut entry = entry.map_err(map)?;
        check_plain_ustar(entry.header())?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| TarballError::BadPath { path: "<non UTF-8>".into(), why: "not UTF-8".into() })?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(TarballError::NotRegular { path });
        }
        if members.is_empty() && path != MANIFEST {
            return Err(TarballError::Manifest(format!(
                "the first member must be {MANIFEST}, found {path:?}"
            )));
        }
        if !members.is_empty() {
            check_path(&path, limits)?;
        }
        if members.len() > limits.max_files {
            return Err(TarballError::TooManyFiles { limit: limits.max_files });
        }
        let len = entry.header().size().map_err(map)?;
        let limit = if members.is_empty() { MAX_MANIFEST_BYTES } else { limits.max_file_bytes };
        if len > limit {
            return Err(TarballError::FileTooLarge { path, limit });
        }
        total += len;
        if total > limits.max_unpacked_bytes {
            return Err(TarballError::UnpackedTooLarge { limit: limits.max_unpacked_bytes });
        }
        let mut data = Vec::with_capacity(len as usize);
        entry.by_ref().take(len).read_to_end(&mut data).map_err(map)?;
        if data.len() as u64 != len {
            return Err(TarballError::Malformed(format!("{path} is truncated")));
        }
        members.push(PolicyFile { path, bytes: data });
    }
    check_nothing_after(archive.into_inner())?;
    let mut members = members.into_iter();
    let manifest_file =
        members.next().ok_or_else(|| TarballError::Manifest(format!("{MANIFEST} is missing")))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_file.bytes).map_err(|e| TarballError::Manifest(e.to_string()))?;
    let files: Vec<PolicyFile> = members.collect();
    check_manifest(&manifest, &files)?;
    Ok(Contents { manifest, files })
}

/// Refuses extension headers (PAX `x`/`g`, GNU `L`/`K`, sparse `S`, …) and any header that
/// is not POSIX ustar, the only kind pd writes.
fn check_plain_ustar(h: &tar::Header) -> Result<(), TarballError> {
    use tar::EntryType as T;
    let what = match h.entry_type() {
        T::XHeader => "PAX extended header",
        T::XGlobalHeader => "PAX global header",
        T::GNULongName => "GNU long name header",
        T::GNULongLink => "GNU long link header",
        T::GNUSparse => "GNU sparse file",
        _ if h.as_ustar().is_none() => "header that is not POSIX ustar (old or GNU format)",
        _ => return Ok(()),
    };
    Err(TarballError::Extension { what: what.into() })
}

/// After the last member: only the zero blocks of tar's end marker, and the end of the one
/// gzip member. Anything more (a second gzip member, trailing bytes) is content some other
/// reader would see and pd would not.
fn check_nothing_after(mut rest: Capped<flate2::bufread::GzDecoder<&[u8]>>) -> Result<(), TarballError> {
    let mut tail = Vec::new();
    rest.read_to_end(&mut tail).map_err(|e| TarballError::Malformed(e.to_string()))?;
    if tail.iter().any(|&b| b != 0) {
        return Err(TarballError::Malformed("data after the end of the tar archive".into()));
    }
    if !rest.inner.get_ref().is_empty() {
        return Err(TarballError::Malformed(
            "bytes after the end of the gzip stream (a second gzip member or trailing data)".into(),
        ));
    }
    Ok(())
}

fn check_manifest(m: &Manifest, files: &[PolicyFile]) -> Result<(), TarballError> {
    if m.files.len() != files.len() {
        return Err(TarballError::Manifest(format!(
            "lists {} files but the tarball holds {}",
            m.files.len(),
            files.len()
        )));
    }
    for (i, (mf, f)) in m.files.iter().zip(files).enumerate() {
        if i > 0 && files[i - 1].path >= f.path {
            return Err(TarballError::DuplicatePath { path: f.path.clone() });
        }
        let d = ArtifactDigest::of(&f.bytes);
        if mf.path != f.path
            || mf.size != d.size
            || mf.sha256 != hex::encode(d.sha256)
            || mf.blake3 != hex::encode(d.blake3)
        {
            return Err(TarballError::Manifest(format!("{} does not match its manifest entry", f.path)));
        }
    }
    Ok(())
}

/// Reads a package (see [`read`]) and writes its files into `dir`, which must be new or empty.
pub fn unpack(bytes: &[u8], dir: &Path, limits: &Limits) -> Result<Manifest, TarballError> {
    let contents = read(bytes, limits)?;
    if dir.exists() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
        return Err(TarballError::DirNotEmpty(dir.to_path_buf()));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for f in &contents.files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut out =
            fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err(&path))?;
        out.write_all(&f.bytes).map_err(io_err(&path))?;
        out.sync_all().map_err(io_err(&path))?;
    }
    Ok(contents.manifest)
}

#[cfg(test)]
mod tests;
