//! The sender: one background task per producer that turns ready batches into pipelined produce
//! requests and their responses into completed records, retrying what failed in order.
//!
//! **Requests.** Up to `max_in_flight` produce requests are in flight on the producer's data
//! connection; each carries at most one batch per partition (and many partitions), up to the
//! broker's `max_frame_bytes`. Batches are finished here, outside the accumulator's lock:
//! stamped with the producer id, epoch and the partition's next sequence number (idempotence),
//! compressed, CRC'd. The broker starts one connection's requests in order, so a partition's
//! batches are appended in sequence order even with several requests in flight.
//!
//! **Retries keep order.** When a batch of a partition fails in a retriable way (an error code
//! that [`ErrorCode::is_retriable`], a lost connection, no response in time, or an
//! `OUT_OF_ORDER_SEQUENCE` behind an earlier failure), the partition stops sending and waits for
//! every other in-flight batch of it to be answered (later ones usually come back
//! `OUT_OF_ORDER_SEQUENCE`: the broker refuses a sequence gap). Then the unresolved batches are
//! resent, after a backoff, in their original sequence order with their original bytes and
//! sequence numbers: one the broker had appended after all (its answer was lost) is recognised as
//! a duplicate and answered with its first offset, so nothing is written twice and nothing is
//! reordered. A batch that failed for good (e.g. `MESSAGE_TOO_LARGE`, or its
//! `delivery_timeout`) leaves a gap: the batches after it are renumbered (sequence and CRC
//! rewritten) to close it. `UNKNOWN_PRODUCER_ID` renumbers the partition from 0. When the
//! producer cannot know what the broker holds (a batch whose outcome is unknown ran out of
//! time, an unexplained sequence error), it stops taking new batches, settles what is in flight,
//! bumps its epoch with InitProducerId and starts every partition's sequences at 0 again.
//!
//! **Delayed delivery.** A batch's delivery time (`deliver_at`, from the accumulator) travels
//! with it through every attempt: its partition's entry in the request carries
//! `deliver_at_ms = [deliver_at]` when it is delayed and nothing when it is not (the common case
//! sends no extra bytes). A resend carries the same time with the same bytes.
//!
//! **Connections.** Each partition's batches go to its leader, as the client's metadata says
//! ([`Routes`]): the sender keeps one connection per broker it sends to, with up to
//! `max_in_flight` requests on each. A partition keeps its broker while it has batches in
//! flight, so its batches are answered in order; only when none is in flight does it move to a
//! new leader. `NOT_LEADER_OR_FOLLOWER` (and the other "ask again" answers) makes the client
//! forget the topic's leaders and look them up, and the batches are resent in order to the new
//! leader with their sequence numbers: the producer id and sequences are the cluster's, not a
//! broker's. A lost connection fails everything in flight on it (as above) before a new one is
//! opened, with exponential backoff, so no batch of a partition can overtake an unresolved one.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    Acks as WireAcks, ApiKey, InitProducerIdRequest, PartitionProduceData, ProduceRequest,
    TopicProduceData, response,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Duration, Instant};

use crate::backoff::backoff;
use crate::batches::{Compressor, ProducerStamp, increment_sequence, restamp};
use crate::config::{Acks, ProducerConfig};
use crate::connection::{Connection, ReplyReceiver};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::partitioner::Rng;
use crate::producer::Shared;
use crate::producer::accumulator::{Drained, OpenBatch, request_cost};
use crate::producer::delivery::Completion;
use crate::routes::{NodeId, Routes};

/// The producer's identity on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

impl Identity {
    pub(crate) const NONE: Identity = Identity {
        producer_id: -1,
        epoch: -1,
    };
}

/// A finished batch: sent, in flight, or waiting to be resent.
#[derive(Debug)]
struct SentBatch {
    part: usize,
    topic: Arc<str>,
    partition: i32,
    bytes: Bytes,
    records: i32,
    base_seq: i32,
    /// Position in the partition's send order (sequences wrap; this does not).
    number: u64,
    id: u64,
    completion: Arc<Completion>,
    created: Instant,
    /// The batch's delivery time (ms since the Unix epoch), 0 for not delayed: sent with every
    /// attempt.
    deliver_at: i64,
    /// Whether an attempt may have been appended although no success was seen (its response
    /// was lost, or timed out). Such a batch must be resent with the same sequence and epoch.
    maybe_appended: bool,
    _permit: OwnedSemaphorePermit,
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The broker refused it without appending.
    NotAppended,
    /// No answer (connection lost, timeout): it may have been appended.
    Unknown,
    /// `OUT_OF_ORDER_SEQUENCE`: not appended, an earlier sequence is missing.
    OutOfOrder,
}

#[derive(Debug)]
enum Failed {
    Retry(SentBatch, Cause),
    Dropped {
        number: u64,
        seq: i32,
        maybe_appended: bool,
    },
}

impl Failed {
    fn number(&self) -> u64 {
        match self {
            Failed::Retry(b, _) => b.number,
            Failed::Dropped { number, .. } => *number,
        }
    }
}

/// The sender's view of one partition.
#[derive(Debug, Default)]
struct PartState {
    topic: Option<Arc<str>>,
    partition: i32,
    /// The broker this partition's batches go to; `None` while its leader is unknown.
    leader: Option<NodeId>,
    /// The routes' version `leader` was taken from (`None`: never).
    routed_at: Option<u64>,
    next_seq: i32,
    next_number: u64,
    /// Batches of this partition in flight.
    inflight: usize,
    /// An in-flight batch failed: send nothing until every in-flight one is answered.
    recovering: bool,
    /// What failed in the current round.
    failed: Vec<Failed>,
    /// Batches to send again, in order, before any new one.
    resend: VecDeque<SentBatch>,
    /// No sending before this.
    backoff_until: Option<Instant>,
    /// Consecutive failed rounds, for the backoff.
    attempts: u32,
    /// The broker's sequence state for this partition is unknown: wait for a new epoch.
    desynced: bool,
    /// `UNKNOWN_PRODUCER_ID`: start this partition's sequences at 0 again.
    reset_to_zero: bool,
}

impl PartState {
    fn blocked(&self, now: Instant) -> bool {
        self.recovering
            || self.desynced
            || self.leader.is_none()
            || self.backoff_until.is_some_and(|t| now < t)
    }

    /// Whether this partition may send now to broker `to`.
    fn sendable_to(&self, to: NodeId, now: Instant) -> bool {
        self.leader == Some(to) && !self.blocked(now)
    }

    fn is_idle(&self) -> bool {
        self.inflight == 0 && !self.recovering && self.failed.is_empty() && self.resend.is_empty()
    }
}

struct InflightRequest {
    rx: ReplyReceiver,
    batches: Vec<SentBatch>,
    deadline: Instant,
}

/// One broker the sender talks to.
#[derive(Default)]
struct Peer {
    conn: Option<Arc<Connection>>,
    /// A connection being opened in the background.
    connecting: Option<tokio::sync::oneshot::Receiver<Result<Arc<Connection>>>>,
    failures: u32,
    next_connect: Option<Instant>,
    inflight: VecDeque<InflightRequest>,
}

/// The background task; see the module docs.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    config: Arc<ProducerConfig>,
    control: Arc<Control>,
    routes: Arc<Routes>,
    /// When a topic without a known leader may be looked up again.
    lookups: HashMap<Arc<str>, Instant>,
    idempotent: bool,
    peers: HashMap<NodeId, Peer>,
    identity: Identity,
    parts: Vec<PartState>,
    compressor: Compressor,
    needs_bump: bool,
    bump_failures: u32,
    next_bump: Instant,
    next_refresh: Instant,
    rng: Rng,
}

impl Sender {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: Arc<ProducerConfig>,
        control: Arc<Control>,
        identity: Identity,
    ) -> Result<Self> {
        let now = Instant::now();
        Ok(Self {
            compressor: Compressor::new(config.compression)?,
            idempotent: config.is_idempotent(),
            next_refresh: now + config.metadata_max_age,
            shared,
            config,
            routes: control.routes().clone(),
            lookups: HashMap::new(),
            control,
            peers: HashMap::new(),
            identity,
            parts: Vec::new(),
            needs_bump: false,
            bump_failures: 0,
            next_bump: now,
            rng: Rng::new(),
        })
    }

    /// Runs until the producer is closed and everything is delivered or failed.
    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
            if let Some(err) = self.shared.fatal_error() {
                self.fail_everything(&err);
                break;
            }
            if self.shared.aborted.load(Ordering::Acquire) {
                self.fail_everything(&Error::Closed);
                break;
            }
            self.grow_parts();
            self.check_connections();
            self.expire_queued(now);
            self.settle_all(now);
            if self.shared.closing.load(Ordering::Acquire) && self.is_idle() {
                break;
            }
            self.refresh_metadata(now);
            self.route_parts(now);
            self.connect(now);
            if self.needs_bump && self.bump_ready() && now >= self.next_bump {
                self.bump().await;
                continue;
            }
            self.send_ready(now).await;
            let deadline = self.next_deadline(now);
            let reply = {
                let peers = &mut self.peers;
                let wake = &self.shared.wake;
                tokio::select! {
                    r = poll_fn(|cx| {
                        for (id, peer) in peers.iter_mut() {
                            if let Some(f) = peer.inflight.front_mut()
                                && let Poll::Ready(r) = std::pin::Pin::new(&mut f.rx).poll(cx)
                            {
                                return Poll::Ready((*id, r));
                            }
                        }
                        Poll::Pending
                    }) => Some(r),
                    _ = wake.notified() => None,
                    _ = tokio::time::sleep_until(deadline) => None,
                }
            };
            if let Some((id, reply)) = reply {
                self.on_reply(id, reply);
            }
            let now = Instant::now();
            let wait = self.request_wait();
            for peer in self.peers.values() {
                if let Some(front) = peer.inflight.front()
                    && now >= front.deadline
                    && let Some(conn) = &peer.conn
                {
                    conn.close(format!("no produce response within {wait:?}"));
                }
            }
        }
        self.shared.stopped.send_replace(true);
    }

    fn request_wait(&self) -> Duration {
        // The broker gets request_timeout to acknowledge; allow a little more for the trip.
        self.config.client.request_timeout + Duration::from_secs(5)
    }

    fn grow_parts(&mut self) {
        let acc = self.shared.lock_acc();
        let n = acc.part_count();
        while self.parts.len() < n {
            let mut p = PartState::default();
            if let Some(q) = acc.part(self.parts.len()) {
                p.topic = Some(q.topic.clone());
                p.partition = q.partition;
            }
            // A new partition needs its leader (`routed_at` is `None`).
            self.parts.push(p);
        }
    }

    /// Takes each partition's leader from the routes when they changed since it last did; a
    /// partition with batches in flight keeps its broker until they are answered, and takes
    /// the routes up then (a change seen while it waited is not missed: a partition kept on a
    /// dead broker whose routes were forgotten meanwhile would never be looked up again).
    /// Topics with a partition whose leader is unknown are looked up (at most once per
    /// `retry_backoff`).
    fn route_parts(&mut self, now: Instant) {
        let version = self.routes.version();
        let mut unknown: Vec<Arc<str>> = Vec::new();
        for p in &mut self.parts {
            let Some(topic) = &p.topic else {
                continue;
            };
            if p.routed_at != Some(version) && p.inflight == 0 {
                let leader = self.routes.leader(topic, p.partition);
                if let Some((id, _)) = &leader {
                    self.peers.entry(*id).or_default();
                }
                p.leader = leader.map(|(id, _)| id);
                p.routed_at = Some(version);
            }
            if p.leader.is_none() && !unknown.contains(topic) {
                unknown.push(topic.clone());
            }
        }
        for topic in unknown {
            if self.lookups.get(&topic).is_none_or(|t| now >= *t) {
                self.lookups
                    .insert(topic.clone(), now + self.config.retry_backoff);
                self.spawn_refresh(topic);
            }
        }
    }

    /// Whether any partition routed to `id` has something to send or resend.
    fn peer_has_work(&self, id: NodeId) -> bool {
        let routed: Vec<usize> = (0..self.parts.len())
            .filter(|i| self.parts[*i].leader == Some(id))
            .collect();
        if routed.is_empty() {
            return false;
        }
        routed.iter().any(|i| !self.parts[*i].resend.is_empty())
            || self
                .shared
                .lock_acc()
                .has_data(|part| routed.contains(&part))
    }

    fn inflight_requests(&self) -> usize {
        self.peers.values().map(|p| p.inflight.len()).sum()
    }

    fn is_idle(&self) -> bool {
        self.inflight_requests() == 0
            && self.parts.iter().all(PartState::is_idle)
            && self.shared.lock_acc().is_empty()
    }

    /// When a connection broke, everything in flight on it failed: handle that now, before a
    /// new connection can carry a later batch of the same partitions. Also takes connections
    /// that finished opening.
    fn check_connections(&mut self) {
        let mut lost: Vec<InflightRequest> = Vec::new();
        let mut failed: Vec<NodeId> = Vec::new();
        for (id, peer) in &mut self.peers {
            if let Some(rx) = &mut peer.connecting {
                match rx.try_recv() {
                    Ok(Ok(c)) => {
                        peer.connecting = None;
                        peer.failures = 0;
                        peer.conn = Some(c);
                    }
                    Ok(Err(e)) => {
                        peer.connecting = None;
                        peer.failures += 1;
                        let wait = backoff(
                            self.config.client.reconnect_backoff,
                            self.config.client.reconnect_backoff_max,
                            peer.failures,
                            &mut self.rng,
                        );
                        tracing::debug!(broker = id, error = %e, ?wait, "produce connection failed; retrying");
                        peer.next_connect = Some(Instant::now() + wait);
                        failed.push(*id);
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        peer.connecting = None;
                    }
                }
            }
            if peer.conn.as_ref().is_some_and(|c| !c.is_alive()) {
                let err = peer.conn.as_ref().map_or(Error::Closed, |c| c.dead_error());
                tracing::debug!(broker = id, error = %err, in_flight = peer.inflight.len(), "produce connection lost");
                peer.conn = None;
                peer.next_connect = None;
                lost.extend(peer.inflight.drain(..));
                failed.push(*id);
            }
        }
        for req in lost {
            for b in req.batches {
                self.retry(b, Cause::Unknown);
            }
        }
        // The broker may be gone for good: ask where its partitions went.
        for id in failed {
            let topics: Vec<Arc<str>> = self
                .parts
                .iter()
                .filter(|p| p.leader == Some(id))
                .filter_map(|p| p.topic.clone())
                .collect();
            for t in topics {
                self.routes.forget(&t);
            }
        }
    }

    /// Starts opening connections to the brokers that have work and none, in the background
    /// (a broker that does not answer must not hold up the others).
    fn connect(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.conn.is_none()
                    && p.connecting.is_none()
                    && p.next_connect.is_none_or(|t| now >= t)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if !self.peer_has_work(id) {
                continue;
            }
            let Some(addr) = self.routes.broker(id) else {
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let config = self.config.client.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _ = tx.send(Connection::connect(&addr, &config).await);
                shared.wake.notify_one();
            });
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.connecting = Some(rx);
            }
        }
    }

    fn refresh_metadata(&mut self, now: Instant) {
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + self.config.metadata_max_age;
        let topics = self.shared.lock_acc().topics();
        for t in topics {
            self.spawn_refresh(t);
        }
    }

    /// Looks the topic's partition count and leaders up again, in the background.
    fn spawn_refresh(&self, topic: Arc<str>) {
        let control = self.control.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match control.partition_count(&topic, true).await {
                Ok(Some(n)) => shared.lock_acc().set_partitions(&topic, n),
                Ok(None) => tracing::debug!(%topic, "topic unknown on refresh"),
                Err(e) => tracing::debug!(%topic, error = %e, "metadata refresh failed"),
            }
            shared.wake.notify_one();
        });
    }

    fn stamp(&self, seq: i32) -> ProducerStamp {
        if self.idempotent {
            ProducerStamp {
                producer_id: self.identity.producer_id,
                epoch: self.identity.epoch,
                base_sequence: seq,
            }
        } else {
            ProducerStamp::NONE
        }
    }

    /// Fails batches that waited in the accumulator longer than `delivery_timeout` without
    /// being sent (no sequence was given to them, so nothing else changes).
    fn expire_queued(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.config.delivery_timeout) else {
            return;
        };
        let mut expired = Vec::new();
        self.shared.lock_acc().expire(cutoff, &mut expired);
        for b in expired {
            self.shared.finish(
                b.id,
                &b.completion,
                Err(Error::DeliveryTimeout(self.config.delivery_timeout)),
            );
        }
    }

    fn fail_everything(&mut self, err: &Error) {
        let mut queued = Vec::new();
        {
            let mut acc = self.shared.lock_acc();
            acc.close();
            acc.take_all(&mut queued);
        }
        for b in queued {
            self.shared.finish(b.id, &b.completion, Err(err.clone()));
        }
        let mut batches = Vec::new();
        for peer in self.peers.values_mut() {
            for req in peer.inflight.drain(..) {
                batches.extend(req.batches);
            }
        }
        for p in &mut self.parts {
            batches.extend(p.resend.drain(..));
            for f in p.failed.drain(..) {
                if let Failed::Retry(b, _) = f {
                    batches.push(b);
                }
            }
        }
        for b in batches {
            self.shared.finish(b.id, &b.completion, Err(err.clone()));
        }
        self.shared.memory.close();
    }

    /// Finishes partitions whose failed round is over (nothing of them in flight): decides what
    /// is resent, with which sequences, after which backoff. Also expires resend batches.
    fn settle_all(&mut self, now: Instant) {
        for part in 0..self.parts.len() {
            let p = &self.parts[part];
            if p.inflight > 0 {
                continue;
            }
            let expired = p
                .resend
                .iter()
                .any(|b| now >= b.created + self.config.delivery_timeout);
            if p.recovering || !p.failed.is_empty() || expired {
                self.settle(part, now);
            }
        }
    }

    fn settle(&mut self, part: usize, now: Instant) {
        let timeout = self.config.delivery_timeout;
        let idempotent = self.idempotent;
        let p = &mut self.parts[part];
        let mut items: Vec<Failed> = p.failed.drain(..).collect();
        items.extend(
            p.resend
                .drain(..)
                .map(|b| Failed::Retry(b, Cause::NotAppended)),
        );
        items.sort_by_key(Failed::number);
        p.recovering = false;
        // Out of time: fail them; they become gaps.
        let mut finished: Vec<(SentBatch, Error)> = Vec::new();
        let mut kept: Vec<Failed> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Failed::Retry(b, _) if now >= b.created + timeout => {
                    kept.push(Failed::Dropped {
                        number: b.number,
                        seq: b.base_seq,
                        maybe_appended: b.maybe_appended,
                    });
                    finished.push((b, Error::DeliveryTimeout(timeout)));
                }
                other => kept.push(other),
            }
        }
        let mut resend: VecDeque<SentBatch> = VecDeque::new();
        let mut renumber_from: Option<i32> = None;
        if idempotent {
            let unexplained = matches!(kept.first(), Some(Failed::Retry(_, Cause::OutOfOrder)));
            let uncertain_gap = kept.iter().any(|f| {
                matches!(
                    f,
                    Failed::Dropped {
                        maybe_appended: true,
                        ..
                    }
                )
            });
            if p.reset_to_zero {
                p.reset_to_zero = false;
                renumber_from = Some(0);
            } else if unexplained || uncertain_gap {
                // What the broker holds for this partition is unknown: a new epoch is needed,
                // and a batch that may have been appended cannot be sent under it (it could be
                // written twice): it fails.
                tracing::warn!(
                    part,
                    unexplained,
                    uncertain_gap,
                    "sequence state lost; bumping the producer epoch"
                );
                p.desynced = true;
                self.needs_bump = true;
            }
        }
        let desynced = p.desynced;
        for item in kept {
            match item {
                Failed::Dropped { seq, .. } => {
                    if renumber_from.is_none() && idempotent && !desynced {
                        renumber_from = Some(seq);
                    }
                }
                Failed::Retry(b, _) if desynced && b.maybe_appended => {
                    finished.push((b, Error::DeliveryTimeout(timeout)));
                }
                Failed::Retry(mut b, _) => {
                    if !desynced && let Some(seq) = renumber_from {
                        b.base_seq = seq;
                        renumber_from = Some(increment_sequence(seq, b.records));
                        b.bytes = restamp(
                            &b.bytes,
                            ProducerStamp {
                                producer_id: self.identity.producer_id,
                                epoch: self.identity.epoch,
                                base_sequence: seq,
                            },
                        );
                        b.maybe_appended = false;
                    }
                    resend.push_back(b);
                }
            }
        }
        let p = &mut self.parts[part];
        if let Some(next) = renumber_from
            && !desynced
        {
            p.next_seq = next;
        }
        if resend.is_empty() {
            p.attempts = 0;
            p.backoff_until = None;
        } else {
            p.attempts += 1;
            p.backoff_until = Some(
                now + backoff(
                    self.config.retry_backoff,
                    self.config.retry_backoff_max,
                    p.attempts,
                    &mut self.rng,
                ),
            );
        }
        p.resend = resend;
        for (b, e) in finished {
            self.shared.finish(b.id, &b.completion, Err(e));
        }
    }

    /// A new epoch can be asked for once nothing is in flight and every partition that still
    /// knows its state has resent what it had to.
    fn bump_ready(&self) -> bool {
        self.inflight_requests() == 0
            && self.parts.iter().all(|p| {
                p.inflight == 0
                    && !p.recovering
                    && p.failed.is_empty()
                    && (p.resend.is_empty() || p.desynced)
            })
    }

    async fn bump(&mut self) {
        let conn = match self.control.connection().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no connection for a new producer epoch");
                self.bump_failed();
                return;
            }
        };
        let attempts = [
            (self.identity.producer_id, i32::from(self.identity.epoch)),
            (-1, -1),
        ];
        let mut last_err = None;
        for (producer_id, producer_epoch) in attempts {
            match init_producer_id(&conn, producer_id, producer_epoch).await {
                Ok(identity) => {
                    tracing::info!(
                        producer_id = identity.producer_id,
                        producer_epoch = identity.epoch,
                        "new producer epoch"
                    );
                    self.identity = identity;
                    self.needs_bump = false;
                    self.bump_failures = 0;
                    for part in 0..self.parts.len() {
                        self.restart_sequences(part);
                    }
                    return;
                }
                Err(e @ Error::ProducerFenced { .. }) => {
                    self.shared.set_fatal(e);
                    return;
                }
                Err(e) if e.is_retriable() => {
                    last_err = Some(e);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        self.bump_failed();
        if let Some(e) = last_err {
            tracing::warn!(error = %e, "could not get a new producer epoch; retrying");
        }
    }

    /// A new epoch could not be had: try again after a backoff.
    fn bump_failed(&mut self) {
        self.bump_failures += 1;
        self.next_bump = Instant::now()
            + backoff(
                self.config.retry_backoff,
                self.config.retry_backoff_max,
                self.bump_failures,
                &mut self.rng,
            );
    }

    /// After a new epoch: sequences start at 0; batches waiting to be resent get new ones.
    fn restart_sequences(&mut self, part: usize) {
        let identity = self.identity;
        let p = &mut self.parts[part];
        p.desynced = false;
        let mut seq = 0;
        for b in &mut p.resend {
            b.base_seq = seq;
            b.bytes = restamp(
                &b.bytes,
                ProducerStamp {
                    producer_id: identity.producer_id,
                    epoch: identity.epoch,
                    base_sequence: seq,
                },
            );
            b.maybe_appended = false;
            seq = increment_sequence(seq, b.records);
        }
        p.next_seq = seq;
    }

    /// Builds and sends requests to every connected broker while its in-flight limit allows.
    async fn send_ready(&mut self, now: Instant) {
        let ready: Vec<(NodeId, Arc<Connection>)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.conn.clone().map(|c| (*id, c)))
            .collect();
        for (id, conn) in ready {
            self.send_ready_to(id, &conn, now).await;
        }
    }

    async fn send_ready_to(&mut self, to: NodeId, conn: &Arc<Connection>, now: Instant) {
        let force = self.shared.forcing();
        let limit = conn.max_frame_bytes().saturating_sub(4096).max(1024);
        let inflight = |s: &Self| s.peers.get(&to).map_or(0, |p| p.inflight.len());
        while inflight(self) < self.config.max_in_flight && conn.is_alive() {
            let mut batches: Vec<SentBatch> = Vec::new();
            let mut size = 0usize;
            // Resends first: they are older than anything in the accumulator.
            for p in &mut self.parts {
                if !p.sendable_to(to, now) {
                    continue;
                }
                let Some(front) = p.resend.front() else {
                    continue;
                };
                let cost = request_cost(&front.topic, front.bytes.len(), front.deliver_at);
                if size + cost > limit && !batches.is_empty() {
                    continue;
                }
                if let Some(b) = p.resend.pop_front() {
                    size += cost;
                    batches.push(b);
                }
            }
            let mut drained: Vec<Drained> = Vec::new();
            if !self.needs_bump && size < limit {
                let parts = &self.parts;
                let taken_resend: Vec<usize> = batches.iter().map(|b| b.part).collect();
                self.shared.lock_acc().drain(
                    now,
                    self.config.linger,
                    force,
                    // Compressed batches are smaller; uncompressed size is the bound used.
                    limit - size,
                    |part| {
                        parts
                            .get(part)
                            .is_some_and(|p| p.sendable_to(to, now) && p.resend.is_empty())
                            && !taken_resend.contains(&part)
                    },
                    &mut drained,
                );
            }
            for d in drained {
                match self.finish_batch(d) {
                    Ok(b) => batches.push(b),
                    Err((id, completion, e)) => self.shared.finish(id, &completion, Err(e)),
                }
            }
            if batches.is_empty() {
                break;
            }
            self.send_request(to, conn, batches).await;
        }
    }

    /// Gives a drained batch its sequence and finishes (compresses, CRCs) it.
    fn finish_batch(
        &mut self,
        d: Drained,
    ) -> std::result::Result<SentBatch, (u64, Arc<Completion>, Error)> {
        let OpenBatch {
            id,
            builder,
            completion,
            created,
            deliver_at,
            permit,
        } = d.batch;
        let (topic, partition) = {
            let acc = self.shared.lock_acc();
            match acc.part(d.part) {
                Some(q) => (q.topic.clone(), q.partition),
                None => return Err((id, completion, Error::Closed)),
            }
        };
        let records = i32::try_from(builder.len()).unwrap_or(i32::MAX);
        while self.parts.len() <= d.part {
            self.parts.push(PartState::default());
        }
        let seq = self.parts[d.part].next_seq;
        let bytes = match self.compressor.finish(builder, self.stamp(seq)) {
            Ok(b) => b,
            Err(e) => return Err((id, completion, e)),
        };
        let p = &mut self.parts[d.part];
        if self.idempotent {
            p.next_seq = increment_sequence(seq, records);
        }
        let number = p.next_number;
        p.next_number += 1;
        Ok(SentBatch {
            part: d.part,
            topic,
            partition,
            bytes,
            records,
            base_seq: seq,
            number,
            id,
            completion,
            created,
            deliver_at,
            maybe_appended: false,
            _permit: permit,
        })
    }

    async fn send_request(&mut self, to: NodeId, conn: &Arc<Connection>, batches: Vec<SentBatch>) {
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for b in &batches {
            let data = PartitionProduceData {
                partition: b.partition,
                records: b.bytes.clone(),
                deliver_at_ms: deliver_at_ms(&[b.deliver_at]),
            };
            match topics.iter_mut().find(|t| *t.name == *b.topic) {
                Some(t) => t.partitions.push(data),
                None => topics.push(TopicProduceData {
                    name: b.topic.to_string(),
                    partitions: vec![data],
                }),
            }
        }
        let acks = match self.config.acks {
            Acks::None => WireAcks::None,
            Acks::Leader => WireAcks::Leader,
            Acks::Durable => WireAcks::Durable,
            Acks::All => WireAcks::All,
        };
        let timeout_ms =
            u32::try_from(self.config.client.request_timeout.as_millis()).unwrap_or(u32::MAX);
        let request = ProduceRequest {
            acks: acks as i32,
            timeout_ms,
            topics,
        };
        for b in &batches {
            self.parts[b.part].inflight += 1;
        }
        match conn.start(request, self.config.acks != Acks::None).await {
            Ok(rx) => {
                let deadline = Instant::now() + self.request_wait();
                self.peers
                    .entry(to)
                    .or_default()
                    .inflight
                    .push_back(InflightRequest {
                        rx,
                        batches,
                        deadline,
                    });
            }
            Err(e @ Error::TooLarge { .. }) if batches.len() == 1 => {
                // A single batch above the broker's frame limit: it can never be sent.
                for b in batches {
                    self.drop_batch(b, false, e.clone());
                }
            }
            Err(e @ Error::TooLarge { .. }) => {
                // Requests are packed with an upper bound of their size, so this is a bug;
                // each batch on its own may still fit, so retry them (not appended).
                tracing::error!(error = %e, batches = batches.len(), "produce request packed above the frame limit");
                for b in batches {
                    self.retry(b, Cause::NotAppended);
                }
            }
            Err(_) => {
                for b in batches {
                    self.retry(b, Cause::NotAppended);
                }
            }
        }
    }

    fn on_reply(
        &mut self,
        from: NodeId,
        reply: std::result::Result<
            crate::connection::Reply,
            tokio::sync::oneshot::error::RecvError,
        >,
    ) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(req) = peer.inflight.pop_front() else {
            return;
        };
        let conn = peer.conn.clone();
        let response = match reply {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => {
                // ACKS_NONE: written is all we will know.
                for b in req.batches {
                    self.success(b, -1);
                }
                return;
            }
            Ok(Err(_)) | Err(_) => {
                if let Some(c) = &conn {
                    c.close("produce request failed");
                }
                for b in req.batches {
                    self.retry(b, Cause::Unknown);
                }
                return;
            }
        };
        let body = match conn.as_ref().map(|c| c.body_of(response, ApiKey::Produce)) {
            Some(Ok(response::Body::Produce(body))) => body,
            Some(Err(Error::Broker { code, message })) => {
                for b in req.batches {
                    self.on_result(b, code, message.clone(), -1);
                }
                return;
            }
            _ => {
                if let Some(c) = &conn {
                    c.close("malformed produce response");
                }
                for b in req.batches {
                    self.retry(b, Cause::Unknown);
                }
                return;
            }
        };
        let mut results: HashMap<(&str, i32), (ErrorCode, Option<String>, i64)> = HashMap::new();
        for t in &body.topics {
            for p in &t.partitions {
                results.insert(
                    (t.name.as_str(), p.partition),
                    (p.error_code(), p.error_message.clone(), p.base_offset),
                );
            }
        }
        let mut outcomes = Vec::with_capacity(req.batches.len());
        for b in &req.batches {
            outcomes.push(results.get(&(&*b.topic, b.partition)).cloned());
        }
        for (b, outcome) in req.batches.into_iter().zip(outcomes) {
            match outcome {
                Some((code, message, base_offset)) => self.on_result(b, code, message, base_offset),
                None => self.retry(b, Cause::Unknown),
            }
        }
    }

    fn on_result(
        &mut self,
        b: SentBatch,
        code: ErrorCode,
        message: Option<String>,
        base_offset: i64,
    ) {
        match code {
            ErrorCode::None | ErrorCode::DuplicateSequence => self.success(b, base_offset),
            ErrorCode::ProducerFenced => {
                let e = Error::ProducerFenced {
                    producer_id: self.identity.producer_id,
                };
                self.shared.set_fatal(e.clone());
                self.drop_batch(b, false, e);
            }
            ErrorCode::OutOfOrderSequence if self.idempotent => self.retry(b, Cause::OutOfOrder),
            ErrorCode::UnknownProducerId if self.idempotent => {
                self.parts[b.part].reset_to_zero = true;
                self.retry(b, Cause::NotAppended);
            }
            ErrorCode::UnknownTopicOrPartition
            | ErrorCode::NotLeaderOrFollower
            | ErrorCode::LeaderNotAvailable => {
                // The leader moved (or the topic is new to this broker): look it up again.
                self.routes.forget(&b.topic);
                self.retry(b, Cause::NotAppended);
            }
            ErrorCode::RequestTimedOut | ErrorCode::StorageError => {
                self.retry(b, Cause::Unknown);
            }
            c if c.is_retriable() => self.retry(b, Cause::NotAppended),
            ErrorCode::UnknownServerError => {
                self.drop_batch(b, true, Error::Broker { code, message });
            }
            _ => self.drop_batch(b, false, Error::Broker { code, message }),
        }
    }

    fn success(&mut self, b: SentBatch, base_offset: i64) {
        let p = &mut self.parts[b.part];
        p.inflight = p.inflight.saturating_sub(1);
        if !p.recovering {
            p.attempts = 0;
        }
        self.shared.finish(b.id, &b.completion, Ok(base_offset));
    }

    fn retry(&mut self, mut b: SentBatch, cause: Cause) {
        match cause {
            Cause::Unknown => b.maybe_appended = true,
            Cause::OutOfOrder => b.maybe_appended = false,
            Cause::NotAppended => {}
        }
        let p = &mut self.parts[b.part];
        p.inflight = p.inflight.saturating_sub(1);
        p.recovering = true;
        p.failed.push(Failed::Retry(b, cause));
    }

    fn drop_batch(&mut self, b: SentBatch, maybe_appended: bool, err: Error) {
        let p = &mut self.parts[b.part];
        p.inflight = p.inflight.saturating_sub(1);
        p.recovering = true;
        // A refusal such as MESSAGE_TOO_LARGE depends only on the batch's bytes, which every
        // attempt shares: no earlier attempt was appended either. Only an error that leaves
        // the outcome open (`maybe_appended`) makes the gap uncertain.
        p.failed.push(Failed::Dropped {
            number: b.number,
            seq: b.base_seq,
            maybe_appended,
        });
        self.shared.finish(b.id, &b.completion, Err(err));
    }

    /// The next moment something is due: a batch lingered enough, a backoff ends, a request
    /// or delivery deadline passes, a reconnect or metadata refresh is due.
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = now + Duration::from_secs(1);
        let peers = &self.peers;
        let max_in_flight = self.config.max_in_flight;
        let can_send = |p: &PartState| {
            !self.needs_bump
                && p.leader
                    .and_then(|id| peers.get(&id))
                    .is_some_and(|peer| peer.conn.is_some() && peer.inflight.len() < max_in_flight)
        };
        let linger = if self.shared.forcing() {
            Duration::ZERO
        } else {
            self.config.linger
        };
        let (ready, oldest) = self.shared.lock_acc().deadlines(linger, |part| {
            self.parts
                .get(part)
                .is_some_and(|p| can_send(p) && !p.blocked(now) && p.resend.is_empty())
        });
        if let Some(r) = ready {
            at = at.min(r.max(now));
        }
        if let Some(o) = oldest {
            at = at.min(o + self.config.delivery_timeout);
        }
        for p in &self.parts {
            if let Some(t) = p.backoff_until
                && t > now
            {
                at = at.min(t);
            }
            if let Some(b) = p.resend.front() {
                at = at.min(b.created + self.config.delivery_timeout);
            }
        }
        for peer in self.peers.values() {
            if let Some(f) = peer.inflight.front() {
                at = at.min(f.deadline);
            }
            if peer.conn.is_none()
                && peer.connecting.is_none()
                && let Some(t) = peer.next_connect
            {
                at = at.min(t);
            }
        }
        if let Some(t) = self.lookups.values().min() {
            // A topic whose leader is unknown is looked up again then.
            if self
                .parts
                .iter()
                .any(|p| p.leader.is_none() && p.topic.is_some())
            {
                at = at.min(*t);
            }
        }
        if self.needs_bump && self.bump_ready() {
            at = at.min(self.next_bump);
        }
        at = at.min(self.next_refresh);
        // Never spin: at least a millisecond when something is due now but cannot go out.
        at.max(now + Duration::from_micros(200))
    }
}

/// A partition's `deliver_at_ms` for the batches in its `records`, in order, given each batch's
/// delivery time (0 for not delayed): one entry per batch, or none at all when no batch is
/// delayed, so undelayed data sends nothing extra (and allocates nothing). The sender puts one
/// batch per partition in a request; the rule holds for any number.
pub(crate) fn deliver_at_ms(batches: &[i64]) -> Vec<i64> {
    if batches.iter().all(|&t| t <= 0) {
        Vec::new()
    } else {
        batches.iter().map(|&t| t.max(0)).collect()
    }
}

/// Asks for a producer id and epoch: a new producer sends -1 and -1; a producer bumping its
/// epoch sends its current ones.
pub(crate) async fn init_producer_id(
    conn: &Connection,
    producer_id: i64,
    producer_epoch: i32,
) -> Result<Identity> {
    let body = conn
        .request(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 0,
            producer_id,
            producer_epoch,
        })
        .await?;
    let response::Body::InitProducerId(r) = body else {
        return Err(Error::Protocol {
            addr: conn.addr().to_string(),
            reason: "InitProducerId answered with another API's body".into(),
        });
    };
    match r.error_code() {
        ErrorCode::None => Ok(Identity {
            producer_id: r.producer_id,
            epoch: i16::try_from(r.producer_epoch).map_err(|_| Error::Protocol {
                addr: conn.addr().to_string(),
                reason: format!("producer epoch {} out of range", r.producer_epoch),
            })?,
        }),
        ErrorCode::ProducerFenced => Err(Error::ProducerFenced { producer_id }),
        code => Err(Error::Broker {
            code,
            message: r.error_message,
        }),
    }
}
