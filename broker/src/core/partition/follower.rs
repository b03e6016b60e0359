//! What a partition's writer does for a follower: append the batches its leader sent, with
//! the leader's offsets and epochs, and truncate where its log parts from the leader's.

use strom_protocol::ErrorCode;
use strom_storage::{Log, ValidBatch};
use tokio::sync::oneshot;

use super::delayed::{DelayLog, register_replicated, truncate_delays};
use super::writer::{Writer, blocking, recover_if_poisoned};
use super::{INLINE_APPEND_BYTES, closing, now_ms};
use crate::core::Failure;
use crate::core::delays::Delay;
use crate::core::producers::ProducerStates;
use crate::core::replication::divergence::{EpochEnd, truncation_for};
use crate::core::replication::leader::BrokerId;
use crate::error::storage_code;

/// A follower's append: the batches as the leader sent them, and what it learned.
#[derive(Debug)]
pub(crate) struct Replicate {
    pub leader: BrokerId,
    pub epoch: i32,
    /// Whole record batches, back to back, from the follower's log end on.
    pub records: bytes::Bytes,
    pub leader_hw: i64,
    /// Fsync everything below this now (a durable produce waits for it).
    pub durable_wanted: i64,
    pub runs: LeaderRuns,
    pub done: oneshot::Sender<Result<Position, Failure>>,
}

/// The leader's delayed runs overlapping the batches it sent, and where this partition
/// records them (`None`: in memory only).
#[derive(Debug, Default)]
pub(crate) struct LeaderRuns {
    pub runs: Vec<Delay>,
    pub log: Option<DelayLog>,
}

/// Where a follower truncates.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TruncateTo {
    /// The leader's diverging epoch (docs/cluster.md, "Divergence"); the leader's log start
    /// is where to restart when nothing of the follower's log can be kept.
    Diverging {
        diverging: EpochEnd,
        leader_start: i64,
    },
    /// The follower's fetch offset is outside the leader's log.
    OutOfRange { leader_start: i64, leader_end: i64 },
}

/// A follower's log as its fetcher needs it: where to fetch from, and the epoch of the last
/// batch it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub end: i64,
    pub last_epoch: Option<i32>,
}

/// The log's end and the epoch of its last batch.
pub(super) fn position(log: &Log) -> Position {
    Position {
        end: log.end_offset(),
        last_epoch: log.latest_epoch(),
    }
}

pub(super) fn not_following(leader: BrokerId, epoch: i32) -> Failure {
    (
        ErrorCode::NotLeaderOrFollower,
        format!("this broker no longer follows broker {leader} in epoch {epoch}"),
    )
}

/// A follower's append of its leader's batches: stored with the leader's offsets and epochs,
/// the producers' state taken from their headers (so a retry after a failover is still
/// deduplicated), the HW learned, and an fsync started if a durable produce waits for it.
pub(super) async fn replicate(log: Box<Log>, r: Replicate, w: &mut Writer) -> Option<Box<Log>> {
    if !w.replica.follows(r.leader, r.epoch) {
        let _ = r.done.send(Err(not_following(r.leader, r.epoch)));
        return Some(log);
    }
    let (log, usable) = recover_if_poisoned(log, w).await;
    let mut log = log?;
    if let Err(e) = usable {
        w.disk_failed(&e);
        let _ = r.done.send(Err((storage_code(&e), e.to_string())));
        return Some(log);
    }
    let mut batches = Vec::new();
    let end = log.end_offset();
    for item in strom_protocol::batch::BatchIter::new(&r.records) {
        let parsed = item.map_err(|e| e.to_string()).and_then(|(range, _)| {
            ValidBatch::replicated(r.records.slice(range)).map_err(|e| e.to_string())
        });
        match parsed {
            // A batch the log already holds (the leader's read starts at the batch holding
            // the fetch offset).
            Ok(b) if b.header().base_offset + i64::from(b.header().last_offset_delta) < end => {}
            Ok(b) => batches.push(b),
            Err(e) => {
                let _ = r.done.send(Err((
                    ErrorCode::CorruptMessage,
                    format!("a batch from the leader does not check: {e}"),
                )));
                return Some(log);
            }
        }
    }
    if !batches.is_empty() {
        // Like a produce's: the runs are entered before the records are readable.
        register_replicated(&r.runs.runs, end, r.runs.log.as_ref(), w).await;
        let bytes: usize = batches.iter().map(|b| b.bytes().len()).sum();
        let stored = batches.clone();
        let (l, result) = if bytes <= INLINE_APPEND_BYTES {
            let result = log.append_replica_deferred(&batches);
            (Some(log), result)
        } else {
            blocking(log, move |l| l.append_replica_deferred(&batches)).await
        };
        log = match l {
            Some(l) => l,
            None => {
                let _ = r.done.send(Err(closing()));
                return None;
            }
        };
        match result {
            Ok(info) => {
                let now = now_ms();
                for b in &stored {
                    w.producers.record(b.header(), b.header().base_offset, now);
                }
                w.producers.commit();
                w.counted(info.next_offset - info.base_offset, bytes);
            }
            Err(e) => {
                w.producers.abort();
                // A disk failure is logged once, by the broker's storage health.
                if !w.disk_failed(&e) {
                    tracing::warn!(topic = %w.topic, partition = w.index, error = %e, "cannot append the leader's batches");
                }
                let _ = r.done.send(Err((storage_code(&e), e.to_string())));
                return Some(log);
            }
        }
    }
    w.end = log.end_offset();
    w.replica.progress(log.end_offset(), log.durable_offset());
    w.replica.learn_hw(r.leader_hw);
    w.flush_to = w.flush_to.max(r.durable_wanted);
    w.start_flush(&mut log);
    w.start_writeback(&mut log);
    let _ = r.done.send(Ok(position(&log)));
    Some(log)
}

/// A follower's truncation where its log parts from its leader's (docs/cluster.md,
/// "Divergence"), never to its HW; the producers' state is rebuilt from what is left.
pub(super) async fn truncate(
    log: Box<Log>,
    to: TruncateTo,
    delay_log: Option<&DelayLog>,
    w: &mut Writer,
) -> (Option<Box<Log>>, Result<Position, Failure>) {
    let (log, usable) = recover_if_poisoned(log, w).await;
    let Some(mut log) = log else {
        return (None, Err(closing()));
    };
    if let Err(e) = usable {
        w.disk_failed(&e);
        return (Some(log), Err((storage_code(&e), e.to_string())));
    }
    // The running fsync works on the files a truncation replaces.
    w.settle(&mut log).await;
    let (start, end) = (log.start_offset(), log.end_offset());
    // Where to cut, and where to restart empty when nothing of the log can be kept.
    let (cut, restart) = match to {
        TruncateTo::Diverging {
            diverging,
            leader_start,
        } => {
            let (epoch, end_offset) = log.end_offset_for_epoch(diverging.epoch);
            let t = truncation_for(diverging, EpochEnd { epoch, end_offset }, start, end);
            if diverging.epoch < 0 || diverging.end_offset < 0 {
                (None, leader_start)
            } else {
                (Some(t.offset), leader_start)
            }
        }
        TruncateTo::OutOfRange {
            leader_start,
            leader_end,
        } => {
            if end > leader_end && leader_end >= start && leader_end >= leader_start {
                (Some(leader_end), leader_start)
            } else {
                (None, leader_start)
            }
        }
    };
    let (topic, index) = (w.topic.clone(), w.index);
    let (log, r) = blocking(log, move |l| {
        match cut {
            Some(offset) if offset >= l.start_offset() => {
                l.truncate_to(offset)?;
            }
            _ => l.truncate_fully_and_start_at(restart)?,
        }
        ProducerStates::load(l, now_ms())
    })
    .await;
    match (log, r) {
        (Some(log), Ok(producers)) => {
            w.producers = producers;
            truncate_delays(log.end_offset(), delay_log, w).await;
            w.end = log.end_offset();
            w.replica.progress(log.end_offset(), log.durable_offset());
            tracing::info!(topic = %topic, partition = index, from = end, to = log.end_offset(), "follower truncated where its log parts from the leader's");
            let p = position(&log);
            (Some(log), Ok(p))
        }
        (log, Err(e)) => {
            w.disk_failed(&e);
            (log, Err((storage_code(&e), e.to_string())))
        }
        (None, Ok(_)) => (None, Err(closing())),
    }
}
