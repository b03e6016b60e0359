//! The queue coordinator's background work: sessions that ended, leases and delays that ran
//! out, delayed records whose time came, forgetting delayed runs every group has taken in, and
//! compaction of each `__queue_state` partition this broker leads (and of `__queue_delays`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::codec::{self, SNAPSHOT};
use super::redrive;
use super::settings;
use super::state::{Fired, MemberId, Millis};
use super::{StateWrites, Tp, now_ms, state_partition};
use crate::core::Core;
use crate::core::coordination::{Route, partition_for};

impl Core {
    /// Background work for every group: sessions that ended, leases and delays that ran out.
    pub async fn queue_tick(&self) {
        let now = now_ms();
        let instant = Instant::now();
        for g in self.queues.all() {
            let mut out = StateWrites::default();
            let mut inner = g.inner.lock().await;
            let gone: Vec<MemberId> = inner
                .members
                .iter()
                .filter(|(_, m)| m.deadline <= instant)
                .map(|(id, _)| id.clone())
                .collect();
            for m in &gone {
                tracing::info!(group = %g.name, member = %m, "queue group member's session ended");
                inner.remove_member(&g.name, m, false, now, &mut out);
            }
            let woke = inner.expire(&g.name, now, &mut out)
                | inner.fire(&g.name, &self.topics, now, &mut out)
                || !gone.is_empty();
            let rx = self.queue_persist(g.route, out).await;
            drop(inner);
            if woke {
                g.wake.notify_waiters();
            }
            if let Err((_, e)) = Self::queue_durable(rx).await {
                tracing::warn!(group = %g.name, error = %e, "queue state append failed");
            }
        }
        let live_delays = self.prune_delays(now).await;
        self.delays_compact(live_delays).await;
        // Each partition of `__queue_state` led here is compacted once it holds more records
        // than the setting beyond what its last compaction wrote.
        let ready = self.queues.slots().ready();
        for (partition, epoch) in ready {
            let route = Route {
                partition: i32::try_from(partition).unwrap_or(i32::MAX),
                epoch,
            };
            let Some(part) = state_partition(&self.topics, route.partition) else {
                continue;
            };
            let held = {
                let r = part.reader();
                (r.end_offset() - r.start_offset()).max(0) as u64
            };
            let floor = self
                .queues
                .snapshot_records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&route.partition)
                .copied()
                .unwrap_or(0);
            if held.saturating_sub(floor) > self.config.queue_state_compact_records {
                self.queue_compact(route).await;
            }
        }
    }

    /// Forgets delayed runs every queue-partition of their partition has taken in (all due
    /// runs, for a partition no queue group reads). Returns the runs still held.
    async fn prune_delays(&self, now: Millis) -> usize {
        if self.topics.delayed_runs() == 0 {
            return 0;
        }
        let mut marks: HashMap<Tp, Fired> = HashMap::new();
        for g in self.queues.all() {
            let inner = g.inner.lock().await;
            for (tp, qp) in &inner.qps {
                let m = marks.entry(tp.clone()).or_insert(qp.fired());
                *m = (*m).min(qp.fired());
            }
        }
        // In a cluster, a group reading a partition may be coordinated by another broker, whose
        // marks this one does not know: a due run is kept `CLUSTER_GRACE_MS` past its time, so
        // that group's next coordinator still finds it here.
        let cap = (!self.cluster.is_alone())
            .then(|| Fired::upto(now.saturating_sub(crate::core::delays::CLUSTER_GRACE_MS)));
        let mut live = 0;
        for t in self.topics.all() {
            for p in &t.partitions {
                let index = p.delays();
                if index.len() == 0 {
                    continue;
                }
                let mark = marks
                    .get(&(t.name.clone(), p.index))
                    .copied()
                    .unwrap_or(Fired::upto(now));
                index.prune(cap.map_or(mark, |c| mark.min(c)));
                live += index.len();
            }
        }
        live
    }

    /// Writes every group (and redrive task) of `route`'s partition of `__queue_state` whole
    /// and moves the partition's start past what that covers.
    ///
    /// Each group's snapshot is taken and appended under its lock, so any delta of a group
    /// appended before its snapshot is covered by it, and any after it applies on top. The new
    /// log start is the first snapshot's offset: what lies between that and a later group's
    /// snapshot is replayed and then replaced by the snapshot. A group created meanwhile may
    /// have records before that offset: the groups are listed again until every one has a
    /// snapshot, so any group created after the last listing writes after the first snapshot.
    /// Every write waits until it is on every in-sync replica, so the start a follower takes
    /// from its leader never passes a snapshot it lacks.
    pub(super) async fn queue_compact(&self, route: Route) {
        let Some(part) = state_partition(&self.topics, route.partition) else {
            return;
        };
        let count = self.queues.slots().count().unwrap_or(1);
        let mine =
            |name: &str| i32::try_from(partition_for(name, count)).ok() == Some(route.partition);
        let mut done: HashSet<String> = HashSet::new();
        let mut written = 0u64;
        let mut first_offset: Option<i64> = {
            // Redrive tasks first, under their lock (their changes are appended under it too).
            let tasks = self.queues.redrives.lock().await;
            let mut out = StateWrites::default();
            for t in tasks.values().filter(|t| mine(&t.dlq)) {
                out.push(&redrive::key(&t.dlq), Some(&redrive::encode(t)), now_ms());
            }
            written += out.count;
            let rx = self.queue_persist(route, out).await;
            drop(tasks);
            match Self::queue_durable(rx).await {
                Ok(base) => base,
                Err((_, e)) => {
                    tracing::warn!(partition = route.partition, error = %e, "redrive snapshot failed; not compacting");
                    return;
                }
            }
        };
        loop {
            let groups: Vec<_> = self
                .queues
                .all()
                .into_iter()
                .filter(|g| g.route == route && !done.contains(&g.name))
                .collect();
            if groups.is_empty() {
                break;
            }
            for g in &groups {
                done.insert(g.name.clone());
                let now = now_ms();
                let mut out = StateWrites::default();
                let inner = g.inner.lock().await;
                if inner.deleted {
                    continue;
                }
                out.push(
                    &codec::group_key(&g.name),
                    Some(&settings::encode(&inner.settings)),
                    now,
                );
                for (tp, qp) in &inner.qps {
                    out.state(&g.name, tp, SNAPSHOT, &qp.snapshot(), now);
                }
                written += out.count;
                let rx = self.queue_persist(route, out).await;
                drop(inner);
                match Self::queue_durable(rx).await {
                    Ok(base) => {
                        if let Some(base) = base {
                            first_offset.get_or_insert(base);
                        }
                    }
                    Err((_, e)) => {
                        tracing::warn!(group = %g.name, error = %e, "queue state snapshot failed; not compacting");
                        return;
                    }
                }
            }
        }
        self.queues
            .snapshot_records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(route.partition, written);
        let before = first_offset.unwrap_or_else(|| part.reader().end_offset());
        if let Err((_, e)) = part.delete_records(before).await {
            tracing::error!(partition = route.partition, error = %e, "moving the queue state log start failed");
        } else {
            tracing::debug!(
                partition = route.partition,
                before,
                groups = done.len(),
                "queue state compacted"
            );
        }
    }
}
