//! Queue-group administration: joining and leaving, describing, resetting to an offset or a
//! time, deleting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_protocol::ErrorCode;
use strom_protocol::batch::BatchIter;
use tokio::sync::Notify;

use super::codec::{self, SNAPSHOT};
use super::settings::{self, Settings};
use super::state::MemberId;
use super::{
    DEFAULT_SESSION_MS, GroupView, Inner, Join, MAX_MEMBERS, MAX_SESSION_MS, MIN_SESSION_MS,
    Member, PartitionView, QueueGroup, StateWrites, Tp, lock_groups, now_ms,
};
use crate::core::admin::OffsetQuery;
use crate::core::{Core, Failure};

/// Topics one member may name, at most.
const MAX_TOPICS: usize = 1_000;

impl Core {
    /// Joins (or creates) a queue group; returns its settings.
    pub async fn queue_join(&self, req: Join) -> Result<BTreeMap<String, String>, Failure> {
        if req.group.is_empty() || req.group.len() > 255 {
            return Err((
                ErrorCode::InvalidRequest,
                "group id must be 1 to 255 bytes".into(),
            ));
        }
        if req.member.is_empty() || req.member.len() > 255 {
            return Err((
                ErrorCode::InvalidRequest,
                "member id must be 1 to 255 bytes (the client makes it up, e.g. a UUID)".into(),
            ));
        }
        if req.topics.len() > MAX_TOPICS {
            return Err((
                ErrorCode::InvalidRequest,
                format!(
                    "{} topics; a member may take records from at most {MAX_TOPICS}",
                    req.topics.len()
                ),
            ));
        }
        if req.topics.is_empty() {
            return Err((ErrorCode::InvalidRequest, "no topics to consume".into()));
        }
        let session_ms = match req.session_timeout_ms {
            0 => DEFAULT_SESSION_MS,
            ms if (MIN_SESSION_MS..=MAX_SESSION_MS).contains(&ms) => ms,
            ms => {
                return Err((
                    ErrorCode::InvalidSessionTimeout,
                    format!(
                        "session timeout {ms} ms is outside {MIN_SESSION_MS} to {MAX_SESSION_MS}"
                    ),
                ));
            }
        };
        if self.groups.exists(&req.group) {
            return Err((
                ErrorCode::InconsistentGroupProtocol,
                format!("{} is a consumer group, not a queue group", req.group),
            ));
        }
        self.queue_group_may_start(&req.group).await?;
        let mut topic_names: Vec<Arc<str>> = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            if t.starts_with("__") {
                return Err((
                    ErrorCode::InvalidTopicName,
                    format!("{t} is an internal topic"),
                ));
            }
            if self.topics.get(t).is_none() {
                if !self.config.auto_create_topics {
                    return Err((ErrorCode::UnknownTopicOrPartition, format!("no topic {t}")));
                }
                self.get_or_create_topic(t, self.config.default_partitions)
                    .await?;
            }
            topic_names.push(Arc::from(t.as_str()));
        }
        let route = self.queue_route(&req.group).await?;
        let now = now_ms();
        let mut out = StateWrites::default();
        let group = {
            let existing = self.queues.get(&req.group);
            match existing {
                Some(g) if g.route == route => g,
                Some(_) => {
                    return Err((
                        ErrorCode::CoordinatorLoadInProgress,
                        format!("queue group {} is being loaded again", req.group),
                    ));
                }
                None => {
                    let settings = Settings::from_pairs(
                        req.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    )
                    .map_err(|e| (ErrorCode::InvalidConfig, e))?;
                    let g = Arc::new(QueueGroup {
                        name: req.group.clone(),
                        route,
                        inner: tokio::sync::Mutex::new(Inner::new(settings)),
                        wake: Notify::new(),
                    });
                    let mut groups = lock_groups(&self.queues);
                    let g = groups.entry(req.group.clone()).or_insert(g).clone();
                    drop(groups);
                    g
                }
            }
        };
        let mut inner = group.inner.lock().await;
        if inner.deleted {
            return Err((
                ErrorCode::GroupIdNotFound,
                "the group was just deleted".into(),
            ));
        }
        if inner.members.is_empty() && inner.qps.is_empty() {
            // A new group: its settings go first in the log.
            let key = codec::group_key(&group.name);
            out.push(&key, Some(&settings::encode(&inner.settings)), now);
        }
        for t in &topic_names {
            inner.ensure_partitions(&group.name, &self.topics, t, &mut out, now);
        }
        let member: MemberId = Arc::from(req.member.as_str());
        if !inner.members.contains_key(&member) && inner.members.len() >= MAX_MEMBERS {
            return Err((
                ErrorCode::Busy,
                format!(
                    "queue group {} has {MAX_MEMBERS} members, the most it may have",
                    group.name
                ),
            ));
        }
        inner.members.insert(
            member,
            Member {
                session_ms,
                deadline: Instant::now() + Duration::from_millis(u64::from(session_ms)),
                topics: topic_names,
            },
        );
        let settings = inner.settings.pairs();
        let rx = self.queue_persist(group.route, out).await;
        drop(inner);
        Self::queue_durable(rx).await?;
        Ok(settings)
    }

    /// A member leaves: what it holds is released (its attempts stay counted).
    pub async fn queue_leave(&self, group: &str, member: &str) -> Result<(), Failure> {
        let g = self.queue_group(group)?;
        let now = now_ms();
        let mut out = StateWrites::default();
        let mut inner = g.inner.lock().await;
        if !inner.members.contains_key(member) {
            return Err((ErrorCode::UnknownMemberId, "not a member".into()));
        }
        inner.remove_member(&g.name, member, true, now, &mut out);
        let rx = self.queue_persist(g.route, out).await;
        drop(inner);
        g.wake.notify_waiters();
        Self::queue_durable(rx).await.map(drop)
    }

    /// Describes queue groups (all of them when `names` is empty).
    pub async fn queue_describe(&self, names: &[String]) -> Vec<Result<GroupView, Failure>> {
        let groups: Vec<(String, Result<Arc<QueueGroup>, Failure>)> = if names.is_empty() {
            self.queues
                .all()
                .into_iter()
                .map(|g| (g.name.clone(), Ok(g)))
                .collect()
        } else {
            names
                .iter()
                .map(|n| (n.clone(), self.queue_group(n)))
                .collect()
        };
        let now = now_ms();
        let mut views = Vec::with_capacity(groups.len());
        for (name, g) in groups {
            let g = match g {
                Ok(g) => g,
                Err(e) => {
                    views.push(Err(e));
                    continue;
                }
            };
            let inner = g.inner.lock().await;
            let mut members: Vec<(String, Vec<String>, u64)> = inner
                .members
                .iter()
                .map(|(id, m)| {
                    (
                        id.to_string(),
                        m.topics.iter().map(|t| t.to_string()).collect(),
                        inner.held_by(id),
                    )
                })
                .collect();
            members.sort();
            let partitions = inner
                .qps
                .iter()
                .map(|(tp, qp)| {
                    let reader = self
                        .topics
                        .get(&tp.0)
                        .and_then(|t| t.partition(tp.1).cloned());
                    let log_end = reader.as_ref().map_or(-1, |p| p.reader().end_offset());
                    let (delayed, delayed_fresh, first_delayed) =
                        reader.as_ref().map_or((0, 0, None), |p| {
                            let d = p.delays();
                            (
                                d.pending_records(qp.fired(), qp.origin()),
                                d.pending_records(qp.fired(), qp.next()),
                                d.first_pending(qp.fired(), qp.origin()),
                            )
                        });
                    // Records whose delivery time is ahead are not finished either.
                    let start = first_delayed.map_or(qp.start(), |f| f.min(qp.start()));
                    let oldest_unacked_ms = reader
                        .as_ref()
                        .filter(|_| start < log_end)
                        .and_then(|p| timestamp_at(p, start))
                        .map(|ts| (now - ts).max(0));
                    let mut counts = qp.counts();
                    counts.delayed += delayed;
                    // Never handed out yet: ready too, unless their delivery time is ahead.
                    counts.available +=
                        ((log_end - qp.next()).max(0) as u64).saturating_sub(delayed_fresh);
                    PartitionView {
                        topic: tp.0.to_string(),
                        partition: tp.1,
                        start,
                        next: qp.next(),
                        log_end,
                        counts,
                        finished: qp.finished(),
                        redelivered: qp.redelivered(),
                        oldest_unacked_ms,
                    }
                })
                .collect();
            views.push(Ok(GroupView {
                group: name,
                settings: inner.settings.pairs(),
                members,
                partitions,
            }));
        }
        views
    }

    /// Moves a group's queue-partitions of `topic` to the offset `to` finds in each (records
    /// from it on are handed out as new, those before it count as done). Refused while the
    /// group has members or records waiting to be dead-lettered.
    pub async fn queue_reset(
        &self,
        group: &str,
        topic: &str,
        to: OffsetQuery,
    ) -> Result<Vec<(i32, i64)>, Failure> {
        let g = self.queue_group(group)?;
        let t = self.topics.get(topic).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {topic}"),
            )
        })?;
        let now = now_ms();
        let mut out = StateWrites::default();
        let mut inner = g.inner.lock().await;
        if !inner.members.is_empty() {
            return Err((
                ErrorCode::NonEmptyGroup,
                format!(
                    "{} member(s) of queue group {group} still joined",
                    inner.members.len()
                ),
            ));
        }
        let topic_arc: Arc<str> = Arc::from(topic);
        inner.ensure_partitions(&g.name, &self.topics, &topic_arc, &mut out, now);
        let mut moved = Vec::new();
        for p in &t.partitions {
            let tp: Tp = (topic_arc.clone(), p.index);
            let offset = self.list_offset(topic, p.index, to)?.0;
            // A time after every record: the log end.
            let offset = if offset < 0 {
                p.reader().end_offset()
            } else {
                offset
            };
            let Some(qp) = inner.qps.get(&tp) else {
                continue;
            };
            if qp.dead_lettering().next().is_some() {
                return Err((
                    ErrorCode::Busy,
                    format!(
                        "partition {} has records being dead-lettered; retry",
                        p.index
                    ),
                ));
            }
            let fresh = qp.reset(offset);
            out.state(&g.name, &tp, SNAPSHOT, &fresh.snapshot(), now);
            inner.qps.insert(tp, fresh);
            moved.push((p.index, offset));
        }
        let rx = self.queue_persist(g.route, out).await;
        drop(inner);
        g.wake.notify_waiters();
        Self::queue_durable(rx).await?;
        Ok(moved)
    }

    /// Deletes queue groups without members.
    pub async fn queue_delete(&self, group: &str) -> Result<(), Failure> {
        let g = self.queue_group(group)?;
        let mut out = StateWrites::default();
        let mut inner = g.inner.lock().await;
        if !inner.members.is_empty() {
            return Err((
                ErrorCode::NonEmptyGroup,
                format!("queue group {group} has members"),
            ));
        }
        inner.deleted = true;
        inner.qps.clear();
        out.push(&codec::group_key(group), None, now_ms());
        let rx = self.queue_persist(g.route, out).await;
        drop(inner);
        lock_groups(&self.queues).remove(group);
        g.wake.notify_waiters();
        Self::queue_durable(rx).await.map(drop)
    }
}

/// The timestamp of the first record at or after `offset` in its batch (the batch read and,
/// if compressed, decompressed: describe is rare).
fn timestamp_at(part: &crate::core::partition::Partition, offset: i64) -> Option<i64> {
    let r = part.reader().read(offset, 1).ok()?;
    let (range, header) = BatchIter::new(&r.data).next()?.ok()?;
    let raw = r.data.slice(range);
    let plain = strom_protocol::compression::decompress(
        &raw,
        &header,
        strom_protocol::compression::MAX_DECOMPRESSED_BATCH,
    )
    .ok()?;
    let records = strom_protocol::batch::Records::new(plain).ok()?;
    records
        .flatten()
        .find(|rec| rec.offset >= offset)
        .map(|rec| rec.timestamp)
}
