//! Counters the broker keeps on its data path for `/metrics` (docs/http.md): requests, errors
//! and latency per API, bytes produced and fetched, connections, fsyncs.
//!
//! Everything here is a fixed table of atomics allocated at start-up: counting is a relaxed
//! `fetch_add` per request, per batch or per fsync, never a lock, an allocation or a map
//! lookup, and never per record. The HTTP listener reads the tables when scraped. What the
//! broker already keeps (offsets, group state, queue counts) is read from the core itself and
//! not mirrored here; per-partition counters live with each partition
//! ([`crate::core::partition::PartitionStats`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets; a last bucket takes the rest.
pub(crate) const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with [`LATENCY_BOUNDS`]: one counter per bucket and the sum.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatencySnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound, observations in that bucket alone), the last bound `f64::MAX` (`+Inf`), as
    /// prometheus-client's encoder takes them.
    pub buckets: Vec<(f64, u64)>,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::MAX);
                (bound, b.load(Relaxed))
            })
            .collect();
        LatencySnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// API keys counted per listener: every key of both protocols is below this (higher keys share
/// the last slot).
const API_SLOTS: usize = 128;

/// Error codes counted per API: Kafka's run from -1 to about 130, strom's are small.
const CODE_SLOTS: usize = 256;

/// One API's counters.
#[derive(Debug, Default)]
pub(crate) struct ApiCounters {
    pub requests: AtomicU64,
    pub latency: Latency,
    /// By error code + 1 (so -1, Kafka's UNKNOWN_SERVER_ERROR, is slot 0); allocated at the
    /// API's first error.
    errors: OnceLock<Box<[AtomicU64]>>,
}

impl ApiCounters {
    /// Counts one error with `code` (0 is not an error and is not counted).
    pub fn error(&self, code: i32) {
        if code == 0 {
            return;
        }
        let slot = usize::try_from(code.saturating_add(1))
            .unwrap_or(0)
            .min(CODE_SLOTS - 1);
        let table = self
            .errors
            .get_or_init(|| (0..CODE_SLOTS).map(|_| AtomicU64::new(0)).collect());
        table[slot].fetch_add(1, Relaxed);
    }

    /// (code, count) of every code counted at least once.
    pub fn errors(&self) -> Vec<(i32, u64)> {
        let Some(table) = self.errors.get() else {
            return Vec::new();
        };
        table
            .iter()
            .enumerate()
            .filter_map(|(slot, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (slot as i32 - 1, n))
            })
            .collect()
    }
}

/// Every API of one listener, by API key.
#[derive(Debug)]
pub(crate) struct ApiTable {
    apis: Box<[ApiCounters]>,
}

impl Default for ApiTable {
    fn default() -> Self {
        Self {
            apis: (0..API_SLOTS).map(|_| ApiCounters::default()).collect(),
        }
    }
}

impl ApiTable {
    pub fn api(&self, key: i32) -> &ApiCounters {
        let slot = usize::try_from(key).unwrap_or(API_SLOTS - 1);
        &self.apis[slot.min(API_SLOTS - 1)]
    }

    /// Counts one answered request: its latency and its error codes. Returns the API's
    /// counters, for codes counted afterwards.
    pub fn answered(
        &self,
        key: i32,
        elapsed: Duration,
        codes: impl IntoIterator<Item = i32>,
    ) -> &ApiCounters {
        let api = self.api(key);
        api.requests.fetch_add(1, Relaxed);
        api.latency.observe(elapsed);
        for code in codes {
            api.error(code);
        }
        api
    }

    /// (API key, counters) of every API that has been called.
    pub fn called(&self) -> impl Iterator<Item = (i32, &ApiCounters)> {
        self.apis
            .iter()
            .enumerate()
            .filter(|(_, a)| a.requests.load(Relaxed) > 0)
            .map(|(k, a)| (k as i32, a))
    }
}

/// One listener's connections.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    pub open: AtomicI64,
    /// Closed at once because `max_connections` were open.
    pub rejected: AtomicU64,
}

/// The broker's data-path counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub native: ApiTable,
    pub kafka: ApiTable,
    pub native_connections: Connections,
    pub kafka_connections: Connections,
    /// Record batch bytes received in produce requests (both listeners).
    pub produce_bytes: AtomicU64,
    /// Record batch bytes sent in fetch responses (both listeners, queue fetches included).
    pub fetch_bytes: AtomicU64,
    /// The partition writers' fsyncs (each one covers every append before it).
    pub fsync: Latency,
    /// Whether the disk fails writes (reported to the controller in every heartbeat).
    pub storage: crate::core::storage_health::StorageHealth,
}

impl Stats {
    /// The connections of the listener named `protocol` ("native" or "kafka").
    pub fn connections(&self, protocol: &str) -> &Connections {
        if protocol == "kafka" {
            &self.kafka_connections
        } else {
            &self.native_connections
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_bucket() {
        let h = Latency::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::MAX, 1)));
        assert!((s.sum_seconds - 60.0031).abs() < 1e-6);
    }

    #[test]
    fn errors_are_counted_by_code() {
        let t = ApiTable::default();
        t.answered(0, Duration::from_millis(1), [0, 3, 3, -1]);
        t.answered(0, Duration::from_millis(1), []);
        t.answered(500, Duration::from_millis(1), [9999]);
        let (key, api) = t.called().next().unwrap();
        assert_eq!(key, 0);
        assert_eq!(api.requests.load(Relaxed), 2);
        assert_eq!(api.errors(), vec![(-1, 1), (3, 2)]);
        assert_eq!(t.api(127).errors(), vec![(254, 1)]);
    }
}
