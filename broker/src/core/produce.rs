//! Produce: validate each partition's batches, queue them on the partitions' writers in request
//! order, then wait for the acknowledgements the request asked for.
//!
//! The batches are the request's own bytes (`Bytes` slices of the frame, whatever the protocol):
//! the CRC is checked here once, and the writer patches base offsets into the same buffers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::BatchIter;
use strom_protocol::topic::is_internal_topic;
use strom_storage::ValidBatch;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::partition::{AppendReply, Durability, Partition};
use super::{Core, Failure};
use crate::error::batch_code;

/// A produce request, as every front-end hands it to the core.
#[derive(Debug)]
pub(crate) struct ProduceRequest {
    /// When to acknowledge.
    pub durability: Durability,
    /// How long to wait for the acknowledgements (`None`: `produce_timeout_ms`).
    pub timeout_ms: Option<u32>,
    /// Record batches per topic and partition.
    pub topics: Vec<(String, Vec<(i32, Bytes)>)>,
}

/// The outcome of one partition's append.
#[derive(Debug)]
pub(crate) struct Appended {
    pub partition: i32,
    /// The first offset given to the partition's batches.
    pub result: Result<i64, Failure>,
    /// The partition's log start offset after the append (-1 when unknown).
    pub log_start: i64,
}

enum Pending {
    Done(Failure),
    Waiting(oneshot::Receiver<AppendReply>, Arc<Partition>),
}

impl Core {
    /// A produce's in-order part: find (or create) the topics, validate every batch, and queue
    /// the batches on their partitions' writers. The returned future waits for the
    /// acknowledgements; every partition is queued before any is waited for, so partitions
    /// append in parallel.
    pub async fn start_produce(
        &self,
        req: ProduceRequest,
    ) -> impl Future<Output = Vec<(String, Vec<Appended>)>> + Send + use<> {
        let timeout_ms = match req.timeout_ms {
            Some(ms) if ms > 0 => ms,
            _ => self.config.produce_timeout_ms,
        };
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let mut pending: Vec<(String, Vec<(i32, Pending)>)> = Vec::with_capacity(req.topics.len());
        for (name, partitions) in req.topics {
            let topic = if is_internal_topic(&name) {
                Err((
                    ErrorCode::InvalidTopicName,
                    format!("{name} is internal: only the broker writes to it"),
                ))
            } else if self.config.auto_create_topics {
                self.topics
                    .get_or_create(&name, self.config.default_partitions)
                    .await
            } else {
                self.topics.get(&name).ok_or_else(|| {
                    (
                        ErrorCode::UnknownTopicOrPartition,
                        format!("no topic {name}"),
                    )
                })
            };
            let mut parts = Vec::with_capacity(partitions.len());
            for (index, records) in partitions {
                let state = match &topic {
                    Err(e) => Pending::Done(e.clone()),
                    Ok(topic) => match topic.partition(index) {
                        None => Pending::Done((
                            ErrorCode::UnknownTopicOrPartition,
                            format!("topic {name} has no partition {index}"),
                        )),
                        Some(part) => {
                            match validate_records(&records, topic.config().max_message_bytes) {
                                Err(e) => Pending::Done(e),
                                Ok(batches) => Pending::Waiting(
                                    part.append(batches, req.durability).await,
                                    part.clone(),
                                ),
                            }
                        }
                    },
                };
                parts.push((index, state));
            }
            pending.push((name, parts));
        }
        async move {
            let mut topics = Vec::with_capacity(pending.len());
            for (name, parts) in pending {
                let mut partitions = Vec::with_capacity(parts.len());
                for (partition, state) in parts {
                    let (result, log_start) = match state {
                        Pending::Done(e) => (Err(e), -1),
                        Pending::Waiting(rx, part) => {
                            let r = match tokio::time::timeout_at(deadline, rx).await {
                                Ok(Ok(r)) => r,
                                Ok(Err(_)) => Err((
                                    ErrorCode::StorageError,
                                    "the partition writer stopped".to_string(),
                                )),
                                Err(_) => Err((
                                    ErrorCode::RequestTimedOut,
                                    format!(
                                        "not acknowledged within {timeout_ms} ms; the batches may still be appended"
                                    ),
                                )),
                            };
                            (r, part.reader().start_offset())
                        }
                    };
                    partitions.push(Appended {
                        partition,
                        result,
                        log_start,
                    });
                }
                topics.push((name, partitions));
            }
            topics
        }
    }
}

/// Splits a partition's records into batches and validates each (length, magic, CRC, record
/// count, the topic's max.message.bytes). All or nothing: any bad batch rejects the partition.
pub(crate) fn validate_records(
    records: &Bytes,
    max_message_bytes: u64,
) -> Result<Vec<ValidBatch>, Failure> {
    let mut batches = Vec::new();
    let mut iter = BatchIter::new(records);
    for item in iter.by_ref() {
        let (range, header) = item.map_err(|e| (batch_code(&e), e.to_string()))?;
        if header.total_len() as u64 > max_message_bytes {
            return Err((
                ErrorCode::MessageTooLarge,
                format!(
                    "batch of {} bytes exceeds max.message.bytes = {max_message_bytes}",
                    header.total_len()
                ),
            ));
        }
        if header.is_control() {
            return Err((
                ErrorCode::InvalidRecord,
                "control batches are written by the broker, not by producers".into(),
            ));
        }
        if let strom_protocol::batch::Compression::Unknown(codec) = header.compression() {
            return Err((
                ErrorCode::InvalidRecord,
                format!("unknown compression codec {codec}"),
            ));
        }
        let b =
            ValidBatch::new(records.slice(range)).map_err(|e| (batch_code(&e), e.to_string()))?;
        batches.push(b);
    }
    if iter.position() != records.len() {
        // A batch whose declared length runs past the records: too large if its header says
        // so, otherwise truncated.
        let rest = &records[iter.position()..];
        return Err(match strom_protocol::batch::peek_total_len(rest) {
            Ok(Some(n)) if n as u64 > max_message_bytes => (
                ErrorCode::MessageTooLarge,
                format!("batch of {n} bytes exceeds max.message.bytes = {max_message_bytes}"),
            ),
            _ => (
                ErrorCode::CorruptMessage,
                format!("{} trailing bytes are not a whole batch", rest.len()),
            ),
        });
    }
    if batches.is_empty() {
        return Err((
            ErrorCode::InvalidRecord,
            "no record batch in the request".into(),
        ));
    }
    Ok(batches)
}
