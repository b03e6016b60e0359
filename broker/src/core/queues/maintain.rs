//! The queue coordinator's background work: sessions that ended, leases and delays that ran
//! out, and compaction of `__queue_state`.

use std::collections::HashSet;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Instant;

use super::codec::{self, SNAPSHOT};
use super::redrive;
use super::settings;
use super::state::MemberId;
use super::{StateWrites, now_ms, state_partition};
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
            let woke = inner.expire(&g.name, now, &mut out) || !gone.is_empty();
            let rx = self.queue_persist(out).await;
            drop(inner);
            if woke {
                g.wake.notify_waiters();
            }
            if let Err((_, e)) = Self::queue_durable(rx).await {
                tracing::error!(group = %g.name, error = %e, "queue state append failed");
            }
        }
        if self.queues.appended.load(AtomicOrdering::Relaxed)
            > self.config.queue_state_compact_records
        {
            self.queue_compact().await;
        }
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
        self.queues.appended.store(0, AtomicOrdering::Relaxed);
        {
            // Redrive tasks first, under their lock (their changes are appended under it too).
            let tasks = self.queues.redrives.lock().await;
            if !tasks.is_empty() {
                let mut out = StateWrites::default();
                for t in tasks.values() {
                    out.push(&redrive::key(&t.dlq), Some(&redrive::encode(t)), now_ms());
                }
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
        let before = first_offset.unwrap_or_else(|| part.reader().end_offset());
        if let Err((_, e)) = part.delete_records(before).await {
            tracing::error!(error = %e, "moving the queue state log start failed");
        } else {
            tracing::debug!(before, groups = done.len(), "queue state compacted");
        }
    }
}
