//! The queue coordinator's background work: sessions that ended, leases and delays that ran
//! out, delayed records whose time came, forgetting delayed runs every group has taken in, and
//! compaction of `__queue_state`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::codec::{self, SNAPSHOT};
use super::redrive;
use super::settings;
use super::state::{Fired, MemberId, Millis};
use super::{StateWrites, Tp, now_ms, state_partition};
use crate::core::delays;
use crate::core::partition::Durability;

/// Delayed runs per batch when compaction writes them whole (~60 bytes each).
const SNAPSHOT_RUNS_PER_BATCH: usize = 20_000;
use crate::core::Core;

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
            let rx = self.queue_persist(out).await;
            drop(inner);
            if woke {
                g.wake.notify_waiters();
            }
            if let Err((_, e)) = Self::queue_durable(rx).await {
                tracing::error!(group = %g.name, error = %e, "queue state append failed");
            }
        }
        let live_delays = self.prune_delays(now).await;
        // The records the state log holds (delayed runs' records, written by partition
        // writers, included). Compaction rewrites the delayed runs still pending, so it waits
        // until the log holds more than the setting beside them, and at least as many as them:
        // a compaction then writes at most about as much as it drops (with a million delays
        // pending, it does not rewrite them all every 100,000 records).
        let held = state_partition(&self.topics).map_or(0, |p| {
            let r = p.reader();
            (r.end_offset() - r.start_offset()).max(0) as u64
        });
        let live_delays = live_delays as u64;
        let floor = self
            .queues
            .snapshot_records
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(live_delays);
        if held.saturating_sub(floor) > self.config.queue_state_compact_records.max(live_delays) {
            self.queue_compact().await;
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
                index.prune(mark);
                live += index.len();
            }
        }
        live
    }

    /// Writes every partition's delayed runs whole (compaction). The base offset of the first
    /// batch, or None when there are none; Err when a write failed.
    async fn write_delays(&self) -> Result<Option<i64>, String> {
        let mut first = None;
        if self.topics.delayed_runs() == 0 {
            return Ok(first);
        }
        for t in self.topics.all() {
            for p in &t.partitions {
                let index = p.delays();
                if index.len() == 0 {
                    continue;
                }
                // Under the order lock: a run entered after this snapshot is written after it.
                // One batch at a time, each waited for until appended (the groups' snapshots
                // after them are fsynced, which covers these too): the memory it takes stays one
                // batch, whatever the number of runs.
                let _order = index.order.lock().await;
                for chunk in index.all().chunks(SNAPSHOT_RUNS_PER_BATCH) {
                    let mut out = StateWrites::default();
                    let now = now_ms();
                    for d in chunk {
                        out.push(
                            &delays::key(&t.name, p.index, d.first),
                            Some(&delays::value(&t.id, d.last, d.at)),
                            now,
                        );
                    }
                    match self.queue_persist_as(out, Durability::Appended).await {
                        Ok(Some(rx)) => match rx.await {
                            Ok(Ok(base)) => {
                                first.get_or_insert(base);
                            }
                            Ok(Err((_, e))) => return Err(e),
                            Err(_) => return Err("the state log stopped".into()),
                        },
                        Ok(None) => {}
                        Err((_, e)) => return Err(e),
                    }
                }
            }
        }
        Ok(first)
    }

    /// Writes every group whole and moves `__queue_state`'s start past what that covers.
    ///
    /// Each group's snapshot is taken and appended under its lock, so any delta of a group
    /// appended before its snapshot is covered by it, and any after it applies on top. The new
    /// log start is the first snapshot's offset: what lies between that and a later group's
    /// snapshot is replayed and then replaced by the snapshot. A group created meanwhile may
    /// have records before that offset: the groups are listed again until every one has a
    /// snapshot, so any group created after the last listing writes after the first snapshot.
    pub async fn queue_compact(&self) {
        let Some(part) = state_partition(&self.topics) else {
            return;
        };
        let mut first_offset: Option<i64> = None;
        let mut done: HashSet<String> = HashSet::new();
        let mut written = 0u64;
        {
            // Redrive tasks first, under their lock (their changes are appended under it too).
            let tasks = self.queues.redrives.lock().await;
            if !tasks.is_empty() {
                let mut out = StateWrites::default();
                for t in tasks.values() {
                    out.push(&redrive::key(&t.dlq), Some(&redrive::encode(t)), now_ms());
                }
                written += out.count;
                let rx = self.queue_persist(out).await;
                drop(tasks);
                match rx {
                    Ok(Some(rx)) => match rx.await {
                        Ok(Ok(base)) => first_offset = Some(base),
                        _ => return,
                    },
                    _ => return,
                }
            }
        }
        match self.write_delays().await {
            Ok(base) => {
                if let Some(base) = base {
                    first_offset.get_or_insert(base);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "delayed runs' snapshot failed; not compacting");
                return;
            }
        }
        loop {
            let groups: Vec<_> = self
                .queues
                .all()
                .into_iter()
                .filter(|g| !done.contains(&g.name))
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
                let rx = self.queue_persist(out).await;
                drop(inner);
                let base = match rx {
                    Ok(Some(rx)) => rx
                        .await
                        .map_err(|_| "the state log stopped".to_string())
                        .and_then(|r| r.map_err(|(_, e)| e)),
                    Ok(None) => Err("nothing to write".to_string()),
                    Err((_, e)) => Err(e),
                };
                match base {
                    Ok(base) => {
                        first_offset.get_or_insert(base);
                    }
                    Err(e) => {
                        tracing::error!(group = %g.name, error = %e, "queue state snapshot failed; not compacting");
                        return;
                    }
                }
            }
        }
        self.queues
            .snapshot_records
            .store(written, std::sync::atomic::Ordering::Relaxed);
        let before = first_offset.unwrap_or_else(|| part.reader().end_offset());
        if let Err((_, e)) = part.delete_records(before).await {
            tracing::error!(error = %e, "moving the queue state log start failed");
        } else {
            tracing::debug!(before, groups = done.len(), "queue state compacted");
        }
    }
}
