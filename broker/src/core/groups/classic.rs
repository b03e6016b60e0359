//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), which every
//! Kafka consumer speaks by default, on the same coordinator and offset table as the KIP-848
//! members of `super`.
//!
//! The broker runs the membership; the members assign. A rebalance has two phases:
//! - **join** (`PreparingRebalance`): every member must (re)join; joins are held until all known
//!   members have joined or the rebalance timeout passes (members that did not rejoin are
//!   removed). A new, empty group first waits `group_initial_rebalance_delay_ms`, so members
//!   started together land in one rebalance. The join completes with a new generation, a
//!   protocol every member supports, and a leader, which alone receives the members' metadata;
//! - **sync** (`CompletingRebalance`): the leader sends every member's assignment; each
//!   member's held SyncGroup is answered with its own, and the group is `Stable`.
//!
//! Heartbeats keep members alive and tell them (REBALANCE_IN_PROGRESS) to rejoin. A member
//! that misses its session timeout is removed and the group rebalances. Static members
//! (`group.instance.id`) keep their assignment across a restart within the session timeout: a
//! rejoin with a known instance id takes over the old member's place (fencing the old member
//! id) without a rebalance when the group is stable and its protocols are unchanged.
//! Assignments are opaque bytes here; the front-end passes their decoded partitions too, so
//! `strom groups describe` can show them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::ErrorCode;
use tokio::sync::oneshot;

use super::{Coordinator, Group, Tp, now_ms};
use crate::core::Failure;

/// Where a classic group is in its rebalance cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassicState {
    /// No members.
    #[default]
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignments.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

/// A group's classic-protocol state.
#[derive(Debug, Default)]
pub(super) struct Classic {
    pub state: ClassicState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// When the running join phase ends at the latest.
    join_deadline: Option<Instant>,
    /// Before this, a join phase that began on an empty group waits for more members.
    initial_until: Option<Instant>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until their join (or expiry).
    pending_ids: BTreeMap<String, Instant>,
}

/// A member of a classic group.
#[derive(Debug)]
pub(super) struct ClassicMember {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_ms: u32,
    rebalance_ms: u32,
    deadline: Instant,
    pub protocols: Vec<(String, Bytes)>,
    /// The subscribed topics, decoded by the front-end (for describe).
    pub topics: BTreeSet<String>,
    pub assignment: Bytes,
    /// The assignment's partitions, decoded by the front-end (for describe).
    pub assigned: BTreeSet<Tp>,
    join: Option<oneshot::Sender<JoinResult>>,
    sync: Option<oneshot::Sender<SyncResult>>,
}

impl ClassicMember {
    /// This member's metadata for `protocol`.
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(n, _)| n == p))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A JoinGroup, as the front-end hands it to the coordinator.
#[derive(Debug)]
pub(crate) struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_ms: u32,
    pub rebalance_ms: u32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// The subscribed topics, when the front-end could decode them.
    pub topics: BTreeSet<String>,
    /// Version 4 and later: a new dynamic member first gets its id with MEMBER_ID_REQUIRED.
    pub require_known_member: bool,
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct JoinResult {
    pub error: Option<Failure>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member's (id, instance id, metadata for the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader may keep the current assignment instead of computing one (KIP-814).
    pub skip_assignment: bool,
}

impl JoinResult {
    fn failed(member_id: &str, code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            error: Some((code, msg.into())),
            generation: -1,
            member_id: member_id.to_string(),
            ..Self::default()
        }
    }
}

/// A SyncGroup's answer: (protocol type, protocol, this member's assignment).
pub(crate) type SyncResult = Result<(Option<String>, Option<String>, Bytes), Failure>;

/// One member's assignment in the leader's SyncGroup: (member id, bytes, decoded partitions).
pub(crate) type MemberAssignment = (String, Bytes, BTreeSet<Tp>);

/// Whether a static member's restart leaves its subscription as it was: the same protocols, and the
/// same topics where the front-end could decode them (a consumer's metadata also carries the
/// partitions it owns and its generation, which a restarted static member no longer has;
/// Kafka compares subscriptions, not bytes), else the same metadata bytes.
fn same_subscription(
    m: &ClassicMember,
    protocols: &[(String, Bytes)],
    topics: &BTreeSet<String>,
) -> bool {
    let names = |p: &[(String, Bytes)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(&m.protocols) != names(protocols) {
        return false;
    }
    if !topics.is_empty() || !m.topics.is_empty() {
        return m.topics == *topics;
    }
    m.protocols == protocols
}

fn answered<T>(value: T) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(value);
    rx
}

impl Classic {
    /// No members and no member ids handed out: nothing to keep the group for.
    pub(super) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending_ids.is_empty()
    }

    fn member_by_instance(&self, instance: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone())
    }

    /// The current generation's join answer for a member that needs no rebalance. The leader
    /// (a static leader restarting) still gets the members, as every leader must: a client
    /// that runs its assignor on an empty list may crash (librdkafka's sticky assignor does);
    /// with `skip_assignment` (KIP-814) a new client keeps the assignment it will sync.
    fn current_join(&self, member_id: String) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let is_leader = leader == member_id;
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            members: if is_leader {
                self.member_list()
            } else {
                Vec::new()
            },
            skip_assignment: is_leader,
            leader,
            member_id,
        }
    }

    /// Every member's (id, instance id, metadata for the chosen protocol), for the leader.
    fn member_list(&self) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.instance_id.clone(),
                    m.metadata(self.protocol.as_deref()),
                )
            })
            .collect()
    }

    /// Checks a request's member id (and instance id) against the group.
    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), Failure> {
        if let Some(instance) = instance_id
            && let Some(current) = self.member_by_instance(instance)
            && current != member_id
        {
            return Err((
                ErrorCode::FencedInstanceId,
                format!("instance {instance} is now member {current}"),
            ));
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err((
                ErrorCode::UnknownMemberId,
                format!("no member {member_id} in the group; rejoin"),
            ))
        }
    }

    /// Starts a join phase (or keeps the running one): members must rejoin.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == ClassicState::PreparingRebalance {
            return;
        }
        if self.state == ClassicState::CompletingRebalance {
            // Members waiting for their assignment must rejoin instead.
            for m in self.members.values_mut() {
                if let Some(tx) = m.sync.take() {
                    let _ = tx.send(Err((
                        ErrorCode::RebalanceInProgress,
                        "the group is rebalancing; rejoin".into(),
                    )));
                }
            }
        }
        let rebalance = self
            .members
            .values()
            .map(|m| m.rebalance_ms)
            .max()
            .unwrap_or(0);
        let rebalance = Duration::from_millis(u64::from(rebalance));
        self.initial_until =
            (self.state == ClassicState::Empty).then(|| now + initial_delay.min(rebalance));
        self.join_deadline = Some(now + rebalance.max(initial_delay.min(rebalance)));
        self.state = ClassicState::PreparingRebalance;
    }

    /// Ends the join phase when every member has joined (after the initial delay) or the
    /// deadline passed. Returns whether it ended.
    fn maybe_complete_join(&mut self, now: Instant) -> bool {
        if self.state != ClassicState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.join.is_some());
        let waiting_initial = self.initial_until.is_some_and(|t| now < t);
        let timed_out = self.join_deadline.is_some_and(|t| now >= t);
        if !(timed_out || (all_joined && !waiting_initial)) {
            return false;
        }
        // Members that did not rejoin in time are out.
        self.members.retain(|id, m| {
            let keep = m.join.is_some();
            if !keep {
                tracing::info!(member = %id, "member did not rejoin in time; removed");
            }
            keep
        });
        self.generation += 1;
        self.join_deadline = None;
        self.initial_until = None;
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            return true;
        }
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let members = self.member_list();
        for (id, m) in self.members.iter_mut() {
            m.deadline = now + Duration::from_millis(u64::from(m.session_ms));
            if let Some(tx) = m.join.take() {
                let _ = tx.send(JoinResult {
                    error: None,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        members.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                });
            }
        }
        self.state = ClassicState::CompletingRebalance;
        true
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    fn choose_protocol(&self) -> Option<String> {
        let mut common: Option<BTreeSet<&str>> = None;
        for m in self.members.values() {
            let names: BTreeSet<&str> = m.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common = Some(match common {
                None => names,
                Some(c) => c.intersection(&names).copied().collect(),
            });
        }
        let common = common.unwrap_or_default();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| common.contains(n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, v)| *v)
            .map(|(n, _)| n.to_string())
    }

    /// Whether `protocols` can join: same protocol type, and at least one protocol in common
    /// with every member.
    fn compatible(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != protocol_type)
        {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Removes a member, answering what it waits for, and starts a rebalance for the others.
    fn remove(&mut self, member_id: &str, now: Instant, initial_delay: Duration) {
        let Some(mut m) = self.members.remove(member_id) else {
            return;
        };
        if let Some(tx) = m.join.take() {
            let _ = tx.send(JoinResult::failed(
                member_id,
                ErrorCode::UnknownMemberId,
                "removed from the group",
            ));
        }
        if let Some(tx) = m.sync.take() {
            let _ = tx.send(Err((
                ErrorCode::UnknownMemberId,
                "removed from the group".into(),
            )));
        }
        if self.members.is_empty() {
            self.generation += 1;
            self.state = ClassicState::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            self.join_deadline = None;
            self.initial_until = None;
        } else {
            self.prepare_rebalance(now, initial_delay);
            self.maybe_complete_join(now);
        }
    }

    /// Session expiry and join deadlines; returns the members removed.
    pub(super) fn tick(&mut self, now: Instant, initial_delay: Duration) -> Vec<String> {
        self.pending_ids.retain(|_, deadline| *deadline > now);
        let joining = self.state == ClassicState::PreparingRebalance;
        let dead: Vec<String> = self
            .members
            .iter()
            // A member waiting for its join is governed by the join deadline.
            .filter(|(_, m)| m.deadline <= now && !(joining && m.join.is_some()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.remove(id, now, initial_delay);
        }
        self.maybe_complete_join(now);
        dead
    }
}

impl Coordinator {
    /// Joins (or rejoins) a classic group. The answer comes once the join phase ends.
    pub fn join(&self, req: JoinRequest) -> oneshot::Receiver<JoinResult> {
        let fail = |code, msg: String| answered(JoinResult::failed(&req.member_id, code, msg));
        if req.group_id.is_empty() {
            return fail(ErrorCode::InvalidRequest, "group id is empty".into());
        }
        if !(self.bounds.min_ms..=self.bounds.max_ms).contains(&req.session_ms) {
            return fail(
                ErrorCode::InvalidSessionTimeout,
                format!(
                    "session timeout {} ms is outside {}..={} ms",
                    req.session_ms, self.bounds.min_ms, self.bounds.max_ms
                ),
            );
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(
                ErrorCode::InconsistentGroupProtocol,
                "a join must name a protocol type and at least one protocol".into(),
            );
        }
        let now = Instant::now();
        let delay = self.initial_rebalance_delay;
        if let Err((code, msg)) = self.check_not_taken(&req.group_id) {
            return fail(code, msg);
        }
        let mut state = self.lock();
        if let Err((code, msg)) = state.serve(&req.group_id) {
            return fail(code, msg);
        }
        let group: &mut Group = state.groups.entry(req.group_id.clone()).or_default();
        if !group.members.is_empty() {
            return fail(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {} has members of the consumer (KIP-848) protocol",
                    req.group_id
                ),
            );
        }
        let c = &mut group.classic;
        if !c.compatible(&req.protocol_type, &req.protocols) {
            return fail(
                ErrorCode::InconsistentGroupProtocol,
                "the member's protocols match none of the group's".into(),
            );
        }
        let (tx, rx) = oneshot::channel();
        let mut member_id = req.member_id.clone();
        let known = c.members.contains_key(&member_id);
        if let Some(instance) = req.instance_id.as_deref()
            && let Some(current) = c.member_by_instance(instance)
        {
            if !member_id.is_empty() && member_id != current {
                return fail(
                    ErrorCode::FencedInstanceId,
                    format!("instance {instance} is now member {current}"),
                );
            }
            if member_id.is_empty() {
                // A static member restarting: it takes over its old place under a new id.
                let Some(mut old) = c.members.remove(&current) else {
                    return fail(ErrorCode::UnknownMemberId, "member vanished".into());
                };
                if let Some(old_join) = old.join.take() {
                    let _ = old_join.send(JoinResult::failed(
                        &current,
                        ErrorCode::FencedInstanceId,
                        "replaced by a new member with the same instance id",
                    ));
                }
                member_id = self.new_member_id(&req.client_id);
                let unchanged = same_subscription(&old, &req.protocols, &req.topics);
                old.deadline = now + Duration::from_millis(u64::from(req.session_ms));
                old.session_ms = req.session_ms;
                old.rebalance_ms = req.rebalance_ms;
                old.protocols = req.protocols;
                old.topics = req.topics;
                old.client_id = req.client_id;
                old.client_host = req.client_host;
                if c.leader.as_deref() == Some(current.as_str()) {
                    c.leader = Some(member_id.clone());
                }
                tracing::info!(group = %req.group_id, instance, old = %current, new = %member_id, "static member rejoined");
                if unchanged && c.state == ClassicState::Stable {
                    c.members.insert(member_id.clone(), old);
                    return answered(c.current_join(member_id));
                }
                old.join = Some(tx);
                c.members.insert(member_id, old);
                c.prepare_rebalance(now, delay);
                c.maybe_complete_join(now);
                return rx;
            }
        } else if member_id.is_empty() {
            member_id = self.new_member_id(&req.client_id);
            if req.require_known_member && req.instance_id.is_none() {
                // KIP-394: the client rejoins with this id, so a lost answer leaves no ghost.
                c.pending_ids.insert(
                    member_id.clone(),
                    now + Duration::from_millis(u64::from(req.session_ms)),
                );
                return answered(JoinResult::failed(
                    &member_id,
                    ErrorCode::MemberIdRequired,
                    "rejoin with the member id given",
                ));
            }
        } else if !known && c.pending_ids.remove(&member_id).is_none() {
            return fail(
                ErrorCode::UnknownMemberId,
                format!("no member {member_id} in the group; rejoin without an id"),
            );
        }
        if c.members.is_empty() {
            c.protocol_type = Some(req.protocol_type.clone());
        }
        match c.members.get_mut(&member_id) {
            Some(m) => {
                // As Kafka: a member that rejoins with other metadata (a cooperative member
                // that gave partitions up, a new subscription) needs a rebalance.
                let unchanged = m.protocols == req.protocols;
                let is_leader = c.leader.as_deref() == Some(member_id.as_str());
                m.deadline = now + Duration::from_millis(u64::from(req.session_ms));
                m.protocols = req.protocols;
                m.topics = req.topics;
                m.session_ms = req.session_ms;
                m.rebalance_ms = req.rebalance_ms;
                let settled = matches!(
                    c.state,
                    ClassicState::Stable | ClassicState::CompletingRebalance
                );
                if settled && unchanged && !is_leader {
                    // A follower repeating its join: the current generation stands.
                    return answered(c.current_join(member_id));
                }
                m.join = Some(tx);
            }
            None => {
                tracing::info!(group = %req.group_id, member = %member_id, "classic member joined");
                c.members.insert(
                    member_id,
                    ClassicMember {
                        instance_id: req.instance_id,
                        client_id: req.client_id,
                        client_host: req.client_host,
                        session_ms: req.session_ms,
                        rebalance_ms: req.rebalance_ms,
                        deadline: now + Duration::from_millis(u64::from(req.session_ms)),
                        protocols: req.protocols,
                        topics: req.topics,
                        assignment: Bytes::new(),
                        assigned: BTreeSet::new(),
                        join: Some(tx),
                        sync: None,
                    },
                );
            }
        }
        c.prepare_rebalance(now, delay);
        c.maybe_complete_join(now);
        rx
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let n = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{client}-{n}-{:x}", now_ms())
    }

    /// SyncGroup: the leader hands in the assignments; every member gets its own once it has.
    pub fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<MemberAssignment>,
    ) -> oneshot::Receiver<SyncResult> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Err(e) = state.serve(group_id) {
            return answered(Err(e));
        }
        let Some(group) = state.groups.get_mut(group_id) else {
            return answered(Err((
                ErrorCode::UnknownMemberId,
                format!("no group {group_id}"),
            )));
        };
        let c = &mut group.classic;
        if let Err(e) = c.check_member(member_id, instance_id) {
            return answered(Err(e));
        }
        if generation != c.generation {
            return answered(Err((
                ErrorCode::IllegalGeneration,
                format!(
                    "generation {generation} is stale; the group is at {}",
                    c.generation
                ),
            )));
        }
        let (tx, rx) = oneshot::channel();
        match c.state {
            ClassicState::Empty | ClassicState::PreparingRebalance => {
                let _ = tx.send(Err((
                    ErrorCode::RebalanceInProgress,
                    "the group is rebalancing; rejoin".into(),
                )));
            }
            ClassicState::Stable => {
                if let Some(m) = c.members.get_mut(member_id) {
                    m.deadline = now + Duration::from_millis(u64::from(m.session_ms));
                    let _ = tx.send(Ok((
                        c.protocol_type.clone(),
                        c.protocol.clone(),
                        m.assignment.clone(),
                    )));
                }
            }
            ClassicState::CompletingRebalance => {
                if let Some(m) = c.members.get_mut(member_id) {
                    m.deadline = now + Duration::from_millis(u64::from(m.session_ms));
                    m.sync = Some(tx);
                }
                if c.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, (Bytes, BTreeSet<Tp>)> = assignments
                        .into_iter()
                        .map(|(id, bytes, tps)| (id, (bytes, tps)))
                        .collect();
                    for (id, m) in c.members.iter_mut() {
                        let (bytes, tps) = given.remove(id).unwrap_or_default();
                        m.assignment = bytes;
                        m.assigned = tps;
                        if let Some(tx) = m.sync.take() {
                            let _ = tx.send(Ok((
                                c.protocol_type.clone(),
                                c.protocol.clone(),
                                m.assignment.clone(),
                            )));
                        }
                    }
                    c.state = ClassicState::Stable;
                    tracing::info!(group = %group_id, generation, members = c.members.len(), "group stable");
                }
            }
        }
        rx
    }

    /// Heartbeat of a classic member: keeps it alive, and says when it must rejoin.
    pub fn classic_heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), Failure> {
        let now = Instant::now();
        let mut state = self.lock();
        state.serve(group_id)?;
        let c = &mut state
            .groups
            .get_mut(group_id)
            .ok_or_else(|| (ErrorCode::UnknownMemberId, format!("no group {group_id}")))?
            .classic;
        c.check_member(member_id, instance_id)?;
        if let Some(m) = c.members.get_mut(member_id) {
            m.deadline = now + Duration::from_millis(u64::from(m.session_ms));
        }
        if c.state == ClassicState::PreparingRebalance {
            return Err((
                ErrorCode::RebalanceInProgress,
                "the group is rebalancing; rejoin".into(),
            ));
        }
        if generation != c.generation {
            return Err((
                ErrorCode::IllegalGeneration,
                format!(
                    "generation {generation} is stale; the group is at {}",
                    c.generation
                ),
            ));
        }
        Ok(())
    }

    /// LeaveGroup: each (member id, instance id) leaves; the others rebalance. A group this
    /// broker does not coordinate is the routing error, for the whole request.
    pub fn leave(
        &self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), Failure>>, Failure> {
        let now = Instant::now();
        let delay = self.initial_rebalance_delay;
        let mut state = self.lock();
        state.serve(group_id)?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Ok(leaving
                .iter()
                .map(|_| Err((ErrorCode::UnknownMemberId, format!("no group {group_id}"))))
                .collect());
        };
        let c = &mut group.classic;
        Ok(leaving
            .iter()
            .map(|(member_id, instance_id)| {
                let id = match instance_id.as_deref() {
                    Some(instance) => {
                        let current = c.member_by_instance(instance).ok_or_else(|| {
                            (
                                ErrorCode::UnknownMemberId,
                                format!("no member with instance id {instance}"),
                            )
                        })?;
                        if !member_id.is_empty() && *member_id != current {
                            return Err((
                                ErrorCode::FencedInstanceId,
                                format!("instance {instance} is now member {current}"),
                            ));
                        }
                        current
                    }
                    None => {
                        c.check_member(member_id, None)?;
                        member_id.clone()
                    }
                };
                c.remove(&id, now, delay);
                tracing::info!(group = %group_id, member = %id, "classic member left");
                Ok(())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(member: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_ms: 10_000,
            rebalance_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            topics: BTreeSet::new(),
            require_known_member: true,
        }
    }

    fn coordinator() -> Coordinator {
        Coordinator::leading_everything(
            super::super::SessionBounds {
                min_ms: 1000,
                max_ms: 60_000,
                default_ms: 10_000,
            },
            Duration::ZERO,
        )
    }

    fn now<T: std::fmt::Debug>(mut rx: oneshot::Receiver<T>) -> T {
        rx.try_recv().expect("answered at once")
    }

    #[test]
    fn two_members_join_sync_and_rebalance_when_one_leaves() {
        let co = coordinator();
        // KIP-394: the first join only hands out an id.
        let first = now(co.join(join_req("", &["range", "roundrobin"])));
        assert_eq!(
            first.error.as_ref().map(|e| e.0),
            Some(ErrorCode::MemberIdRequired)
        );
        let a = first.member_id.clone();
        let ja = now(co.join(join_req(&a, &["range", "roundrobin"])));
        assert_eq!(ja.error, None);
        assert_eq!(ja.generation, 1);
        assert_eq!(ja.leader, a);
        assert_eq!(ja.protocol.as_deref(), Some("range"));
        assert_eq!(ja.members.len(), 1);
        let s = now(co.sync(
            "g",
            1,
            &a,
            None,
            vec![(a.clone(), Bytes::from("A"), BTreeSet::new())],
        ));
        assert_eq!(s.expect("sync").2, Bytes::from("A"));
        assert_eq!(co.classic_heartbeat("g", 1, &a, None), Ok(()));

        // A second member: its join waits for the first to rejoin.
        let b = now(co.join(join_req("", &["roundrobin"]))).member_id;
        let mut jb = co.join(join_req(&b, &["roundrobin"]));
        assert!(jb.try_recv().is_err(), "held until every member rejoined");
        let hb = co.classic_heartbeat("g", 1, &a, None);
        assert_eq!(hb.map_err(|e| e.0), Err(ErrorCode::RebalanceInProgress));
        let ja = now(co.join(join_req(&a, &["range", "roundrobin"])));
        let jb = jb.try_recv().expect("completed by the last rejoin");
        assert_eq!(ja.generation, 2);
        assert_eq!(jb.generation, 2);
        assert_eq!(
            ja.protocol.as_deref(),
            Some("roundrobin"),
            "the only common one"
        );
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty(), "only the leader sees the members");

        // The follower's sync waits for the leader's.
        let mut sb = co.sync("g", 2, &b, None, Vec::new());
        assert!(sb.try_recv().is_err());
        let stale = now(co.sync("g", 1, &a, None, Vec::new()));
        assert_eq!(stale.map_err(|e| e.0), Err(ErrorCode::IllegalGeneration));
        let sa = now(co.sync(
            "g",
            2,
            &a,
            None,
            vec![
                (a.clone(), Bytes::from("A2"), BTreeSet::new()),
                (b.clone(), Bytes::from("B2"), BTreeSet::new()),
            ],
        ));
        assert_eq!(sa.expect("leader sync").2, Bytes::from("A2"));
        assert_eq!(
            sb.try_recv().expect("answered").expect("ok").2,
            Bytes::from("B2")
        );

        // The leader leaves: the other member must rejoin, and leads generation 3.
        assert_eq!(co.leave("g", &[(a.clone(), None)]), Ok(vec![Ok(())]));
        let hb = co.classic_heartbeat("g", 2, &b, None);
        assert_eq!(hb.map_err(|e| e.0), Err(ErrorCode::RebalanceInProgress));
        let jb = now(co.join(join_req(&b, &["roundrobin"])));
        assert_eq!((jb.generation, jb.leader.as_str()), (3, b.as_str()));
        let unknown = co.classic_heartbeat("g", 3, &a, None);
        assert_eq!(unknown.map_err(|e| e.0), Err(ErrorCode::UnknownMemberId));
    }

    #[test]
    fn incompatible_protocols_and_bad_sessions_are_refused() {
        let co = coordinator();
        let a = now(co.join(join_req("", &["range"]))).member_id;
        assert_eq!(now(co.join(join_req(&a, &["range"]))).error, None);
        let b = now(co.join(join_req("", &["sticky"]))).member_id;
        let jb = now(co.join(join_req(&b, &["sticky"])));
        assert_eq!(
            jb.error.map(|e| e.0),
            Some(ErrorCode::InconsistentGroupProtocol)
        );
        let mut short = join_req("", &["range"]);
        short.session_ms = 10;
        let j = now(co.join(short));
        assert_eq!(j.error.map(|e| e.0), Some(ErrorCode::InvalidSessionTimeout));
        let j = now(co.join(join_req("made-up", &["range"])));
        assert_eq!(j.error.map(|e| e.0), Some(ErrorCode::UnknownMemberId));
    }

    #[test]
    fn a_static_member_rejoining_keeps_its_place_without_a_rebalance() {
        let co = coordinator();
        let mut req = join_req("", &["range"]);
        req.instance_id = Some("worker-1".into());
        let j = now(co.join(req));
        assert_eq!(j.error, None, "static members need no MEMBER_ID_REQUIRED");
        let old = j.member_id.clone();
        let given = vec![(old.clone(), Bytes::from("mine"), BTreeSet::new())];
        now(co.sync("g", 1, &old, Some("worker-1"), given)).expect("sync");

        let mut again = join_req("", &["range"]);
        again.instance_id = Some("worker-1".into());
        let j2 = now(co.join(again));
        assert_eq!(j2.error, None);
        assert_eq!(j2.generation, 1, "no rebalance");
        assert_eq!(j2.leader, j2.member_id, "the restarted member still leads");
        assert_eq!(j2.members.len(), 1, "a leader always gets the members");
        assert!(j2.skip_assignment);
        assert_ne!(j2.member_id, old);
        let s = now(co.sync("g", 1, &j2.member_id, Some("worker-1"), Vec::new()));
        assert_eq!(s.expect("same assignment").2, Bytes::from("mine"));
        let fenced = co.classic_heartbeat("g", 1, &old, Some("worker-1"));
        assert_eq!(fenced.map_err(|e| e.0), Err(ErrorCode::FencedInstanceId));
    }

    #[test]
    fn members_that_miss_their_session_are_removed() {
        let co = coordinator();
        let a = now(co.join(join_req("", &["range"]))).member_id;
        now(co.join(join_req(&a, &["range"])));
        now(co.sync("g", 1, &a, None, Vec::new())).expect("sync");
        let later = Instant::now() + Duration::from_secs(11);
        let removed = {
            let mut state = co.lock();
            let g = state.groups.get_mut("g").expect("group");
            g.classic.tick(later, Duration::ZERO)
        };
        assert_eq!(removed, vec![a.clone()]);
        let gone = co.classic_heartbeat("g", 1, &a, None);
        assert_eq!(gone.map_err(|e| e.0), Err(ErrorCode::UnknownMemberId));
    }
}
