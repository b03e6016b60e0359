//! Topic names and topic config names: the rules the broker enforces and the client can check
//! before sending.
//!
//! Names follow Kafka's rules so that topics can move between the two systems: 1 to 249
//! characters of ASCII letters, digits, `.`, `_` and `-`, and neither `.` nor `..` (both would
//! name a directory that is not the topic's). As in Kafka, `.` and `_` may collide in metric names;
//! that is a warning for operators, not a rule here.
//!
//! Config names are Kafka's (`retention.ms`, ...); values travel as strings and are parsed by the
//! broker.

use crate::error_code::ErrorCode;

/// The longest topic name, in bytes (all allowed characters are ASCII).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why a topic name is not valid. Every variant maps to [`ErrorCode::InvalidTopicName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_NAME_LEN`].
    #[error("topic name is {len} bytes long; the limit is {MAX_TOPIC_NAME_LEN}")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// The name is `.` or `..`.
    #[error("topic name {0:?} is reserved")]
    Reserved(&'static str),
    /// The name holds a character outside `[a-zA-Z0-9._-]`.
    #[error(
        "topic name holds {ch:?} at byte {index}; only a-z, A-Z, 0-9, '.', '_' and '-' are allowed"
    )]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte index in the name.
        index: usize,
    },
}

impl TopicNameError {
    /// The wire code for this error: always [`ErrorCode::InvalidTopicName`].
    pub const fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidTopicName
    }
}

/// Checks `name` against the topic naming rules (see the module documentation).
///
/// # Errors
/// The first rule the name breaks, as a [`TopicNameError`].
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(TopicNameError::TooLong { len: name.len() });
    }
    match name {
        "." => return Err(TopicNameError::Reserved(".")),
        ".." => return Err(TopicNameError::Reserved("..")),
        _ => {}
    }
    match name
        .char_indices()
        .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')))
    {
        Some((index, ch)) => Err(TopicNameError::InvalidChar { ch, index }),
        None => Ok(()),
    }
}

/// The internal topic holding consumer groups' committed offsets (Kafka's name: Kafka clients
/// see it in Metadata).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Whether a topic is one of the broker's own (its name starts with two underscores, as
/// `__consumer_offsets` does).
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

/// Topic config names, with Kafka's spelling. Values are strings on the wire.
pub mod config {
    /// Roll a new segment when the active one reaches this many bytes.
    pub const SEGMENT_BYTES: &str = "segment.bytes";
    /// Roll a new segment when the active one is this old (ms).
    pub const SEGMENT_MS: &str = "segment.ms";
    /// Delete whole segments whose newest record is older than this (ms); -1 keeps them forever.
    pub const RETENTION_MS: &str = "retention.ms";
    /// Delete the oldest segments while the partition is larger than this; -1 means no limit.
    pub const RETENTION_BYTES: &str = "retention.bytes";
    /// `delete` (retention) or `compact` (keep the newest record per key), or both
    /// comma-separated.
    pub const CLEANUP_POLICY: &str = "cleanup.policy";
    /// How long compaction keeps delete markers (tombstones) (ms).
    pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
    /// Bytes of log between two sparse offset-index entries.
    pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";
    /// Largest record batch the topic accepts, in bytes.
    pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
    /// fsync after this many records (durability without `acks=durable`).
    pub const FLUSH_MESSAGES: &str = "flush.messages";
    /// fsync at least this often (ms).
    pub const FLUSH_MS: &str = "flush.ms";

    /// Every topic config name the protocol defines, sorted.
    pub const ALL: [&str; 10] = [
        CLEANUP_POLICY,
        DELETE_RETENTION_MS,
        FLUSH_MESSAGES,
        FLUSH_MS,
        INDEX_INTERVAL_BYTES,
        MAX_MESSAGE_BYTES,
        RETENTION_BYTES,
        RETENTION_MS,
        SEGMENT_BYTES,
        SEGMENT_MS,
    ];

    /// `cleanup.policy` value: delete old segments by retention.ms / retention.bytes.
    pub const CLEANUP_POLICY_DELETE: &str = "delete";
    /// `cleanup.policy` value: keep the newest record per key.
    pub const CLEANUP_POLICY_COMPACT: &str = "compact";

    /// Whether `name` is a topic config name the protocol defines.
    pub fn is_known(name: &str) -> bool {
        ALL.binary_search(&name).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in ["a", "orders", "orders.v2", "my_topic-1", "...", "_x", "A9"] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name}");
        }
        assert_eq!(validate_topic_name(&"x".repeat(MAX_TOPIC_NAME_LEN)), Ok(()));
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(validate_topic_name("."), Err(TopicNameError::Reserved(".")));
        assert_eq!(
            validate_topic_name(".."),
            Err(TopicNameError::Reserved(".."))
        );
        assert_eq!(
            validate_topic_name(&"x".repeat(250)),
            Err(TopicNameError::TooLong { len: 250 })
        );
        assert_eq!(
            validate_topic_name("a/b"),
            Err(TopicNameError::InvalidChar { ch: '/', index: 1 })
        );
        assert_eq!(
            validate_topic_name("a b"),
            Err(TopicNameError::InvalidChar { ch: ' ', index: 1 })
        );
        assert_eq!(
            validate_topic_name("té"),
            Err(TopicNameError::InvalidChar { ch: 'é', index: 1 })
        );
        // 125 two-byte characters: 250 bytes, too long before the characters are looked at.
        assert!(matches!(
            validate_topic_name(&"é".repeat(125)),
            Err(TopicNameError::TooLong { len: 250 })
        ));
        assert_eq!(
            TopicNameError::Empty.error_code(),
            ErrorCode::InvalidTopicName
        );
    }

    #[test]
    fn internal_topics() {
        assert!(is_internal_topic("__consumer_offsets"));
        assert!(!is_internal_topic("_one_underscore"));
    }

    #[test]
    fn config_names() {
        let mut sorted = config::ALL;
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            config::ALL,
            "ALL must stay sorted for binary search"
        );
        assert!(config::is_known("retention.ms"));
        assert!(config::is_known("segment.bytes"));
        assert!(!config::is_known("retention.millis"));
    }
}
