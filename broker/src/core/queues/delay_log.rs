//! Where delayed runs are recorded: `__queue_delays`, an internal topic of one partition that
//! is this broker's own (never in the metadata image, never replicated), as the delayed runs
//! are the partition writer's own ([`crate::core::delays`]: a run is recorded by the writer of
//! the partition that holds the records, before they become readable).
//!
//! This module owns that log: opening it at start-up and rebuilding every partition's index
//! from it ([`Queues::load`]), moving the delayed runs an older strom recorded in its local
//! `__queue_state` into it once (marker file `meta/queue-delays-moved`), and compacting it
//! ([`Core::delays_compact`]: every run still pending written whole, fsynced, then the log start
//! moved past what that covers).
//!
//! In a cluster a run is known to the broker that led its partition when it was produced:
//! replicating runs with their records is the next step (docs/cluster.md, "Queue groups").

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::ValidBatch;

use super::codec::{self, Key};
use super::{Queues, STATE_TOPIC, now_ms};
use crate::core::Core;
use crate::core::delays::{self, Delay, TopicId};
use crate::core::partition::{Durability, Partition};
use crate::core::topics::Topics;
use crate::error::BrokerError;

/// The internal topic holding this broker's delayed runs.
pub const DELAYS_TOPIC: &str = "__queue_delays";

/// Delayed runs per batch when compaction writes them whole (~60 bytes each).
const SNAPSHOT_RUNS_PER_BATCH: usize = 20_000;

/// The marker, under the data directory, that says an older `__queue_state`'s delayed runs
/// were moved into `__queue_delays`.
const MOVED_MARKER: &str = "meta/queue-delays-moved";

/// Delayed runs read back, per (topic, partition): first -> (topic id, last, time).
type DelayRecords = HashMap<(String, i32), BTreeMap<i64, (TopicId, i64, i64)>>;

/// The log delayed runs are recorded in.
pub(crate) fn delays_partition(topics: &Topics) -> Option<Arc<Partition>> {
    topics
        .get(DELAYS_TOPIC)
        .and_then(|t| t.partition(0).cloned())
}

impl Queues {
    /// Opens `__queue_delays` (created if needed), moves an older `__queue_state`'s delayed
    /// runs into it, and rebuilds every partition's delay index. Queue groups themselves are
    /// loaded when this broker comes to lead their `__queue_state` partitions.
    pub async fn load(topics: &Topics, data_dir: &Path) -> Result<Self, BrokerError> {
        if topics.get(DELAYS_TOPIC).is_none() {
            let overrides = BTreeMap::from([
                ("segment.bytes".to_string(), (64u64 << 20).to_string()),
                ("retention.ms".to_string(), "-1".to_string()),
                ("max.message.bytes".to_string(), (64u64 << 20).to_string()),
            ]);
            topics
                .create(DELAYS_TOPIC, 1, overrides)
                .await
                .map_err(|(_, reason)| BrokerError::Config {
                    key: DELAYS_TOPIC.into(),
                    reason,
                })?;
        }
        let part = delays_partition(topics).ok_or_else(|| BrokerError::Config {
            key: DELAYS_TOPIC.into(),
            reason: "its partition is missing".into(),
        })?;
        let mut records = DelayRecords::new();
        read_delays(&part, &mut records)?;
        let marker = data_dir.join(MOVED_MARKER);
        if !marker.exists() {
            move_older_delays(topics, &part, &mut records).await?;
            let dir = marker.parent().unwrap_or(data_dir);
            std::fs::create_dir_all(dir).map_err(|source| BrokerError::Io {
                op: "create dir",
                path: dir.to_path_buf(),
                source,
            })?;
            strom_storage::write_atomic(dir, &marker, b"delayed runs moved to __queue_delays\n")?;
        }
        restore_delays(topics, records);
        Ok(Self::default())
    }
}

/// Reads the delayed runs of a log into `records` (a withdrawal removes a run).
fn read_delays(part: &Partition, records: &mut DelayRecords) -> Result<(), BrokerError> {
    part.for_each_record(|rec| {
        let Some(key) = rec.key.as_deref() else {
            return;
        };
        if !matches!(codec::decode_key(key), Ok(Key::Delay)) {
            return;
        }
        match delays::decode(key, rec.value.as_deref()) {
            Ok(r) => {
                let runs = records.entry((r.topic, r.partition)).or_default();
                match r.entry {
                    Some(e) => {
                        runs.insert(r.first, e);
                    }
                    None => {
                        runs.remove(&r.first);
                    }
                }
            }
            Err(e) => {
                tracing::error!(offset = rec.offset, error = %e, "skipping an unreadable delayed run record");
            }
        }
    })?;
    Ok(())
}

/// Copies the delayed runs an older strom recorded in its local `__queue_state` (which also
/// held them) into `__queue_delays`, fsynced, adding them to `records`.
async fn move_older_delays(
    topics: &Topics,
    part: &Arc<Partition>,
    records: &mut DelayRecords,
) -> Result<(), BrokerError> {
    let Some(state) = topics.get(STATE_TOPIC) else {
        return Ok(());
    };
    let mut older = DelayRecords::new();
    for p in &state.partitions {
        read_delays(p, &mut older)?;
    }
    let mut out = Vec::new();
    for ((topic, partition), runs) in older {
        let mine = records.entry((topic.clone(), partition)).or_default();
        for (first, (id, last, at)) in runs {
            if mine.insert(first, (id, last, at)).is_none() {
                out.push((
                    delays::key(&topic, partition, first),
                    delays::value(&id, last, at),
                ));
            }
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let moved = out.len();
    for chunk in out.chunks(SNAPSHOT_RUNS_PER_BATCH) {
        let runs = chunk.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        append_runs(part, runs)
            .await
            .map_err(|reason| BrokerError::Config {
                key: DELAYS_TOPIC.into(),
                reason,
            })?;
    }
    tracing::info!(
        runs = moved,
        "delayed runs moved from {STATE_TOPIC} to {DELAYS_TOPIC}"
    );
    Ok(())
}

/// Appends delayed runs' records as one batch and waits until they are fsynced; the batch's
/// base offset.
async fn append_runs<'a>(
    part: &Partition,
    runs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<i64, String> {
    let mut builder = BatchBuilder::default();
    let now = now_ms();
    for (k, v) in runs {
        builder
            .push(&RecordRef {
                timestamp: now,
                key: Some(k),
                value: Some(v),
                headers: &[],
            })
            .map_err(|e| e.to_string())?;
    }
    let bytes = builder.finish().map_err(|e| e.to_string())?;
    let batch = ValidBatch::new(bytes).map_err(|e| e.to_string())?;
    match part.append(vec![batch], Durability::Fsynced).await.await {
        Ok(Ok(base)) => Ok(base),
        Ok(Err((_, e))) => Err(e),
        Err(_) => Err(format!("{DELAYS_TOPIC} stopped")),
    }
}

/// Enters the delayed runs read back into their partitions' indexes: those of topics that still
/// exist (with the same id), within the log.
fn restore_delays(topics: &Topics, records: DelayRecords) {
    let mut restored = 0usize;
    for ((topic, partition), runs) in records {
        let Some(t) = topics.get(&topic) else {
            continue;
        };
        let Some(p) = t.partition(partition) else {
            continue;
        };
        let index = p.delays();
        for (first, (id, last, at)) in runs {
            if id == t.id {
                index.insert(Delay { first, last, at });
                restored += 1;
            }
        }
        index.truncate(p.reader().end_offset());
    }
    if restored > 0 {
        tracing::info!(runs = restored, "delayed runs loaded");
    }
}

impl Core {
    /// Compacts `__queue_delays` once it holds more records than the runs still pending by
    /// more than the setting (and more than those runs: a compaction then writes at most about
    /// as much as it drops). `live` is the runs still pending.
    pub(super) async fn delays_compact(&self, live: usize) {
        let Some(part) = delays_partition(&self.topics) else {
            return;
        };
        let held = {
            let r = part.reader();
            (r.end_offset() - r.start_offset()).max(0) as u64
        };
        let live = live as u64;
        if held.saturating_sub(live) <= self.config.queue_state_compact_records.max(live) {
            return;
        }
        match self.write_delays(&part).await {
            Ok(first) => {
                let before = first.unwrap_or_else(|| part.reader().end_offset());
                if let Err((_, e)) = part.delete_records(before).await {
                    tracing::error!(error = %e, "moving the {DELAYS_TOPIC} start failed");
                } else {
                    tracing::debug!(before, runs = live, "{DELAYS_TOPIC} compacted");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "delayed runs' snapshot failed; not compacting");
            }
        }
    }

    /// Writes every partition's delayed runs whole, fsynced. The base offset of the first
    /// batch, or None when there are none.
    async fn write_delays(&self, part: &Partition) -> Result<Option<i64>, String> {
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
                // One batch at a time: the memory it takes stays one batch, whatever the
                // number of runs.
                let _order = index.order.lock().await;
                for chunk in index.all().chunks(SNAPSHOT_RUNS_PER_BATCH) {
                    let records: Vec<(Vec<u8>, Vec<u8>)> = chunk
                        .iter()
                        .map(|d| {
                            (
                                delays::key(&t.name, p.index, d.first),
                                delays::value(&t.id, d.last, d.at),
                            )
                        })
                        .collect();
                    let runs = records.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
                    let base = append_runs(part, runs).await?;
                    first.get_or_insert(base);
                }
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::stats::Stats;

    fn batch(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> ValidBatch {
        let mut b = BatchBuilder::default();
        for (k, v) in records {
            b.push(&RecordRef {
                timestamp: 1,
                key: Some(k),
                value: v.as_deref(),
                headers: &[],
            })
            .expect("push"); // ok: a few small records
        }
        ValidBatch::new(b.finish().expect("finish")).expect("valid") // ok: built above
    }

    async fn append(part: &Partition, b: ValidBatch) {
        let appended = part.append(vec![b], Durability::Fsynced).await.await;
        assert!(matches!(appended, Ok(Ok(_))), "{appended:?}");
    }

    /// An older strom kept delayed runs in its local `__queue_state`: the first start moves
    /// them (withdrawn ones left out) into `__queue_delays`, fsynced, and marks that done; a
    /// second start moves nothing again.
    #[tokio::test]
    async fn an_older_queue_states_delayed_runs_move_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || async {
            Topics::load(
                dir.path(),
                BrokerConfig::default().topic_defaults().expect("defaults"),
                1000,
                None,
                Arc::new(Stats::default()),
            )
            .await
            .expect("topics")
        };
        let topics = open().await;
        topics
            .create("jobs", 1, BTreeMap::new())
            .await
            .expect("jobs");
        topics
            .create(STATE_TOPIC, 1, BTreeMap::new())
            .await
            .expect("state");
        let jobs = topics.get("jobs").expect("jobs");
        let log = jobs.partition(0).expect("jobs-0").clone();
        let rec = |k: &str| (k.as_bytes().to_vec(), Some(b"v".to_vec()));
        append(&log, batch(&[rec("a"), rec("b"), rec("c")])).await;
        let at = now_ms() + 3_600_000;
        let state = topics
            .get(STATE_TOPIC)
            .and_then(|t| t.partition(0).cloned())
            .expect("state-0");
        let run = |first: i64, last: i64| {
            (
                delays::key("jobs", 0, first),
                Some(delays::value(&jobs.id, last, at)),
            )
        };
        append(
            &state,
            batch(&[run(1, 2), run(0, 0), (delays::key("jobs", 0, 0), None)]),
        )
        .await;
        drop((log, state, jobs, topics));

        for start in 0..2 {
            let topics = open().await;
            Queues::load(&topics, dir.path()).await.expect("load");
            let log = topics
                .get("jobs")
                .and_then(|t| t.partition(0).cloned())
                .expect("jobs-0");
            assert_eq!(
                log.delays().all(),
                vec![Delay {
                    first: 1,
                    last: 2,
                    at
                }],
                "start {start}"
            );
            let moved = delays_partition(&topics).expect("delays log");
            let r = moved.reader();
            assert_eq!(r.end_offset() - r.start_offset(), 1, "start {start}");
            assert!(dir.path().join(MOVED_MARKER).exists());
        }
    }
}
