//! [`Error`]: everything a strom client call can fail with, split into retriable and fatal kinds.
//!
//! Wire error codes ([`ErrorCode`]) arrive as [`Error::Broker`]; whether they are retriable is the
//! protocol's decision ([`ErrorCode::is_retriable`]). Connection failures and client-side
//! timeouts are retriable; configuration errors, oversized records, a fenced producer, corrupt
//! data and out-of-range offsets are not. The producer and consumer already retry what is
//! retriable (within `delivery_timeout` and with backoff), so an error that reaches the caller
//! from them is final for that record or call; [`Error::is_retriable`] tells whether trying the
//! same call again later may succeed.
//!
//! `Error` is `Clone` (I/O errors are shared behind an `Arc`) because one failed batch completes
//! the delivery futures of all its records with the same error.

use std::sync::Arc;
use std::time::Duration;

use strom_protocol::ErrorCode;
use strom_protocol::batch::BatchError;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client call failed.
///
/// ```
/// use strom_client::{Error, protocol::ErrorCode};
///
/// let e = Error::Broker { code: ErrorCode::Busy, message: None };
/// assert!(e.is_retriable());
/// assert_eq!(e.error_code(), Some(ErrorCode::Busy));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid: of the configuration, or of a record (e.g. its `deliver_at`).
    /// Fatal: fix the configuration or the record.
    #[error("invalid setting {name}: {reason}")]
    Config {
        /// The setting, as named in the config struct.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be opened to any bootstrap address. Retriable.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried last.
        addr: String,
        /// The socket error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The connection broke (or was closed) before the response arrived. Retriable; whether a
    /// request that was in flight took effect is unknown.
    #[error("connection to {addr} lost: {reason}")]
    Disconnected {
        /// The broker's address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// No response within the client's request timeout; the connection is closed. Retriable.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The broker answered with an error code (request-level, or for this topic or partition).
    /// Retriable exactly when the code is.
    #[error("broker error {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The wire code.
        code: ErrorCode,
        /// The broker's explanation, when it gave one.
        message: Option<String>,
    },
    /// The broker sent something this client cannot read or did not expect (a malformed frame, a
    /// response to another request, a body of the wrong API). The connection is closed.
    #[error("protocol violation by {addr}: {reason}")]
    Protocol {
        /// The broker's address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The broker does not speak an API this call needs (at a version this client speaks).
    #[error("the broker does not support {api} at a version this client speaks")]
    UnsupportedApi {
        /// The API's name.
        api: &'static str,
    },
    /// A record (or request) is larger than a limit. Fatal for that record.
    #[error("{what} of {size} bytes is larger than {limit} = {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit's name.
        limit: &'static str,
        /// The limit.
        max: usize,
    },
    /// A record was not acknowledged within `delivery_timeout`. If it had been sent, it may or
    /// may not have been written.
    #[error("record not acknowledged within delivery_timeout = {0:?}")]
    DeliveryTimeout(Duration),
    /// Another producer with the same id and a newer epoch exists; this producer stops. Fatal.
    #[error("producer fenced: a newer epoch of producer id {producer_id} exists")]
    ProducerFenced {
        /// This producer's id.
        producer_id: i64,
    },
    /// The topic does not exist (and was not created automatically) after waiting `max_block`.
    #[error("unknown topic {topic}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// What the broker said, if anything.
        reason: Option<String>,
    },
    /// The partition is not one of the topic's (as far as the client's metadata knows).
    #[error("topic {topic} has {partitions} partitions; there is no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// The topic's partition count.
        partitions: i32,
    },
    /// A fetched batch failed its CRC or could not be decoded. Fatal for that partition until
    /// the consumer seeks past it.
    #[error("corrupt batch in {topic}-{partition} at offset {offset}: {source}")]
    Corrupt {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Base offset of the batch (or the fetch offset when the header is unreadable).
        offset: i64,
        /// What was wrong.
        #[source]
        source: BatchError,
    },
    /// A compressed batch could not be compressed or decompressed.
    #[error("{codec} {op} failed: {reason}")]
    Compression {
        /// The codec.
        codec: &'static str,
        /// `"compression"` or `"decompression"`.
        op: &'static str,
        /// What happened.
        reason: String,
    },
    /// A batch could not be built (a record too large to encode).
    #[error("cannot build record batch: {0}")]
    Batch(#[from] BatchError),
    /// The consumer's position is outside the partition's stored offsets and
    /// `auto_offset_reset` is [`crate::AutoOffsetReset::None`]. Seek to continue.
    #[error(
        "offset {offset} is out of range for {topic}-{partition} (stored: {log_start_offset}..{log_end_offset})"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The position that was out of range.
        offset: i64,
        /// The partition's first stored offset.
        log_start_offset: i64,
        /// The partition's log end offset.
        log_end_offset: i64,
    },
    /// After a leader change, the new leader's log ends below the consumer's position in the
    /// epoch of the last record it fetched (KIP-320): records it read are gone (possible only
    /// after an unclean election). With `auto_offset_reset` [`crate::AutoOffsetReset::None`]
    /// the partition stops until a seek; with another policy the consumer goes back to `end`
    /// itself and logs it.
    #[error(
        "{topic}-{partition} was truncated to {end} after a leader change, below the position {offset}"
    )]
    LogTruncated {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The position the consumer had.
        offset: i64,
        /// Where the new leader's log ends in the epoch the consumer last read.
        end: i64,
    },
    /// An assigned partition has no position and `auto_offset_reset` is
    /// [`crate::AutoOffsetReset::None`]: seek it first.
    #[error(
        "{topic}-{partition} has no position: seek it first, or set auto_offset_reset to earliest or latest"
    )]
    NoOffset {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The partition is not assigned to this consumer.
    #[error("{topic}-{partition} is not assigned to this consumer")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The client was closed (or its background task stopped).
    #[error("the client is closed")]
    Closed,
    /// A group call on a consumer that has not subscribed to a group
    /// ([`crate::Consumer::subscribe`]).
    #[error("the consumer is not a member of a group: call subscribe first")]
    NotSubscribed,
    /// The group does not exist: no members and no committed offsets (`GROUP_ID_NOT_FOUND`).
    #[error("group {group} does not exist")]
    GroupNotFound {
        /// The group id.
        group: String,
    },
    /// The group still has members, so its offsets cannot be reset and it cannot be deleted
    /// (`NON_EMPTY_GROUP`). Stop (close) its consumers first.
    #[error("group {group} still has members{}: close its consumers first", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    NonEmptyGroup {
        /// The group id.
        group: String,
        /// The broker's explanation.
        message: Option<String>,
    },
    /// A commit carried a member epoch the coordinator no longer accepts (`ILLEGAL_GENERATION`),
    /// even after the consumer refreshed its epoch with a heartbeat and tried once more: the
    /// group is rebalancing. Retriable: a later commit carries the new epoch.
    #[error("commit refused for group {group}: member epoch {member_epoch} is stale")]
    IllegalGeneration {
        /// The group id.
        group: String,
        /// The epoch the refused commit carried.
        member_epoch: i32,
    },
    /// The consumer is not (or no longer) a member of the group (`UNKNOWN_MEMBER_ID`): its
    /// session expired, the broker restarted, or it has not joined yet. The partitions it had
    /// are lost (others may own them now) and their uncommitted positions cannot be committed;
    /// the consumer rejoins by itself.
    #[error("not a member of group {group}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    UnknownMember {
        /// The group id.
        group: String,
        /// What happened.
        message: Option<String>,
    },
}

impl Error {
    /// Whether the same call may succeed if made again later (after a backoff).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected { .. } | Error::Timeout(_) => true,
            Error::Broker { code, .. } => code.is_retriable(),
            Error::IllegalGeneration { .. } => true,
            _ => false,
        }
    }

    /// Whether the error is final for its operation (the opposite of [`Error::is_retriable`]).
    pub fn is_fatal(&self) -> bool {
        !self.is_retriable()
    }

    /// The wire error code, for errors the broker reported.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::GroupNotFound { .. } => Some(ErrorCode::GroupIdNotFound),
            Error::NonEmptyGroup { .. } => Some(ErrorCode::NonEmptyGroup),
            Error::IllegalGeneration { .. } => Some(ErrorCode::IllegalGeneration),
            Error::UnknownMember { .. } => Some(ErrorCode::UnknownMemberId),
            _ => None,
        }
    }

    /// A broker error with `code`, or `None` for [`ErrorCode::None`].
    pub(crate) fn from_code(code: ErrorCode, message: Option<String>) -> Option<Self> {
        (!code.is_ok()).then_some(Error::Broker { code, message })
    }

    pub(crate) fn connect(addr: &str, source: std::io::Error) -> Self {
        Error::Connect {
            addr: addr.to_string(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn config(name: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            name,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_kinds() {
        assert!(Error::Timeout(Duration::from_secs(1)).is_retriable());
        assert!(
            Error::Disconnected {
                addr: "a".into(),
                reason: "b".into()
            }
            .is_retriable()
        );
        assert!(
            Error::Broker {
                code: ErrorCode::RequestTimedOut,
                message: None
            }
            .is_retriable()
        );
        assert!(
            !Error::Broker {
                code: ErrorCode::MessageTooLarge,
                message: Some("x".into())
            }
            .is_retriable()
        );
        assert!(Error::ProducerFenced { producer_id: 1 }.is_fatal());
        let stale = Error::IllegalGeneration {
            group: "g".into(),
            member_epoch: 3,
        };
        assert!(stale.is_retriable());
        assert_eq!(stale.error_code(), Some(ErrorCode::IllegalGeneration));
        let busy = Error::NonEmptyGroup {
            group: "g".into(),
            message: None,
        };
        assert!(busy.is_fatal());
        assert_eq!(busy.error_code(), Some(ErrorCode::NonEmptyGroup));
        assert!(
            Error::UnknownMember {
                group: "g".into(),
                message: None
            }
            .is_fatal()
        );
        assert!(Error::GroupNotFound { group: "g".into() }.is_fatal());
        assert!(Error::from_code(ErrorCode::None, None).is_none());
        let e = Error::from_code(ErrorCode::Busy, Some("slow down".into())).unwrap();
        assert_eq!(
            e.to_string(),
            "broker error BUSY (16): the broker is busy or the client is over a quota: slow down"
        );
    }
}
