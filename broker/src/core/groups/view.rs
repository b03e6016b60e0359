//! What a group looks like from outside, whatever protocol its members speak: the plain view
//! that `strom groups`, Kafka's ListGroups and DescribeGroups, and (later) the console read.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::classic::ClassicState;
use super::{Coordinator, Group, Tp};
use crate::core::topics::Topics;

/// A group's state, in both spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    /// KIP-848: members are still moving towards their target assignment.
    Reconciling,
    /// Classic: waiting for members to rejoin.
    PreparingRebalance,
    /// Classic: waiting for the leader's assignment.
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// strom's name (`strom groups`): lower case with underscores.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Reconciling => "reconciling",
            Self::PreparingRebalance => "preparing_rebalance",
            Self::CompletingRebalance => "completing_rebalance",
            Self::Stable => "stable",
        }
    }

    /// Kafka's name (ListGroups, DescribeGroups).
    pub fn kafka_name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Reconciling => "Reconciling",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// Which protocol a group's members speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupKind {
    /// KIP-848 members (strom's clients; Kafka's `group.protocol=consumer`).
    Consumer,
    /// Kafka's classic JoinGroup/SyncGroup protocol.
    Classic,
}

/// One member.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Member epoch (KIP-848) or the group's generation (classic).
    pub epoch: i32,
    pub topics: BTreeSet<String>,
    pub assigned: BTreeSet<Tp>,
    pub session_ms: u32,
    /// Classic: the member's metadata for the chosen protocol, and its assignment, as sent.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A committed offset with the partition's end.
#[derive(Debug, Clone)]
pub(crate) struct OffsetView {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub metadata: Option<String>,
    /// -1 when the partition no longer exists.
    pub log_end: i64,
}

impl OffsetView {
    /// Records after the committed offset (-1 when unknown).
    pub fn lag(&self) -> i64 {
        if self.log_end < 0 {
            -1
        } else {
            (self.log_end - self.committed).max(0)
        }
    }
}

/// A group.
#[derive(Debug, Clone)]
pub(crate) struct GroupView {
    pub name: String,
    pub kind: GroupKind,
    pub state: GroupState,
    /// Group epoch (KIP-848) or generation (classic).
    pub epoch: i32,
    /// Classic: the protocol type the members declared ("consumer" for consumers).
    pub protocol_type: String,
    /// The assignor (KIP-848) or the chosen protocol (classic).
    pub assignor: String,
    pub members: Vec<MemberView>,
    pub offsets: Vec<OffsetView>,
}

impl Group {
    fn kind(&self) -> GroupKind {
        if self.classic.members.is_empty() && self.classic.protocol_type.is_none() {
            GroupKind::Consumer
        } else {
            GroupKind::Classic
        }
    }

    fn group_state(&self) -> GroupState {
        if !self.classic.members.is_empty() {
            return match self.classic.state {
                ClassicState::Empty => GroupState::Empty,
                ClassicState::PreparingRebalance => GroupState::PreparingRebalance,
                ClassicState::CompletingRebalance => GroupState::CompletingRebalance,
                ClassicState::Stable => GroupState::Stable,
            };
        }
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.iter().all(|(id, m)| {
            m.epoch == self.epoch && self.target.get(id).is_some_and(|t| *t == m.assigned)
        }) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    fn view(&self, name: &str, topics: Option<&Topics>) -> GroupView {
        let kind = self.kind();
        let c = &self.classic;
        let mut members: Vec<MemberView> = self
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id: id.clone(),
                instance_id: None,
                client_id: String::new(),
                client_host: String::new(),
                epoch: m.epoch,
                topics: m.topics.clone(),
                assigned: m.assigned.clone(),
                session_ms: m.session_ms,
                metadata: Bytes::new(),
                assignment: Bytes::new(),
            })
            .collect();
        members.extend(c.members.iter().map(|(id, m)| MemberView {
            id: id.clone(),
            instance_id: m.instance_id.clone(),
            client_id: m.client_id.clone(),
            client_host: m.client_host.clone(),
            epoch: c.generation,
            topics: m.topics.clone(),
            assigned: m.assigned.clone(),
            session_ms: m.session_ms,
            metadata: m.metadata(c.protocol.as_deref()),
            assignment: m.assignment.clone(),
        }));
        let offsets = match topics {
            None => Vec::new(),
            Some(topics) => self
                .offsets
                .iter()
                .map(|((t, p), (offset, meta))| OffsetView {
                    topic: t.clone(),
                    partition: *p,
                    committed: *offset,
                    metadata: meta.clone(),
                    log_end: topics
                        .get(t)
                        .and_then(|x| x.partition(*p).map(|q| q.high_watermark()))
                        .unwrap_or(-1),
                })
                .collect(),
        };
        GroupView {
            name: name.to_string(),
            kind,
            state: self.group_state(),
            epoch: match kind {
                GroupKind::Consumer => self.epoch,
                GroupKind::Classic => c.generation,
            },
            protocol_type: match kind {
                GroupKind::Consumer => "consumer".to_string(),
                GroupKind::Classic => c.protocol_type.clone().unwrap_or_default(),
            },
            assignor: match kind {
                GroupKind::Consumer => self.strategy.name().to_string(),
                GroupKind::Classic => c.protocol.clone().unwrap_or_default(),
            },
            members,
            offsets,
        }
    }
}

impl Coordinator {
    /// Every group this broker coordinates with members or committed offsets, by name (members
    /// and state; no offsets). Kafka's ListGroups answers the same: each broker lists its own.
    pub fn list(&self) -> Vec<GroupView> {
        let state = self.lock();
        let mut out: Vec<GroupView> = state
            .groups
            .iter()
            .filter(|(_, g)| g.member_count() > 0 || !g.offsets.is_empty())
            .map(|(name, g)| g.view(name, None))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One group this broker coordinates, with its members and offsets (lag against the ends
    /// of the partitions this broker holds now; -1 for the others); `None` when it has no such
    /// group.
    pub fn describe(&self, topics: &Topics, name: &str) -> Option<GroupView> {
        self.lock()
            .groups
            .get(name)
            .map(|g| g.view(name, Some(topics)))
    }

    /// [`Coordinator::describe`] for a client that asked this broker: `Ok(None)` for a group
    /// that does not exist, the routing error ([`super::State::route`]) for one another broker
    /// coordinates or that nobody can serve now.
    pub fn describe_group(
        &self,
        topics: &Topics,
        name: &str,
    ) -> Result<Option<GroupView>, crate::core::Failure> {
        let state = self.lock();
        state.route(name)?;
        Ok(state.groups.get(name).map(|g| g.view(name, Some(topics))))
    }
}
