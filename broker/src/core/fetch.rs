//! Fetch: read stored batches from partitions, and long-poll until `min_bytes` are there.
//!
//! A read is a `Bytes` slice of the segment's memory map, handed to the front-end as it lies on
//! disk (no copy, no re-encoding), and stops at the partition's high watermark: consumers see
//! only what is committed (`replication::replica`). An empty or small fetch waits on the
//! partitions' high-watermark `watch` channels, never in a sleep loop, until data arrives,
//! `max_wait_ms` passes (capped by `fetch_max_wait_ms`) or the broker shuts down.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use strom_storage::StorageError;
use tokio::time::Instant;

use super::{Core, Failure};
use crate::error::storage_code;

/// A fetch request, as every front-end hands it to the core.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    /// Longest wait for `min_bytes`.
    pub max_wait_ms: u32,
    /// Record bytes that end the wait.
    pub min_bytes: u32,
    /// Cap on the response's record bytes (0: `fetch_max_bytes`).
    pub max_bytes: u32,
    pub topics: Vec<(String, Vec<FetchPartition>)>,
}

/// One partition to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchPartition {
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// Cap on this partition's bytes (0: `fetch_partition_max_bytes`).
    pub max_bytes: u32,
    /// The leader epoch the consumer knows (KIP-320; -1: it does not say): an older one than
    /// the partition's is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH.
    pub leader_epoch: i32,
}

/// What one partition gave.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub partition: i32,
    /// Whole stored batches, starting with the one that holds the offset asked for.
    pub result: Result<Bytes, Failure>,
    /// The high watermark (-1 when the partition is unknown).
    pub high_watermark: i64,
    /// The log start offset (-1 when the partition is unknown).
    pub log_start: i64,
}

/// Per topic, in request order, what each partition gave.
pub(crate) type FetchResult = Vec<(String, Vec<Fetched>)>;

impl Core {
    /// Reads, waiting up to `max_wait_ms` for `min_bytes` of records. Any partition error ends
    /// the wait at once.
    pub async fn fetch(&self, req: &FetchRequest) -> FetchResult {
        let max_wait = Duration::from_millis(u64::from(
            req.max_wait_ms.min(self.config.fetch_max_wait_ms),
        ));
        let deadline = Instant::now() + max_wait;
        loop {
            // Take the current high watermarks before reading, so one that moves between the
            // read and the wait is not missed.
            let mut watchers = Vec::new();
            for (name, partitions) in &req.topics {
                if let Some(topic) = self.topics.get(name) {
                    for p in partitions {
                        if let Some(part) = topic.partition(p.partition) {
                            let mut w = part.watch_hw();
                            w.borrow_and_update();
                            watchers.push(w);
                        }
                    }
                }
            }
            let (resp, bytes, errors) = self.read_once(req);
            if errors
                || bytes >= u64::from(req.min_bytes)
                || watchers.is_empty()
                || Instant::now() >= deadline
            {
                self.stats.fetch_bytes.fetch_add(bytes, Relaxed);
                return resp;
            }
            let mut changed: FuturesUnordered<_> =
                watchers.iter_mut().map(|w| w.changed()).collect();
            tokio::select! {
                _ = changed.next() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {
                    self.stats.fetch_bytes.fetch_add(bytes, Relaxed);
                    return resp;
                }
            }
        }
    }

    /// One pass over the partitions: (result, record bytes, whether any partition failed).
    fn read_once(&self, req: &FetchRequest) -> (FetchResult, u64, bool) {
        let mut budget = if req.max_bytes == 0 {
            self.config.fetch_max_bytes
        } else {
            req.max_bytes.min(self.config.fetch_max_bytes)
        } as usize;
        let mut total = 0u64;
        let mut errors = false;
        let mut topics = Vec::with_capacity(req.topics.len());
        let image = self.image();
        for (name, wanted) in &req.topics {
            let topic = self.topics.get(name);
            let mut partitions = Vec::with_capacity(wanted.len());
            for p in wanted {
                let part = match self
                    .leader_partition(&image, topic.as_ref(), name, p.partition)
                    .and_then(|part| {
                        self.check_leader_epoch(&image, name, p.partition, p.leader_epoch)?;
                        Ok(part)
                    }) {
                    Ok(part) => part,
                    Err(e) => {
                        errors = true;
                        partitions.push(Fetched {
                            partition: p.partition,
                            result: Err(e),
                            high_watermark: -1,
                            log_start: -1,
                        });
                        continue;
                    }
                };
                let reader = part.reader();
                let limit = if p.max_bytes == 0 {
                    self.config.fetch_partition_max_bytes
                } else {
                    p.max_bytes
                } as usize;
                // Once something is in the response, stay within the budget; the first batch
                // of the response may exceed it so a consumer always makes progress.
                let limit = if total > 0 { limit.min(budget) } else { limit };
                let hw = part.high_watermark();
                let mut out = Fetched {
                    partition: p.partition,
                    result: Ok(Bytes::new()),
                    high_watermark: hw,
                    log_start: reader.start_offset(),
                };
                if total > 0 && limit == 0 {
                    partitions.push(out);
                    continue;
                }
                // Between the HW and the log end there is nothing to read yet (not committed);
                // past the log end the offset is out of range.
                let read = if p.offset >= hw && p.offset <= reader.end_offset() {
                    Ok(None)
                } else {
                    reader.read_until(p.offset, hw - 1, limit).map(Some)
                };
                match read {
                    Ok(None) => {}
                    Ok(Some(r)) => {
                        total += r.data.len() as u64;
                        budget = budget.saturating_sub(r.data.len());
                        out.log_start = r.log_start;
                        out.result = Ok(r.data);
                    }
                    Err(e) => {
                        errors = true;
                        if let StorageError::OffsetOutOfRange { start, .. } = &e {
                            out.log_start = *start;
                        } else {
                            tracing::error!(topic = %name, partition = p.partition, error = %e, "fetch failed");
                        }
                        out.result = Err((storage_code(&e), e.to_string()));
                    }
                }
                partitions.push(out);
            }
            topics.push((name.clone(), partitions));
        }
        (topics, total, errors)
    }
}
