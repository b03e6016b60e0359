//! The stable error codes of the wire protocol, and what a client should do about each.
//!
//! [`ErrorCode`] is the Rust face of the `ErrorCode` enum in `proto/error.proto`: prost is told
//! (`extern_path` in `build.rs`) to use this type for that enum, so the generated getters such as
//! `PartitionProduceResponse::error_code()` return it. On the wire a code is a protobuf enum
//! (a varint); in Rust it is `#[repr(i16)]`, so it also fits Kafka-style two-byte fields.
//!
//! Rules, the same as in the `.proto` and in `docs/protocol.md`:
//! - a code's number never changes and is never reused for another meaning;
//! - a gap in the numbers is a retired code;
//! - new codes are appended, so a peer may receive a number it does not know: it reads it as
//!   [`ErrorCode::UnknownServerError`], which is not retriable.
//!
//! A test reads `proto/error.proto` and fails when it and this file disagree.

use std::fmt;

macro_rules! error_codes {
    ($(
        $(#[$meta:meta])*
        $variant:ident = $code:literal, $name:literal, retriable: $retriable:literal, $description:literal;
    )*) => {
        /// A typed error code, carried per request, per topic and per partition.
        ///
        /// See the module documentation for the numbering rules.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(i16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(
                $(#[$meta])*
                $variant = $code,
            )*
        }

        impl ErrorCode {
            /// Every defined code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code for `code`, or `None` when this build does not define it.
            pub const fn from_code(code: i32) -> Option<Self> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }

            /// The name used in `docs/protocol.md` and in logs, e.g. `"OFFSET_OUT_OF_RANGE"`. The
            /// `.proto` name is this with an `ERROR_CODE_` prefix.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// Whether the same request may succeed if the client retries it (after a backoff,
            /// and after refreshing metadata for `UNKNOWN_TOPIC_OR_PARTITION`).
            pub const fn is_retriable(self) -> bool {
                match self {
                    $(ErrorCode::$variant => $retriable,)*
                }
            }

            /// One line saying what the code means.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $description,)*
                }
            }
        }
    };
}

error_codes! {
    /// Success.
    None = 0, "NONE", retriable: false,
        "no error";
    /// The broker hit an unexpected condition; its log says more.
    UnknownServerError = 1, "UNKNOWN_SERVER_ERROR", retriable: false,
        "the broker hit an unexpected error";
    /// A record batch failed its length, magic or CRC-32C check.
    CorruptMessage = 2, "CORRUPT_MESSAGE", retriable: true,
        "a record batch failed its length, magic or CRC check";
    /// The topic or the partition does not exist.
    UnknownTopicOrPartition = 3, "UNKNOWN_TOPIC_OR_PARTITION", retriable: true,
        "the topic or partition does not exist";
    /// The requested offset is outside the partition's log start to log end range.
    OffsetOutOfRange = 4, "OFFSET_OUT_OF_RANGE", retriable: false,
        "the offset is outside the partition's stored range";
    /// A record batch is larger than the topic's `max.message.bytes`.
    MessageTooLarge = 5, "MESSAGE_TOO_LARGE", retriable: false,
        "a record batch is larger than the topic's max.message.bytes";
    /// The request is malformed or inconsistent.
    InvalidRequest = 6, "INVALID_REQUEST", retriable: false,
        "the request is malformed or inconsistent";
    /// The broker does not support this API, or not at this version.
    UnsupportedVersion = 7, "UNSUPPORTED_VERSION", retriable: false,
        "the broker does not support this API at this version";
    /// CreateTopics: a topic with this name exists.
    TopicAlreadyExists = 8, "TOPIC_ALREADY_EXISTS", retriable: false,
        "a topic with this name already exists";
    /// The partition count is not acceptable.
    InvalidPartitions = 9, "INVALID_PARTITIONS", retriable: false,
        "the partition count is not acceptable";
    /// A config name is unknown or its value is not valid.
    InvalidConfig = 10, "INVALID_CONFIG", retriable: false,
        "a config name is unknown or its value is invalid";
    /// The topic name breaks the naming rules (see [`crate::topic::validate_topic_name`]).
    InvalidTopicName = 11, "INVALID_TOPIC_NAME", retriable: false,
        "the topic name breaks the naming rules";
    /// The broker could not complete the request within its timeout.
    RequestTimedOut = 12, "REQUEST_TIMED_OUT", retriable: true,
        "the request timed out on the broker";
    /// The partition's storage failed (I/O error, full disk, offline log).
    StorageError = 13, "STORAGE_ERROR", retriable: true,
        "the partition's storage failed";
    /// A record batch is well formed but not acceptable (e.g. a control batch from a producer).
    InvalidRecord = 14, "INVALID_RECORD", retriable: false,
        "a record batch is well formed but not acceptable";
    /// The broker's policy forbids the operation.
    PolicyViolation = 15, "POLICY_VIOLATION", retriable: false,
        "the broker's policy forbids the operation";
    /// The broker is overloaded or the client is over a quota; retry after a backoff.
    Busy = 16, "BUSY", retriable: true,
        "the broker is busy or the client is over a quota";
    /// Idempotent produce: the sequence number is not the next one expected.
    OutOfOrderSequence = 17, "OUT_OF_ORDER_SEQUENCE", retriable: false,
        "the batch's sequence number is not the next one expected";
    /// Idempotent produce: the batch was already appended (the producer treats it as success).
    DuplicateSequence = 18, "DUPLICATE_SEQUENCE", retriable: false,
        "the batch was already appended";
    /// Idempotent produce: the broker has no state for this producer id.
    UnknownProducerId = 19, "UNKNOWN_PRODUCER_ID", retriable: false,
        "the broker has no state for this producer id";
    /// Groups: the generation is not the group's current generation.
    IllegalGeneration = 20, "ILLEGAL_GENERATION", retriable: false,
        "the generation is not the group's current one";
    /// Groups: the member id is not a member of the group.
    UnknownMemberId = 21, "UNKNOWN_MEMBER_ID", retriable: false,
        "the member id is not a member of the group";
    /// Groups: the group is rebalancing; the member must rejoin.
    RebalanceInProgress = 22, "REBALANCE_IN_PROGRESS", retriable: false,
        "the group is rebalancing; rejoin it";
    /// Groups: the group coordinator is not available yet.
    CoordinatorNotAvailable = 23, "COORDINATOR_NOT_AVAILABLE", retriable: true,
        "the group coordinator is not available";
    /// Groups: the group does not exist.
    GroupIdNotFound = 24, "GROUP_ID_NOT_FOUND", retriable: false,
        "the group does not exist";
    /// Groups: the group still has members, so it cannot be deleted.
    NonEmptyGroup = 25, "NON_EMPTY_GROUP", retriable: false,
        "the group still has members";
    /// Idempotent produce: a newer epoch of this producer id exists.
    ProducerFenced = 26, "PRODUCER_FENCED", retriable: false,
        "a newer epoch of this producer exists; this producer is fenced";
    /// Groups (Kafka's classic protocol): rejoin with the member id the coordinator gave.
    MemberIdRequired = 27, "MEMBER_ID_REQUIRED", retriable: false,
        "rejoin the group with the member id the coordinator gave";
    /// Groups: the member's protocols match none of the group's other members'.
    InconsistentGroupProtocol = 28, "INCONSISTENT_GROUP_PROTOCOL", retriable: false,
        "the member's protocols match none of the group's members'";
    /// Groups: another member with the same group instance id replaced this one.
    FencedInstanceId = 29, "FENCED_INSTANCE_ID", retriable: false,
        "another member with the same group instance id replaced this one";
    /// Groups: the session timeout is outside the broker's bounds.
    InvalidSessionTimeout = 30, "INVALID_SESSION_TIMEOUT", retriable: false,
        "the session timeout is outside the broker's bounds";
    /// Groups: the group's members are subscribed to the topic, so its offsets stay.
    GroupSubscribedToTopic = 31, "GROUP_SUBSCRIBED_TO_TOPIC", retriable: false,
        "the group's members are subscribed to the topic";
    /// Queue groups: the record is not held by this member at this attempt.
    InvalidRecordState = 32, "INVALID_RECORD_STATE", retriable: false,
        "the record is not held by this member at this attempt";
    /// Produce and fetch: this broker does not lead the partition; refresh metadata and send
    /// to its leader.
    NotLeaderOrFollower = 33, "NOT_LEADER_OR_FOLLOWER", retriable: true,
        "this broker does not lead the partition; refresh metadata";
    /// The partition has no leader right now (its leader's broker is down).
    LeaderNotAvailable = 34, "LEADER_NOT_AVAILABLE", retriable: true,
        "the partition has no leader right now";
    /// Groups: another broker coordinates this group (it leads the group's partition of
    /// `__consumer_offsets`); find the coordinator again and send there.
    NotCoordinator = 35, "NOT_COORDINATOR", retriable: true,
        "this broker is not the group's coordinator; find the coordinator again";
    /// Groups: this broker has just become the group's coordinator and is still loading the
    /// group's committed offsets; retry after a backoff.
    CoordinatorLoadInProgress = 36, "COORDINATOR_LOAD_IN_PROGRESS", retriable: true,
        "the coordinator is still loading the group's offsets";
    /// Topics: the replication factor is not one the cluster can give.
    InvalidReplicationFactor = 37, "INVALID_REPLICATION_FACTOR", retriable: false,
        "the replication factor is not one the cluster can give";
    /// Produce with acks=all: fewer in-sync replicas than the topic's `min.insync.replicas`;
    /// nothing was appended. Retry after a backoff.
    NotEnoughReplicas = 38, "NOT_ENOUGH_REPLICAS", retriable: true,
        "fewer in-sync replicas than min.insync.replicas; nothing was appended";
    /// Produce with acks=all: the batches were appended, but the in-sync replicas fell below
    /// `min.insync.replicas` before they were replicated; they may or may not be kept. An
    /// idempotent producer retries safely.
    NotEnoughReplicasAfterAppend = 39, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", retriable: true,
        "appended, but the in-sync replicas fell below min.insync.replicas before replication";
    /// The request named an older leader epoch than the partition's: refresh metadata.
    FencedLeaderEpoch = 40, "FENCED_LEADER_EPOCH", retriable: true,
        "the request's leader epoch is older than the partition's; refresh metadata";
    /// The request named a newer leader epoch than this broker knows: it has not caught up with
    /// the metadata yet; retry after a backoff.
    UnknownLeaderEpoch = 41, "UNKNOWN_LEADER_EPOCH", retriable: true,
        "the request's leader epoch is newer than this broker knows; retry";
    /// A new leader's high watermark has not reached the start of its epoch yet, so the latest
    /// offset it could answer may be lower than one already acknowledged; retry.
    OffsetNotAvailable = 42, "OFFSET_NOT_AVAILABLE", retriable: true,
        "the new leader's high watermark is not known yet; retry";
}

impl ErrorCode {
    /// The code's number, as written in two-byte fields.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// `true` for [`ErrorCode::None`].
    pub const fn is_ok(self) -> bool {
        matches!(self, ErrorCode::None)
    }

    /// `Ok(())` for [`ErrorCode::None`], `Err(self)` otherwise.
    pub const fn into_result(self) -> Result<(), ErrorCode> {
        if self.is_ok() { Ok(()) } else { Err(self) }
    }
}

/// An absent error-code field means success.
impl Default for ErrorCode {
    fn default() -> Self {
        ErrorCode::None
    }
}

/// Reads a code off the wire. A number this build does not define (sent by a newer peer)
/// becomes [`ErrorCode::UnknownServerError`]; use [`ErrorCode::from_code`] to tell them apart.
///
/// Being infallible, this also gives `TryFrom<i32>`, which prost's generated getters use: an
/// unknown number therefore reads as an error, never as [`ErrorCode::None`].
impl From<i32> for ErrorCode {
    fn from(code: i32) -> Self {
        ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownServerError)
    }
}

impl From<ErrorCode> for i32 {
    fn from(code: ErrorCode) -> Self {
        i32::from(code.code())
    }
}

impl From<ErrorCode> for i16 {
    fn from(code: ErrorCode) -> Self {
        code.code()
    }
}

/// `NAME (number): description`, e.g. `OFFSET_OUT_OF_RANGE (4): the offset is outside ...`.
impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.name(),
            self.code(),
            self.description()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, number)` of every value in `proto/error.proto`.
    fn proto_codes() -> Vec<(String, i32)> {
        include_str!("../proto/error.proto")
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("ERROR_CODE_"))
            .map(|line| {
                let (name, number) = line.trim_end_matches(';').split_once('=').unwrap();
                (
                    name.trim().trim_start_matches("ERROR_CODE_").to_string(),
                    number.trim().parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn rust_view_matches_the_proto_enum() {
        let from_proto = proto_codes();
        let from_rust: Vec<(String, i32)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.name().to_string(), i32::from(*c)))
            .collect();
        assert_eq!(from_rust, from_proto);
    }

    #[test]
    fn numbers_are_stable() {
        // Pinned: changing any of these breaks every deployed client.
        assert_eq!(ErrorCode::None.code(), 0);
        assert_eq!(ErrorCode::CorruptMessage.code(), 2);
        assert_eq!(ErrorCode::OffsetOutOfRange.code(), 4);
        assert_eq!(ErrorCode::UnsupportedVersion.code(), 7);
        assert_eq!(ErrorCode::StorageError.code(), 13);
        assert_eq!(ErrorCode::Busy.code(), 16);
        assert_eq!(ErrorCode::NonEmptyGroup.code(), 25);
        assert_eq!(ErrorCode::NotCoordinator.code(), 35);
        assert_eq!(ErrorCode::CoordinatorLoadInProgress.code(), 36);
        for pair in ErrorCode::ALL.windows(2) {
            assert!(pair[0].code() < pair[1].code(), "ALL is in numeric order");
        }
    }

    #[test]
    fn codes_round_trip_and_unknown_numbers_are_errors() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.into()), Some(code));
            assert_eq!(ErrorCode::from(i32::from(code)), code);
        }
        assert_eq!(ErrorCode::from_code(9999), None);
        assert_eq!(ErrorCode::from(9999), ErrorCode::UnknownServerError);
        assert_eq!(ErrorCode::from(-1), ErrorCode::UnknownServerError);
        assert!(!ErrorCode::from(9999).is_retriable());
        assert_eq!(ErrorCode::default(), ErrorCode::None);
    }

    #[test]
    fn retriable_and_display() {
        assert!(ErrorCode::RequestTimedOut.is_retriable());
        assert!(ErrorCode::Busy.is_retriable());
        assert!(ErrorCode::NotCoordinator.is_retriable());
        assert!(ErrorCode::CoordinatorLoadInProgress.is_retriable());
        assert!(!ErrorCode::None.is_retriable());
        assert!(!ErrorCode::OffsetOutOfRange.is_retriable());
        assert_eq!(ErrorCode::None.into_result(), Ok(()));
        assert_eq!(ErrorCode::Busy.into_result(), Err(ErrorCode::Busy));
        assert_eq!(
            ErrorCode::OffsetOutOfRange.to_string(),
            "OFFSET_OUT_OF_RANGE (4): the offset is outside the partition's stored range"
        );
    }
}
