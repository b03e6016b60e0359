//! strom's error codes as Kafka's: the core reports [`ErrorCode`]s (strom's own numbering, see
//! `protocol/src/error_code.rs`); Kafka clients get the Kafka code with the same meaning.

use kafka_protocol::ResponseError as K;
use strom_protocol::ErrorCode;

/// The Kafka error code for `code` (0 for success).
pub(crate) fn kafka_code(code: ErrorCode) -> i16 {
    let k = match code {
        ErrorCode::None => return 0,
        ErrorCode::CorruptMessage => K::CorruptMessage,
        ErrorCode::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::MessageTooLarge => K::MessageTooLarge,
        ErrorCode::InvalidRequest => K::InvalidRequest,
        ErrorCode::UnsupportedVersion => K::UnsupportedVersion,
        ErrorCode::TopicAlreadyExists => K::TopicAlreadyExists,
        ErrorCode::InvalidPartitions => K::InvalidPartitions,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::InvalidTopicName => K::InvalidTopicException,
        ErrorCode::RequestTimedOut => K::RequestTimedOut,
        ErrorCode::StorageError => K::KafkaStorageError,
        ErrorCode::InvalidRecord => K::InvalidRecord,
        ErrorCode::PolicyViolation => K::PolicyViolation,
        ErrorCode::Busy => K::ThrottlingQuotaExceeded,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        ErrorCode::DuplicateSequence => K::DuplicateSequenceNumber,
        ErrorCode::UnknownProducerId => K::UnknownProducerId,
        ErrorCode::IllegalGeneration => K::IllegalGeneration,
        ErrorCode::UnknownMemberId => K::UnknownMemberId,
        ErrorCode::RebalanceInProgress => K::RebalanceInProgress,
        ErrorCode::CoordinatorNotAvailable => K::CoordinatorNotAvailable,
        ErrorCode::GroupIdNotFound => K::GroupIdNotFound,
        ErrorCode::NonEmptyGroup => K::NonEmptyGroup,
        // An idempotent producer with an old epoch: Kafka answers a produce with this code.
        ErrorCode::ProducerFenced => K::InvalidProducerEpoch,
        ErrorCode::MemberIdRequired => K::MemberIdRequired,
        ErrorCode::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        ErrorCode::FencedInstanceId => K::FencedInstanceId,
        ErrorCode::InvalidSessionTimeout => K::InvalidSessionTimeout,
        ErrorCode::GroupSubscribedToTopic => K::GroupSubscribedToTopic,
        ErrorCode::InvalidRecordState => K::InvalidRecordState,
        ErrorCode::NotLeaderOrFollower => K::NotLeaderOrFollower,
        ErrorCode::LeaderNotAvailable => K::LeaderNotAvailable,
        ErrorCode::NotCoordinator => K::NotCoordinator,
        ErrorCode::CoordinatorLoadInProgress => K::CoordinatorLoadInProgress,
        ErrorCode::InvalidReplicationFactor => K::InvalidReplicationFactor,
        ErrorCode::NotEnoughReplicas => K::NotEnoughReplicas,
        ErrorCode::NotEnoughReplicasAfterAppend => K::NotEnoughReplicasAfterAppend,
        ErrorCode::FencedLeaderEpoch => K::FencedLeaderEpoch,
        ErrorCode::UnknownLeaderEpoch => K::UnknownLeaderEpoch,
        ErrorCode::OffsetNotAvailable => K::OffsetNotAvailable,
        _ => K::UnknownServerError,
    };
    k.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strom_code_has_a_kafka_meaning() {
        for &c in ErrorCode::ALL {
            let k = kafka_code(c);
            if c == ErrorCode::None {
                assert_eq!(k, 0);
            } else {
                assert_ne!(k, 0, "{c:?} must not map to success");
            }
            if c != ErrorCode::UnknownServerError {
                assert_ne!(k, K::UnknownServerError.code(), "{c:?} has no Kafka code");
            }
        }
        assert_eq!(kafka_code(ErrorCode::OffsetOutOfRange), 1);
        assert_eq!(kafka_code(ErrorCode::UnknownTopicOrPartition), 3);
        assert_eq!(kafka_code(ErrorCode::CoordinatorLoadInProgress), 14);
        assert_eq!(kafka_code(ErrorCode::CoordinatorNotAvailable), 15);
        assert_eq!(kafka_code(ErrorCode::NotCoordinator), 16);
    }
}
