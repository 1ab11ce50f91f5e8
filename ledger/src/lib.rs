//! The ledger core of pd: entry types, their canonical encoding, the pure rule-and-fold
//! that decides whether an entry is valid, the export format and the storage trait.
//!
//! The core does no I/O of its own (storage comes in through [`LedgerStore`]), reads no
//! clock and draws no randomness: time and keys are arguments.
#![warn(missing_docs)]

pub mod adoption;
pub mod bytes;
pub mod enrol;
pub mod entry;
pub mod export;
#[cfg(feature = "file")]
pub mod file_store;
pub mod freeze;
pub mod gate;
pub mod heartbeat;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod merkle;
pub mod note;
pub mod partial;
pub mod proof;
pub mod replay;
pub mod rollout;
pub mod rules;
pub mod state;
pub mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod version;

pub use bytes::{Hash, PublicKey, Signature};
pub use enrol::{EnrolmentRequest, RequestError};
pub use entry::{
    Ack, Approve, Artifact, Bake, Body, Checked, Checkpoint, Custody, EncodingError, Entry, EnvPolicy,
    EnvSet, FileDigest, FreezeOverride, GateCheck, Genesis, KeyApprove, KeyDecl, KeyRevoke, KeyRotate,
    Outcome, Package, Push, Retry, RevokeKind, Role, Rollback, SignedEntry, Source, Stage, Statement,
    WaveSize, WaveStart, Withdraw,
};
pub use export::{Export, ExportArtifact, Head};
pub use keys::SecretKey;
pub use ledger::{Ledger, LedgerError};
pub use replay::{replay, ReplayError, ReplayErrorKind, Signatures};
pub use rules::{check, check_rules, identify, identify_decl, IdentifyError, RuleError};
pub use state::{EnvState, State};
pub use storage::{LedgerStore, StorageError};
pub use version::{Bump, Version};
