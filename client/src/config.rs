//! Settings of the clients, with Kafka's names and defaults where Kafka has the same setting.
//!
//! [`ClientConfig`] holds what every client needs (where the brokers are, timeouts); the
//! producer's and the consumer's settings embed it. Every field is public and documented with
//! its default; build a config with struct-update syntax from `new` and check it with
//! `validate` (the clients call it on connect).

use std::time::Duration;

use crate::error::{Error, Result};

/// The default bootstrap address: a broker on this machine at strom's default port.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9494";

/// Settings shared by every client: where the brokers are and how long to wait for them.
///
/// ```
/// use std::time::Duration;
/// use strom_client::ClientConfig;
///
/// let config = ClientConfig {
///     request_timeout: Duration::from_secs(10),
///     ..ClientConfig::new("127.0.0.1:9494")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Brokers to connect to, `host:port`, comma-separated; tried in order. Default
    /// [`DEFAULT_BOOTSTRAP`].
    pub bootstrap: String,
    /// Sent in every request header, for the broker's logs. Default `"strom-client"`.
    pub client_id: String,
    /// Longest wait for a TCP connection and the ApiVersions handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for a response (the broker's own produce timeout is set to this too).
    /// Default 30 s (Kafka's `request.timeout.ms`).
    pub request_timeout: Duration,
    /// Largest response frame accepted; a larger length prefix closes the connection before
    /// anything is allocated. Default 256 MiB.
    pub max_response_bytes: usize,
    /// First wait before reconnecting after a failed connection; doubles up to
    /// `reconnect_backoff_max`. Default 50 ms (Kafka's `reconnect.backoff.ms`).
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts. Default 1 s.
    pub reconnect_backoff_max: Duration,
}

impl ClientConfig {
    /// Defaults, with `bootstrap` as the broker list.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            client_id: "strom-client".to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 256 << 20,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
        }
    }

    /// The bootstrap addresses, split and trimmed.
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.addresses().is_empty() {
            return Err(Error::config("bootstrap", "no broker address given"));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config("request_timeout", "must be above zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be above zero"));
        }
        if self.max_response_bytes < 1024 {
            return Err(Error::config("max_response_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BOOTSTRAP)
    }
}

/// When the broker acknowledges a produce request.
///
/// ```
/// use strom_client::{Acks, ProducerConfig};
///
/// let durable = ProducerConfig { acks: Acks::Durable, ..ProducerConfig::default() };
/// assert!(durable.is_idempotent());
/// let fire_and_forget = ProducerConfig { acks: Acks::None, ..ProducerConfig::default() };
/// assert!(!fire_and_forget.is_idempotent());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// No acknowledgement at all: the broker sends no response, so a record's future resolves
    /// once its request is written to the socket, with offset -1. Records can be lost; the
    /// producer is not idempotent in this mode (as Kafka does with `acks=0`).
    None,
    /// After the leader appended the records (readable, not necessarily on disk, perhaps on
    /// no other replica yet).
    Leader,
    /// After an fsync that covers the records, on the leader and on every in-sync replica.
    Durable,
    /// After every in-sync replica has the records (the partition's high watermark passed
    /// them; for a topic with a `flush.*` policy, fsynced on each). Refused with
    /// NOT_ENOUGH_REPLICAS (retriable) while the partition has fewer in-sync replicas than its
    /// topic's `min.insync.replicas`. The default, as Kafka's producers default to
    /// `acks=all`: on a single broker it is answered once appended (or fsynced, with a
    /// `flush.*` policy).
    #[default]
    All,
}

/// How record batches are compressed (the records section of each batch; the broker stores
/// and serves them compressed). Every codec Kafka defines; consumers read all of them.
///
/// ```
/// use strom_client::CompressionType;
///
/// assert_eq!(CompressionType::parse("lz4"), Some(CompressionType::Lz4));
/// assert_eq!(CompressionType::parse("zstd"), Some(CompressionType::Zstd { level: 3 }));
/// assert_eq!(CompressionType::parse("gzip"), Some(CompressionType::Gzip { level: 6 }));
/// assert_eq!(CompressionType::parse("snappy"), Some(CompressionType::Snappy));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Not compressed. The default.
    #[default]
    None,
    /// gzip (Kafka codec 1), at the level given.
    Gzip {
        /// deflate level, 1 to 9; 6 is zlib's (and Kafka's) default.
        level: u32,
    },
    /// Snappy (Kafka codec 2), in the framing of snappy-java that Kafka's Java client writes:
    /// a 16-byte header, then 32 KiB blocks each preceded by its compressed length.
    Snappy,
    /// LZ4 frame format (Kafka codec 3).
    Lz4,
    /// Zstandard (Kafka codec 4), at the level given.
    Zstd {
        /// zstd level, 1 to 22; 3 is zstd's (and Kafka's) default.
        level: i32,
    },
}

impl CompressionType {
    /// zstd at its default level, 3.
    pub const ZSTD: CompressionType = CompressionType::Zstd { level: 3 };
    /// gzip at its default level, 6.
    pub const GZIP: CompressionType = CompressionType::Gzip { level: 6 };

    /// The Kafka codec number written into the batch attributes.
    pub(crate) fn codec(self) -> i16 {
        match self {
            CompressionType::None => 0,
            CompressionType::Gzip { .. } => 1,
            CompressionType::Snappy => 2,
            CompressionType::Lz4 => 3,
            CompressionType::Zstd { .. } => 4,
        }
    }

    /// Parses `none`, `gzip`, `snappy`, `lz4` or `zstd` (case-insensitive; gzip and zstd at
    /// their default levels).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(CompressionType::None),
            "gzip" => Some(CompressionType::GZIP),
            "snappy" => Some(CompressionType::Snappy),
            "lz4" => Some(CompressionType::Lz4),
            "zstd" => Some(CompressionType::ZSTD),
            _ => None,
        }
    }
}

/// Settings of a [`crate::Producer`].
///
/// ```
/// use std::time::Duration;
/// use strom_client::{Acks, CompressionType, ProducerConfig};
///
/// let config = ProducerConfig {
///     acks: Acks::Durable,
///     compression: CompressionType::Lz4,
///     linger: Duration::from_millis(10),
///     ..ProducerConfig::new("127.0.0.1:9494")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// When the broker acknowledges. Default [`Acks::All`].
    pub acks: Acks,
    /// Idempotent producer: batches carry a producer id, epoch and per-partition sequence
    /// numbers, so retries never write a record twice and never reorder a partition. Default
    /// `true`; ignored (off) with [`Acks::None`].
    pub idempotence: bool,
    /// Compression of each batch's records. Default [`CompressionType::None`].
    pub compression: CompressionType,
    /// A partition's batch is sent once it holds this many bytes (a single larger record gets a
    /// batch of its own). Default 16384 (Kafka's `batch.size`).
    pub batch_size: usize,
    /// How long a batch may wait for more records before it is sent. Default 5 ms (Kafka's
    /// `linger.ms` default since 3.9).
    pub linger: Duration,
    /// Bytes of record batches held by the producer and not yet acknowledged; `send` waits when
    /// they are used up. A batch counts the room its buffer has, which grows with the records
    /// appended (doubling up to `batch_size`), not `batch_size` from the start: many partitions
    /// of small batches fit. Default 32 MiB (Kafka's `buffer.memory`).
    pub buffer_memory: usize,
    /// Largest record (encoded, with a batch header); larger ones fail at once. Default 1 MiB
    /// (Kafka's `max.request.size`). A request may hold several partitions' batches up to the
    /// broker's `max_frame_bytes`.
    pub max_record_size: usize,
    /// Produce requests in flight on the connection, at most 5 with idempotence. Default 5.
    pub max_in_flight: usize,
    /// First wait before resending after a retriable error; doubles per attempt up to
    /// `retry_backoff_max`, with jitter. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest wait between attempts. Default 1 s.
    pub retry_backoff_max: Duration,
    /// A record fails if it is not acknowledged within this time after `send` accepted it.
    /// Default 120 s (Kafka's `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long `send` waits for a topic's metadata (and the topic's auto-creation). Default
    /// 60 s (Kafka's `max.block.ms`).
    pub max_block: Duration,
    /// Partition counts are refreshed at least this often. Default 5 min.
    pub metadata_max_age: Duration,
}

impl ProducerConfig {
    /// Defaults, with `bootstrap` as the broker list.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            client: ClientConfig::new(bootstrap),
            acks: Acks::All,
            idempotence: true,
            compression: CompressionType::None,
            batch_size: 16384,
            linger: Duration::from_millis(5),
            buffer_memory: 32 << 20,
            max_record_size: 1 << 20,
            max_in_flight: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(120),
            max_block: Duration::from_secs(60),
            metadata_max_age: Duration::from_secs(300),
        }
    }

    /// Whether batches carry producer ids and sequences (idempotence on and acks not none).
    pub fn is_idempotent(&self) -> bool {
        self.idempotence && self.acks != Acks::None
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        self.client.validate()?;
        if self.batch_size < 128 {
            return Err(Error::config("batch_size", "must be at least 128 bytes"));
        }
        if self.batch_size > self.max_record_size.max(1 << 20) * 16 {
            return Err(Error::config("batch_size", "is unreasonably large"));
        }
        if self.max_record_size < 128 {
            return Err(Error::config(
                "max_record_size",
                "must be at least 128 bytes",
            ));
        }
        if self.buffer_memory < self.batch_size.max(self.max_record_size) {
            return Err(Error::config(
                "buffer_memory",
                "must hold at least one batch and one record of max_record_size",
            ));
        }
        if self.buffer_memory > u32::MAX as usize {
            return Err(Error::config("buffer_memory", "must be below 4 GiB"));
        }
        if self.max_in_flight == 0 {
            return Err(Error::config("max_in_flight", "must be at least 1"));
        }
        if self.is_idempotent() && self.max_in_flight > 5 {
            return Err(Error::config(
                "max_in_flight",
                "must be at most 5 with idempotence (the broker remembers the last 5 batches)",
            ));
        }
        if self.delivery_timeout.is_zero() {
            return Err(Error::config("delivery_timeout", "must be above zero"));
        }
        if let CompressionType::Zstd { level } = self.compression
            && !(1..=22).contains(&level)
        {
            return Err(Error::config("compression", "zstd level must be 1 to 22"));
        }
        if let CompressionType::Gzip { level } = self.compression
            && !(1..=9).contains(&level)
        {
            return Err(Error::config("compression", "gzip level must be 1 to 9"));
        }
        Ok(())
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BOOTSTRAP)
    }
}

/// What the consumer does when it has no valid position for a partition: none yet after
/// [`crate::Consumer::assign`], or one outside the stored offsets (retention deleted them, or
/// the partition was recreated).
///
/// ```
/// use strom_client::{AutoOffsetReset, ConsumerConfig};
///
/// // Start new partitions at their oldest record instead of reporting Error::NoOffset.
/// let config = ConsumerConfig {
///     auto_offset_reset: AutoOffsetReset::Earliest,
///     ..ConsumerConfig::default()
/// };
/// assert_eq!(ConsumerConfig::default().auto_offset_reset, AutoOffsetReset::None);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// Move to the oldest stored record.
    Earliest,
    /// Move to the end (only records appended from now on).
    Latest,
    /// Report it: `poll` returns [`Error::NoOffset`] or [`Error::OffsetOutOfRange`] for that
    /// partition until the application seeks it. The default: a consumer never skips or
    /// re-reads data without being told to.
    #[default]
    None,
}

/// Settings of a [`crate::Consumer`].
///
/// ```
/// use strom_client::{AutoOffsetReset, ConsumerConfig};
///
/// let config = ConsumerConfig {
///     auto_offset_reset: AutoOffsetReset::Earliest,
///     ..ConsumerConfig::new("127.0.0.1:9494")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// See [`AutoOffsetReset`]. Default [`AutoOffsetReset::None`]. For partitions assigned
    /// with [`assign`](crate::Consumer::assign); a consumer that subscribes to a group follows
    /// [`GroupConfig::auto_offset_reset`] instead.
    pub auto_offset_reset: AutoOffsetReset,
    /// The broker answers a fetch once this many bytes are available. Default 1.
    pub fetch_min_bytes: u32,
    /// ... or once this long has passed (long poll). Default 500 ms (Kafka's
    /// `fetch.max.wait.ms`). It also bounds how long a seek waits for a fetch in flight.
    pub fetch_max_wait: Duration,
    /// Record bytes asked for per fetch (the first batch may exceed it). Default 50 MiB
    /// (Kafka's `fetch.max.bytes`).
    pub fetch_max_bytes: u32,
    /// Record bytes asked for per partition per fetch. Default 1 MiB (Kafka's
    /// `max.partition.fetch.bytes`).
    pub max_partition_fetch_bytes: u32,
    /// Fetched bytes (decompressed) waiting for `poll`; the background fetch pauses above it.
    /// Memory held is at most this plus one fetch response. Default 64 MiB.
    pub max_buffered_bytes: usize,
    /// Most records one `poll` returns. Default 500 (Kafka's `max.poll.records`).
    pub max_poll_records: usize,
    /// Check every fetched batch's CRC-32C before decoding it. Default `true`.
    pub check_crcs: bool,
    /// Wait after a retriable fetch error before fetching that partition again. Default 100 ms.
    pub retry_backoff: Duration,
    /// Consumer group settings, used once the consumer [`subscribe`](crate::Consumer::subscribe)s
    /// to a group. See [`GroupConfig`].
    pub group: GroupConfig,
}

impl ConsumerConfig {
    /// Defaults, with `bootstrap` as the broker list.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            client: ClientConfig::new(bootstrap),
            auto_offset_reset: AutoOffsetReset::None,
            fetch_min_bytes: 1,
            fetch_max_wait: Duration::from_millis(500),
            fetch_max_bytes: 50 << 20,
            max_partition_fetch_bytes: 1 << 20,
            max_buffered_bytes: 64 << 20,
            max_poll_records: 500,
            check_crcs: true,
            retry_backoff: Duration::from_millis(100),
            group: GroupConfig::default(),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        self.client.validate()?;
        if self.max_poll_records == 0 {
            return Err(Error::config("max_poll_records", "must be at least 1"));
        }
        if self.fetch_max_bytes == 0 || self.max_partition_fetch_bytes == 0 {
            return Err(Error::config(
                "fetch_max_bytes",
                "fetch limits must be above zero",
            ));
        }
        if self.fetch_max_wait >= self.client.request_timeout {
            return Err(Error::config(
                "fetch_max_wait",
                "must be shorter than client.request_timeout",
            ));
        }
        if u32::try_from(self.fetch_max_wait.as_millis()).is_err() {
            return Err(Error::config("fetch_max_wait", "too long"));
        }
        if (self.fetch_max_bytes as usize).saturating_add(1 << 20) > self.client.max_response_bytes
        {
            return Err(Error::config(
                "fetch_max_bytes",
                "must be at least 1 MiB below client.max_response_bytes",
            ));
        }
        self.group.validate()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BOOTSTRAP)
    }
}

/// How the group coordinator spreads the partitions of the subscribed topics over a group's
/// members. Both strategies are sticky: a member keeps its partitions while it is within its
/// fair share, so a rebalance moves as few partitions as possible. The first member to join an
/// empty group chooses for the whole group.
///
/// ```
/// use strom_client::Assignor;
///
/// assert_eq!(Assignor::parse("roundrobin"), Some(Assignor::RoundRobin));
/// assert_eq!(Assignor::default().as_str(), "range");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Each topic's partitions in contiguous ranges, per topic (Kafka's `range`). The default.
    #[default]
    Range,
    /// All partitions dealt out one by one over the members (Kafka's `roundrobin`).
    RoundRobin,
}

impl Assignor {
    /// The name sent to the coordinator: `range` or `roundrobin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    /// Parses `range` or `roundrobin` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "range" => Some(Assignor::Range),
            "roundrobin" | "round-robin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }
}

/// Consumer group settings of a [`ConsumerConfig`], used by
/// [`Consumer::subscribe`](crate::Consumer::subscribe).
///
/// ```
/// use std::time::Duration;
/// use strom_client::{AutoOffsetReset, ConsumerConfig, GroupConfig};
///
/// let config = ConsumerConfig {
///     group: GroupConfig {
///         session_timeout: Duration::from_secs(10),
///         auto_offset_reset: AutoOffsetReset::Earliest,
///         enable_auto_commit: false,
///         ..GroupConfig::default()
///     },
///     ..ConsumerConfig::new("127.0.0.1:9494")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// How long the coordinator waits for a heartbeat before it removes the member and gives its
    /// partitions to the others. Default 45 s (Kafka's `session.timeout.ms`); the broker accepts
    /// 1 s to 300 s unless configured otherwise (`--group-min-session-timeout-ms`,
    /// `--group-max-session-timeout-ms`) and refuses the join outside its bounds. Heartbeats are
    /// sent at the interval the broker asks for (a third of this, 100 ms to 3 s). The client
    /// also gives its partitions up by itself when no heartbeat was answered for this long.
    pub session_timeout: Duration,
    /// The assignment strategy asked for when this member is the first of an empty group.
    /// Default [`Assignor::Range`].
    pub assignor: Assignor,
    /// Commit the positions `poll` has returned, every `auto_commit_interval` (from within
    /// `poll`), before giving partitions up in a rebalance, and on `close`. Default `true`
    /// (Kafka's `enable.auto.commit`). Turn it off to commit explicitly after processing
    /// ([`Consumer::commit`](crate::Consumer::commit)).
    pub enable_auto_commit: bool,
    /// How often auto-commit commits. Default 5 s (Kafka's `auto.commit.interval.ms`).
    pub auto_commit_interval: Duration,
    /// Where a partition the group has no committed offset for starts, and what happens when a
    /// committed offset is outside the stored range. Default [`AutoOffsetReset::Latest`], as in
    /// Kafka: a new group reads what is produced from now on, and replaying history is an
    /// explicit choice (`Earliest` here, or `Admin::reset_offsets` before the group starts)
    /// rather than an accident that re-reads a topic's whole retention. `None` makes `poll`
    /// report [`Error::NoOffset`] instead. This setting replaces the
    /// consumer's `auto_offset_reset` once it subscribes.
    pub auto_offset_reset: AutoOffsetReset,
}

impl GroupConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let session_ms = self.session_timeout.as_millis();
        if session_ms == 0 || u32::try_from(session_ms).is_err() {
            return Err(Error::config(
                "group.session_timeout",
                "must be at least 1 ms and below 49 days",
            ));
        }
        if self.enable_auto_commit && self.auto_commit_interval.is_zero() {
            return Err(Error::config(
                "group.auto_commit_interval",
                "must be above zero with auto-commit on",
            ));
        }
        Ok(())
    }

    /// The session timeout in ms, as sent to the coordinator.
    pub(crate) fn session_timeout_ms(&self) -> u32 {
        u32::try_from(self.session_timeout.as_millis()).unwrap_or(u32::MAX)
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(45),
            assignor: Assignor::Range,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: AutoOffsetReset::Latest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ProducerConfig::default().validate().unwrap();
        ConsumerConfig::default().validate().unwrap();
        ClientConfig::default().validate().unwrap();
        assert!(ProducerConfig::default().is_idempotent());
        let none = ProducerConfig {
            acks: Acks::None,
            ..ProducerConfig::default()
        };
        assert!(!none.is_idempotent());
    }

    #[test]
    fn bad_settings_are_named() {
        let c = ProducerConfig {
            max_in_flight: 6,
            ..ProducerConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                name: "max_in_flight",
                ..
            })
        ));
        let c = ProducerConfig {
            max_in_flight: 6,
            idempotence: false,
            ..ProducerConfig::default()
        };
        c.validate().unwrap();
        let c = ClientConfig::new(" , ");
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                name: "bootstrap",
                ..
            })
        ));
        assert_eq!(
            ClientConfig::new("a:1, b:2").addresses(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(CompressionType::parse("ZSTD"), Some(CompressionType::ZSTD));
        assert_eq!(CompressionType::parse("GZip"), Some(CompressionType::GZIP));
        assert_eq!(
            CompressionType::parse("snappy"),
            Some(CompressionType::Snappy)
        );
        assert_eq!(CompressionType::parse("brotli"), None);
        for bad in [
            CompressionType::Gzip { level: 0 },
            CompressionType::Zstd { level: 23 },
        ] {
            let c = ProducerConfig {
                compression: bad,
                ..ProducerConfig::default()
            };
            assert!(matches!(
                c.validate(),
                Err(Error::Config {
                    name: "compression",
                    ..
                })
            ));
        }
    }

    #[test]
    fn group_settings_are_checked() {
        let g = GroupConfig::default();
        assert_eq!(g.session_timeout_ms(), 45_000);
        assert_eq!(g.auto_offset_reset, AutoOffsetReset::Latest);
        assert!(g.enable_auto_commit);
        let c = ConsumerConfig {
            group: GroupConfig {
                session_timeout: Duration::ZERO,
                ..GroupConfig::default()
            },
            ..ConsumerConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                name: "group.session_timeout",
                ..
            })
        ));
        let c = GroupConfig {
            auto_commit_interval: Duration::ZERO,
            ..GroupConfig::default()
        };
        assert!(c.validate().is_err());
        let c = GroupConfig {
            auto_commit_interval: Duration::ZERO,
            enable_auto_commit: false,
            ..GroupConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(Assignor::parse("RANGE"), Some(Assignor::Range));
        assert_eq!(Assignor::parse("sticky"), None);
    }
}
