//! One partition in the broker: its log's single writer task and the handles connections use.
//!
//! Connections never touch the [`Log`] itself. They validate batches (length, magic, CRC) on their
//! own task and send them to the partition's writer over a bounded queue; the writer drains every
//! request waiting in the queue and appends them with one storage call (one vectored write), then
//! answers each request with its base offset, except those that wait for an fsync: the writer
//! keeps one flush running beside its appends (`Log::start_flush`) and answers them when a flush
//! that started after their append finishes (pipelined group commit). Readers use a
//! [`LogReader`] directly, up to the partition's high watermark, and wait for new data on the
//! high watermark's `watch` channel ([`Replica`]), which the writer moves after every append
//! group and fsync.
//!
//! Disk work runs on tokio's blocking pool (`spawn_blocking`), the `Log` moving in and out of the
//! closure, so a slow disk never stalls the threads that serve connections. So does the early
//! write-back a topic with `writeback.bytes` set asks for (`Log::start_writeback`), which keeps
//! the kernel writing to disk alongside the appends.
//!
//! - [`writer`]: the writer task: grouping appends, pipelined fsyncs, recovery;
//! - [`follower`]: what the writer does for a follower: the leader's batches, truncation;
//! - [`delayed`]: recording queue groups' delayed runs alongside an append.

mod delayed;
mod follower;
#[cfg(test)]
mod tests;
mod writer;

pub(crate) use delayed::DelayLog;
pub(crate) use follower::{LeaderRuns, Position, Replicate, TruncateTo};

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use strom_protocol::ErrorCode;
use strom_storage::{Log, LogConfig, LogReader, StorageError, ValidBatch};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::Failure;
use crate::core::delays::{DelayIndex, TopicId};
use crate::core::producers::ProducerStates;
use crate::core::replication::leader::{BrokerId, Leadership};
use crate::core::replication::replica::{AppendSignal, Replica};
use crate::stats::Stats;
use writer::{Writer, writer};

/// How long a partition keeps an idle producer's sequence state (Kafka's
/// `producer.id.expiration.ms` default).
const PRODUCER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How a produce wants to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once appended (in the page cache, readable by fetches).
    Appended,
    /// Once an fsync covers the batches, on the leader and on every in-sync replica.
    Fsynced,
    /// Once every in-sync replica has the batches: the high watermark passed them (native
    /// `ACKS_ALL`).
    Replicated,
}

/// The writer's answer to one append: the base offset, or an error code and message.
pub type AppendReply = Result<i64, (ErrorCode, String)>;

#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub batches: Vec<ValidBatch>,
    pub durability: Durability,
    pub reply: oneshot::Sender<AppendReply>,
    /// Delivery times for queue groups, when some batch has one.
    pub delays: Option<DelayedAppend>,
}

/// An append whose batches (some of them) are delayed for queue groups (docs/queues.md).
#[derive(Debug)]
pub(crate) struct DelayedAppend {
    /// Per batch, its delivery time (ms since the Unix epoch; 0: not delayed).
    pub times: Vec<i64>,
    /// `__queue_delays`, where the delayed runs are recorded.
    pub state: Arc<Partition>,
    pub topic_id: TopicId,
    /// Gets the wait for the runs' record, which the produce must also wait for (taken when
    /// it is sent).
    pub recorded: Option<oneshot::Sender<oneshot::Receiver<AppendReply>>>,
}

#[derive(Debug)]
pub(crate) enum WriterMsg {
    Append(AppendRequest),
    /// New topic settings (boxed: every message moves through the queue and the writer's
    /// batch, and the settings would make each one three times larger).
    Configure(Box<LogConfig>),
    /// Run retention and compaction.
    Maintain,
    /// Move the log start to an offset (Kafka's DeleteRecords; -1: the end); answers the start
    /// afterwards.
    DeleteRecords {
        before: i64,
        done: oneshot::Sender<Result<i64, (ErrorCode, String)>>,
    },
    /// This broker leads the partition as the metadata image says: the replication view starts
    /// at the log's end, and batches appended from now on are stamped with the leader epoch.
    Lead {
        lead: Box<Leadership>,
        done: oneshot::Sender<()>,
    },
    /// Kafka's OffsetForLeaderEpoch on the log: the largest epoch at or below this one that the
    /// log holds, and where it ends.
    EpochEnd {
        epoch: i32,
        done: oneshot::Sender<(i32, i64)>,
    },
    /// A follower's append of batches its leader sent (`leader` leading in `epoch`).
    Replicate(Box<Replicate>),
    /// A follower's truncation where its log parts from its leader's.
    Truncate {
        leader: BrokerId,
        epoch: i32,
        to: TruncateTo,
        /// Where the runs of truncated records are taken back.
        delay_log: Option<DelayLog>,
        done: oneshot::Sender<Result<Position, Failure>>,
    },
    /// The log's end and latest epoch, after everything queued before.
    Position(oneshot::Sender<Position>),
    /// Close the log cleanly (or delete it) and stop.
    Stop {
        delete: bool,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// Requests the writer may hold in its queue before producers wait.
const QUEUE_DEPTH: usize = 1024;
/// Largest append (bytes of a group) done on the writer's own task instead of the blocking pool.
const INLINE_APPEND_BYTES: usize = 256 * 1024;

/// Most appends the writer gathers into one storage call.
const MAX_GROUP: usize = 4096;

/// A partition as connections see it. Cheap to share.
#[derive(Debug)]
pub struct Partition {
    /// Partition index within its topic.
    pub index: i32,
    reader: LogReader,
    tx: mpsc::Sender<WriterMsg>,
    /// The high watermark and what moves it.
    replica: Arc<Replica>,
    delays: Arc<DelayIndex>,
    stats: Arc<PartitionStats>,
    /// Set while a maintenance pass is queued for the writer (it clears it as the pass starts).
    maintenance_queued: Arc<AtomicBool>,
}

/// What a partition's writer counts for `/metrics`: per append group, never per record.
#[derive(Debug, Default)]
pub(crate) struct PartitionStats {
    /// Records appended since the broker started.
    pub records: AtomicU64,
    /// Record batch bytes appended since the broker started.
    pub bytes: AtomicU64,
    /// Idempotent producers whose state the partition keeps.
    pub producers: AtomicU64,
}

impl Partition {
    /// Starts the writer task for `log` and returns the partition handle.
    pub(crate) fn start(
        index: i32,
        log: Log,
        producers: ProducerStates,
        topic: Arc<str>,
        delayed_runs: Arc<AtomicUsize>,
        broker: Arc<Stats>,
        appended: AppendSignal,
    ) -> Arc<Self> {
        let reader = log.reader();
        let stats = Arc::new(PartitionStats::default());
        stats
            .producers
            .store(producers.len() as u64, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let replica = Arc::new(Replica::alone(
            log.end_offset(),
            log.durable_offset(),
            log.config().has_flush_policy(),
            appended,
        ));
        let delays = Arc::new(DelayIndex::new(delayed_runs));
        let maintenance_queued = Arc::new(AtomicBool::new(false));
        let state = Writer {
            maintenance_queued: maintenance_queued.clone(),
            delays: delays.clone(),
            end: log.end_offset(),
            replica: replica.clone(),
            producers,
            topic,
            index,
            recovery_error: None,
            flushing: None,
            flush_to: 0,
            waiting: VecDeque::new(),
            writing_back: Arc::new(AtomicBool::new(false)),
            stats: stats.clone(),
            broker,
        };
        tokio::spawn(writer(log, rx, state));
        Arc::new(Self {
            index,
            reader,
            tx,
            replica,
            delays,
            stats,
            maintenance_queued,
        })
    }

    /// Queues a retention and compaction pass unless one is queued already, or the writer's
    /// queue is full (the next interval asks again). Returns whether it queued one. A writer
    /// slower than the maintenance interval so runs one pass per turn instead of collecting a
    /// backlog of them ahead of producers' appends, which then wait behind every pass.
    pub(crate) fn request_maintenance(&self) -> bool {
        if self.maintenance_queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        match self.tx.try_send(WriterMsg::Maintain) {
            Ok(()) => true,
            Err(_) => {
                self.maintenance_queued.store(false, Ordering::Release);
                false
            }
        }
    }

    /// What the partition's writer counted.
    pub fn stats(&self) -> &PartitionStats {
        &self.stats
    }

    /// Requests queued for the partition's writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The partition's delayed runs, for queue groups.
    pub fn delays(&self) -> &Arc<DelayIndex> {
        &self.delays
    }

    /// Read access to the log.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// The high watermark: consumers read below it (the log end, or the durable offset for a
    /// topic with a flush policy, while the partition has no other replica).
    pub fn high_watermark(&self) -> i64 {
        self.replica.high_watermark()
    }

    /// A receiver that changes whenever the high watermark moves: what consumers' long polls
    /// wait on.
    pub fn watch_hw(&self) -> watch::Receiver<i64> {
        self.replica.watch_hw()
    }

    /// The partition's replication state.
    pub(crate) fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The metadata image makes this broker the partition's leader as `lead` says: its
    /// followers' fetches are answered, and appends from now on are stamped with the epoch.
    /// A new leadership is taken up by the writer, after everything queued before it (a
    /// follower's append or truncation in flight would otherwise move the log end under the
    /// new epoch's start), and this returns once it has been.
    pub(crate) async fn become_leader(&self, lead: Leadership) {
        let Err(lead) = self.replica.retake(lead) else {
            return;
        };
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::Lead {
            lead: Box::new(lead),
            done,
        })
        .await;
        let _ = rx.await;
    }

    /// The metadata image makes this broker a follower of `leader` in its epoch (`None`: the
    /// partition has no leader now): producers' appends are refused, the fetcher's taken.
    pub(crate) fn become_follower(&self, leader: Option<(BrokerId, i32)>) {
        self.replica.follow(
            leader,
            self.reader.end_offset(),
            self.reader.durable_offset(),
        );
    }

    /// The log's end and latest epoch, after everything queued before.
    pub(crate) async fn position(&self) -> Result<Position, Failure> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::Position(done)).await;
        rx.await.map_err(|_| closing())
    }

    /// A follower's append of `records` from `leader` in `epoch` (with what the leader
    /// reported); answers the log's position after it.
    pub(crate) async fn replicate(
        &self,
        leader: BrokerId,
        epoch: i32,
        records: bytes::Bytes,
        leader_hw: i64,
        durable_wanted: i64,
        runs: LeaderRuns,
    ) -> Result<Position, Failure> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::Replicate(Box::new(Replicate {
            leader,
            epoch,
            records,
            leader_hw,
            durable_wanted,
            runs,
            done,
        })))
        .await;
        rx.await.unwrap_or_else(|_| Err(closing()))
    }

    /// A follower's truncation (see [`TruncateTo`]); answers the log's position after it.
    pub(crate) async fn truncate(
        &self,
        leader: BrokerId,
        epoch: i32,
        to: TruncateTo,
        delay_log: Option<DelayLog>,
    ) -> Result<Position, Failure> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::Truncate {
            leader,
            epoch,
            to,
            delay_log,
            done,
        })
        .await;
        rx.await.unwrap_or_else(|_| Err(closing()))
    }

    /// Queues `batches` for appending; the receiver resolves with the base offset.
    pub(crate) async fn append(
        &self,
        batches: Vec<ValidBatch>,
        durability: Durability,
    ) -> oneshot::Receiver<AppendReply> {
        self.append_delayed(batches, durability, None).await
    }

    /// Appends `batches` and waits for the acknowledgement `durability` asks for, on this
    /// broker and (for [`Durability::Fsynced`] and [`Durability::Replicated`]) on every
    /// in-sync replica; the broker's own writes (group commits, dead letters, redrives) use
    /// it. Answers the base offset.
    pub(crate) async fn append_acknowledged(
        &self,
        batches: Vec<ValidBatch>,
        durability: Durability,
    ) -> Result<i64, Failure> {
        let epoch = match durability {
            Durability::Appended => None,
            _ => Some(self.replica.check_replicated_append()?),
        };
        let count: i64 = batches.iter().map(ValidBatch::record_count).sum();
        let base = self
            .append(batches, durability)
            .await
            .await
            .unwrap_or_else(|_| Err(closing()))?;
        if let Some(epoch) = epoch {
            self.replica
                .acknowledged(base + count, durability == Durability::Fsynced, epoch)
                .await?;
        }
        Ok(base)
    }

    /// [`Partition::append`] with delivery times for queue groups.
    pub(crate) async fn append_delayed(
        &self,
        batches: Vec<ValidBatch>,
        durability: Durability,
        delays: Option<DelayedAppend>,
    ) -> oneshot::Receiver<AppendReply> {
        let (reply, rx) = oneshot::channel();
        let msg = WriterMsg::Append(AppendRequest {
            batches,
            durability,
            reply,
            delays,
        });
        if let Err(mpsc::error::SendError(WriterMsg::Append(req))) = self.tx.send(msg).await {
            let _ = req.reply.send(Err((
                ErrorCode::UnknownTopicOrPartition,
                "the partition is being deleted or the broker is shutting down".into(),
            )));
        }
        rx
    }

    /// The largest leader epoch at or below `epoch` that the log holds and the offset where it
    /// ends (`(-1, -1)`: none that old), after everything queued before.
    pub(crate) async fn end_offset_for_epoch(&self, epoch: i32) -> Result<(i32, i64), Failure> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::EpochEnd { epoch, done }).await;
        rx.await.map_err(|_| closing())
    }

    /// Moves the log start to `before` (-1: the end) after everything queued before; returns
    /// the start afterwards.
    pub(crate) async fn delete_records(&self, before: i64) -> Result<i64, (ErrorCode, String)> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::DeleteRecords { before, done }).await;
        rx.await.unwrap_or_else(|_| {
            Err((
                ErrorCode::UnknownTopicOrPartition,
                "the partition is being deleted or the broker is shutting down".into(),
            ))
        })
    }

    /// Calls `f` with every record of an internal (uncompressed) log, from its start to its
    /// end, in offset order: how coordinators rebuild their state at start-up. Batches that are
    /// not uncompressed record batches are skipped.
    pub(crate) fn for_each_record(
        &self,
        mut f: impl FnMut(strom_protocol::batch::Record),
    ) -> Result<(), StorageError> {
        let reader = self.reader();
        let mut offset = reader.start_offset();
        while offset < reader.end_offset() {
            let r = reader.read(offset, 1 << 20)?;
            if r.data.is_empty() {
                break;
            }
            for item in strom_protocol::batch::BatchIter::new(&r.data) {
                let Ok((range, _)) = item else { break };
                let Ok(records) = strom_protocol::batch::Records::new(r.data.slice(range)) else {
                    continue;
                };
                for rec in records.flatten() {
                    if rec.offset >= offset {
                        f(rec);
                    }
                }
            }
            if r.next_offset <= offset {
                break;
            }
            offset = r.next_offset;
        }
        Ok(())
    }

    pub(crate) async fn send(&self, msg: WriterMsg) {
        let _ = self.tx.send(msg).await;
    }
}

/// The answer when the partition's writer is gone.
pub(super) fn closing() -> Failure {
    (
        ErrorCode::UnknownTopicOrPartition,
        "the partition is being deleted or the broker is shutting down".into(),
    )
}
