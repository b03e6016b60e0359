//! What partition leaders ask of the controller: ISR changes, and controlled shutdown.
//!
//! ISR changes: every tick, each partition led here with followers is asked
//! whether its view calls for one (a member not caught up for `replica_lag_time_max_ms` leaves,
//! a caught-up replica joins, `leader::LeaderView::isr_change_due`), and the changes due go to
//! the active controller as AlterPartition, all at once. The controller compares the partition
//! epoch, so a change computed from an outdated ISR is refused and computed again; an accepted
//! one is taken up from its answer, which is what the image commits.
//!
//! Controlled shutdown (Kafka's): a broker of a larger cluster that is asked to stop first asks
//! the controller to move its leaderships to other in-sync replicas, while it still serves and
//! its fetchers still run, and waits until its own image shows it leads nothing the
//! controller could move, so clients find the new leaders before this one goes. A partition
//! with no other live in-sync replica stays led here until the broker exits.

use std::time::{Duration, Instant};

use strom_meta::image::MetadataImage;

use futures_util::future::join_all;
use strom_meta::rpc::{ControllerRequest, ControllerResponse, ReplicaEpoch};
use strom_meta::types::Rejection;

use super::replica::IsrChange;
use crate::core::Core;

impl Core {
    /// Asks the controller for every ISR change due now on the partitions led here.
    pub(crate) async fn isr_changes(&self) {
        let lag = Duration::from_millis(self.config.replica_lag_time_max_ms);
        let me = self.cluster.id();
        let Some(broker_epoch) = self.image().brokers.get(&me).map(|b| b.epoch) else {
            return;
        };
        let now = Instant::now();
        let mut asks = Vec::new();
        for topic in self.topics.all() {
            for part in &topic.partitions {
                let Some(IsrChange { lead, change, seen }) = part.replica().isr_change(now, lag)
                else {
                    continue;
                };
                let (Ok(partition), Ok(leader_epoch)) =
                    (u32::try_from(part.index), u32::try_from(lead.leader_epoch))
                else {
                    continue;
                };
                let request = ControllerRequest::AlterPartition {
                    broker: me,
                    broker_epoch,
                    topic: topic.name.to_string(),
                    partition,
                    leader_epoch,
                    partition_epoch: lead.partition_epoch,
                    isr: change.isr().to_vec(),
                    replica_epochs: seen
                        .into_iter()
                        .map(|(broker, epoch)| ReplicaEpoch { broker, epoch })
                        .collect(),
                };
                let part = part.clone();
                let name = topic.name.clone();
                asks.push(async move {
                    tracing::info!(topic = %name, partition = part.index, from = ?lead.isr, to = ?change.isr(), "asking the controller for an ISR change");
                    match self.cluster.ask_controller(request).await {
                        Ok(ControllerResponse::PartitionState {
                            leader_epoch,
                            partition_epoch,
                            isr,
                            ..
                        }) if i64::from(leader_epoch) == i64::from(lead.leader_epoch) => {
                            part.replica().isr_committed(lead.leader_epoch, isr, partition_epoch);
                        }
                        other => {
                            tracing::info!(topic = %name, partition = part.index, answer = ?other, "ISR change not made");
                            let ineligible = match other {
                                Ok(ControllerResponse::Rejected(
                                    Rejection::IneligibleReplica { broker, .. },
                                )) => Some(broker),
                                _ => None,
                            };
                            part.replica().isr_refused(lead.leader_epoch, ineligible);
                        }
                    }
                });
            }
        }
        join_all(asks).await;
    }
}

/// How long a controlled shutdown may take before the broker stops anyway.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(10);

/// How many partitions `me` leads in `image`.
fn leading(image: &MetadataImage, me: u64) -> usize {
    image
        .topics
        .values()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader == Some(me))
        .count()
}

impl Core {
    /// Hands this broker's leaderships to other in-sync replicas before it stops (see the
    /// module docs); nothing for a broker that is a cluster of its own.
    pub(crate) async fn controlled_shutdown(&self) {
        if self.cluster.is_alone() {
            return;
        }
        let me = self.cluster.id();
        let Some(broker_epoch) = self.image().brokers.get(&me).map(|b| b.epoch) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + HANDOVER_PATIENCE;
        let mut followed = self.cluster.watch_followed();
        let mut unchanged = 0;
        let mut last = None;
        loop {
            let request = ControllerRequest::ControlledShutdown {
                broker: me,
                broker_epoch,
            };
            // The whole handover is bounded: a controller that cannot commit (no quorum
            // left) does not hold the stop up past it.
            let answer = tokio::time::timeout_at(deadline, self.cluster.ask_controller(request));
            let remaining = match answer.await {
                Ok(Ok(ControllerResponse::ShuttingDown { leading })) => leading,
                other => {
                    tracing::warn!(answer = ?other, "controlled shutdown: the controller did not take it; stopping anyway");
                    return;
                }
            };
            // What the controller could move is moved once this broker's image shows it (the
            // partitions led here alone stay).
            let settled = tokio::time::timeout_at(deadline, async {
                loop {
                    if leading(&self.image(), me) <= remaining as usize {
                        return;
                    }
                    if followed.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            if remaining == 0 {
                tracing::info!("controlled shutdown: this broker leads no partition");
                return;
            }
            unchanged = if last == Some(remaining) {
                unchanged + 1
            } else {
                0
            };
            last = Some(remaining);
            if settled.is_err() || unchanged >= 3 || tokio::time::Instant::now() >= deadline {
                tracing::info!(
                    leading = remaining,
                    "controlled shutdown: these partitions have no other live in-sync replica; stopping with them"
                );
                return;
            }
            tokio::select! {
                _ = followed.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
