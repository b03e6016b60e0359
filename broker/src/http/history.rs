//! The last ten minutes of the broker, sampled every five seconds, for the console's plots
//! (`GET /api/history`): appended records and bytes, fetched bytes, and each group's lag.
//!
//! Bounded: at most [`POINTS`] samples, each with at most [`MAX_GROUPS`] consumer groups and as
//! many queue groups (those with the most waiting records), so the history never holds more
//! than a few hundred kilobytes however many groups there are.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::now_ms;
use crate::core::Core;

/// Time between samples.
pub(super) const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
const POINTS: usize = 120;
/// Groups of each kind kept per sample.
const MAX_GROUPS: usize = 200;

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Point {
    pub time_ms: i64,
    pub records_appended_total: u64,
    pub bytes_appended_total: u64,
    pub fetch_bytes_total: u64,
    /// Consumer group -> records after its committed offsets, over its partitions.
    pub lag: BTreeMap<String, i64>,
    /// Queue group -> records ready or delayed.
    pub queue_ready: BTreeMap<String, u64>,
}

/// The samples, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    pub fn points(&self) -> Vec<Point> {
        match self.points.lock() {
            Ok(p) => p.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }

    fn push(&self, point: Point) {
        let mut points = match self.points.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        if points.len() == POINTS {
            points.pop_front();
        }
        points.push_back(point);
    }
}

/// Takes a sample now and every [`INTERVAL`] until shutdown.
pub(super) async fn sample(core: Arc<Core>, history: Arc<History>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Some(point) = take(&core).await {
            history.push(point);
        }
    }
}

/// Appended records and bytes over every partition.
pub(super) fn appended(core: &Core) -> (u64, u64) {
    let mut records = 0;
    let mut bytes = 0;
    for t in core.topics.all() {
        for p in &t.partitions {
            records += p.stats().records.load(Relaxed);
            bytes += p.stats().bytes.load(Relaxed);
        }
    }
    (records, bytes)
}

/// Each consumer group's lag, summed over its partitions.
fn group_lags(core: &Core) -> Vec<(String, i64)> {
    super::consumer_group_views(core)
        .iter()
        .map(|v| (v.name.clone(), super::total_lag(v)))
        .collect()
}

/// The `n` entries with the largest values.
fn largest<V: Ord + Copy>(mut all: Vec<(String, V)>, n: usize) -> BTreeMap<String, V> {
    if all.len() > n {
        all.sort_by_key(|e| std::cmp::Reverse(e.1));
        all.truncate(n);
    }
    all.into_iter().collect()
}

/// One sample: queue groups described on the runtime (their state is behind async locks), the
/// walk over every partition and consumer group on the blocking pool.
async fn take(core: &Arc<Core>) -> Option<Point> {
    let queues: Vec<(String, u64)> = super::queue_views(core)
        .await
        .into_iter()
        .map(|v| {
            let ready = v
                .partitions
                .iter()
                .map(|p| p.counts.available + p.counts.delayed)
                .sum();
            (v.group, ready)
        })
        .collect();
    let core = core.clone();
    tokio::task::spawn_blocking(move || {
        let (records, bytes) = appended(&core);
        Point {
            time_ms: now_ms(),
            records_appended_total: records,
            bytes_appended_total: bytes,
            fetch_bytes_total: core.stats.fetch_bytes.load(Relaxed),
            lag: largest(group_lags(&core), MAX_GROUPS),
            queue_ready: largest(queues, MAX_GROUPS),
        }
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_groups() {
        let all = vec![("a".into(), 1), ("b".into(), 9), ("c".into(), 5)];
        let kept = largest(all, 2);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn keeps_the_last_points() {
        let h = History::default();
        for i in 0..(POINTS as i64 + 5) {
            h.push(Point {
                time_ms: i,
                records_appended_total: 0,
                bytes_appended_total: 0,
                fetch_bytes_total: 0,
                lag: BTreeMap::new(),
                queue_ready: BTreeMap::new(),
            });
        }
        let p = h.points();
        assert_eq!(p.len(), POINTS);
        assert_eq!(p[0].time_ms, 5);
    }
}
