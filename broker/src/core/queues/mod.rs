//! Queue groups: any number of members share the records of ordinary topics, one record to one
//! member at a time under a lease, each record acknowledged on its own (docs/queues.md).
//!
//! This module is the queue coordinator: groups and their members (soft state: a member that
//! sends nothing for its session timeout is gone, and what it held fails as a lease expiry
//! does), one [`state::QueuePartition`] per (group, topic, partition), long-poll fetches that
//! hand out records and take acknowledgements, and the durable record of it all in the internal
//! topic `__queue_state` ([`codec`]), a replicated topic of the cluster: a group lives on the
//! leader of its partition ([`leadership`]), which writes its records there:
//!
//! - every change to a queue-partition is a delta appended, with every other change of the same
//!   request, as one batch, and fsynced on every in-sync replica (grouped with other appends by
//!   the partition writer) before the answer leaves: an acquisition is durable before the member
//!   sees the records, so after a crash or a failover the attempt count never goes down and a
//!   lease still held is not handed to a second member;
//! - changes are applied in memory and queued for appending under the group's lock, so the log
//!   holds them in the order they happened, and replaying it gives the state that was live;
//! - from time to time every queue-partition is written whole (a snapshot) and the log start
//!   moves past what the snapshots cover ([`Core::queue_compact`]).
//!
//! Dead-lettering runs in [`dlq`]; the pure state machine is [`state`], its settings
//! [`settings`] and [`policy`].

mod admin;
pub(crate) mod codec;
pub(crate) mod delay_log;
pub(crate) mod dlq;
mod fetch;
mod leadership;
mod maintain;
pub(crate) mod policy;
pub(crate) mod redrive;
pub(crate) mod settings;
pub(crate) mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::ValidBatch;
use tokio::sync::{Notify, oneshot};

use super::coordination::{Route, Slots};
use super::partition::{AppendReply, Durability, Partition};
use super::topics::Topics;
use super::{Core, Failure};
use codec::{DELTA, SNAPSHOT};
use settings::{Settings, Start};
use state::{Acquired, Delta, MemberId, Millis, Outcome, QueuePartition};

/// The internal topic holding queue groups' state.
pub const STATE_TOPIC: &str = "__queue_state";

/// Session timeout of a member that asks for none, and its bounds.
const DEFAULT_SESSION_MS: u32 = 30_000;
const MIN_SESSION_MS: u32 = 1_000;
const MAX_SESSION_MS: u32 = 300_000;
/// Members of one group, at most.
const MAX_MEMBERS: usize = 10_000;
/// Delayed records one queue-partition takes in per step, at most (with `ordering=key` each is a
/// span until handed out).
const FIRE_LIMIT: u64 = 10_000;

pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A queue-partition's name.
pub(crate) type Tp = (Arc<str>, i32);

#[derive(Debug)]
struct Member {
    session_ms: u32,
    deadline: Instant,
    topics: Vec<Arc<str>>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    members: HashMap<MemberId, Member>,
    qps: BTreeMap<Tp, QueuePartition>,
    /// Where the next fetch starts looking, so members take turns over the partitions.
    cursor: usize,
    /// Deleted: requests get GROUP_ID_NOT_FOUND.
    deleted: bool,
    /// Topics with partitions this broker holds no replica of, already logged.
    unhosted_logged: std::collections::HashSet<Arc<str>>,
}

/// One queue group.
#[derive(Debug)]
pub(crate) struct QueueGroup {
    name: String,
    /// The `__queue_state` partition its records go to, and the leader epoch this broker
    /// coordinates it in: a write in another epoch is refused (the group has another
    /// coordinator, or was loaded again).
    route: Route,
    inner: tokio::sync::Mutex<Inner>,
    /// Woken when records may have become available (released, failed, delay over, reset).
    wake: Notify,
}

/// The queue coordinator's state: the groups (and redrive tasks) of the `__queue_state`
/// partitions this broker leads.
#[derive(Debug)]
pub(crate) struct Queues {
    groups: Arc<Mutex<HashMap<String, Arc<QueueGroup>>>>,
    /// Redrive tasks by dead-letter topic (finished ones too, for their status).
    redrives: tokio::sync::Mutex<HashMap<String, redrive::Task>>,
    /// Redrive tasks running here, by dead-letter topic.
    running: Mutex<HashSet<String>>,
    /// Per `__queue_state` partition, the records its last compaction wrote (groups' and
    /// redrives' snapshots): what it holds at least, so they do not count towards the next.
    snapshot_records: Mutex<HashMap<i32, u64>>,
    /// Which partitions of `__queue_state` this broker leads.
    slots: Mutex<Slots>,
    /// Held while this broker creates `__queue_state`.
    creating: tokio::sync::Mutex<()>,
}

impl Default for Queues {
    fn default() -> Self {
        Self {
            groups: Arc::default(),
            redrives: tokio::sync::Mutex::default(),
            running: Mutex::default(),
            snapshot_records: Mutex::default(),
            slots: Mutex::new(Slots::new(STATE_TOPIC, "queue group")),
            creating: tokio::sync::Mutex::new(()),
        }
    }
}

/// Joining a queue group (or refreshing a membership).
#[derive(Debug, Clone)]
pub(crate) struct Join {
    pub group: String,
    pub member: String,
    pub topics: Vec<String>,
    /// 0: the default.
    pub session_timeout_ms: u32,
    /// Applied when this join creates the group; ignored (the group's are returned) otherwise.
    pub settings: Vec<(String, String)>,
}

/// One acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct AckEntry {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// A fetch: acknowledgements to apply, then records to take.
#[derive(Debug, Clone)]
pub(crate) struct QueueFetch {
    pub group: String,
    pub member: String,
    pub max_records: u32,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    pub acks: Vec<AckEntry>,
}

/// Records handed out from one partition: the batches that hold them, as stored, and the runs
/// of offsets that are the member's (other records in the batches are not).
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub topic: Arc<str>,
    pub partition: i32,
    pub runs: Vec<Acquired>,
    pub lease_until: Millis,
    pub records: Bytes,
}

/// A fetch's answer.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub error: Option<Failure>,
    /// Per acknowledgement, in request order.
    pub acks: Vec<Failure>,
    pub chunks: Vec<Chunk>,
}

/// A queue-partition as described.
#[derive(Debug, Clone)]
pub(crate) struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub next: i64,
    pub log_end: i64,
    pub counts: state::Counts,
    pub finished: state::Finished,
    /// Records handed out again since the broker started.
    pub redelivered: u64,
    /// Age of the oldest unfinished record (by its timestamp), if any.
    pub oldest_unacked_ms: Option<i64>,
}

/// A queue group as described.
#[derive(Debug, Clone)]
pub(crate) struct GroupView {
    pub group: String,
    pub settings: BTreeMap<String, String>,
    /// (member, topics, records held).
    pub members: Vec<(String, Vec<String>, u64)>,
    pub partitions: Vec<PartitionView>,
}

fn ok() -> Failure {
    (ErrorCode::None, String::new())
}

fn lock_groups(q: &Queues) -> std::sync::MutexGuard<'_, HashMap<String, Arc<QueueGroup>>> {
    match q.groups.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// State records to append for one request, in order.
#[derive(Debug, Default)]
struct StateWrites {
    builder: Option<BatchBuilder>,
    count: u64,
    error: Option<String>,
}

impl StateWrites {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>, now: Millis) {
        let b = self.builder.get_or_insert_with(BatchBuilder::default);
        if let Err(e) = b.push(&RecordRef {
            timestamp: now,
            key: Some(key),
            value,
            headers: &[],
        }) {
            self.error = Some(e.to_string());
        }
        self.count += 1;
    }

    fn state(&mut self, group: &str, tp: &Tp, kind: u8, delta: &Delta, now: Millis) {
        let key = codec::partition_key(group, &tp.0, tp.1);
        self.push(&key, Some(&codec::encode_state(kind, delta)), now);
    }
}

impl Queues {
    fn get(&self, name: &str) -> Option<Arc<QueueGroup>> {
        lock_groups(self).get(name).cloned()
    }

    /// What tells the consumer-group coordinator which ids are queue groups'.
    pub fn ids(&self) -> crate::core::groups::TakenIds {
        let groups = self.groups.clone();
        crate::core::groups::TakenIds(Box::new(move |id| match groups.lock() {
            Ok(g) => g.contains_key(id),
            Err(p) => p.into_inner().contains_key(id),
        }))
    }

    /// Whether a queue group of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        lock_groups(self).contains_key(name)
    }

    /// Every group, by name.
    pub fn all(&self) -> Vec<Arc<QueueGroup>> {
        let mut v: Vec<_> = lock_groups(self).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

impl Inner {
    fn new(settings: Settings) -> Self {
        Self {
            settings,
            members: HashMap::new(),
            qps: BTreeMap::new(),
            cursor: 0,
            deleted: false,
            unhosted_logged: std::collections::HashSet::new(),
        }
    }

    /// Keeps `member`'s session alive; its topics. UNKNOWN_MEMBER_ID if its session ended.
    fn touch(&mut self, member: &str) -> Result<Vec<Arc<str>>, Failure> {
        let m = self.members.get_mut(member).ok_or_else(|| {
            (
                ErrorCode::UnknownMemberId,
                "not a member of the queue group (its session ended?): join again".to_string(),
            )
        })?;
        m.deadline = Instant::now() + std::time::Duration::from_millis(u64::from(m.session_ms));
        Ok(m.topics.clone())
    }

    fn held_by(&self, member: &str) -> u64 {
        self.qps.values().map(|qp| qp.held_by(member)).sum()
    }

    fn next_deadline(&self) -> Option<Millis> {
        self.qps.values().filter_map(|qp| qp.next_deadline()).min()
    }

    /// Creates the queue-partitions of `topic` that do not exist yet.
    fn ensure_partitions(
        &mut self,
        group: &str,
        topics: &Topics,
        topic: &Arc<str>,
        out: &mut StateWrites,
        now: Millis,
    ) {
        let Some(t) = topics.get(topic) else { return };
        if t.partitions.len() < t.count as usize && self.unhosted_logged.insert(topic.clone()) {
            // Not handed out by this coordinator yet (docs/cluster.md, "Queue groups").
            tracing::warn!(
                group,
                topic = %topic,
                hosted = t.partitions.len(),
                partitions = t.count,
                "the queue group's coordinator holds no replica of some partitions of this topic; their records are not handed out"
            );
        }
        for p in &t.partitions {
            let tp: Tp = (topic.clone(), p.index);
            if self.qps.contains_key(&tp) {
                continue;
            }
            let reader = p.reader();
            let at = match self.settings.start {
                Start::Earliest => reader.start_offset(),
                Start::Latest => p.high_watermark(),
            };
            let qp = QueuePartition::new(at);
            out.state(group, &tp, SNAPSHOT, &qp.snapshot(), now);
            self.qps.insert(tp, qp);
        }
    }

    /// Applies a delta and queues its record.
    fn commit(&mut self, group: &str, tp: &Tp, delta: Delta, out: &mut StateWrites, now: Millis) {
        if let Some(qp) = self.qps.get_mut(tp) {
            qp.apply(&delta);
            out.state(group, tp, DELTA, &delta, now);
        }
    }

    /// Leases and delays that ran out by `now`. Whether records became available.
    fn expire(&mut self, group: &str, now: Millis, out: &mut StateWrites) -> bool {
        let due: Vec<Tp> = self
            .qps
            .iter()
            .filter(|(_, qp)| qp.next_deadline().is_some_and(|d| d <= now))
            .map(|(tp, _)| tp.clone())
            .collect();
        let policy = self.settings.policy.clone();
        let mut any = false;
        for tp in due {
            let delta = self.qps.get(&tp).and_then(|qp| qp.expire(now, &policy));
            if let Some(d) = delta {
                self.commit(group, &tp, d, out, now);
                any = true;
            }
        }
        any
    }

    /// Takes in delayed records whose delivery time came by `now`. Whether any did.
    fn fire(&mut self, group: &str, topics: &Topics, now: Millis, out: &mut StateWrites) -> bool {
        if topics.delayed_runs() == 0 {
            return false;
        }
        let due: Vec<(Tp, Arc<Partition>)> = self
            .qps
            .iter()
            .filter_map(|(tp, qp)| {
                let part = topics.get(&tp.0)?.partition(tp.1).cloned()?;
                let at = part.delays().next_after(qp.fired())?;
                (at <= now).then(|| (tp.clone(), part))
            })
            .collect();
        if due.is_empty() {
            return false;
        }
        let policy = self.settings.policy.clone();
        let mut any = false;
        for (tp, part) in due {
            let Some(qp) = self.qps.get(&tp) else {
                continue;
            };
            let index = part.delays();
            let (due, upto) = index.due(qp.fired(), now, qp.next(), FIRE_LIMIT);
            let log_start = part.reader().start_offset();
            let due: Vec<(i64, i64)> = due
                .into_iter()
                .filter(|(_, l)| *l >= log_start)
                .map(|(f, l)| (f.max(log_start), l))
                .collect();
            let mut keys = fetch::KeyReader::new(part.reader());
            if let Some(d) = qp.fire(&due, upto, &policy, &mut |o| keys.key(o)) {
                any |= !d.spans.is_empty();
                self.commit(group, &tp, d, out, now);
            }
        }
        any
    }

    /// The earliest delivery time still ahead for this group, if any.
    fn next_delivery(&self, topics: &Topics) -> Option<Millis> {
        if topics.delayed_runs() == 0 {
            return None;
        }
        self.qps
            .iter()
            .filter_map(|(tp, qp)| {
                let part = topics.get(&tp.0)?.partition(tp.1).cloned()?;
                part.delays().next_after(qp.fired())
            })
            .min()
    }

    /// Removes `member`, giving back what it held: released if it left, failed if its session
    /// ended.
    fn remove_member(
        &mut self,
        group: &str,
        member: &str,
        clean: bool,
        now: Millis,
        out: &mut StateWrites,
    ) {
        self.members.remove(member);
        let policy = self.settings.policy.clone();
        let tps: Vec<Tp> = self.qps.keys().cloned().collect();
        for tp in tps {
            let delta = self
                .qps
                .get(&tp)
                .and_then(|qp| qp.member_gone(member, clean, now, &policy));
            if let Some(d) = delta {
                self.commit(group, &tp, d, out, now);
            }
        }
    }

    /// Applies acknowledgements; the result of each.
    fn settle(
        &mut self,
        group: &str,
        member: &str,
        acks: &[AckEntry],
        now: Millis,
        out: &mut StateWrites,
    ) -> Vec<Failure> {
        let policy = self.settings.policy.clone();
        let mut results = Vec::with_capacity(acks.len());
        for a in acks {
            let tp: Tp = (Arc::from(a.topic.as_str()), a.partition);
            let Some(qp) = self.qps.get(&tp) else {
                results.push((
                    ErrorCode::UnknownTopicOrPartition,
                    format!("the group has no partition {} of {}", a.partition, a.topic),
                ));
                continue;
            };
            let run = Acquired {
                first: a.first,
                last: a.last,
                attempt: a.attempt,
            };
            match qp.settle(member, run, &a.outcome, now, &policy) {
                Ok(delta) => {
                    self.commit(group, &tp, delta, out, now);
                    results.push(ok());
                }
                Err(e) => results.push((ErrorCode::InvalidRecordState, e.to_string())),
            }
        }
        results
    }
}

/// A state batch on its way into `__queue_state`.
#[derive(Debug)]
struct Pending {
    appended: oneshot::Receiver<AppendReply>,
    part: Arc<Partition>,
    records: i64,
    epoch: i32,
}

/// A state batch on its way to disk (None: nothing to write).
type Persisting = Result<Option<Pending>, Failure>;

/// The log of partition `partition` of `__queue_state`, if this broker holds it.
pub(crate) fn state_partition(topics: &Topics, partition: i32) -> Option<Arc<Partition>> {
    topics
        .get(STATE_TOPIC)
        .and_then(|t| t.partition(partition).cloned())
}

/// The answer when the partition a write went to is no longer led here in the epoch the
/// group was loaded in.
fn moved(route: Route, why: &str) -> Failure {
    (
        ErrorCode::NotCoordinator,
        format!(
            "{STATE_TOPIC}-{} is no longer coordinated here in leader epoch {} ({why}); find the coordinator again",
            route.partition, route.epoch
        ),
    )
}

impl Core {
    /// Appends a request's state records to `route`'s partition of `__queue_state`; the
    /// result is what to wait on ([`Core::queue_durable`]). Queued under the group's lock, so
    /// the log keeps the order of the changes. Refused (nothing appended) when this broker no
    /// longer leads the partition in the route's epoch.
    async fn queue_persist(&self, route: Route, out: StateWrites) -> Persisting {
        let Some(builder) = out.builder else {
            return Ok(None);
        };
        let failed = |e: String| {
            tracing::error!(error = %e, "a queue state batch could not be built");
            (ErrorCode::UnknownServerError, e)
        };
        if let Some(e) = out.error {
            return Err(failed(e));
        }
        let bytes = builder.finish().map_err(|e| failed(e.to_string()))?;
        let batch = ValidBatch::new(bytes).map_err(|e| failed(e.to_string()))?;
        let part = state_partition(&self.topics, route.partition)
            .ok_or_else(|| moved(route, "its log is not here"))?;
        let epoch = match part.replica().check_replicated_append() {
            Ok(e) if u32::try_from(e).ok() == Some(route.epoch) => e,
            Ok(e) => return Err(moved(route, &format!("it is led here in epoch {e}"))),
            Err((ErrorCode::NotLeaderOrFollower, why)) => return Err(moved(route, &why)),
            Err(e) => return Err(e),
        };
        let records = i64::try_from(out.count).unwrap_or(i64::MAX);
        Ok(Some(Pending {
            appended: part.append(vec![batch], Durability::Fsynced).await,
            part,
            records,
            epoch,
        }))
    }

    /// Waits until a persisted batch is fsynced on every in-sync replica of its partition
    /// (the HW over fsynced offsets passed it, as `acks=all` on a durable topic); its base
    /// offset, if there was one.
    async fn queue_durable(persisting: Persisting) -> Result<Option<i64>, Failure> {
        let Some(p) = persisting? else {
            return Ok(None);
        };
        let base = match p.appended.await {
            Ok(Ok(base)) => base,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err((
                    ErrorCode::CoordinatorNotAvailable,
                    "the queue state log stopped".into(),
                ));
            }
        };
        match p
            .part
            .replica()
            .acknowledged(base + p.records, true, p.epoch)
            .await
        {
            Ok(()) => Ok(Some(base)),
            Err((ErrorCode::NotLeaderOrFollower, why)) => Err((ErrorCode::NotCoordinator, why)),
            Err(e) => Err(e),
        }
    }
}
