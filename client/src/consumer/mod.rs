//! The consumer: partitions assigned by the application ([`Consumer::assign`]) or by a group
//! coordinator ([`Consumer::subscribe`]), `poll`, `seek`, and committed offsets.
//!
//! - `fetcher`: the background task that fetches ahead of the application, bounded in memory;
//! - `group`: group membership (the heartbeat task), ordered commits (the committer task), the
//!   [`RebalanceListener`] callbacks;
//! - this module: [`Consumer`], which owns the positions (the next offset `poll` returns per
//!   partition), turns fetched batches into [`ConsumerRecord`]s in offset order per partition,
//!   runs seeks (ListOffsets on the control connection, so a seek never waits behind a
//!   long-poll fetch), and, in a group, applies assignment changes inside `poll`.
//!
//! Tasks: the fetcher, plus a reader and a writer task for each of the fetch and control
//! connections; a subscribed consumer adds the heartbeat task (with its own connection) and
//! the committer task (on the control connection). A fetch returns whole batches; records
//! below the position are skipped.
//!
//! **Delivery in a group is at-least-once.** Positions advance only past records `poll`
//! returned; commits (auto or explicit) store positions; a partition's next owner starts at its
//! committed offset. Records are read twice only when a member returned them but did not commit
//! them before it lost its partitions without giving them up (it crashed or was cut off for a
//! whole session timeout, or the broker restarted), or when a commit failed. A partition given
//! up in a rebalance or by `close` is committed first (with auto-commit on, or by the
//! application in [`RebalanceListener::on_partitions_revoked`]), so no record is read twice then.

mod fetcher;
pub(crate) mod group;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::batch::Records;
use strom_protocol::topic::validate_topic_name;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::{OffsetSpec, list_offsets_routed};
use crate::config::{AutoOffsetReset, ConsumerConfig};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::record::{ConsumerRecord, TopicPartition};
use fetcher::{Chunk, ChunkKind, FetchShared, Fetcher, PartFetch};
pub use group::{CommitHandle, GroupMetadata, ListenerFuture, RebalanceListener};
use group::{CommitJob, GroupShared};

#[derive(Debug, Clone, Copy)]
struct Position {
    offset: Option<i64>,
    epoch: u32,
}

/// A data chunk being handed out by `poll`.
#[derive(Debug)]
struct Current {
    tp: TopicPartition,
    epoch: u32,
    batches: VecDeque<Bytes>,
    records: Option<Records>,
    next_offset: i64,
}

/// Reads records from assigned partitions, fetching ahead in the background.
///
/// ```no_run
/// use std::time::Duration;
/// use strom_client::{Consumer, ConsumerConfig};
///
/// # async fn run() -> Result<(), strom_client::Error> {
/// let mut consumer = Consumer::connect(ConsumerConfig::new("127.0.0.1:9494")).await?;
/// let partitions = consumer.partition_count("orders").await?;
/// let assignment: Vec<(&str, i32)> = (0..partitions).map(|p| ("orders", p)).collect();
/// consumer.assign(&assignment);
/// consumer.seek_to_beginning(&[]).await?;
/// loop {
///     let records = consumer.poll(Duration::from_secs(1)).await?;
///     if records.is_empty() {
///         break;
///     }
///     for r in records {
///         println!("{}-{}@{} {:?}", r.topic(), r.partition(), r.offset(), r.value());
///     }
/// }
/// # Ok(()) }
/// ```
///
/// In a group ([`Consumer::subscribe`]), the coordinator assigns the partitions:
///
/// ```no_run
/// use std::time::Duration;
/// use strom_client::{AutoOffsetReset, Consumer, ConsumerConfig, GroupConfig};
///
/// # async fn run() -> Result<(), strom_client::Error> {
/// let mut consumer = Consumer::connect(ConsumerConfig {
///     group: GroupConfig {
///         auto_offset_reset: AutoOffsetReset::Earliest,
///         ..GroupConfig::default()
///     },
///     ..ConsumerConfig::new("127.0.0.1:9494")
/// })
/// .await?;
/// consumer.subscribe("billing", &["orders"])?;
/// for _ in 0..100 {
///     for r in consumer.poll(Duration::from_secs(1)).await? {
///         println!("{}-{}@{}", r.topic(), r.partition(), r.offset());
///     }
/// }
/// // Commits what poll returned and leaves: the partitions move to the others at once.
/// consumer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer {
    config: Arc<ConsumerConfig>,
    control: Arc<Control>,
    shared: Arc<FetchShared>,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    positions: HashMap<TopicPartition, Position>,
    current: Option<Current>,
    /// An error met while records were already collected; returned by the next `poll`.
    pending_error: Option<Error>,
    /// The last epoch handed out: every assignment and seek gets a new one, so chunks fetched
    /// for an earlier position are recognised and dropped.
    epoch: u32,
    task: JoinHandle<()>,
    runtime: tokio::runtime::Handle,
    /// The reset policy in force: `auto_offset_reset`, or the group's once subscribed.
    reset: AutoOffsetReset,
    group: Option<Group>,
    /// Behind a mutex only so that `Consumer` is `Sync` without asking it of listeners; it is
    /// reached through `&mut self` (`get_mut`), never locked across an await.
    listener: std::sync::Mutex<Option<Listener>>,
}

/// A subscribed consumer's side of its membership (the rest is in [`GroupShared`]).
#[derive(Debug)]
struct Group {
    shared: Arc<GroupShared>,
    jobs: mpsc::UnboundedSender<CommitJob>,
    heartbeat: JoinHandle<()>,
    committer: JoinHandle<()>,
    /// The `assignment_seq` last applied.
    seen_seq: u64,
    next_auto_commit: Instant,
    /// When to try applying the assignment again (committed offsets could not be fetched).
    retry_at: Option<Instant>,
    /// A listener callback runs: a nested `poll` applies no assignment change.
    in_callback: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        // Without `close`, the member stops heartbeating and the coordinator removes it after
        // its session timeout.
        self.heartbeat.abort();
        self.committer.abort();
    }
}

struct Listener(Box<dyn RebalanceListener>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebalanceListener")
    }
}

#[derive(Debug, Clone, Copy)]
enum Callback {
    Assigned,
    Revoked,
    Lost,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.task.abort();
    }
}

impl Consumer {
    /// Checks `config`, connects (to fail fast when no broker is reachable) and starts the
    /// background fetcher. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`]; the connection's failure.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let control = Arc::new(Control::new(config.client.clone()));
        control.connection().await?;
        let config = Arc::new(config);
        let shared = Arc::new(FetchShared::default());
        let reset = config.auto_offset_reset;
        shared.set_reset_policy(reset);
        let (tx, chunks) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        let task =
            runtime.spawn(Fetcher::new(shared.clone(), config.clone(), tx, control.clone()).run());
        Ok(Consumer {
            config,
            control,
            shared,
            chunks,
            positions: HashMap::new(),
            current: None,
            pending_error: None,
            epoch: 0,
            task,
            runtime,
            reset,
            group: None,
            listener: std::sync::Mutex::new(None),
        })
    }

    /// The number of partitions of `topic`.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; the request's failure.
    pub async fn partition_count(&self, topic: &str) -> Result<i32> {
        self.control
            .partition_count(topic, false)
            .await?
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_string(),
                reason: None,
            })
    }

    /// Replaces the assignment with `partitions`. A partition assigned before keeps its
    /// position; a new one has none until a seek, or until `auto_offset_reset` finds one
    /// (with [`AutoOffsetReset::None`], `poll` reports [`Error::NoOffset`] for it).
    ///
    /// A consumer that subscribed to a group gets its partitions from the coordinator: there,
    /// this does nothing (and logs a warning).
    pub fn assign(&mut self, partitions: &[(&str, i32)]) {
        let tps: Vec<TopicPartition> = partitions
            .iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect();
        self.assign_partitions(&tps);
    }

    /// [`Consumer::assign`] with [`TopicPartition`]s.
    pub fn assign_partitions(&mut self, partitions: &[TopicPartition]) {
        if let Some(g) = &self.group {
            tracing::warn!(group = %g.shared.group_id, "assign on a subscribed consumer is ignored: the group coordinator assigns its partitions");
            return;
        }
        let reset = self.reset != AutoOffsetReset::None;
        let mut positions = HashMap::with_capacity(partitions.len());
        for tp in partitions {
            let pos = match self.positions.get(tp) {
                Some(p) => *p,
                None => {
                    self.epoch = self.epoch.wrapping_add(1);
                    Position {
                        offset: None,
                        epoch: self.epoch,
                    }
                }
            };
            positions.insert(tp.clone(), pos);
        }
        self.positions = positions;
        if self
            .current
            .as_ref()
            .is_some_and(|c| !self.positions.contains_key(&c.tp))
        {
            self.current = None;
        }
        let mut state = self.shared.lock();
        state.retain(|tp, _| self.positions.contains_key(tp));
        for (tp, pos) in &self.positions {
            state.entry(tp.clone()).or_insert_with(|| PartFetch {
                fetch_offset: pos.offset,
                epoch: pos.epoch,
                buffered: false,
                needs_reset: pos.offset.is_none() && reset,
                backoff_until: None,
                last_epoch: None,
                fetched_in: None,
            });
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        v.sort();
        v
    }

    /// The offset of the next record `poll` returns for `tp`, if it has a position.
    pub fn position(&self, tp: impl Into<TopicPartition>) -> Option<i64> {
        self.positions.get(&tp.into()).and_then(|p| p.offset)
    }

    /// Makes `offset` the next offset `poll` returns for `tp`. Records already fetched for it
    /// are dropped; the next fetch starts there.
    ///
    /// # Errors
    /// [`Error::NotAssigned`].
    pub fn seek(&mut self, tp: impl Into<TopicPartition>, offset: i64) -> Result<()> {
        let tp = tp.into();
        let Some(pos) = self.positions.get_mut(&tp) else {
            return Err(Error::NotAssigned {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            });
        };
        self.epoch = self.epoch.wrapping_add(1);
        pos.offset = Some(offset);
        pos.epoch = self.epoch;
        let epoch = pos.epoch;
        if self.current.as_ref().is_some_and(|c| c.tp == tp) {
            self.current = None;
        }
        self.shared.lock().insert(
            tp,
            PartFetch {
                fetch_offset: Some(offset),
                epoch,
                buffered: false,
                needs_reset: false,
                backoff_until: None,
                last_epoch: None,
                fetched_in: None,
            },
        );
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Seeks `partitions` (every assigned one when empty) to their oldest stored record.
    ///
    /// # Errors
    /// [`Error::NotAssigned`]; the ListOffsets request's failure.
    pub async fn seek_to_beginning(&mut self, partitions: &[(&str, i32)]) -> Result<()> {
        self.seek_by(partitions, OffsetSpec::Earliest).await
    }

    /// Seeks `partitions` (every assigned one when empty) to their end: `poll` returns only
    /// records appended after this.
    ///
    /// # Errors
    /// As [`Consumer::seek_to_beginning`].
    pub async fn seek_to_end(&mut self, partitions: &[(&str, i32)]) -> Result<()> {
        self.seek_by(partitions, OffsetSpec::Latest).await
    }

    /// Seeks `partitions` (every assigned one when empty) to the first record whose timestamp
    /// is at or after `timestamp_ms`, or to the end when there is none.
    ///
    /// # Errors
    /// As [`Consumer::seek_to_beginning`].
    pub async fn seek_to_timestamp(
        &mut self,
        partitions: &[(&str, i32)],
        timestamp_ms: i64,
    ) -> Result<()> {
        self.seek_by(partitions, OffsetSpec::Timestamp(timestamp_ms))
            .await
    }

    async fn seek_by(&mut self, partitions: &[(&str, i32)], spec: OffsetSpec) -> Result<()> {
        let tps: Vec<TopicPartition> = if partitions.is_empty() {
            self.assignment()
        } else {
            partitions
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect()
        };
        for tp in &tps {
            if !self.positions.contains_key(tp) {
                return Err(Error::NotAssigned {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                });
            }
        }
        if tps.is_empty() {
            return Ok(());
        }
        let queries: Vec<(TopicPartition, OffsetSpec)> =
            tps.iter().map(|tp| (tp.clone(), spec)).collect();
        let mut listed = list_offsets_routed(&self.control, &queries).await?;
        // No record at or after the timestamp: the end.
        let missing: Vec<(TopicPartition, OffsetSpec)> = listed
            .iter()
            .filter(|l| matches!(l.result, Ok((offset, _)) if offset < 0))
            .map(|l| (l.tp.clone(), OffsetSpec::Latest))
            .collect();
        if !missing.is_empty() {
            let ends = list_offsets_routed(&self.control, &missing).await?;
            for end in ends {
                if let Some(l) = listed.iter_mut().find(|l| l.tp == end.tp) {
                    l.result = end.result;
                }
            }
        }
        for l in listed {
            let (offset, _) = l.result?;
            self.seek(l.tp, offset)?;
        }
        Ok(())
    }

    /// Returns the next records of the assigned partitions (at most `max_poll_records`), in
    /// offset order per partition, waiting up to `timeout` for some to arrive; an empty vector
    /// when none did. Positions advance past the returned records, and only through them.
    ///
    /// In a group, `poll` is also where the membership meets the application: it applies
    /// assignment changes (revoking, committing and releasing partitions, starting new ones at
    /// their committed offsets), runs the [`RebalanceListener`] callbacks, and auto-commits
    /// the positions the previous polls left, every `group.auto_commit_interval`. A consumer
    /// that stops polling holds on to partitions the coordinator wants to move (the rebalance
    /// waits for it) while its heartbeats keep it in the group.
    ///
    /// # Errors
    /// [`Error::NoOffset`] for an assigned partition without a position under
    /// [`AutoOffsetReset::None`]; [`Error::OffsetOutOfRange`] (same policy);
    /// [`Error::Corrupt`] for a batch that failed its CRC or could not be decoded (that
    /// partition stops until it is sought); [`Error::Closed`]; in a group, an error the
    /// coordinator refused the member with (e.g. `INVALID_REQUEST` for a session timeout
    /// outside its bounds), on every call.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        if self.group.is_some() {
            self.reconcile().await?;
            self.maybe_auto_commit();
        }
        if self.reset == AutoOffsetReset::None
            && let Some(tp) = self
                .positions
                .iter()
                .filter(|(_, p)| p.offset.is_none())
                .map(|(tp, _)| tp)
                .min()
        {
            return Err(Error::NoOffset {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            });
        }
        let max = self.config.max_poll_records;
        let mut out = Vec::new();
        loop {
            if let Err(e) = self.drain_current(&mut out, max) {
                return self.fail(out, e);
            }
            if out.len() >= max {
                return Ok(out);
            }
            let chunk = if out.is_empty() {
                let group = self
                    .group
                    .as_ref()
                    .filter(|g| !g.in_callback)
                    .map(|g| (g.shared.clone(), g.retry_at));
                let woken = tokio::select! {
                    c = tokio::time::timeout_at(deadline, self.chunks.recv()) => Some(c),
                    () = group_wake(group) => None,
                };
                match woken {
                    Some(Ok(Some(c))) => c,
                    Some(Ok(None)) => return self.fail(out, Error::Closed),
                    Some(Err(_)) => return Ok(out),
                    None => {
                        // The assignment changed (or the member was fenced): apply it now.
                        if let Err(e) = self.reconcile().await {
                            return self.fail(out, e);
                        }
                        continue;
                    }
                }
            } else {
                match self.chunks.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(out),
                }
            };
            if let Err(e) = self.accept(chunk) {
                return self.fail(out, e);
            }
        }
    }

    /// Returns the records gathered so far, keeping `e` for the next poll; or `e` when there
    /// are none.
    fn fail(&mut self, out: Vec<ConsumerRecord>, e: Error) -> Result<Vec<ConsumerRecord>> {
        if out.is_empty() {
            Err(e)
        } else {
            self.pending_error = Some(e);
            Ok(out)
        }
    }

    /// Takes a chunk off the queue: frees its share of the buffer, drops it if it is stale.
    fn accept(&mut self, chunk: Chunk) -> Result<()> {
        if let ChunkKind::Data { bytes, .. } = &chunk.kind {
            self.shared
                .buffered_bytes
                .fetch_sub(*bytes, Ordering::AcqRel);
            if let Some(p) = self.shared.lock().get_mut(&chunk.tp)
                && p.epoch == chunk.epoch
            {
                p.buffered = false;
            }
            self.shared.wake.notify_one();
        }
        let Some(pos) = self.positions.get_mut(&chunk.tp) else {
            return Ok(());
        };
        if pos.epoch != chunk.epoch {
            return Ok(());
        }
        match chunk.kind {
            ChunkKind::Data {
                batches,
                next_offset,
                ..
            } => {
                self.current = Some(Current {
                    tp: chunk.tp,
                    epoch: chunk.epoch,
                    batches: batches.into(),
                    records: None,
                    next_offset,
                });
                Ok(())
            }
            ChunkKind::Reset { offset } => {
                pos.offset = Some(offset);
                Ok(())
            }
            ChunkKind::Error(e) => Err(e),
        }
    }

    /// Moves records of the current chunk into `out`, skipping those below the position.
    fn drain_current(&mut self, out: &mut Vec<ConsumerRecord>, max: usize) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let Some(pos) = self.positions.get_mut(&cur.tp) else {
            self.current = None;
            return Ok(());
        };
        if pos.epoch != cur.epoch {
            self.current = None;
            return Ok(());
        }
        let mut position = pos.offset.unwrap_or(i64::MIN);
        let result = loop {
            if out.len() >= max {
                break Ok(false);
            }
            if let Some(records) = cur.records.as_mut() {
                match records.next() {
                    Some(Ok(r)) => {
                        if r.offset >= position {
                            position = r.offset + 1;
                            out.push(ConsumerRecord::new(
                                cur.tp.topic.clone(),
                                cur.tp.partition,
                                r,
                            ));
                        }
                    }
                    Some(Err(source)) => {
                        cur.records = None;
                        break Err(Error::Corrupt {
                            topic: cur.tp.topic.to_string(),
                            partition: cur.tp.partition,
                            offset: position,
                            source,
                        });
                    }
                    None => cur.records = None,
                }
                continue;
            }
            let Some(batch) = cur.batches.pop_front() else {
                break Ok(true);
            };
            match Records::new(batch) {
                Ok(r) => cur.records = Some(r),
                Err(source) => {
                    break Err(Error::Corrupt {
                        topic: cur.tp.topic.to_string(),
                        partition: cur.tp.partition,
                        offset: position,
                        source,
                    });
                }
            }
        };
        match result {
            Ok(done) => {
                if done {
                    // Past control batches and gaps at the end of the chunk too.
                    position = position.max(cur.next_offset);
                    self.current = None;
                }
                pos.offset = Some(position);
                Ok(())
            }
            Err(e) => {
                pos.offset = Some(position);
                Err(e)
            }
        }
    }
}

/// Resolves when a subscribed consumer has an assignment change to apply (or a retry is due);
/// never for a consumer without a group.
async fn group_wake(group: Option<(Arc<GroupShared>, Option<Instant>)>) {
    match group {
        None => std::future::pending().await,
        Some((shared, retry_at)) => {
            let changed = shared.changed.notified();
            match retry_at {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t, changed).await;
                }
                None => changed.await,
            }
        }
    }
}

/// Consumer groups.
impl Consumer {
    /// Joins `group` as a member consuming `topics`: the group's coordinator assigns this
    /// consumer a share of the topics' partitions and moves them between members as members
    /// come and go. Returns at once; the background heartbeat task joins, and `poll` applies
    /// the assignment (starting each partition at the group's committed offset, or by
    /// [`GroupConfig::auto_offset_reset`](crate::GroupConfig::auto_offset_reset)) and calls the
    /// [`RebalanceListener`]. Settings: [`ConsumerConfig::group`].
    ///
    /// A partition assigned with [`Consumer::assign`] before is dropped. Called again with the
    /// same group, it changes the subscribed topics.
    ///
    /// ```no_run
    /// # async fn run(mut consumer: strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// consumer.subscribe("billing", &["orders", "refunds"])?;
    /// let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for an empty group id or topic list, an invalid topic name, or a
    /// consumer already in another group. Errors the coordinator reports later (e.g. a session
    /// timeout outside its bounds) come from `poll`.
    pub fn subscribe(&mut self, group: &str, topics: &[&str]) -> Result<()> {
        if group.is_empty() {
            return Err(Error::config("group", "the group id is empty"));
        }
        if topics.is_empty() {
            return Err(Error::config("topics", "subscribe to at least one topic"));
        }
        if let Some(bad) = topics.iter().find(|t| validate_topic_name(t).is_err()) {
            return Err(Error::config(
                "topics",
                format!("{bad:?} is not a valid topic name"),
            ));
        }
        let mut names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        names.sort();
        names.dedup();
        if let Some(g) = &self.group {
            if g.shared.group_id != group {
                return Err(Error::config(
                    "group",
                    format!(
                        "this consumer is a member of group {}; use another consumer for {group}",
                        g.shared.group_id
                    ),
                ));
            }
            let mut st = g.shared.lock();
            if st.topics != names {
                st.topics = names;
                st.topics_changed = true;
                drop(st);
                g.shared.wake_heartbeat.notify_one();
            }
            return Ok(());
        }
        // Manually assigned partitions go; the coordinator decides from now on.
        let manual: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        self.forget(&manual);
        self.reset = self.config.group.auto_offset_reset;
        self.shared.set_reset_policy(self.reset);
        let shared = Arc::new(GroupShared::new(group.to_string(), names));
        let (jobs, rx) = mpsc::unbounded_channel();
        let heartbeat = self
            .runtime
            .spawn(group::run_heartbeats(shared.clone(), self.config.clone()));
        let committer = self.runtime.spawn(group::run_committer(
            shared.clone(),
            self.control.clone(),
            self.config.clone(),
            rx,
        ));
        self.group = Some(Group {
            shared,
            jobs,
            heartbeat,
            committer,
            seen_seq: 0,
            next_auto_commit: Instant::now() + self.config.group.auto_commit_interval,
            retry_at: None,
            in_callback: false,
        });
        Ok(())
    }

    /// Sets the callbacks run when partitions are assigned, revoked or lost (replacing any set
    /// before). See [`RebalanceListener`].
    ///
    /// ```no_run
    /// # struct Audit;
    /// # impl strom_client::RebalanceListener for Audit {}
    /// # fn run(consumer: &mut strom_client::Consumer) {
    /// consumer.set_rebalance_listener(Audit);
    /// # }
    /// ```
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        *self.listener.get_mut().unwrap_or_else(|e| e.into_inner()) =
            Some(Listener(Box::new(listener)));
    }

    /// The group, member id and member epoch, once subscribed.
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        self.group.as_ref().map(|g| {
            let st = g.shared.lock();
            GroupMetadata {
                group_id: g.shared.group_id.clone(),
                member_id: st.member_id.clone(),
                member_epoch: st.member_epoch.max(0),
            }
        })
    }

    /// Commits the positions of every assigned partition (the offset after the last record
    /// `poll` returned, for each) and waits for the broker's acknowledgement, which comes after
    /// the commit is on disk. Commits queued before (auto-commits, [`Consumer::commit_async`])
    /// are done first. Partitions whose position is already committed are not sent again.
    ///
    /// A stale member epoch (`ILLEGAL_GENERATION`, the group was rebalancing) is refreshed with
    /// a heartbeat and the commit tried once more; connection failures are retried until
    /// `request_timeout`.
    ///
    /// ```no_run
    /// # async fn run(consumer: &mut strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
    /// // ... process them, then:
    /// consumer.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotSubscribed`]; [`Error::IllegalGeneration`] (retriable);
    /// [`Error::UnknownMember`] when the member was fenced (its partitions are lost);
    /// a partition's error; the request's failure.
    pub async fn commit(&self) -> Result<()> {
        let offsets = self.uncommitted(None)?;
        self.queue_commit(offsets, false)?.await
    }

    /// As [`Consumer::commit`], without waiting: the commit is queued (after every commit
    /// queued before) and the returned [`CommitHandle`] resolves with its outcome. Dropping the
    /// handle does not cancel the commit; a failure nobody awaits is logged (`tracing`, warn).
    ///
    /// ```no_run
    /// # async fn run(consumer: &mut strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
    /// let _ = consumer.commit_async(); // fire and forget
    /// # Ok(()) }
    /// ```
    pub fn commit_async(&self) -> CommitHandle {
        match self
            .uncommitted(None)
            .and_then(|offsets| self.queue_commit(offsets, false))
        {
            Ok(handle) => handle,
            Err(e) => CommitHandle::ready(Err(e)),
        }
    }

    /// Commits explicit offsets (each the offset of the next record to read, i.e. the last
    /// processed offset + 1) and waits for the acknowledgement: at-least-once after
    /// processing. Only partitions assigned to this consumer may be committed, so a member
    /// never overwrites the commits of a partition's next owner.
    ///
    /// ```no_run
    /// # async fn run(consumer: &mut strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// for r in consumer.poll(std::time::Duration::from_secs(1)).await? {
    ///     // ... process r, then:
    ///     consumer.commit_offsets(&[(r.topic_partition(), r.offset() + 1)]).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotAssigned`]; otherwise as [`Consumer::commit`].
    pub async fn commit_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        if self.group.is_none() {
            return Err(Error::NotSubscribed);
        }
        if let Some((tp, _)) = offsets
            .iter()
            .find(|(tp, _)| !self.positions.contains_key(tp))
        {
            return Err(Error::NotAssigned {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            });
        }
        self.queue_commit(offsets.to_vec(), false)?.await
    }

    /// The group's committed offsets for `partitions` (every partition it has a commit for,
    /// when empty); partitions without a commit are left out.
    ///
    /// ```no_run
    /// # async fn run(consumer: &strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// let mine = consumer.assignment();
    /// for (tp, offset) in consumer.committed(&mine).await? {
    ///     println!("{tp}: committed {offset}, at {:?}", consumer.position(tp.clone()));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotSubscribed`]; the OffsetFetch request's failure.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let g = self.group.as_ref().ok_or(Error::NotSubscribed)?;
        group::fetch_committed(&self.control, &g.shared.group_id, partitions).await
    }

    /// Closes the consumer. In a group: the assigned partitions are revoked (the
    /// [`RebalanceListener`] runs), their positions committed (with auto-commit on), every
    /// queued commit finished, and the member leaves the group at once, so its partitions move
    /// to the other members without waiting for the session timeout. Dropping a consumer
    /// without `close` leaves the group only when its session expires.
    ///
    /// ```no_run
    /// # async fn run(consumer: strom_client::Consumer) -> Result<(), strom_client::Error> {
    /// consumer.close().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The final commit's failure (the member leaves anyway).
    pub async fn close(mut self) -> Result<()> {
        let Some(g) = self.group.as_ref() else {
            return Ok(());
        };
        let shared = g.shared.clone();
        let (fatal, lost) = {
            let st = shared.lock();
            (st.fatal.is_some(), st.lost)
        };
        let mut result = Ok(());
        if !fatal {
            let owned = self.assignment();
            if lost {
                self.drop_lost().await;
            } else if !owned.is_empty() {
                result = self.revoke(&owned).await;
            }
        }
        if let Some(g) = self.group.as_mut() {
            shared.lock().leaving = true;
            shared.wake_heartbeat.notify_one();
            let wait = self.config.client.request_timeout;
            if tokio::time::timeout(wait, &mut g.heartbeat).await.is_err() {
                tracing::warn!(group = %shared.group_id, "leaving the group timed out; the session will expire");
            }
        }
        result
    }

    /// Partitions whose position differs from what is known committed (all assigned ones, or
    /// those of `only`).
    fn uncommitted(&self, only: Option<&[TopicPartition]>) -> Result<Vec<(TopicPartition, i64)>> {
        let g = self.group.as_ref().ok_or(Error::NotSubscribed)?;
        let st = g.shared.lock();
        let mut out: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, p)| p.offset.map(|o| (tp.clone(), o)))
            .filter(|(tp, o)| st.committed.get(tp) != Some(o))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Queues a commit for the committer task. `background`: nobody will await it.
    fn queue_commit(
        &self,
        offsets: Vec<(TopicPartition, i64)>,
        background: bool,
    ) -> Result<CommitHandle> {
        let g = self.group.as_ref().ok_or(Error::NotSubscribed)?;
        let member_id = g.shared.lock().member_id.clone();
        let (reply, rx) = oneshot::channel();
        g.jobs
            .send(CommitJob {
                offsets,
                member_id,
                reply,
                background,
            })
            .map_err(|_| Error::Closed)?;
        Ok(CommitHandle::pending(rx))
    }

    /// Auto-commit from within `poll`: the positions as the previous polls left them.
    fn maybe_auto_commit(&mut self) {
        if !self.config.group.enable_auto_commit {
            return;
        }
        let Some(g) = self.group.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now < g.next_auto_commit {
            return;
        }
        g.next_auto_commit = now + self.config.group.auto_commit_interval;
        if let Ok(offsets) = self.uncommitted(None)
            && !offsets.is_empty()
        {
            // The handle is dropped: the committer logs a failure.
            let _ = self.queue_commit(offsets, true);
        }
    }

    /// Applies the coordinator's latest assignment: see the `group` module docs.
    async fn reconcile(&mut self) -> Result<()> {
        loop {
            let Some(g) = self.group.as_mut() else {
                return Ok(());
            };
            if g.in_callback {
                return Ok(());
            }
            g.retry_at = None;
            let shared = g.shared.clone();
            let seen = g.seen_seq;
            let (lost, seq, target) = {
                let st = shared.lock();
                if let Some(e) = &st.fatal {
                    return Err(e.clone());
                }
                (st.lost, st.assignment_seq, st.assignment.clone())
            };
            if lost {
                self.drop_lost().await;
                continue;
            }
            if seq == seen {
                return Ok(());
            }
            let owned: BTreeSet<TopicPartition> = self.positions.keys().cloned().collect();
            let revoked: Vec<TopicPartition> = owned.difference(&target).cloned().collect();
            if !revoked.is_empty() {
                tracing::info!(group = %shared.group_id, ?revoked, "partitions revoked");
                if let Err(e) = self.revoke(&revoked).await {
                    tracing::warn!(group = %shared.group_id, error = %e, "commit before giving partitions up failed; their next owner re-reads from the last commit");
                }
            }
            let added: Vec<TopicPartition> = target.difference(&owned).cloned().collect();
            if !added.is_empty() {
                match self.add_assigned(&shared, seq, &added).await {
                    Ok(true) => {}
                    // The assignment changed meanwhile: start over with the new one.
                    Ok(false) => continue,
                    Err(e) if e.is_retriable() => {
                        tracing::debug!(group = %shared.group_id, error = %e, "fetching committed offsets failed; retrying");
                        if let Some(g) = self.group.as_mut() {
                            g.retry_at = Some(Instant::now() + self.config.retry_backoff);
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(g) = self.group.as_mut() {
                g.seen_seq = seq;
            }
            if !added.is_empty() {
                tracing::info!(group = %shared.group_id, ?added, "partitions assigned");
                self.run_listener(Callback::Assigned, &added).await;
            }
        }
    }

    /// Gives `partitions` up: stop fetching them, run the listener, commit their positions
    /// (auto-commit), wait for every queued commit, and only then stop reporting them owned.
    async fn revoke(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.stop_fetching(partitions);
        self.run_listener(Callback::Revoked, partitions).await;
        let offsets = if self.config.group.enable_auto_commit {
            self.uncommitted(Some(partitions))?
        } else {
            Vec::new()
        };
        // An empty commit still waits for the commits queued before it.
        let result = match self.queue_commit(offsets, false) {
            Ok(handle) => handle.await,
            Err(e) => Err(e),
        };
        for tp in partitions {
            self.positions.remove(tp);
        }
        self.publish_owned();
        result
    }

    /// The member was fenced: its partitions are gone already. Drop them, tell the listener,
    /// and let the heartbeat task rejoin.
    async fn drop_lost(&mut self) {
        let lost = self.assignment();
        self.stop_fetching(&lost);
        // Commits queued under the old membership fail (they must not land under the next).
        if let Ok(handle) = self.queue_commit(Vec::new(), false) {
            let _ = handle.await;
        }
        if !lost.is_empty() {
            if let Some(g) = &self.group {
                tracing::warn!(group = %g.shared.group_id, ?lost, "partitions lost");
            }
            self.run_listener(Callback::Lost, &lost).await;
        }
        for tp in &lost {
            self.positions.remove(tp);
        }
        if let Some(g) = &self.group {
            let mut st = g.shared.lock();
            st.owned.clear();
            st.lost = false;
            drop(st);
            g.shared.wake_heartbeat.notify_one();
        }
    }

    /// Starts newly assigned partitions at their committed offsets. `Ok(false)` when the
    /// assignment changed while the offsets were fetched (nothing was added).
    async fn add_assigned(
        &mut self,
        shared: &GroupShared,
        seq: u64,
        added: &[TopicPartition],
    ) -> Result<bool> {
        let committed = group::fetch_committed(&self.control, &shared.group_id, added).await?;
        let mut st = shared.lock();
        if st.lost || st.assignment_seq != seq {
            return Ok(false);
        }
        let reset = self.reset != AutoOffsetReset::None;
        let mut state = self.shared.lock();
        for tp in added {
            let offset = committed.get(tp).copied();
            if let Some(o) = offset {
                st.committed.insert(tp.clone(), o);
            }
            self.epoch = self.epoch.wrapping_add(1);
            self.positions.insert(
                tp.clone(),
                Position {
                    offset,
                    epoch: self.epoch,
                },
            );
            state.insert(
                tp.clone(),
                PartFetch {
                    fetch_offset: offset,
                    epoch: self.epoch,
                    buffered: false,
                    needs_reset: offset.is_none() && reset,
                    backoff_until: None,
                    last_epoch: None,
                    fetched_in: None,
                },
            );
        }
        drop(state);
        st.owned = self.positions.keys().cloned().collect();
        drop(st);
        self.shared.wake.notify_one();
        Ok(true)
    }

    /// Reports the partitions consumed now as owned, and heartbeats so the coordinator learns
    /// of a release at once.
    fn publish_owned(&self) {
        if let Some(g) = &self.group {
            g.shared.lock().owned = self.positions.keys().cloned().collect();
            g.shared.wake_heartbeat.notify_one();
        }
    }

    /// Stops fetching `partitions` and drops their buffered records; positions stay.
    fn stop_fetching(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(pos) = self.positions.get_mut(tp) {
                // Chunks fetched before now are stale.
                self.epoch = self.epoch.wrapping_add(1);
                pos.epoch = self.epoch;
            }
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| partitions.contains(&c.tp))
        {
            self.current = None;
        }
        let mut state = self.shared.lock();
        for tp in partitions {
            state.remove(tp);
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Stops fetching `partitions` and forgets their positions.
    fn forget(&mut self, partitions: &[TopicPartition]) {
        self.stop_fetching(partitions);
        for tp in partitions {
            self.positions.remove(tp);
        }
    }

    async fn run_listener(&mut self, which: Callback, partitions: &[TopicPartition]) {
        let taken = self
            .listener
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut listener) = taken else {
            return;
        };
        if let Some(g) = self.group.as_mut() {
            g.in_callback = true;
        }
        match which {
            Callback::Assigned => listener.0.on_partitions_assigned(self, partitions).await,
            Callback::Revoked => listener.0.on_partitions_revoked(self, partitions).await,
            Callback::Lost => listener.0.on_partitions_lost(self, partitions).await,
        }
        if let Some(g) = self.group.as_mut() {
            g.in_callback = false;
        }
        // Unless the callback set another one.
        let slot = self.listener.get_mut().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(listener);
        }
    }
}

#[cfg(test)]
mod epoch_tests;
#[cfg(test)]
mod tests;
