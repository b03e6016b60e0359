//! The group coordinator: consumer group membership, incremental assignment, and committed
//! offsets stored in the internal compacted topic `__consumer_offsets`.
//!
//! Membership follows Kafka's KIP-848. Members join, heartbeat and leave with one API; the
//! coordinator computes a target assignment ([`assignor`]) whenever membership, subscriptions or
//! partition counts change (each change bumps the group epoch). Each member is walked towards its
//! target: partitions it must give up are taken out of its assignment first; a partition is handed
//! to its new member only once no other member is assigned it or still reports owning it. So a
//! partition is never owned by two members at once, and members that keep their partitions keep
//! consuming through a rebalance. A member that misses its session timeout is removed. Kafka's
//! classic protocol runs on the same groups ([`classic`]).
//!
//! `__consumer_offsets` is a topic of the metadata log with several partitions spread over the
//! brokers; a group lives on the leader of its partition ([`leadership`]: Kafka's hash rule,
//! loading a partition's groups when this broker becomes its leader, dropping them when it stops,
//! and NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS / COORDINATOR_NOT_AVAILABLE for a group
//! this broker cannot serve). A commit is appended (and fsynced) to the group's partition before
//! it is acknowledged ([`offsets`]), so committed offsets survive any crash the log survives.
//! Its records ([`records`]): key `0x01 | u16 len | group | u16 len | topic | i32 partition`,
//! value `0x01 | i64 offset | i64 commit time ms | u16 len | metadata`; a null value deletes the
//! commit (group deletion).

pub mod assignor;
pub(crate) mod classic;
pub(crate) mod leadership;
pub(crate) mod offsets;
mod records;
pub(crate) mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strom_meta::image::MetadataImage;
use strom_protocol::ErrorCode;
use strom_protocol::topic::validate_topic_name;

use crate::core::coordination::Slots;
use crate::core::topics::{TopicId, Topics};
use assignor::{MemberView, Strategy, Tp};
use classic::Classic;

/// A KIP-848 heartbeat: a join (epoch 0), a heartbeat, or a leave (epoch -1).
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    /// 0: the broker's default.
    pub session_timeout_ms: u32,
    /// `None`: unchanged since the last heartbeat.
    pub subscribed: Option<BTreeSet<String>>,
    pub assignor: String,
    /// `None`: unchanged since the last heartbeat.
    pub owned: Option<BTreeSet<Tp>>,
}

/// A heartbeat's answer.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatResult {
    pub error: Option<crate::core::Failure>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    pub assignment: BTreeSet<Tp>,
}

pub use strom_protocol::topic::OFFSETS_TOPIC;

/// The settings `__consumer_offsets` is created with: compacted (the newest commit per group and
/// partition is what matters), kept forever otherwise, in 16 MiB segments.
pub(crate) fn offsets_topic_configs() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), (16u64 << 20).to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
    ])
}

/// Where the coordinator looks topics up: the metadata image (every topic of the cluster,
/// wherever its partitions are) and this broker's registry (its internal topics, and the logs
/// of `__consumer_offsets` it holds).
#[derive(Debug)]
pub(crate) struct Catalog<'a> {
    pub image: Arc<MetadataImage>,
    pub topics: &'a Topics,
}

impl Catalog<'_> {
    /// How many partitions `name` has, if it exists.
    pub fn partition_count(&self, name: &str) -> Option<i32> {
        match self.image.topics.get(name) {
            Some(t) => Some(i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)),
            None => self
                .topics
                .get(name)
                .map(|t| i32::try_from(t.count).unwrap_or(i32::MAX)),
        }
    }

    /// Whether partition `partition` of `name` exists (on any broker).
    pub fn has_partition(&self, name: &str, partition: i32) -> bool {
        partition >= 0 && self.partition_count(name).is_some_and(|n| partition < n)
    }

    /// The topic id of `name`, if it exists.
    pub fn topic_id(&self, name: &str) -> Option<TopicId> {
        match self.image.topics.get(name) {
            Some(t) => Some(crate::core::cluster::local_id(t.id)),
            None => self.topics.get(name).map(|t| t.id),
        }
    }

    /// The name of the topic with id `id`, if one has it.
    pub fn topic_name(&self, id: &TopicId) -> Option<String> {
        self.image
            .topics
            .iter()
            .find(|(_, t)| crate::core::cluster::local_id(t.id) == *id)
            .map(|(name, _)| name.clone())
            .or_else(|| self.topics.get_by_id(id).map(|t| t.name.to_string()))
    }
}

/// Tells whether a group id belongs to another kind of group.
pub(crate) struct TakenIds(pub Box<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for TakenIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TakenIds")
    }
}

/// Session timeout bounds and default, in ms.
#[derive(Debug, Clone, Copy)]
pub struct SessionBounds {
    /// Smallest session timeout a member may ask for.
    pub min_ms: u32,
    /// Largest.
    pub max_ms: u32,
    /// When the member asks for none.
    pub default_ms: u32,
}

#[derive(Debug)]
struct Member {
    epoch: i32,
    topics: BTreeSet<String>,
    session_ms: u32,
    deadline: Instant,
    /// What the coordinator told it to consume.
    assigned: BTreeSet<Tp>,
    /// What it last reported owning.
    owned: BTreeSet<Tp>,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    strategy: Strategy,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, BTreeSet<Tp>>,
    /// Partition counts of the subscribed topics when `target` was computed.
    computed_for: BTreeMap<String, i32>,
    offsets: BTreeMap<Tp, (i64, Option<String>)>,
    /// Members of Kafka's classic protocol (a group has members of one protocol at a time).
    classic: Classic,
}

impl Group {
    /// Members of either protocol.
    fn member_count(&self) -> usize {
        self.members.len() + self.classic.members.len()
    }

    /// Recomputes the target assignment for the group's current members and partitions.
    fn recompute(&mut self, partitions: BTreeMap<String, i32>) {
        self.epoch += 1;
        let views: Vec<MemberView<'_>> = self
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id,
                topics: &m.topics,
                current: &m.assigned,
            })
            .collect();
        self.target = assignor::assign(self.strategy, &views, &partitions);
        self.computed_for = partitions;
    }

    /// Walks one member towards its target: keep what stays, drop what goes, add what is free.
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let busy: BTreeSet<Tp> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.owned.iter()).cloned())
            .collect();
        let group_epoch = self.epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        let keep: BTreeSet<Tp> = m.assigned.intersection(&target).cloned().collect();
        let add: BTreeSet<Tp> = target
            .difference(&keep)
            .filter(|tp| !busy.contains(*tp))
            .cloned()
            .collect();
        m.assigned = keep.union(&add).cloned().collect();
        // The member reaches the group's epoch once it holds nothing it must give up.
        if m.owned.is_subset(&target) {
            m.epoch = group_epoch;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the coordinator's lock guards: the groups of the `__consumer_offsets` partitions this
/// broker leads, and which partitions those are.
#[derive(Debug)]
pub(crate) struct State {
    groups: HashMap<String, Group>,
    /// Each partition of `__consumer_offsets` as this broker last followed the metadata image.
    slots: Slots,
}

impl Default for State {
    fn default() -> Self {
        Self {
            groups: HashMap::new(),
            slots: Slots::new(OFFSETS_TOPIC, "group"),
        }
    }
}

/// The coordinator of the groups of the `__consumer_offsets` partitions this broker leads.
#[derive(Debug)]
pub struct Coordinator {
    state: Mutex<State>,
    /// Held while this broker creates `__consumer_offsets`, so concurrent first requests create
    /// it once.
    creating: tokio::sync::Mutex<()>,
    /// Group ids taken by another kind of group (queue groups), which members of consumer
    /// groups may not join; set once at start-up.
    taken: std::sync::OnceLock<TakenIds>,
    bounds: SessionBounds,
    /// How long a classic group's first join phase waits for more members.
    initial_rebalance_delay: Duration,
    next_member: AtomicU64,
}

impl Coordinator {
    /// A coordinator with no groups; it coordinates nothing until it follows the metadata image
    /// ([`Coordinator::follow`]).
    pub fn new(bounds: SessionBounds, initial_rebalance_delay: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            creating: tokio::sync::Mutex::new(()),
            taken: std::sync::OnceLock::new(),
            bounds,
            initial_rebalance_delay,
            next_member: AtomicU64::new(1),
        }
    }

    /// A coordinator that leads the one partition of a one-partition `__consumer_offsets`, so
    /// every group is its own (unit tests of the group logic).
    #[cfg(test)]
    pub(crate) fn leading_everything(
        bounds: SessionBounds,
        initial_rebalance_delay: Duration,
    ) -> Self {
        let c = Self::new(bounds, initial_rebalance_delay);
        c.lock()
            .slots
            .set(vec![crate::core::coordination::Slot::Ready(0)]);
        c
    }

    /// Sets what says a group id belongs to another kind of group (once; later calls do
    /// nothing).
    pub fn refuse_ids(&self, taken: TakenIds) {
        let _ = self.taken.set(taken);
    }

    /// INCONSISTENT_GROUP_PROTOCOL if `group_id` is another kind of group's.
    pub(crate) fn check_not_taken(&self, group_id: &str) -> Result<(), crate::core::Failure> {
        if self.taken.get().is_some_and(|taken| (taken.0)(group_id)) {
            return Err((
                ErrorCode::InconsistentGroupProtocol,
                format!("{group_id} is a queue group, not a consumer group"),
            ));
        }
        Ok(())
    }

    /// Whether a consumer group of this name exists here (members or committed offsets).
    pub fn exists(&self, group_id: &str) -> bool {
        self.lock()
            .groups
            .get(group_id)
            .is_some_and(|g| g.member_count() > 0 || !g.offsets.is_empty())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn partition_counts(
        catalog: &Catalog<'_>,
        subscribed: &BTreeSet<String>,
    ) -> BTreeMap<String, i32> {
        subscribed
            .iter()
            .filter_map(|t| catalog.partition_count(t).map(|n| (t.clone(), n)))
            .collect()
    }

    /// Joins, heartbeats or leaves (KIP-848).
    pub fn heartbeat(&self, catalog: &Catalog<'_>, req: Heartbeat) -> HeartbeatResult {
        let fail = |code: ErrorCode, msg: String| HeartbeatResult {
            error: Some((code, msg)),
            member_id: req.member_id.clone(),
            member_epoch: -1,
            heartbeat_interval_ms: 0,
            assignment: BTreeSet::new(),
        };
        if req.group_id.is_empty() {
            return fail(ErrorCode::InvalidRequest, "group id is empty".into());
        }
        let now = Instant::now();
        let mut state = self.lock();
        if let Err((code, msg)) = state.serve(&req.group_id) {
            return fail(code, msg);
        }
        let groups = &mut state.groups;
        // Leave.
        if req.member_epoch == -1 {
            if let Some(g) = groups.get_mut(&req.group_id)
                && g.members.remove(&req.member_id).is_some()
            {
                g.target.remove(&req.member_id);
                let subscribed = g.members.values().flat_map(|m| m.topics.clone()).collect();
                g.recompute(Self::partition_counts(catalog, &subscribed));
                tracing::info!(group = %req.group_id, member = %req.member_id, epoch = g.epoch, "member left");
            }
            return HeartbeatResult {
                error: None,
                member_id: req.member_id,
                member_epoch: -1,
                heartbeat_interval_ms: 0,
                assignment: BTreeSet::new(),
            };
        }
        let mut member_id = req.member_id.clone();
        let mut changed = false;
        if req.member_epoch == 0 {
            // Join.
            let Some(subs) = &req.subscribed else {
                return fail(
                    ErrorCode::InvalidRequest,
                    "a join must name its topics".into(),
                );
            };
            if subs.is_empty() {
                return fail(
                    ErrorCode::InvalidRequest,
                    "a join must name at least one topic".into(),
                );
            }
            if let Some(bad) = subs.iter().find(|t| validate_topic_name(t).is_err()) {
                return fail(
                    ErrorCode::InvalidTopicName,
                    format!("invalid topic name {bad:?}"),
                );
            }
            let session_ms = if req.session_timeout_ms == 0 {
                self.bounds.default_ms
            } else {
                req.session_timeout_ms
            };
            if !(self.bounds.min_ms..=self.bounds.max_ms).contains(&session_ms) {
                return fail(
                    ErrorCode::InvalidRequest,
                    format!(
                        "session timeout {session_ms} ms is outside {}..={} ms",
                        self.bounds.min_ms, self.bounds.max_ms
                    ),
                );
            }
            let Some(strategy) = Strategy::parse(&req.assignor) else {
                return fail(
                    ErrorCode::InvalidRequest,
                    format!("unknown assignor {:?}", req.assignor),
                );
            };
            if let Err((code, msg)) = self.check_not_taken(&req.group_id) {
                return fail(code, msg);
            }
            let group = groups.entry(req.group_id.clone()).or_default();
            if !group.classic.members.is_empty() {
                return fail(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group {} has members of Kafka's classic protocol",
                        req.group_id
                    ),
                );
            }
            if group.members.is_empty() {
                group.strategy = strategy;
            }
            if member_id.is_empty() || group.members.contains_key(&member_id) {
                let n = self.next_member.fetch_add(1, Ordering::Relaxed);
                member_id = format!("{}-{n}-{:x}", req.group_id, now_ms());
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    epoch: 0,
                    topics: subs.clone(),
                    session_ms,
                    deadline: now + Duration::from_millis(u64::from(session_ms)),
                    assigned: BTreeSet::new(),
                    owned: BTreeSet::new(),
                },
            );
            tracing::info!(group = %req.group_id, member = %member_id, "member joined");
            changed = true;
        }
        let Some(group) = groups.get_mut(&req.group_id) else {
            return fail(
                ErrorCode::UnknownMemberId,
                "no such group member; rejoin".into(),
            );
        };
        let Some(m) = group.members.get_mut(&member_id) else {
            return fail(
                ErrorCode::UnknownMemberId,
                "no such group member; rejoin".into(),
            );
        };
        m.deadline = now + Duration::from_millis(u64::from(m.session_ms));
        if let Some(owned) = req.owned {
            m.owned = owned;
        }
        if let Some(new) = &req.subscribed
            && req.member_epoch != 0
            && *new != m.topics
        {
            if let Some(bad) = new.iter().find(|t| validate_topic_name(t).is_err()) {
                return fail(
                    ErrorCode::InvalidTopicName,
                    format!("invalid topic name {bad:?}"),
                );
            }
            m.topics = new.clone();
            changed = true;
        }
        let session_ms = m.session_ms;
        // New topics or partitions of subscribed topics change the target too.
        let subscribed: BTreeSet<String> = group
            .members
            .values()
            .flat_map(|m| m.topics.clone())
            .collect();
        let counts = Self::partition_counts(catalog, &subscribed);
        if changed || counts != group.computed_for {
            group.recompute(counts);
        }
        group.reconcile(&member_id);
        let m = &group.members[&member_id];
        HeartbeatResult {
            error: None,
            member_id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: (session_ms / 3).clamp(100, 3000),
            assignment: m.assigned.clone(),
        }
    }

    /// Removes members whose session expired. Returns how many were removed.
    pub fn expire(&self, catalog: &Catalog<'_>) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        let mut state = self.lock();
        let groups = &mut state.groups;
        for (name, g) in groups.iter_mut() {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let dead_classic = g.classic.tick(now, self.initial_rebalance_delay);
            for id in &dead_classic {
                tracing::info!(group = %name, member = %id, "classic member session expired");
            }
            removed += dead_classic.len();
            if dead.is_empty() {
                continue;
            }
            for id in &dead {
                g.members.remove(id);
                g.target.remove(id);
                tracing::info!(group = %name, member = %id, "member session expired");
            }
            removed += dead.len();
            let subscribed = g.members.values().flat_map(|m| m.topics.clone()).collect();
            g.recompute(Self::partition_counts(catalog, &subscribed));
        }
        groups.retain(|_, g| g.member_count() > 0 || !g.offsets.is_empty() || !g.classic.is_idle());
        removed
    }
}
