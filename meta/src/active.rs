//! The active controller: what the member that leads the metadata quorum does on top of Raft.
//! It answers brokers' calls (registration, heartbeats, admin requests, partition leaders' ISR
//! changes, controlled shutdowns), keeps the liveness table for its term, and proposes the
//! leadership and ISR changes liveness calls for ([`crate::election::reconcile`]), a few times
//! per session, whenever a broker returns and when one asks to shut down. The decisions are the
//! pure functions of [`crate::placement`], [`crate::election`] and [`crate::isr`]; this module
//! feeds them the image and the liveness table and proposes what they return.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};

use crate::controller::{Inner, Office};
use crate::election::{self, BrokerStatus};
use crate::image::MetadataImage;
use crate::isr;
use crate::liveness::Heartbeat;
use crate::placement;
use crate::rpc::{BrokerState, ClusterStatus, ControllerRequest, ControllerResponse, Member};
use crate::topic_config;
use crate::types::{BrokerId, ControllerNode, MetaCommand, MetaResponse, Rejection, TopicId};

/// How long the active controller waits for one of its proposals to commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Inner {
    /// The liveness table for `term`, seeded afresh when the term changed.
    fn office(&self, term: u64) -> std::sync::MutexGuard<'_, Office> {
        let mut office = self.office.lock().unwrap_or_else(PoisonError::into_inner);
        if office.term != Some(term) {
            let image = self.image.borrow().clone();
            office.liveness.seed(&image, Instant::now());
            office.term = Some(term);
            tracing::info!(
                term,
                brokers = image.brokers.len(),
                "this broker is the active controller"
            );
        }
        office
    }

    /// `broker` as elections and ISR changes see it. The active controller's own broker is up
    /// for as long as it leads: a stall longer than a session (a paused VM) must not fence the
    /// one broker of a single-node cluster.
    fn broker_status(
        &self,
        office: &Office,
        image: &MetadataImage,
        broker: BrokerId,
    ) -> BrokerStatus {
        match office.liveness.status(image, broker) {
            BrokerStatus::Fenced if broker == self.id => {
                if office.liveness.is_shutting_down(image, broker) {
                    BrokerStatus::ShuttingDown
                } else {
                    BrokerStatus::Alive
                }
            }
            status => status,
        }
    }

    fn not_controller(&self) -> ControllerResponse {
        ControllerResponse::NotController {
            leader: self.leader_address(),
        }
    }

    /// Proposes `command` and waits until it is applied here, for at most [`WRITE_TIMEOUT`]:
    /// without a quorum nothing commits, and the caller hears `Unavailable` (the command may
    /// still commit later, should the quorum return).
    async fn write(&self, command: MetaCommand) -> Result<(u64, MetaResponse), ControllerResponse> {
        let Ok(written) =
            tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await
        else {
            return Err(ControllerResponse::Unavailable {
                message: format!(
                    "not committed within {WRITE_TIMEOUT:?}: is a quorum of voters up?"
                ),
            });
        };
        match written {
            Ok(written) => Ok((written.log_id.index, written.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let leader = forward
                    .leader_id
                    .zip(forward.leader_node)
                    .map(|(id, node)| (id, node.addr));
                Err(ControllerResponse::NotController { leader })
            }
            Err(e) => Err(ControllerResponse::Unavailable {
                message: e.to_string(),
            }),
        }
    }

    /// The connection `broker` heartbeated on (with `epoch`) closed: on the active controller
    /// its session ends now and its partitions move at once (see
    /// [`crate::liveness::Liveness::connection_closed`]).
    pub(crate) async fn heartbeats_stopped(&self, broker: BrokerId, epoch: u64) {
        let Some(term) = self.leader_term() else {
            return;
        };
        let cut = self
            .office(term)
            .liveness
            .connection_closed(broker, epoch, Instant::now());
        if cut {
            tracing::info!(
                broker,
                epoch,
                "broker's heartbeat connection closed; ending its session"
            );
            // Not committed: the next tick tries again.
            let _ = self.reconcile(term).await;
        }
    }

    /// This member's connection to `broker`'s controller listener was refused: on the active
    /// controller, a broker not heard from lately is fenced at once (see
    /// [`crate::liveness::Liveness::refused`]).
    pub(crate) async fn controller_refused(&self, broker: BrokerId) {
        let Some(term) = self.leader_term() else {
            return;
        };
        let recent = self.timing.broker_heartbeat * 2;
        let cut = self
            .office(term)
            .liveness
            .refused(broker, Instant::now(), recent);
        if cut {
            tracing::info!(
                broker,
                "broker's controller listener refuses connections; ending its session"
            );
            // Not committed: the next tick tries again.
            let _ = self.reconcile(term).await;
        }
    }

    /// Answers a broker's call; only the active controller answers anything but
    /// `NotController`.
    pub(crate) async fn handle(&self, request: ControllerRequest) -> ControllerResponse {
        let Some(term) = self.leader_term() else {
            return self.not_controller();
        };
        match self.handle_as_leader(term, request).await {
            Ok(response) | Err(response) => response,
        }
    }

    async fn handle_as_leader(
        &self,
        term: u64,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, ControllerResponse> {
        let committed = |(index, response): (u64, MetaResponse)| match response {
            MetaResponse::Rejected(rejection) => ControllerResponse::Rejected(rejection),
            _ => ControllerResponse::Committed { index },
        };
        Ok(match request {
            ControllerRequest::Join { broker, addr } => {
                if self.voters.contains_key(&broker) {
                    return Err(ControllerResponse::Invalid {
                        message: format!("broker {broker} is a voter, not a learner"),
                    });
                }
                // A learner that restarts on another controller address (port 0, say) joins
                // again: its node is replaced, or the leader keeps calling the old address.
                let known = {
                    let metrics = self.raft.metrics();
                    let metrics = metrics.borrow();
                    metrics
                        .membership_config
                        .membership()
                        .get_node(&broker)
                        .map(|n| {
                            (
                                n.addr.clone(),
                                metrics.membership_config.log_id().map(|l| l.index),
                            )
                        })
                };
                let node = ControllerNode { addr: addr.clone() };
                let written = match known {
                    Some((known, Some(index))) if known == addr => {
                        return Ok(ControllerResponse::Committed { index });
                    }
                    Some(_) => {
                        tracing::info!(broker, %addr, "a learner moved to another controller address");
                        self.raft
                            .change_membership(
                                openraft::ChangeMembers::SetNodes(
                                    [(broker, node)].into_iter().collect(),
                                ),
                                false,
                            )
                            .await
                    }
                    None => self.raft.add_learner(broker, node, false).await,
                };
                match written {
                    Ok(written) => ControllerResponse::Committed {
                        index: written.log_id.index,
                    },
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        self.not_controller()
                    }
                    Err(e) => ControllerResponse::Unavailable {
                        message: e.to_string(),
                    },
                }
            }
            ControllerRequest::Register {
                broker,
                incarnation,
                endpoints,
                rack,
            } => {
                let command = MetaCommand::RegisterBroker {
                    broker,
                    incarnation,
                    endpoints,
                    rack,
                };
                match self.write(command).await? {
                    (index, MetaResponse::Registered { broker_epoch }) => {
                        // A new process: the old one's session and shutdown end here.
                        self.office(term)
                            .liveness
                            .registered(broker, broker_epoch, Instant::now());
                        ControllerResponse::Registered {
                            epoch: broker_epoch,
                            index,
                        }
                    }
                    other => committed(other),
                }
            }
            ControllerRequest::Heartbeat {
                broker,
                epoch,
                storage_failed,
            } => {
                let image = self.image.borrow().clone();
                let outcome = self.office(term).liveness.heartbeat(
                    &image,
                    broker,
                    epoch,
                    storage_failed,
                    Instant::now(),
                );
                match outcome {
                    Heartbeat::Alive {
                        newly,
                        storage_changed,
                    } => {
                        if newly {
                            tracing::info!(broker, epoch, "broker unfenced");
                        }
                        if storage_changed && storage_failed {
                            tracing::warn!(
                                broker,
                                "broker storage failed: moving its leaderships away"
                            );
                        } else if storage_changed {
                            tracing::info!(broker, "broker storage works again");
                        }
                        if newly || storage_changed {
                            // Not committed: the next tick tries again.
                            let _ = self.reconcile(term).await;
                        }
                        ControllerResponse::HeartbeatAck { fenced: false }
                    }
                    Heartbeat::StaleEpoch => ControllerResponse::StaleEpoch,
                }
            }
            ControllerRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let image = self.image.borrow().clone();
                if let Err(message) = check_topic_name(&name) {
                    return Err(ControllerResponse::Invalid { message });
                }
                if image.topics.contains_key(&name) {
                    return Err(ControllerResponse::Rejected(Rejection::TopicExists {
                        name,
                    }));
                }
                topic_config::check_all(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .map_err(ControllerResponse::Rejected)?;
                let live = self.live_brokers(term, &image);
                // 0: the cluster's default, three replicas or every live broker when fewer.
                let replication_factor = match replication_factor {
                    0 => u32::try_from(live.len()).unwrap_or(u32::MAX).clamp(1, 3),
                    n => n,
                };
                // Three copies and acks=all: acknowledged means on two of them, at least.
                let mut configs = configs;
                if replication_factor >= 3 {
                    configs
                        .entry(topic_config::MIN_INSYNC_REPLICAS.to_string())
                        .or_insert_with(|| "2".to_string());
                }
                let assignments =
                    placement::assign_replicas(&image, &live, partitions, replication_factor)
                        .map_err(|e| ControllerResponse::Invalid {
                            message: e.to_string(),
                        })?;
                let id = TopicId(uuid::Uuid::new_v4().as_u128());
                committed(
                    self.write(MetaCommand::CreateTopic {
                        name,
                        id,
                        configs,
                        assignments,
                    })
                    .await?,
                )
            }
            ControllerRequest::ImportTopic {
                name,
                id,
                partitions,
                configs,
                broker,
            } => {
                if let Err(message) = check_topic_name(&name) {
                    return Err(ControllerResponse::Invalid { message });
                }
                let assignments = vec![vec![broker]; partitions as usize];
                committed(
                    self.write(MetaCommand::CreateTopic {
                        name,
                        id,
                        configs,
                        assignments,
                    })
                    .await?,
                )
            }
            ControllerRequest::DeleteTopic { name } => {
                let id = self.image.borrow().topics.get(&name).map(|t| t.id);
                let Some(id) = id else {
                    return Err(ControllerResponse::Rejected(Rejection::UnknownTopic {
                        name,
                    }));
                };
                committed(self.write(MetaCommand::DeleteTopic { name, id }).await?)
            }
            ControllerRequest::CreatePartitions { name, total } => {
                let image = self.image.borrow().clone();
                let Some(topic) = image.topics.get(&name) else {
                    return Err(ControllerResponse::Rejected(Rejection::UnknownTopic {
                        name,
                    }));
                };
                let current = topic.partitions.len() as u32;
                if total <= current {
                    return Err(ControllerResponse::Invalid {
                        message: format!("topic {name} has {current} partitions; it can only grow"),
                    });
                }
                let factor = topic
                    .partitions
                    .first()
                    .map_or(1, |p| p.replicas.len() as u32);
                let live = self.live_brokers(term, &image);
                let assignments =
                    placement::assign_replicas(&image, &live, total - current, factor).map_err(
                        |e| ControllerResponse::Invalid {
                            message: e.to_string(),
                        },
                    )?;
                committed(
                    self.write(MetaCommand::CreatePartitions { name, assignments })
                        .await?,
                )
            }
            ControllerRequest::AlterTopicConfigs { name, configs } => {
                let set = configs
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)));
                topic_config::check_all(set).map_err(ControllerResponse::Rejected)?;
                committed(
                    self.write(MetaCommand::AlterTopicConfigs { name, configs })
                        .await?,
                )
            }
            ControllerRequest::AllocateProducerIds { broker, count } => {
                match self
                    .write(MetaCommand::AllocateProducerIds { broker, count })
                    .await?
                {
                    (_, MetaResponse::ProducerIds { first, count }) => {
                        ControllerResponse::ProducerIds { first, count }
                    }
                    other => committed(other),
                }
            }
            ControllerRequest::Status => ControllerResponse::Status(self.status(term)),
            ControllerRequest::AlterPartition {
                broker,
                broker_epoch,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
                replica_epochs,
            } => {
                let request = isr::AlterPartition {
                    broker,
                    broker_epoch,
                    topic: &topic,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    isr: &isr,
                    replica_epochs: &replica_epochs,
                };
                self.alter_partition(term, &request).await?
            }
            ControllerRequest::ControlledShutdown {
                broker,
                broker_epoch,
            } => {
                let image = self.image.borrow().clone();
                image
                    .check_broker_epoch(broker, broker_epoch)
                    .map_err(ControllerResponse::Rejected)?;
                let first =
                    self.office(term)
                        .liveness
                        .begin_shutdown(broker, broker_epoch, Instant::now());
                if first {
                    tracing::info!(broker, "controlled shutdown: moving its leaderships away");
                }
                // One batch moves every leadership it can; an error (no quorum) reaches the
                // broker, which asks again.
                self.reconcile(term).await?;
                let leading = self
                    .image
                    .borrow()
                    .topics
                    .values()
                    .flat_map(|t| &t.partitions)
                    .filter(|p| p.leader == Some(broker))
                    .count();
                tracing::debug!(broker, leading, "controlled shutdown progress");
                ControllerResponse::ShuttingDown {
                    leading: u32::try_from(leading).unwrap_or(u32::MAX),
                }
            }
        })
    }

    /// A leader's ISR change: checked against the image and the liveness table, committed,
    /// and answered with the partition's state after it.
    async fn alter_partition(
        &self,
        term: u64,
        request: &isr::AlterPartition<'_>,
    ) -> Result<ControllerResponse, ControllerResponse> {
        let image = self.image.borrow().clone();
        let decided = {
            let office = self.office(term);
            isr::check_alter_partition(&image, request, |b| self.broker_status(&office, &image, b))
        };
        let change = match decided {
            Ok(Some(change)) => change,
            Ok(None) => {
                // Already that ISR: the state the leader named is the current one.
                let Some(p) = image.partition(request.topic, request.partition) else {
                    return Err(ControllerResponse::Rejected(Rejection::UnknownPartition {
                        topic: request.topic.to_owned(),
                        partition: request.partition,
                    }));
                };
                return Ok(ControllerResponse::PartitionState {
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    isr: p.isr.clone(),
                });
            }
            Err(rejection) => {
                tracing::debug!(%rejection, "ISR change refused");
                return Err(ControllerResponse::Rejected(rejection));
            }
        };
        match self.write(change).await? {
            (
                index,
                MetaResponse::PartitionChanged {
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                },
            ) => {
                tracing::info!(
                    topic = request.topic,
                    partition = request.partition,
                    ?isr,
                    partition_epoch,
                    index,
                    "ISR changed"
                );
                Ok(ControllerResponse::PartitionState {
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                })
            }
            // A change that committed since the check (the compare-and-set at apply).
            (_, MetaResponse::Rejected(rejection)) => Err(ControllerResponse::Rejected(rejection)),
            (index, other) => {
                tracing::warn!(?other, index, "unexpected answer to an ISR change");
                Err(ControllerResponse::Unavailable {
                    message: format!("unexpected answer to an ISR change: {other:?}"),
                })
            }
        }
    }

    /// The registered brokers new replicas may go to: unfenced and not shutting down (a new
    /// partition's replicas all start in its ISR, and its first one leads), and with working
    /// storage unless none has it (a single broker whose disk failed a write still takes new
    /// topics: there is nowhere else to put them, and their files fail if the disk still does).
    fn live_brokers(&self, term: u64, image: &MetadataImage) -> BTreeSet<BrokerId> {
        let office = self.office(term);
        let with = |wanted: &dyn Fn(BrokerStatus) -> bool| -> BTreeSet<BrokerId> {
            image
                .brokers
                .keys()
                .copied()
                .filter(|broker| wanted(self.broker_status(&office, image, *broker)))
                .collect()
        };
        let eligible = with(&BrokerStatus::is_eligible);
        if eligible.is_empty() {
            with(&|s| s == BrokerStatus::StorageFailed)
        } else {
            eligible
        }
    }

    fn status(&self, term: u64) -> ClusterStatus {
        let image = self.image.borrow().clone();
        let office = self.office(term);
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<BrokerId> = membership.voter_ids().collect();
        let matched = |id: BrokerId| match &metrics.replication {
            Some(replication) if id != self.id => {
                replication.get(&id).cloned().flatten().map(|l| l.index)
            }
            _ => metrics.last_log_index,
        };
        ClusterStatus {
            leader: self.id,
            term: metrics.current_term,
            committed: metrics.last_applied.map_or(0, |l| l.index),
            members: membership
                .nodes()
                .map(|(id, node)| Member {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched: matched(*id),
                })
                .collect(),
            brokers: image
                .brokers
                .iter()
                .map(|(id, registration)| BrokerState {
                    id: *id,
                    epoch: registration.epoch,
                    endpoints: registration.endpoints.clone(),
                    alive: self.broker_status(&office, &image, *id).is_up(),
                    shutting_down: office.liveness.is_shutting_down(&image, *id),
                    storage_failed: office.liveness.is_storage_failed(&image, *id),
                })
                .collect(),
        }
    }

    /// Fences brokers whose sessions ran out and proposes the leadership and ISR changes
    /// liveness calls for, as one batch. One at a time, each from the image its predecessor
    /// left: two computed from the same image would propose the same changes twice, the second
    /// refused by the compare-and-set but still an entry in the log.
    async fn reconcile(&self, term: u64) -> Result<(), ControllerResponse> {
        let _turn = self.reconciling.lock().await;
        let image = self.image.borrow().clone();
        let commands = {
            let mut office = self.office(term);
            for broker in office.liveness.expire(&image, Instant::now()) {
                tracing::warn!(broker, "broker fenced: its session expired");
            }
            election::reconcile(&image, |broker| self.broker_status(&office, &image, broker))
        };
        if commands.is_empty() {
            return Ok(());
        }
        let count = commands.len();
        match self.write(MetaCommand::Batch { commands }).await {
            Ok((index, _)) => {
                tracing::info!(
                    partitions = count,
                    index,
                    "partition leadership or ISR changed"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(?e, "partition leadership change not committed");
                Err(e)
            }
        }
    }

    /// While this member leads: fence expired sessions and reconcile, a few times per session.
    pub(crate) async fn leader_duties(self: Arc<Self>) {
        let period = (self.timing.session / 4).max(Duration::from_millis(20));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopped() {
            ticker.tick().await;
            if let Some(term) = self.leader_term() {
                // Not committed: the next tick tries again.
                let _ = self.reconcile(term).await;
            }
        }
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must be 1 to 249 characters, not {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "topic name {name:?} has {c:?}; use letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}
