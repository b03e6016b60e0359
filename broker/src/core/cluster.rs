//! The broker's side of the metadata quorum: it runs the embedded controller (strom-meta),
//! registers the broker with its listeners' addresses, and keeps the local topic registry in
//! step with the metadata image.
//!
//! One code path, single node or not: a broker with no cluster settings is a one-voter quorum
//! of its own. Topic administration is proposed to the active controller and answered once the
//! entry is committed *and* this broker's registry reflects it ([`Cluster::settled`]), so a
//! client that creates a topic can produce to it at once. The registry follows the image in
//! [`Core::follow_image`]: topics the image holds are opened, topics it no longer holds are
//! deleted, settings and partition counts follow. `__consumer_offsets` is an image topic like
//! any other (created on demand by the group coordinator, `core::groups::leadership`); after
//! each follow the coordinator takes up the partitions of it this broker leads; so does the
//! queue coordinator with `__queue_state`. Internal topics the image does not hold (a broker's
//! own `__queue_delays`) are never deleted by following it.
//!
//! A data directory from before the quorum existed holds topics the (new, empty) image does
//! not: they are imported, with their ids, before the registry first follows the image, so
//! nothing is deleted by the upgrade. A marker file (`meta/quorum/imported`) records that this
//! was done; from then on a topic file the log does not know is a topic it deleted, and the
//! file goes. A first start that crashes before the marker imports again (a topic
//! the log already holds is skipped). A single broker's `__consumer_offsets` from before it was
//! an image topic (one local partition) is imported the same way, whenever the image lacks one
//! ([`Core::import_local_topics`]), so its committed offsets stay.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strom_meta::controller::{Controller, ControllerConfig, Timing};
use strom_meta::image::MetadataImage;
use strom_meta::rpc::{ControllerRequest, ControllerResponse};
use strom_meta::state_machine::AppliedImage;
use strom_meta::types::{BrokerId, Endpoints, Rejection, TopicId};
use strom_protocol::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::partition::DelayLog;
use super::queues::delay_log::delays_partition;
use super::replication::fetcher::{Followed, Plan};
use super::replication::leader::Leadership;
use super::{Core, Failure};
use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// The file in the metadata log's directory that says the data directory's topics are in it.
const IMPORTED_MARKER: &str = "imported";

/// Producer ids a broker takes from the controller at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

/// How long an admin request waits for the controller and then for this broker to follow.
const ADMIN_PATIENCE: Duration = Duration::from_secs(10);

/// The embedded controller and what the local registry has caught up with.
#[derive(Debug)]
pub(crate) struct Cluster {
    controller: Controller,
    /// The applied image, kept to read it without cloning a receiver per request.
    applied: watch::Receiver<AppliedImage>,
    id: BrokerId,
    /// The data directory's topics have not been recorded in the metadata log yet (a new or
    /// an older data directory, or a first start that crashed before it was done), and this
    /// broker is a quorum of its own (only then are they imported).
    new_log: bool,
    /// This broker is the one voter of its own quorum (a single-node cluster).
    alone: bool,
    /// The marker file that says they have.
    imported: PathBuf,
    /// The current producer-id block: next, end.
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// The image index the local topic registry reflects.
    followed: watch::Sender<u64>,
    /// The image the local registry has followed: what requests are answered from, so a
    /// client never learns of a partition here before this broker has opened it.
    published: Mutex<(u64, Arc<MetadataImage>)>,
    /// Topics the registry failed to follow (disk full, bad settings), by name.
    failures: Mutex<HashMap<String, Failure>>,
}

impl Cluster {
    /// Starts the controller under `<data-dir>/meta/quorum` (the one voter of its own quorum
    /// unless `controller_voters` names others) and registers the broker with `endpoints`
    /// (its heartbeats say whether `storage_failed` holds true), returning once registered and caught up with the image up to the registration. A broker
    /// of a larger quorum waits for a quorum of voters as long as it takes.
    pub async fn start(
        config: &BrokerConfig,
        endpoints: Endpoints,
        storage_failed: watch::Receiver<bool>,
    ) -> Result<Self, BrokerError> {
        let id = BrokerId::try_from(config.node_id).map_err(|_| BrokerError::Config {
            key: "node_id".into(),
            reason: format!("must be 0 or more, not {}", config.node_id),
        })?;
        let mut voters = config.voters()?;
        let listen = match (&config.controller_listen, voters.get(&id)) {
            (listen, _) if !listen.is_empty() => listen.clone(),
            (_, Some(addr)) => addr.clone(),
            (_, None) => "127.0.0.1:0".to_string(),
        };
        let listen_error = |source| BrokerError::Listen {
            setting: "controller_listen",
            addr: listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&listen).await.map_err(listen_error)?;
        let bound = listener.local_addr().map_err(listen_error)?.to_string();
        // Other members dial a voter at its configured address; a learner at the one it bound.
        let advertised = voters.get(&id).cloned().unwrap_or(bound);
        if voters.is_empty() {
            voters.insert(id, advertised.clone());
        }
        let alone = voters.len() == 1 && voters.contains_key(&id);
        let dir = config.data_dir.join("meta").join("quorum");
        let imported = dir.join(IMPORTED_MARKER);
        let new_log = alone && !imported.exists();
        let controller = Controller::start(ControllerConfig {
            node_id: id,
            dir,
            listener,
            voters,
            advertised,
            timing: Timing {
                snapshot_every: config.metadata_snapshot_entries,
                keep_after_snapshot: config.metadata_snapshot_entries / 5,
                snapshot_bytes: config.metadata_snapshot_bytes,
                ..Timing::default()
            },
        })
        .await
        .map_err(|e| BrokerError::Config {
            key: "metadata quorum".into(),
            reason: e.to_string(),
        })?;
        // Registered, and the image applied here up to the registration (the broker epoch is
        // its log index): everything this broker ever followed is in the image before the
        // registry is compared with it, so nothing is deleted for having been applied late.
        let mut epoch = controller.start_broker_session(endpoints, None, storage_failed);
        let mut applied = controller.applied();
        let mut waited = Duration::ZERO;
        loop {
            let caught_up = tokio::time::timeout(ADMIN_PATIENCE, async {
                let epoch = *epoch.wait_for(Option::is_some).await.map_err(|_| ())?;
                applied
                    .wait_for(|a| a.applied_index >= epoch)
                    .await
                    .map(|_| ())
                    .map_err(|_| ())
            })
            .await;
            match caught_up {
                Ok(Ok(())) => break,
                Err(_) if !alone => {
                    waited += ADMIN_PATIENCE;
                    tracing::warn!(
                        broker = id,
                        waited_s = waited.as_secs(),
                        "waiting for a quorum of controller voters"
                    );
                }
                _ => {
                    controller.shutdown().await;
                    return Err(BrokerError::Config {
                        key: "metadata quorum".into(),
                        reason: format!("broker {id} could not register within {ADMIN_PATIENCE:?}"),
                    });
                }
            }
        }
        let published = {
            let applied = controller.applied();
            let applied = applied.borrow();
            Mutex::new((
                applied.applied_index.unwrap_or(0),
                Arc::clone(&applied.image),
            ))
        };
        Ok(Self {
            published,
            applied: controller.applied(),
            controller,
            id,
            new_log,
            alone,
            imported,
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            followed: watch::Sender::new(0),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// This broker's id.
    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// Whether this broker is the one voter of its own quorum (a single-node cluster).
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    /// A receiver that changes whenever the local registry has followed a newer image.
    pub fn watch_followed(&self) -> watch::Receiver<u64> {
        self.followed.subscribe()
    }

    /// The current metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.applied.borrow().image)
    }

    /// The image the local topic registry has caught up with (see `published`).
    pub fn published(&self) -> Arc<MetadataImage> {
        Arc::clone(
            &self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1,
        )
    }

    /// The active controller, as far as this broker knows.
    pub fn leader(&self) -> Option<BrokerId> {
        self.controller.leader()
    }

    /// Asks the active controller; a controller that cannot be reached is `REQUEST_TIMED_OUT`
    /// (retriable), a refusal the matching topic error.
    pub async fn call(&self, request: ControllerRequest) -> Result<u64, Failure> {
        match self.ask(request).await? {
            ControllerResponse::Committed { index } => Ok(index),
            ControllerResponse::Rejected(rejection) => Err(rejection_failure(rejection)),
            ControllerResponse::Invalid { message } => Err((ErrorCode::InvalidRequest, message)),
            ControllerResponse::Unavailable { message } => {
                Err((ErrorCode::RequestTimedOut, message))
            }
            other => Err((
                ErrorCode::RequestTimedOut,
                format!("unexpected answer from the controller: {other:?}"),
            )),
        }
    }

    /// The active controller's answer to a request between brokers and the controller (an
    /// ISR change, a controlled shutdown), as it is.
    pub(crate) async fn ask_controller(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, Failure> {
        self.ask(request).await
    }

    /// The active controller's answer, wherever it is; `REQUEST_TIMED_OUT` when none answers.
    async fn ask(&self, request: ControllerRequest) -> Result<ControllerResponse, Failure> {
        self.controller
            .call(request, ADMIN_PATIENCE)
            .await
            .map_err(|e| (ErrorCode::RequestTimedOut, e.to_string()))
    }

    /// The cluster as the active controller sees it (members, registered brokers, liveness);
    /// `REQUEST_TIMED_OUT` (retriable) when no controller can answer, e.g. without a quorum.
    pub async fn status(&self) -> Result<strom_meta::rpc::ClusterStatus, Failure> {
        match self.ask(ControllerRequest::Status).await? {
            ControllerResponse::Status(status) => Ok(status),
            ControllerResponse::Unavailable { message } => {
                Err((ErrorCode::RequestTimedOut, message))
            }
            other => Err((
                ErrorCode::RequestTimedOut,
                format!("no cluster status from the controller: {other:?}"),
            )),
        }
    }

    /// Waits until the local registry reflects the image at `index`; then reports whether
    /// following `topic` failed.
    pub async fn settled(&self, index: u64, topic: &str) -> Result<(), Failure> {
        let mut followed = self.followed.subscribe();
        tokio::time::timeout(ADMIN_PATIENCE, followed.wait_for(|at| *at >= index))
            .await
            .map_err(|_| {
                (
                    ErrorCode::RequestTimedOut,
                    format!("the change is committed but this broker did not apply it within {ADMIN_PATIENCE:?}"),
                )
            })?
            .map_err(|_| (ErrorCode::RequestTimedOut, "the broker is shutting down".to_string()))?;
        match self.failures().get(topic) {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    /// A producer id unique in the cluster: from this broker's current block, taking a new
    /// block of [`PRODUCER_ID_BLOCK`] from the controller when it runs out. Blocks are in the
    /// metadata log, so no id is handed out twice, across restarts and brokers.
    pub async fn next_producer_id(&self) -> Result<i64, Failure> {
        let mut block = self.producer_ids.lock().await;
        if block.0 >= block.1 {
            let request = ControllerRequest::AllocateProducerIds {
                broker: self.id,
                count: PRODUCER_ID_BLOCK,
            };
            match self.ask(request).await? {
                ControllerResponse::ProducerIds { first, count } => {
                    *block = (first, first.saturating_add(i64::from(count)));
                }
                other => {
                    return Err((
                        ErrorCode::RequestTimedOut,
                        format!("no producer ids from the controller: {other:?}"),
                    ));
                }
            }
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the controller.
    pub async fn shutdown(&self) {
        self.controller.shutdown().await;
    }
}

fn rejection_failure(rejection: Rejection) -> Failure {
    let code = match &rejection {
        Rejection::TopicExists { .. } => ErrorCode::TopicAlreadyExists,
        Rejection::UnknownTopic { .. } | Rejection::UnknownPartition { .. } => {
            ErrorCode::UnknownTopicOrPartition
        }
        Rejection::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        Rejection::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
        Rejection::NotLeader { .. } => ErrorCode::NotLeaderOrFollower,
        // The rest answer requests between brokers and the controller (a leader's ISR change,
        // a registration), which the broker handles itself; a client never causes them.
        _ => ErrorCode::InvalidRequest,
    };
    (code, rejection.to_string())
}

/// The registry's id for an image topic id, and back.
pub(crate) fn local_id(id: TopicId) -> [u8; 16] {
    id.to_bytes()
}

fn image_id(id: &[u8; 16]) -> TopicId {
    TopicId(u128::from_be_bytes(*id))
}

impl Core {
    /// When the metadata log is new, records in it every local, non-internal topic (a data
    /// directory from before the quorum), with its id and all its partitions on this broker.
    /// An existing log is never added to (a topic file it does not know is one it deleted),
    /// except by a single broker's `__consumer_offsets` and `__queue_state` from before they
    /// were image topics ([`Core::import_local_offsets`]).
    pub(crate) async fn import_local_topics(&self) -> Result<(), BrokerError> {
        if self.cluster.new_log {
            self.import_data_dir().await?;
        }
        self.import_local_offsets().await
    }

    /// A single broker (a quorum of its own) whose image has no `__consumer_offsets` (or no
    /// `__queue_state`) but whose data directory holds one (local, one partition, made by an
    /// older strom) records that one in the metadata log, with its id, partition count and
    /// settings, all on this broker, instead of a new one being created: its committed offsets
    /// (its queue groups) stay. Idempotent: once the image holds the topic this does nothing.
    async fn import_local_offsets(&self) -> Result<(), BrokerError> {
        for name in [
            strom_protocol::topic::OFFSETS_TOPIC,
            crate::core::queues::STATE_TOPIC,
        ] {
            self.import_local_internal(name).await?;
        }
        Ok(())
    }

    /// [`Core::import_local_offsets`] for one topic.
    async fn import_local_internal(&self, name: &str) -> Result<(), BrokerError> {
        if !self.cluster.alone || self.cluster.image().topics.contains_key(name) {
            return Ok(());
        }
        let Some(local) = self.topics.get(name) else {
            return Ok(());
        };
        let request = ControllerRequest::ImportTopic {
            name: name.to_string(),
            id: image_id(&local.id),
            partitions: local.count,
            configs: local.overrides(),
            broker: self.cluster.id(),
        };
        self.cluster
            .call(request)
            .await
            .map_err(|(code, reason)| BrokerError::Config {
                key: "metadata quorum".into(),
                reason: format!("cannot import {name}: {code:?}: {reason}"),
            })?;
        tracing::info!(
            partitions = local.count,
            "the local {name} is recorded in the metadata log; what it holds stays"
        );
        Ok(())
    }

    /// Records the data directory's non-internal topics in a new metadata log, then writes
    /// the marker that says so.
    async fn import_data_dir(&self) -> Result<(), BrokerError> {
        let image = self.cluster.image();
        for topic in self.topics.all() {
            if strom_protocol::topic::is_internal_topic(&topic.name)
                || image.topics.contains_key(&*topic.name)
            {
                continue;
            }
            let request = ControllerRequest::ImportTopic {
                name: topic.name.to_string(),
                id: image_id(&topic.id),
                partitions: topic.count,
                configs: topic.overrides(),
                broker: self.cluster.id(),
            };
            self.cluster
                .call(request)
                .await
                .map_err(|(code, reason)| BrokerError::Config {
                    key: "metadata quorum".into(),
                    reason: format!("cannot import topic {}: {code:?}: {reason}", topic.name),
                })?;
            tracing::info!(topic = %topic.name, "topic recorded in the metadata log");
        }
        let marker = &self.cluster.imported;
        let dir = marker.parent().unwrap_or(marker);
        strom_storage::write_atomic(dir, marker, b"topics recorded in meta/quorum\n")?;
        Ok(())
    }

    /// Makes the local registry match the image at its current index, then says so.
    pub(crate) async fn follow_image(&self) {
        let applied = self.cluster.controller.applied().borrow().clone();
        let index = applied.applied_index.unwrap_or(0);
        let image = applied.image;
        let mut failures = HashMap::new();
        for (name, topic) in &image.topics {
            if let Err(failure) = self.follow_topic(name, topic).await {
                tracing::warn!(topic = %name, code = ?failure.0, error = %failure.1, "cannot follow the metadata");
                failures.insert(name.clone(), failure);
            }
        }
        for local in self.topics.all() {
            if strom_protocol::topic::is_internal_topic(&local.name)
                || image.topics.contains_key(&*local.name)
            {
                continue;
            }
            if let Err((code, error)) = self.topics.delete(&local.name).await {
                tracing::warn!(topic = %local.name, ?code, %error, "cannot delete a topic the metadata removed");
            }
        }
        *self.cluster.failures() = failures;
        self.fetchers.assign(self.fetch_plans(&image));
        // The group coordinators take up (load) the `__consumer_offsets` and `__queue_state`
        // partitions this broker now leads and drop the groups of the ones it no longer does,
        // before the image counts as followed.
        self.groups
            .follow(&image, &self.topics, self.cluster.id())
            .await;
        self.queue_follow(&image).await;
        {
            let mut published = self
                .cluster
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if published.0 <= index {
                *published = (index, Arc::clone(&image));
            }
        }
        self.cluster.followed.send_if_modified(|at| {
            let moved = *at < index;
            *at = index.max(*at);
            moved
        });
    }

    async fn follow_topic(
        &self,
        name: &str,
        topic: &strom_meta::image::TopicImage,
    ) -> Result<(), Failure> {
        let id = local_id(topic.id);
        let me = self.cluster.id();
        let hosted: Vec<u32> = (0..topic.partitions.len() as u32)
            .filter(|p| topic.partitions[*p as usize].replicas.contains(&me))
            .collect();
        let count = i64::from(topic.partitions.len() as u32);
        let local = self.topics.get(name);
        if hosted.is_empty() {
            // Placed entirely on other brokers: nothing to hold here (and whatever was, went).
            if local.is_some() {
                self.topics.delete(name).await?;
            }
            return Ok(());
        }
        match local {
            Some(local) if local.id != id => {
                // Deleted and created again while this broker was away: the old data goes.
                self.topics.delete(name).await?;
                self.topics
                    .create_with_id(name, id, count, Some(hosted), topic.configs.clone())
                    .await?;
            }
            Some(local) => {
                if i64::from(local.count) < count {
                    self.topics
                        .add_partitions(name, count, Some(hosted))
                        .await?;
                }
                if local.overrides() != topic.configs {
                    self.topics
                        .set_overrides(name, topic.configs.clone())
                        .await?;
                }
            }
            None => {
                self.topics
                    .create_with_id(name, id, count, Some(hosted), topic.configs.clone())
                    .await?;
            }
        }
        // Each hosted partition takes the role the image gives this broker: a leader stamps
        // its batches with the image's leader epoch (the epochs in the log are the ones
        // Metadata reports and OffsetForLeaderEpoch answers) and tracks its followers; a
        // follower refuses producers and is fetched by `fetch_plans`' fetchers.
        if let Some(local) = self.topics.get(name) {
            let durable = local.config().has_flush_policy();
            let min_isr = topic.min_insync_replicas();
            // New leaderships are taken up by each partition's writer: asked of all at once,
            // so one writer busy with a long compaction holds up only its own partition.
            let mut leads = Vec::new();
            for (index, placed) in topic.partitions.iter().enumerate() {
                let Some(part) = local.partition(i32::try_from(index).unwrap_or(i32::MAX)) else {
                    continue;
                };
                let epoch = i32::try_from(placed.leader_epoch).unwrap_or(i32::MAX);
                match placed.leader {
                    Some(leader) if leader == me => {
                        let lead = Leadership {
                            me,
                            leader_epoch: epoch,
                            partition_epoch: placed.partition_epoch,
                            replicas: placed.replicas.clone(),
                            isr: placed.isr.clone(),
                            // At most the replication factor: a topic asking for more than it
                            // has replicas would never move its HW (decided in docs/cluster.md).
                            min_isr: min_isr.clamp(1, placed.replicas.len().max(1)),
                            durable,
                        };
                        leads.push(async move { part.become_leader(lead).await });
                    }
                    leader => part.become_follower(leader.map(|l| (l, epoch))),
                }
            }
            futures_util::future::join_all(leads).await;
        }
        Ok(())
    }

    /// What every fetcher follows: per leader, its native address and the partitions this
    /// broker hosts and it leads, each in its leader epoch.
    fn fetch_plans(&self, image: &MetadataImage) -> HashMap<BrokerId, Plan> {
        let me = self.cluster.id();
        let broker_epoch = image.brokers.get(&me).map_or(0, |b| b.epoch);
        let mut plans: HashMap<BrokerId, Plan> = HashMap::new();
        for (name, topic) in &image.topics {
            let Some(local) = self.topics.get(name) else {
                continue;
            };
            for (index, placed) in topic.partitions.iter().enumerate() {
                let Some(leader) = placed.leader.filter(|l| *l != me) else {
                    continue;
                };
                let index = i32::try_from(index).unwrap_or(i32::MAX);
                let Some(part) = local
                    .partition(index)
                    .filter(|_| placed.replicas.contains(&me))
                else {
                    continue;
                };
                let plan = plans.entry(leader).or_insert_with(|| Plan {
                    addr: image
                        .brokers
                        .get(&leader)
                        .and_then(|b| b.endpoints.native.clone()),
                    broker_epoch,
                    partitions: Vec::new(),
                });
                plan.partitions.push(Followed {
                    topic: local.name.clone(),
                    topic_id: local.id,
                    index,
                    epoch: i32::try_from(placed.leader_epoch).unwrap_or(i32::MAX),
                    partition: part.clone(),
                    delay_log: delays_partition(&self.topics).map(|state| DelayLog {
                        state,
                        topic_id: local.id,
                    }),
                });
            }
        }
        plans
    }

    /// Waits until the image holds `topic` and this broker follows it (a topic another broker
    /// created); then reports whether following it failed.
    pub(crate) async fn settled_on_topic(&self, topic: &str) -> Result<(), Failure> {
        let mut applied = self.cluster.applied.clone();
        let index = tokio::time::timeout(
            ADMIN_PATIENCE,
            applied.wait_for(|a| a.image.topics.contains_key(topic)),
        )
        .await
        .map_err(|_| {
            (
                ErrorCode::RequestTimedOut,
                format!("{topic} did not reach this broker within {ADMIN_PATIENCE:?}"),
            )
        })?
        .map_err(|_| {
            (
                ErrorCode::RequestTimedOut,
                "the broker is shutting down".to_string(),
            )
        })?
        .applied_index
        .unwrap_or(0);
        self.cluster.settled(index, topic).await
    }

    /// Follows the image until shutdown, each time it changes.
    pub(crate) async fn follow_image_forever(self: Arc<Self>) {
        let mut applied = self.cluster.controller.applied();
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() {
                    // The controller stopped (a fatal Raft error is logged by it): the
                    // registry stays as it is until shutdown.
                    self.shutdown.cancelled().await;
                    return;
                },
                () = self.shutdown.cancelled() => return,
            }
            self.follow_image().await;
        }
    }
}
