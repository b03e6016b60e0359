//! The topic registry: which topics exist, their partitions and settings, and the metadata files
//! that make them survive restarts.
//!
//! A topic's metadata is one small text file, `<data-dir>/meta/topics/<name>.topic`, written
//! atomically (temp file, fsync, rename, fsync of the directory) and ending with a CRC-32 line:
//!
//! ```text
//! name=orders
//! id=4f1c5b0e8a2d4e6f9b3c7a1d2e5f8091
//! partitions=12
//! config.retention.ms=86400000
//! crc32=1c291ca3
//! ```
//!
//! The id (a random 128-bit value, Kafka's topic id) tells a topic from an older one of the same
//! name; files written before ids existed get one derived from the name at load. Only settings
//! the topic overrides are stored; the rest come from the broker's topic defaults,
//! so changing a default applies to every topic that does not override it. Partition `p` of topic
//! `t` lives in `<data-dir>/t-p/`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

use strom_protocol::ErrorCode;
use strom_protocol::topic::validate_topic_name;
use strom_storage::{IoFaults, Log, LogConfig, LogEnv};
use tokio::sync::{Mutex, oneshot};

use crate::core::partition::{Partition, WriterMsg};
use crate::core::producers::ProducerStates;
use crate::error::BrokerError;
use crate::stats::Stats;

/// A topic: its partitions and settings.
#[derive(Debug)]
pub struct Topic {
    /// The topic's name.
    pub name: Arc<str>,
    /// The topic's id (Kafka's topic id: Metadata v10+, KIP-848 assignments).
    pub id: TopicId,
    /// Partitions, by index.
    pub partitions: Vec<Arc<Partition>>,
    /// Settings the topic overrides (Kafka names).
    overrides: RwLock<BTreeMap<String, String>>,
    /// Effective settings: broker defaults with the overrides applied.
    config: RwLock<LogConfig>,
}

impl Topic {
    /// The effective settings.
    pub fn config(&self) -> LogConfig {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Settings the topic overrides.
    pub fn overrides(&self) -> BTreeMap<String, String> {
        match self.overrides.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The partition with `index`, if it exists.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// A topic id: 16 bytes, as Kafka's UUIDs.
pub type TopicId = [u8; 16];

/// A new random topic id (a version 4 UUID's layout).
fn new_topic_id(name: &str) -> TopicId {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process and then stepped per
    // instance; mixing in the time and the name makes ids of one process distinct too.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u128(nanos);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// The id of a topic whose metadata predates ids: derived from its name, so it stays the same
/// across restarts without rewriting the file.
fn legacy_topic_id(name: &str) -> TopicId {
    let a = crc32fast::hash(name.as_bytes());
    let b = crc32fast::hash(format!("{name}/topic-id").as_bytes());
    let c = crc32fast::hash(format!("topic-id/{name}").as_bytes());
    let d = crc32fast::hash(format!("{name}#{}", name.len()).as_bytes());
    let mut id = [0u8; 16];
    for (i, v) in [a, b, c, d].iter().enumerate() {
        id[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<TopicId> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// What a topic's metadata file holds.
struct TopicMeta {
    name: String,
    id: TopicId,
    partitions: u32,
    overrides: BTreeMap<String, String>,
}

/// An error of one topic operation, as it goes on the wire.
pub type TopicError = (ErrorCode, String);

/// All topics of the broker.
#[derive(Debug)]
pub struct Topics {
    data_dir: PathBuf,
    meta_dir: PathBuf,
    defaults: LogConfig,
    /// Faults injected into every partition log (tests only).
    io_faults: Option<IoFaults>,
    max_partitions: u32,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    /// Serialises creations and deletions, so two of them never race on one name.
    admin: Mutex<()>,
    /// Delayed runs held by every partition's delay index, together.
    delayed_runs: Arc<AtomicUsize>,
    /// The broker's data-path counters, which partition writers count fsyncs in.
    stats: Arc<Stats>,
}

const META_SUFFIX: &str = ".topic";

fn effective(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, TopicError> {
    let mut c = defaults.clone();
    for (k, v) in overrides {
        c.set(k, v)
            .map_err(|e| (ErrorCode::InvalidConfig, e.to_string()))?;
    }
    Ok(c)
}

fn encode_meta(m: &TopicMeta) -> String {
    let mut s = format!(
        "name={}\nid={}\npartitions={}\n",
        m.name,
        hex(&m.id),
        m.partitions
    );
    for (k, v) in &m.overrides {
        s.push_str(&format!("config.{k}={v}\n"));
    }
    let crc = crc32fast::hash(s.as_bytes());
    s.push_str(&format!("crc32={crc:08x}\n"));
    s
}

fn decode_meta(path: &Path, text: &str) -> Result<TopicMeta, BrokerError> {
    let bad = |reason: &str| BrokerError::Metadata {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let body_end = text
        .rfind("crc32=")
        .ok_or_else(|| bad("no checksum line"))?;
    let (body, crc_line) = text.split_at(body_end);
    let crc = u32::from_str_radix(crc_line.trim_start_matches("crc32=").trim(), 16)
        .map_err(|_| bad("unreadable checksum"))?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut name = None;
    let mut id = None;
    let mut partitions = None;
    let mut overrides = BTreeMap::new();
    for line in body.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad("line without '='"))?;
        match k {
            "name" => name = Some(v.to_string()),
            "id" => id = Some(parse_hex(v).ok_or_else(|| bad("unreadable topic id"))?),
            "partitions" => partitions = v.parse().ok(),
            k => {
                let key = k
                    .strip_prefix("config.")
                    .ok_or_else(|| bad("unknown key"))?;
                overrides.insert(key.to_string(), v.to_string());
            }
        }
    }
    match (name, partitions) {
        (Some(n), Some(p)) if p > 0 => Ok(TopicMeta {
            id: id.unwrap_or_else(|| legacy_topic_id(&n)),
            name: n,
            partitions: p,
            overrides,
        }),
        _ => Err(bad("missing name or partitions")),
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    strom_storage::write_atomic(dir, path, bytes).map_err(BrokerError::from)
}

impl Topics {
    /// Loads every topic of `data_dir`, opening (and if needed recovering) its partition logs.
    pub async fn load(
        data_dir: &Path,
        defaults: LogConfig,
        max_partitions: u32,
        io_faults: Option<IoFaults>,
        stats: Arc<Stats>,
    ) -> Result<Self, BrokerError> {
        let meta_dir = data_dir.join("meta").join("topics");
        fs::create_dir_all(&meta_dir).map_err(|source| BrokerError::Io {
            op: "create dir",
            path: meta_dir.clone(),
            source,
        })?;
        let me = Self {
            data_dir: data_dir.to_path_buf(),
            meta_dir: meta_dir.clone(),
            defaults,
            max_partitions,
            io_faults,
            topics: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
            delayed_runs: Arc::new(AtomicUsize::new(0)),
            stats,
        };
        let entries = fs::read_dir(&meta_dir).map_err(|source| BrokerError::Io {
            op: "read dir",
            path: meta_dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(META_SUFFIX)))
            .collect();
        files.sort();
        for path in files {
            let text = fs::read_to_string(&path).map_err(|source| BrokerError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            let meta = decode_meta(&path, &text)?;
            let config = effective(&me.defaults, &meta.overrides).map_err(|(_, reason)| {
                BrokerError::Metadata {
                    path: path.clone(),
                    reason,
                }
            })?;
            let topic = me.open_topic(meta, config, Vec::new()).await?;
            me.insert(topic);
        }
        Ok(me)
    }

    fn insert(&self, topic: Arc<Topic>) {
        let mut g = match self.topics.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.insert(topic.name.clone(), topic);
    }

    fn partition_dir(&self, topic: &str, p: u32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{p}"))
    }

    /// Opens a topic's partition logs, starting at the partitions already open (`existing`,
    /// for a topic that grows) and starting a writer for each.
    async fn open_topic(
        &self,
        meta: TopicMeta,
        config: LogConfig,
        existing: Vec<Arc<Partition>>,
    ) -> Result<Arc<Topic>, BrokerError> {
        let TopicMeta {
            name,
            id,
            partitions,
            overrides,
        } = meta;
        let name: Arc<str> = Arc::from(name);
        let from = existing.len() as u32;
        let mut parts = existing;
        parts.reserve(partitions.saturating_sub(from) as usize);
        // Partitions open a few dozen at a time: after a clean stop each open is a handful of
        // small reads, which a cold page cache turns into disk round trips; overlapping them
        // keeps start-up short with thousands of partitions.
        const OPEN_AT_ONCE: u32 = 32;
        for first in (from..partitions).step_by(OPEN_AT_ONCE as usize) {
            let opening: Vec<_> = (first..partitions.min(first + OPEN_AT_ONCE))
                .map(|p| {
                    let dir = self.partition_dir(&name, p);
                    let c = config.clone();
                    let env = LogEnv {
                        faults: self.io_faults.clone(),
                        ..LogEnv::default()
                    };
                    tokio::task::spawn_blocking(move || {
                        let log = Log::open_in(dir, c, env)?;
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64);
                        let producers = ProducerStates::load(&log, now)?;
                        Ok::<_, strom_storage::StorageError>((p, log, producers))
                    })
                })
                .collect();
            for task in opening {
                let (p, log, producers) = task.await.map_err(|e| BrokerError::Config {
                    key: "data_dir".into(),
                    reason: e.to_string(),
                })??;
                parts.push(Partition::start(
                    p as i32,
                    log,
                    producers,
                    name.clone(),
                    self.delayed_runs.clone(),
                    self.stats.clone(),
                ));
            }
        }
        Ok(Arc::new(Topic {
            name,
            id,
            partitions: parts,
            overrides: RwLock::new(overrides),
            config: RwLock::new(config),
        }))
    }

    /// Delayed runs held by every partition together: none means no queue-partition has a
    /// delay to take in.
    pub fn delayed_runs(&self) -> usize {
        self.delayed_runs.load(AtomicOrdering::Relaxed)
    }

    /// The topic called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        let g = match self.topics.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get(name).cloned()
    }

    /// The topic with id `id`, if it exists.
    pub fn get_by_id(&self, id: &TopicId) -> Option<Arc<Topic>> {
        let g = match self.topics.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.values().find(|t| t.id == *id).cloned()
    }

    /// Checks that a topic may grow to `count` partitions (Kafka's CreatePartitions).
    pub fn check_add_partitions(&self, name: &str, count: i64) -> Result<(), TopicError> {
        self.check_growth(name, count).map(|_| ())
    }

    /// Grows a topic to `count` partitions: the metadata first (durably), then the new
    /// partitions' logs. Partitions are never removed.
    pub async fn add_partitions(&self, name: &str, count: i64) -> Result<(), TopicError> {
        let _guard = self.admin.lock().await;
        let topic = self.check_growth(name, count)?;
        let now = topic.partitions.len() as i64;
        let meta = TopicMeta {
            name: name.to_string(),
            id: topic.id,
            partitions: count as u32,
            overrides: topic.overrides(),
        };
        let path = self.meta_dir.join(format!("{name}{META_SUFFIX}"));
        let storage = |e: BrokerError| (ErrorCode::StorageError, e.to_string());
        write_atomic(&self.meta_dir, &path, encode_meta(&meta).as_bytes()).map_err(storage)?;
        let grown = self
            .open_topic(meta, topic.config(), topic.partitions.clone())
            .await
            .map_err(storage)?;
        self.insert(grown);
        tracing::info!(topic = name, from = now, to = count, "partitions added");
        Ok(())
    }

    fn check_growth(&self, name: &str, count: i64) -> Result<Arc<Topic>, TopicError> {
        let topic = self.get(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            )
        })?;
        let now = topic.partitions.len() as i64;
        if count <= now || count > i64::from(self.max_partitions) {
            return Err((
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {name} has {now} partitions; the new count must be in {}..={}",
                    now + 1,
                    self.max_partitions
                ),
            ));
        }
        if strom_protocol::topic::is_internal_topic(name) {
            return Err((
                ErrorCode::PolicyViolation,
                format!("{name} is internal: its partitions are fixed"),
            ));
        }
        Ok(topic)
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let g = match self.topics.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<_> = g.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Checks a topic creation without doing it; returns the effective settings.
    pub fn check_create(
        &self,
        name: &str,
        partitions: i64,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, TopicError> {
        validate_topic_name(name).map_err(|e| (ErrorCode::InvalidTopicName, e.to_string()))?;
        if partitions < 1 || partitions > i64::from(self.max_partitions) {
            return Err((
                ErrorCode::InvalidPartitions,
                format!(
                    "partitions must be in 1..={}; got {partitions}",
                    self.max_partitions
                ),
            ));
        }
        if self.get(name).is_some() {
            return Err((
                ErrorCode::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ));
        }
        effective(&self.defaults, overrides)
    }

    /// Creates a topic with a new id: metadata first (durably), then its partition logs. The
    /// broker's own internal topics are made this way; every other topic comes from the
    /// metadata image ([`Topics::create_with_id`]).
    pub async fn create(
        &self,
        name: &str,
        partitions: i64,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        self.create_with_id(name, new_topic_id(name), partitions, overrides)
            .await
    }

    /// Creates a topic with the id the metadata image gave it.
    pub async fn create_with_id(
        &self,
        name: &str,
        id: TopicId,
        partitions: i64,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        let _guard = self.admin.lock().await;
        let config = self.check_create(name, partitions, &overrides)?;
        let partitions = partitions as u32;
        let storage = |e: BrokerError| (ErrorCode::StorageError, e.to_string());
        let path = self.meta_dir.join(format!("{name}{META_SUFFIX}"));
        let meta = TopicMeta {
            name: name.to_string(),
            id,
            partitions,
            overrides,
        };
        write_atomic(&self.meta_dir, &path, encode_meta(&meta).as_bytes()).map_err(storage)?;
        let topic = self
            .open_topic(meta, config, Vec::new())
            .await
            .map_err(storage)?;
        self.insert(topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Deletes a topic: its metadata first (so a crash never resurrects it), then its logs.
    pub async fn delete(&self, name: &str) -> Result<(), TopicError> {
        if strom_protocol::topic::is_internal_topic(name) {
            return Err((
                ErrorCode::PolicyViolation,
                format!("{name} is internal and cannot be deleted"),
            ));
        }
        let _guard = self.admin.lock().await;
        let topic = self.get(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            )
        })?;
        let path = self.meta_dir.join(format!("{name}{META_SUFFIX}"));
        fs::remove_file(&path).map_err(|e| (ErrorCode::StorageError, e.to_string()))?;
        {
            let mut g = match self.topics.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.remove(name);
        }
        for p in &topic.partitions {
            let (done, rx) = oneshot::channel();
            p.send(WriterMsg::Stop { delete: true, done }).await;
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(topic = name, partition = p.index, error = %e, "could not delete partition files");
            }
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Checks a change of a topic's overrides (`set` adds or replaces, `reset` removes) and
    /// returns the overrides it would leave.
    pub fn check_alter(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        reset: &[String],
    ) -> Result<BTreeMap<String, String>, TopicError> {
        let topic = self.get(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            )
        })?;
        if let Some(k) = reset.iter().find(|k| set.contains_key(*k)) {
            return Err((
                ErrorCode::InvalidRequest,
                format!("{k} is both set and reset"),
            ));
        }
        let mut overrides = topic.overrides();
        for (k, v) in set {
            overrides.insert(k.clone(), v.clone());
        }
        for k in reset {
            if !strom_storage::config::CONFIG_KEYS.contains(&k.as_str()) {
                return Err((ErrorCode::InvalidConfig, format!("unknown setting {k}")));
            }
            overrides.remove(k);
        }
        effective(&self.defaults, &overrides)?;
        Ok(overrides)
    }

    /// Replaces a topic's overrides (as the metadata image says them).
    pub async fn set_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        let _guard = self.admin.lock().await;
        let topic = self.get(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            )
        })?;
        let config = effective(&self.defaults, &overrides)?;
        let before = topic.config();
        // Users shrink retention to free disk now: run a pass at once instead of waiting up to
        // `retention_check_interval_ms` for the periodic one.
        let retention_changed = before.retention_ms != config.retention_ms
            || before.retention_bytes != config.retention_bytes
            || before.cleanup_policy != config.cleanup_policy;
        let path = self.meta_dir.join(format!("{name}{META_SUFFIX}"));
        let meta = TopicMeta {
            name: name.to_string(),
            id: topic.id,
            partitions: topic.partitions.len() as u32,
            overrides: overrides.clone(),
        };
        write_atomic(&self.meta_dir, &path, encode_meta(&meta).as_bytes())
            .map_err(|e| (ErrorCode::StorageError, e.to_string()))?;
        match topic.overrides.write() {
            Ok(mut g) => *g = overrides,
            Err(p) => *p.into_inner() = overrides,
        }
        match topic.config.write() {
            Ok(mut g) => *g = config.clone(),
            Err(p) => *p.into_inner() = config.clone(),
        }
        for p in &topic.partitions {
            p.send(WriterMsg::Configure(Box::new(config.clone()))).await;
            if retention_changed {
                p.send(WriterMsg::Maintain).await;
            }
        }
        tracing::info!(topic = name, retention_changed, "topic settings changed");
        Ok(())
    }

    /// The broker's topic defaults.
    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    /// Asks every partition to run retention and compaction.
    pub async fn maintain(&self) {
        for t in self.all() {
            for p in &t.partitions {
                p.send(WriterMsg::Maintain).await;
            }
        }
    }

    /// Closes every partition log cleanly.
    pub async fn close_all(&self) {
        let topics: Vec<Arc<Topic>> = {
            let mut g = match self.topics.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.drain().map(|(_, t)| t).collect()
        };
        let mut waits = Vec::new();
        for t in &topics {
            for p in &t.partitions {
                let (done, rx) = oneshot::channel();
                p.send(WriterMsg::Stop {
                    delete: false,
                    done,
                })
                .await;
                waits.push((t.name.clone(), p.index, rx));
            }
        }
        for (topic, partition, rx) in waits {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(%topic, partition, error = %e, "partition did not close cleanly")
                }
                Err(_) => {
                    tracing::error!(%topic, partition, "partition writer was gone at shutdown")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_damage() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        let id = new_topic_id("orders");
        let text = encode_meta(&TopicMeta {
            name: "orders".into(),
            id,
            partitions: 12,
            overrides: o.clone(),
        });
        let p = Path::new("x.topic");
        let m = decode_meta(p, &text).unwrap();
        assert_eq!(
            (m.name.as_str(), m.id, m.partitions, m.overrides),
            ("orders", id, 12, o)
        );
        let damaged = text.replace("=12", "=13");
        assert!(decode_meta(p, &damaged).is_err());
        assert!(decode_meta(p, "name=x\n").is_err());
    }

    #[test]
    fn topic_ids_are_unique_and_legacy_files_get_a_stable_one() {
        let a = new_topic_id("orders");
        let b = new_topic_id("orders");
        assert_ne!(a, b, "a recreated topic gets a new id");
        assert_eq!(a[6] >> 4, 4, "version 4 layout");
        // A file written before ids existed: no id line.
        let mut body = "name=old\npartitions=2\n".to_string();
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc32={crc:08x}\n"));
        let p = Path::new("old.topic");
        let first = decode_meta(p, &body).unwrap().id;
        assert_eq!(first, decode_meta(p, &body).unwrap().id);
        assert_eq!(first, legacy_topic_id("old"));
        assert_ne!(first, legacy_topic_id("older"));
    }
}
