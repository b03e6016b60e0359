//! The error codes a Kafka response carries, for the per-API error tallies of /metrics.
//!
//! [`ErrorCodes`] is implemented for every response message this front-end encodes with
//! `Req::respond` (and ConsumerGroupDescribe, not served yet): it reports each non-zero
//! `error_code` at every level the message has one (response, topic, partition, group, member,
//! coordinator), so `respond` can count errors by API and code without knowing each message's
//! shape. Fields that only some versions encode (the
//! top-level Metadata code, OffsetFetch's per-group shape, batched FindCoordinator) are walked
//! whatever the version: a handler leaves the ones its version lacks at their default, zero.
//!
//! Two answers do not go through `respond`: Fetch, encoded by hand, collects its partitions'
//! codes itself (`fetch`), and the whole-request `UNSUPPORTED_VERSION` answer carries its code
//! (`unsupported` in `mod.rs`).

use kafka_protocol::messages::{
    AlterConfigsResponse, ApiVersionsResponse, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatResponse, CreatePartitionsResponse, CreateTopicsResponse,
    DeleteGroupsResponse, DeleteRecordsResponse, DeleteTopicsResponse, DescribeClusterResponse,
    DescribeConfigsResponse, DescribeGroupsResponse, FindCoordinatorResponse, HeartbeatResponse,
    IncrementalAlterConfigsResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse,
    ListGroupsResponse, ListOffsetsResponse, MetadataResponse, OffsetCommitResponse,
    OffsetDeleteResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse, ProduceResponse,
    SyncGroupResponse,
};

/// A response message whose error codes can be listed.
pub(crate) trait ErrorCodes {
    /// Calls `f` once for every non-zero error code anywhere in the message, outermost first.
    fn error_codes(&self, f: &mut dyn FnMut(i16));
}

/// `Type => |r, code| walk;` implements [`ErrorCodes`] for `Type`: `walk` reads the message as
/// `r` and passes each error code field to `code`, which drops the zeros.
macro_rules! error_codes {
    ($($ty:ty => |$r:ident, $code:ident| $walk:expr;)*) => {$(
        impl ErrorCodes for $ty {
            fn error_codes(&self, f: &mut dyn FnMut(i16)) {
                let $r = self;
                let mut $code = |c: i16| {
                    if c != 0 {
                        f(c);
                    }
                };
                $walk
            }
        }
    )*};
}

error_codes! {
    ApiVersionsResponse => |r, code| code(r.error_code);
    MetadataResponse => |r, code| {
        code(r.error_code);
        for t in &r.topics {
            code(t.error_code);
            t.partitions.iter().for_each(|p| code(p.error_code));
        }
    };
    FindCoordinatorResponse => |r, code| {
        code(r.error_code);
        r.coordinators.iter().for_each(|c| code(c.error_code));
    };
    ProduceResponse => |r, code| r
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .for_each(|p| code(p.error_code));
    ListOffsetsResponse => |r, code| r
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| code(p.error_code));
    InitProducerIdResponse => |r, code| code(r.error_code);
    CreateTopicsResponse => |r, code| {
        for t in &r.topics {
            code(t.error_code);
            code(t.topic_config_error_code);
        }
    };
    DeleteTopicsResponse => |r, code| r.responses.iter().for_each(|t| code(t.error_code));
    CreatePartitionsResponse => |r, code| r.results.iter().for_each(|t| code(t.error_code));
    DeleteRecordsResponse => |r, code| r
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| code(p.error_code));
    OffsetDeleteResponse => |r, code| {
        code(r.error_code);
        r.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code));
    };
    JoinGroupResponse => |r, code| code(r.error_code);
    SyncGroupResponse => |r, code| code(r.error_code);
    HeartbeatResponse => |r, code| code(r.error_code);
    LeaveGroupResponse => |r, code| {
        code(r.error_code);
        r.members.iter().for_each(|m| code(m.error_code));
    };
    OffsetCommitResponse => |r, code| r
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| code(p.error_code));
    // Versions up to 7 answer one group in `topics`; 8 and later answer each group in `groups`.
    OffsetFetchResponse => |r, code| {
        code(r.error_code);
        r.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code));
        for g in &r.groups {
            code(g.error_code);
            g.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
        }
    };
    ConsumerGroupHeartbeatResponse => |r, code| code(r.error_code);
    ConsumerGroupDescribeResponse => |r, code| r.groups.iter().for_each(|g| code(g.error_code));
    ListGroupsResponse => |r, code| code(r.error_code);
    DescribeGroupsResponse => |r, code| r.groups.iter().for_each(|g| code(g.error_code));
    DeleteGroupsResponse => |r, code| r.results.iter().for_each(|g| code(g.error_code));
    DescribeConfigsResponse => |r, code| r.results.iter().for_each(|c| code(c.error_code));
    AlterConfigsResponse => |r, code| r.responses.iter().for_each(|c| code(c.error_code));
    IncrementalAlterConfigsResponse => |r, code| {
        r.responses.iter().for_each(|c| code(c.error_code));
    };
    DescribeClusterResponse => |r, code| code(r.error_code);
    OffsetForLeaderEpochResponse => |r, code| r
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| code(p.error_code));
}

#[cfg(test)]
mod tests {
    use kafka_protocol::ResponseError;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::leave_group_response::MemberResponse;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    use super::*;

    fn codes(msg: &impl ErrorCodes) -> Vec<i16> {
        let mut out = Vec::new();
        msg.error_codes(&mut |c| out.push(c));
        out
    }

    const UNKNOWN_TOPIC: i16 = ResponseError::UnknownTopicOrPartition.code();
    const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
    const UNKNOWN_MEMBER: i16 = ResponseError::UnknownMemberId.code();

    #[test]
    fn produce_reports_only_the_failed_partition() {
        let msg = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(vec![
                PartitionProduceResponse::default().with_index(0),
                PartitionProduceResponse::default()
                    .with_index(1)
                    .with_error_code(ResponseError::MessageTooLarge.code()),
            ]),
        ]);
        assert_eq!(codes(&msg), [ResponseError::MessageTooLarge.code()]);
    }

    #[test]
    fn metadata_reports_topic_and_partition_codes() {
        let msg = MetadataResponse::default().with_topics(vec![
            MetadataResponseTopic::default().with_error_code(UNKNOWN_TOPIC),
            MetadataResponseTopic::default().with_partitions(vec![
                MetadataResponsePartition::default(),
                MetadataResponsePartition::default()
                    .with_error_code(ResponseError::LeaderNotAvailable.code()),
            ]),
        ]);
        assert_eq!(
            codes(&msg),
            [UNKNOWN_TOPIC, ResponseError::LeaderNotAvailable.code()]
        );
    }

    #[test]
    fn offset_fetch_reports_both_shapes() {
        let old = OffsetFetchResponse::default().with_topics(vec![
            OffsetFetchResponseTopic::default().with_partitions(vec![
                OffsetFetchResponsePartition::default().with_error_code(UNKNOWN_TOPIC),
            ]),
        ]);
        assert_eq!(codes(&old), [UNKNOWN_TOPIC]);
        let grouped = OffsetFetchResponse::default().with_groups(vec![
            OffsetFetchResponseGroup::default().with_error_code(NOT_COORDINATOR),
            OffsetFetchResponseGroup::default().with_topics(vec![
                OffsetFetchResponseTopics::default().with_partitions(vec![
                    OffsetFetchResponsePartitions::default().with_error_code(UNKNOWN_TOPIC),
                ]),
            ]),
        ]);
        assert_eq!(codes(&grouped), [NOT_COORDINATOR, UNKNOWN_TOPIC]);
    }

    #[test]
    fn single_and_batched_find_coordinator() {
        let single = FindCoordinatorResponse::default().with_error_code(NOT_COORDINATOR);
        assert_eq!(codes(&single), [NOT_COORDINATOR]);
        let batched = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default(),
            Coordinator::default().with_error_code(NOT_COORDINATOR),
        ]);
        assert_eq!(codes(&batched), [NOT_COORDINATOR]);
    }

    #[test]
    fn leave_group_reports_the_response_and_each_member() {
        let msg = LeaveGroupResponse::default()
            .with_error_code(NOT_COORDINATOR)
            .with_members(vec![
                MemberResponse::default(),
                MemberResponse::default().with_error_code(UNKNOWN_MEMBER),
            ]);
        assert_eq!(codes(&msg), [NOT_COORDINATOR, UNKNOWN_MEMBER]);
    }

    #[test]
    fn a_successful_response_reports_nothing() {
        assert_eq!(codes(&HeartbeatResponse::default()), Vec::<i16>::new());
        assert_eq!(
            codes(&crate::kafka::versions::api_versions(0)),
            Vec::<i16>::new()
        );
    }
}
