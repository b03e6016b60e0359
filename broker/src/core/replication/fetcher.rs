//! The follower's side: one fetcher task per leader broker, fetching every partition this
//! broker follows from it with one ReplicaFetch at a time over one connection (Kafka's replica
//! fetcher thread, as a task). While the follower is behind, one answer's batches are appended
//! while the next fetch is out (from where they will end; its `held_offset` tells the leader
//! what is stored so far), so sending and storing overlap; once it has caught up, each answer
//! is appended before the next fetch reports the new log end.
//!
//! [`Fetchers::assign`] takes the plan the metadata image calls for (per leader: its native
//! address and the partitions followed from it, each in its leader epoch) after every image
//! the broker follows; a fetcher whose leader leads nothing followed here any more stops. Per
//! partition a fetcher keeps where its log ends and the epoch of its last batch (asked of the
//! partition's writer when it is assigned, then taken from every append and truncation), and
//! per response it hands the batches to the writer as they came (`Partition::replicate`),
//! truncates where the leader says the logs part (`Partition::truncate`), and backs off a
//! partition the leader refuses (an epoch or leadership it does not know yet) until the next
//! round. A lost connection is dialled again with a growing backoff; nothing it did is lost,
//! since the position is the log's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchHeader, peek_total_len};
use strom_protocol::frame::decode_frame;
use strom_protocol::messages::{
    ReplicaFetchPartition, ReplicaFetchPartitionResponse, ReplicaFetchRequest,
    ReplicaFetchResponse, ReplicaFetchTopic, Request, response,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::divergence::EpochEnd;
use super::leader::BrokerId;
use crate::core::delays::Delay;
use crate::core::partition::{DelayLog, LeaderRuns, Partition, Position, TruncateTo};

/// How long a fetch waits at the leader for new batches.
const MAX_WAIT_MS: u32 = 500;
/// Bytes a fetch asks for, per partition and in all.
const PARTITION_BYTES: u32 = 1 << 20;
const RESPONSE_BYTES: u32 = 16 << 20;
/// Largest response frame a fetcher reads.
const MAX_RESPONSE_FRAME: usize = RESPONSE_BYTES as usize + (4 << 20);
/// Longest wait for an fsync a leader's durable produce waits for, before the next fetch.
const DURABLE_WAIT: Duration = Duration::from_millis(50);
/// How long a partition the leader refused waits before it is fetched again.
const REFUSED_BACKOFF: Duration = Duration::from_millis(50);
/// How long the fetcher waits before dialling a leader again, at most.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// One partition this broker follows.
#[derive(Debug, Clone)]
pub(crate) struct Followed {
    pub topic: Arc<str>,
    pub topic_id: [u8; 16],
    pub index: i32,
    /// The leader epoch it is followed in.
    pub epoch: i32,
    pub partition: Arc<Partition>,
    /// Where the partition records the delayed runs its leader sends (`None`: kept in memory
    /// only).
    pub delay_log: Option<DelayLog>,
}

/// What one fetcher does: where its leader is and what it follows from it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// The leader's native `HOST:PORT` (`None`: not known yet).
    pub addr: Option<String>,
    /// This broker's epoch, sent with every fetch.
    pub broker_epoch: u64,
    pub partitions: Vec<Followed>,
}

#[derive(Debug)]
struct Fetcher {
    plan: watch::Sender<Plan>,
    task: JoinHandle<()>,
}

/// Every fetcher of this broker, by leader.
#[derive(Debug)]
pub(crate) struct Fetchers {
    me: BrokerId,
    running: Mutex<HashMap<BrokerId, Fetcher>>,
    shutdown: CancellationToken,
}

impl Fetchers {
    pub(crate) fn new(me: BrokerId, shutdown: CancellationToken) -> Self {
        Self {
            me,
            running: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Makes the fetchers match `plans` (by leader): new leaders get a fetcher, others a new
    /// plan, and fetchers of leaders not in it stop.
    pub(crate) fn assign(&self, mut plans: HashMap<BrokerId, Plan>) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.retain(|leader, fetcher| match plans.remove(leader) {
            Some(plan) if !fetcher.task.is_finished() => {
                fetcher.plan.send_replace(plan);
                true
            }
            Some(plan) => {
                plans.insert(*leader, plan);
                false
            }
            None => {
                fetcher.task.abort();
                false
            }
        });
        for (leader, plan) in plans {
            let (tx, rx) = watch::channel(plan);
            let task = tokio::spawn(run(self.me, leader, rx, self.shutdown.clone()));
            running.insert(leader, Fetcher { plan: tx, task });
        }
    }

    /// Stops every fetcher.
    pub(crate) fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, fetcher) in running.drain() {
            fetcher.task.abort();
        }
    }
}

/// A fetcher's state for one partition.
#[derive(Debug, Clone, Copy)]
struct Pos {
    epoch: i32,
    at: Position,
    /// Not fetched before this (the leader refused it).
    until: Option<Instant>,
}

type Key = (Arc<str>, i32);

async fn run(
    me: BrokerId,
    leader: BrokerId,
    mut plan: watch::Receiver<Plan>,
    shutdown: CancellationToken,
) {
    let mut positions: HashMap<Key, Pos> = HashMap::new();
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    let mut ahead: Option<Ahead> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // A new plan may re-read positions from the logs: the answer still to append first.
        if let Some(a) = ahead.take_if(|_| plan.has_changed().unwrap_or(true)) {
            apply(leader, &a.plan, &mut positions, a.response).await;
        }
        let current = plan.borrow_and_update().clone();
        // Positions of newly followed partitions (or new epochs) come from their logs.
        positions.retain(|k, _| {
            current
                .partitions
                .iter()
                .any(|f| (&f.topic, f.index) == (&k.0, k.1))
        });
        for f in &current.partitions {
            let key = (f.topic.clone(), f.index);
            if positions.get(&key).map(|p| p.epoch) == Some(f.epoch) {
                continue;
            }
            match f.partition.position().await {
                Ok(at) => {
                    positions.insert(
                        key,
                        Pos {
                            epoch: f.epoch,
                            at,
                            until: None,
                        },
                    );
                }
                Err(_) => {
                    positions.remove(&key);
                }
            }
        }
        let now = Instant::now();
        let wanted: Vec<&Followed> = current
            .partitions
            .iter()
            .filter(|f| {
                positions
                    .get(&(f.topic.clone(), f.index))
                    .is_some_and(|p| p.until.is_none_or(|u| u <= now))
            })
            .collect();
        let Some(addr) = current.addr.clone().filter(|_| !wanted.is_empty()) else {
            if let Some(a) = ahead.take() {
                apply(leader, &a.plan, &mut positions, a.response).await;
                continue;
            }
            // Nothing to fetch now: wait for a new plan, or for a refused partition's turn.
            let next = positions.values().filter_map(|p| p.until).min();
            tokio::select! {
                r = plan.changed() => if r.is_err() { return },
                () = sleep_until_opt(next) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        };
        if conn.is_none() {
            if let Some(a) = ahead.take() {
                apply(leader, &a.plan, &mut positions, a.response).await;
            }
            match Conn::connect(&addr).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = Duration::from_millis(20);
                    if warned {
                        tracing::info!(leader, %addr, "replica fetcher connected");
                        warned = false;
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(leader, %addr, error = %e, "replica fetcher cannot reach the leader; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                    continue;
                }
            }
        }
        let request = fetch_request(
            me,
            current.broker_epoch,
            &wanted,
            &positions,
            ahead.as_ref().map(|a| &a.ends),
        );
        let Some(c) = conn.as_mut() else { continue };
        // The previous answer's batches are appended while this fetch is out.
        let pending = ahead.take();
        let appended = async {
            let a = pending?;
            apply(leader, &a.plan, &mut positions, a.response).await;
            Some(a.ends)
        };
        let (response, predicted) = tokio::select! {
            r = async { tokio::join!(c.call(request), appended) } => r,
            () = shutdown.cancelled() => return,
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, %addr, error = %e, "replica fetch failed; reconnecting");
                conn = None;
                continue;
            }
        };
        if let Some(ends) = predicted
            && ends
                .iter()
                .any(|(key, end)| positions.get(key).map(|p| p.at) != Some(*end))
        {
            // An append ended elsewhere than its batches said (or failed): this answer was
            // read from the wrong offsets.
            tracing::debug!(
                leader,
                "a pipelined replica fetch missed the log's end; fetching again"
            );
            continue;
        }
        match ends_after(&response) {
            Some(ends) => {
                ahead = Some(Ahead {
                    plan: current,
                    response,
                    ends,
                })
            }
            None => apply(leader, &current, &mut positions, response).await,
        }
    }
}

/// An answer whose batches are appended while the next fetch is in flight: the plan it
/// answered and where each partition's log ends once they are.
struct Ahead {
    plan: Plan,
    response: ReplicaFetchResponse,
    ends: HashMap<Key, Position>,
}

/// Where the logs of `response`'s partitions end once its batches are appended, when the next
/// fetch may go out before they are: every partition answered plain batches (no error, no
/// divergence; the writer's checks may still refuse them, which the fetcher sees before it uses
/// the next answer) and one of them is still behind its leader. `None` otherwise: the answer
/// is applied first, so a follower that has caught up reports its new log end (and an
/// `acks=all` produce waiting for it is answered) at once rather than one long poll later.
fn ends_after(response: &ReplicaFetchResponse) -> Option<HashMap<Key, Position>> {
    let mut ends = HashMap::new();
    let mut behind = false;
    for topic in &response.topics {
        for p in &topic.partitions {
            if p.error_code != 0 || p.diverging_epoch.is_some() {
                return None;
            }
            if p.records.is_empty() {
                continue;
            }
            let last = last_batch(&p.records)?;
            behind |= last.next_offset() < p.log_end_offset;
            ends.insert(
                (Arc::from(topic.name.as_str()), p.partition),
                Position {
                    end: last.next_offset(),
                    last_epoch: Some(last.partition_leader_epoch),
                },
            );
        }
    }
    behind.then_some(ends)
}

/// The header of the last of `records`' batches, if they are whole batches.
fn last_batch(records: &[u8]) -> Option<BatchHeader> {
    let mut rest = records;
    let mut last = None;
    while !rest.is_empty() {
        let len = peek_total_len(rest).ok()??;
        last = Some(BatchHeader::parse(rest.get(..len)?).ok()?);
        rest = &rest[len..];
    }
    last
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn fetch_request(
    me: BrokerId,
    broker_epoch: u64,
    wanted: &[&Followed],
    positions: &HashMap<Key, Pos>,
    ahead: Option<&HashMap<Key, Position>>,
) -> ReplicaFetchRequest {
    let mut topics: Vec<ReplicaFetchTopic> = Vec::new();
    // Each topic's place in `topics`, so grouping is linear in the partitions.
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for f in wanted {
        let key = (f.topic.clone(), f.index);
        let Some(pos) = positions.get(&key) else {
            continue;
        };
        let next = ahead.and_then(|a| a.get(&key)).copied();
        let from = next.unwrap_or(pos.at);
        let partition = ReplicaFetchPartition {
            partition: f.index,
            current_leader_epoch: f.epoch,
            fetch_offset: from.end,
            last_fetched_epoch: from.last_epoch,
            durable_offset: f.partition.reader().durable_offset().min(pos.at.end),
            partition_max_bytes: PARTITION_BYTES,
            held_offset: next.map(|_| pos.at.end),
        };
        match slot.get(&*f.topic) {
            Some(&i) => topics[i].partitions.push(partition),
            None => {
                slot.insert(&f.topic, topics.len());
                topics.push(ReplicaFetchTopic {
                    name: f.topic.to_string(),
                    topic_id: Bytes::copy_from_slice(&f.topic_id),
                    partitions: vec![partition],
                });
            }
        }
    }
    ReplicaFetchRequest {
        replica_id: me,
        broker_epoch,
        max_wait_ms: MAX_WAIT_MS,
        min_bytes: 1,
        max_bytes: RESPONSE_BYTES,
        topics,
    }
}

/// Applies a response: appends, truncations and back-offs, the writers working in parallel.
async fn apply(
    leader: BrokerId,
    plan: &Plan,
    positions: &mut HashMap<Key, Pos>,
    response: ReplicaFetchResponse,
) {
    // By (topic, partition): a response answers every partition followed from this leader,
    // so a search of the plan per partition would be quadratic in them.
    let planned: HashMap<(&str, i32), &Followed> = plan
        .partitions
        .iter()
        .map(|f| ((&*f.topic, f.index), f))
        .collect();
    let mut work = Vec::new();
    for topic in response.topics {
        for p in topic.partitions {
            let Some(f) = planned.get(&(topic.name.as_str(), p.partition)) else {
                continue;
            };
            work.push(partition_outcome(leader, f, p));
        }
    }
    for (key, outcome) in join_all(work).await {
        let Some(pos) = positions.get_mut(&key) else {
            continue;
        };
        match outcome {
            Ok(Some(at)) => {
                pos.at = at;
                pos.until = None;
            }
            Ok(None) => pos.until = None,
            Err(()) => pos.until = Some(Instant::now() + REFUSED_BACKOFF),
        }
    }
}

/// What one partition's answer does: `Ok(Some(position))` after an append or truncation,
/// `Ok(None)` when nothing changed, `Err` when the partition is to back off.
async fn partition_outcome(
    leader: BrokerId,
    f: &Followed,
    p: ReplicaFetchPartitionResponse,
) -> (Key, Result<Option<Position>, ()>) {
    ((f.topic.clone(), f.index), outcome(leader, f, p).await)
}

async fn outcome(
    leader: BrokerId,
    f: &Followed,
    p: ReplicaFetchPartitionResponse,
) -> Result<Option<Position>, ()> {
    let part = &f.partition;
    let code = ErrorCode::from(p.error_code);
    match code {
        ErrorCode::None => {
            if let Some(d) = p.diverging_epoch {
                let to = TruncateTo::Diverging {
                    diverging: EpochEnd {
                        epoch: d.epoch,
                        end_offset: d.end_offset,
                    },
                    leader_start: p.log_start_offset,
                };
                part.truncate(leader, f.epoch, to, f.delay_log.clone()).await.map(Some).map_err(|e| {
                    tracing::warn!(topic = %f.topic, partition = f.index, error = %e.1, "cannot truncate to the leader's log");
                })
            } else if !p.records.is_empty() || p.durable_wanted > part.reader().durable_offset() {
                let runs = p
                    .delayed
                    .iter()
                    .map(|d| Delay {
                        first: d.first_offset,
                        last: d.last_offset,
                        at: d.deliver_at_ms,
                    })
                    .collect();
                let at = part
                    .replicate(
                        leader,
                        f.epoch,
                        p.records,
                        p.high_watermark,
                        p.durable_wanted,
                        LeaderRuns {
                            runs,
                            log: f.delay_log.clone(),
                        },
                    )
                    .await
                    .map_err(|e| {
                        tracing::debug!(topic = %f.topic, partition = f.index, error = %e.1, "cannot append the leader's batches");
                    })?;
                // A durable produce on the leader waits for this fsync: report it in the next
                // fetch rather than one long poll later.
                let wanted = p.durable_wanted.min(at.end);
                if wanted > part.reader().durable_offset() {
                    let _ = tokio::time::timeout(DURABLE_WAIT, part.replica().wait_durable(wanted))
                        .await;
                }
                Ok(Some(at))
            } else {
                part.replica().learn_hw(p.high_watermark);
                Ok(None)
            }
        }
        ErrorCode::OffsetOutOfRange => {
            let to = TruncateTo::OutOfRange {
                leader_start: p.log_start_offset,
                leader_end: p.log_end_offset,
            };
            part.truncate(leader, f.epoch, to, f.delay_log.clone()).await.map(Some).map_err(|e| {
                tracing::warn!(topic = %f.topic, partition = f.index, error = %e.1, "cannot truncate to the leader's log");
            })
        }
        _ => {
            tracing::debug!(topic = %f.topic, partition = f.index, leader, ?code, message = ?p.error_message, "the leader refused a replica fetch");
            Err(())
        }
    }
}

/// One connection to a leader's native listener.
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    next_id: u32,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] strom_protocol::ProtocolError),
    #[error("the leader answered {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the leader answered another API or request")]
    Unexpected,
    #[error("no answer within the fetch's wait")]
    Timeout,
}

impl Conn {
    async fn connect(addr: &str) -> Result<Self, ConnError> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| ConnError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
            next_id: 1,
        })
    }

    async fn call(
        &mut self,
        request: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse, ConnError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        strom_protocol::encode_request(&Request::new(id, 0, request), &mut self.write)?;
        self.stream.write_all(&self.write).await?;
        self.write.clear();
        let wait = Duration::from_millis(u64::from(MAX_WAIT_MS)) + Duration::from_secs(10);
        let frame = tokio::time::timeout(wait, self.read_frame())
            .await
            .map_err(|_| ConnError::Timeout)??;
        let response = strom_protocol::decode_response(frame)?;
        let header = response.header.unwrap_or_default();
        if header.correlation_id != id {
            return Err(ConnError::Unexpected);
        }
        let code = ErrorCode::from(header.error_code);
        if code != ErrorCode::None {
            return Err(ConnError::Refused {
                code,
                message: header.error_message.unwrap_or_default(),
            });
        }
        match response.body {
            Some(response::Body::ReplicaFetch(r)) => Ok(r),
            _ => Err(ConnError::Unexpected),
        }
    }

    async fn read_frame(&mut self) -> Result<Bytes, ConnError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.read, MAX_RESPONSE_FRAME)? {
                return Ok(frame);
            }
            if self.read.capacity() - self.read.len() < 16 * 1024 {
                self.read.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

#[cfg(test)]
#[path = "fetcher_tests.rs"]
mod tests;
