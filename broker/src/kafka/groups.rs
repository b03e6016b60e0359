//! Consumer groups over the Kafka protocol: the classic protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) that Kafka consumers speak by default, KIP-848's
//! ConsumerGroupHeartbeat, and OffsetCommit/OffsetFetch on the one offset table the native
//! groups use. Membership logic is the core's (`core::groups::classic`); this module converts,
//! and decodes the "consumer" protocol's subscriptions and assignments so `strom groups
//! describe` can show who owns what. Every request is served by the group's coordinator only
//! (the leader of its `__consumer_offsets` partition); elsewhere it gets NOT_COORDINATOR,
//! COORDINATOR_LOAD_IN_PROGRESS or COORDINATOR_NOT_AVAILABLE, and the client asks
//! FindCoordinator again. A request that may start a group (JoinGroup, ConsumerGroupHeartbeat,
//! OffsetCommit) creates `__consumer_offsets` first if it does not exist yet.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as CghAssignment, TopicPartitions as CghTopicPartitions,
};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ConsumerProtocolAssignment,
    ConsumerProtocolSubscription, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use strom_protocol::ErrorCode;
use uuid::Uuid;

use super::{Kafka, KafkaResponse, Outcome, Req, kafka_code};
use crate::core::Failure;
use crate::core::groups::Heartbeat;
use crate::core::groups::classic::{JoinRequest, JoinResult};
use crate::core::groups::offsets::{CommitOffset, Committer};
use crate::net::Started;

fn text(s: Option<String>) -> Option<StrBytes> {
    s.map(StrBytes::from_string)
}

fn code_of<T>(r: &Result<T, Failure>) -> i16 {
    match r {
        Ok(_) => 0,
        Err((code, _)) => kafka_code(*code),
    }
}

/// The topics a "consumer" protocol subscription names (empty if it does not decode).
fn subscribed_topics(metadata: &Bytes) -> BTreeSet<String> {
    let mut b = metadata.clone();
    if b.remaining() < 2 {
        return BTreeSet::new();
    }
    let version = b.get_i16();
    ConsumerProtocolSubscription::decode(&mut b, version.min(3))
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// The partitions a "consumer" protocol assignment gives (empty if it does not decode).
fn assigned_partitions(assignment: &Bytes) -> BTreeSet<(String, i32)> {
    let mut b = assignment.clone();
    if b.remaining() < 2 {
        return BTreeSet::new();
    }
    let version = b.get_i16();
    ConsumerProtocolAssignment::decode(&mut b, version.min(3))
        .map(|a| {
            a.assigned_partitions
                .iter()
                .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.0.to_string(), p)))
                .collect()
        })
        .unwrap_or_default()
}

impl Kafka {
    pub(super) async fn join_group(
        &self,
        req: Req,
        m: JoinGroupRequest,
        peer: SocketAddr,
    ) -> Outcome {
        let consumer = m.protocol_type.as_str() == "consumer";
        let topics = if consumer {
            m.protocols
                .first()
                .map(|p| subscribed_topics(&p.metadata))
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        let session_ms = u32::try_from(m.session_timeout_ms).unwrap_or(0);
        // Version 0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance_ms = if req.version >= 1 {
            u32::try_from(m.rebalance_timeout_ms).unwrap_or(0)
        } else {
            session_ms
        };
        let join = JoinRequest {
            group_id: m.group_id.0.to_string(),
            member_id: m.member_id.to_string(),
            instance_id: m.group_instance_id.map(|s| s.to_string()),
            client_id: req.client_id.clone(),
            client_host: format!("/{}", peer.ip()),
            session_ms,
            rebalance_ms,
            protocol_type: m.protocol_type.to_string(),
            protocols: m
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            topics,
            require_known_member: req.version >= 4,
        };
        let ready = match self.core.offsets_topic_ready().await {
            Ok(()) => self.core.consumer_group_may_start(&join.group_id).await,
            Err(failure) => Err(failure),
        };
        let rx = match ready {
            Ok(()) => self.core.groups.join(join),
            Err(failure) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(JoinResult {
                    error: Some(failure),
                    generation: -1,
                    member_id: join.member_id,
                    ..JoinResult::default()
                });
                rx
            }
        };
        Ok(Started::Pending(Box::pin(async move {
            let result = rx.await.unwrap_or_else(|_| JoinResult {
                error: Some((
                    ErrorCode::CoordinatorNotAvailable,
                    "the coordinator dropped the join".into(),
                )),
                generation: -1,
                ..JoinResult::default()
            });
            let code = result.error.as_ref().map_or(0, |(c, _)| kafka_code(*c));
            // KIP-814's field exists from version 9.
            let skip = result.skip_assignment && req.version >= 9;
            let resp = JoinGroupResponse::default()
                .with_skip_assignment(skip)
                .with_error_code(code)
                .with_generation_id(result.generation)
                .with_protocol_type(text(result.protocol_type))
                .with_protocol_name(text(result.protocol))
                .with_leader(StrBytes::from_string(result.leader))
                .with_member_id(StrBytes::from_string(result.member_id))
                .with_members(
                    result
                        .members
                        .into_iter()
                        .map(|(id, instance, metadata)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(StrBytes::from_string(id))
                                .with_group_instance_id(text(instance))
                                .with_metadata(metadata)
                        })
                        .collect(),
                );
            respond_or_log(&req, &resp)
        })))
    }

    pub(super) fn sync_group(&self, req: Req, m: SyncGroupRequest) -> Outcome {
        let assignments = m
            .assignments
            .into_iter()
            .map(|a| {
                let tps = assigned_partitions(&a.assignment);
                (a.member_id.to_string(), a.assignment, tps)
            })
            .collect();
        let rx = self.core.groups.sync(
            &m.group_id.0,
            m.generation_id,
            &m.member_id,
            m.group_instance_id.as_deref(),
            assignments,
        );
        Ok(Started::Pending(Box::pin(async move {
            let result = rx.await.unwrap_or_else(|_| {
                Err((
                    ErrorCode::CoordinatorNotAvailable,
                    "the coordinator dropped the sync".into(),
                ))
            });
            let resp = match result {
                Ok((protocol_type, protocol, assignment)) => SyncGroupResponse::default()
                    .with_protocol_type(text(protocol_type))
                    .with_protocol_name(text(protocol))
                    .with_assignment(assignment),
                Err((code, _)) => SyncGroupResponse::default().with_error_code(kafka_code(code)),
            };
            respond_or_log(&req, &resp)
        })))
    }

    pub(super) fn heartbeat(
        &self,
        req: &Req,
        m: HeartbeatRequest,
    ) -> Result<KafkaResponse, String> {
        let r = self.core.groups.classic_heartbeat(
            &m.group_id.0,
            m.generation_id,
            &m.member_id,
            m.group_instance_id.as_deref(),
        );
        req.respond(&HeartbeatResponse::default().with_error_code(code_of(&r)))
    }

    pub(super) fn leave_group(
        &self,
        req: &Req,
        m: LeaveGroupRequest,
    ) -> Result<KafkaResponse, String> {
        let leaving: Vec<(String, Option<String>)> = if req.version >= 3 {
            m.members
                .iter()
                .map(|l| {
                    (
                        l.member_id.to_string(),
                        l.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(m.member_id.to_string(), None)]
        };
        let results = match self.core.groups.leave(&m.group_id.0, &leaving) {
            Ok(results) => results,
            // Not this broker's group: the whole request fails, with no member results.
            Err((code, _)) => {
                return req
                    .respond(&LeaveGroupResponse::default().with_error_code(kafka_code(code)));
            }
        };
        let resp = if req.version >= 3 {
            LeaveGroupResponse::default().with_members(
                leaving
                    .into_iter()
                    .zip(&results)
                    .map(|((id, instance), r)| {
                        MemberResponse::default()
                            .with_member_id(StrBytes::from_string(id))
                            .with_group_instance_id(text(instance))
                            .with_error_code(code_of(r))
                    })
                    .collect(),
            )
        } else {
            LeaveGroupResponse::default().with_error_code(results.first().map_or(0, code_of))
        };
        req.respond(&resp)
    }

    pub(super) async fn offset_commit(
        &self,
        req: &Req,
        m: OffsetCommitRequest,
    ) -> Result<KafkaResponse, String> {
        let who = if m.member_id.is_empty() && m.generation_id_or_member_epoch < 0 {
            Committer::Admin
        } else {
            Committer::Member {
                id: m.member_id.to_string(),
                epoch: m.generation_id_or_member_epoch,
            }
        };
        let names: Vec<TopicName> = m.topics.iter().map(|t| t.name.clone()).collect();
        let offsets = m
            .topics
            .into_iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .into_iter()
                    .map(|p| CommitOffset {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        metadata: p.committed_metadata.map(|s| s.to_string()),
                    })
                    .collect();
                (t.name.0.to_string(), parts)
            })
            .collect::<Vec<(String, Vec<CommitOffset>)>>();
        let core = &self.core;
        let asked: Vec<Vec<i32>> = offsets
            .iter()
            .map(|(_, ps)| ps.iter().map(|p| p.partition).collect())
            .collect();
        let result = match core.offsets_topic_ready().await {
            Ok(()) => {
                core.groups
                    .commit(&core.catalog(), &m.group_id.0, who, offsets)
                    .await
            }
            Err(failure) => Err(failure),
        };
        let topics = match result {
            Ok(results) => results
                .into_iter()
                .zip(names)
                .map(|((_, parts), name)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, code)| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(kafka_code(code))
                                })
                                .collect(),
                        )
                })
                .collect(),
            // A whole-request failure is every partition's error.
            Err((code, _)) => names
                .into_iter()
                .zip(asked)
                .map(|(name, parts)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(kafka_code(code))
                                })
                                .collect(),
                        )
                })
                .collect(),
        };
        req.respond(&OffsetCommitResponse::default().with_topics(topics))
    }

    pub(super) fn offset_fetch(
        &self,
        req: &Req,
        m: OffsetFetchRequest,
    ) -> Result<KafkaResponse, String> {
        let groups = &self.core.groups;
        if req.version >= 8 {
            // Version 8 asks for several groups at once, each with its own error.
            let out = m
                .groups
                .into_iter()
                .map(|g| {
                    let wanted = g.topics.map(|ts| {
                        ts.into_iter()
                            .map(|t| (t.name.0.to_string(), t.partition_indexes))
                            .collect()
                    });
                    let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                    match groups.fetch(&g.group_id.0, wanted) {
                        Err((code, _)) => out.with_error_code(kafka_code(code)),
                        Ok(fetched) => out.with_topics(
                            fetched
                                .into_iter()
                                .map(|(name, parts)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(StrBytes::from_string(name)))
                                        .with_partitions(
                                            parts
                                                .into_iter()
                                                .map(|(p, offset, meta)| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p)
                                                        .with_committed_offset(offset)
                                                        .with_committed_leader_epoch(-1)
                                                        .with_metadata(text(meta))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            return req.respond(&OffsetFetchResponse::default().with_groups(out));
        }
        let wanted: Option<Vec<(String, Vec<i32>)>> = m.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let group: GroupId = m.group_id;
        let fetched = match groups.fetch(&group.0, wanted.clone()) {
            Ok(fetched) => fetched,
            // From version 2 the response has a top-level error; before, each partition asked
            // for carries it.
            Err((code, _)) if req.version >= 2 => {
                return req
                    .respond(&OffsetFetchResponse::default().with_error_code(kafka_code(code)));
            }
            Err((code, _)) => {
                let topics = wanted
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_error_code(kafka_code(code))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return req.respond(&OffsetFetchResponse::default().with_topics(topics));
            }
        };
        let topics = fetched
            .into_iter()
            .map(|(name, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, offset, meta)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(text(meta))
                            })
                            .collect(),
                    )
            })
            .collect();
        req.respond(&OffsetFetchResponse::default().with_topics(topics))
    }
}

fn respond_or_log<M: kafka_protocol::protocol::Encodable + super::codes::ErrorCodes>(
    req: &Req,
    msg: &M,
) -> Option<KafkaResponse> {
    match req.respond(msg) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a group response");
            None
        }
    }
}

impl Kafka {
    /// ConsumerGroupHeartbeat (KIP-848, `group.protocol=consumer`): the same coordinator as
    /// strom's own GroupHeartbeat; topics travel as ids, which this converts.
    pub(super) async fn consumer_group_heartbeat(
        &self,
        req: &Req,
        m: ConsumerGroupHeartbeatRequest,
    ) -> Result<KafkaResponse, String> {
        // A join may start the group: `__consumer_offsets` must exist (the heartbeat answers
        // COORDINATOR_NOT_AVAILABLE when it cannot be created).
        if m.member_epoch == 0 {
            let _ = self.core.offsets_topic_ready().await;
            if let Err((code, msg)) = self.core.consumer_group_may_start(&m.group_id.0).await {
                let resp = ConsumerGroupHeartbeatResponse::default()
                    .with_member_id(Some(m.member_id.clone()))
                    .with_member_epoch(-1)
                    .with_error_code(kafka_code(code))
                    .with_error_message(Some(StrBytes::from_string(msg)));
                return req.respond(&resp);
            }
        }
        let catalog = self.core.catalog();
        let owned = m.topic_partitions.map(|tps| {
            tps.iter()
                .filter_map(|tp| {
                    catalog
                        .topic_name(tp.topic_id.as_bytes())
                        .map(|name| (name, &tp.partitions))
                })
                .flat_map(|(name, ps)| ps.iter().map(move |&p| (name.clone(), p)))
                .collect()
        });
        let assignor = match m.server_assignor.as_deref() {
            None => String::new(),
            // Kafka's "uniform" spreads partitions evenly over all topics: round-robin.
            Some("uniform") => "roundrobin".to_string(),
            Some(other) => other.to_string(),
        };
        let hb = Heartbeat {
            group_id: m.group_id.0.to_string(),
            member_id: m.member_id.to_string(),
            member_epoch: m.member_epoch,
            session_timeout_ms: 0,
            subscribed: m
                .subscribed_topic_names
                .map(|names| names.iter().map(|n| n.0.to_string()).collect()),
            assignor,
            owned,
        };
        let r = self.core.groups.heartbeat(&catalog, hb);
        let resp = ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(StrBytes::from_string(r.member_id)))
            .with_member_epoch(r.member_epoch)
            .with_heartbeat_interval_ms(i32::try_from(r.heartbeat_interval_ms).unwrap_or(i32::MAX));
        let resp = match r.error {
            Some((code, msg)) => resp
                .with_error_code(kafka_code(code))
                .with_error_message(Some(StrBytes::from_string(msg))),
            None if r.member_epoch < 0 => resp,
            None => {
                let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> =
                    std::collections::BTreeMap::new();
                for (t, p) in r.assignment {
                    by_topic.entry(t).or_default().push(p);
                }
                let assigned = by_topic
                    .into_iter()
                    .filter_map(|(t, ps)| {
                        catalog.topic_id(&t).map(|id| {
                            CghTopicPartitions::default()
                                .with_topic_id(Uuid::from_bytes(id))
                                .with_partitions(ps)
                        })
                    })
                    .collect();
                resp.with_assignment(Some(
                    CghAssignment::default().with_topic_partitions(assigned),
                ))
            }
        };
        req.respond(&resp)
    }
}
