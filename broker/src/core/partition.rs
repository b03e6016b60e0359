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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::VecDeque;
use strom_protocol::ErrorCode;

use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::{Log, LogConfig, LogReader, PendingFlush, StorageError, ValidBatch};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::Failure;
use crate::core::delays::{self, Delay, DelayIndex, TopicId};
use crate::core::producers::{ProducerStates, Verdict};
use crate::core::replication::replica::Replica;
use crate::error::storage_code;
use crate::stats::Stats;

/// How long a partition keeps an idle producer's sequence state (Kafka's
/// `producer.id.expiration.ms` default).
const PRODUCER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How a produce wants to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once appended (in the page cache, readable by fetches).
    Appended,
    /// Once an fsync covers the batches.
    Fsynced,
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
    /// `__queue_state`, where the delayed runs are recorded.
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
    /// This broker leads the partition in `epoch` (the metadata image's leader epoch): batches
    /// appended from now on are stamped with it.
    Lead(i32),
    /// Kafka's OffsetForLeaderEpoch on the log: the largest epoch at or below this one that the
    /// log holds, and where it ends.
    EpochEnd {
        epoch: i32,
        done: oneshot::Sender<(i32, i64)>,
    },
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
    /// The leader epoch last handed to the writer (-1: none yet).
    led_epoch: AtomicI32,
    delays: Arc<DelayIndex>,
    stats: Arc<PartitionStats>,
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
        ));
        let delays = Arc::new(DelayIndex::new(delayed_runs));
        let state = Writer {
            delays: delays.clone(),
            end: log.end_offset(),
            replica: replica.clone(),
            producers,
            topic,
            index,
            recovery_error: None,
            flushing: None,
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
            led_epoch: AtomicI32::new(-1),
            delays,
            stats,
        })
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

    /// Queues `batches` for appending; the receiver resolves with the base offset.
    pub(crate) async fn append(
        &self,
        batches: Vec<ValidBatch>,
        durability: Durability,
    ) -> oneshot::Receiver<AppendReply> {
        self.append_delayed(batches, durability, None).await
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

    /// This broker leads the partition in `epoch`: appends queued after this are stamped with it.
    /// Sent to the writer only when the epoch changed.
    pub(crate) async fn lead(&self, epoch: i32) {
        if self.led_epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.send(WriterMsg::Lead(epoch)).await;
        }
    }

    /// The largest leader epoch at or below `epoch` that the log holds and the offset where it
    /// ends (`(-1, -1)`: none that old), after everything queued before.
    pub(crate) async fn end_offset_for_epoch(&self, epoch: i32) -> Result<(i32, i64), Failure> {
        let (done, rx) = oneshot::channel();
        self.send(WriterMsg::EpochEnd { epoch, done }).await;
        rx.await.map_err(|_| {
            (
                ErrorCode::UnknownTopicOrPartition,
                "the partition is being deleted or the broker is shutting down".into(),
            )
        })
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

/// What the writer task keeps besides the log.
struct Writer {
    /// The log end after the last append.
    end: i64,
    replica: Arc<Replica>,
    delays: Arc<DelayIndex>,
    producers: ProducerStates,
    topic: Arc<str>,
    index: i32,
    /// Why the last recovery attempt failed (logged once per distinct reason).
    recovery_error: Option<String>,
    /// The fsync running on the blocking pool while the writer goes on appending.
    flushing: Option<JoinHandle<(PendingFlush, Result<(), StorageError>)>>,
    /// Appends stored but waiting for an fsync before they are acknowledged, oldest first.
    waiting: VecDeque<Waiter>,
    /// Set while an early write-back (`writeback.bytes`) runs on the blocking pool.
    writing_back: Arc<AtomicBool>,
    stats: Arc<PartitionStats>,
    broker: Arc<Stats>,
}

/// An append waiting for the durable offset to reach `end`.
struct Waiter {
    reply: oneshot::Sender<AppendReply>,
    first: i64,
    end: i64,
}

impl Writer {
    /// Counts an append group of `records` records and `bytes` bytes.
    fn counted(&self, records: i64, bytes: usize) {
        let s = &self.stats;
        s.records
            .fetch_add(u64::try_from(records).unwrap_or(0), Ordering::Relaxed);
        s.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        s.producers
            .store(self.producers.len() as u64, Ordering::Relaxed);
    }

    /// Starts an fsync if none is running and one is needed: appends are waiting for one, or the
    /// topic's flush policy says it is time. Appends go on while it runs; [`Writer::flushed`]
    /// takes its outcome.
    fn start_flush(&mut self, log: &mut Log) {
        if self.flushing.is_some() || (self.waiting.is_empty() && !log.flush_wanted()) {
            return;
        }
        match log.start_flush() {
            Ok(Some(flush)) => {
                let broker = self.broker.clone();
                self.flushing = Some(tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let r = flush.run();
                    broker.fsync.observe(started.elapsed());
                    (flush, r)
                }));
            }
            Ok(None) => self.acknowledge(log.durable_offset()),
            Err(e) => self.fail_waiting(&e),
        }
    }

    /// Starts the kernel's write-back of the latest appends (`writeback.bytes`) on the blocking
    /// pool, unless one is still running (the next one then covers more). Nothing waits for it.
    fn start_writeback(&mut self, log: &mut Log) {
        if self.writing_back.load(Ordering::Acquire) || !log.writeback_wanted() {
            return;
        }
        if let Some(wb) = log.start_writeback() {
            self.writing_back.store(true, Ordering::Release);
            let running = self.writing_back.clone();
            tokio::task::spawn_blocking(move || {
                wb.run();
                running.store(false, Ordering::Release);
            });
        }
    }

    /// Takes the outcome of the running fsync: acknowledges what it made durable, or fails
    /// every waiting append (the log is poisoned then), and starts the next fsync if needed.
    fn flushed(
        &mut self,
        log: &mut Log,
        done: Result<(PendingFlush, Result<(), StorageError>), tokio::task::JoinError>,
    ) {
        self.flushing = None;
        match done {
            Ok((flush, result)) => match log.finish_flush(flush, result) {
                Ok(durable) => self.acknowledge(durable),
                Err(e) => {
                    tracing::error!(topic = %self.topic, partition = self.index, error = %e, "fsync failed; the partition refuses appends until it recovers");
                    self.fail_waiting(&e);
                }
            },
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "fsync task failed");
                self.fail_waiting(&StorageError::Poisoned {
                    dir: log.dir().to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
        self.start_flush(log);
    }

    /// Waits for the running fsync, and the one it may start for appends still waiting.
    async fn settle(&mut self, log: &mut Log) {
        while let Some(task) = self.flushing.take() {
            let done = task.await;
            self.flushed(log, done);
        }
    }

    fn acknowledge(&mut self, durable: i64) {
        self.replica.progress(self.end, durable);
        while self.waiting.front().is_some_and(|w| w.end <= durable) {
            if let Some(w) = self.waiting.pop_front() {
                let _ = w.reply.send(Ok(w.first));
            }
        }
    }

    fn fail_waiting(&mut self, e: &StorageError) {
        let (code, msg) = (storage_code(e), e.to_string());
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err((code, msg.clone())));
        }
    }
}

/// Resolves when the running fsync finishes; never, if none is running.
async fn flush_done(
    flushing: &mut Option<JoinHandle<(PendingFlush, Result<(), StorageError>)>>,
) -> Result<(PendingFlush, Result<(), StorageError>), tokio::task::JoinError> {
    match flushing {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The single writer of one partition's log.
async fn writer(log: Log, mut rx: mpsc::Receiver<WriterMsg>, mut w: Writer) {
    let (topic, index) = (w.topic.clone(), w.index);
    // Boxed: the log moves in and out of the append, recovery and blocking-pool futures for
    // every group, and is ~500 bytes.
    let mut log = Some(Box::new(log));
    let mut flush_timer = flush_interval(log.as_ref().map(|l| l.config()));
    let mut msgs: Vec<WriterMsg> = Vec::new();
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            done = flush_done(&mut w.flushing) => {
                let Some(l) = log.as_mut() else { break };
                w.flushed(l, done);
                continue;
            }
            _ = tick(&mut flush_timer) => {
                let Some(l) = log.take() else { break };
                let (l, usable) = recover_if_poisoned(l, &mut w).await;
                log = l;
                match (log.as_mut(), usable) {
                    (Some(l), Ok(())) => w.start_flush(l),
                    (Some(_), Err(_)) => {}
                    (None, _) => break,
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        msgs.push(first);
        while msgs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut appends: Vec<AppendRequest> = Vec::new();
        for msg in msgs.drain(..) {
            let control = match msg {
                WriterMsg::Append(a) => {
                    appends.push(a);
                    continue;
                }
                control => control,
            };
            // Keep order: appends queued before a control message go first.
            let Some(l) = log.take() else { break };
            let Some(mut l) = append_group(l, std::mem::take(&mut appends), &mut w).await else {
                break;
            };
            match control {
                WriterMsg::Configure(c) => {
                    w.replica
                        .set_durable(c.has_flush_policy(), l.end_offset(), l.durable_offset());
                    l.set_config(*c);
                    flush_timer = flush_interval(Some(l.config()));
                    log = Some(l);
                }
                WriterMsg::Maintain => {
                    let (l, usable) = recover_if_poisoned(l, &mut w).await;
                    let Some(l) = l else { break };
                    if usable.is_err() {
                        log = Some(l);
                        continue;
                    }
                    w.producers.expire(now_ms(), PRODUCER_EXPIRY_MS);
                    w.counted(0, 0);
                    let snapshot = w.producers.encode(l.end_offset());
                    let (l, r) = blocking(l, move |l| {
                        ProducerStates::save(l.dir(), &snapshot)?;
                        l.enforce_retention()?;
                        l.compact()
                    })
                    .await;
                    if let Err(e) = r {
                        tracing::error!(topic = %topic, partition = index, error = %e, "retention or compaction failed");
                    }
                    log = l;
                }
                WriterMsg::Lead(epoch) => {
                    if let Err(e) = l.set_leader_epoch(epoch) {
                        tracing::warn!(topic = %topic, partition = index, epoch, error = %e, "cannot take up the leader epoch; appends keep the log's");
                    }
                    log = Some(l);
                }
                WriterMsg::EpochEnd { epoch, done } => {
                    let _ = done.send(l.end_offset_for_epoch(epoch));
                    log = Some(l);
                }
                WriterMsg::DeleteRecords { before, done } => {
                    let (l, r) = blocking(l, move |l| l.delete_records_before(before)).await;
                    let _ = done.send(r.map_err(|e| (storage_code(&e), e.to_string())));
                    log = l;
                }
                WriterMsg::Stop { delete, done } => {
                    w.settle(&mut l).await;
                    // With the producer state saved at the log end, the next start replays
                    // nothing (without it, start-up reads every batch since the last snapshot).
                    let snapshot = (!delete).then(|| w.producers.encode(l.end_offset()));
                    let r = tokio::task::spawn_blocking(move || match snapshot {
                        Some(snapshot) => {
                            ProducerStates::save(l.dir(), &snapshot)?;
                            l.close()
                        }
                        None => l.delete(),
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(StorageError::Poisoned {
                            dir: Default::default(),
                            reason: e.to_string(),
                        })
                    });
                    let _ = done.send(r);
                    return;
                }
                WriterMsg::Append(_) => log = Some(l),
            }
        }
        if !appends.is_empty() {
            let Some(l) = log.take() else { break };
            log = append_group(l, appends, &mut w).await;
        }
        if log.is_none() {
            break;
        }
    }
    // Every sender is gone without a Stop (or the log failed): close what is left cleanly.
    if let Some(mut l) = log {
        w.settle(&mut l).await;
        let _ = tokio::task::spawn_blocking(move || l.close()).await;
    }
}

fn flush_interval(config: Option<&LogConfig>) -> Option<tokio::time::Interval> {
    let ms = config?.flush_ms?;
    let mut i = tokio::time::interval(Duration::from_millis(u64::try_from(ms).ok()?.max(1)));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(i)
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs `f` on the blocking pool with the log moved in and back out. `None` if the closure
/// panicked: the log went with it, and the partition stops (its files stay as they are; the next
/// start recovers them).
async fn blocking<T: Send + 'static>(
    mut log: Box<Log>,
    f: impl FnOnce(&mut Log) -> Result<T, StorageError> + Send + 'static,
) -> (Option<Box<Log>>, Result<T, StorageError>) {
    let dir = log.dir().to_path_buf();
    match tokio::task::spawn_blocking(move || {
        let r = f(&mut log);
        (log, r)
    })
    .await
    {
        Ok((log, r)) => (Some(log), r),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "partition writer failed; the partition stops");
            (
                None,
                Err(StorageError::Poisoned {
                    dir,
                    reason: e.to_string(),
                }),
            )
        }
    }
}

/// Brings a log that an earlier failure poisoned back into service: `Log::recover` re-reads it
/// from disk, then the producer state is rebuilt from the log, because the failed call may have
/// stored some batches that an idempotent producer will retry (they must be answered as
/// duplicates, with the offsets they got). While the fault lasts every attempt fails and the
/// log stays poisoned; a failure is logged once per distinct reason.
async fn recover_if_poisoned(
    mut log: Box<Log>,
    w: &mut Writer,
) -> (Option<Box<Log>>, Result<(), StorageError>) {
    if log.poisoned().is_none() {
        return (Some(log), Ok(()));
    }
    // Recovery re-reads the files: the fsync still running on them must end first.
    w.settle(&mut log).await;
    let (log, r) = blocking(log, |l| {
        l.recover()?;
        ProducerStates::load(l, now_ms())
    })
    .await;
    match r {
        Ok(producers) => {
            w.producers = producers;
            w.recovery_error = None;
            if let Some(l) = &log {
                w.end = l.end_offset();
                w.replica.progress(l.end_offset(), l.durable_offset());
                tracing::info!(topic = %w.topic, partition = w.index, end = l.end_offset(), "partition recovered; appends resume");
            }
            (log, Ok(()))
        }
        Err(e) => {
            let reason = e.to_string();
            if w.recovery_error.as_deref() != Some(reason.as_str()) {
                tracing::warn!(topic = %w.topic, partition = w.index, error = %reason, "partition cannot recover yet; appends are refused");
                w.recovery_error = Some(reason);
            }
            (log, Err(e))
        }
    }
}

/// Appends every request of a group with one storage call and answers each. Idempotent
/// producers' batches are checked against the partition's producer state first: retries are
/// answered with their first offsets, out-of-order or fenced batches are refused.
async fn append_group(
    log: Box<Log>,
    appends: Vec<AppendRequest>,
    w: &mut Writer,
) -> Option<Box<Log>> {
    if appends.is_empty() {
        return Some(log);
    }
    let (log, usable) = recover_if_poisoned(log, w).await;
    if let Err(e) = usable {
        let code = storage_code(&e);
        let msg = e.to_string();
        for a in appends {
            let _ = a.reply.send(Err((code, msg.clone())));
        }
        return log;
    }
    let mut log = log?;
    let mut accepted = Vec::with_capacity(appends.len());
    for a in appends {
        let headers: Vec<&strom_protocol::batch::BatchHeader> =
            a.batches.iter().map(ValidBatch::header).collect();
        match w.producers.check(&headers) {
            Verdict::Append => accepted.push(a),
            Verdict::Duplicate(offset) => {
                // A retry of batches whose fsync may still be running: a durable one is
                // answered only once they are durable, as the original will be.
                let end = offset + a.batches.iter().map(ValidBatch::record_count).sum::<i64>();
                if a.durability == Durability::Fsynced && end > log.durable_offset() {
                    w.waiting.push_back(Waiter {
                        reply: a.reply,
                        first: offset,
                        end,
                    });
                } else {
                    let _ = a.reply.send(Ok(offset));
                }
            }
            Verdict::Reject(code, msg) => {
                let _ = a.reply.send(Err((code, msg)));
            }
        }
    }
    if accepted.is_empty() {
        w.producers.commit();
        w.start_flush(&mut log);
        return Some(log);
    }
    let mut appends = accepted;
    let batches: Vec<ValidBatch> = appends
        .iter()
        .flat_map(|a| a.batches.iter().cloned())
        .collect();
    // Appends never fsync here: that runs beside them (`Writer::start_flush`). A small append
    // is a write into the page cache: do it on this task, since a hop to the blocking pool
    // costs more than the write itself, and with many partitions every request fans out into
    // one append per partition. Large ones go to the blocking pool.
    let bytes: usize = batches.iter().map(|b| b.bytes().len()).sum();
    // Delayed runs are entered (and their records queued on `__queue_state`) before the
    // append makes the records readable.
    let registered = register_delays(&mut appends, log.end_offset(), w).await;
    let (mut log, result) = if bytes <= INLINE_APPEND_BYTES {
        let mut log = log;
        let result = log.append_deferred(&batches);
        (Some(log), result)
    } else {
        blocking(log, move |l| l.append_deferred(&batches)).await
    };
    if let Some(l) = &log {
        w.end = l.end_offset();
        w.replica.progress(l.end_offset(), l.durable_offset());
    }
    match result {
        Ok(info) => {
            let now = now_ms();
            // The flush policy asking for an fsync now means these appends are acknowledged
            // after it, as if they had asked for one.
            let policy_flush = log.as_ref().is_some_and(|l| l.flush_wanted());
            let mut base = info.base_offset;
            for a in appends {
                let first = base;
                for b in &a.batches {
                    w.producers.record(b.header(), base, now);
                    base += b.record_count();
                }
                if a.durability == Durability::Fsynced || policy_flush {
                    w.waiting.push_back(Waiter {
                        reply: a.reply,
                        first,
                        end: info.next_offset,
                    });
                } else {
                    let _ = a.reply.send(Ok(first));
                }
            }
            w.producers.commit();
            w.counted(info.next_offset - info.base_offset, bytes);
            if let Some(l) = log.as_mut() {
                w.start_flush(l);
                w.start_writeback(l);
            }
            log
        }
        // A batch the writer refuses (its topic's limit changed since the connection checked):
        // retry one request at a time so only the offending one fails.
        Err(StorageError::MessageTooLarge { .. } | StorageError::InvalidBatch { .. })
            if appends.len() > 1 =>
        {
            w.producers.abort();
            withdraw_delays(registered, w).await;
            let mut log = log;
            for a in appends {
                log = match log {
                    Some(l) => Box::pin(append_group(l, vec![a], w)).await,
                    None => None,
                };
            }
            log
        }
        Err(e) => {
            w.producers.abort();
            withdraw_delays(registered, w).await;
            let code = storage_code(&e);
            let msg = e.to_string();
            for a in appends {
                let _ = a.reply.send(Err((code, msg.clone())));
            }
            log
        }
    }
}

/// Enters the delayed runs of `appends` (to be appended from `base`) in the partition's index
/// and queues their records on `__queue_state`, handing each produce the wait for its record.
/// Returns what was entered, to withdraw if the append fails.
async fn register_delays(
    appends: &mut [AppendRequest],
    base: i64,
    w: &Writer,
) -> Vec<(Arc<Partition>, TopicId, Delay)> {
    let mut entered = Vec::new();
    if appends.iter().all(|a| a.delays.is_none()) {
        return entered;
    }
    let mut offset = base;
    for a in appends.iter_mut() {
        let durability = a.durability;
        let Some(d) = &mut a.delays else {
            offset += a.batches.iter().map(ValidBatch::record_count).sum::<i64>();
            continue;
        };
        // Consecutive batches with one time are one run.
        let mut runs: Vec<Delay> = Vec::new();
        for (b, at) in a.batches.iter().zip(d.times.iter().copied()) {
            let n = b.record_count();
            if at > 0 && n > 0 {
                match runs.last_mut() {
                    Some(r) if r.at == at && r.last + 1 == offset => r.last = offset + n - 1,
                    _ => runs.push(Delay {
                        first: offset,
                        last: offset + n - 1,
                        at,
                    }),
                }
            }
            offset += n;
        }
        if runs.is_empty() {
            continue;
        }
        let mut builder = BatchBuilder::default();
        let now = now_ms();
        let mut built = Ok(());
        for r in &runs {
            let k = delays::key(&w.topic, w.index, r.first);
            let v = delays::value(&d.topic_id, r.last, r.at);
            if built.is_ok() {
                built = builder.push(&RecordRef {
                    timestamp: now,
                    key: Some(&k),
                    value: Some(&v),
                    headers: &[],
                });
            }
        }
        let batch = built
            .map_err(|e| e.to_string())
            .and_then(|()| builder.finish().map_err(|e| e.to_string()))
            .and_then(|b| ValidBatch::new(b).map_err(|e| e.to_string()));
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                // Not delayed then: the produce is answered without the wait.
                tracing::error!(topic = %w.topic, partition = w.index, error = %e, "a delayed run could not be recorded; delivering at once");
                continue;
            }
        };
        let _order = w.delays.order.lock().await;
        for r in &runs {
            w.delays.insert(*r);
            entered.push((d.state.clone(), d.topic_id, *r));
        }
        let rx = d.state.append(vec![batch], durability).await;
        drop(_order);
        // The produce waits for this too; if it is gone the record is still written.
        if let Some(tx) = d.recorded.take() {
            let _ = tx.send(rx);
        }
    }
    entered
}

/// Takes back delayed runs whose append failed: out of the index, and a withdrawal queued on
/// `__queue_state` (the offsets will be given to other records).
async fn withdraw_delays(entered: Vec<(Arc<Partition>, TopicId, Delay)>, w: &Writer) {
    for (state, _, d) in entered {
        w.delays.remove(d.first);
        let k = delays::key(&w.topic, w.index, d.first);
        let mut builder = BatchBuilder::default();
        let pushed = builder.push(&RecordRef {
            timestamp: now_ms(),
            key: Some(&k),
            value: None,
            headers: &[],
        });
        if let Ok(batch) = pushed
            .map_err(|e| e.to_string())
            .and_then(|()| builder.finish().map_err(|e| e.to_string()))
            .and_then(|b| ValidBatch::new(b).map_err(|e| e.to_string()))
        {
            let _order = w.delays.order.lock().await;
            drop(state.append(vec![batch], Durability::Appended).await);
        }
    }
}
