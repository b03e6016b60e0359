//! The broker core: everything a request does once it is decoded, whatever protocol it came in.
//!
//! The front-ends (`crate::native` for strom's protobuf protocol, `crate::kafka` for the Apache
//! Kafka protocol) decode their wire format into the plain types of this module, call [`Core`],
//! and encode what it returns. Limits, validation, idempotence, long polls, group logic and
//! topic administration live here, once:
//!
//! - [`cluster`]: the embedded controller of the metadata quorum, and the registry following
//!   the metadata image;
//! - [`metadata`]: where topics, partitions, leaders and brokers are, as Metadata answers it
//!   and produce and fetch check it;
//! - [`topics`]: the topic registry; [`topic_file`]: a topic's metadata file and topic ids;
//! - [`partition`]: a partition's single writer task and the handles requests use;
//! - [`delays`]: delayed delivery's per-partition index of runs not to hand out yet;
//! - [`producers`]: idempotent producers: per-partition sequence state, snapshots (ids come
//!   in blocks from the metadata quorum, [`cluster`]);
//! - [`groups`]: the group coordinator: membership, incremental assignment, committed offsets,
//!   for the groups of the `__consumer_offsets` partitions this broker leads;
//! - [`queues`]: the queue coordinator: queue groups, per-record leases and acknowledgements,
//!   retries with backoff, dead-letter topics;
//! - [`produce`]: validating batches, queueing them on partition writers, waiting for the acks;
//! - [`fetch`]: reading partitions, with long polls on the writers' end-offset notifications;
//! - [`replication`]: partition replication: the leader's view of its followers, the
//!   followers' fetchers, and ReplicaFetch;
//! - [`admin`]: topic creation, deletion, settings, offsets by time, producer ids;
//! - [`session`]: what one connection's requests share (read-your-writes ordering).
//!
//! Nothing here knows a wire format: errors are `(ErrorCode, message)` pairs ([`Failure`]) that
//! each front-end maps to its own codes.

pub(crate) mod admin;
pub(crate) mod cluster;
pub(crate) mod coordination;
pub(crate) mod delays;
pub(crate) mod fetch;
pub(crate) mod forward;
pub(crate) mod group_kinds;
pub(crate) mod groups;
pub(crate) mod metadata;
pub(crate) mod partition;
pub(crate) mod produce;
pub(crate) mod producers;
pub(crate) mod queues;
pub(crate) mod replication;
pub(crate) mod session;
pub(crate) mod storage_health;
pub(crate) mod topic_file;
pub(crate) mod topics;

use std::sync::Arc;
use std::time::Duration;

use strom_protocol::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::stats::Stats;
use cluster::Cluster;
use groups::{Coordinator, SessionBounds};
use queues::Queues;
use topics::Topics;

/// A failed operation on one topic, partition or group: the code and a message for the client.
pub(crate) type Failure = (ErrorCode, String);

/// The broker's state and logic, shared by every listener and connection.
#[derive(Debug)]
pub(crate) struct Core {
    pub config: BrokerConfig,
    /// The metadata quorum, as this broker takes part in it.
    pub cluster: Cluster,
    pub topics: Topics,
    pub groups: Coordinator,
    pub queues: Queues,
    /// The follower side of replication: one fetcher per leader this broker follows from.
    pub fetchers: replication::fetcher::Fetchers,
    /// Clients for the copies queue groups write to partitions led elsewhere.
    pub forward: forward::Forward,
    /// The data path's counters (`/metrics`).
    pub stats: Arc<Stats>,
    /// Cancelled when the broker shuts down: long polls return at once.
    pub shutdown: CancellationToken,
}

impl Core {
    /// Loads the data directory: topics (recovering their logs), the metadata quorum (which
    /// registers the broker with `endpoints`), then follows the image (which loads the group
    /// offsets of the `__consumer_offsets` partitions this broker leads).
    pub async fn load(
        config: BrokerConfig,
        endpoints: strom_meta::types::Endpoints,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        config.validate()?;
        let defaults = config.topic_defaults()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::Io {
            op: "create dir",
            path: config.data_dir.clone(),
            source,
        })?;
        let stats = Arc::new(Stats::default());
        let topics = Topics::load(
            &config.data_dir,
            defaults,
            config.max_partitions,
            config.io_faults.clone(),
            stats.clone(),
        )
        .await?;
        let forward = forward::Forward::new(endpoints.native.clone());
        let cluster = Cluster::start(&config, endpoints, stats.storage.subscribe()).await?;
        let groups = Coordinator::new(
            SessionBounds {
                min_ms: config.group_min_session_timeout_ms,
                max_ms: config.group_max_session_timeout_ms,
                default_ms: config.group_default_session_timeout_ms,
            },
            Duration::from_millis(config.group_initial_rebalance_delay_ms),
        );
        let queues = Queues::load(&topics, &config.data_dir).await?;
        // One id, one kind of group: consumer groups refuse queue groups' ids (and the queue
        // coordinator refuses consumer groups').
        groups.refuse_ids(queues.ids());
        let cluster_id = cluster.id();
        let core = Arc::new(Self {
            config,
            cluster,
            topics,
            groups,
            queues,
            fetchers: replication::fetcher::Fetchers::new(cluster_id, shutdown.clone()),
            forward,
            stats,
            shutdown,
        });
        // Before anything is served: topics of an older data directory go into the metadata
        // log, then the registry follows the image (creating what was committed but not yet
        // opened before a crash, deleting what was deleted), and the group coordinator loads
        // the `__consumer_offsets` partitions this broker leads.
        if let Err(e) = core.import_local_topics().await {
            core.cluster.shutdown().await;
            return Err(e);
        }
        core.follow_image().await;
        Ok(core)
    }

    /// Runs the core's background work until shutdown: retention and compaction every
    /// `retention_check_interval_ms`; every 100 ms, group session expiry and the queue groups'
    /// sessions, leases, delays and dead-letter writes (separate loops, so a long maintenance
    /// pass over thousands of partitions never delays an expiry).
    pub async fn run_background(self: Arc<Self>) {
        self.redrive_resume().await;
        let maintain = async {
            let period = Duration::from_millis(self.config.retention_check_interval_ms);
            let start = tokio::time::Instant::now() + period;
            let mut interval = tokio::time::interval_at(start, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.topics.maintain();
            }
        };
        let expire = async {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.groups.expire(&self.catalog());
            }
        };
        let queues = async {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.queue_tick().await;
                self.queue_dead_letter().await;
                // Redrive tasks of the `__queue_state` partitions this broker has come to lead.
                self.redrive_resume().await;
            }
        };
        let isr = async {
            let lag = Duration::from_millis(self.config.replica_lag_time_max_ms);
            let period = (lag / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.isr_changes().await;
            }
        };
        let storage = self
            .stats
            .storage
            .watch(self.config.data_dir.clone(), self.shutdown.clone());
        tokio::select! {
            () = self.clone().follow_image_forever() => {}
            () = storage => {}
            () = isr => {}
            () = maintain => {}
            () = expire => {}
            () = queues => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}
