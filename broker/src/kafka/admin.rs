//! Topic administration, offsets and producer ids over the Kafka protocol: CreateTopics,
//! DeleteTopics, ListOffsets, InitProducerId. Each converts to the core's call and back.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strom_protocol::ErrorCode;
use uuid::Uuid;

use super::{Kafka, KafkaResponse, Req, kafka_code};
use crate::core::Failure;
use crate::core::admin::OffsetQuery;

/// ListOffsets' special timestamps (KIP-79, KIP-734, KIP-1005).
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

fn message(version: i16, first: i16, msg: String) -> Option<StrBytes> {
    (version >= first).then(|| StrBytes::from_string(msg))
}

impl Kafka {
    pub(super) async fn create_topics(
        &self,
        req: &Req,
        m: CreateTopicsRequest,
    ) -> Result<KafkaResponse, String> {
        let mut results = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let name = t.name.0.to_string();
            let result: Result<i32, Failure> = if !t.assignments.is_empty() {
                Err((
                    ErrorCode::InvalidRequest,
                    "manual replica assignments are not supported".to_string(),
                ))
            } else {
                let mut overrides = BTreeMap::new();
                let mut null = None;
                for c in t.configs {
                    match c.value {
                        Some(v) => {
                            overrides.insert(c.name.to_string(), v.to_string());
                        }
                        None => null = Some(c.name.to_string()),
                    }
                }
                match null {
                    Some(k) => Err((ErrorCode::InvalidConfig, format!("{k} has no value"))),
                    None => {
                        let partitions =
                            (t.num_partitions >= 0).then_some(i64::from(t.num_partitions));
                        self.core
                            .create_topic(
                                &name,
                                partitions,
                                Some(i32::from(t.replication_factor)),
                                overrides,
                                m.validate_only,
                            )
                            .await
                    }
                }
            };
            let out = CreatableTopicResult::default().with_name(t.name);
            results.push(match result {
                Ok(n) => {
                    let id = self
                        .core
                        .topics
                        .get(&name)
                        .map(|t| t.id)
                        .unwrap_or_default();
                    out.with_topic_id(Uuid::from_bytes(id))
                        .with_num_partitions(n)
                        .with_replication_factor(1)
                }
                Err((code, msg)) => out
                    .with_error_code(kafka_code(code))
                    .with_error_message(message(req.version, 1, msg))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            });
        }
        req.respond(&CreateTopicsResponse::default().with_topics(results))
    }

    pub(super) async fn delete_topics(
        &self,
        req: &Req,
        m: DeleteTopicsRequest,
    ) -> Result<KafkaResponse, String> {
        // Version 6 names topics in `topics` (by name or id); earlier versions in `topic_names`.
        let mut names: Vec<Option<TopicName>> = m.topic_names.into_iter().map(Some).collect();
        names.extend(m.topics.into_iter().map(|t| {
            t.name.or_else(|| {
                self.core
                    .topics
                    .get_by_id(t.topic_id.as_bytes())
                    .map(|x| TopicName(StrBytes::from_string(x.name.to_string())))
            })
        }));
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let out = DeletableTopicResult::default().with_name(name.clone());
            let Some(n) = &name else {
                results.push(
                    out.with_error_code(ResponseError::UnknownTopicId.code())
                        .with_error_message(message(req.version, 5, "no topic has that id".into())),
                );
                continue;
            };
            results.push(match self.core.delete_topic(n).await {
                Ok(()) => out,
                Err((code, msg)) => out
                    .with_error_code(kafka_code(code))
                    .with_error_message(message(req.version, 5, msg)),
            });
        }
        req.respond(&DeleteTopicsResponse::default().with_responses(results))
    }

    pub(super) async fn create_partitions(
        &self,
        req: &Req,
        m: CreatePartitionsRequest,
    ) -> Result<KafkaResponse, String> {
        let mut results = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let result = if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                Err((
                    ErrorCode::InvalidRequest,
                    "manual replica assignments are not supported".to_string(),
                ))
            } else {
                self.core
                    .add_partitions(&t.name, i64::from(t.count), m.validate_only)
                    .await
            };
            let out = CreatePartitionsTopicResult::default().with_name(t.name);
            results.push(match result {
                Ok(()) => out,
                Err((code, msg)) => out
                    .with_error_code(kafka_code(code))
                    .with_error_message(Some(StrBytes::from_string(msg))),
            });
        }
        req.respond(&CreatePartitionsResponse::default().with_results(results))
    }

    pub(super) fn list_offsets(
        &self,
        req: &Req,
        m: ListOffsetsRequest,
    ) -> Result<KafkaResponse, String> {
        let topics = m
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let out = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index);
                        // The leader epoch field exists from version 4.
                        let out = if req.version >= 4 {
                            out.with_leader_epoch(0)
                        } else {
                            out
                        };
                        let query = match p.timestamp {
                            LATEST | LATEST_TIERED => Ok(OffsetQuery::Latest),
                            EARLIEST | EARLIEST_LOCAL => Ok(OffsetQuery::Earliest),
                            MAX_TIMESTAMP => Ok(OffsetQuery::MaxTimestamp),
                            ts if ts >= 0 => Ok(OffsetQuery::Time(ts)),
                            ts => Err((
                                ErrorCode::InvalidRequest,
                                format!("timestamp {ts} is not a time or a known special value"),
                            )),
                        };
                        let epoch_known = self.core.check_leader_epoch(
                            &self.core.image(),
                            &name,
                            p.partition_index,
                            p.current_leader_epoch,
                        );
                        match query.and_then(|q| {
                            epoch_known?;
                            self.core.list_offset(&name, p.partition_index, q)
                        }) {
                            Ok((offset, timestamp)) => {
                                out.with_offset(offset).with_timestamp(timestamp)
                            }
                            Err((code, _)) => out
                                .with_error_code(kafka_code(code))
                                .with_offset(-1)
                                .with_timestamp(-1),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        req.respond(&ListOffsetsResponse::default().with_topics(topics))
    }

    pub(super) async fn init_producer_id(
        &self,
        req: &Req,
        m: InitProducerIdRequest,
    ) -> Result<KafkaResponse, String> {
        let result = self
            .core
            .init_producer_id(
                m.transactional_id.is_some(),
                m.producer_id.0,
                i32::from(m.producer_epoch),
            )
            .await;
        let resp = match result {
            Ok((id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(i16::try_from(epoch).unwrap_or(i16::MAX)),
            Err((code, _)) => {
                // Kafka clients read a refused transactional id as "not supported here".
                let code = if m.transactional_id.is_some() {
                    ResponseError::TransactionalIdAuthorizationFailed.code()
                } else {
                    kafka_code(code)
                };
                InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        };
        req.respond(&resp)
    }
}

impl Kafka {
    /// DeleteRecords: moves each partition's log start (Kafka's low watermark) forward.
    pub(super) async fn delete_records(
        &self,
        req: &Req,
        m: DeleteRecordsRequest,
    ) -> Result<KafkaResponse, String> {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let topic = self.core.topics.get(&t.name.0);
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let out = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let Some(part) = topic.as_ref().and_then(|x| x.partition(p.partition_index)) else {
                    partitions
                        .push(out.with_error_code(kafka_code(ErrorCode::UnknownTopicOrPartition)));
                    continue;
                };
                partitions.push(match part.delete_records(p.offset).await {
                    Ok(start) => out.with_low_watermark(start),
                    Err((code, _)) => out.with_error_code(kafka_code(code)),
                });
            }
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        req.respond(&DeleteRecordsResponse::default().with_topics(topics))
    }

    /// OffsetDelete: drops a group's committed offsets for topics it no longer consumes.
    pub(super) async fn offset_delete(
        &self,
        req: &Req,
        m: OffsetDeleteRequest,
    ) -> Result<KafkaResponse, String> {
        let wanted = m
            .topics
            .iter()
            .map(|t| {
                let ps = t.partitions.iter().map(|p| p.partition_index).collect();
                (t.name.0.to_string(), ps)
            })
            .collect();
        let core = &self.core;
        let resp = match core
            .groups
            .delete_offsets(&core.topics, &m.group_id.0, wanted)
            .await
        {
            Err((code, _)) => OffsetDeleteResponse::default().with_error_code(kafka_code(code)),
            Ok(results) => OffsetDeleteResponse::default().with_topics(
                results
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetDeleteResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, code)| {
                                        OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_error_code(kafka_code(code))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        };
        req.respond(&resp)
    }
}
