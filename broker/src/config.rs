//! The broker's settings: embedded defaults, an optional TOML file, and overrides (the `strom serve`
//! flags). Every setting has a safe default so `strom serve` needs no file.
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `data_dir` | `./strom-data` | where partitions and metadata live |
//! | `listen` | `127.0.0.1:9494` | address to accept strom-protocol clients on; port 0 picks a free port |
//! | `kafka_listen` | `127.0.0.1:9092` | address to accept Kafka-protocol clients on; port 0 picks a free port, `none` turns the listener off |
//! | `http_listen` | `127.0.0.1:9644` | address of the HTTP listener (`/metrics`, docs/http.md); port 0 picks a free port, `none` turns it off |
//! | `metrics_per_partition` | true | `/metrics` shows partition series per partition; false sums them per topic (for brokers with many thousands of partitions) |
//! | `node_id` | 0 | this broker's id: in Metadata, and its member id in the metadata quorum |
//! | `controller_voters` | (none) | the metadata quorum's voters, `ID@HOST:PORT,...` (Kafka's `controller.quorum.voters`): 1, 3 or 5 of them; none makes this broker a one-voter cluster of its own; a broker whose id is not listed follows the metadata log as a learner (docs/cluster.md) |
//! | `controller_listen` | this broker's voter address, else `127.0.0.1:0` | address of the controller listener (Raft and brokers' calls to the active controller) |
//! | `auto_create_topics` | true | a produce to an unknown topic creates it |
//! | `default_partitions` | 1 | partitions of an auto-created topic, or of a create without a count |
//! | `default_replication_factor` | 0 | replicas of each partition of an auto-created topic, or of a create without a factor (Kafka's `default.replication.factor`); 0: three, or every live broker when fewer (one for a single broker), as the controller sees them when the topic is created; 1 to 9 otherwise |
//! | `max_partitions` | 10000 | most partitions a topic may have |
//! | `max_frame_bytes` | 8 MiB | largest request frame; checked on the length prefix, before allocating |
//! | `max_control_frame_bytes` | 1 MiB | largest request other than Produce (their decoded form can be ~50x the frame); never above `max_frame_bytes` |
//! | `max_connections` | 10000 | open client connections; more are accepted and closed at once |
//! | `max_inflight_bytes` | 32 MiB | request bytes per connection whose responses are not yet written; the socket is not read past it |
//! | `max_inflight_bytes_total` | 128 MiB | the same over all connections: the bound on memory held by requests |
//! | `write_timeout_ms` | 30000 | a connection whose client does not read a response for this long is closed |
//! | `request_read_timeout_ms` | 30000 | a request must arrive whole within this long of its first byte (slow-loris writers are closed) |
//! | `connections_max_idle_ms` | 600000 | a connection that sends nothing and awaits nothing for this long is closed (Kafka's `connections.max.idle.ms`) |
//! | `max_pipelined_requests` | 1024 | requests per connection awaiting their response |
//! | `fetch_max_bytes` | 50 MiB | cap on a fetch response's record bytes |
//! | `fetch_partition_max_bytes` | 1 MiB | record bytes per partition when a fetch gives no limit |
//! | `fetch_max_wait_ms` | 30000 | cap on a fetch's long-poll wait |
//! | `produce_timeout_ms` | 30000 | how long a produce waits for its acknowledgement when it names no timeout |
//! | `retention_check_interval_ms` | 60000 | how often retention, compaction and the recovery-point checkpoint run |
//! | `group_min_session_timeout_ms` | 1000 | shortest session timeout a group member may ask for |
//! | `group_max_session_timeout_ms` | 300000 | longest session timeout a group member may ask for |
//! | `group_default_session_timeout_ms` | 45000 | session timeout of a member that asks for none |
//! | `metadata_snapshot_entries` | 5000 | metadata log entries between snapshots of the metadata image (Kafka's `metadata.log.max.snapshot.interval`, by entries); a fifth as many are kept behind each snapshot for members slightly behind; a member further behind, or one that lost its log, is sent the snapshot; 10 to 10,000,000 |
//! | `metadata_snapshot_bytes` | 4194304 | once the metadata log's entries hold more encoded bytes than this, the image is snapshotted and the log purged up to the snapshot whatever the entry count (Kafka's `metadata.log.max.record.bytes.between.snapshots`); bounds the log's memory and each start's replay when single entries are large (a leadership change of thousands of partitions); 4096 to 1073741824 |
//! | `offsets_topic_partitions` | 16 | partitions of `__consumer_offsets` when the cluster creates it (on the first request that needs a group coordinator; Kafka's `offsets.topic.num.partitions`, 50 there, 16 as Redpanda's); 1 to 1000; a group lives on the leader of its partition (docs/cluster.md) |
//! | `queue_state_partitions` | 16 | partitions of `__queue_state` when the cluster creates it (on the first request that needs a queue-group coordinator); 1 to 1000; a queue group (and a redrive task) lives on the leader of its partition (docs/cluster.md) |
//! | `group_initial_rebalance_delay_ms` | 3000 | how long a new Kafka (classic protocol) group's first rebalance waits for more members (Kafka's `group.initial.rebalance.delay.ms`) |
//! | `queue_state_compact_records` | 100000 | queue-group state records (`__queue_state`) held beyond the last snapshots and the pending delayed runs (and more than those runs) before every group is snapshotted and the older records dropped |
//! | `replica_lag_time_max_ms` | 30000 | a follower that has not caught up with its leader for this long leaves the ISR (Kafka's `replica.lag.time.max.ms`); 100 to 3600000 |
//! | `shutdown_timeout_ms` | 10000 | how long a graceful shutdown waits for in-flight requests |
//! | `topic_defaults` | (storage defaults) | Kafka-named topic settings (`retention.ms = "..."`) for every topic that does not override them |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use strom_storage::{IoFaults, LogConfig};

use crate::error::BrokerError;

/// The broker's settings. See the module docs for each one and its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Directory of partitions and metadata.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Kafka listener address, or `none`.
    pub kafka_listen: String,
    /// HTTP listener address, or `none`.
    pub http_listen: String,
    /// Partition series per partition in `/metrics` (false: summed per topic).
    pub metrics_per_partition: bool,
    /// Broker id.
    pub node_id: i32,
    /// The metadata quorum's voters (`ID@HOST:PORT,...`); empty: this broker alone.
    pub controller_voters: String,
    /// The controller listener's address; empty: this broker's voter address, or an ephemeral
    /// loopback port.
    pub controller_listen: String,
    /// Create topics on first produce.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Replicas of a new topic's partitions when the request names none (0: min(3, brokers)).
    pub default_replication_factor: u32,
    /// Upper bound on partitions per topic.
    pub max_partitions: u32,
    /// Largest request frame.
    pub max_frame_bytes: u32,
    /// Largest request frame for every API but Produce.
    pub max_control_frame_bytes: u32,
    /// Connection limit.
    pub max_connections: usize,
    /// Request bytes in flight per connection.
    pub max_inflight_bytes: usize,
    /// Request bytes in flight over all connections.
    pub max_inflight_bytes_total: usize,
    /// How long a response may wait for its client to read it.
    pub write_timeout_ms: u64,
    /// A request must arrive whole within this long of its first byte.
    pub request_read_timeout_ms: u64,
    /// Idle connections are closed after this long.
    pub connections_max_idle_ms: u64,
    /// Requests in flight per connection.
    pub max_pipelined_requests: usize,
    /// Fetch response cap.
    pub fetch_max_bytes: u32,
    /// Per-partition fetch default.
    pub fetch_partition_max_bytes: u32,
    /// Long-poll cap.
    pub fetch_max_wait_ms: u32,
    /// Produce acknowledgement timeout default.
    pub produce_timeout_ms: u32,
    /// Retention / compaction period.
    pub retention_check_interval_ms: u64,
    /// Shortest group session timeout.
    pub group_min_session_timeout_ms: u32,
    /// Longest group session timeout.
    pub group_max_session_timeout_ms: u32,
    /// Group session timeout when a member names none.
    pub group_default_session_timeout_ms: u32,
    /// First rebalance delay of a new classic group.
    pub group_initial_rebalance_delay_ms: u64,
    /// Partitions of `__consumer_offsets` when it is created.
    pub offsets_topic_partitions: u32,
    /// Partitions of `__queue_state` when it is created.
    pub queue_state_partitions: u32,
    /// Metadata log entries between snapshots.
    pub metadata_snapshot_entries: u64,
    /// Metadata log bytes that cause a snapshot and a purge.
    pub metadata_snapshot_bytes: u64,
    /// Queue state records between compactions of `__queue_state`.
    pub queue_state_compact_records: u64,
    /// How long a follower may stay behind before it leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// Graceful shutdown deadline.
    pub shutdown_timeout_ms: u64,
    /// Topic setting defaults, by Kafka name.
    pub topic_defaults: BTreeMap<String, String>,
    /// Disk faults to inject into every partition log (tests only: no file key or flag sets it).
    #[serde(skip)]
    pub io_faults: Option<IoFaults>,
}

/// The default listen port of strom's own protocol: not Kafka's 9092, so both can run side by
/// side.
pub const DEFAULT_PORT: u16 = 9494;

/// The default port of the Kafka listener: Kafka's, so a Kafka client's defaults just work.
pub const DEFAULT_KAFKA_PORT: u16 = 9092;

/// The default port of the HTTP listener (Redpanda's admin port, which serves its metrics).
pub const DEFAULT_HTTP_PORT: u16 = 9644;

/// The listen value that turns a listener off.
pub const LISTENER_OFF: &str = "none";

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./strom-data"),
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            kafka_listen: format!("127.0.0.1:{DEFAULT_KAFKA_PORT}"),
            http_listen: format!("127.0.0.1:{DEFAULT_HTTP_PORT}"),
            metrics_per_partition: true,
            node_id: 0,
            controller_voters: String::new(),
            controller_listen: String::new(),
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 0,
            max_partitions: 10_000,
            max_frame_bytes: 8 << 20,
            max_control_frame_bytes: 1 << 20,
            max_connections: 10_000,
            max_inflight_bytes: 32 << 20,
            max_inflight_bytes_total: 128 << 20,
            write_timeout_ms: 30_000,
            request_read_timeout_ms: 30_000,
            connections_max_idle_ms: 600_000,
            max_pipelined_requests: 1024,
            fetch_max_bytes: 50 << 20,
            fetch_partition_max_bytes: 1 << 20,
            fetch_max_wait_ms: 30_000,
            produce_timeout_ms: 30_000,
            retention_check_interval_ms: 60_000,
            group_min_session_timeout_ms: 1_000,
            group_max_session_timeout_ms: 300_000,
            group_default_session_timeout_ms: 45_000,
            group_initial_rebalance_delay_ms: 3_000,
            offsets_topic_partitions: 16,
            queue_state_partitions: 16,
            metadata_snapshot_entries: 5000,
            metadata_snapshot_bytes: 4 << 20,
            replica_lag_time_max_ms: 30_000,
            queue_state_compact_records: 100_000,
            shutdown_timeout_ms: 10_000,
            topic_defaults: BTreeMap::new(),
            io_faults: None,
        }
    }
}

impl BrokerConfig {
    /// The Kafka listener's address, or `None` when it is turned off.
    pub fn kafka_listen(&self) -> Option<&str> {
        (!self.kafka_listen.eq_ignore_ascii_case(LISTENER_OFF))
            .then_some(self.kafka_listen.as_str())
    }

    /// The HTTP listener's address, or `None` when it is turned off.
    pub fn http_listen(&self) -> Option<&str> {
        (!self.http_listen.eq_ignore_ascii_case(LISTENER_OFF)).then_some(self.http_listen.as_str())
    }

    /// The metadata quorum's voters by id with their controller addresses; this broker alone
    /// (at `fallback`, its own controller address) when none are configured.
    pub fn voters(&self) -> Result<BTreeMap<u64, String>, BrokerError> {
        let bad = |reason: String| BrokerError::Config {
            key: "controller_voters".into(),
            reason,
        };
        let mut voters = BTreeMap::new();
        if self.controller_voters.trim().is_empty() {
            return Ok(voters);
        }
        for voter in self.controller_voters.split(',').map(str::trim) {
            let (id, addr) = voter
                .split_once('@')
                .ok_or_else(|| bad(format!("{voter:?} is not ID@HOST:PORT")))?;
            let id: u64 = id
                .parse()
                .map_err(|_| bad(format!("{id:?} in {voter:?} is not a broker id")))?;
            if addr
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(bad(format!("{addr:?} in {voter:?} is not HOST:PORT")));
            }
            if voters.insert(id, addr.to_string()).is_some() {
                return Err(bad(format!("voter {id} is listed twice")));
            }
        }
        if ![1, 3, 5].contains(&voters.len()) {
            return Err(bad(format!(
                "a quorum has 1, 3 or 5 voters, not {} (an even count tolerates no more failures than one fewer)",
                voters.len()
            )));
        }
        Ok(voters)
    }

    /// Reads a TOML file; settings it does not name keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Io {
            op: "read config",
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| BrokerError::Config {
            key: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks every setting; the error names the setting and the bad value.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, reason: String| {
            Err(BrokerError::Config {
                key: key.to_string(),
                reason,
            })
        };
        if self.default_replication_factor > 9 {
            return bad(
                "default_replication_factor",
                format!(
                    "must be 0 (three, or fewer brokers) to 9; got {}",
                    self.default_replication_factor
                ),
            );
        }
        if self.default_partitions == 0 || self.default_partitions > self.max_partitions {
            return bad(
                "default_partitions",
                format!(
                    "must be in 1..={}; got {}",
                    self.max_partitions, self.default_partitions
                ),
            );
        }
        if self.max_frame_bytes < 1024 {
            return bad(
                "max_frame_bytes",
                format!("must be at least 1024; got {}", self.max_frame_bytes),
            );
        }
        if self.max_control_frame_bytes < 1024 {
            return bad(
                "max_control_frame_bytes",
                format!(
                    "must be at least 1024; got {}",
                    self.max_control_frame_bytes
                ),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.max_inflight_bytes < self.max_frame_bytes as usize {
            return bad(
                "max_inflight_bytes",
                format!(
                    "must be at least max_frame_bytes ({}); got {}",
                    self.max_frame_bytes, self.max_inflight_bytes
                ),
            );
        }
        if self.max_inflight_bytes_total < self.max_inflight_bytes {
            return bad(
                "max_inflight_bytes_total",
                format!(
                    "must be at least max_inflight_bytes ({}); got {}",
                    self.max_inflight_bytes, self.max_inflight_bytes_total
                ),
            );
        }
        if self.write_timeout_ms == 0 {
            return bad("write_timeout_ms", "must be at least 1".into());
        }
        if self.request_read_timeout_ms == 0 {
            return bad("request_read_timeout_ms", "must be at least 1".into());
        }
        if self.connections_max_idle_ms == 0 {
            return bad("connections_max_idle_ms", "must be at least 1".into());
        }
        if self.max_pipelined_requests == 0 {
            return bad("max_pipelined_requests", "must be at least 1".into());
        }
        if !(self.group_min_session_timeout_ms..=self.group_max_session_timeout_ms)
            .contains(&self.group_default_session_timeout_ms)
        {
            return bad(
                "group_default_session_timeout_ms",
                format!(
                    "must be within group_min_session_timeout_ms..=group_max_session_timeout_ms ({}..={}); got {}",
                    self.group_min_session_timeout_ms,
                    self.group_max_session_timeout_ms,
                    self.group_default_session_timeout_ms
                ),
            );
        }
        if !(1..=1000).contains(&self.offsets_topic_partitions) {
            return bad(
                "offsets_topic_partitions",
                format!("must be in 1..=1000; got {}", self.offsets_topic_partitions),
            );
        }
        if !(1..=1000).contains(&self.queue_state_partitions) {
            return bad(
                "queue_state_partitions",
                format!("must be in 1..=1000; got {}", self.queue_state_partitions),
            );
        }
        if !(10..=10_000_000).contains(&self.metadata_snapshot_entries) {
            return bad(
                "metadata_snapshot_entries",
                format!(
                    "must be in 10..=10000000; got {}",
                    self.metadata_snapshot_entries
                ),
            );
        }
        if !(100..=3_600_000).contains(&self.replica_lag_time_max_ms) {
            return bad(
                "replica_lag_time_max_ms",
                format!(
                    "must be in 100..=3600000; got {}",
                    self.replica_lag_time_max_ms
                ),
            );
        }
        if !(4096..=1 << 30).contains(&self.metadata_snapshot_bytes) {
            return bad(
                "metadata_snapshot_bytes",
                format!(
                    "must be in 4096..=1073741824; got {}",
                    self.metadata_snapshot_bytes
                ),
            );
        }
        if self.retention_check_interval_ms == 0 {
            return bad("retention_check_interval_ms", "must be at least 1".into());
        }
        if self.queue_state_compact_records == 0 {
            return bad("queue_state_compact_records", "must be at least 1".into());
        }
        if self.node_id < 0 {
            return bad(
                "node_id",
                format!("must be 0 or more; got {}", self.node_id),
            );
        }
        self.voters()?;
        self.topic_defaults()?;
        Ok(())
    }

    /// The topic settings every topic starts from: storage defaults with `topic_defaults` applied.
    pub fn topic_defaults(&self) -> Result<LogConfig, BrokerError> {
        let mut c = LogConfig::default();
        for (k, v) in &self.topic_defaults {
            c.set(k, v).map_err(|e| BrokerError::Config {
                key: format!("topic_defaults.{k}"),
                reason: e.to_string(),
            })?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_some_settings() {
        let c: BrokerConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            max_frame_bytes = 65536
            [topic_defaults]
            "retention.ms" = "1000"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.default_partitions, 1);
        c.validate().unwrap();
        assert_eq!(c.topic_defaults().unwrap().retention_ms, 1000);
        assert!(toml::from_str::<BrokerConfig>("no_such_setting = 1").is_err());
    }

    #[test]
    fn controller_voters_are_parsed_and_checked() {
        let mut c = BrokerConfig::default();
        assert!(c.voters().unwrap().is_empty());
        c.controller_voters = "1@127.0.0.1:9093, 2@127.0.0.2:9093,3@host:1".into();
        let voters = c.voters().unwrap();
        assert_eq!(voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(voters[&2], "127.0.0.2:9093");
        for bad in [
            "1@a:1,2@b:2",
            "1@a:1,1@b:2,3@c:3",
            "x@a:1",
            "1@a",
            "1@:5",
            "1@a:port",
            "1",
        ] {
            c.controller_voters = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("controller_voters"), "{bad}: {e}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let c = BrokerConfig {
            default_partitions: 0,
            ..BrokerConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("default_partitions")
        );
        let mut c = BrokerConfig::default();
        c.topic_defaults.insert("segment.bytes".into(), "x".into());
        for bad in [0, 1001] {
            let c = BrokerConfig {
                offsets_topic_partitions: bad,
                ..BrokerConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("offsets_topic_partitions"), "{bad}: {e}");
            let c = BrokerConfig {
                queue_state_partitions: bad,
                ..BrokerConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("queue_state_partitions"), "{bad}: {e}");
        }
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("segment.bytes")
        );
    }
}
