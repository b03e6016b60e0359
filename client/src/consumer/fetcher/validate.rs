//! Position validation after a leader change (Kafka's KIP-320, as librdkafka and the Java
//! consumer do it).
//!
//! The fetcher keeps, per partition, the leader epoch of the last batch it fetched and the
//! leader epoch (from the client's metadata) it last fetched in. When the metadata names a new
//! leader epoch, the next fetch waits for an OffsetForLeaderEpoch to the new leader: where does
//! its log end in the epoch of the last batch fetched? An end at or past the position means the
//! position is on the new leader's log, and fetching goes on. An end below it means the log was
//! cut under records the consumer already read (only after an unclean election: an in-sync
//! leader has everything below the high watermark, and consumers read only below it): with an
//! `auto_offset_reset` policy the consumer goes back to that end and logs it, without one the
//! partition stops with [`Error::LogTruncated`] until a seek.

use std::collections::BTreeMap;

use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    OffsetForLeaderEpochPartition, OffsetForLeaderEpochRequest, OffsetForLeaderEpochTopic, response,
};
use tokio::time::Instant;

use super::{Chunk, ChunkKind, FetchCtx, Wanted, leader_moved};
use crate::config::AutoOffsetReset;
use crate::error::Error;

/// A partition whose position is checked before it is fetched again.
#[derive(Debug)]
pub(crate) struct Check {
    pub(super) wanted: Wanted,
    /// The leader epoch of the last batch fetched before the position.
    pub(super) last_epoch: i32,
}

impl FetchCtx {
    /// Checks the positions of `parts`, all led by the broker at `addr` (see the module docs).
    pub(super) async fn check_positions(&self, addr: &str, parts: Vec<Check>) {
        let mut topics: Vec<OffsetForLeaderEpochTopic> = Vec::new();
        for c in &parts {
            let partition = OffsetForLeaderEpochPartition {
                partition: c.wanted.tp.partition,
                current_leader_epoch: c.wanted.leader_epoch,
                leader_epoch: c.last_epoch,
            };
            match topics.last_mut() {
                Some(t) if *t.name == *c.wanted.tp.topic => t.partitions.push(partition),
                _ => topics.push(OffsetForLeaderEpochTopic {
                    name: c.wanted.tp.topic.to_string(),
                    partitions: vec![partition],
                }),
            }
        }
        let answered = match self.control.connection_at(addr).await {
            Ok(conn) => conn
                .request(OffsetForLeaderEpochRequest { topics })
                .await
                .and_then(|b| match b {
                    response::Body::OffsetForLeaderEpoch(r) => Ok(r),
                    _ => Err(Error::Protocol {
                        addr: addr.to_string(),
                        reason: "OffsetForLeaderEpoch answered with another API's body".into(),
                    }),
                }),
            Err(e) => Err(e),
        };
        let retry_at = Instant::now() + self.config.retry_backoff;
        let answers: BTreeMap<(String, i32), _> = match answered {
            Ok(r) => r
                .topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.name;
                    t.partitions
                        .into_iter()
                        .map(move |p| ((name.clone(), p.partition), p))
                })
                .collect(),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "OffsetForLeaderEpoch failed");
                BTreeMap::new()
            }
        };
        let policy = self.shared.reset_policy();
        let mut stopped = Vec::new();
        {
            let mut state = self.shared.lock();
            for c in parts {
                let w = &c.wanted;
                let Some(part) = state.get_mut(&w.tp) else {
                    continue;
                };
                if part.epoch != w.seek || part.fetch_offset != Some(w.offset) {
                    continue; // Sought meanwhile.
                }
                let Some(a) = answers.get(&(w.tp.topic.to_string(), w.tp.partition)) else {
                    self.routes.forget(&w.tp.topic);
                    part.backoff_until = Some(retry_at);
                    continue;
                };
                let code = a.error_code();
                if code != ErrorCode::None {
                    tracing::debug!(tp = %w.tp, %code, "position check refused");
                    if leader_moved(code) || code.is_retriable() {
                        self.routes.forget(&w.tp.topic);
                        part.backoff_until = Some(retry_at);
                    } else {
                        // A broker that cannot answer the check: fetch on, as before it.
                        part.fetched_in = w.leader_epoch;
                    }
                    continue;
                }
                part.fetched_in = w.leader_epoch;
                if a.end_offset < 0 || a.end_offset >= w.offset {
                    continue; // The position is on the new leader's log (or it cannot say).
                }
                part.last_epoch = None;
                if policy == AutoOffsetReset::None {
                    part.fetch_offset = None;
                    stopped.push(Chunk {
                        tp: w.tp.clone(),
                        epoch: w.seek,
                        kind: ChunkKind::Error(Error::LogTruncated {
                            topic: w.tp.topic.to_string(),
                            partition: w.tp.partition,
                            offset: w.offset,
                            end: a.end_offset,
                        }),
                    });
                } else {
                    tracing::warn!(tp = %w.tp, position = w.offset, end = a.end_offset, epoch = c.last_epoch, "the log was truncated below the position after a leader change; going back to its end");
                    part.fetch_offset = Some(a.end_offset);
                    part.buffered = false;
                    stopped.push(Chunk {
                        tp: w.tp.clone(),
                        epoch: w.seek,
                        kind: ChunkKind::Reset {
                            offset: a.end_offset,
                        },
                    });
                }
            }
        }
        for chunk in stopped {
            self.send(chunk);
        }
    }
}
