//! The record accumulator: per-partition batches being filled, and the batches ready to send.
//!
//! `send` appends each record to its partition's open batch, directly into the batch's buffer
//! (the RecordBatch v2 encoding, via `BatchBuilder`): no per-record allocation, and the bytes
//! are what goes on the wire, after compression. A batch is *ready* when it is full
//! (`batch_size`), when the next record does not fit, or when it is older than `linger`; the
//! sender task drains ready batches, at most one per partition per request.
//!
//! Memory: every byte of a batch's buffer is taken from the producer's `buffer_memory`
//! semaphore before it is allocated, and the permit travels with the batch until the batch
//! completes. A batch does not take `batch_size` up front: it starts with room for about what
//! its partition's previous batch held (at least [`MIN_ALLOC`], at most `batch_size`, and at
//! least its first record), and when a record does not fit, its buffer doubles (capped at
//! `batch_size`), taking the extra bytes first. So an allocation happens per batch and per
//! doubling, never per record, and what the batches hold is what is accounted: with 1,000
//! partitions of small batches the buffer holds 1,000 batches, not `buffer_memory /
//! batch_size` of them. The accounting is exact (a batch's permit equals its buffer's
//! capacity), so the batches never hold more than `buffer_memory`.
//!
//! When the semaphore cannot cover a new batch or a doubling, `send` waits for the bytes
//! (backpressure) and the sender sends open batches without waiting for `linger` meanwhile
//! (the memory only comes back when batches complete). A wait never holds memory: what an
//! attempt needs it takes at once or not at all, so waiters cannot deadlock each other, and
//! one attempt needs at most `max(batch_size, max_record_size)` bytes, which the configuration
//! keeps within `buffer_memory`.
//!
//! Keyless records stick to one partition per topic until its batch is closed (full, or
//! drained by the sender), then move to another one at random (Kafka's sticky partitioner), so
//! they form full batches instead of one small batch per partition.
//!
//! Delayed delivery: a batch carries one delivery time (`deliver_at`, 0 for none), which the
//! request sends beside its bytes (the broker indexes delays per batch and never decompresses).
//! A record whose time differs from its partition's open batch closes that batch (it is ready
//! to send) and starts a new one, so records with different times never share a batch; records
//! of a partition still go out in `send` order. Times at or before the epoch count as none.
//!
//! Locking: one `std::sync::Mutex` around the accumulator, never held across an await; the
//! work under it is an append (a memcpy of the record) or a drain (moving batches out).
//! Compression and CRCs happen in the sender, outside the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use strom_protocol::batch::{BatchBuilder, HEADER_LEN, RecordRef, payload_len};
use strom_protocol::varint;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::partitioner::{Rng, partition_for_key};
use crate::producer::delivery::{Completion, DeliveryFuture};
use crate::record::ProducerRecord;

/// A batch being filled or waiting to be sent.
#[derive(Debug)]
pub(crate) struct OpenBatch {
    /// Unique per producer, for the flush registry.
    pub(crate) id: u64,
    pub(crate) builder: BatchBuilder,
    pub(crate) completion: Arc<Completion>,
    pub(crate) created: Instant,
    /// Delivery time of every record in the batch (ms since the Unix epoch), 0 for not
    /// delayed.
    pub(crate) deliver_at: i64,
    /// This batch's share of `buffer_memory`: exactly its buffer's capacity. Returned when
    /// the batch is dropped.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// One partition's queue.
#[derive(Debug)]
pub(crate) struct PartitionQueue {
    pub(crate) topic: Arc<str>,
    /// The topic's index in `Accumulator::topic_entries`.
    topic_index: usize,
    pub(crate) partition: i32,
    /// The batch records are appended to.
    open: Option<OpenBatch>,
    /// Closed batches, oldest first.
    ready: VecDeque<OpenBatch>,
    /// Bytes of the last batch closed here: the next one starts with about that much room.
    last_size: usize,
}

impl PartitionQueue {
    fn is_empty(&self) -> bool {
        self.open.is_none() && self.ready.is_empty()
    }

    fn oldest(&self) -> Option<&OpenBatch> {
        self.ready.front().or(self.open.as_ref())
    }
}

#[derive(Debug)]
struct TopicEntry {
    name: Arc<str>,
    /// Part ids (indexes into `Accumulator::parts`) by partition index.
    parts: Vec<usize>,
    /// Where keyless records go now.
    sticky: Option<i32>,
    /// The previous sticky partition, avoided when choosing the next one.
    last_sticky: Option<i32>,
}

/// The result of an append attempt.
#[derive(Debug)]
pub(crate) enum Append {
    /// Appended; `wake` says the sender should look (a batch was created or closed), and
    /// `created` names a batch created for it (for the flush registry).
    Done {
        future: DeliveryFuture,
        wake: bool,
        created: Option<(u64, Arc<Completion>)>,
    },
    /// A new batch, or more room in the open one, is needed and `buffer_memory` has not this
    /// many bytes free: wait for them, then append again with them.
    NeedMemory(u32),
    /// The topic's partition count is not known yet.
    UnknownTopic,
}

/// One batch the sender takes out.
#[derive(Debug)]
pub(crate) struct Drained {
    pub(crate) part: usize,
    pub(crate) batch: OpenBatch,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Accumulator {
    batch_size: usize,
    memory: Arc<Semaphore>,
    /// Index into `topic_entries` by name.
    topics: HashMap<Arc<str>, usize>,
    topic_entries: Vec<TopicEntry>,
    /// The topic of the last append (an index into `topic_entries`, or past its end): a run
    /// of sends to one topic compares its name instead of hashing it every time.
    last_topic: usize,
    /// Every partition queue, by part id (stable: queues are never removed).
    parts: Vec<PartitionQueue>,
    rng: Rng,
    next_batch_id: u64,
    /// Set by close: appends fail.
    closed: bool,
    /// Where the next drain starts, so a request size limit does not starve later partitions.
    cursor: usize,
}

/// The least room a new batch starts with (unless `batch_size` is smaller).
pub(crate) const MIN_ALLOC: usize = 1024;

/// Room for a new batch whose partition's previous batch held `last` bytes: that rounded up to
/// a power of two, within [`MIN_ALLOC`] and `batch_size`.
fn initial_capacity(last: usize, batch_size: usize) -> usize {
    last.checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .max(MIN_ALLOC)
        .min(batch_size)
}

/// Takes `n` bytes of `buffer_memory` without waiting: from `carried` (bytes the caller waited
/// for after [`Append::NeedMemory`]; any excess stays there and goes back when the caller drops
/// it), topped up from the semaphore. `Ok(None)`: not available now. When it fails, `carried`
/// is given back too, so nothing is held while the caller waits.
fn take_memory(
    memory: &Arc<Semaphore>,
    carried: &mut Option<OwnedSemaphorePermit>,
    n: usize,
) -> Result<Option<OwnedSemaphorePermit>> {
    let have = carried
        .as_ref()
        .map_or(0, OwnedSemaphorePermit::num_permits);
    if have < n {
        let more = u32::try_from(n - have).unwrap_or(u32::MAX);
        match memory.clone().try_acquire_many_owned(more) {
            Ok(p) => match carried.as_mut() {
                Some(c) => c.merge(p),
                None => *carried = Some(p),
            },
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                *carried = None;
                return Ok(None);
            }
        }
    }
    let have = carried
        .as_ref()
        .map_or(0, OwnedSemaphorePermit::num_permits);
    if have == n {
        return Ok(carried.take());
    }
    Ok(carried.as_mut().and_then(|c| c.split(n)))
}

/// Bytes a batch of `batch_len` bytes for `topic` adds to a produce request, protobuf framing
/// included: its `PartitionProduceData` (tag, length, partition, records' tag and length: at
/// most 18 bytes; for a delayed batch, `deliver_at` > 0, also its `deliver_at_ms`: at most
/// [`DELIVER_AT_COST`]) and, counted as if every batch had its own `TopicProduceData`, that
/// entry's tag, length and name (at most 9 bytes + the name). An upper bound, so a request
/// packed up to a limit with it never exceeds the limit; with 1,000 partitions of small batches
/// the framing alone is about 10 KB, more than the slack left for the request header.
pub(crate) fn request_cost(topic: &str, batch_len: usize, deliver_at: i64) -> usize {
    let delay = if deliver_at > 0 { DELIVER_AT_COST } else { 0 };
    batch_len + topic.len() + 32 + delay
}

/// The most a batch's `deliver_at_ms` entry adds to its `PartitionProduceData`: the packed
/// field's tag (1 byte), length (1) and one positive int64 varint (at most 9). The entry's
/// length prefix is already counted at its largest.
pub(crate) const DELIVER_AT_COST: usize = 11;

/// The batch key of a record's delivery time: 0 (not delayed) for none or a time at or before
/// the epoch.
pub(crate) fn deliver_at_of(record: &ProducerRecord<'_>) -> i64 {
    record.deliver_at.map_or(0, |t| t.max(0))
}

/// The part of `record`'s encoding that does not depend on its place in a batch
/// ([`payload_len`]): measured once per `send`, for the size check and the append.
pub(crate) fn record_payload(record: &ProducerRecord<'_>) -> usize {
    payload_len(&RecordRef {
        timestamp: 0,
        key: record.key,
        value: record.value,
        headers: record.headers,
    })
}

/// An upper bound on the bytes a record with this [`record_payload`] adds to a batch,
/// wherever it goes: the timestamp delta may take up to 10 bytes for a record far from the
/// batch's first one. The builder checks exact sizes; this sizes a new batch's buffer and
/// checks `max_record_size`.
pub(crate) fn first_record_size(payload: usize) -> usize {
    let body = 3 + payload;
    varint::encoded_len(body as i64) + body + 9
}

impl Accumulator {
    pub(crate) fn new(batch_size: usize, memory: Arc<Semaphore>) -> Self {
        Self {
            batch_size,
            memory,
            topics: HashMap::new(),
            topic_entries: Vec::new(),
            last_topic: usize::MAX,
            parts: Vec::new(),
            rng: Rng::new(),
            next_batch_id: 0,
            closed: false,
            cursor: 0,
        }
    }

    /// Number of partition queues (the sender sizes its per-partition state by it).
    pub(crate) fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// The queue with id `part`.
    pub(crate) fn part(&self, part: usize) -> Option<&PartitionQueue> {
        self.parts.get(part)
    }

    /// `topic`'s partition count, if known.
    pub(crate) fn partitions_of(&self, topic: &str) -> Option<i32> {
        self.topics
            .get(topic)
            .map(|&t| i32::try_from(self.topic_entries[t].parts.len()).unwrap_or(i32::MAX))
    }

    /// Where `topic`'s entry is, if it is known.
    fn topic_index(&mut self, topic: &str) -> Option<usize> {
        if self
            .topic_entries
            .get(self.last_topic)
            .is_some_and(|t| *t.name == *topic)
        {
            return Some(self.last_topic);
        }
        let index = *self.topics.get(topic)?;
        self.last_topic = index;
        Some(index)
    }

    /// Topics known to the accumulator.
    pub(crate) fn topics(&self) -> Vec<Arc<str>> {
        self.topics.keys().cloned().collect()
    }

    /// Records that `topic` has `partitions` partitions (more than before: queues are added;
    /// fewer: the extra queues stay, records are no longer routed to them).
    pub(crate) fn set_partitions(&mut self, topic: &str, partitions: i32) {
        let partitions = usize::try_from(partitions.max(1)).unwrap_or(1);
        let index = match self.topics.get(topic) {
            Some(&i) => i,
            None => {
                let name: Arc<str> = Arc::from(topic);
                self.topic_entries.push(TopicEntry {
                    name: name.clone(),
                    parts: Vec::new(),
                    sticky: None,
                    last_sticky: None,
                });
                self.topics.insert(name, self.topic_entries.len() - 1);
                self.topic_entries.len() - 1
            }
        };
        let entry = &mut self.topic_entries[index];
        let name = entry.name.clone();
        while entry.parts.len() < partitions {
            let partition = i32::try_from(entry.parts.len()).unwrap_or(i32::MAX);
            entry.parts.push(self.parts.len());
            self.parts.push(PartitionQueue {
                topic: name.clone(),
                topic_index: index,
                partition,
                open: None,
                ready: VecDeque::new(),
                last_size: 0,
            });
        }
        if partitions < entry.parts.len() {
            tracing::warn!(
                topic,
                partitions,
                known = entry.parts.len(),
                "topic has fewer partitions than before"
            );
            entry.parts.truncate(partitions);
        }
        if entry.sticky.is_some_and(|s| s as usize >= partitions) {
            entry.sticky = None;
        }
    }

    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Appends `record`, measuring it first (tests; `send` measures once and calls
    /// [`Accumulator::append_measured`]).
    #[cfg(test)]
    pub(crate) fn append(
        &mut self,
        record: &ProducerRecord<'_>,
        timestamp: i64,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<Append> {
        self.append_measured(record, record_payload(record), timestamp, permit)
    }

    /// Appends `record`, whose [`record_payload`] is `payload`. `permit` carries memory
    /// acquired by the caller after an earlier [`Append::NeedMemory`]; what the append needs is
    /// taken from it (and from the semaphore when it is short), the rest is left in it for the
    /// caller to drop.
    pub(crate) fn append_measured(
        &mut self,
        record: &ProducerRecord<'_>,
        payload: usize,
        timestamp: i64,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<Append> {
        if self.closed {
            return Err(Error::Closed);
        }
        let Some(index) = self.topic_index(record.topic) else {
            return Ok(Append::UnknownTopic);
        };
        let topic = &mut self.topic_entries[index];
        let partitions = i32::try_from(topic.parts.len()).unwrap_or(i32::MAX);
        let sticky = record.partition.is_none() && record.key.is_none();
        let mut partition = match (record.partition, record.key) {
            (Some(p), _) if (0..partitions).contains(&p) => p,
            (Some(p), _) => {
                return Err(Error::UnknownPartition {
                    topic: record.topic.to_string(),
                    partition: p,
                    partitions,
                });
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => match topic.sticky {
                Some(p) => p,
                None => {
                    let p = self.rng.next_partition(partitions, topic.last_sticky);
                    topic.sticky = Some(p);
                    p
                }
            },
        };
        let rec = RecordRef {
            timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let deliver_at = deliver_at_of(record);
        let mut wake = false;
        let mut switched = false;
        let part_id = loop {
            let part_id = topic.parts[partition as usize];
            let q = &mut self.parts[part_id];
            let Some(open) = q.open.as_mut() else {
                break part_id;
            };
            if open.deliver_at != deliver_at {
                // One delivery time per batch: close this one (it goes out as it is) and start
                // a new one here (which wakes the sender). The partition stays: this is not
                // the batch filling up.
                if let Some(other) = q.open.take() {
                    q.last_size = other.builder.size();
                    q.ready.push_back(other);
                }
                break part_id;
            }
            let size = open.builder.measured_record_size(&rec, payload);
            let needed = open.builder.size() + size;
            if open.builder.is_empty() || needed <= self.batch_size {
                if needed > open.builder.capacity() {
                    // Double the buffer (within batch_size), its bytes taken first.
                    let cap = open.builder.capacity();
                    let target = needed.max(cap.saturating_mul(2).min(self.batch_size));
                    let Some(more) = take_memory(&self.memory, permit, target - cap)? else {
                        return Ok(Append::NeedMemory(
                            u32::try_from(target - cap).unwrap_or(u32::MAX),
                        ));
                    };
                    open.permit.merge(more);
                    open.builder.grow_to(target);
                }
                let index = i32::try_from(open.builder.len()).unwrap_or(i32::MAX);
                open.builder.push_measured(&rec, payload)?;
                let future = DeliveryFuture::new(open.completion.clone(), index, timestamp);
                if open.builder.size() >= self.batch_size
                    && let Some(full) = q.open.take()
                {
                    q.last_size = full.builder.size();
                    q.ready.push_back(full);
                    wake = true;
                }
                return Ok(Append::Done {
                    future,
                    wake,
                    created: None,
                });
            }
            // Full: close it; a keyless record moves on to another partition (once).
            if let Some(full) = q.open.take() {
                q.last_size = full.builder.size();
                q.ready.push_back(full);
                wake = true;
            }
            if sticky && !switched && partitions > 1 {
                switched = true;
                topic.last_sticky = Some(partition);
                partition = self.rng.next_partition(partitions, Some(partition));
                topic.sticky = Some(partition);
                continue;
            }
            break part_id;
        };
        // A new batch on `part_id`.
        let q = &mut self.parts[part_id];
        let need = (HEADER_LEN + first_record_size(payload))
            .max(initial_capacity(q.last_size, self.batch_size));
        let Some(permit) = take_memory(&self.memory, permit, need)? else {
            return Ok(Append::NeedMemory(u32::try_from(need).unwrap_or(u32::MAX)));
        };
        let completion = Completion::new(q.topic.clone(), q.partition);
        let mut builder = BatchBuilder::with_capacity(need);
        builder.push_measured(&rec, payload)?;
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let batch = OpenBatch {
            id,
            builder,
            completion: completion.clone(),
            created: Instant::now(),
            deliver_at,
            permit,
        };
        if batch.builder.size() >= self.batch_size {
            q.last_size = batch.builder.size();
            q.ready.push_back(batch);
        } else {
            q.open = Some(batch);
        }
        Ok(Append::Done {
            future: DeliveryFuture::new(completion.clone(), 0, timestamp),
            wake: true,
            created: Some((id, completion)),
        })
    }

    /// Takes at most one ready batch per partition, for partitions `allowed` accepts, until
    /// `budget` bytes of request (uncompressed batches and their framing, [`request_cost`]) are
    /// taken. A partition's open batch is ready once it is `linger` old, or at once when
    /// `force` (flush, close, a `send` waiting for memory).
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        linger: Duration,
        force: bool,
        mut budget: usize,
        mut allowed: impl FnMut(usize) -> bool,
        out: &mut Vec<Drained>,
    ) {
        let n = self.parts.len();
        if n == 0 {
            return;
        }
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        for i in 0..n {
            let part = (start + i) % n;
            let q = &mut self.parts[part];
            if q.is_empty() || !allowed(part) {
                continue;
            }
            let take_ready = !q.ready.is_empty();
            let size_of_open = q.open.as_ref().map_or(0, |b| b.builder.size());
            let size = if take_ready {
                q.ready.front().map_or(0, |b| {
                    request_cost(&q.topic, b.builder.size(), b.deliver_at)
                })
            } else {
                match &q.open {
                    Some(b) if force || now >= b.created + linger => {
                        request_cost(&q.topic, b.builder.size(), b.deliver_at)
                    }
                    _ => continue,
                }
            };
            if size > budget && !out.is_empty() {
                continue;
            }
            let batch = if take_ready {
                q.ready.pop_front()
            } else {
                let b = q.open.take();
                q.last_size = size_of_open;
                // The sticky partition's batch is being sent: keyless records move on.
                if let Some(t) = self.topic_entries.get_mut(q.topic_index)
                    && t.sticky == Some(q.partition)
                {
                    t.sticky = None;
                    t.last_sticky = Some(q.partition);
                }
                b
            };
            if let Some(batch) = batch {
                budget = budget.saturating_sub(size);
                out.push(Drained { part, batch });
            }
            if budget == 0 {
                break;
            }
        }
    }

    /// Removes every batch created before `cutoff` that is still queued (never sent), oldest
    /// first per partition: they ran out of `delivery_timeout`.
    pub(crate) fn expire(&mut self, cutoff: Instant, out: &mut Vec<OpenBatch>) {
        for q in &mut self.parts {
            while q.ready.front().is_some_and(|b| b.created <= cutoff) {
                if let Some(b) = q.ready.pop_front() {
                    out.push(b);
                }
            }
            if q.ready.is_empty()
                && q.open.as_ref().is_some_and(|b| b.created <= cutoff)
                && let Some(b) = q.open.take()
            {
                out.push(b);
            }
        }
    }

    /// Removes every queued batch (the producer is aborting).
    pub(crate) fn take_all(&mut self, out: &mut Vec<OpenBatch>) {
        for q in &mut self.parts {
            out.extend(q.ready.drain(..));
            out.extend(q.open.take());
        }
    }

    /// The earliest moment a queued batch becomes ready by age (ready batches count as now),
    /// and the creation time of the oldest queued batch (for delivery timeouts).
    /// Only partitions `allowed` accepts count for the first.
    pub(crate) fn deadlines(
        &self,
        linger: Duration,
        allowed: impl Fn(usize) -> bool,
    ) -> (Option<Instant>, Option<Instant>) {
        let mut ready: Option<Instant> = None;
        let mut oldest: Option<Instant> = None;
        for (part, q) in self.parts.iter().enumerate() {
            if let Some(b) = q.oldest() {
                oldest = Some(oldest.map_or(b.created, |o| o.min(b.created)));
            }
            if !allowed(part) {
                continue;
            }
            let at = if let Some(b) = q.ready.front() {
                Some(b.created)
            } else {
                q.open.as_ref().map(|b| b.created + linger)
            };
            if let Some(at) = at {
                ready = Some(ready.map_or(at, |r| r.min(at)));
            }
        }
        (ready, oldest)
    }

    /// Whether no batch is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.iter().all(PartitionQueue::is_empty)
    }

    /// Whether a batch is queued for a part `wanted` accepts.
    pub(crate) fn has_data(&self, wanted: impl Fn(usize) -> bool) -> bool {
        self.parts
            .iter()
            .enumerate()
            .any(|(i, q)| !q.is_empty() && wanted(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acc(batch_size: usize, memory: usize) -> Accumulator {
        let mut a = Accumulator::new(batch_size, Arc::new(Semaphore::new(memory)));
        a.set_partitions("t", 4);
        a
    }

    fn append(a: &mut Accumulator, r: &ProducerRecord<'_>) -> Append {
        a.append(r, 1_700_000_000_000, &mut None).unwrap()
    }

    fn drain_all(a: &mut Accumulator) -> Vec<Drained> {
        let mut out = Vec::new();
        a.drain(
            Instant::now(),
            Duration::ZERO,
            true,
            usize::MAX,
            |_| true,
            &mut out,
        );
        out
    }

    #[tokio::test]
    async fn keyed_records_follow_murmur2() {
        let mut a = acc(16384, 1 << 20);
        for key in ["a", "b", "c", "d", "e", "order-1"] {
            let r = ProducerRecord::new("t").key(key.as_bytes()).value(b"v");
            let Append::Done { future, .. } = append(&mut a, &r) else {
                panic!()
            };
            assert_eq!(future.partition(), partition_for_key(key.as_bytes(), 4));
        }
        assert!(matches!(
            append(&mut a, &ProducerRecord::new("other")),
            Append::UnknownTopic
        ));
        assert!(matches!(
            a.append(&ProducerRecord::new("t").partition(4), 0, &mut None),
            Err(Error::UnknownPartition { .. })
        ));
    }

    #[tokio::test]
    async fn keyless_records_stick_until_the_batch_is_full() {
        let mut a = acc(1024, 1 << 20);
        let value = [7u8; 100];
        let r = ProducerRecord::new("t").value(&value);
        let mut partitions = Vec::new();
        for _ in 0..40 {
            let Append::Done { future, .. } = append(&mut a, &r) else {
                panic!()
            };
            partitions.push(future.partition());
        }
        // Runs of the same partition, each run one batch (about 9 records of ~110 bytes in
        // 1024), and consecutive runs on different partitions.
        let mut runs: Vec<(i32, usize)> = Vec::new();
        for p in partitions {
            match runs.last_mut() {
                Some((q, n)) if *q == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        assert!(runs.len() >= 4, "{runs:?}");
        for w in runs.windows(2) {
            assert_ne!(w[0].0, w[1].0);
        }
        for (_, n) in &runs[..runs.len() - 1] {
            assert!((7..=9).contains(n), "{runs:?}");
        }
        // One batch per run, at most one per partition per drain.
        let mut total = 0;
        loop {
            let drained = drain_all(&mut a);
            if drained.is_empty() {
                break;
            }
            let mut parts: Vec<usize> = drained.iter().map(|d| d.part).collect();
            parts.dedup();
            assert_eq!(parts.len(), drained.len());
            assert!(drained.iter().all(|d| d.batch.builder.size() <= 1024));
            total += drained.len();
        }
        assert_eq!(total, runs.len());
    }

    #[tokio::test]
    async fn draining_the_sticky_batch_moves_keyless_records() {
        let mut a = acc(16384, 1 << 20);
        let r = ProducerRecord::new("t").value(b"x");
        let Append::Done { future, .. } = append(&mut a, &r) else {
            panic!()
        };
        let first = future.partition();
        assert_eq!(drain_all(&mut a).len(), 1);
        let Append::Done { future, .. } = append(&mut a, &r) else {
            panic!()
        };
        assert_ne!(
            future.partition(),
            first,
            "a sent batch switches the sticky partition"
        );
    }

    #[tokio::test]
    async fn new_batches_wait_for_memory() {
        let mut a = acc(1024, 2048);
        let value = [1u8; 900];
        let r = ProducerRecord::new("t").key(b"k").value(&value);
        assert!(matches!(append(&mut a, &r), Append::Done { .. }));
        assert!(matches!(append(&mut a, &r), Append::Done { .. }));
        // Two batches of 1024 hold all the memory.
        assert!(matches!(append(&mut a, &r), Append::NeedMemory(1024)));
        let drained = drain_all(&mut a);
        assert_eq!(drained.len(), 1, "one batch per partition per drain");
        drop(drained);
        assert!(matches!(append(&mut a, &r), Append::Done { .. }));
    }

    /// Every batch the accumulator holds, with what it accounts for it.
    fn queued(a: &Accumulator) -> Vec<&OpenBatch> {
        a.parts
            .iter()
            .flat_map(|q| q.ready.iter().chain(q.open.iter()))
            .collect()
    }

    #[tokio::test]
    async fn a_thousand_partitions_of_small_batches_fit_a_small_budget() {
        // batch_size 256 KiB, as the bench's default, and a 2 MiB budget: reserving
        // batch_size per batch fit 8 batches; a batch now takes what it holds.
        let memory = Arc::new(Semaphore::new(2 << 20));
        let mut a = Accumulator::new(256 << 10, memory.clone());
        a.set_partitions("t", 1000);
        let value = [7u8; 100];
        for round in 0..3 {
            for p in 0..1000 {
                let r = ProducerRecord::new("t").partition(p).value(&value);
                match append(&mut a, &r) {
                    Append::Done { future, .. } => assert_eq!(future.partition(), p),
                    other => panic!("round {round}, partition {p}: {other:?}"),
                }
            }
        }
        let batches = queued(&a);
        assert_eq!(batches.len(), 1000);
        let held: usize = batches.iter().map(|b| b.permit.num_permits()).sum();
        assert_eq!(held, (2 << 20) - memory.available_permits());
        assert!(held <= 1000 * MIN_ALLOC, "{held}");
    }

    #[tokio::test]
    async fn a_batch_grows_in_doublings_up_to_batch_size_and_accounts_them() {
        let memory = Arc::new(Semaphore::new(64 << 10));
        let mut a = Accumulator::new(16 << 10, memory.clone());
        a.set_partitions("t", 1);
        let value = [1u8; 100];
        let r = ProducerRecord::new("t").value(&value);
        let mut capacities = Vec::new();
        for _ in 0..140 {
            assert!(matches!(append(&mut a, &r), Append::Done { .. }));
            let b = queued(&a)[0];
            assert_eq!(b.permit.num_permits(), b.builder.capacity());
            assert!(b.builder.size() <= b.builder.capacity());
            if capacities.last() != Some(&b.builder.capacity()) {
                capacities.push(b.builder.capacity());
            }
        }
        assert_eq!(capacities, [1 << 10, 2 << 10, 4 << 10, 8 << 10, 16 << 10]);
        assert_eq!(memory.available_permits(), (64 << 10) - (16 << 10));
        // The first batch filled up; the next one starts with what it held.
        while queued(&a).len() < 2 {
            append(&mut a, &r);
        }
        assert_eq!(queued(&a)[1].builder.capacity(), 16 << 10);
        while !drain_all(&mut a).is_empty() {}
        assert_eq!(
            memory.available_permits(),
            64 << 10,
            "completed batches give it back"
        );
    }

    #[tokio::test]
    async fn a_growth_that_does_not_fit_waits_without_holding_memory() {
        let memory = Arc::new(Semaphore::new(3 << 10));
        let mut a = Accumulator::new(4 << 10, memory.clone());
        a.set_partitions("t", 2);
        let value = [1u8; 300];
        let r0 = ProducerRecord::new("t").partition(0).value(&value);
        let r1 = ProducerRecord::new("t").partition(1).value(&value);
        // Partition 1 holds 1 KiB; partition 0 grows to 2 KiB, then needs 2 KiB more.
        assert!(matches!(append(&mut a, &r1), Append::Done { .. }));
        let mut grown = false;
        loop {
            match append(&mut a, &r0) {
                Append::Done { .. } => grown |= queued(&a)[0].builder.capacity() > 1024,
                Append::NeedMemory(n) => {
                    assert!(grown);
                    assert_eq!(n, 2 << 10);
                    break;
                }
                Append::UnknownTopic => panic!(),
            }
        }
        assert_eq!(memory.available_permits(), 0);
        // Memory the caller waited for and no longer needs in full goes back.
        let mut carried = Some(memory.clone().try_acquire_many_owned(0).unwrap());
        drop(drain_all(&mut a));
        carried
            .as_mut()
            .unwrap()
            .merge(memory.clone().try_acquire_many_owned(3 << 10).unwrap());
        let Append::Done { .. } = a.append(&r0, 0, &mut carried).unwrap() else {
            panic!()
        };
        let b = queued(&a)[0];
        assert_eq!(b.permit.num_permits(), b.builder.capacity());
        assert_eq!(
            carried.as_ref().unwrap().num_permits(),
            (3 << 10) - b.builder.capacity()
        );
        drop(carried);
        assert_eq!(
            memory.available_permits(),
            (3 << 10) - b.permit.num_permits()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the records and whenever batches are drained and completed, every batch's
        /// share of the budget is exactly its buffer's capacity, so the batches never hold
        /// more than the budget; and no append is refused memory that is free.
        #[test]
        fn memory_accounting_is_exact(
            ops in prop::collection::vec((0u8..10, 0i32..5, 0usize..5000), 1..300),
        ) {
            const BUDGET: usize = 24 << 10;
            let memory = Arc::new(Semaphore::new(BUDGET));
            let mut a = Accumulator::new(2048, memory.clone());
            a.set_partitions("t", 5);
            let mut completing: Vec<Drained> = Vec::new();
            let mut value = vec![0u8; 5000];
            for (op, partition, len) in ops {
                match op {
                    0 => {
                        let mut out = Vec::new();
                        a.drain(Instant::now(), Duration::ZERO, true, usize::MAX, |_| true, &mut out);
                        completing.extend(out);
                    }
                    1 => { completing.pop(); }
                    _ => {
                        value[0] = op;
                        let r = ProducerRecord::new("t").partition(partition).value(&value[..len]);
                        let mut carried = None;
                        loop {
                            match a.append(&r, 0, &mut carried).unwrap() {
                                Append::Done { .. } => break,
                                Append::NeedMemory(n) => {
                                    prop_assert!(carried.is_none(), "nothing held while waiting");
                                    prop_assert!(memory.available_permits() < n as usize);
                                    // Wait: complete batches (draining open ones when nothing
                                    // is on its way) until the bytes are free.
                                    while memory.available_permits() < n as usize {
                                        if completing.is_empty() {
                                            let mut out = Vec::new();
                                            a.drain(Instant::now(), Duration::ZERO, true, usize::MAX, |_| true, &mut out);
                                            prop_assert!(!out.is_empty(), "waiting for memory nobody holds");
                                            completing.extend(out);
                                        }
                                        completing.remove(0);
                                    }
                                    carried = Some(memory.clone().try_acquire_many_owned(n).unwrap());
                                }
                                Append::UnknownTopic => unreachable!(),
                            }
                        }
                    }
                }
                let mut held = 0;
                for b in queued(&a).into_iter().chain(completing.iter().map(|d| &d.batch)) {
                    prop_assert_eq!(b.permit.num_permits(), b.builder.capacity());
                    prop_assert!(b.builder.size() <= b.builder.capacity());
                    held += b.builder.capacity();
                }
                prop_assert_eq!(held, BUDGET - memory.available_permits());
            }
        }
    }

    #[tokio::test]
    async fn drained_requests_count_their_framing() {
        let mut a = acc(16384, 1 << 20);
        a.set_partitions("t", 100);
        for p in 0..100 {
            append(&mut a, &ProducerRecord::new("t").partition(p).value(b"v"));
        }
        let one = queued(&a)[0].builder.size();
        let mut out = Vec::new();
        let budget = 50 * request_cost("t", one, 0);
        a.drain(
            Instant::now(),
            Duration::ZERO,
            true,
            budget,
            |_| true,
            &mut out,
        );
        assert_eq!(out.len(), 50);
    }

    #[tokio::test]
    async fn a_new_delivery_time_closes_the_open_batch() {
        let mut a = acc(16384, 1 << 20);
        let at = |t: Option<i64>| ProducerRecord {
            deliver_at: t,
            ..ProducerRecord::new("t").partition(2).value(b"v")
        };
        let times = [
            Some(5_000),
            Some(5_000),
            Some(9_000),
            None,
            Some(-1), // before the epoch: not delayed, as None
            Some(0),
            Some(5_000),
        ];
        let mut wakes = Vec::new();
        for t in times {
            let Append::Done { wake, created, .. } = append(&mut a, &at(t)) else {
                panic!()
            };
            wakes.push((wake, created.is_some()));
        }
        // A batch is created (and the sender woken) exactly where the time changes.
        let new = |n| (true, n);
        assert_eq!(
            wakes,
            [
                new(true),
                (false, false),
                new(true),
                new(true),
                (false, false),
                (false, false),
                new(true)
            ]
        );
        // The closed ones are ready at once, oldest first, one per drain, without linger.
        let mut batches = Vec::new();
        loop {
            let mut out = Vec::new();
            a.drain(
                Instant::now(),
                Duration::from_secs(60),
                false,
                usize::MAX,
                |_| true,
                &mut out,
            );
            if out.is_empty() {
                break;
            }
            assert_eq!(out.len(), 1, "one batch per partition per drain");
            batches.extend(out.into_iter().map(|d| d.batch));
        }
        let got: Vec<(i64, usize)> = batches
            .iter()
            .map(|b| (b.deliver_at, b.builder.len()))
            .collect();
        assert_eq!(got, [(5_000, 2), (9_000, 1), (0, 3)]);
        // The last one is still open, lingering.
        let last = drain_all(&mut a);
        assert_eq!(last.len(), 1);
        assert_eq!(
            (last[0].batch.deliver_at, last[0].batch.builder.len()),
            (5_000, 1)
        );
    }

    #[tokio::test]
    async fn keyless_records_stay_on_their_partition_when_the_time_changes() {
        let mut a = acc(16384, 1 << 20);
        let mut partitions = Vec::new();
        for i in 0..6 {
            let r = ProducerRecord::new("t").value(b"v").deliver_at(1 + i % 2);
            let Append::Done { future, .. } = append(&mut a, &r) else {
                panic!()
            };
            partitions.push(future.partition());
        }
        partitions.dedup();
        assert_eq!(partitions.len(), 1, "a time change is not a full batch");
        assert_eq!(queued(&a).len(), 6);
    }

    #[test]
    fn a_delayed_batch_costs_its_deliver_at_ms() {
        assert_eq!(request_cost("t", 100, 0), request_cost("t", 100, -3));
        assert_eq!(
            request_cost("t", 100, 1),
            request_cost("t", 100, 0) + DELIVER_AT_COST
        );
        // The packed field's size for the largest time: tag, length, protobuf varint.
        let mut v = i64::MAX as u64;
        let mut varint = 1;
        while v >= 0x80 {
            v >>= 7;
            varint += 1;
        }
        assert_eq!(1 + 1 + varint, DELIVER_AT_COST);
    }

    #[tokio::test]
    async fn linger_and_expiry() {
        let mut a = acc(16384, 1 << 20);
        let r = ProducerRecord::new("t").key(b"k").value(b"v");
        append(&mut a, &r);
        let (ready, oldest) = a.deadlines(Duration::from_millis(5), |_| true);
        let created = oldest.unwrap();
        assert_eq!(ready, Some(created + Duration::from_millis(5)));
        let mut out = Vec::new();
        a.drain(
            created,
            Duration::from_millis(5),
            false,
            usize::MAX,
            |_| true,
            &mut out,
        );
        assert!(out.is_empty(), "not lingered long enough");
        let mut expired = Vec::new();
        a.expire(created, &mut expired);
        assert_eq!(expired.len(), 1);
        assert!(a.is_empty());
    }
}
