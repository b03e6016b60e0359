//! A partition's writer task: it drains its queue, appends producers' batches in groups with one
//! storage call, keeps one fsync running beside the appends and answers what waits for it, and
//! brings a log an earlier failure poisoned back into service.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strom_protocol::ErrorCode;
use strom_storage::{Log, LogConfig, PendingFlush, StorageError, ValidBatch};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::delayed::{register_delays, withdraw_delays};
use super::follower::{not_following, position, replicate, truncate};
use super::{
    AppendReply, AppendRequest, Durability, INLINE_APPEND_BYTES, MAX_GROUP, PRODUCER_EXPIRY_MS,
    PartitionStats, WriterMsg, now_ms,
};
use crate::core::delays::DelayIndex;
use crate::core::producers::{ProducerStates, Verdict};
use crate::core::replication::replica::Replica;
use crate::error::storage_code;
use crate::stats::Stats;

/// What the writer task keeps besides the log.
pub(super) struct Writer {
    /// The log end after the last append.
    pub(super) end: i64,
    pub(super) replica: Arc<Replica>,
    pub(super) delays: Arc<DelayIndex>,
    pub(super) producers: ProducerStates,
    pub(super) topic: Arc<str>,
    pub(super) index: i32,
    /// Why the last recovery attempt failed (logged once per distinct reason).
    pub(super) recovery_error: Option<String>,
    /// The fsync running on the blocking pool while the writer goes on appending.
    pub(super) flushing: Option<JoinHandle<(PendingFlush, Result<(), StorageError>)>>,
    /// A follower fsyncs up to here without waiting for its flush policy: a durable produce on
    /// the leader waits for it.
    pub(super) flush_to: i64,
    /// Appends stored but waiting for an fsync before they are acknowledged, oldest first.
    pub(super) waiting: VecDeque<Waiter>,
    /// Set while an early write-back (`writeback.bytes`) runs on the blocking pool.
    pub(super) writing_back: Arc<AtomicBool>,
    pub(super) stats: Arc<PartitionStats>,
    pub(super) broker: Arc<Stats>,
    /// Shared with [`super::Partition::request_maintenance`]: a pass is queued.
    pub(super) maintenance_queued: Arc<AtomicBool>,
}

/// An append waiting for the durable offset to reach `end`.
pub(super) struct Waiter {
    pub(super) reply: oneshot::Sender<AppendReply>,
    pub(super) first: i64,
    pub(super) end: i64,
}

impl Writer {
    /// Counts an append group of `records` records and `bytes` bytes.
    pub(super) fn counted(&self, records: i64, bytes: usize) {
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
    pub(super) fn start_flush(&mut self, log: &mut Log) {
        if self.flushing.is_some()
            || (self.waiting.is_empty()
                && !log.flush_wanted()
                && log.durable_offset() >= self.flush_to.min(log.end_offset()))
        {
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
    pub(super) fn start_writeback(&mut self, log: &mut Log) {
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
    pub(super) fn flushed(
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
    pub(super) async fn settle(&mut self, log: &mut Log) {
        while let Some(task) = self.flushing.take() {
            let done = task.await;
            self.flushed(log, done);
        }
    }

    pub(super) fn acknowledge(&mut self, durable: i64) {
        self.replica.progress(self.end, durable);
        while self.waiting.front().is_some_and(|w| w.end <= durable) {
            if let Some(w) = self.waiting.pop_front() {
                let _ = w.reply.send(Ok(w.first));
            }
        }
    }

    /// A write of this partition failed with `e`: a disk failure fails the broker's storage
    /// (which moves its leaderships away). True when it was one.
    pub(super) fn disk_failed(&self, e: &StorageError) -> bool {
        self.broker.storage.fail(&self.topic, self.index, e)
    }

    pub(super) fn fail_waiting(&mut self, e: &StorageError) {
        self.disk_failed(e);
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
pub(super) async fn writer(log: Log, mut rx: mpsc::Receiver<WriterMsg>, mut w: Writer) {
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
                    // From here on a new request queues the next pass.
                    w.maintenance_queued.store(false, Ordering::Release);
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
                        l.checkpoint_recovery_point()?;
                        l.enforce_retention()?;
                        l.compact()
                    })
                    .await;
                    if let Err(e) = r {
                        w.disk_failed(&e);
                        tracing::error!(topic = %topic, partition = index, error = %e, "retention or compaction failed");
                    }
                    log = l;
                }
                WriterMsg::Lead { lead, done } => {
                    let epoch = lead.leader_epoch;
                    w.replica.lead(*lead, l.end_offset(), l.durable_offset());
                    if l.leader_epoch() != epoch
                        && let Err(e) = l.set_leader_epoch(epoch)
                    {
                        w.disk_failed(&e);
                        tracing::warn!(topic = %topic, partition = index, epoch, error = %e, "cannot take up the leader epoch; appends keep the log's");
                    }
                    let _ = done.send(());
                    log = Some(l);
                }
                WriterMsg::EpochEnd { epoch, done } => {
                    let _ = done.send(l.end_offset_for_epoch(epoch));
                    log = Some(l);
                }
                WriterMsg::Position(done) => {
                    let _ = done.send(position(&l));
                    log = Some(l);
                }
                WriterMsg::Replicate(r) => {
                    log = replicate(l, *r, &mut w).await;
                }
                WriterMsg::Truncate {
                    leader,
                    epoch,
                    to,
                    delay_log,
                    done,
                } => {
                    if !w.replica.follows(leader, epoch) {
                        let _ = done.send(Err(not_following(leader, epoch)));
                        log = Some(l);
                        continue;
                    }
                    let (l, r) = truncate(l, to, delay_log.as_ref(), &mut w).await;
                    let _ = done.send(r);
                    log = l;
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
pub(super) async fn blocking<T: Send + 'static>(
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
pub(super) async fn recover_if_poisoned(
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
        w.disk_failed(&e);
        let code = storage_code(&e);
        let msg = e.to_string();
        for a in appends {
            let _ = a.reply.send(Err((code, msg.clone())));
        }
        return log;
    }
    let mut log = log?;
    if w.replica.status().leading.is_none() {
        // The image made this broker a follower after these were queued: only the leader
        // appends producers' batches.
        for a in appends {
            let _ = a.reply.send(Err((
                ErrorCode::NotLeaderOrFollower,
                "this broker no longer leads the partition".into(),
            )));
        }
        return Some(log);
    }
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
    // Delayed runs are entered (and their records queued on `__queue_delays`) before the
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
            w.disk_failed(&e);
            let code = storage_code(&e);
            let msg = e.to_string();
            for a in appends {
                let _ = a.reply.send(Err((code, msg.clone())));
            }
            log
        }
    }
}
