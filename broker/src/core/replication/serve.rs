//! The leader's side of ReplicaFetch: a follower's fetch of every partition it follows from
//! this broker, answered with the stored batches from each one's fetch offset to the log end
//! (not the HW), or with where its log parts from this one's.
//!
//! ReplicaFetch is strom's own inter-broker API, so this module and the follower's
//! (`fetcher`) speak its wire messages directly instead of going through a front-end. Each
//! partition is checked against the image this broker has followed (it leads it, in the epoch
//! the follower names, and the follower is one of its replicas), then against the log's leader
//! epochs (KIP-320's divergence check); only then does the follower's log end (its fetch
//! offset, or the lower `held_offset` of a follower still appending its previous answer) count
//! in the leader's view (which moves the HW). A fetch that finds nothing new waits for
//! an append to a partition led here with followers ([`Topics::appended`]), up to its
//! `max_wait_ms`, as a consumer's long poll waits on the HW.
//!
//! [`Topics::appended`]: crate::core::topics::Topics::appended

use std::time::Duration;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    DelayedRun, EpochEndOffset, ReplicaFetchPartition, ReplicaFetchPartitionResponse,
    ReplicaFetchRequest, ReplicaFetchResponse, ReplicaFetchTopicResponse,
};
use tokio::time::Instant;

use super::divergence::{EpochEnd, check_follower};
use super::replica::epoch_mismatch;
use crate::core::partition::Partition;
use crate::core::{Core, Failure};
use crate::error::storage_code;

/// A partition's limit when the follower names none.
const DEFAULT_PARTITION_BYTES: usize = 1 << 20;
/// Longest wait a follower's fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A partition being answered: done (an error or a divergence), or to read.
enum Slot {
    Done(ReplicaFetchPartitionResponse),
    Read {
        part: std::sync::Arc<Partition>,
        fetch_offset: i64,
        /// What the follower reported fsynced: a durable produce waiting for more answers the
        /// fetch at once, so the follower fsyncs.
        durable: i64,
        max_bytes: usize,
        response: ReplicaFetchPartitionResponse,
    },
}

fn failed(partition: i32, (code, message): Failure) -> ReplicaFetchPartitionResponse {
    ReplicaFetchPartitionResponse {
        partition,
        error_code: code.into(),
        error_message: Some(message),
        ..Default::default()
    }
}

impl Core {
    /// Answers a follower's ReplicaFetch, waiting up to its `max_wait_ms` for `min_bytes` of
    /// records when none are there.
    pub(crate) async fn replica_fetch(&self, req: ReplicaFetchRequest) -> ReplicaFetchResponse {
        // Subscribed before reading, so an append between the read and the wait is not missed.
        let mut appended = self.topics.appended();
        appended.borrow_and_update();
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT);
        let mut topics = Vec::with_capacity(req.topics.len());
        let mut answer_now = false;
        for topic in &req.topics {
            let mut slots = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let slot = self
                    .check_follower_fetch(&req, &topic.name, &topic.topic_id, p)
                    .await;
                answer_now |= matches!(slot, Slot::Done(_));
                slots.push(slot);
            }
            topics.push((topic.name.clone(), slots));
        }
        let limit = match req.max_bytes {
            0 => self.config.fetch_max_bytes,
            n => n.min(self.config.fetch_max_bytes),
        } as usize;
        loop {
            let mut total = 0usize;
            for (_, slots) in &mut topics {
                for slot in slots.iter_mut() {
                    let Slot::Read {
                        part,
                        fetch_offset,
                        durable,
                        max_bytes,
                        response,
                    } = slot
                    else {
                        continue;
                    };
                    let room = (*max_bytes).min(limit.saturating_sub(total));
                    let marks = part.replica().marks();
                    response.high_watermark = marks.hw;
                    response.durable_wanted = marks.durable_wanted;
                    answer_now |= marks.durable_wanted > *durable;
                    response.log_start_offset = part.reader().start_offset();
                    response.log_end_offset = part.reader().end_offset();
                    if room == 0 {
                        continue;
                    }
                    match part.reader().read(*fetch_offset, room) {
                        Ok(r) => {
                            total += r.data.len();
                            // Entered before the append made the records readable, so a
                            // read that sees them sees their runs.
                            response.delayed = part
                                .delays()
                                .overlapping(r.first_offset, r.next_offset - 1)
                                .into_iter()
                                .map(|d| DelayedRun {
                                    first_offset: d.first,
                                    last_offset: d.last,
                                    deliver_at_ms: d.at,
                                })
                                .collect();
                            response.records = r.data;
                        }
                        Err(e) => {
                            response.error_code = storage_code(&e).into();
                            response.error_message = Some(e.to_string());
                            answer_now = true;
                        }
                    }
                }
            }
            let enough = total > 0 && total >= req.min_bytes as usize;
            if enough || answer_now || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                r = appended.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(deadline) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        ReplicaFetchResponse {
            topics: topics
                .into_iter()
                .map(|(name, slots)| ReplicaFetchTopicResponse {
                    name,
                    partitions: slots
                        .into_iter()
                        .map(|slot| match slot {
                            Slot::Done(r) => r,
                            Slot::Read { response, .. } => response,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The checks of one partition of a follower's fetch, in order: the image (this broker
    /// leads it in the epoch the follower names, the follower is a replica), the leader epochs
    /// (divergence), the offset range; then the fetch offset is the follower's log end.
    async fn check_follower_fetch(
        &self,
        req: &ReplicaFetchRequest,
        name: &str,
        topic_id: &Bytes,
        p: &ReplicaFetchPartition,
    ) -> Slot {
        let index = p.partition;
        let image = self.image();
        let unknown = || {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no partition {index} of topic {name} with the id the follower names"),
            )
        };
        let Some(topic) = image
            .topics
            .get(name)
            .filter(|t| t.id.to_bytes().as_slice() == topic_id.as_ref())
        else {
            return Slot::Done(failed(index, unknown()));
        };
        let Some(placed) = usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
        else {
            return Slot::Done(failed(index, unknown()));
        };
        let me = self.cluster.id();
        if placed.leader != Some(me) {
            return Slot::Done(failed(
                index,
                (
                    ErrorCode::NotLeaderOrFollower,
                    format!("broker {me} does not lead {name}-{index}"),
                ),
            ));
        }
        let led = i32::try_from(placed.leader_epoch).unwrap_or(i32::MAX);
        if p.current_leader_epoch != led {
            return Slot::Done(failed(index, epoch_mismatch(p.current_leader_epoch, led)));
        }
        let Some(part) = self
            .topics
            .get(name)
            .and_then(|t| t.partition(index).cloned())
        else {
            return Slot::Done(failed(
                index,
                (
                    ErrorCode::LeaderNotAvailable,
                    format!("{name}-{index} is not open on its leader yet"),
                ),
            ));
        };
        let reader = part.reader();
        let (start, end) = (reader.start_offset(), reader.end_offset());
        let out_of_range = |start, end| ReplicaFetchPartitionResponse {
            log_start_offset: start,
            log_end_offset: end,
            high_watermark: part.high_watermark(),
            ..failed(
                index,
                (
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {} is outside the leader's log [{start}, {end})",
                        p.fetch_offset
                    ),
                ),
            )
        };
        if let Some(last) = p.last_fetched_epoch {
            // The follower's last batch is from this leader's epoch: its log is a prefix of
            // this one (a leader never truncates). Otherwise ask the log.
            let prefix = last == led && p.fetch_offset <= end;
            if !prefix {
                let (epoch, end_offset) = match part.end_offset_for_epoch(last).await {
                    Ok(found) => found,
                    Err(failure) => return Slot::Done(failed(index, failure)),
                };
                if let Some(diverging) =
                    check_follower(p.fetch_offset, last, EpochEnd { epoch, end_offset })
                {
                    return Slot::Done(ReplicaFetchPartitionResponse {
                        partition: index,
                        high_watermark: part.high_watermark(),
                        log_start_offset: start,
                        log_end_offset: end,
                        diverging_epoch: Some(EpochEndOffset {
                            epoch: diverging.epoch,
                            end_offset: diverging.end_offset,
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        if p.fetch_offset < start || p.fetch_offset > end {
            return Slot::Done(out_of_range(start, end));
        }
        // A pipelining follower still appends what it asked for before: only what it holds
        // counts as its log end.
        let held = p.held_offset.unwrap_or(p.fetch_offset);
        if !(0..=p.fetch_offset).contains(&held) {
            return Slot::Done(failed(
                index,
                (
                    ErrorCode::InvalidRequest,
                    format!(
                        "held offset {held} is not between 0 and the fetch offset {}",
                        p.fetch_offset
                    ),
                ),
            ));
        }
        let marks = match part.replica().follower_fetched(
            req.replica_id,
            req.broker_epoch,
            led,
            held,
            p.durable_offset,
        ) {
            Ok(marks) => marks,
            Err(failure) => return Slot::Done(failed(index, failure)),
        };
        let max_bytes = match p.partition_max_bytes {
            0 => DEFAULT_PARTITION_BYTES,
            n => n as usize,
        };
        Slot::Read {
            fetch_offset: p.fetch_offset,
            durable: p.durable_offset,
            max_bytes,
            response: ReplicaFetchPartitionResponse {
                partition: index,
                high_watermark: marks.hw,
                durable_wanted: marks.durable_wanted,
                ..Default::default()
            },
            part,
        }
    }
}
