//! The controller every broker embeds: one member of the metadata quorum (a voter, or a learner
//! that follows the log), and, while it leads, the *active controller* that decides placement,
//! tracks broker liveness and moves partition leadership.
//!
//! [`Controller::start`] opens the stores, starts openraft and the controller listener, and
//! bootstraps: a voter with an empty log initializes the quorum with the configured voters (the
//! same configuration on every voter, which openraft allows), a broker that is not a voter asks
//! to join as a learner at every start (with its current controller address). [`Controller::call`] is how the rest of the broker reaches the active
//! controller, wherever it is: locally when this broker leads, over the controller protocol
//! otherwise, following leader hints until a deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::image::MetadataImage;
use crate::liveness::Liveness;
use crate::network::{CallError, Connection, Network};
use crate::rpc::{ControllerRequest, ControllerResponse, Request, Response};
use crate::state_machine::AppliedImage;
use crate::types::{BrokerId, ControllerNode, Endpoints, TypeConfig};

/// The quorum's timing. The defaults suit brokers on one network: a controller failover takes
/// about one election timeout, a dead broker is fenced one session after its last heartbeat.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Raft heartbeat from the active controller to the other members.
    pub raft_heartbeat: Duration,
    /// The shortest election timeout.
    pub election_min: Duration,
    /// The longest election timeout.
    pub election_max: Duration,
    /// How often a broker heartbeats to the active controller.
    pub broker_heartbeat: Duration,
    /// How long a broker stays unfenced after a heartbeat.
    pub session: Duration,
    /// A snapshot of the image is taken every this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, so a member slightly behind gets entries, not a snapshot.
    pub keep_after_snapshot: u64,
    /// Once the log's entries hold more than this many encoded bytes, a snapshot is taken
    /// whatever their number and the log is purged up to it (no entries kept behind it): a few
    /// leadership changes of thousands of partitions each must not keep megabytes in memory
    /// and in every start's replay until the count is reached.
    pub snapshot_bytes: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            raft_heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            broker_heartbeat: Duration::from_millis(250),
            session: Duration::from_millis(1500),
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
            snapshot_bytes: 4 << 20,
        }
    }
}

/// What a controller needs to start.
#[derive(Debug)]
pub struct ControllerConfig {
    /// This broker's id.
    pub node_id: BrokerId,
    /// Where the metadata log and snapshots live.
    pub dir: PathBuf,
    /// The bound controller listener.
    pub listener: TcpListener,
    /// The address other controllers reach this one at.
    pub advertised: String,
    /// The voters by id, with their controller addresses.
    pub voters: BTreeMap<BrokerId, String>,
    /// Timing.
    pub timing: Timing,
}

/// Why a call to the active controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No active controller answered before the deadline.
    #[error("no active controller answered within {waited:?}{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NoController {
        /// How long it tried.
        waited: Duration,
        /// The last network error, if any.
        last: Option<CallError>,
    },
}

/// A running controller. Dropping it does not stop it; call [`Controller::shutdown`].
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: BrokerId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) image: watch::Receiver<Arc<MetadataImage>>,
    applied: watch::Receiver<AppliedImage>,
    pub(crate) voters: BTreeMap<BrokerId, String>,
    pub(crate) timing: Timing,
    pub(crate) office: Mutex<Office>,
    /// Held while a reconciliation computes and commits its batch.
    pub(crate) reconciling: tokio::sync::Mutex<()>,
    peers: tokio::sync::Mutex<BTreeMap<BrokerId, Connection>>,
    /// Connections for the broker session's registration and heartbeats only (see
    /// [`Controller::call_through`]).
    session_peers: tokio::sync::Mutex<BTreeMap<BrokerId, Connection>>,
    /// Where outgoing controller connections leave from: the listener's address, unless it is
    /// unspecified.
    source: Option<std::net::IpAddr>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl crate::server::Dispatch for Inner {
    fn id(&self) -> BrokerId {
        self.id
    }

    async fn dispatch(&self, request: Request) -> Response {
        match request {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(self.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::Controller(request) => Response::Controller(self.handle(request).await),
        }
    }

    async fn heartbeats_stopped(&self, broker: BrokerId, epoch: u64) {
        Inner::heartbeats_stopped(self, broker, epoch).await;
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("voters", &self.voters)
            .finish_non_exhaustive()
    }
}

/// The active controller's soft state, valid for one term.
#[derive(Debug)]
pub(crate) struct Office {
    pub(crate) term: Option<u64>,
    pub(crate) liveness: Liveness,
}

impl Controller {
    /// Opens the metadata stores under `config.dir`, starts Raft and the listener, and joins
    /// or forms the quorum.
    pub async fn start(config: ControllerConfig) -> Result<Self, Error> {
        let ControllerConfig {
            node_id,
            dir,
            listener,
            advertised,
            voters,
            timing,
        } = config;
        // A voter of a larger quorum must not come back without the votes it cast.
        let many_voters = voters.len() > 1 && voters.contains_key(&node_id);
        let marker = voter_marker(&dir);
        if many_voters && let Some(marker) = &marker {
            let log_gone = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
            if marker.exists() && log_gone {
                return Err(Error::WipedVoter {
                    node: node_id,
                    dir,
                    marker: marker.clone(),
                });
            }
        }
        let source = listener
            .local_addr()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let (log_store, state_machine) = crate::state_machine::open_stores(&dir)?;
        if many_voters
            && let Some(marker) = &marker
            && !marker.exists()
        {
            // Written before Raft starts, so before this node can cast a vote.
            crate::durable::replace_file(marker, node_id.to_string().as_bytes())?;
        }
        let image = state_machine.image_watch();
        let applied = state_machine.applied_watch();
        let log_size = log_store.size();
        let raft_config = openraft::Config {
            cluster_name: "strom".into(),
            heartbeat_interval: millis(timing.raft_heartbeat),
            election_timeout_min: millis(timing.election_min),
            election_timeout_max: millis(timing.election_max),
            install_snapshot_timeout: 2_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            max_in_snapshot_log_to_keep: timing.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
        let (refused_tx, mut refused_rx) = tokio::sync::mpsc::unbounded_channel();
        let raft = Raft::new(
            node_id,
            Arc::new(raft_config),
            Network {
                source,
                refused: Some(refused_tx),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            id: node_id,
            raft,
            image,
            applied,
            voters,
            office: Mutex::new(Office {
                term: None,
                liveness: Liveness::new(timing.session),
            }),
            reconciling: tokio::sync::Mutex::new(()),
            timing,
            peers: tokio::sync::Mutex::new(BTreeMap::new()),
            session_peers: tokio::sync::Mutex::new(BTreeMap::new()),
            source,
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(crate::server::serve(listener, Arc::clone(&inner), stop_rx));
        let duties = tokio::spawn(Arc::clone(&inner).leader_duties());
        let trim = tokio::spawn(Arc::clone(&inner).trim_log(log_size));
        let watch_refusals = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                while let Some(node) = refused_rx.recv().await {
                    inner.controller_refused(node).await;
                }
            })
        };
        inner.tasks().extend([server, duties, trim, watch_refusals]);
        let controller = Self { inner };
        controller.bootstrap(advertised).await?;
        Ok(controller)
    }

    async fn bootstrap(&self, advertised: String) -> Result<(), Error> {
        let inner = &self.inner;
        let initialized = inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let voter = inner.voters.contains_key(&inner.id);
        if initialized && voter {
            return Ok(());
        }
        // A learner joins at every start, not only the first: its controller address may have
        // changed (a port chosen by the system), and the leader must call the new one.
        if voter {
            let members: BTreeMap<BrokerId, ControllerNode> = inner
                .voters
                .iter()
                .map(|(id, addr)| (*id, ControllerNode { addr: addr.clone() }))
                .collect();
            tracing::info!(voters = ?inner.voters, "forming the metadata quorum");
            if let Err(e) = inner.raft.initialize(members).await {
                // Another voter's log reached this one first: nothing to do.
                tracing::debug!(error = %e, "metadata quorum already formed");
            }
        } else {
            let controller = self.clone();
            let join = tokio::spawn(async move {
                let request = ControllerRequest::Join {
                    broker: controller.inner.id,
                    addr: advertised,
                };
                loop {
                    match controller
                        .call(request.clone(), Duration::from_secs(10))
                        .await
                    {
                        Ok(ControllerResponse::Committed { .. }) => {
                            tracing::info!("joined the metadata quorum as a learner");
                            return;
                        }
                        Ok(other) => {
                            tracing::warn!(?other, "joining the metadata quorum was refused")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot join the metadata quorum yet"),
                    }
                    if controller.inner.stopped() {
                        return;
                    }
                }
            });
            inner.tasks().push(join);
        }
        Ok(())
    }

    /// This broker's id.
    pub fn id(&self) -> BrokerId {
        self.inner.id
    }

    /// The metadata image, updated as entries are applied.
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image.clone()
    }

    /// The metadata image with the index of the last entry applied to it.
    pub fn applied(&self) -> watch::Receiver<AppliedImage> {
        self.inner.applied.clone()
    }

    /// openraft's metrics (term, leader, log positions).
    pub fn metrics(&self) -> watch::Receiver<openraft::RaftMetrics<BrokerId, ControllerNode>> {
        self.inner.raft.metrics()
    }

    /// The active controller, as far as this member knows.
    pub fn leader(&self) -> Option<BrokerId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Asks the active controller, wherever it is, retrying through elections and unreachable
    /// members until `patience` has passed.
    pub async fn call(
        &self,
        request: ControllerRequest,
        patience: Duration,
    ) -> Result<ControllerResponse, ControllerError> {
        self.call_through(&self.inner.peers, request, patience)
            .await
    }

    /// [`Controller::call`] over the connections in `peers`. The broker session's calls have
    /// connections of their own: the active controller ends a broker's session when the
    /// connection it heartbeats on closes, so that connection must close only when the
    /// process dies or a heartbeat fails, never because another call failed.
    async fn call_through(
        &self,
        peers: &tokio::sync::Mutex<BTreeMap<BrokerId, Connection>>,
        request: ControllerRequest,
        patience: Duration,
    ) -> Result<ControllerResponse, ControllerError> {
        let started = Instant::now();
        let mut hint: Option<(BrokerId, String)> = None;
        let mut last = None;
        let mut round = 0usize;
        loop {
            let inner = &self.inner;
            if inner.leader_term().is_some() {
                let remaining = patience.saturating_sub(started.elapsed());
                match tokio::time::timeout(remaining, inner.handle(request.clone())).await {
                    Ok(ControllerResponse::NotController { leader }) => hint = leader,
                    Ok(ControllerResponse::Unavailable { .. }) | Err(_) => {}
                    Ok(response) => return Ok(response),
                }
            } else if let Some((node, addr)) =
                hint.take().or_else(|| inner.leader_address()).or_else(|| {
                    round += 1;
                    inner.voter_to_try(round)
                })
            {
                let remaining = patience
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(100));
                let mut peers = peers.lock().await;
                let connection = peers.entry(node).or_insert_with(|| {
                    Connection::new(node, addr.clone()).from_source(inner.source)
                });
                if connection.addr() != addr {
                    *connection = Connection::new(node, addr).from_source(inner.source);
                }
                match connection.controller(request.clone(), remaining).await {
                    Ok(ControllerResponse::NotController { leader }) => hint = leader,
                    Ok(ControllerResponse::Unavailable { .. }) => {}
                    Ok(response) => return Ok(response),
                    Err(e) => last = Some(e),
                }
            }
            if started.elapsed() >= patience || inner.stopped() {
                return Err(ControllerError::NoController {
                    waited: started.elapsed(),
                    last,
                });
            }
            // Wait for news of a leader, or a little, before trying again.
            let mut metrics = inner.raft.metrics();
            let _ = tokio::time::timeout(inner.timing.raft_heartbeat, metrics.changed()).await;
        }
    }

    /// Registers this broker with `endpoints` and heartbeats until shutdown, registering again
    /// whenever the controller says its epoch is stale. Each heartbeat says whether `storage`
    /// holds true (the broker's storage failed), and a change of it is sent at once rather than
    /// at the next tick. The receiver holds the broker epoch once registered.
    pub fn start_broker_session(
        &self,
        endpoints: Endpoints,
        rack: Option<String>,
        mut storage: watch::Receiver<bool>,
    ) -> watch::Receiver<Option<u64>> {
        let (epoch_tx, epoch_rx) = watch::channel(None);
        let controller = self.clone();
        let task = tokio::spawn(async move {
            let incarnation = uuid::Uuid::new_v4().as_u128();
            let id = controller.inner.id;
            let interval = controller.inner.timing.broker_heartbeat;
            while !controller.inner.stopped() {
                let register = ControllerRequest::Register {
                    broker: id,
                    incarnation,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                };
                let session = &controller.inner.session_peers;
                let epoch = match controller
                    .call_through(session, register, Duration::from_secs(5))
                    .await
                {
                    Ok(ControllerResponse::Registered { epoch, .. }) => epoch,
                    Ok(other) => {
                        tracing::warn!(?other, "broker registration refused");
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "broker registration failed; retrying");
                        continue;
                    }
                };
                tracing::info!(broker = id, epoch, "broker registered");
                epoch_tx.send_replace(Some(epoch));
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        // A sender gone (the broker stopping) just leaves the ticks.
                        Ok(()) = storage.changed() => {}
                    }
                    if controller.inner.stopped() {
                        return;
                    }
                    let storage_failed = *storage.borrow_and_update();
                    let beat = ControllerRequest::Heartbeat {
                        broker: id,
                        epoch,
                        storage_failed,
                    };
                    let patience = controller.inner.timing.session;
                    match controller.call_through(session, beat, patience).await {
                        Ok(ControllerResponse::StaleEpoch) => break,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "broker heartbeat failed"),
                    }
                }
            }
        });
        self.inner.tasks().push(task);
        epoch_rx
    }

    /// Stops the listener, the background tasks and Raft.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks());
        for task in &tasks {
            task.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::debug!(error = %e, "raft shutdown");
        }
    }
}

impl Inner {
    /// Keeps the log's entries under [`Timing::snapshot_bytes`]: when they hold more, purges
    /// up to the newest snapshot if that removes anything, else asks for a snapshot of what is
    /// applied. openraft postpones a purge while a member's replication still reads the
    /// entries (it gets them, or the snapshot afterwards). One step per period, so a log that
    /// keeps growing past the limit costs at most a few snapshots a second.
    async fn trim_log(self: Arc<Self>, size: Arc<std::sync::atomic::AtomicU64>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked: Option<u64> = None;
        while !self.stopped() {
            ticker.tick().await;
            let bytes = size.load(std::sync::atomic::Ordering::Relaxed);
            if bytes <= self.timing.snapshot_bytes {
                continue;
            }
            let (applied, snapshot, purged) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let index = |l: Option<openraft::LogId<BrokerId>>| l.map(|l| l.index);
                (index(m.last_applied), index(m.snapshot), index(m.purged))
            };
            if let Some(upto) = snapshot
                && snapshot > purged
            {
                tracing::debug!(bytes, upto, "purging the metadata log behind its snapshot");
                if let Err(e) = self.raft.trigger().purge_log(upto).await {
                    tracing::warn!(error = %e, "cannot purge the metadata log");
                }
            } else if applied > snapshot && asked.is_none_or(|a| Some(a) < applied) {
                tracing::info!(
                    bytes,
                    limit = self.timing.snapshot_bytes,
                    "the metadata log is large: snapshotting the image"
                );
                asked = applied;
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "cannot snapshot the metadata image");
                }
            }
        }
    }

    pub(crate) fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// The current term, while this member is the active controller.
    pub(crate) fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id))
            .then_some(metrics.current_term)
    }

    /// The active controller's id and address, if this member knows them.
    pub(crate) fn leader_address(&self) -> Option<(BrokerId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader == self.id {
            return None;
        }
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// A voter to ask when no leader is known, in turn.
    fn voter_to_try(&self, round: usize) -> Option<(BrokerId, String)> {
        let others: Vec<_> = self
            .voters
            .iter()
            .filter(|(id, _)| **id != self.id)
            .collect();
        let (id, addr) = others.get(round % others.len().max(1))?;
        Some((**id, (*addr).clone()))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The file beside the metadata log directory that says this data directory has been a voter
/// of a quorum of several voters (see [`Error::WipedVoter`]); `None` for a directory without a
/// parent.
fn voter_marker(dir: &std::path::Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(dir.with_file_name(format!("{name}.voter")))
}
