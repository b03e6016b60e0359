//! Queue groups' delayed delivery at append time: the delayed runs of an append are entered in
//! the partition's index and recorded on `__queue_delays` before the records become readable,
//! and withdrawn if the append fails (docs/queues.md).

use std::sync::Arc;

use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::ValidBatch;

use super::writer::Writer;
use super::{AppendRequest, Durability, Partition, now_ms};
use crate::core::delays::{self, Delay, TopicId};

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
