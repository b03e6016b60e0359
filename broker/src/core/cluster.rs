//! The broker's side of the metadata quorum: it runs the embedded controller (strom-meta),
//! registers the broker with its listeners' addresses, and keeps the local topic registry in
//! step with the metadata image.
//!
//! One code path, single node or not: a broker with no cluster settings is a one-voter quorum
//! of its own. Topic administration is proposed to the active controller and answered once the
//! entry is committed *and* this broker's registry reflects it ([`Cluster::settled`]), so a
//! client that creates a topic can produce to it at once. The registry follows the image in
//! [`Core::follow_image`]: topics the image holds are opened, topics it no longer holds are
//! deleted, settings and partition counts follow. Internal topics (`__consumer_offsets`, the
//! queue-group state) stay local to the broker for now.
//!
//! A data directory from before the quorum existed holds topics the (new, empty) image does
//! not: they are imported, with their ids, before the registry first follows the image, so
//! nothing is deleted by the upgrade. A marker file (`meta/quorum/imported`) records that this
//! was done; from then on a topic file the log does not know is a topic it deleted, and the
//! file goes. A first start that crashes before the marker imports again (a topic
//! the log already holds is skipped).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strom_meta::controller::{Controller, ControllerConfig, Timing};
use strom_meta::image::MetadataImage;
use strom_meta::rpc::{ControllerRequest, ControllerResponse};
use strom_meta::types::{BrokerId, Endpoints, Rejection, TopicId};
use strom_protocol::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Core, Failure};
use crate::error::BrokerError;

/// The file in the metadata log's directory that says the data directory's topics are in it.
const IMPORTED_MARKER: &str = "imported";

/// How long an admin request waits for the controller and then for this broker to follow.
const ADMIN_PATIENCE: Duration = Duration::from_secs(10);

/// The embedded controller and what the local registry has caught up with.
#[derive(Debug)]
pub(crate) struct Cluster {
    controller: Controller,
    id: BrokerId,
    /// The data directory's topics have not been recorded in the metadata log yet (a new or
    /// an older data directory, or a first start that crashed before it was done).
    new_log: bool,
    /// The marker file that says they have.
    imported: PathBuf,
    /// The image index the local topic registry reflects.
    followed: watch::Sender<u64>,
    /// Topics the registry failed to follow (disk full, bad settings), by name.
    failures: Mutex<HashMap<String, Failure>>,
}

impl Cluster {
    /// Starts the controller under `<data-dir>/meta/quorum` as the one voter of its own quorum
    /// and registers the broker with `endpoints`, returning once registered.
    pub async fn start(
        data_dir: &Path,
        node_id: i32,
        endpoints: Endpoints,
    ) -> Result<Self, BrokerError> {
        let id = BrokerId::try_from(node_id).map_err(|_| BrokerError::Config {
            key: "node_id".into(),
            reason: format!("must be 0 or more, not {node_id}"),
        })?;
        let addr = "127.0.0.1:0";
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Listen {
                setting: "controller_listen",
                addr: addr.into(),
                source,
            })?;
        let advertised = listener
            .local_addr()
            .map_err(|source| BrokerError::Listen {
                setting: "controller_listen",
                addr: addr.into(),
                source,
            })?
            .to_string();
        let dir = data_dir.join("meta").join("quorum");
        let imported = dir.join(IMPORTED_MARKER);
        let new_log = !imported.exists();
        let controller = Controller::start(ControllerConfig {
            node_id: id,
            dir,
            listener,
            voters: BTreeMap::from([(id, advertised.clone())]),
            advertised,
            timing: Timing::default(),
        })
        .await
        .map_err(|e| BrokerError::Config {
            key: "metadata quorum".into(),
            reason: e.to_string(),
        })?;
        // Registered, and the image applied here up to the registration (the broker epoch is
        // its log index): everything this broker ever followed is in the image before the
        // registry is compared with it, so nothing is deleted for having been applied late.
        let mut epoch = controller.start_broker_session(endpoints, None);
        let mut applied = controller.applied();
        let caught_up = tokio::time::timeout(ADMIN_PATIENCE, async {
            let epoch = *epoch.wait_for(Option::is_some).await.map_err(|_| ())?;
            applied
                .wait_for(|a| a.applied_index >= epoch)
                .await
                .map(|_| ())
                .map_err(|_| ())
        })
        .await;
        if !matches!(caught_up, Ok(Ok(()))) {
            controller.shutdown().await;
            return Err(BrokerError::Config {
                key: "metadata quorum".into(),
                reason: format!("broker {id} could not register within {ADMIN_PATIENCE:?}"),
            });
        }
        Ok(Self {
            controller,
            id,
            new_log,
            imported,
            followed: watch::Sender::new(0),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// This broker's id.
    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// The current metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.controller.applied().borrow().image)
    }

    /// Asks the active controller; a controller that cannot be reached is `REQUEST_TIMED_OUT`
    /// (retriable), a refusal the matching topic error.
    pub async fn call(&self, request: ControllerRequest) -> Result<u64, Failure> {
        let response = self
            .controller
            .call(request, ADMIN_PATIENCE)
            .await
            .map_err(|e| (ErrorCode::RequestTimedOut, e.to_string()))?;
        match response {
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
        Rejection::InvalidAssignment { .. } => ErrorCode::InvalidRequest,
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
    /// An existing log is never added to: a topic file it does not know is one it deleted.
    pub(crate) async fn import_local_topics(&self) -> Result<(), BrokerError> {
        if !self.cluster.new_log {
            return Ok(());
        }
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
                partitions: topic.partitions.len() as u32,
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
        let hosted = topic
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&self.cluster.id()))
            .count() as u32;
        if hosted == 0 {
            return Ok(());
        }
        let count = topic.partitions.len() as u32;
        match self.topics.get(name) {
            Some(local) if local.id != id => {
                // Deleted and created again while this broker was away: the old data goes.
                self.topics.delete(name).await?;
                self.topics
                    .create_with_id(name, id, i64::from(count), topic.configs.clone())
                    .await?;
            }
            Some(local) => {
                if (local.partitions.len() as u32) < count {
                    self.topics.add_partitions(name, i64::from(count)).await?;
                }
                if local.overrides() != topic.configs {
                    self.topics
                        .set_overrides(name, topic.configs.clone())
                        .await?;
                }
            }
            None => {
                self.topics
                    .create_with_id(name, id, i64::from(count), topic.configs.clone())
                    .await?;
            }
        }
        Ok(())
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
