//! Dead-lettering: copying records that failed for good into their group's dead-letter topic,
//! exactly once across crashes.
//!
//! A record that is rejected, or whose last allowed attempt fails, is `DeadLettering`. One task
//! ([`Core::queue_dead_letter`], run by the broker's background loop) writes such records, a run
//! of at most [`MAX_RECORDS_PER_WRITE`] of one queue-partition at a time:
//! 1. it notes in the state log the dead-letter partition's end offset (the run's `since`) and
//!    waits until that is durable;
//! 2. it appends the copies to the dead-letter partition (fsynced);
//! 3. it marks the run `DeadLettered`.
//!
//! After a crash, a run that has a `since` may or may not have been written: the writer reads the
//! dead-letter partition from `since` on and looks for the run's records by their `strom.dlq.*`
//! headers; found, it only does step 3. A run without a `since` was never written. So each record
//! reaches the dead-letter topic once, whatever moment the broker dies at.
//!
//! The copy keeps the record's key, value and headers and adds `strom.dlq.topic`,
//! `strom.dlq.partition`, `strom.dlq.offset`, `strom.dlq.group`, `strom.dlq.attempts`,
//! `strom.dlq.reason` (`attempts-exhausted`, `rejected`, `lease-expired`), `strom.dlq.error` (the
//! last error text a member gave, if any) and `strom.dlq.timestamp` (the record's own timestamp,
//! ms). The dead-letter topic (`<topic>.dlq` unless the group names one) is created on demand;
//! a record of partition p goes to its partition p mod its partition count.

use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::batch::{BatchBuilder, BatchIter, HeaderRef, RecordRef, Records};
use strom_protocol::compression::{MAX_DECOMPRESSED_BATCH, decompress};
use strom_storage::ValidBatch;

use super::state::{Offset, Reason, State};
use super::{QueueGroup, StateWrites, Tp, now_ms};
use crate::core::Core;

/// Most records copied in one write.
pub const MAX_RECORDS_PER_WRITE: i64 = 500;

/// Writes per group per round, so one group with a flood of failures cannot starve the others.
const WRITES_PER_ROUND: usize = 16;

const H_TOPIC: &str = "strom.dlq.topic";
const H_PARTITION: &str = "strom.dlq.partition";
const H_OFFSET: &str = "strom.dlq.offset";
const H_GROUP: &str = "strom.dlq.group";
const H_ATTEMPTS: &str = "strom.dlq.attempts";
const H_REASON: &str = "strom.dlq.reason";
const H_ERROR: &str = "strom.dlq.error";
const H_TIMESTAMP: &str = "strom.dlq.timestamp";

/// Error text kept in a dead-letter record, at most.
pub const MAX_ERROR_BYTES: usize = 1024;

/// One run to dead-letter.
#[derive(Debug, Clone)]
struct Job {
    tp: Tp,
    first: Offset,
    last: Offset,
    reason: Reason,
    since: Offset,
    attempts: u32,
    error: Option<Arc<str>>,
    dlq_topic: String,
}

impl Core {
    /// Writes what waits for the dead-letter topics, a bounded amount per group.
    pub async fn queue_dead_letter(&self) {
        for g in self.queues.all() {
            for _ in 0..WRITES_PER_ROUND {
                let Some(job) = next_job(&g).await else { break };
                if let Err(e) = self.dead_letter_run(&g, &job).await {
                    tracing::warn!(group = %g.name, topic = %job.tp.0, partition = job.tp.1, first = job.first, error = %e, "dead-letter write failed; retrying");
                    break;
                }
            }
        }
    }

    async fn dead_letter_run(&self, g: &QueueGroup, job: &Job) -> Result<(), String> {
        let dlq = self
            .get_or_create_topic(&job.dlq_topic, self.config.default_partitions)
            .await
            .map_err(|(_, e)| format!("dead-letter topic {}: {e}", job.dlq_topic))?;
        let n = i32::try_from(dlq.count.max(1)).unwrap_or(i32::MAX);
        let partition = job.tp.1.rem_euclid(n);
        // The dead-letter partition may be led by another broker: `copy_*` write and read
        // wherever its leader is.
        let written = if job.since >= 0 {
            let group = g.name.as_str();
            self.copy_found(&job.dlq_topic, partition, job.since, &|h| {
                is_copy(h, group, job)
            })
            .await?
        } else {
            let since = self.copy_since(&job.dlq_topic, partition).await?;
            self.queue_mark(g, &job.tp, |qp| {
                qp.dead_letter_intent(job.first, job.last, since)
            })
            .await?;
            false
        };
        if !written && let Some(batch) = self.dead_letter_batch(&g.name, job)? {
            self.copy_append(&job.dlq_topic, partition, batch).await?;
        }
        self.queue_mark(g, &job.tp, |qp| qp.dead_lettered(job.first, job.last))
            .await
    }

    /// Applies a delta computed from a queue-partition and waits until it is durable.
    async fn queue_mark(
        &self,
        g: &QueueGroup,
        tp: &Tp,
        change: impl FnOnce(&super::state::QueuePartition) -> Option<super::state::Delta>,
    ) -> Result<(), String> {
        let mut out = StateWrites::default();
        let mut inner = g.inner.lock().await;
        let delta = inner.qps.get(tp).and_then(change);
        if let Some(d) = delta {
            inner.commit(&g.name, tp, d, &mut out, now_ms());
        }
        let rx = self.queue_persist(g.route, out).await;
        drop(inner);
        Self::queue_durable(rx).await.map(drop).map_err(|(_, e)| e)
    }

    /// The copies of the run's records that still exist, as one batch (None: none exist).
    fn dead_letter_batch(&self, group: &str, job: &Job) -> Result<Option<ValidBatch>, String> {
        let Some(source) = self
            .topics
            .get(&job.tp.0)
            .and_then(|t| t.partition(job.tp.1).cloned())
        else {
            return Ok(None);
        };
        let now = now_ms();
        let partition = job.tp.1.to_string();
        let attempts = job.attempts.to_string();
        let error: Option<&str> = job.error.as_deref().map(|e| clip(e, MAX_ERROR_BYTES));
        let mut builder = BatchBuilder::default();
        let mut offset = job.first.max(source.reader().start_offset());
        while offset <= job.last {
            let r = match source.reader().read(offset, 1 << 20) {
                Ok(r) if !r.data.is_empty() => r,
                Ok(_) => break,
                Err(e) => return Err(e.to_string()),
            };
            for item in BatchIter::new(&r.data) {
                let Ok((range, header)) = item else { break };
                if header.base_offset > job.last {
                    break;
                }
                let raw = r.data.slice(range);
                let plain =
                    decompress(&raw, &header, MAX_DECOMPRESSED_BATCH).map_err(|e| e.to_string())?;
                let records = Records::new(plain).map_err(|e| e.to_string())?;
                for rec in records {
                    let rec = rec.map_err(|e| e.to_string())?;
                    if rec.offset < job.first || rec.offset > job.last {
                        continue;
                    }
                    let offset_text = rec.offset.to_string();
                    let timestamp = rec.timestamp.to_string();
                    let mut headers: Vec<HeaderRef<'_>> = rec.headers().collect();
                    headers.extend([
                        HeaderRef {
                            key: H_TOPIC,
                            value: Some(job.tp.0.as_bytes()),
                        },
                        HeaderRef {
                            key: H_PARTITION,
                            value: Some(partition.as_bytes()),
                        },
                        HeaderRef {
                            key: H_OFFSET,
                            value: Some(offset_text.as_bytes()),
                        },
                        HeaderRef {
                            key: H_GROUP,
                            value: Some(group.as_bytes()),
                        },
                        HeaderRef {
                            key: H_ATTEMPTS,
                            value: Some(attempts.as_bytes()),
                        },
                        HeaderRef {
                            key: H_REASON,
                            value: Some(job.reason.name().as_bytes()),
                        },
                        HeaderRef {
                            key: H_TIMESTAMP,
                            value: Some(timestamp.as_bytes()),
                        },
                    ]);
                    if let Some(e) = error {
                        headers.push(HeaderRef {
                            key: H_ERROR,
                            value: Some(e.as_bytes()),
                        });
                    }
                    builder
                        .push(&RecordRef {
                            timestamp: now,
                            key: rec.key.as_deref(),
                            value: rec.value.as_deref(),
                            headers: &headers,
                        })
                        .map_err(|e| e.to_string())?;
                }
            }
            if r.next_offset <= offset {
                break;
            }
            offset = r.next_offset;
        }
        if builder.is_empty() {
            return Ok(None);
        }
        let bytes: Bytes = builder.finish().map_err(|e| e.to_string())?;
        ValidBatch::new(bytes).map(Some).map_err(|e| e.to_string())
    }
}

/// The first run waiting in the group, with what its copies need.
async fn next_job(g: &QueueGroup) -> Option<Job> {
    let inner = g.inner.lock().await;
    for (tp, qp) in &inner.qps {
        let Some(span) = qp.dead_lettering().next() else {
            continue;
        };
        let State::DeadLettering { reason, since } = span.state else {
            continue;
        };
        return Some(Job {
            tp: tp.clone(),
            first: span.first,
            last: span.last.min(span.first + MAX_RECORDS_PER_WRITE - 1),
            reason,
            since,
            attempts: span.attempts,
            error: span.error.clone(),
            dlq_topic: inner.settings.dead_letter_topic_for(&tp.0),
        });
    }
    None
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether a record with these headers is a copy of one of the job's records.
fn is_copy(headers: &[HeaderRef<'_>], group: &str, job: &Job) -> bool {
    let h = |k: &str| headers.iter().find(|h| h.key == k).and_then(|h| h.value);
    let partition = job.tp.1.to_string();
    h(H_GROUP) == Some(group.as_bytes())
        && h(H_TOPIC) == Some(job.tp.0.as_bytes())
        && h(H_PARTITION) == Some(partition.as_bytes())
        && h(H_OFFSET)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|o| o >= job.first && o <= job.last)
}
