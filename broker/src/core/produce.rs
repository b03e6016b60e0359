//! Produce: validate each partition's batches, queue them on the partitions' writers in request
//! order, then wait for the acknowledgements the request asked for.
//!
//! The batches are the request's own bytes (`Bytes` slices of the frame, whatever the protocol):
//! the CRC is checked here once, and the writer patches base offsets into the same buffers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::BatchIter;
use strom_protocol::topic::is_internal_topic;
use strom_storage::ValidBatch;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::delays::{MAX_DELAY_MS, MAX_PENDING};
use super::partition::{AppendReply, DelayedAppend, Durability, Partition};
use super::topics::Topic;
use super::{Core, Failure};
use crate::error::batch_code;

/// A produce request, as every front-end hands it to the core.
#[derive(Debug)]
pub(crate) struct ProduceRequest {
    /// When to acknowledge.
    pub durability: Durability,
    /// How long to wait for the acknowledgements (`None`: `produce_timeout_ms`).
    pub timeout_ms: Option<u32>,
    /// Record batches per topic and partition, with the batches' delivery times for queue
    /// groups (empty: none delayed; else one per batch, 0 for a batch not delayed).
    pub topics: Vec<(String, Vec<PartitionData>)>,
}

/// One partition's part of a produce: index, record batches, and the batches' delivery times.
pub(crate) type PartitionData = (i32, Bytes, Vec<i64>);

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
    Waiting(Box<Waiting>),
}

/// An append queued on a partition's writer, and what its acknowledgement waits for.
struct Waiting {
    reply: oneshot::Receiver<AppendReply>,
    part: Arc<Partition>,
    /// A delayed run's record in `__queue_state`.
    recorded: Option<oneshot::Receiver<oneshot::Receiver<AppendReply>>>,
    /// For `acks=all` and durable produces: the leader epoch appended in and the records
    /// appended, whose end the high watermark (or the in-sync replicas' fsyncs) must pass.
    replicated: Option<(i32, i64)>,
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
        let mut image = self.image();
        for (name, partitions) in req.topics {
            // The topic this broker holds of `name` (`None`: placed on other brokers only).
            let topic: Result<Option<Arc<Topic>>, Failure> = if is_internal_topic(&name) {
                Err((
                    ErrorCode::InvalidTopicName,
                    format!("{name} is internal: only the broker writes to it"),
                ))
            } else if image.topics.contains_key(&name) {
                Ok(self.topics.get(&name))
            } else if self.config.auto_create_topics {
                let created = self
                    .get_or_create_topic(&name, self.config.default_partitions)
                    .await;
                image = self.image();
                created.map(Some)
            } else {
                Err((
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no topic {name}"),
                ))
            };
            let mut parts = Vec::with_capacity(partitions.len());
            for (index, records, deliver_at) in partitions {
                self.stats
                    .produce_bytes
                    .fetch_add(records.len() as u64, Relaxed);
                let state = match &topic {
                    Err(e) => Pending::Done(e.clone()),
                    Ok(local) => match (
                        local,
                        self.leader_partition(&image, local.as_ref(), &name, index),
                    ) {
                        (_, Err(e)) => Pending::Done(e),
                        (None, Ok(_)) => Pending::Done((
                            ErrorCode::LeaderNotAvailable,
                            format!("{name}-{index} is not open here yet"),
                        )),
                        (Some(topic), Ok(part)) => {
                            let part = &part;
                            let checked =
                                validate_records(&records, topic.config().max_message_bytes)
                                    .and_then(|b| {
                                        // acks=all is refused, before appending, while the
                                        // ISR is under min.insync.replicas.
                                        let epoch = match req.durability {
                                            Durability::Appended => None,
                                            _ => Some(part.replica().check_replicated_append()?),
                                        };
                                        let delays =
                                            self.delays_for(topic, part, &b, deliver_at)?;
                                        Ok((b, delays, epoch))
                                    });
                            match checked {
                                Err(e) => Pending::Done(e),
                                Ok((batches, delays, epoch)) => {
                                    let count: i64 =
                                        batches.iter().map(ValidBatch::record_count).sum();
                                    let (delays, recorded) = delays.unzip();
                                    let reply =
                                        part.append_delayed(batches, req.durability, delays).await;
                                    Pending::Waiting(Box::new(Waiting {
                                        reply,
                                        part: Arc::clone(part),
                                        recorded,
                                        replicated: epoch.map(|e| (e, count)),
                                    }))
                                }
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
                        Pending::Waiting(waiting) => {
                            let Waiting {
                                reply: rx,
                                part,
                                recorded,
                                replicated,
                            } = *waiting;
                            let durable = req.durability == Durability::Fsynced;
                            let appended = async {
                                let r = rx.await;
                                // acks=all: the HW (or every in-sync replica's fsync) must
                                // pass the batches, while this broker still leads.
                                if let (Ok(Ok(base)), Some((epoch, count))) = (&r, replicated)
                                    && let Err(e) = part
                                        .replica()
                                        .acknowledged(base + count, durable, epoch)
                                        .await
                                {
                                    return Ok(Err(e));
                                }
                                // A delayed run's record in `__queue_state` is part of the
                                // acknowledgement.
                                if let (Ok(Ok(_)), Some(recorded)) = (&r, recorded)
                                    && let Ok(wait) = recorded.await
                                {
                                    match wait.await {
                                        Ok(Ok(_)) => {}
                                        Ok(Err(e)) => return Ok(Err(e)),
                                        Err(_) => {
                                            return Ok(Err((
                                                ErrorCode::StorageError,
                                                "the queue state log stopped".to_string(),
                                            )));
                                        }
                                    }
                                }
                                r
                            };
                            let r = match tokio::time::timeout_at(deadline, appended).await {
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

/// A delayed append, and the wait for its runs' record.
type Delays = (
    DelayedAppend,
    oneshot::Receiver<oneshot::Receiver<AppendReply>>,
);

impl Core {
    /// Checks a partition's delivery times: one per batch (or none), none more than
    /// [`MAX_DELAY_MS`] ahead, and room in the partition's index. None when no batch is
    /// delayed.
    fn delays_for(
        &self,
        topic: &Topic,
        part: &Partition,
        batches: &[ValidBatch],
        times: Vec<i64>,
    ) -> Result<Option<Delays>, Failure> {
        if times.is_empty() {
            return Ok(None);
        }
        if times.len() != batches.len() {
            return Err((
                ErrorCode::InvalidRequest,
                format!(
                    "{} delivery times for {} batches: give one per batch, or none",
                    times.len(),
                    batches.len()
                ),
            ));
        }
        let now = super::queues::now_ms();
        if times.iter().any(|t| *t > now.saturating_add(MAX_DELAY_MS)) {
            return Err((
                ErrorCode::InvalidRequest,
                "a delivery time is more than 90 days ahead".to_string(),
            ));
        }
        let times: Vec<i64> = times
            .into_iter()
            .map(|t| if t > now { t } else { 0 })
            .collect();
        if times.iter().all(|t| *t == 0) {
            return Ok(None);
        }
        if part.delays().len() >= MAX_PENDING {
            return Err((
                ErrorCode::Busy,
                format!("the partition holds {MAX_PENDING} pending delays; retry once some fire"),
            ));
        }
        let state = super::queues::delay_log::delays_partition(&self.topics).ok_or((
            ErrorCode::CoordinatorNotAvailable,
            "the delayed runs' log is missing".to_string(),
        ))?;
        let (tx, rx) = oneshot::channel();
        Ok(Some((
            DelayedAppend {
                times,
                state,
                topic_id: topic.id,
                recorded: Some(tx),
            },
            rx,
        )))
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
