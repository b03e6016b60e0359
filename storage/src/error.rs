//! The storage crate's one error type.

use std::io;
use std::path::PathBuf;

use strom_protocol::batch::BatchError;

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in a partition log. Nothing here is a panic: bad bytes on disk,
/// bad batches from a caller and failed I/O all come back as one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
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
    /// A batch given to `append` is not a valid RecordBatch v2; nothing of the call was stored.
    #[error("batch {index} of the append is invalid: {source}")]
    InvalidBatch {
        /// Position of the batch in the call.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: BatchError,
    },
    /// A batch is larger than `max.message.bytes`; nothing of the call was stored.
    #[error("batch of {size} bytes exceeds max.message.bytes = {max}")]
    MessageTooLarge {
        /// Batch size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The requested offset is outside the log: below the log-start offset (deleted by
    /// retention) or past the log-end offset.
    #[error("offset {offset} is out of range; the log holds [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// First offset still stored.
        start: i64,
        /// Next offset to be written.
        end: i64,
    },
    /// Stored bytes fail a check (length, magic, CRC, offsets): they are never served.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment or index file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// An earlier write or fsync failed in a way that leaves the log's state unknown; the log
    /// refuses further appends until it is reopened (which runs recovery).
    #[error("log {dir} is unusable after an earlier failure ({reason}); reopen it to recover")]
    Poisoned {
        /// The log directory.
        dir: PathBuf,
        /// The failure that poisoned it.
        reason: String,
    },
    /// A setting has a value it cannot take.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidConfig {
        /// The setting's (Kafka) name.
        key: String,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Offsets would exceed i64.
    #[error("offset overflow: the log cannot assign more offsets")]
    OffsetOverflow,
    /// A leader epoch below zero was given where a real epoch is needed.
    #[error("invalid leader epoch {epoch}: leader epochs are >= 0")]
    InvalidLeaderEpoch {
        /// The epoch given.
        epoch: i32,
    },
    /// A leader epoch older than one the log already holds: epochs never go back (a leader
    /// stamping it, or a batch carrying it, is from a deposed leader). Nothing was stored.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch {
        /// The epoch given.
        epoch: i32,
        /// The newest epoch the log holds (or its leader epoch).
        latest: i32,
    },
    /// An epoch would start before the start of the log's latest epoch: epoch start offsets
    /// only grow. Nothing was stored.
    #[error(
        "leader epoch {epoch} cannot start at offset {start_offset}: epoch {latest} starts at {latest_start}"
    )]
    EpochStartOutOfOrder {
        /// The epoch given.
        epoch: i32,
        /// Where it was to start.
        start_offset: i64,
        /// The log's latest epoch.
        latest: i32,
        /// Where that one starts.
        latest_start: i64,
    },
    /// Replicated batches must continue the log exactly: the first at the log-end offset, each
    /// next one right after the previous one's last offset. Nothing of the call was stored.
    #[error("replicated batch {index} starts at offset {found}; the log expects {expected}")]
    ReplicaOffsetMismatch {
        /// Position of the batch in the call.
        index: usize,
        /// The offset it had to start at.
        expected: i64,
        /// Its base offset.
        found: i64,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

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

    /// True when the stored data failed a check (as opposed to I/O, caller or range errors).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}
