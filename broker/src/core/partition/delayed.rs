//! Queue groups' delayed delivery at append time: the delayed runs of an append are entered in
//! the partition's index and recorded on `__queue_delays` before the records become readable,
//! and withdrawn if the append fails (docs/queues.md). A follower does the same with the runs
//! its leader sends beside the batches, and takes back the runs of what it truncates.

use std::sync::Arc;

use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::ValidBatch;

use super::writer::Writer;
use super::{AppendRequest, Durability, Partition, now_ms};
use crate::core::delays::{self, Delay, TopicId};

/// Where a partition's delayed runs are recorded: `__queue_delays`, and the id of the topic
/// its records name.
#[derive(Debug, Clone)]
pub(crate) struct DelayLog {
    pub state: Arc<Partition>,
    pub topic_id: TopicId,
}

/// One batch of `__queue_delays` records for this partition: per run start, its entry (last
/// offset and time) or, with `None`, its withdrawal.
fn delay_batch(
    w: &Writer,
    topic_id: &TopicId,
    entries: &[(i64, Option<(i64, i64)>)],
) -> Result<ValidBatch, String> {
    let mut builder = BatchBuilder::default();
    let now = now_ms();
    for (first, entry) in entries {
        let k = delays::key(&w.topic, w.index, *first);
        let v = entry.map(|(last, at)| delays::value(topic_id, last, at));
        builder
            .push(&RecordRef {
                timestamp: now,
                key: Some(&k),
                value: v.as_deref(),
                headers: &[],
            })
            .map_err(|e| e.to_string())?;
    }
    let bytes = builder.finish().map_err(|e| e.to_string())?;
    ValidBatch::new(bytes).map_err(|e| e.to_string())
}

/// Queues `entries` on `__queue_delays` (nothing waits for them: a follower's record).
async fn record(w: &Writer, log: &DelayLog, entries: &[(i64, Option<(i64, i64)>)]) {
    if entries.is_empty() {
        return;
    }
    match delay_batch(w, &log.topic_id, entries) {
        Ok(batch) => drop(log.state.append(vec![batch], Durability::Appended).await),
        Err(e) => {
            tracing::error!(topic = %w.topic, partition = w.index, error = %e, "delayed runs could not be recorded");
        }
    }
}

/// A follower's side of [`register_delays`]: enters the runs its leader sent with batches to
/// be appended from `end` on (those reaching to `end` or past it), and records them, before
/// the append makes the records readable.
pub(super) async fn register_replicated(
    runs: &[Delay],
    end: i64,
    log: Option<&DelayLog>,
    w: &Writer,
) {
    let runs: Vec<Delay> = runs
        .iter()
        .copied()
        .filter(|d| d.first <= d.last && d.last >= end)
        .collect();
    if runs.is_empty() {
        return;
    }
    let _order = w.delays.order.lock().await;
    for d in &runs {
        w.delays.insert(*d);
    }
    if let Some(log) = log {
        let entries: Vec<(i64, Option<(i64, i64)>)> = runs
            .iter()
            .map(|d| (d.first, Some((d.last, d.at))))
            .collect();
        record(w, log, &entries).await;
    }
}

/// After a truncation to `end`: runs at or past it are taken back (those reaching into it are
/// cut short), in the index and on `__queue_delays`, since the offsets will be given to other
/// records.
pub(super) async fn truncate_delays(end: i64, log: Option<&DelayLog>, w: &Writer) {
    let cut = w.delays.overlapping(end, i64::MAX);
    if cut.is_empty() {
        return;
    }
    let _order = w.delays.order.lock().await;
    w.delays.truncate(end);
    if let Some(log) = log {
        let entries: Vec<(i64, Option<(i64, i64)>)> = cut
            .iter()
            .map(|d| (d.first, (d.first < end).then_some((end - 1, d.at))))
            .collect();
        record(w, log, &entries).await;
    }
}

/// Enters the delayed runs of `appends` (to be appended from `base`) in the partition's index
/// and queues their records on `__queue_delays`, handing each produce the wait for its record.
/// Returns what was entered, to withdraw if the append fails.
pub(super) async fn register_delays(
    appends: &mut [AppendRequest],
    base: i64,
    w: &Writer,
) -> Vec<(Arc<Partition>, TopicId, Delay)> {
    let mut entered = Vec::new();
    if appends.iter().all(|a| a.delays.is_none()) {
        return entered;
    }
    let mut offset = base;
    for a in appends.iter_mut() {
        let durability = a.durability;
        let Some(d) = &mut a.delays else {
            offset += a.batches.iter().map(ValidBatch::record_count).sum::<i64>();
            continue;
        };
        // Consecutive batches with one time are one run.
        let mut runs: Vec<Delay> = Vec::new();
        for (b, at) in a.batches.iter().zip(d.times.iter().copied()) {
            let n = b.record_count();
            if at > 0 && n > 0 {
                match runs.last_mut() {
                    Some(r) if r.at == at && r.last + 1 == offset => r.last = offset + n - 1,
                    _ => runs.push(Delay {
                        first: offset,
                        last: offset + n - 1,
                        at,
                    }),
                }
            }
            offset += n;
        }
        if runs.is_empty() {
            continue;
        }
        let mut builder = BatchBuilder::default();
        let now = now_ms();
        let mut built = Ok(());
        for r in &runs {
            let k = delays::key(&w.topic, w.index, r.first);
            let v = delays::value(&d.topic_id, r.last, r.at);
            if built.is_ok() {
                built = builder.push(&RecordRef {
                    timestamp: now,
                    key: Some(&k),
                    value: Some(&v),
                    headers: &[],
                });
            }
        }
        let batch = built
            .map_err(|e| e.to_string())
            .and_then(|()| builder.finish().map_err(|e| e.to_string()))
            .and_then(|b| ValidBatch::new(b).map_err(|e| e.to_string()));
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                // Not delayed then: the produce is answered without the wait.
                tracing::error!(topic = %w.topic, partition = w.index, error = %e, "a delayed run could not be recorded; delivering at once");
                continue;
            }
        };
        let _order = w.delays.order.lock().await;
        for r in &runs {
            w.delays.insert(*r);
            entered.push((d.state.clone(), d.topic_id, *r));
        }
        let rx = d.state.append(vec![batch], durability).await;
        drop(_order);
        // The produce waits for this too; if it is gone the record is still written.
        if let Some(tx) = d.recorded.take() {
            let _ = tx.send(rx);
        }
    }
    entered
}

/// Takes back delayed runs whose append failed: out of the index, and a withdrawal queued on
/// `__queue_delays` (the offsets will be given to other records).
pub(super) async fn withdraw_delays(entered: Vec<(Arc<Partition>, TopicId, Delay)>, w: &Writer) {
    for (state, _, d) in entered {
        w.delays.remove(d.first);
        let k = delays::key(&w.topic, w.index, d.first);
        let mut builder = BatchBuilder::default();
        let pushed = builder.push(&RecordRef {
            timestamp: now_ms(),
            key: Some(&k),
            value: None,
            headers: &[],
        });
        if let Ok(batch) = pushed
            .map_err(|e| e.to_string())
            .and_then(|()| builder.finish().map_err(|e| e.to_string()))
            .and_then(|b| ValidBatch::new(b).map_err(|e| e.to_string()))
        {
            let _order = w.delays.order.lock().await;
            drop(state.append(vec![batch], Durability::Appended).await);
        }
    }
}
