//! Committed offsets: the records of `__consumer_offsets`, commits (validated against the
//! committing member, appended and fsynced to the group's partition before the table changes
//! and before the answer), offset fetches, and group deletion (tombstones for every offset of
//! the group). Every operation is served only by the group's coordinator
//! ([`super::leadership`]).
//!
//! Records: key `0x01 | u16 len | group | u16 len | topic | i32 partition`, value `0x01 | i64
//! offset | i64 commit time ms | u16 len | metadata`; a null value deletes the commit.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::ValidBatch;

use super::classic::ClassicState;
use super::records::{offset_key, offset_value};
use super::{Catalog, Coordinator, Group, OFFSETS_TOPIC, State, Tp, now_ms};
use crate::core::Failure;
use crate::core::coordination::Route;
use crate::core::partition::Durability;
use crate::core::topics::Topics;

/// Who commits: a tool outside the group, or a member at its epoch (KIP-848) or generation
/// (Kafka's classic protocol).
#[derive(Debug, Clone)]
pub(crate) enum Committer {
    /// No member (`strom groups reset-offsets`, Kafka's "simple" commits): only while the
    /// group has no members.
    Admin,
    /// A member, with the epoch or generation it believes current.
    Member { id: String, epoch: i32 },
}

/// One partition's offset to commit.
#[derive(Debug, Clone)]
pub(crate) struct CommitOffset {
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

/// Per topic, each partition's result.
pub(crate) type CommitResult = Vec<(String, Vec<(i32, ErrorCode)>)>;

/// A committed offset as fetched: (partition, offset or -1, metadata).
pub(crate) type Fetched = (i32, i64, Option<String>);

/// The answer when a group's partition changed leadership while a write to it waited: the
/// write is in the log (it is read back when this broker loads the partition again), but this
/// coordinator's table did not take it.
fn moved(group_id: &str, now: Result<Option<Route>, Failure>) -> Failure {
    match now {
        Err(failure) => failure,
        Ok(_) => (
            ErrorCode::CoordinatorLoadInProgress,
            format!("the partition of group {group_id} changed leadership during the write; retry"),
        ),
    }
}

impl Coordinator {
    fn check_committer(
        groups: &HashMap<String, Group>,
        group_id: &str,
        who: &Committer,
    ) -> Result<(), Failure> {
        let group = groups.get(group_id);
        match who {
            Committer::Admin => {
                let members = group.map_or(0, |g| g.member_count());
                if members > 0 {
                    return Err((
                        ErrorCode::NonEmptyGroup,
                        format!("group {group_id} has {members} members; stop them first"),
                    ));
                }
                Ok(())
            }
            Committer::Member { id, epoch } => {
                let unknown = || {
                    (
                        ErrorCode::UnknownMemberId,
                        "not a member of the group".to_string(),
                    )
                };
                let g = group.ok_or_else(unknown)?;
                if let Some(m) = g.members.get(id) {
                    if m.epoch != *epoch {
                        return Err((
                            ErrorCode::IllegalGeneration,
                            format!(
                                "member epoch {epoch} is stale; the member is at {}",
                                m.epoch
                            ),
                        ));
                    }
                    return Ok(());
                }
                let c = &g.classic;
                if !c.members.contains_key(id) {
                    return Err(unknown());
                }
                if c.generation != *epoch {
                    return Err((
                        ErrorCode::IllegalGeneration,
                        format!(
                            "generation {epoch} is stale; the group is at {}",
                            c.generation
                        ),
                    ));
                }
                if c.state == ClassicState::CompletingRebalance {
                    return Err((
                        ErrorCode::RebalanceInProgress,
                        "the group is completing a rebalance; sync first".to_string(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Validates and stores a commit. The records are appended (fsynced) to the group's
    /// partition of `__consumer_offsets` before the in-memory table changes and before the
    /// answer. Partitions are checked against the metadata image (they may live on any
    /// broker).
    pub async fn commit(
        &self,
        catalog: &Catalog<'_>,
        group_id: &str,
        who: Committer,
        offsets: Vec<(String, Vec<CommitOffset>)>,
    ) -> Result<CommitResult, Failure> {
        if group_id.is_empty() {
            return Err((ErrorCode::InvalidRequest, "group id is empty".into()));
        }
        let route = {
            let state = self.lock();
            let route = state.serve(group_id)?;
            Self::check_committer(&state.groups, group_id, &who)?;
            route
        };
        let now = now_ms();
        let mut builder = BatchBuilder::default();
        let mut results = Vec::with_capacity(offsets.len());
        let mut accepted: Vec<(Tp, i64, Option<String>)> = Vec::new();
        for (name, partitions) in offsets {
            let mut parts = Vec::with_capacity(partitions.len());
            for p in partitions {
                let code = if !catalog.has_partition(&name, p.partition) {
                    ErrorCode::UnknownTopicOrPartition
                } else if p.offset < 0 {
                    ErrorCode::InvalidRequest
                } else {
                    let key = offset_key(group_id, &name, p.partition);
                    let value = offset_value(p.offset, now, p.metadata.as_deref());
                    let pushed = builder.push(&RecordRef {
                        timestamp: now,
                        key: Some(&key),
                        value: Some(&value),
                        headers: &[],
                    });
                    if pushed.is_err() {
                        ErrorCode::InvalidRequest
                    } else {
                        accepted.push(((name.clone(), p.partition), p.offset, p.metadata));
                        ErrorCode::None
                    }
                };
                parts.push((p.partition, code));
            }
            results.push((name, parts));
        }
        if !accepted.is_empty() {
            self.append(catalog.topics, route.partition, builder)
                .await?;
        }
        let mut state = self.lock();
        let now = state.route(group_id);
        if now != Ok(Some(route)) {
            return Err(moved(group_id, now));
        }
        let group = state.groups.entry(group_id.to_string()).or_default();
        for (tp, offset, meta) in accepted {
            group.offsets.insert(tp, (offset, meta));
        }
        Ok(results)
    }

    async fn append(
        &self,
        topics: &Topics,
        partition: i32,
        builder: BatchBuilder,
    ) -> Result<(), Failure> {
        let bytes: Bytes = builder
            .finish()
            .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let batch =
            ValidBatch::new(bytes).map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let part = topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partition(partition).cloned())
            .ok_or((
                ErrorCode::CoordinatorNotAvailable,
                format!("the log of {OFFSETS_TOPIC}-{partition} is missing"),
            ))?;
        // Fsynced on the coordinator and on every in-sync replica of the partition: a commit
        // answered survives the coordinator's crash, and its partition's next leader has it.
        match part
            .append_acknowledged(vec![batch], Durability::Fsynced)
            .await
        {
            Ok(_) => Ok(()),
            // Leadership moved while the commit waited: the group has another coordinator.
            Err((ErrorCode::NotLeaderOrFollower, message)) => {
                Err((ErrorCode::NotCoordinator, message))
            }
            Err(e) => Err(e),
        }
    }

    /// Committed offsets of a group: every one it has (`wanted` `None`), or the partitions
    /// asked for (-1 for those without a commit). A group this broker does not coordinate is
    /// the routing error ([`State::route`]).
    pub fn fetch(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, Vec<Fetched>)>, Failure> {
        let state = self.lock();
        state.route(group_id)?;
        let group = state.groups.get(group_id);
        let mut by_topic: BTreeMap<String, Vec<Fetched>> = BTreeMap::new();
        let entry = |tp: &Tp| {
            let found = group.and_then(|g| g.offsets.get(tp));
            (
                tp.1,
                found.map_or(-1, |v| v.0),
                found.and_then(|v| v.1.clone()),
            )
        };
        match wanted {
            None => {
                if let Some(g) = group {
                    for tp in g.offsets.keys() {
                        by_topic.entry(tp.0.clone()).or_default().push(entry(tp));
                    }
                }
            }
            Some(wanted) => {
                let mut out = Vec::with_capacity(wanted.len());
                for (topic, partitions) in wanted {
                    let parts = partitions
                        .iter()
                        .map(|&p| entry(&(topic.clone(), p)))
                        .collect();
                    out.push((topic, parts));
                }
                return Ok(out);
            }
        }
        Ok(by_topic.into_iter().collect())
    }

    /// The route of a group that must exist: GROUP_ID_NOT_FOUND when no `__consumer_offsets`
    /// exists yet (so no group does).
    fn existing(state: &State, group_id: &str) -> Result<Route, Failure> {
        state
            .route(group_id)?
            .ok_or_else(|| (ErrorCode::GroupIdNotFound, format!("no group {group_id}")))
    }

    /// Deletes some committed offsets of a group (Kafka's OffsetDelete): tombstones appended
    /// before the answer. A partition of a topic the group's members subscribe to keeps its
    /// offset (GROUP_SUBSCRIBED_TO_TOPIC).
    pub async fn delete_offsets(
        &self,
        topics: &Topics,
        group_id: &str,
        wanted: Vec<(String, Vec<i32>)>,
    ) -> Result<CommitResult, Failure> {
        let mut results = Vec::with_capacity(wanted.len());
        let mut doomed: Vec<Tp> = Vec::new();
        let route = {
            let state = self.lock();
            let route = Self::existing(&state, group_id)?;
            let g = state
                .groups
                .get(group_id)
                .ok_or_else(|| (ErrorCode::GroupIdNotFound, format!("no group {group_id}")))?;
            let subscribed: std::collections::BTreeSet<&str> = g
                .members
                .values()
                .flat_map(|m| m.topics.iter())
                .chain(g.classic.members.values().flat_map(|m| m.topics.iter()))
                .map(String::as_str)
                .collect();
            for (topic, partitions) in wanted {
                let code = if subscribed.contains(topic.as_str()) {
                    ErrorCode::GroupSubscribedToTopic
                } else {
                    ErrorCode::None
                };
                let mut parts = Vec::with_capacity(partitions.len());
                for p in partitions {
                    let tp = (topic.clone(), p);
                    if code == ErrorCode::None && g.offsets.contains_key(&tp) {
                        doomed.push(tp);
                    }
                    parts.push((p, code));
                }
                results.push((topic, parts));
            }
            route
        };
        if !doomed.is_empty() {
            self.append(topics, route.partition, tombstones(group_id, &doomed))
                .await?;
            let mut state = self.lock();
            let now = state.route(group_id);
            if now != Ok(Some(route)) {
                return Err(moved(group_id, now));
            }
            if let Some(g) = state.groups.get_mut(group_id) {
                for tp in &doomed {
                    g.offsets.remove(tp);
                }
            }
        }
        Ok(results)
    }

    /// Deletes an empty group: tombstones for its offsets, appended before the answer.
    pub async fn delete_group(&self, topics: &Topics, name: &str) -> Result<(), Failure> {
        let (route, doomed): (Route, Vec<Tp>) = {
            let state = self.lock();
            let route = Self::existing(&state, name)?;
            match state.groups.get(name) {
                None => {
                    return Err((ErrorCode::GroupIdNotFound, format!("no group {name}")));
                }
                Some(g) if g.member_count() > 0 => {
                    return Err((
                        ErrorCode::NonEmptyGroup,
                        format!("group {name} has {} members", g.member_count()),
                    ));
                }
                Some(g) => (route, g.offsets.keys().cloned().collect()),
            }
        };
        if !doomed.is_empty() {
            self.append(topics, route.partition, tombstones(name, &doomed))
                .await?;
        }
        let mut state = self.lock();
        let now = state.route(name);
        if now != Ok(Some(route)) {
            return Err(moved(name, now));
        }
        state.groups.remove(name);
        tracing::info!(group = %name, "group deleted");
        Ok(())
    }
}

/// Tombstones for `doomed` commits of `group`.
fn tombstones(group: &str, doomed: &[Tp]) -> BatchBuilder {
    let mut builder = BatchBuilder::default();
    let now = now_ms();
    for (t, p) in doomed {
        let key = offset_key(group, t, *p);
        let _ = builder.push(&RecordRef {
            timestamp: now,
            key: Some(&key),
            value: None,
            headers: &[],
        });
    }
    builder
}
