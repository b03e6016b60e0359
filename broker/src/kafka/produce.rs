//! Produce: Kafka's acks onto the core's durability (acks 1: once appended; acks -1 (all): once
//! fsynced, which is what "all in-sync replicas have it" means on a single node; acks 0: no
//! answer). The record batches are the frame's own bytes, validated and appended by the core as
//! the native protocol's are, idempotent sequence checks included.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Kafka, Outcome, Req, kafka_code};
use crate::core::partition::Durability;
use crate::core::produce;
use crate::core::session::Session;
use crate::net::Started;

impl Kafka {
    pub(super) async fn produce(
        &self,
        session: &Arc<Session>,
        req: Req,
        m: ProduceRequest,
    ) -> Outcome {
        let refuse = |code: i16, msg: String| {
            // Answered whole: every partition gets the code, nothing is written.
            let resp = ProduceResponse::default().with_responses(
                m.topic_data
                    .iter()
                    .map(|t| {
                        TopicProduceResponse::default()
                            .with_name(t.name.clone())
                            .with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_error_code(code)
                                            .with_base_offset(-1)
                                            .with_error_message(Some(StrBytes::from_string(
                                                msg.clone(),
                                            )))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            super::ready(req.respond(&resp))
        };
        let durability = match m.acks {
            0 | 1 => Durability::Appended,
            -1 => Durability::Fsynced,
            other => {
                return refuse(
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks must be 0, 1 or -1; got {other}"),
                );
            }
        };
        if m.transactional_id.is_some() {
            return refuse(
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                "transactions are not supported".to_string(),
            );
        }
        let no_ack = m.acks == 0;
        let core_req = produce::ProduceRequest {
            durability,
            timeout_ms: u32::try_from(m.timeout_ms).ok(),
            topics: m
                .topic_data
                .into_iter()
                .map(|t| {
                    let parts = t
                        .partition_data
                        .into_iter()
                        .map(|p| (p.index, p.records.unwrap_or_default()))
                        .collect();
                    (t.name.0.to_string(), parts)
                })
                .collect(),
        };
        let guard = session.produce_started();
        let pending = self.core.start_produce(core_req).await;
        let version = req.version;
        Ok(Started::Pending(Box::pin(async move {
            let topics = pending.await;
            drop(guard);
            if no_ack {
                return None;
            }
            let resp = ProduceResponse::default().with_responses(
                topics
                    .into_iter()
                    .map(|(name, parts)| {
                        TopicProduceResponse::default()
                            .with_name(StrBytes::from_string(name).into())
                            .with_partition_responses(
                                parts
                                    .into_iter()
                                    .map(|a| partition_response(a, version))
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            match req.respond(&resp) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "could not encode a produce response");
                    None
                }
            }
        })))
    }
}

fn partition_response(a: produce::Appended, version: i16) -> PartitionProduceResponse {
    let out = PartitionProduceResponse::default()
        .with_index(a.partition)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(a.log_start);
    match a.result {
        Ok(base) => out.with_base_offset(base),
        Err((code, msg)) => {
            let out = out.with_error_code(kafka_code(code)).with_base_offset(-1);
            if version >= 8 {
                out.with_error_message(Some(StrBytes::from_string(msg)))
            } else {
                out
            }
        }
    }
}
