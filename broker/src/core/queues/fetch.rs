//! Queue fetches and acknowledgements: answers applied, leases and delays that ran out
//! expired, then records handed out from the group's partitions in turn, with long polls on the
//! partitions' end offsets, the group's own changes and its next deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use strom_protocol::ErrorCode;

use strom_protocol::batch::{BatchIter, Records};
use strom_protocol::compression::{MAX_DECOMPRESSED_BATCH, decompress};

use super::policy::{Ordering, key_hash};
use super::state::{Delta, Fired, MemberId, Millis, RecordSource};
use super::{AckEntry, Chunk, Fetched, Inner, QueueFetch, StateWrites, Tp, now_ms};
use crate::core::delays::DelayIndex;
use crate::core::{Core, Failure};

impl Core {
    /// Applies a fetch's acknowledgements, then hands out records, waiting up to `max_wait_ms`
    /// for some.
    pub async fn queue_fetch(&self, req: QueueFetch) -> Fetched {
        let group = match self.queue_group(&req.group) {
            Ok(g) => g,
            Err(e) => {
                return Fetched {
                    error: Some(e),
                    ..Fetched::default()
                };
            }
        };
        let max_wait = Duration::from_millis(u64::from(
            req.max_wait_ms.min(self.config.fetch_max_wait_ms),
        ));
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut acks = Some(req.acks.as_slice());
        let mut answer = Fetched::default();
        loop {
            let notified = group.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let mut out = StateWrites::default();
            let mut inner = group.inner.lock().await;
            if inner.deleted {
                answer.error = Some((ErrorCode::GroupIdNotFound, "the group was deleted".into()));
                return answer;
            }
            let member: MemberId = Arc::from(req.member.as_str());
            let topics = match inner.touch(&member) {
                Ok(t) => t,
                Err(e) => {
                    answer.error = Some(e);
                    return answer;
                }
            };
            let mut woke = false;
            if let Some(acks) = acks.take() {
                answer.acks = inner.settle(&group.name, &member, acks, now, &mut out);
                woke = !acks.is_empty();
            }
            woke |= inner.expire(&group.name, now, &mut out);
            woke |= inner.fire(&group.name, &self.topics, now, &mut out);
            for t in &topics {
                inner.ensure_partitions(&group.name, &self.topics, t, &mut out, now);
            }
            self.queue_acquire(
                &group.name,
                &mut inner,
                &member,
                &topics,
                &req,
                now,
                &mut out,
                &mut answer,
            );
            // Watch for what could change the answer: appends, the group's own changes, and
            // its next lease or delay deadline.
            let mut watchers = Vec::new();
            if answer.chunks.is_empty() {
                for t in &topics {
                    if let Some(topic) = self.topics.get(t) {
                        for p in &topic.partitions {
                            let mut w = p.watch_hw();
                            w.borrow_and_update();
                            watchers.push(w);
                        }
                    }
                }
            }
            let next_deadline = match (inner.next_deadline(), inner.next_delivery(&self.topics)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let persisted = self.queue_persist(group.route, out).await;
            drop(inner);
            if woke {
                group.wake.notify_waiters();
            }
            if let Err(e) = Self::queue_durable(persisted).await {
                answer.chunks.clear();
                answer.error = Some(e);
                return answer;
            }
            if !answer.chunks.is_empty() || tokio::time::Instant::now() >= deadline {
                return answer;
            }
            let wake_at = next_deadline
                .map(|d| {
                    let ms = (d - now_ms()).max(1) as u64;
                    tokio::time::Instant::now() + Duration::from_millis(ms)
                })
                .map_or(deadline, |t| t.min(deadline));
            let watching = !watchers.is_empty();
            let mut changed: FuturesUnordered<_> =
                watchers.iter_mut().map(|w| w.changed()).collect();
            tokio::select! {
                _ = changed.next(), if watching => {}
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.shutdown.cancelled() => return answer,
            }
        }
    }

    /// Hands records to `member` from the group's partitions of `topics`, taking turns.
    #[allow(clippy::too_many_arguments)]
    fn queue_acquire(
        &self,
        group: &str,
        inner: &mut Inner,
        member: &MemberId,
        topics: &[Arc<str>],
        req: &QueueFetch,
        now: Millis,
        out: &mut StateWrites,
        answer: &mut Fetched,
    ) {
        let policy = inner.settings.policy.clone();
        let held = inner.held_by(member);
        let mut want = u64::from(req.max_records.max(1))
            .min(u64::from(policy.max_in_flight_member).saturating_sub(held));
        let mut budget = if req.max_bytes == 0 {
            self.config.fetch_max_bytes
        } else {
            req.max_bytes.min(self.config.fetch_max_bytes)
        } as usize;
        let tps: Vec<Tp> = inner
            .qps
            .keys()
            .filter(|(t, _)| topics.contains(t))
            .cloned()
            .collect();
        if tps.is_empty() || want == 0 {
            return;
        }
        let n = tps.len();
        let first = inner.cursor % n;
        inner.cursor = inner.cursor.wrapping_add(1);
        let limit = self.config.fetch_partition_max_bytes as usize;
        for i in 0..n {
            if want == 0 || budget == 0 {
                break;
            }
            let tp = &tps[(first + i) % n];
            let Some(part) = self
                .topics
                .get(&tp.0)
                .and_then(|t| t.partition(tp.1).cloned())
            else {
                continue;
            };
            let reader = part.reader();
            // Queue groups hand out only committed records, as consumers read them.
            let (log_start, end) = (reader.start_offset(), part.high_watermark());
            let Some(qp) = inner.qps.get(tp) else {
                continue;
            };
            // Records deleted by retention before they were finished are gone: skip them.
            if qp.start() < log_start {
                let delta = Delta {
                    start: log_start,
                    next: qp.next().max(log_start),
                    finished: qp.finished(),
                    fired: qp.fired(),
                    origin: qp.origin(),
                    spans: Vec::new(),
                };
                inner.commit(group, tp, delta, out, now);
            }
            let Some(qp) = inner.qps.get(tp) else {
                continue;
            };
            if !qp.has_available(end) {
                continue;
            }
            // Each run goes out with the stored batches that hold it, read here (zero-copy
            // slices of the log) as the state machine picks the run; a run reaches only as far
            // as what one read within the byte limits returns.
            let mut source = Reads {
                reader: part.reader(),
                limit,
                left: budget,
                reads: Vec::new(),
                keys: BTreeMap::new(),
                want_keys: policy.ordering == Ordering::Key,
                tp,
                delays: part.delays(),
            };
            let (runs, delta) = qp.acquire(member, want, end, now, &policy, &mut source);
            let Some(delta) = delta else { continue };
            budget = source.left;
            let lease_until = now.saturating_add(policy.lease_ms as i64);
            inner.commit(group, tp, delta, out, now);
            let again: i64 = runs
                .iter()
                .filter(|r| r.attempt > 1)
                .map(|r| r.last - r.first + 1)
                .sum();
            if again > 0
                && let Some(qp) = inner.qps.get_mut(tp)
            {
                qp.count_redelivered(again as u64);
            }
            // One chunk per read, with the runs it holds.
            let mut chunks: Vec<Chunk> = source
                .reads
                .into_iter()
                .map(|(_, _, records)| Chunk {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    runs: Vec::new(),
                    lease_until,
                    records,
                })
                .collect();
            let spans: Vec<(i64, i64)> = source_spans(&chunks);
            for run in runs {
                want = want.saturating_sub((run.last - run.first + 1) as u64);
                match spans
                    .iter()
                    .position(|(first, last)| *first <= run.first && run.last <= *last)
                {
                    Some(i) => chunks[i].runs.push(run),
                    // Only when the records are gone (deleted under the read): the member
                    // answers the run's offsets as gaps.
                    None => chunks.push(Chunk {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        runs: vec![run],
                        lease_until,
                        records: Bytes::new(),
                    }),
                }
            }
            chunks.retain(|c| !c.runs.is_empty());
            let bytes: usize = chunks.iter().map(|c| c.records.len()).sum();
            self.stats
                .fetch_bytes
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            answer.chunks.extend(chunks);
        }
    }

    /// Applies acknowledgements outside a fetch.
    pub async fn queue_ack(
        &self,
        group: &str,
        member: &str,
        acks: &[AckEntry],
    ) -> Result<Vec<Failure>, Failure> {
        let g = self.queue_group(group)?;
        let now = now_ms();
        let mut out = StateWrites::default();
        let mut inner = g.inner.lock().await;
        inner.touch(member)?;
        let results = inner.settle(&g.name, member, acks, now, &mut out);
        let rx = self.queue_persist(g.route, out).await;
        drop(inner);
        g.wake.notify_waiters();
        Self::queue_durable(rx).await?;
        Ok(results)
    }
}

/// The batches of `data` (whole batches from one read) whose records reach no further than
/// `last`, and the offset after the last record they hold.
fn batches_through(data: &Bytes, last: i64) -> (Bytes, i64) {
    let mut end = 0;
    let mut next = -1;
    for item in BatchIter::new(data) {
        let Ok((range, h)) = item else { break };
        if h.base_offset > last {
            break;
        }
        end = range.end;
        next = h.next_offset();
    }
    (data.slice(..end), next)
}

/// The offsets each chunk's reads cover (from the first offset asked for to the last that the
/// read's batches hold).
fn source_spans(chunks: &[Chunk]) -> Vec<(i64, i64)> {
    chunks
        .iter()
        .map(|c| {
            let mut first = i64::MAX;
            let mut last = -1;
            for (_, h) in BatchIter::new(&c.records).flatten() {
                first = first.min(h.base_offset);
                last = last.max(h.last_offset());
            }
            (first, last)
        })
        .collect()
}

/// What the state machine learns about records while it picks them: reads of the log within
/// the fetch's byte limits, and (`ordering=key`) the keys of the records read.
struct Reads<'a> {
    reader: &'a strom_storage::LogReader,
    limit: usize,
    /// Bytes the fetch may still return.
    left: usize,
    /// (first offset asked for, last offset covered, batches).
    reads: Vec<(i64, i64, Bytes)>,
    keys: BTreeMap<i64, Option<u64>>,
    want_keys: bool,
    tp: &'a Tp,
    delays: &'a DelayIndex,
}

impl RecordSource for Reads<'_> {
    fn cover(&mut self, first: i64, last: i64) -> i64 {
        if self.left == 0 {
            return first - 1;
        }
        match self
            .reader
            .read_until(first, last, self.limit.min(self.left))
        {
            Ok(r) => {
                let (records, next) = batches_through(&r.data, last);
                self.left = self.left.saturating_sub(records.len());
                if self.want_keys {
                    read_keys(&records, &mut self.keys);
                }
                let covered = if next < 0 {
                    first - 1
                } else {
                    last.min(next - 1)
                };
                self.reads.push((first, covered, records));
                covered
            }
            Err(e) => {
                tracing::warn!(topic = %self.tp.0, partition = self.tp.1, error = %e, "queue fetch read");
                first - 1
            }
        }
    }

    fn key(&mut self, offset: i64) -> Option<u64> {
        self.keys.get(&offset).copied().flatten()
    }

    fn delayed(&mut self, first: i64, last: i64, fired: Fired) -> Option<(i64, i64)> {
        self.delays.delayed_in(first, last, fired)
    }
}

/// Reads records' key hashes on demand (delayed records taken in with `ordering=key`).
pub(super) struct KeyReader<'a> {
    reader: &'a strom_storage::LogReader,
    keys: BTreeMap<i64, Option<u64>>,
}

impl<'a> KeyReader<'a> {
    pub(super) fn new(reader: &'a strom_storage::LogReader) -> Self {
        Self {
            reader,
            keys: BTreeMap::new(),
        }
    }

    /// The key hash of the record at `offset` (None: no key, or no record).
    pub(super) fn key(&mut self, offset: i64) -> Option<u64> {
        if !self.keys.contains_key(&offset) {
            match self
                .reader
                .read_until(offset, offset.saturating_add(4_095), 1 << 20)
            {
                Ok(r) => read_keys(&r.data, &mut self.keys),
                Err(e) => tracing::warn!(offset, error = %e, "reading a delayed record's key"),
            }
            // Not found (deleted): remember, so it is read once.
            self.keys.entry(offset).or_insert(None);
        }
        self.keys.get(&offset).copied().flatten()
    }
}

/// The key hashes of the records in `batches` (decompressed when they must be).
fn read_keys(batches: &Bytes, out: &mut BTreeMap<i64, Option<u64>>) {
    for (range, header) in BatchIter::new(batches).flatten() {
        let raw = batches.slice(range);
        let Ok(plain) = decompress(&raw, &header, MAX_DECOMPRESSED_BATCH) else {
            continue;
        };
        let Ok(records) = Records::new(plain) else {
            continue;
        };
        for rec in records.flatten() {
            out.insert(rec.offset, rec.key.as_deref().map(key_hash));
        }
    }
}
