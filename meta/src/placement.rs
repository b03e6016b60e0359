//! Replica placement, as a pure function of the metadata image and the set of live brokers:
//! where a new topic's (or a grown topic's) replicas go. Nothing here does I/O; the controller
//! proposes what it returns, and the tests below drive it with random inputs (proptest). Who
//! leads once the replicas exist is [`crate::election`]'s.

use std::collections::BTreeSet;

use crate::image::MetadataImage;
use crate::types::{Assignment, BrokerId};

/// Leader choice and reconciliation lived here before they grew controlled shutdown, unclean
/// and preferred elections; they are [`crate::election`]'s now.
pub use crate::election::{choose_leader, reconcile};

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::types::{Endpoints, MetaCommand, MetaResponse, TopicId};

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
}
