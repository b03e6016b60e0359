//! The error codes a native response carries, for the per-API error tallies of /metrics.
//!
//! [`error_codes`] walks a response body and reports every non-zero `error_code` it holds, at
//! every level the protocol has one (response, topic, partition, group, ack result), so a caller
//! can count errors by API and code without knowing each message's shape. The match over
//! `response::Body` has no catch-all arm, so a new API does not compile until it is listed here;
//! a test counts the `error_code` fields in `protocol/proto` so a new nested field is not missed
//! either.
//!
//! A request-level failure is not in the body: it is `ResponseHeader.error_code`, on a response
//! that has no body, and the caller reads it from the header.

use strom_protocol::messages::response::Body;

/// Calls `f` once for every non-zero error code anywhere in `body`, outermost first.
pub(crate) fn error_codes(body: &Body, f: &mut impl FnMut(i32)) {
    let mut code = |c: i32| {
        if c != 0 {
            f(c);
        }
    };
    match body {
        Body::ApiVersions(r) => code(r.error_code),
        Body::Metadata(r) => {
            for t in &r.topics {
                code(t.error_code);
                t.partitions.iter().for_each(|p| code(p.error_code));
            }
        }
        Body::CreateTopics(r) => r.topics.iter().for_each(|t| code(t.error_code)),
        Body::DeleteTopics(r) => r.topics.iter().for_each(|t| code(t.error_code)),
        Body::DescribeConfigs(r) => r.topics.iter().for_each(|t| code(t.error_code)),
        Body::AlterConfigs(r) => r.topics.iter().for_each(|t| code(t.error_code)),
        Body::Produce(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        Body::Fetch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        Body::ReplicaFetch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        Body::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        Body::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| code(p.error_code)),
        Body::FindCoordinator(r) => code(r.error_code),
        Body::GroupHeartbeat(r) => code(r.error_code),
        Body::OffsetCommit(r) => {
            code(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
        }
        Body::OffsetFetch(r) => {
            code(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| code(p.error_code));
        }
        Body::InitProducerId(r) => code(r.error_code),
        // A listed group carries no error code.
        Body::ListGroups(_) => {}
        Body::DescribeGroups(r) => r.groups.iter().for_each(|g| code(g.error_code)),
        Body::DeleteGroups(r) => r.results.iter().for_each(|g| code(g.error_code)),
        Body::QueueJoin(r) => code(r.error_code),
        Body::QueueFetch(r) => {
            code(r.error_code);
            r.ack_results.iter().for_each(|a| code(a.error_code));
        }
        Body::QueueAck(r) => {
            code(r.error_code);
            r.results.iter().for_each(|a| code(a.error_code));
        }
        Body::QueueLeave(r) => code(r.error_code),
        Body::DescribeQueueGroups(r) => r.groups.iter().for_each(|g| code(g.error_code)),
        Body::ResetQueueGroup(r) => code(r.error_code),
        Body::Redrive(r) => code(r.error_code),
        Body::DescribeRedrive(r) => code(r.error_code),
        Body::DescribeCluster(r) => code(r.error_code),
    }
}

#[cfg(test)]
mod tests {
    use strom_protocol::ErrorCode;
    use strom_protocol::messages::*;

    use super::*;

    fn codes(body: impl Into<Body>) -> Vec<i32> {
        let mut out = Vec::new();
        error_codes(&body.into(), &mut |c| out.push(c));
        out
    }

    fn c(code: ErrorCode) -> i32 {
        code.into()
    }

    #[test]
    fn produce_reports_only_the_failed_partition() {
        let body = ProduceResponse {
            topics: vec![TopicProduceResponse {
                partitions: vec![
                    PartitionProduceResponse::default(),
                    PartitionProduceResponse {
                        error_code: c(ErrorCode::MessageTooLarge),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        };
        assert_eq!(codes(body), [c(ErrorCode::MessageTooLarge)]);
    }

    #[test]
    fn fetch_reports_each_failed_partition_of_each_topic() {
        let part = |code: ErrorCode| FetchPartitionResponse {
            error_code: c(code),
            ..Default::default()
        };
        let body = FetchResponse {
            topics: vec![
                FetchTopicResponse {
                    partitions: vec![part(ErrorCode::OffsetOutOfRange), part(ErrorCode::None)],
                    ..Default::default()
                },
                FetchTopicResponse {
                    partitions: vec![part(ErrorCode::UnknownTopicOrPartition)],
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            codes(body),
            [
                c(ErrorCode::OffsetOutOfRange),
                c(ErrorCode::UnknownTopicOrPartition)
            ]
        );
    }

    #[test]
    fn top_level_and_nested_codes_are_both_reported() {
        let body = OffsetCommitResponse {
            error_code: c(ErrorCode::CoordinatorNotAvailable),
            topics: vec![OffsetCommitTopicResponse {
                partitions: vec![OffsetCommitPartitionResponse {
                    error_code: c(ErrorCode::IllegalGeneration),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            codes(body),
            [
                c(ErrorCode::CoordinatorNotAvailable),
                c(ErrorCode::IllegalGeneration)
            ]
        );
        let body = FindCoordinatorResponse {
            error_code: c(ErrorCode::CoordinatorNotAvailable),
            ..Default::default()
        };
        assert_eq!(codes(body), [c(ErrorCode::CoordinatorNotAvailable)]);
    }

    #[test]
    fn a_successful_response_reports_nothing() {
        let body = MetadataResponse {
            topics: vec![TopicMetadata {
                partitions: vec![PartitionMetadata::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(codes(body), Vec::<i32>::new());
        assert_eq!(codes(ListGroupsResponse::default()), Vec::<i32>::new());
    }

    /// One body per API with every `error_code` field set (one element in each list).
    fn every_field_failed() -> Vec<Body> {
        let e = 1;
        vec![
            ApiVersionsResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            MetadataResponse {
                topics: vec![TopicMetadata {
                    error_code: e,
                    partitions: vec![PartitionMetadata {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
            CreateTopicsResponse {
                topics: vec![CreatableTopicResult {
                    error_code: e,
                    ..Default::default()
                }],
            }
            .into(),
            DeleteTopicsResponse {
                topics: vec![DeletableTopicResult {
                    error_code: e,
                    ..Default::default()
                }],
            }
            .into(),
            DescribeConfigsResponse {
                topics: vec![DescribeConfigsResult {
                    error_code: e,
                    ..Default::default()
                }],
            }
            .into(),
            AlterConfigsResponse {
                topics: vec![AlterConfigsResult {
                    error_code: e,
                    ..Default::default()
                }],
            }
            .into(),
            ProduceResponse {
                topics: vec![TopicProduceResponse {
                    partitions: vec![PartitionProduceResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .into(),
            FetchResponse {
                topics: vec![FetchTopicResponse {
                    partitions: vec![FetchPartitionResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .into(),
            ListOffsetsResponse {
                topics: vec![ListOffsetsTopicResponse {
                    partitions: vec![ListOffsetsPartitionResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .into(),
            OffsetForLeaderEpochResponse {
                topics: vec![OffsetForLeaderEpochTopicResponse {
                    partitions: vec![OffsetForLeaderEpochPartitionResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .into(),
            FindCoordinatorResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            GroupHeartbeatResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            OffsetCommitResponse {
                error_code: e,
                topics: vec![OffsetCommitTopicResponse {
                    partitions: vec![OffsetCommitPartitionResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
            OffsetFetchResponse {
                error_code: e,
                topics: vec![OffsetFetchTopicResponse {
                    partitions: vec![OffsetFetchPartitionResponse {
                        error_code: e,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
            InitProducerIdResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            ListGroupsResponse {
                groups: vec![ListedGroup::default()],
            }
            .into(),
            DescribeGroupsResponse {
                groups: vec![DescribedGroup {
                    error_code: e,
                    members: vec![GroupMember::default()],
                    offsets: vec![GroupOffset::default()],
                    ..Default::default()
                }],
            }
            .into(),
            DeleteGroupsResponse {
                results: vec![DeletedGroup {
                    error_code: e,
                    ..Default::default()
                }],
            }
            .into(),
            QueueJoinResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            QueueFetchResponse {
                error_code: e,
                ack_results: vec![QueueAckResult {
                    error_code: e,
                    ..Default::default()
                }],
                partitions: vec![QueueFetchPartition {
                    acquired: vec![QueueAcquired::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
            QueueAckResponse {
                error_code: e,
                results: vec![QueueAckResult {
                    error_code: e,
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
            QueueLeaveResponse {
                error_code: e,
                ..Default::default()
            }
            .into(),
            DescribeQueueGroupsResponse {
                groups: vec![DescribedQueueGroup {
                    error_code: e,
                    members: vec![QueueMember::default()],
                    partitions: vec![QueuePartitionState::default()],
                    ..Default::default()
                }],
            }
            .into(),
            ResetQueueGroupResponse {
                error_code: e,
                partitions: vec![QueueResetPartition::default()],
                ..Default::default()
            }
            .into(),
            RedriveResponse {
                error_code: e,
                status: Some(RedriveStatus::default()),
                ..Default::default()
            }
            .into(),
            DescribeRedriveResponse {
                error_code: e,
                status: Some(RedriveStatus::default()),
                ..Default::default()
            }
            .into(),
            DescribeClusterResponse {
                error_code: e,
                brokers: vec![ClusterBroker::default()],
                ..Default::default()
            }
            .into(),
        ]
    }

    /// Every `error_code` field the .proto files declare is reached: the count of codes reported
    /// from [`every_field_failed`] matches the count of declarations. When this fails after a
    /// .proto change, walk the new field in `error_codes` and set it in `every_field_failed`.
    #[test]
    fn every_error_code_field_of_the_protocol_is_walked() {
        let protos = [
            include_str!("../../../protocol/proto/api_versions.proto"),
            include_str!("../../../protocol/proto/cluster.proto"),
            include_str!("../../../protocol/proto/envelope.proto"),
            include_str!("../../../protocol/proto/fetch.proto"),
            include_str!("../../../protocol/proto/group.proto"),
            include_str!("../../../protocol/proto/list_offsets.proto"),
            include_str!("../../../protocol/proto/metadata.proto"),
            include_str!("../../../protocol/proto/produce.proto"),
            include_str!("../../../protocol/proto/producer.proto"),
            include_str!("../../../protocol/proto/queue.proto"),
            include_str!("../../../protocol/proto/topics.proto"),
        ];
        let declared = protos
            .iter()
            .flat_map(|p| p.lines())
            .filter(|l| l.trim_start().starts_with("ErrorCode error_code"))
            .count();
        let bodies = every_field_failed();
        assert_eq!(
            bodies.len(),
            27,
            "one body per response::Body variant (update when an API is added)"
        );
        let keys: std::collections::BTreeSet<_> = bodies.iter().map(|b| b.api_key()).collect();
        assert_eq!(keys.len(), bodies.len(), "one body per API");
        // ResponseHeader's field is not in a body.
        let in_bodies = declared - 1;
        let reported: usize = bodies.iter().map(|b| codes(b.clone()).len()).sum();
        // QueueAckResult is in two bodies (QueueFetch and QueueAck).
        assert_eq!(reported, in_bodies + 1);
    }
}
