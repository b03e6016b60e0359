//! The topic registry: which topics this broker holds, their partitions and settings, and the
//! metadata files ([`super::topic_file`]) that make them survive restarts. Partition `p` of
//! topic `t` lives in `<data-dir>/t-p/`. Settings the topic does not override come from the
//! broker's topic defaults, so changing a default applies to every topic that does not override
//! it.

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
use crate::core::replication::replica::AppendSignal;
pub use crate::core::topic_file::TopicId;
use crate::core::topic_file::{TopicMeta, decode_meta, encode_meta, new_topic_id};
use crate::error::BrokerError;
use crate::stats::Stats;

/// A topic: its partitions and settings.
#[derive(Debug)]
pub struct Topic {
    /// The topic's name.
    pub name: Arc<str>,
    /// The topic's id (Kafka's topic id: Metadata v10+, KIP-848 assignments).
    pub id: TopicId,
    /// The partitions this broker hosts, in index order (all of them on a single broker).
    pub partitions: Vec<Arc<Partition>>,
    /// How many partitions the topic has, here or on other brokers.
    pub count: u32,
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

    /// The partition with `index`, if this broker hosts it.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        self.partitions
            .binary_search_by_key(&index, |p| p.index)
            .ok()
            .map(|i| &self.partitions[i])
    }

    /// The indexes of the partitions this broker hosts.
    pub fn hosted(&self) -> Vec<u32> {
        self.partitions.iter().map(|p| p.index as u32).collect()
    }
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
    /// Bumped by every append group of a partition led here with followers: wakes their
    /// fetches' long polls.
    appended: AppendSignal,
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
            appended: Arc::new(tokio::sync::watch::channel(0).0),
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

    /// Opens a topic's hosted partition logs that are not open yet (`existing` holds those
    /// that are, for a topic that grows) and starts a writer for each.
    async fn open_topic(
        &self,
        meta: TopicMeta,
        config: LogConfig,
        existing: Vec<Arc<Partition>>,
    ) -> Result<Arc<Topic>, BrokerError> {
        let hosted = meta.hosted();
        let TopicMeta {
            name,
            id,
            partitions,
            overrides,
            ..
        } = meta;
        let name: Arc<str> = Arc::from(name);
        let to_open: Vec<u32> = hosted
            .into_iter()
            .filter(|p| !existing.iter().any(|e| e.index as u32 == *p))
            .collect();
        let mut parts = existing;
        parts.reserve(to_open.len());
        // Partitions open a few dozen at a time: after a clean stop each open is a handful of
        // small reads, which a cold page cache turns into disk round trips; overlapping them
        // keeps start-up short with thousands of partitions.
        const OPEN_AT_ONCE: usize = 32;
        for chunk in to_open.chunks(OPEN_AT_ONCE) {
            let opening: Vec<_> = chunk
                .iter()
                .map(|&p| {
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
                    self.appended.clone(),
                ));
            }
        }
        parts.sort_by_key(|p| p.index);
        Ok(Arc::new(Topic {
            name,
            id,
            partitions: parts,
            count: partitions,
            overrides: RwLock::new(overrides),
            config: RwLock::new(config),
        }))
    }

    /// Delayed runs held by every partition together: none means no queue-partition has a
    /// delay to take in.
    /// What followers' fetch long polls wait on: bumped by every append group of a partition
    /// led here with followers.
    pub(crate) fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

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

    /// Grows a topic to `count` partitions, of which this broker hosts `hosted` (`None`: all):
    /// the metadata first (durably), then the new partitions' logs. Partitions are never
    /// removed.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i64,
        hosted: Option<Vec<u32>>,
    ) -> Result<(), TopicError> {
        let _guard = self.admin.lock().await;
        let topic = self.check_growth(name, count)?;
        let now = topic.count;
        let meta = TopicMeta {
            name: name.to_string(),
            id: topic.id,
            partitions: count as u32,
            hosted,
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
        let now = i64::from(topic.count);
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
        self.create_with_id(name, new_topic_id(name), partitions, None, overrides)
            .await
    }

    /// Creates a topic with the id the metadata image gave it, hosting the partitions in
    /// `hosted` (`None`: all).
    pub async fn create_with_id(
        &self,
        name: &str,
        id: TopicId,
        partitions: i64,
        hosted: Option<Vec<u32>>,
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
            hosted,
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
            partitions: topic.count,
            hosted: Some(topic.hosted()),
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

    /// Asks every partition to run retention and compaction, unless a pass is queued there
    /// already ([`super::partition::Partition::request_maintenance`]).
    pub fn maintain(&self) {
        for t in self.all() {
            for p in &t.partitions {
                p.request_maintenance();
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
