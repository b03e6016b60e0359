//! The broker crate's error type, and the mapping of storage errors to wire error codes.

use std::io;
use std::path::PathBuf;

use strom_protocol::ErrorCode;
use strom_storage::StorageError;

/// Failures of the broker as a process: start-up, configuration, metadata, I/O. Failures of one
/// request are wire error codes in its response, not this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A setting has a bad value.
    #[error("invalid setting {key}: {reason}")]
    Config {
        /// The setting's name.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An OS call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file, directory or address.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A listener could not be opened.
    #[error("cannot listen on {addr} (setting {setting}): {source}")]
    Listen {
        /// The setting that names the address (`listen`, `kafka_listen`).
        setting: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A partition log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A topic metadata file is damaged.
    #[error("topic metadata {path} is damaged: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
}

/// The wire code for a storage failure of one request.
pub(crate) fn storage_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
        StorageError::InvalidBatch { source, .. } => batch_code(source),
        StorageError::Corrupt { .. } => ErrorCode::CorruptMessage,
        StorageError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        _ => ErrorCode::StorageError,
    }
}

/// The wire code for a batch a client sent that failed validation: as in Kafka, a batch whose
/// framing, magic or CRC is wrong is `CORRUPT_MESSAGE`.
pub(crate) fn batch_code(_: &strom_protocol::batch::BatchError) -> ErrorCode {
    ErrorCode::CorruptMessage
}
