//! Produce: Kafka's acks onto the core's durability (acks 1: once appended; acks -1 (all): once
//! fsynced, which is what "all in-sync replicas have it" means on a single node; acks 0: no
//! answer). The request is read by [`produce_request`] straight into the core's types; the
//! record batches are the frame's own bytes, validated and appended by the core as the native
//! protocol's are, idempotent sequence checks included.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::ProduceResponse;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::produce_request::{self, Produce};
use super::{Kafka, Outcome, Req, kafka_code};
use crate::core::produce;
use crate::core::session::Session;
use crate::net::Started;

impl Kafka {
    pub(super) async fn produce(&self, session: &Arc<Session>, req: Req) -> Outcome {
        let Produce {
            transactional,
            acks,
            request,
        } = produce_request::parse(req.body.clone(), req.version).map_err(|e| {
            format!(
                "malformed Produce v{} request (correlation id {}): {e}",
                req.version, req.correlation_id
            )
        })?;
        let refusal = match (acks, transactional) {
            (-1..=1, false) => None,
            (-1..=1, true) => Some((
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                "transactions are not supported".to_string(),
            )),
            (other, _) => Some((
                ResponseError::InvalidRequiredAcks.code(),
                format!("acks must be 0, 1 or -1; got {other}"),
            )),
        };
        if let Some((code, msg)) = refusal {
            // Answered whole: every partition gets the code, nothing is written.
            let resp = ProduceResponse::default().with_responses(
                request
                    .topics
                    .into_iter()
                    .map(|(name, parts)| {
                        TopicProduceResponse::default()
                            .with_name(StrBytes::from_string(name).into())
                            .with_partition_responses(
                                parts
                                    .iter()
                                    .map(|(index, _, _)| {
                                        PartitionProduceResponse::default()
                                            .with_index(*index)
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
            return super::ready(req.respond(&resp));
        }
        let no_ack = acks == 0;
        let guard = session.produce_started();
        let pending = self.core.start_produce(request).await;
        let version = req.version;
        let core = self.core.clone();
        Ok(Started::Pending(Box::pin(async move {
            let topics = pending.await;
            drop(guard);
            if no_ack {
                return None;
            }
            // KIP-951 (v10+): a partition refused with NOT_LEADER_OR_FOLLOWER names its
            // current leader, and the response carries that broker's address.
            let mut leaders: Vec<i32> = Vec::new();
            let mut hint = |name: &str, a: &produce::Appended| match &a.result {
                Err((strom_protocol::ErrorCode::NotLeaderOrFollower, _)) if version >= 10 => {
                    let found = core.current_leader(name, a.partition);
                    if let Some((id, _)) = found {
                        leaders.push(id);
                    }
                    found
                }
                _ => None,
            };
            let responses = topics
                .into_iter()
                .map(|(name, parts)| {
                    let parts = parts
                        .into_iter()
                        .map(|a| {
                            let leader = hint(&name, &a);
                            partition_response(a, version, leader)
                        })
                        .collect();
                    TopicProduceResponse::default()
                        .with_name(StrBytes::from_string(name).into())
                        .with_partition_responses(parts)
                })
                .collect();
            leaders.sort_unstable();
            leaders.dedup();
            let endpoints = if leaders.is_empty() {
                Vec::new()
            } else {
                core.brokers()
                    .into_iter()
                    .filter(|b| leaders.contains(&b.id))
                    .filter_map(|b| {
                        let addr = b.endpoints.kafka.as_deref()?;
                        let (host, port) = crate::core::metadata::host_port(addr)?;
                        Some(
                            NodeEndpoint::default()
                                .with_node_id(BrokerId(b.id))
                                .with_host(StrBytes::from_string(host.to_string()))
                                .with_port(i32::from(port))
                                .with_rack(b.rack.map(StrBytes::from_string)),
                        )
                    })
                    .collect()
            };
            let resp = ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(endpoints);
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

fn partition_response(
    a: produce::Appended,
    version: i16,
    leader: Option<(i32, i32)>,
) -> PartitionProduceResponse {
    let mut out = PartitionProduceResponse::default()
        .with_index(a.partition)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(a.log_start);
    if let Some((id, epoch)) = leader {
        out = out.with_current_leader(
            LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(id))
                .with_leader_epoch(epoch),
        );
    }
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
