//! pd's artifacts: deterministic policy tarballs, safe reading and unpacking, OpenPGP
//! signatures, and the content-addressed store.
#![warn(missing_docs)]

pub mod digest;
pub mod fs;
pub mod limits;
pub mod openpgp;
pub mod tarball;

pub use digest::ArtifactDigest;
pub use fs::{BlobStore, FsStore, StoreError};
pub use limits::Limits;
pub use openpgp::{PgpError, PgpKey};
pub use tarball::TarballError;
