//! The background fetcher: keeps one long-poll fetch in flight per broker for the assigned
//! partitions that broker leads and that have a position and nothing waiting in the queue,
//! checks and decodes what comes back off the application's task, and queues it for `poll`.
//!
//! Each partition is fetched from its leader, as the client's metadata says ([`Routes`]); a
//! partition whose leader is unknown is looked up (at most once per `retry_backoff`), and an
//! answer that says the leader moved (`NOT_LEADER_OR_FOLLOWER` and the like) or a broker that
//! cannot be reached makes the client forget that topic's leaders. Every broker gets its own
//! fetch connection, so a long poll at one never delays the others.
//!
//! Memory is bounded twice: a partition is not fetched again while a chunk of it waits in the
//! queue (so the queue holds at most one chunk per partition, each at most
//! `max_partition_fetch_bytes` or one batch), and no fetch is sent while the queued bytes are at
//! or above `max_buffered_bytes`. Record bytes stay slices of the response frame: decoding
//! copies nothing except what decompression produces.
//!
//! Positions belong to the consumer. Every seek bumps the partition's epoch; the fetcher tags
//! each fetch and chunk with the epoch it was made for, and chunks of an older epoch are
//! dropped (by the fetcher when the response arrives, by the consumer when it dequeues them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{self, BatchIter};
use strom_protocol::messages::{FetchPartition, FetchRequest, FetchTopic, response};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::admin::{OffsetSpec, list_offsets_on};
use crate::backoff::backoff;
use crate::batches::{MAX_DECOMPRESSED_BATCH, decompress};
use crate::config::{AutoOffsetReset, ConsumerConfig};
use crate::connection::Connection;
use crate::control::Control;
use crate::error::Error;
use crate::partitioner::Rng;
use crate::record::TopicPartition;
use crate::routes::{NodeId, Routes};

mod validate;
use validate::Check;

/// The fetcher's view of one assigned partition.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartFetch {
    /// Where the next fetch starts; `None` while the partition has no position.
    pub(crate) fetch_offset: Option<i64>,
    /// Bumped by every seek and assignment.
    pub(crate) epoch: u32,
    /// A data chunk of this epoch waits in the queue.
    pub(crate) buffered: bool,
    /// Look the position up with ListOffsets (auto_offset_reset) before fetching.
    pub(crate) needs_reset: bool,
    /// No fetch before this (after a retriable error).
    pub(crate) backoff_until: Option<Instant>,
    /// The leader epoch of the last batch fetched up to the position (KIP-320): after a leader
    /// change the position is checked against the new leader's log with it.
    pub(crate) last_epoch: Option<i32>,
    /// The leader epoch the partition was last fetched in, as the client's metadata said.
    pub(crate) fetched_in: Option<i32>,
}

/// State shared by the consumer and its fetcher.
#[derive(Debug, Default)]
pub(crate) struct FetchShared {
    state: Mutex<BTreeMap<TopicPartition, PartFetch>>,
    /// Wakes the fetcher: assignment or positions changed, queue space freed, closing.
    pub(crate) wake: Notify,
    /// Bytes of data chunks in the queue.
    pub(crate) buffered_bytes: AtomicUsize,
    pub(crate) closed: AtomicBool,
    /// The [`AutoOffsetReset`] in force (the consumer's, or its group's once it subscribed).
    reset: AtomicU8,
}

impl FetchShared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<TopicPartition, PartFetch>> {
        // Each change under this lock is one assignment of plain fields: a poisoned lock still
        // guards consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_reset_policy(&self, policy: AutoOffsetReset) {
        let v = match policy {
            AutoOffsetReset::None => 0,
            AutoOffsetReset::Earliest => 1,
            AutoOffsetReset::Latest => 2,
        };
        self.reset.store(v, Ordering::Release);
    }

    pub(crate) fn reset_policy(&self) -> AutoOffsetReset {
        match self.reset.load(Ordering::Acquire) {
            1 => AutoOffsetReset::Earliest,
            2 => AutoOffsetReset::Latest,
            _ => AutoOffsetReset::None,
        }
    }
}

/// What the fetcher hands to `poll`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u32,
    pub(crate) kind: ChunkKind,
}

#[derive(Debug)]
pub(crate) enum ChunkKind {
    /// Whole uncompressed batches, in offset order; `next_offset` follows the last fetched
    /// batch (control and empty batches included); `bytes` is what the chunk holds.
    Data {
        batches: Vec<Bytes>,
        next_offset: i64,
        bytes: usize,
    },
    /// auto_offset_reset chose this position.
    Reset { offset: i64 },
    /// The partition stopped (until a seek) for this reason.
    Error(Error),
}

/// One partition's fetched records, decoded ([`decode_fetched`]).
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Whole uncompressed batches, in offset order.
    pub(crate) batches: Vec<Bytes>,
    /// The offset after the last whole batch seen (control and empty ones included).
    pub(crate) next: Option<i64>,
    /// Bytes the batches hold.
    pub(crate) bytes: usize,
    /// The leader epoch of the last whole batch seen (bytes 12-15 of its header), when stamped.
    pub(crate) last_epoch: Option<i32>,
    /// The first error, after the batches before it.
    pub(crate) error: Option<Error>,
}

/// Decodes one partition's fetched records: splits them into batches, checks each CRC (when
/// asked), drops control batches and batches wholly below `fetch_offset`, decompresses.
pub(crate) fn decode_fetched(
    tp: &TopicPartition,
    records: &Bytes,
    fetch_offset: i64,
    check_crcs: bool,
) -> Decoded {
    let mut out = Decoded::default();
    let corrupt = |offset: i64, source| Error::Corrupt {
        topic: tp.topic.to_string(),
        partition: tp.partition,
        offset,
        source,
    };
    for item in BatchIter::new(records) {
        let (range, header) = match item {
            Ok(x) => x,
            Err(e) => {
                out.error = Some(corrupt(out.next.unwrap_or(fetch_offset), e));
                return out;
            }
        };
        let raw = records.slice(range);
        if check_crcs && let Err(e) = batch::validate(&raw) {
            out.error = Some(corrupt(header.base_offset, e));
            return out;
        }
        out.next = Some(header.next_offset());
        if header.partition_leader_epoch >= 0 {
            out.last_epoch = Some(header.partition_leader_epoch);
        }
        if header.is_control() || header.record_count <= 0 || header.next_offset() <= fetch_offset {
            continue;
        }
        match decompress(&raw, &header, MAX_DECOMPRESSED_BATCH) {
            Ok(b) => {
                out.bytes += b.len();
                out.batches.push(b);
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
    out
}

/// A partition to fetch: where from, and the seek epoch it is fetched for.
#[derive(Debug, Clone)]
struct Wanted {
    tp: TopicPartition,
    offset: i64,
    /// The seek epoch ([`PartFetch::epoch`]).
    seek: u32,
    /// The leader epoch the client's metadata gives, sent as the current leader epoch.
    leader_epoch: Option<i32>,
}

/// The fetch loop; see the module docs.
pub(crate) struct Fetcher {
    ctx: Arc<FetchCtx>,
    /// When topics with a partition whose leader is unknown may be looked up again.
    next_lookup: Option<tokio::time::Instant>,
}

/// What the fetcher's per-broker fetches share.
struct FetchCtx {
    shared: Arc<FetchShared>,
    config: Arc<ConsumerConfig>,
    tx: mpsc::UnboundedSender<Chunk>,
    control: Arc<Control>,
    routes: Arc<Routes>,
    busy: Mutex<Busy>,
}

/// Fetches in flight.
#[derive(Default)]
struct Busy {
    /// Brokers with a fetch in flight.
    brokers: HashSet<NodeId>,
    /// The partitions those fetches are for.
    parts: HashSet<TopicPartition>,
    /// Each broker's fetch connection.
    conns: HashMap<NodeId, Arc<Connection>>,
    /// Consecutive failures per broker, for the backoff.
    failures: HashMap<NodeId, u32>,
}

impl FetchCtx {
    fn busy(&self) -> MutexGuard<'_, Busy> {
        // Plain set and map updates: a poisoned lock is still consistent.
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, chunk: Chunk) {
        // The consumer is gone when this fails; the loop notices `closed` next.
        let _ = self.tx.send(chunk);
    }
}

impl Fetcher {
    pub(crate) fn new(
        shared: Arc<FetchShared>,
        config: Arc<ConsumerConfig>,
        tx: mpsc::UnboundedSender<Chunk>,
        control: Arc<Control>,
    ) -> Self {
        Self {
            ctx: Arc::new(FetchCtx {
                shared,
                config,
                tx,
                routes: control.routes().clone(),
                control,
                busy: Mutex::new(Busy::default()),
            }),
            next_lookup: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let ctx = self.ctx.clone();
        while !ctx.shared.closed.load(Ordering::Acquire) {
            // Queue full: wait for poll to take something.
            if ctx.shared.buffered_bytes.load(Ordering::Acquire) >= ctx.config.max_buffered_bytes {
                let notified = ctx.shared.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if ctx.shared.buffered_bytes.load(Ordering::Acquire)
                    >= ctx.config.max_buffered_bytes
                {
                    notified.await;
                }
                continue;
            }
            let now = Instant::now();
            let mut resets: Vec<(TopicPartition, u32)> = Vec::new();
            let mut fetches: Vec<(Wanted, Option<i32>, Option<i32>)> = Vec::new();
            let mut next_backoff: Option<Instant> = None;
            // Registered before the state is read, so a change made after the read wakes us.
            let notified = ctx.shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let busy = ctx.busy();
                for (tp, p) in ctx.shared.lock().iter() {
                    if busy.parts.contains(tp) {
                        continue;
                    }
                    if let Some(t) = p.backoff_until
                        && t > now
                    {
                        next_backoff = Some(next_backoff.map_or(t, |n| n.min(t)));
                        continue;
                    }
                    if p.needs_reset {
                        resets.push((tp.clone(), p.epoch));
                    } else if let Some(offset) = p.fetch_offset
                        && !p.buffered
                    {
                        fetches.push((
                            Wanted {
                                tp: tp.clone(),
                                offset,
                                seek: p.epoch,
                                leader_epoch: None,
                            },
                            p.last_epoch,
                            p.fetched_in,
                        ));
                    }
                }
            }
            // Each partition to its leader; partitions whose leader is unknown wait for a
            // lookup.
            let mut unknown: Vec<Arc<str>> = Vec::new();
            let mut by_leader: BTreeMap<NodeId, (String, Vec<Wanted>)> = BTreeMap::new();
            let mut checks: BTreeMap<String, Vec<Check>> = BTreeMap::new();
            for (mut f, last_epoch, fetched_in) in fetches {
                match ctx.routes.leader(&f.tp.topic, f.tp.partition) {
                    Some((id, addr)) => {
                        f.leader_epoch = ctx.routes.leader_epoch(&f.tp.topic, f.tp.partition);
                        // Fetched before in another leader epoch: check the position against
                        // this leader's log first.
                        match (last_epoch, fetched_in, f.leader_epoch) {
                            (Some(last), Some(before), Some(now)) if before != now => {
                                checks.entry(addr).or_default().push(Check {
                                    wanted: f,
                                    last_epoch: last,
                                });
                            }
                            _ => by_leader.entry(id).or_insert((addr, Vec::new())).1.push(f),
                        }
                    }
                    None => {
                        if !unknown.contains(&f.tp.topic) {
                            unknown.push(f.tp.topic.clone());
                        }
                    }
                }
            }
            for (tp, _) in &resets {
                if ctx.routes.leader(&tp.topic, tp.partition).is_none()
                    && !unknown.contains(&tp.topic)
                {
                    unknown.push(tp.topic.clone());
                }
            }
            if !unknown.is_empty() && self.next_lookup.is_none_or(|t| now >= t) {
                self.next_lookup = Some(now + ctx.config.retry_backoff);
                let topics: Vec<&str> = unknown.iter().map(|t| &**t).collect();
                if let Err(e) = ctx.control.metadata(&topics, false).await {
                    tracing::debug!(error = %e, "metadata lookup for the fetcher failed");
                }
                continue;
            }
            if !unknown.is_empty()
                && let Some(t) = self.next_lookup
            {
                next_backoff = Some(next_backoff.map_or(t, |n| n.min(t)));
            }
            if !resets.is_empty() {
                self.reset(resets).await;
                continue;
            }
            if !checks.is_empty() {
                for (addr, parts) in checks {
                    ctx.check_positions(&addr, parts).await;
                }
                continue;
            }
            let mut started = false;
            {
                let mut busy = ctx.busy();
                for (id, (addr, parts)) in by_leader {
                    if busy.brokers.contains(&id) {
                        continue;
                    }
                    busy.brokers.insert(id);
                    busy.parts.extend(parts.iter().map(|w| w.tp.clone()));
                    started = true;
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        ctx.fetch(id, &addr, &parts).await;
                        let mut busy = ctx.busy();
                        busy.brokers.remove(&id);
                        for w in &parts {
                            busy.parts.remove(&w.tp);
                        }
                        drop(busy);
                        ctx.shared.wake.notify_one();
                    });
                }
            }
            if started {
                continue;
            }
            match next_backoff {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Finds positions by `auto_offset_reset` for partitions that have none (or lost theirs).
    async fn reset(&mut self, parts: Vec<(TopicPartition, u32)>) {
        let ctx = self.ctx.clone();
        let mut by_leader: BTreeMap<String, Vec<(TopicPartition, u32)>> = BTreeMap::new();
        for part in parts {
            if let Some((_, addr)) = ctx.routes.leader(&part.0.topic, part.0.partition) {
                by_leader.entry(addr).or_default().push(part);
            }
        }
        for (addr, parts) in by_leader {
            match ctx.control.connection_at(&addr).await {
                Ok(conn) => ctx.reset_on(&conn, parts).await,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "no connection for ListOffsets");
                    let retry_at = Instant::now() + ctx.config.retry_backoff;
                    let mut state = ctx.shared.lock();
                    for (tp, _) in &parts {
                        ctx.routes.forget(&tp.topic);
                        if let Some(p) = state.get_mut(tp) {
                            p.backoff_until = Some(retry_at);
                        }
                    }
                }
            }
        }
    }
}

impl FetchCtx {
    /// Finds positions by `auto_offset_reset` for `parts`, all led by the broker of `conn`.
    async fn reset_on(&self, conn: &Connection, parts: Vec<(TopicPartition, u32)>) {
        let spec = match self.shared.reset_policy() {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
            AutoOffsetReset::None => {
                // The consumer does not ask for resets under this policy.
                let mut state = self.shared.lock();
                for (tp, _) in &parts {
                    if let Some(p) = state.get_mut(tp) {
                        p.needs_reset = false;
                    }
                }
                return;
            }
        };
        let queries: Vec<(TopicPartition, OffsetSpec)> =
            parts.iter().map(|(tp, _)| (tp.clone(), spec)).collect();
        let results = list_offsets_on(conn, &queries).await;
        let retry_at = Instant::now() + self.config.retry_backoff;
        let mut state = self.shared.lock();
        match results {
            Ok(listed) => {
                for ((tp, epoch), listed) in parts.into_iter().zip(listed) {
                    let Some(p) = state.get_mut(&tp) else {
                        continue;
                    };
                    if p.epoch != epoch {
                        continue;
                    }
                    match listed.result {
                        Ok((offset, _)) if offset >= 0 => {
                            p.needs_reset = false;
                            p.fetch_offset = Some(offset);
                            p.last_epoch = None;
                            p.buffered = false;
                            let _ = self.tx.send(Chunk {
                                tp,
                                epoch,
                                kind: ChunkKind::Reset { offset },
                            });
                        }
                        Ok(_) => p.backoff_until = Some(retry_at),
                        Err(e) if e.is_retriable() => p.backoff_until = Some(retry_at),
                        Err(e) => {
                            p.needs_reset = false;
                            p.fetch_offset = None;
                            let _ = self.tx.send(Chunk {
                                tp,
                                epoch,
                                kind: ChunkKind::Error(e),
                            });
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "ListOffsets for a reset failed");
                for (tp, _) in parts {
                    if let Some(p) = state.get_mut(&tp) {
                        p.backoff_until = Some(retry_at);
                    }
                }
            }
        }
    }

    /// One fetch of `parts` from their leader `id` at `addr` (a task of its own per broker, so
    /// brokers are fetched from in parallel).
    async fn fetch(&self, id: NodeId, addr: &str, parts: &[Wanted]) {
        let conn = match self.fetch_connection(id, addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(broker = id, %addr, error = %e, "fetch connection failed");
                self.failed(id, parts);
                return;
            }
        };
        let mut topics: Vec<FetchTopic> = Vec::new();
        for Wanted {
            tp,
            offset,
            leader_epoch,
            ..
        } in parts
        {
            let partition = FetchPartition {
                partition: tp.partition,
                fetch_offset: *offset,
                partition_max_bytes: self.config.max_partition_fetch_bytes,
                current_leader_epoch: *leader_epoch,
            };
            match topics.last_mut() {
                Some(t) if *t.name == *tp.topic => t.partitions.push(partition),
                _ => topics.push(FetchTopic {
                    name: tp.topic.to_string(),
                    partitions: vec![partition],
                }),
            }
        }
        let max_wait_ms = u32::try_from(self.config.fetch_max_wait.as_millis()).unwrap_or(u32::MAX);
        let request = FetchRequest {
            max_wait_ms,
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_max_bytes,
            topics,
        };
        let timeout = self.config.client.request_timeout + self.config.fetch_max_wait;
        let body = match conn.request_with_timeout(request, timeout).await {
            Ok(response::Body::Fetch(f)) => f,
            Ok(_) => {
                conn.close("Fetch answered with another API's body");
                return;
            }
            Err(e) => {
                tracing::debug!(broker = id, error = %e, "fetch failed");
                if !e.is_retriable() {
                    conn.close(format!("fetch failed: {e}"));
                }
                self.failed(id, parts);
                return;
            }
        };
        self.busy().failures.remove(&id);
        let requested: BTreeMap<&TopicPartition, &Wanted> =
            parts.iter().map(|w| (&w.tp, w)).collect();
        for t in body.topics {
            let topic: Arc<str> = Arc::from(t.name.as_str());
            for p in t.partitions {
                let tp = TopicPartition {
                    topic: topic.clone(),
                    partition: p.partition,
                };
                let Some(&w) = requested.get(&tp) else {
                    continue;
                };
                self.on_partition(tp, w, p);
            }
        }
    }

    /// The fetch connection to broker `id`, opened when there is none.
    async fn fetch_connection(&self, id: NodeId, addr: &str) -> crate::Result<Arc<Connection>> {
        if let Some(c) = self.busy().conns.get(&id)
            && c.is_alive()
            && c.addr() == addr
        {
            return Ok(c.clone());
        }
        let c = Connection::connect(addr, &self.config.client).await?;
        self.busy().conns.insert(id, c.clone());
        Ok(c)
    }

    /// A fetch from broker `id` failed: its partitions back off (exponentially while it keeps
    /// failing) and their leaders are looked up again.
    fn failed(&self, id: NodeId, parts: &[Wanted]) {
        let failures = {
            let mut busy = self.busy();
            let n = busy.failures.entry(id).or_insert(0);
            *n += 1;
            *n
        };
        let wait = backoff(
            self.config.retry_backoff,
            self.config.client.reconnect_backoff_max,
            failures,
            &mut Rng::new(),
        );
        let until = Instant::now() + wait;
        let mut state = self.shared.lock();
        for w in parts {
            self.routes.forget(&w.tp.topic);
            if let Some(p) = state.get_mut(&w.tp) {
                p.backoff_until = Some(until);
            }
        }
    }

    fn on_partition(
        &self,
        tp: TopicPartition,
        wanted: &Wanted,
        p: strom_protocol::messages::FetchPartitionResponse,
    ) {
        let (fetch_offset, epoch) = (wanted.offset, wanted.seek);
        let code = p.error_code();
        // Decode before taking the lock (CRC and decompression are the expensive part).
        let decoded = (code == ErrorCode::None)
            .then(|| decode_fetched(&tp, &p.records, fetch_offset, self.config.check_crcs));
        let retry_at = Instant::now() + self.config.retry_backoff;
        let mut state = self.shared.lock();
        let Some(part) = state.get_mut(&tp) else {
            return;
        };
        if part.epoch != epoch || part.fetch_offset != Some(fetch_offset) {
            return; // Sought or reassigned while the fetch was in flight.
        }
        match (code, decoded) {
            (
                ErrorCode::None,
                Some(Decoded {
                    batches,
                    next,
                    bytes,
                    last_epoch,
                    error,
                }),
            ) => {
                if let Some(next) = next {
                    part.fetch_offset = Some(next.max(fetch_offset));
                }
                if wanted.leader_epoch.is_some() {
                    part.fetched_in = wanted.leader_epoch;
                }
                if last_epoch.is_some() {
                    part.last_epoch = last_epoch;
                }
                if !batches.is_empty() {
                    part.buffered = true;
                    self.shared
                        .buffered_bytes
                        .fetch_add(bytes, Ordering::AcqRel);
                    let _ = self.tx.send(Chunk {
                        tp: tp.clone(),
                        epoch,
                        kind: ChunkKind::Data {
                            batches,
                            next_offset: next.unwrap_or(fetch_offset),
                            bytes,
                        },
                    });
                }
                if let Some(e) = error {
                    part.fetch_offset = None;
                    drop(state);
                    self.send(Chunk {
                        tp,
                        epoch,
                        kind: ChunkKind::Error(e),
                    });
                }
            }
            (ErrorCode::OffsetOutOfRange, _) => match self.shared.reset_policy() {
                AutoOffsetReset::None => {
                    part.fetch_offset = None;
                    drop(state);
                    self.send(Chunk {
                        epoch,
                        kind: ChunkKind::Error(Error::OffsetOutOfRange {
                            topic: tp.topic.to_string(),
                            partition: tp.partition,
                            offset: fetch_offset,
                            log_start_offset: p.log_start_offset,
                            log_end_offset: p.high_watermark,
                        }),
                        tp,
                    });
                }
                _ => {
                    tracing::info!(%tp, offset = fetch_offset, log_start_offset = p.log_start_offset, high_watermark = p.high_watermark, "offset out of range; resetting");
                    part.fetch_offset = None;
                    part.needs_reset = true;
                    part.last_epoch = None;
                }
            },
            (code, _) if code.is_retriable() => {
                tracing::debug!(%tp, %code, "retriable fetch error");
                if leader_moved(code) {
                    self.routes.forget(&tp.topic);
                }
                part.backoff_until = Some(retry_at);
            }
            (code, _) => {
                part.fetch_offset = None;
                drop(state);
                self.send(Chunk {
                    tp,
                    epoch,
                    kind: ChunkKind::Error(Error::Broker {
                        code,
                        message: p.error_message,
                    }),
                });
            }
        }
    }
}

/// Whether `code` says the client's idea of the partition's leader is wrong or stale: its
/// topic's leaders are looked up again.
pub(crate) fn leader_moved(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrFollower
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use strom_protocol::batch::{BatchBuilder, RecordRef, set_base_offset};

    use crate::batches::{Compressor, ProducerStamp};
    use crate::config::CompressionType;

    fn batch(base: i64, n: usize, codec: CompressionType) -> Bytes {
        let mut b = BatchBuilder::default();
        for i in 0..n {
            let v = format!("value-{}", base + i as i64);
            b.push(&RecordRef {
                timestamp: 1000 + i as i64,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            })
            .unwrap();
        }
        let bytes = Compressor::new(codec)
            .unwrap()
            .finish(b, ProducerStamp::NONE)
            .unwrap();
        let mut m = BytesMut::from(&bytes[..]);
        set_base_offset(&mut m, base).unwrap();
        m.freeze()
    }

    fn fetched(parts: &[Bytes]) -> Bytes {
        let mut all = BytesMut::new();
        for p in parts {
            all.extend_from_slice(p);
        }
        all.freeze()
    }

    #[test]
    fn decodes_whole_batches_and_skips_old_ones() {
        let tp = TopicPartition::new("t", 0);
        let records = fetched(&[
            batch(0, 5, CompressionType::None),
            batch(5, 5, CompressionType::Lz4),
            batch(10, 5, CompressionType::GZIP),
            batch(15, 5, CompressionType::Snappy),
            batch(20, 5, CompressionType::ZSTD),
        ]);
        // Cut the last batch short: a fetch may end inside one.
        let cut = records.slice(..records.len() - 3);
        let Decoded {
            batches,
            next,
            bytes,
            error: err,
            ..
        } = decode_fetched(&tp, &cut, 6, true);
        assert!(err.is_none());
        assert_eq!(next, Some(20), "the partial batch is not counted");
        assert_eq!(
            batches.len(),
            3,
            "batch 0..5 is wholly below the fetch offset"
        );
        assert_eq!(bytes, batches.iter().map(Bytes::len).sum::<usize>());
        for (b, first) in batches.iter().zip([5, 10, 15]) {
            let recs: Vec<_> = batch::Records::new(b.clone())
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(recs.len(), 5);
            assert_eq!(recs[0].offset, first);
            let want = format!("value-{}", first + 4);
            assert_eq!(recs[4].value.as_deref(), Some(want.as_bytes()));
        }
    }

    #[test]
    fn crc_errors_stop_at_the_bad_batch() {
        let tp = TopicPartition::new("t", 3);
        let good = batch(0, 2, CompressionType::None);
        let mut bad = BytesMut::from(&batch(2, 2, CompressionType::None)[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let records = fetched(&[good, bad.freeze()]);
        let Decoded {
            batches,
            next,
            error: err,
            ..
        } = decode_fetched(&tp, &records, 0, true);
        assert_eq!(batches.len(), 1);
        assert_eq!(next, Some(2));
        match err {
            Some(Error::Corrupt {
                partition, offset, ..
            }) => assert_eq!((partition, offset), (3, 2)),
            other => panic!("{other:?}"),
        }
        // Without CRC checks the damaged value just decodes.
        let Decoded {
            batches,
            error: err,
            ..
        } = decode_fetched(&tp, &records, 0, false);
        assert!(err.is_none());
        assert_eq!(batches.len(), 2);
    }
}
