//! The metadata quorum's storage errors: what can go wrong reading or writing the Raft log, the
//! vote and the state machine's snapshot, and the conversion into the `StorageError` openraft
//! expects from its storage traits (openraft treats any storage error as fatal and stops the
//! node, which is the right answer to a disk that lies).

use std::io;
use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::BrokerId;

/// Everything that can go wrong in the metadata quorum's files. Nothing here is a panic: bad bytes
/// on disk, failed I/O and calls openraft should never make all come back as one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", "fsync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Stored bytes fail a check (length, checksum, structure). They are never used, and never
    /// skipped silently: only a torn record at the very end of a log is dropped (a crash
    /// mid-append), see [`crate::durable`].
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A record passed its checksum but its payload is not what it should be (a format change or
    /// a bug, not bit rot).
    #[error("cannot decode the record in {path} at byte {position}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Byte position of the record.
        position: u64,
        /// The decoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialized.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A record is larger than the format allows; nothing was written.
    #[error("a record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A call the log cannot take (an append at or below the purged prefix, entries that are not
    /// consecutive). openraft never makes one; it is refused rather than stored.
    #[error("invalid log operation: {0}")]
    InvalidLog(String),
    /// A snapshot whose data does not match its metadata, or cannot be decoded.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// openraft's configuration is invalid.
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    /// This voter of a larger quorum has been one before (its marker says so) but its metadata
    /// log is gone. Starting it would forget its votes, and a voter that votes twice in a term
    /// can let two controllers be elected.
    #[error(
        "node {node} was a voter of the metadata quorum, but its metadata log {dir} is gone: \
         starting it would forget the votes it cast. Restore the directory, or start the node \
         as a new voter after removing {marker}, only once every other voter has moved to a \
         later term (a voter election after the loss is enough)"
    )]
    WipedVoter {
        /// This node.
        node: u64,
        /// The missing log directory.
        dir: PathBuf,
        /// The marker file that says it was a voter.
        marker: PathBuf,
    },
    /// openraft failed outside a storage operation (starting, or a call on the Raft handle).
    #[error("raft: {0}")]
    Raft(String),
    /// A write or fsync failed, which leaves the file's state unknown: the store refuses further
    /// writes until it is reopened (which runs recovery).
    #[error("{path} is unusable after a failed write ({reason}); reopen it to recover")]
    Poisoned {
        /// The file.
        path: PathBuf,
        /// The failure that poisoned it.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`] for `op` on `path` (use with `map_err`).
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }

    /// True when stored data failed a check (as opposed to I/O or caller errors).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Decode { .. })
    }

    /// The error as openraft's `StorageError`, about `subject`, raised while doing `verb`.
    pub fn into_storage(
        self,
        subject: ErrorSubject<BrokerId>,
        verb: ErrorVerb,
    ) -> StorageError<BrokerId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// A log error (read or write of the entries) as openraft's `StorageError`.
pub(crate) fn logs_error(verb: ErrorVerb) -> impl FnOnce(Error) -> StorageError<BrokerId> {
    move |e| e.into_storage(ErrorSubject::Logs, verb)
}

/// A vote error as openraft's `StorageError`.
pub(crate) fn vote_error(verb: ErrorVerb) -> impl FnOnce(Error) -> StorageError<BrokerId> {
    move |e| e.into_storage(ErrorSubject::Vote, verb)
}

/// A state machine or snapshot error as openraft's `StorageError`.
pub(crate) fn snapshot_error(verb: ErrorVerb) -> impl FnOnce(Error) -> StorageError<BrokerId> {
    move |e| e.into_storage(ErrorSubject::Snapshot(None), verb)
}
