//! Redrive: moving records from a dead-letter topic back to the topics they came from (or to
//! another topic), at a bounded rate, as a broker task that resumes after a crash without
//! writing a record twice (Amazon SQS's "start message move task" is the model).
//!
//! A task covers, per partition of the dead-letter topic, the offsets from where it starts to
//! the partition's end when it was started (or a range). It copies records in steps of at most
//! [`STEP_RECORDS`] records bound for one target partition:
//! 1. it notes the step (its end, its target partition, and the target's end offset) in
//!    `__queue_state` and waits until that is durable;
//! 2. it appends the copies to the target partition (fsynced);
//! 3. it notes the step done (the partition's next offset moves past it).
//!
//! After a crash, a step that was noted but not done is looked for in the target from the
//! noted end offset on, by the copies' `strom.redrive.source` header; found, only step 3 runs.
//!
//! A copy keeps the key, the value and the headers, except the `strom.dlq.*` ones; it gets
//! `strom.redrive.source` (`<dead-letter topic>/<partition>/<offset>`) and
//! `strom.redrive.count` (1, or one more than the record had). It goes to the record's
//! `strom.dlq.topic` (or the task's target topic) at its `strom.dlq.partition` modulo the
//! target's partition count. It is a new record at a new offset, so queue groups hand it out
//! with fresh attempts. Records without `strom.dlq.topic` (not dead-letter copies) are skipped
//! when no target topic is given.
//!
//! Task record: key `0x03 | u16 len | dead-letter topic`, value `0x01 | u16 len | target (empty:
//! each record's origin) | u32 rate | u64 moved | u64 skipped | u32 partitions | per partition:
//! i32 partition | i64 next | i64 end | u8 step? | (u16 len | topic | i32 partition | i64 since
//! | i64 step end)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchBuilder, BatchIter, HeaderRef, RecordRef, Records, validate};
use strom_protocol::compression::{MAX_DECOMPRESSED_BATCH, decompress};
use strom_storage::ValidBatch;

use super::codec::{CodecError, KEY_REDRIVE};
use super::{StateWrites, now_ms};
use crate::core::partition::Partition;
use crate::core::{Core, Failure};

/// Records copied per step, at most.
pub const STEP_RECORDS: usize = 500;
/// Records per second when the request names no rate, and the most it may name.
pub const DEFAULT_RATE: u32 = 1_000;
pub const MAX_RATE: u32 = 1_000_000;

const H_SOURCE: &str = "strom.redrive.source";
const H_COUNT: &str = "strom.redrive.count";

/// A step noted but maybe not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub topic: String,
    pub partition: i32,
    /// The target's end offset before the step.
    pub since: i64,
    /// The dead-letter partition's offset after the step.
    pub end: i64,
}

/// One dead-letter partition's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionProgress {
    pub partition: i32,
    pub next: i64,
    pub end: i64,
    pub step: Option<Step>,
}

/// A redrive task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Task {
    pub dlq: String,
    /// Empty: each record's origin topic.
    pub target: String,
    pub rate: u32,
    pub moved: u64,
    pub skipped: u64,
    pub partitions: Vec<PartitionProgress>,
}

impl Task {
    /// Whether every partition reached its end.
    pub fn done(&self) -> bool {
        self.partitions.iter().all(|p| p.next >= p.end)
    }

    /// Records still to look at.
    pub fn remaining(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| (p.end - p.next).max(0) as u64)
            .sum()
    }
}

/// The key of a task's record.
pub fn key(dlq: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + dlq.len());
    k.put_u8(KEY_REDRIVE);
    k.put_u16(dlq.len().min(u16::MAX as usize) as u16);
    k.put_slice(&dlq.as_bytes()[..dlq.len().min(u16::MAX as usize)]);
    k
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len().min(u16::MAX as usize);
    out.put_u16(n as u16);
    out.put_slice(&s.as_bytes()[..n]);
}

/// A task's record value.
pub fn encode(t: &Task) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + t.partitions.len() * 48);
    out.put_u8(1);
    put_str(&mut out, &t.target);
    out.put_u32(t.rate);
    out.put_u64(t.moved);
    out.put_u64(t.skipped);
    out.put_u32(t.partitions.len() as u32);
    for p in &t.partitions {
        out.put_i32(p.partition);
        out.put_i64(p.next);
        out.put_i64(p.end);
        match &p.step {
            None => out.put_u8(0),
            Some(s) => {
                out.put_u8(1);
                put_str(&mut out, &s.topic);
                out.put_i32(s.partition);
                out.put_i64(s.since);
                out.put_i64(s.end);
            }
        }
    }
    out
}

/// Reads a task's record value.
pub fn decode(dlq: &str, mut v: &[u8]) -> Result<Task, CodecError> {
    fn need(v: &[u8], n: usize) -> Result<(), CodecError> {
        if v.remaining() < n {
            Err(CodecError("truncated"))
        } else {
            Ok(())
        }
    }
    fn take_str(v: &mut &[u8]) -> Result<String, CodecError> {
        need(v, 2)?;
        let n = v.get_u16() as usize;
        need(v, n)?;
        let (s, rest) = v.split_at(n);
        *v = rest;
        String::from_utf8(s.to_vec()).map_err(|_| CodecError("a string is not UTF-8"))
    }
    need(v, 1)?;
    if v.get_u8() != 1 {
        return Err(CodecError("unknown redrive record version"));
    }
    let target = take_str(&mut v)?;
    need(v, 24)?;
    let rate = v.get_u32();
    let moved = v.get_u64();
    let skipped = v.get_u64();
    let n = v.get_u32() as usize;
    if n > v.remaining() / 21 {
        return Err(CodecError("more partitions than bytes"));
    }
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        need(v, 21)?;
        let partition = v.get_i32();
        let next = v.get_i64();
        let end = v.get_i64();
        let step = match v.get_u8() {
            0 => None,
            1 => {
                let topic = take_str(&mut v)?;
                need(v, 20)?;
                Some(Step {
                    topic,
                    partition: v.get_i32(),
                    since: v.get_i64(),
                    end: v.get_i64(),
                })
            }
            _ => return Err(CodecError("unknown step marker")),
        };
        partitions.push(PartitionProgress {
            partition,
            next,
            end,
            step,
        });
    }
    Ok(Task {
        dlq: dlq.to_string(),
        target,
        rate,
        moved,
        skipped,
        partitions,
    })
}

/// What a redrive request asks for.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub dlq: String,
    /// Empty: each record's origin.
    pub target: String,
    /// 0: [`DEFAULT_RATE`].
    pub rate: u32,
    /// Offsets to start at and stop before, in every partition (None: the start, the end).
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A record copy ready to append, with where it goes.
struct Copy {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
}

fn header_text(rec: &strom_protocol::batch::Record, key: &str) -> Option<String> {
    rec.headers()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

impl Core {
    /// Starts a redrive task (or answers BUSY while one of the same topic runs).
    pub async fn redrive_start(self: &Arc<Self>, req: Start) -> Result<Task, Failure> {
        let route = self.queue_route(&req.dlq).await?;
        let dlq = self.topics.get(&req.dlq).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {}", req.dlq),
            )
        })?;
        if !req.target.is_empty() && self.topics.get(&req.target).is_none() {
            return Err((
                ErrorCode::UnknownTopicOrPartition,
                format!("no target topic {}", req.target),
            ));
        }
        let rate = match req.rate {
            0 => DEFAULT_RATE,
            r if r <= MAX_RATE => r,
            r => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("rate {r} is above {MAX_RATE} records/s"),
                ));
            }
        };
        let mut tasks = self.queues.redrives.lock().await;
        if let Some(t) = tasks.get(&req.dlq)
            && !t.done()
        {
            return Err((
                ErrorCode::Busy,
                format!(
                    "a redrive of {} is running ({} moved, {} to go)",
                    req.dlq,
                    t.moved,
                    t.remaining()
                ),
            ));
        }
        let partitions = dlq
            .partitions
            .iter()
            .map(|p| {
                let r = p.reader();
                let (start, end) = (r.start_offset(), r.end_offset());
                PartitionProgress {
                    partition: p.index,
                    next: req.from.map_or(start, |f| f.clamp(start, end)),
                    end: req.to.map_or(end, |t| t.clamp(start, end)),
                    step: None,
                }
            })
            .collect();
        let task = Task {
            dlq: req.dlq.clone(),
            target: req.target,
            rate,
            moved: 0,
            skipped: 0,
            partitions,
        };
        let mut out = StateWrites::default();
        out.push(&key(&task.dlq), Some(&encode(&task)), now_ms());
        let rx = self.queue_persist(route, out).await;
        tasks.insert(task.dlq.clone(), task.clone());
        drop(tasks);
        Self::queue_durable(rx).await?;
        self.redrive_spawn(&req.dlq);
        Ok(task)
    }

    /// A task's progress, when this broker coordinates it: the routing error otherwise.
    pub async fn redrive_describe(&self, dlq: &str) -> Result<Option<Task>, Failure> {
        self.queue_route(dlq).await?;
        Ok(self.redrive_status(dlq).await)
    }

    /// A task's progress, as this broker holds it.
    pub async fn redrive_status(&self, dlq: &str) -> Option<Task> {
        self.queues.redrives.lock().await.get(dlq).cloned()
    }

    /// Runs the task of `dlq` unless it runs already.
    fn redrive_spawn(self: &Arc<Self>, dlq: &str) {
        let fresh = self
            .queues
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(dlq.to_string());
        if fresh {
            let core = self.clone();
            let dlq = dlq.to_string();
            tokio::spawn(async move {
                core.redrive_run(&dlq).await;
                core.queues
                    .running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&dlq);
            });
        }
    }

    /// Runs every unfinished task this broker coordinates that is not running (those of a
    /// `__queue_state` partition it has just come to lead, after a restart or a failover).
    pub async fn redrive_resume(self: &Arc<Self>) {
        let names: Vec<String> = self
            .queues
            .redrives
            .lock()
            .await
            .values()
            .filter(|t| !t.done())
            .map(|t| t.dlq.clone())
            .collect();
        for dlq in names {
            if !self
                .queues
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&dlq)
            {
                tracing::info!(topic = %dlq, "resuming a redrive");
                self.redrive_spawn(&dlq);
            }
        }
    }

    /// Changes a task, appends its record (in the order of the changes) and waits until it is
    /// durable.
    async fn redrive_save(
        &self,
        dlq: &str,
        change: impl FnOnce(&mut Task),
    ) -> Result<Task, Failure> {
        let mut tasks = self.queues.redrives.lock().await;
        let task = tasks.get_mut(dlq).ok_or((
            ErrorCode::UnknownServerError,
            "the redrive task is gone".to_string(),
        ))?;
        change(task);
        let snapshot = task.clone();
        let mut out = StateWrites::default();
        out.push(&key(dlq), Some(&encode(&snapshot)), now_ms());
        let route = self.queues.slots().serve(dlq)?;
        let rx = self.queue_persist(route, out).await;
        drop(tasks);
        Self::queue_durable(rx).await?;
        Ok(snapshot)
    }

    /// Runs a task to its end, retrying after errors.
    async fn redrive_run(&self, dlq: &str) {
        let started = Instant::now();
        let mut moved_here = 0u64;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let Some(task) = self.redrive_status(dlq).await else {
                return;
            };
            if task.done() {
                tracing::info!(topic = %dlq, moved = task.moved, skipped = task.skipped, "redrive done");
                return;
            }
            match self.redrive_step(&task).await {
                Ok(n) => moved_here += n as u64,
                Err(e) => {
                    tracing::warn!(topic = %dlq, error = %e, "redrive step failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
            // Stay at or under the rate: wait until the records moved so far are due.
            let due = Duration::from_secs_f64(moved_here as f64 / f64::from(task.rate.max(1)));
            let wait = due.saturating_sub(started.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.shutdown.cancelled() => return,
                }
            }
        }
    }

    /// One step of a task; the records copied.
    async fn redrive_step(&self, task: &Task) -> Result<usize, String> {
        let Some(p) = task.partitions.iter().find(|p| p.next < p.end) else {
            return Ok(0);
        };
        let source = self
            .topics
            .get(&task.dlq)
            .and_then(|t| t.partition(p.partition).cloned())
            .ok_or_else(|| format!("no partition {} of {}", p.partition, task.dlq))?;
        let part_index = p.partition;
        // A step noted before a crash: done already if its copies are in the target (which
        // another broker may lead: `copy_*` read and write wherever its leader is).
        if let Some(step) = &p.step {
            let prefix = format!("{}/{}/", task.dlq, part_index);
            let (first, end) = (p.next, step.end);
            let is_copy = |headers: &[HeaderRef<'_>]| {
                headers
                    .iter()
                    .find(|h| h.key == H_SOURCE)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| s.strip_prefix(prefix.as_str()))
                    .and_then(|o| o.parse::<i64>().ok())
                    .is_some_and(|o| o >= first && o < end)
            };
            if self
                .copy_found(&step.topic, step.partition, step.since, &is_copy)
                .await?
            {
                self.redrive_save(&task.dlq, |t| {
                    if let Some(pp) = t.partitions.iter_mut().find(|x| x.partition == part_index) {
                        pp.next = end;
                        pp.step = None;
                    }
                })
                .await
                .map_err(|(_, e)| e)?;
                return Ok(0);
            }
        }
        let (copies, step_end, skipped) = self.redrive_read(task, &source, p.next, p.end)?;
        let Some(first) = copies.first() else {
            // Nothing to copy in this stretch (all skipped): move past it.
            self.redrive_save(&task.dlq, |t| {
                t.skipped += skipped;
                if let Some(pp) = t.partitions.iter_mut().find(|x| x.partition == part_index) {
                    pp.next = step_end;
                    pp.step = None;
                }
            })
            .await
            .map_err(|(_, e)| e)?;
            return Ok(0);
        };
        let (topic, partition) = (first.topic.clone(), first.partition);
        // 1. Note the step.
        let since = self.copy_since(&topic, partition).await?;
        let step = Step {
            topic: topic.clone(),
            partition,
            since,
            end: step_end,
        };
        self.redrive_save(&task.dlq, |t| {
            if let Some(pp) = t.partitions.iter_mut().find(|x| x.partition == part_index) {
                pp.step = Some(step);
            }
        })
        .await
        .map_err(|(_, e)| e)?;
        // 2. Append the copies.
        let n = copies.len();
        let batch = redrive_batch(&task.dlq, part_index, &copies)?;
        self.copy_append(&topic, partition, batch).await?;
        // 3. Done.
        self.redrive_save(&task.dlq, |t| {
            t.moved += n as u64;
            t.skipped += skipped;
            if let Some(pp) = t.partitions.iter_mut().find(|x| x.partition == part_index) {
                pp.next = step_end;
                pp.step = None;
            }
        })
        .await
        .map_err(|(_, e)| e)?;
        Ok(n)
    }

    /// Reads up to [`STEP_RECORDS`] records (a tenth of the rate) from `next` (before `end`) that go to one target
    /// partition: (copies, the offset after the last record looked at, records skipped).
    fn redrive_read(
        &self,
        task: &Task,
        source: &Arc<Partition>,
        next: i64,
        end: i64,
    ) -> Result<(Vec<Copy>, i64, u64), String> {
        let reader = source.reader();
        let mut at = next.max(reader.start_offset());
        // About ten steps a second, so the rate is kept smoothly.
        let step = (task.rate as usize / 10).clamp(1, STEP_RECORDS);
        let mut copies: Vec<Copy> = Vec::new();
        let mut skipped = 0u64;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        'read: while at < end && copies.len() < step {
            let r = reader.read(at, 1 << 20).map_err(|e| e.to_string())?;
            if r.data.is_empty() {
                break;
            }
            for item in BatchIter::new(&r.data) {
                let Ok((range, header)) = item else { break };
                let raw = r.data.slice(range);
                validate(&raw).map_err(|e| e.to_string())?;
                let plain =
                    decompress(&raw, &header, MAX_DECOMPRESSED_BATCH).map_err(|e| e.to_string())?;
                for rec in Records::new(plain).map_err(|e| e.to_string())? {
                    let rec = rec.map_err(|e| e.to_string())?;
                    if rec.offset < at {
                        continue;
                    }
                    if rec.offset >= end || copies.len() >= step {
                        break 'read;
                    }
                    let origin = header_text(&rec, "strom.dlq.topic");
                    let topic = if task.target.is_empty() {
                        match origin {
                            Some(t) => t,
                            None => {
                                skipped += 1;
                                at = rec.offset + 1;
                                continue;
                            }
                        }
                    } else {
                        task.target.clone()
                    };
                    let Some(t) = self.topics.get(&topic) else {
                        // The origin topic is gone: nothing to send it to.
                        skipped += 1;
                        at = rec.offset + 1;
                        continue;
                    };
                    let count = t.count.max(1) as i32;
                    let partition = header_text(&rec, "strom.dlq.partition")
                        .and_then(|p| p.parse::<i32>().ok())
                        .unwrap_or(0)
                        .rem_euclid(count);
                    if let Some(first) = copies.first()
                        && (first.topic != topic || first.partition != partition)
                    {
                        break 'read;
                    }
                    let redriven = header_text(&rec, H_COUNT)
                        .and_then(|c| c.parse::<u64>().ok())
                        .unwrap_or(0);
                    let mut headers: Vec<(String, Option<Bytes>)> = rec
                        .headers()
                        .filter(|h| {
                            !h.key.starts_with("strom.dlq.") && !h.key.starts_with("strom.redrive.")
                        })
                        .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                        .collect();
                    headers.push((
                        H_COUNT.to_string(),
                        Some(Bytes::from((redriven + 1).to_string())),
                    ));
                    *counts.entry(topic.clone()).or_default() += 1;
                    copies.push(Copy {
                        topic,
                        partition,
                        offset: rec.offset,
                        key: rec.key.clone(),
                        value: rec.value.clone(),
                        headers,
                    });
                    at = rec.offset + 1;
                }
            }
            if r.next_offset <= at {
                at = at.max(r.next_offset);
            } else if copies.len() < step {
                at = r.next_offset;
            }
        }
        Ok((copies, at.min(end).max(next), skipped))
    }
}

fn redrive_batch(dlq: &str, partition: i32, copies: &[Copy]) -> Result<ValidBatch, String> {
    let now = now_ms();
    let mut builder = BatchBuilder::default();
    for c in copies {
        let source = format!("{dlq}/{partition}/{}", c.offset);
        let mut headers: Vec<HeaderRef<'_>> = c
            .headers
            .iter()
            .map(|(k, v)| HeaderRef {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        headers.push(HeaderRef {
            key: H_SOURCE,
            value: Some(source.as_bytes()),
        });
        builder
            .push(&RecordRef {
                timestamp: now,
                key: c.key.as_deref(),
                value: c.value.as_deref(),
                headers: &headers,
            })
            .map_err(|e| e.to_string())?;
    }
    let bytes = builder.finish().map_err(|e| e.to_string())?;
    ValidBatch::new(bytes).map_err(|e| e.to_string())
}
