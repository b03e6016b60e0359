//! Per-log settings, named as Kafka names them, and the clock the log reads time from.
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `segment.bytes` | 1 GiB | roll to a new segment when the active one would grow past this |
//! | `segment.ms` | 7 days | roll when the active segment's first append is this old |
//! | `segment.index.bytes` | 10 MiB | capacity of each offset index (time index: 2x); a full index rolls |
//! | `index.interval.bytes` | 4096 | log bytes between two sparse index entries |
//! | `retention.ms` | 7 days | delete oldest segments whose newest record is older; -1 keeps forever |
//! | `retention.bytes` | -1 | delete oldest segments while the log stays above this size; -1 = no limit |
//! | `cleanup.policy` | `delete` | `delete`, `compact`, or `compact,delete` |
//! | `delete.retention.ms` | 1 day | how long compaction keeps a tombstone (null value) |
//! | `max.message.bytes` | 1048588 | largest batch accepted |
//! | `flush.messages` | none | fsync after this many records (1 = every append) |
//! | `flush.ms` | none | fsync when the oldest unflushed append is this old |
//! | `flush.bytes` | none | fsync after this many unflushed bytes (strom's own; Kafka has none) |
//! | `writeback.bytes` | none | start the kernel's write-back of every this many appended bytes, without waiting for it (strom's own); `none` leaves it to the kernel |
//!
//! With no `flush.*` set, the log leaves write-back to the operating system: acknowledged data
//! survives a crash of the process, not of the machine (see docs/storage.md).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StorageError};

/// What happens to old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanupPolicy {
    /// Delete whole old segments by `retention.ms` / `retention.bytes`.
    pub delete: bool,
    /// Keep only the newest record per key in closed segments.
    pub compact: bool,
}

impl CleanupPolicy {
    /// Kafka's default: `delete`.
    pub const DELETE: Self = Self {
        delete: true,
        compact: false,
    };
    /// `compact`.
    pub const COMPACT: Self = Self {
        delete: false,
        compact: true,
    };
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.compact, self.delete) {
            (true, true) => f.write_str("compact,delete"),
            (true, false) => f.write_str("compact"),
            _ => f.write_str("delete"),
        }
    }
}

/// The settings of one partition log. Build with [`LogConfig::default`] and the setters, or from
/// Kafka-named pairs with [`LogConfig::set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// `segment.index.bytes`.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`.
    pub index_interval_bytes: u64,
    /// `retention.ms`; negative keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes`; negative means no size limit.
    pub retention_bytes: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: u64,
    /// `flush.messages`.
    pub flush_messages: Option<u64>,
    /// `flush.ms`.
    pub flush_ms: Option<i64>,
    /// `flush.bytes`.
    pub flush_bytes: Option<u64>,
    /// `writeback.bytes`: after this many appended bytes, the log asks the kernel to start
    /// writing them to disk (`sync_file_range`, not waited for), so that write-back runs
    /// alongside the appends instead of in bursts once dirty pages pile up. `None` leaves
    /// write-back to the kernel's own thresholds.
    pub writeback_bytes: Option<u64>,
    /// `min.insync.replicas`: how many in-sync replicas an `acks=all` produce needs (and below
    /// which the high watermark stands still). Replication's setting, kept with the others so
    /// that topics describe and validate it in one place; the log itself does not use it.
    pub min_insync_replicas: u32,
    /// `unclean.leader.election.enable`: whether the controller may elect a replica outside the
    /// ISR when none inside is alive (losing what only the ISR held). Replication's setting, as
    /// above.
    pub unclean_leader_election: bool,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            segment_index_bytes: 10 << 20,
            index_interval_bytes: 4096,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DAY_MS,
            max_message_bytes: 1_048_588,
            flush_messages: None,
            flush_ms: None,
            flush_bytes: None,
            writeback_bytes: None,
            min_insync_replicas: 1,
            unclean_leader_election: false,
        }
    }
}

/// Setting names accepted by [`LogConfig::set`], in display order.
pub const CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "flush.bytes",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
    "writeback.bytes",
];

/// Positions inside a segment are stored as u32; a segment may not be larger.
const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

impl LogConfig {
    /// True when every append is fsynced before it is acknowledged (`flush.messages=1`).
    pub fn flushes_every_append(&self) -> bool {
        self.flush_messages == Some(1)
    }

    /// True when some `flush.*` setting asks for fsyncs; otherwise write-back is the OS's.
    pub fn has_flush_policy(&self) -> bool {
        self.flush_messages.is_some() || self.flush_ms.is_some() || self.flush_bytes.is_some()
    }

    /// Sets one setting by its Kafka name. `value` "none" (or -1) clears the `flush.*` settings
    /// and `writeback.bytes`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |reason: &'static str| StorageError::InvalidConfig {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let int = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| bad("not an integer"))
        };
        let positive = || {
            int().and_then(|v| {
                u64::try_from(v)
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| bad("must be a positive integer"))
            })
        };
        let optional = || -> Result<Option<u64>> {
            if value.trim().eq_ignore_ascii_case("none") || value.trim() == "-1" {
                Ok(None)
            } else {
                positive().map(Some)
            }
        };
        match key {
            "segment.bytes" => {
                let v = positive()?;
                if !(4096..=MAX_SEGMENT_BYTES).contains(&v) {
                    return Err(bad("must be between 4096 and 4294967295"));
                }
                self.segment_bytes = v;
            }
            "segment.ms" => self.segment_ms = positive()? as i64,
            "segment.index.bytes" => {
                let v = positive()?;
                if v < 4096 {
                    return Err(bad("must be at least 4096"));
                }
                self.segment_index_bytes = v;
            }
            "index.interval.bytes" => self.index_interval_bytes = positive()?,
            "retention.ms" => self.retention_ms = int()?.max(-1),
            "retention.bytes" => self.retention_bytes = int()?.max(-1),
            "delete.retention.ms" => {
                let v = int()?;
                if v < 0 {
                    return Err(bad("must not be negative"));
                }
                self.delete_retention_ms = v;
            }
            "max.message.bytes" => {
                let v = positive()?;
                if v > i32::MAX as u64 {
                    return Err(bad("must fit a batch length field (< 2 GiB)"));
                }
                self.max_message_bytes = v;
            }
            "cleanup.policy" => {
                let mut p = CleanupPolicy::default();
                for part in value.split(',') {
                    match part.trim() {
                        "delete" => p.delete = true,
                        "compact" => p.compact = true,
                        _ => return Err(bad("expected delete, compact or compact,delete")),
                    }
                }
                self.cleanup_policy = p;
            }
            "flush.messages" => self.flush_messages = optional()?,
            "flush.ms" => self.flush_ms = optional()?.map(|v| v as i64),
            "flush.bytes" => self.flush_bytes = optional()?,
            "writeback.bytes" => self.writeback_bytes = optional()?,
            "min.insync.replicas" => {
                self.min_insync_replicas = u32::try_from(positive()?)
                    .ok()
                    .filter(|&v| v <= i32::MAX as u32)
                    .ok_or_else(|| bad("must be between 1 and 2147483647"))?;
            }
            "unclean.leader.election.enable" => {
                self.unclean_leader_election = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("expected true or false")),
                }
            }
            _ => return Err(bad("unknown setting")),
        }
        Ok(())
    }

    /// Every setting as (Kafka name, value), in [`CONFIG_KEYS`] order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        vec![
            ("cleanup.policy", self.cleanup_policy.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            ("flush.bytes", opt(self.flush_bytes)),
            ("flush.messages", opt(self.flush_messages)),
            ("flush.ms", opt(self.flush_ms.map(|v| v as u64))),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.index.bytes", self.segment_index_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            (
                "unclean.leader.election.enable",
                self.unclean_leader_election.to_string(),
            ),
            ("writeback.bytes", opt(self.writeback_bytes)),
        ]
    }
}

/// Where a log reads the time (ms since the Unix epoch) for rolling, retention, compaction
/// horizons and interval flushes. Tests use [`ManualClock`] to move time deterministically.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_pairs_round_trip() {
        let mut c = LogConfig::default();
        c.set("segment.bytes", "1048576").unwrap();
        c.set("cleanup.policy", "compact,delete").unwrap();
        c.set("flush.messages", "1").unwrap();
        c.set("retention.ms", "-1").unwrap();
        assert!(c.flushes_every_append());
        let mut d = LogConfig::default();
        for (k, v) in c.pairs() {
            d.set(k, &v).unwrap();
        }
        assert_eq!(c, d);
        let keys: Vec<_> = c.pairs().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, CONFIG_KEYS);
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = LogConfig::default();
        for (k, v) in [
            ("segment.bytes", "12"),
            ("segment.bytes", "abc"),
            ("segment.bytes", "99999999999"),
            ("cleanup.policy", "forever"),
            ("max.message.bytes", "0"),
            ("no.such.key", "1"),
        ] {
            let e = c.set(k, v).unwrap_err();
            assert!(matches!(e, StorageError::InvalidConfig { .. }), "{k}={v}");
        }
        assert_eq!(c, LogConfig::default());
    }
}
