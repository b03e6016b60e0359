//! The group coordinator: consumer group membership, incremental assignment, and committed
//! offsets stored in the internal compacted topic `__consumer_offsets`.
//!
//! Membership follows Kafka's KIP-848. Members join, heartbeat and leave with one API; the
//! coordinator computes a target assignment ([`assignor`]) whenever membership, subscriptions or
//! partition counts change (each change bumps the group epoch). Each member is walked towards its
//! target: partitions it must give up are taken out of its assignment first; a partition is handed
//! to its new member only once no other member is assigned it or still reports owning it. So a
//! partition is never owned by two members at once, and members that keep their partitions keep
//! consuming through a rebalance. A member that misses its session timeout is removed.
//!
//! A commit is appended (and fsynced) to `__consumer_offsets` before it is acknowledged; the
//! coordinator rebuilds its offset table from that log at start-up, so committed offsets survive
//! any crash the log survives. Records: key `0x01 | u16 len | group | u16 len | topic | i32
//! partition`, value `0x01 | i64 offset | i64 commit time ms | u16 len | metadata`; a null value
//! deletes the commit (group deletion).

pub mod assignor;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchBuilder, BatchIter, RecordRef, Records};
use strom_protocol::messages::*;
use strom_protocol::topic::validate_topic_name;
use strom_storage::ValidBatch;

use crate::core::partition::Durability;
use crate::core::topics::Topics;
use crate::error::BrokerError;
use assignor::{MemberView, Strategy, Tp};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

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
}

impl Group {
    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.members.iter().all(|(id, m)| {
            m.epoch == self.epoch && self.target.get(id).is_some_and(|t| *t == m.assigned)
        }) {
            "stable"
        } else {
            "reconciling"
        }
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

/// Committed-offset records.
fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + group.len() + topic.len());
    k.push(1);
    k.extend_from_slice(&(group.len() as u16).to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn offset_value(offset: i64, now_ms: i64, metadata: Option<&str>) -> Vec<u8> {
    let meta = metadata.unwrap_or("").as_bytes();
    let mut v = Vec::with_capacity(19 + meta.len());
    v.push(1);
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&now_ms.to_be_bytes());
    v.extend_from_slice(&(meta.len() as u16).to_be_bytes());
    v.extend_from_slice(meta);
    v
}

fn parse_key(k: &[u8]) -> Option<(String, String, i32)> {
    let mut r = k.strip_prefix(&[1])?;
    let mut string = || -> Option<String> {
        let (len, rest) = r.split_at_checked(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let (s, rest) = rest.split_at_checked(len)?;
        r = rest;
        String::from_utf8(s.to_vec()).ok()
    };
    let group = string()?;
    let topic = string()?;
    let p = i32::from_be_bytes(r.try_into().ok()?);
    Some((group, topic, p))
}

fn parse_value(v: &[u8]) -> Option<(i64, Option<String>)> {
    let r = v.strip_prefix(&[1])?;
    let offset = i64::from_be_bytes(r.get(..8)?.try_into().ok()?);
    let len = u16::from_be_bytes(r.get(16..18)?.try_into().ok()?) as usize;
    let meta = std::str::from_utf8(r.get(18..18 + len)?).ok()?;
    Some((offset, (!meta.is_empty()).then(|| meta.to_string())))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn to_wire(set: &BTreeSet<Tp>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(list: &[TopicPartitions]) -> BTreeSet<Tp> {
    list.iter()
        .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.clone(), p)))
        .collect()
}

/// The coordinator of every group.
#[derive(Debug)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    bounds: SessionBounds,
    next_member: AtomicU64,
}

impl Coordinator {
    /// Creates `__consumer_offsets` if needed and rebuilds the committed offsets from it.
    pub async fn load(topics: &Topics, bounds: SessionBounds) -> Result<Self, BrokerError> {
        if topics.get(OFFSETS_TOPIC).is_none() {
            let mut overrides = BTreeMap::new();
            overrides.insert("cleanup.policy".to_string(), "compact".to_string());
            overrides.insert("segment.bytes".to_string(), (16u64 << 20).to_string());
            overrides.insert("retention.ms".to_string(), "-1".to_string());
            topics
                .create(OFFSETS_TOPIC, 1, overrides)
                .await
                .map_err(|(_, reason)| BrokerError::Config {
                    key: OFFSETS_TOPIC.into(),
                    reason,
                })?;
        }
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut loaded = 0usize;
        if let Some(part) = topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partition(0).cloned())
        {
            let reader = part.reader();
            let mut offset = reader.start_offset();
            while offset < reader.end_offset() {
                let r = reader.read(offset, 1 << 20)?;
                if r.data.is_empty() {
                    break;
                }
                for item in BatchIter::new(&r.data) {
                    let Ok((range, _)) = item else { break };
                    let Ok(records) = Records::new(r.data.slice(range)) else {
                        continue;
                    };
                    for rec in records.flatten() {
                        if rec.offset < offset {
                            continue;
                        }
                        let Some((g, t, p)) = rec.key.as_deref().and_then(parse_key) else {
                            continue;
                        };
                        let group = groups.entry(g).or_default();
                        match rec.value.as_deref().and_then(parse_value) {
                            Some(v) => {
                                group.offsets.insert((t, p), v);
                            }
                            None => {
                                group.offsets.remove(&(t, p));
                            }
                        }
                        loaded += 1;
                    }
                }
                offset = r.next_offset;
            }
        }
        groups.retain(|_, g| !g.offsets.is_empty());
        tracing::info!(
            groups = groups.len(),
            records = loaded,
            "group offsets loaded"
        );
        Ok(Self {
            groups: Mutex::new(groups),
            bounds,
            next_member: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        match self.groups.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn partition_counts(topics: &Topics, subscribed: &BTreeSet<String>) -> BTreeMap<String, i32> {
        subscribed
            .iter()
            .filter_map(|t| {
                topics
                    .get(t)
                    .map(|topic| (t.clone(), topic.partitions.len() as i32))
            })
            .collect()
    }

    /// Joins, heartbeats or leaves.
    pub fn heartbeat(&self, topics: &Topics, req: GroupHeartbeatRequest) -> GroupHeartbeatResponse {
        let fail = |code: ErrorCode, msg: String| GroupHeartbeatResponse {
            error_code: code.into(),
            error_message: Some(msg),
            member_id: req.member_id.clone(),
            member_epoch: -1,
            heartbeat_interval_ms: 0,
            assignment: Vec::new(),
        };
        if req.group_id.is_empty() {
            return fail(ErrorCode::InvalidRequest, "group id is empty".into());
        }
        let now = Instant::now();
        let mut groups = self.lock();
        // Leave.
        if req.member_epoch == -1 {
            if let Some(g) = groups.get_mut(&req.group_id)
                && g.members.remove(&req.member_id).is_some()
            {
                g.target.remove(&req.member_id);
                let subscribed = g.members.values().flat_map(|m| m.topics.clone()).collect();
                g.recompute(Self::partition_counts(topics, &subscribed));
                tracing::info!(group = %req.group_id, member = %req.member_id, epoch = g.epoch, "member left");
            }
            return GroupHeartbeatResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                member_id: req.member_id,
                member_epoch: -1,
                heartbeat_interval_ms: 0,
                assignment: Vec::new(),
            };
        }
        let mut member_id = req.member_id.clone();
        let mut changed = false;
        if req.member_epoch == 0 {
            // Join.
            let Some(subs) = &req.subscribed_topics else {
                return fail(
                    ErrorCode::InvalidRequest,
                    "a join must name its topics".into(),
                );
            };
            if subs.names.is_empty() {
                return fail(
                    ErrorCode::InvalidRequest,
                    "a join must name at least one topic".into(),
                );
            }
            if let Some(bad) = subs.names.iter().find(|t| validate_topic_name(t).is_err()) {
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
            let group = groups.entry(req.group_id.clone()).or_default();
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
                    topics: subs.names.iter().cloned().collect(),
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
        m.owned = from_wire(&req.owned_partitions);
        if let Some(subs) = &req.subscribed_topics {
            let new: BTreeSet<String> = subs.names.iter().cloned().collect();
            if req.member_epoch != 0 && new != m.topics {
                if let Some(bad) = new.iter().find(|t| validate_topic_name(t).is_err()) {
                    return fail(
                        ErrorCode::InvalidTopicName,
                        format!("invalid topic name {bad:?}"),
                    );
                }
                m.topics = new;
                changed = true;
            }
        }
        let session_ms = m.session_ms;
        // New topics or partitions of subscribed topics change the target too.
        let subscribed: BTreeSet<String> = group
            .members
            .values()
            .flat_map(|m| m.topics.clone())
            .collect();
        let counts = Self::partition_counts(topics, &subscribed);
        if changed || counts != group.computed_for {
            group.recompute(counts);
        }
        group.reconcile(&member_id);
        let m = &group.members[&member_id];
        GroupHeartbeatResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            member_id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: (session_ms / 3).clamp(100, 3000),
            assignment: to_wire(&m.assigned),
        }
    }

    /// Removes members whose session expired. Returns how many were removed.
    pub fn expire(&self, topics: &Topics) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
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
            g.recompute(Self::partition_counts(topics, &subscribed));
        }
        groups.retain(|_, g| !g.members.is_empty() || !g.offsets.is_empty());
        removed
    }

    /// Validates and stores a commit. The records are appended (fsynced) to `__consumer_offsets`
    /// before the in-memory table changes and before the answer.
    pub async fn commit(&self, topics: &Topics, req: OffsetCommitRequest) -> OffsetCommitResponse {
        let fail = |code: ErrorCode, msg: String| OffsetCommitResponse {
            error_code: code.into(),
            error_message: Some(msg),
            topics: Vec::new(),
        };
        if req.group_id.is_empty() {
            return fail(ErrorCode::InvalidRequest, "group id is empty".into());
        }
        {
            let groups = self.lock();
            let group = groups.get(&req.group_id);
            let members = group.map_or(0, |g| g.members.len());
            if req.member_id.is_empty() && req.member_epoch < 0 {
                if members > 0 {
                    return fail(
                        ErrorCode::NonEmptyGroup,
                        format!(
                            "group {} has {members} members; stop them first",
                            req.group_id
                        ),
                    );
                }
            } else {
                match group.and_then(|g| g.members.get(&req.member_id)) {
                    None => {
                        return fail(
                            ErrorCode::UnknownMemberId,
                            "not a member of the group".into(),
                        );
                    }
                    Some(m) if m.epoch != req.member_epoch => {
                        return fail(
                            ErrorCode::IllegalGeneration,
                            format!(
                                "member epoch {} is stale; the member is at {}",
                                req.member_epoch, m.epoch
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        let now = now_ms();
        let mut builder = BatchBuilder::default();
        let mut results = Vec::with_capacity(req.topics.len());
        let mut accepted: Vec<(Tp, i64, Option<String>)> = Vec::new();
        for t in &req.topics {
            let topic = topics.get(&t.name);
            let mut parts = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let code = if topic
                    .as_ref()
                    .and_then(|x| x.partition(p.partition))
                    .is_none()
                {
                    ErrorCode::UnknownTopicOrPartition
                } else if p.offset < 0 {
                    ErrorCode::InvalidRequest
                } else {
                    let key = offset_key(&req.group_id, &t.name, p.partition);
                    let value = offset_value(p.offset, now, p.metadata.as_deref());
                    if builder
                        .push(&RecordRef {
                            timestamp: now,
                            key: Some(&key),
                            value: Some(&value),
                            headers: &[],
                        })
                        .is_err()
                    {
                        ErrorCode::InvalidRequest
                    } else {
                        accepted.push((
                            (t.name.clone(), p.partition),
                            p.offset,
                            p.metadata.clone(),
                        ));
                        ErrorCode::None
                    }
                };
                parts.push(OffsetCommitPartitionResponse {
                    partition: p.partition,
                    error_code: code.into(),
                });
            }
            results.push(OffsetCommitTopicResponse {
                name: t.name.clone(),
                partitions: parts,
            });
        }
        if !accepted.is_empty()
            && let Err((code, msg)) = self.append(topics, builder).await
        {
            return fail(code, msg);
        }
        let mut groups = self.lock();
        let group = groups.entry(req.group_id.clone()).or_default();
        for (tp, offset, meta) in accepted {
            group.offsets.insert(tp, (offset, meta));
        }
        OffsetCommitResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            topics: results,
        }
    }

    async fn append(
        &self,
        topics: &Topics,
        builder: BatchBuilder,
    ) -> Result<(), (ErrorCode, String)> {
        let bytes: Bytes = builder
            .finish()
            .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let batch =
            ValidBatch::new(bytes).map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let part = topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partition(0).cloned())
            .ok_or((
                ErrorCode::CoordinatorNotAvailable,
                "the offsets log is missing".into(),
            ))?;
        match part.append(vec![batch], Durability::Fsynced).await.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err((
                ErrorCode::CoordinatorNotAvailable,
                "the offsets log stopped".into(),
            )),
        }
    }

    /// Committed offsets of a group (all, or the ones asked for).
    pub fn fetch(&self, req: &OffsetFetchRequest) -> OffsetFetchResponse {
        let groups = self.lock();
        let group = groups.get(&req.group_id);
        let mut by_topic: BTreeMap<String, Vec<OffsetFetchPartitionResponse>> = BTreeMap::new();
        let entry = |tp: &Tp| {
            let found = group.and_then(|g| g.offsets.get(tp));
            OffsetFetchPartitionResponse {
                partition: tp.1,
                offset: found.map_or(-1, |v| v.0),
                metadata: found.and_then(|v| v.1.clone()),
                error_code: ErrorCode::None.into(),
            }
        };
        if req.topics.is_empty() {
            if let Some(g) = group {
                for tp in g.offsets.keys() {
                    by_topic.entry(tp.0.clone()).or_default().push(entry(tp));
                }
            }
        } else {
            for t in &req.topics {
                for &p in &t.partitions {
                    by_topic
                        .entry(t.topic.clone())
                        .or_default()
                        .push(entry(&(t.topic.clone(), p)));
                }
            }
        }
        OffsetFetchResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            topics: by_topic
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopicResponse { name, partitions })
                .collect(),
        }
    }

    /// Every group with members or committed offsets.
    pub fn list(&self) -> ListGroupsResponse {
        let groups = self.lock();
        let mut out: Vec<ListedGroup> = groups
            .iter()
            .map(|(id, g)| ListedGroup {
                group_id: id.clone(),
                state: g.state().to_string(),
                members: g.members.len() as u32,
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        ListGroupsResponse { groups: out }
    }

    /// State, members and offsets (with lag) of groups.
    pub fn describe(&self, topics: &Topics, names: &[String]) -> DescribeGroupsResponse {
        let groups = self.lock();
        let described = names
            .iter()
            .map(|name| match groups.get(name) {
                None => DescribedGroup {
                    group_id: name.clone(),
                    error_code: ErrorCode::GroupIdNotFound.into(),
                    error_message: Some(format!("no group {name}")),
                    state: "dead".into(),
                    group_epoch: -1,
                    assignor: String::new(),
                    members: Vec::new(),
                    offsets: Vec::new(),
                },
                Some(g) => DescribedGroup {
                    group_id: name.clone(),
                    error_code: ErrorCode::None.into(),
                    error_message: None,
                    state: g.state().into(),
                    group_epoch: g.epoch,
                    assignor: g.strategy.name().into(),
                    members: g
                        .members
                        .iter()
                        .map(|(id, m)| GroupMember {
                            member_id: id.clone(),
                            member_epoch: m.epoch,
                            subscribed_topics: m.topics.iter().cloned().collect(),
                            assignment: to_wire(&m.assigned),
                            session_timeout_ms: m.session_ms,
                        })
                        .collect(),
                    offsets: g
                        .offsets
                        .iter()
                        .map(|((t, p), (offset, meta))| {
                            let end = topics
                                .get(t)
                                .and_then(|x| x.partition(*p).map(|q| q.reader().end_offset()))
                                .unwrap_or(-1);
                            GroupOffset {
                                topic: t.clone(),
                                partition: *p,
                                committed_offset: *offset,
                                log_end_offset: end,
                                lag: if end < 0 { -1 } else { (end - offset).max(0) },
                                metadata: meta.clone(),
                            }
                        })
                        .collect(),
                },
            })
            .collect();
        DescribeGroupsResponse { groups: described }
    }

    /// Deletes empty groups: tombstones for their offsets, appended before the answer.
    pub async fn delete(&self, topics: &Topics, names: &[String]) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let (code, msg, doomed) = {
                let groups = self.lock();
                match groups.get(name) {
                    None => (
                        ErrorCode::GroupIdNotFound,
                        Some(format!("no group {name}")),
                        Vec::new(),
                    ),
                    Some(g) if !g.members.is_empty() => (
                        ErrorCode::NonEmptyGroup,
                        Some(format!("group {name} has {} members", g.members.len())),
                        Vec::new(),
                    ),
                    Some(g) => (ErrorCode::None, None, g.offsets.keys().cloned().collect()),
                }
            };
            if code != ErrorCode::None {
                results.push(DeletedGroup {
                    group_id: name.clone(),
                    error_code: code.into(),
                    error_message: msg,
                });
                continue;
            }
            let mut builder = BatchBuilder::default();
            let now = now_ms();
            for (t, p) in &doomed {
                let key = offset_key(name, t, *p);
                let _ = builder.push(&RecordRef {
                    timestamp: now,
                    key: Some(&key),
                    value: None,
                    headers: &[],
                });
            }
            let result = if doomed.is_empty() {
                Ok(())
            } else {
                self.append(topics, builder).await
            };
            match result {
                Ok(()) => {
                    self.lock().remove(name);
                    tracing::info!(group = %name, "group deleted");
                    results.push(DeletedGroup {
                        group_id: name.clone(),
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                    });
                }
                Err((code, msg)) => results.push(DeletedGroup {
                    group_id: name.clone(),
                    error_code: code.into(),
                    error_message: Some(msg),
                }),
            }
        }
        DeleteGroupsResponse { results }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let k = offset_key("g", "orders", 7);
        assert_eq!(parse_key(&k), Some(("g".into(), "orders".into(), 7)));
        let v = offset_value(42, 1, Some("meta"));
        assert_eq!(parse_value(&v), Some((42, Some("meta".into()))));
        assert_eq!(parse_value(&offset_value(3, 1, None)), Some((3, None)));
        assert_eq!(parse_key(&k[..k.len() - 1]), None);
        assert_eq!(parse_value(&v[..5]), None);
    }
}
