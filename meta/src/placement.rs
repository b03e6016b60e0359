//! The controller's decisions as pure functions of the metadata image and the set of live
//! brokers: where a new topic's replicas go, who leads a partition, and what changes when a
//! broker goes away or comes back. Nothing here does I/O; the controller proposes what these
//! return, and the tests below drive them with random inputs (proptest).

use std::collections::BTreeSet;

use crate::image::{MetadataImage, PartitionImage};
use crate::types::{Assignment, BrokerId, LeaderChange, MetaCommand};

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Asked for more replicas than there are live brokers.
    #[error("replication factor {replication_factor} is larger than the {live} live brokers")]
    NotEnoughBrokers {
        /// The factor asked for.
        replication_factor: u32,
        /// The live brokers.
        live: usize,
    },
    /// A replication factor or partition count of zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Places `partitions` new partitions with `replication_factor` replicas each over the `live`
/// brokers: rack-unaware round robin, Kafka's default. Partition `p` is led by the broker `p`
/// places after a starting broker in id order and followed by the next ones around the ring, so
/// within one call every broker leads as many partitions as any other give or take one (and
/// holds as many replicas, when the partitions go round the ring a whole number of times). The starting broker is the one that leads fewest partitions in `image`, so leaders stay
/// spread as topics come and go.
pub fn assign_replicas(
    image: &MetadataImage,
    live: &BTreeSet<BrokerId>,
    partitions: u32,
    replication_factor: u32,
) -> Result<Vec<Assignment>, PlacementError> {
    if partitions == 0 {
        return Err(PlacementError::Zero("partition count"));
    }
    if replication_factor == 0 {
        return Err(PlacementError::Zero("replication factor"));
    }
    let ring: Vec<BrokerId> = live.iter().copied().collect();
    if replication_factor as usize > ring.len() {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            live: ring.len(),
        });
    }
    let leaders = image.leader_counts();
    let start = ring
        .iter()
        .enumerate()
        .min_by_key(|(_, broker)| (leaders.get(broker).copied().unwrap_or(0), **broker))
        .map_or(0, |(position, _)| position);
    let n = ring.len();
    Ok((0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|k| ring[(start + p + k) % n])
                .collect()
        })
        .collect())
}

/// The leader a partition should have when `alive` says which brokers are up: its first replica,
/// in preferred order, that is in the ISR and alive. `None` means the partition is offline (an
/// unclean election, from outside the ISR, is never chosen here).
pub fn choose_leader(
    partition: &PartitionImage,
    alive: impl Fn(BrokerId) -> bool,
) -> Option<BrokerId> {
    partition
        .replicas
        .iter()
        .copied()
        .find(|replica| partition.isr.contains(replica) && alive(*replica))
}

/// The partition changes that make the image agree with which brokers are `alive`: a partition
/// whose leader is not alive moves to the first live in-sync replica in preferred order, or goes
/// offline when there is none (keeping its ISR, so the last in-sync replica can lead again when
/// it returns); an offline partition with a live in-sync replica gets it as leader; replicas that
/// are not alive leave the ISR, unless they are its last members. Applying the changes and
/// calling this again returns nothing.
pub fn reconcile(image: &MetadataImage, alive: impl Fn(BrokerId) -> bool) -> Vec<MetaCommand> {
    let mut changes = Vec::new();
    for (name, topic) in &image.topics {
        for (index, partition) in topic.partitions.iter().enumerate() {
            let live_isr: Vec<BrokerId> = partition
                .isr
                .iter()
                .copied()
                .filter(|b| alive(*b))
                .collect();
            let isr =
                (!live_isr.is_empty() && live_isr.len() != partition.isr.len()).then_some(live_isr);
            let candidate = PartitionImage {
                isr: isr.clone().unwrap_or_else(|| partition.isr.clone()),
                ..partition.clone()
            };
            let leader = match partition.leader {
                Some(leader) if alive(leader) => partition.leader,
                _ => choose_leader(&candidate, &alive),
            };
            let leader = LeaderChange::between(partition.leader, leader);
            if leader.is_unchanged() && isr.is_none() {
                continue;
            }
            changes.push(MetaCommand::ChangePartition {
                topic: name.clone(),
                partition: index as u32,
                partition_epoch: partition.partition_epoch,
                leader,
                isr,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::types::{Endpoints, MetaResponse, TopicId};

    fn image_with(brokers: &[BrokerId]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (i, broker) in brokers.iter().enumerate() {
            image.apply(
                i as u64 + 1,
                &MetaCommand::RegisterBroker {
                    broker: *broker,
                    incarnation: u128::from(*broker),
                    endpoints: Endpoints::default(),
                    rack: None,
                },
            );
        }
        image
    }

    fn spread(counts: &BTreeMap<BrokerId, usize>, among: &BTreeSet<BrokerId>) -> usize {
        let values: Vec<usize> = among
            .iter()
            .map(|b| counts.get(b).copied().unwrap_or(0))
            .collect();
        values.iter().max().unwrap_or(&0) - values.iter().min().unwrap_or(&0)
    }

    fn create(image: &mut MetadataImage, name: &str, assignments: Vec<Assignment>) -> MetaResponse {
        image.apply(
            1000,
            &MetaCommand::CreateTopic {
                name: name.into(),
                id: TopicId(7),
                configs: BTreeMap::new(),
                assignments,
            },
        )
    }

    proptest! {
        /// Every partition gets distinct live replicas, and one creation spreads leaders so that
        /// no broker leads more than one more than another.
        #[test]
        fn round_robin_is_valid_and_even(
            brokers in proptest::collection::btree_set(1u64..20, 1..8),
            partitions in 1u32..200,
            rf_seed in 0u32..8,
        ) {
            let image = image_with(&brokers.iter().copied().collect::<Vec<_>>());
            let rf = rf_seed % brokers.len() as u32 + 1;
            let assignments = assign_replicas(&image, &brokers, partitions, rf).unwrap();
            prop_assert_eq!(assignments.len(), partitions as usize);
            for replicas in &assignments {
                prop_assert_eq!(replicas.len(), rf as usize);
                let distinct: BTreeSet<_> = replicas.iter().collect();
                prop_assert_eq!(distinct.len(), replicas.len());
                prop_assert!(replicas.iter().all(|b| brokers.contains(b)));
            }
            let mut fresh = image.clone();
            prop_assert_eq!(create(&mut fresh, "t", assignments), MetaResponse::Done);
            prop_assert!(spread(&fresh.leader_counts(), &brokers) <= 1);
            // Replicas lie in windows sliding round the ring: even when the partitions go round
            // it a whole number of times, never more than `rf` apart otherwise.
            let replicas = spread(&fresh.replica_counts(), &brokers);
            if (partitions as usize).is_multiple_of(brokers.len()) {
                prop_assert_eq!(replicas, 0);
            }
            prop_assert!(replicas <= rf as usize);
        }

        /// Topic after topic, leaders stay within one of each other across the whole image.
        #[test]
        fn leaders_stay_even_across_topics(
            brokers in proptest::collection::btree_set(1u64..20, 1..6),
            sizes in proptest::collection::vec(1u32..13, 1..12),
        ) {
            let mut image = image_with(&brokers.iter().copied().collect::<Vec<_>>());
            for (i, size) in sizes.iter().enumerate() {
                let assignments = assign_replicas(&image, &brokers, *size, 1).unwrap();
                prop_assert_eq!(create(&mut image, &format!("t{i}"), assignments), MetaResponse::Done);
                prop_assert!(spread(&image.leader_counts(), &brokers) <= 1);
            }
        }

        /// Brokers going down and coming back in any order: after each reconciliation every
        /// partition is led by a live in-sync replica, or is offline only when none is alive, the
        /// ISR never empties, and reconciling again changes nothing. Once all are back, every
        /// partition is online.
        #[test]
        fn reconcile_keeps_leaders_on_live_isr_members(
            brokers in proptest::collection::btree_set(1u64..10, 1..6),
            partitions in 1u32..30,
            rf_seed in 0u32..6,
            flips in proptest::collection::vec(0usize..6, 0..12),
        ) {
            let ids: Vec<BrokerId> = brokers.iter().copied().collect();
            let mut image = image_with(&ids);
            let rf = rf_seed % ids.len() as u32 + 1;
            let assignments = assign_replicas(&image, &brokers, partitions, rf).unwrap();
            create(&mut image, "t", assignments);
            let mut index = 2000;
            // Some partitions have all their replicas in sync, as replication will make them.
            for p in 0..partitions {
                if p % 2 == 0 {
                    index += 1;
                    let isr = image.partition("t", p).unwrap().replicas.clone();
                    let applied = image.apply(index, &MetaCommand::ChangePartition {
                        topic: "t".into(),
                        partition: p,
                        partition_epoch: 0,
                        leader: LeaderChange::Unchanged,
                        isr: Some(isr),
                    });
                    let changed = matches!(applied, MetaResponse::PartitionChanged { .. });
                    prop_assert!(changed, "{:?}", applied);
                }
            }
            let mut alive: BTreeSet<BrokerId> = brokers.clone();
            let steps = flips.iter().map(|pick| Some(ids[pick % ids.len()])).chain([None]);
            for step in steps {
                match step {
                    Some(broker) if !alive.remove(&broker) => {
                        alive.insert(broker);
                    }
                    Some(_) => {}
                    None => alive = brokers.clone(),
                }
                for change in reconcile(&image, |b| alive.contains(&b)) {
                    index += 1;
                    // As a member that got the entry over the wire applies it.
                    let change: MetaCommand =
                        serde_json::from_slice(&serde_json::to_vec(&change).unwrap()).unwrap();
                    let applied = image.apply(index, &change);
                    prop_assert!(matches!(applied, MetaResponse::PartitionChanged { .. }), "{:?}", applied);
                }
                prop_assert!(reconcile(&image, |b| alive.contains(&b)).is_empty());
                for partition in &image.topics["t"].partitions {
                    match partition.leader {
                        Some(leader) => {
                            prop_assert!(alive.contains(&leader));
                            prop_assert!(partition.isr.contains(&leader));
                        }
                        None => prop_assert!(partition.isr.iter().all(|b| !alive.contains(b))),
                    }
                    prop_assert!(!partition.isr.is_empty());
                }
            }
            prop_assert!(image.topics["t"].partitions.iter().all(|p| p.leader.is_some()));
        }
    }

    #[test]
    fn too_few_brokers_is_an_error() {
        let brokers: BTreeSet<BrokerId> = [1, 2].into();
        let image = image_with(&[1, 2]);
        assert_eq!(
            assign_replicas(&image, &brokers, 3, 3),
            Err(PlacementError::NotEnoughBrokers {
                replication_factor: 3,
                live: 2
            })
        );
        assert!(assign_replicas(&image, &brokers, 0, 1).is_err());
        assert!(assign_replicas(&image, &brokers, 1, 0).is_err());
    }

    #[test]
    fn a_stale_change_is_rejected() {
        let brokers: BTreeSet<BrokerId> = [1, 2, 3].into();
        let mut image = image_with(&[1, 2, 3]);
        let assignments = assign_replicas(&image, &brokers, 1, 3).unwrap();
        create(&mut image, "t", assignments);
        let full_isr = MetaCommand::ChangePartition {
            topic: "t".into(),
            partition: 0,
            partition_epoch: 0,
            leader: LeaderChange::Unchanged,
            isr: Some(vec![1, 2, 3]),
        };
        assert!(matches!(
            image.apply(2999, &full_isr),
            MetaResponse::PartitionChanged { .. }
        ));
        let changes = reconcile(&image, |b| b != 1);
        assert_eq!(changes.len(), 1);
        assert!(matches!(
            image.apply(3000, &changes[0]),
            MetaResponse::PartitionChanged { .. }
        ));
        assert!(matches!(
            image.apply(3001, &changes[0]),
            MetaResponse::Rejected(crate::types::Rejection::StalePartitionEpoch { .. })
        ));
        let partition = image.partition("t", 0).unwrap();
        assert_eq!(partition.leader, Some(2));
        assert_eq!((partition.leader_epoch, partition.partition_epoch), (1, 2));
        assert_eq!(partition.isr, vec![2, 3]);
    }
}
