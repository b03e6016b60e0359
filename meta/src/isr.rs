//! The controller's side of ISR changes: which AlterPartition requests of a partition leader it
//! accepts (Kafka's AlterPartition, KIP-497, fenced by broker epochs as in KIP-380 and KIP-903),
//! and the `ChangePartition` it commits for one. A pure function of the image and the brokers'
//! [`BrokerStatus`], so every rule is tested without I/O.
//!
//! Why each check (research/cluster.md §2.3, I4 and I6):
//! - **the broker epoch** fences an older process of the leader's broker;
//! - **the leader epoch** fences a deposed leader (`FENCED_LEADER_EPOCH`), and only the leader
//!   may change its ISR (`NOT_LEADER_OR_FOLLOWER`);
//! - **the partition epoch** is the compare-and-set (`INVALID_UPDATE_VERSION`): the leader
//!   computed its ISR from the state it names, and anything that changed since (an election, a
//!   shrink by the controller) voids it. The committed command carries the same epoch, so a
//!   change that commits between this check and the apply is caught there too;
//! - **the new ISR** is a set of replicas with the leader in it;
//! - **every replica it adds** must be able to serve as a leader later: registered, unfenced,
//!   not shutting down, and, when the leader says which process it saw catch up, that very
//!   process (`INELIGIBLE_REPLICA`). Removals are never refused: a leader that stops hearing
//!   from a follower must be able to shrink without it.
//!
//! The accepted ISR is recorded in the replicas' preferred order, so equal sets are equal lists
//! in the image; a request that names the current set changes nothing and commits nothing.

use std::collections::BTreeSet;

use crate::election::BrokerStatus;
use crate::image::MetadataImage;
use crate::rpc::ReplicaEpoch;
use crate::types::{BrokerId, Ineligible, LeaderChange, MetaCommand, Rejection};

/// A partition leader's request to change its ISR: the fields of
/// [`crate::rpc::ControllerRequest::AlterPartition`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct AlterPartition<'a> {
    /// The leader asking.
    pub broker: BrokerId,
    /// Its broker epoch.
    pub broker_epoch: u64,
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: u32,
    /// The leader epoch it leads in.
    pub leader_epoch: u32,
    /// The partition epoch its ISR was computed from.
    pub partition_epoch: u32,
    /// The ISR it wants.
    pub isr: &'a [BrokerId],
    /// The broker epoch each follower's fetches carried, for followers it adds (KIP-903).
    pub replica_epochs: &'a [ReplicaEpoch],
}

/// The change to commit for `request` (`Ok(None)`: the ISR is already that set, nothing to
/// commit), or why it is refused. Checked in this order: broker epoch, topic and partition,
/// leader epoch, leadership, partition epoch, the ISR's shape, the eligibility of each replica
/// it adds.
pub fn check_alter_partition(
    image: &MetadataImage,
    request: &AlterPartition<'_>,
    status: impl Fn(BrokerId) -> BrokerStatus,
) -> Result<Option<MetaCommand>, Rejection> {
    let AlterPartition {
        broker,
        broker_epoch,
        topic,
        partition,
        leader_epoch,
        partition_epoch,
        isr,
        replica_epochs,
    } = *request;
    image.check_broker_epoch(broker, broker_epoch)?;
    let current = image
        .topics
        .get(topic)
        .ok_or_else(|| Rejection::UnknownTopic {
            name: topic.to_owned(),
        })?
        .partitions
        .get(partition as usize)
        .ok_or_else(|| Rejection::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        })?;
    if leader_epoch != current.leader_epoch {
        return Err(Rejection::FencedLeaderEpoch {
            topic: topic.to_owned(),
            partition,
            sent: leader_epoch,
            current: current.leader_epoch,
        });
    }
    if current.leader != Some(broker) {
        return Err(Rejection::NotLeader {
            topic: topic.to_owned(),
            partition,
            broker,
            leader: current.leader,
        });
    }
    if partition_epoch != current.partition_epoch {
        return Err(Rejection::StalePartitionEpoch {
            topic: topic.to_owned(),
            partition,
            expected: partition_epoch,
            current: current.partition_epoch,
        });
    }
    let invalid = |reason: String| Rejection::InvalidIsr {
        topic: topic.to_owned(),
        partition,
        reason,
    };
    if isr.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let mut wanted = BTreeSet::new();
    for member in isr {
        if !wanted.insert(*member) {
            return Err(invalid(format!("it names broker {member} twice")));
        }
        if !current.replicas.contains(member) {
            return Err(invalid(format!(
                "broker {member} is not one of the replicas {:?}",
                current.replicas
            )));
        }
    }
    if !wanted.contains(&broker) {
        return Err(invalid(format!(
            "it leaves out its leader, broker {broker}"
        )));
    }
    // Replica order: the image holds one list per set.
    let new_isr: Vec<BrokerId> = current
        .replicas
        .iter()
        .copied()
        .filter(|b| wanted.contains(b))
        .collect();
    for added in new_isr.iter().filter(|b| !current.isr.contains(b)) {
        let refuse = |why| Rejection::IneligibleReplica {
            topic: topic.to_owned(),
            partition,
            broker: *added,
            why,
        };
        let Some(registration) = image.brokers.get(added) else {
            return Err(refuse(Ineligible::Unregistered));
        };
        if let Some(seen) = replica_epochs
            .iter()
            .find(|r| r.broker == *added && r.epoch != registration.epoch)
        {
            return Err(refuse(Ineligible::StaleBrokerEpoch {
                seen: seen.epoch,
                current: registration.epoch,
            }));
        }
        match status(*added) {
            BrokerStatus::Alive => {}
            BrokerStatus::Fenced => return Err(refuse(Ineligible::Fenced)),
            BrokerStatus::ShuttingDown => return Err(refuse(Ineligible::ShuttingDown)),
            BrokerStatus::StorageFailed => return Err(refuse(Ineligible::StorageFailed)),
        }
    }
    let unchanged =
        current.isr.len() == new_isr.len() && new_isr.iter().all(|b| current.isr.contains(b));
    if unchanged {
        return Ok(None);
    }
    Ok(Some(MetaCommand::ChangePartition {
        topic: topic.to_owned(),
        partition,
        partition_epoch,
        leader: LeaderChange::Unchanged,
        isr: Some(new_isr),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::image::PartitionImage;
    use crate::types::{Endpoints, MetaResponse, TopicId};

    /// Brokers 1 to 5 registered with epochs 10 to 50; topic `t` with one partition in `state`.
    fn image_with(state: PartitionImage) -> MetadataImage {
        let mut image = MetadataImage::default();
        for broker in 1..=5u64 {
            image.apply(
                broker * 10,
                &MetaCommand::RegisterBroker {
                    broker,
                    incarnation: u128::from(broker),
                    endpoints: Endpoints::default(),
                    rack: None,
                },
            );
        }
        image.apply(
            100,
            &MetaCommand::CreateTopic {
                name: "t".into(),
                id: TopicId(1),
                configs: BTreeMap::new(),
                assignments: vec![state.replicas.clone()],
            },
        );
        if let Some(topic) = image.topics.get_mut("t") {
            topic.partitions[0] = state;
        }
        image
    }

    fn led_by_1() -> MetadataImage {
        image_with(PartitionImage {
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
            leader: Some(1),
            leader_epoch: 4,
            partition_epoch: 9,
        })
    }

    const NO_EPOCHS: &[ReplicaEpoch] = &[];

    fn seen(pairs: &[(BrokerId, u64)]) -> Vec<ReplicaEpoch> {
        pairs
            .iter()
            .map(|(broker, epoch)| ReplicaEpoch {
                broker: *broker,
                epoch: *epoch,
            })
            .collect()
    }

    fn request(isr: &[BrokerId]) -> AlterPartition<'_> {
        AlterPartition {
            broker: 1,
            broker_epoch: 10,
            topic: "t",
            partition: 0,
            leader_epoch: 4,
            partition_epoch: 9,
            isr,
            replica_epochs: NO_EPOCHS,
        }
    }

    fn all_alive(_: BrokerId) -> BrokerStatus {
        BrokerStatus::Alive
    }

    #[test]
    fn the_leader_shrinks_and_expands_and_only_the_partition_epoch_moves() {
        let mut image = led_by_1();
        let shrink = check_alter_partition(&image, &request(&[1]), all_alive)
            .unwrap()
            .unwrap();
        assert_eq!(
            image.apply(200, &shrink),
            MetaResponse::PartitionChanged {
                leader_epoch: 4,
                partition_epoch: 10,
                leader: Some(1),
                isr: vec![1],
            }
        );
        // Expanding in any order records the replicas' order.
        let expand = AlterPartition {
            partition_epoch: 10,
            ..request(&[3, 1, 2])
        };
        let expand = check_alter_partition(&image, &expand, all_alive)
            .unwrap()
            .unwrap();
        assert!(matches!(
            image.apply(201, &expand),
            MetaResponse::PartitionChanged { partition_epoch: 11, ref isr, .. } if *isr == vec![1, 2, 3]
        ));
        // The same set again commits nothing.
        let same = AlterPartition {
            partition_epoch: 11,
            ..request(&[2, 3, 1])
        };
        assert_eq!(check_alter_partition(&image, &same, all_alive), Ok(None));
    }

    #[test]
    fn each_fence_has_its_own_rejection() {
        let image = led_by_1();
        let check =
            |request: AlterPartition<'_>| check_alter_partition(&image, &request, all_alive);
        assert_eq!(
            check(AlterPartition {
                broker_epoch: 9,
                ..request(&[1])
            }),
            Err(Rejection::StaleBrokerEpoch {
                broker: 1,
                sent: 9,
                current: Some(10)
            })
        );
        assert_eq!(
            check(AlterPartition {
                leader_epoch: 3,
                ..request(&[1])
            }),
            Err(Rejection::FencedLeaderEpoch {
                topic: "t".into(),
                partition: 0,
                sent: 3,
                current: 4
            })
        );
        assert_eq!(
            check(AlterPartition {
                broker: 2,
                broker_epoch: 20,
                ..request(&[2])
            }),
            Err(Rejection::NotLeader {
                topic: "t".into(),
                partition: 0,
                broker: 2,
                leader: Some(1)
            })
        );
        assert_eq!(
            check(AlterPartition {
                partition_epoch: 8,
                ..request(&[1])
            }),
            Err(Rejection::StalePartitionEpoch {
                topic: "t".into(),
                partition: 0,
                expected: 8,
                current: 9
            })
        );
        for bad in [&[][..], &[1, 1], &[1, 4], &[2]] {
            assert!(
                matches!(check(request(bad)), Err(Rejection::InvalidIsr { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check(AlterPartition {
                topic: "u",
                ..request(&[1])
            }),
            Err(Rejection::UnknownTopic { .. })
        ));
        assert!(matches!(
            check(AlterPartition {
                partition: 1,
                ..request(&[1])
            }),
            Err(Rejection::UnknownPartition { .. })
        ));
    }

    #[test]
    fn only_live_current_brokers_join_and_anyone_may_leave() {
        let image = led_by_1();
        let with = |status: BrokerStatus| {
            move |b: BrokerId| if b == 3 { status } else { BrokerStatus::Alive }
        };
        let why = |result: Result<Option<MetaCommand>, Rejection>| match result {
            Err(Rejection::IneligibleReplica { broker: 3, why, .. }) => Some(why),
            _ => None,
        };
        let join = request(&[1, 2, 3]);
        assert_eq!(
            why(check_alter_partition(
                &image,
                &join,
                with(BrokerStatus::Fenced)
            )),
            Some(Ineligible::Fenced)
        );
        assert_eq!(
            why(check_alter_partition(
                &image,
                &join,
                with(BrokerStatus::ShuttingDown)
            )),
            Some(Ineligible::ShuttingDown)
        );
        let seen_before_restart = seen(&[(3, 29)]);
        let stale = AlterPartition {
            replica_epochs: &seen_before_restart,
            ..join
        };
        assert_eq!(
            why(check_alter_partition(&image, &stale, all_alive)),
            Some(Ineligible::StaleBrokerEpoch {
                seen: 29,
                current: 30
            })
        );
        let seen_now = seen(&[(3, 30), (2, 1)]);
        let current = AlterPartition {
            replica_epochs: &seen_now,
            ..join
        };
        assert!(matches!(
            check_alter_partition(&image, &current, all_alive),
            Ok(Some(_))
        ));
        // 2, already in the ISR, may leave or stay whatever its state (and whatever epoch the
        // leader names for it).
        let fenced_2 = |b: BrokerId| {
            if b == 2 {
                BrokerStatus::Fenced
            } else {
                BrokerStatus::Alive
            }
        };
        assert!(matches!(
            check_alter_partition(&image, &request(&[1]), fenced_2),
            Ok(Some(_))
        ));
        assert_eq!(
            check_alter_partition(&image, &current, fenced_2).map(|c| c.is_some()),
            Ok(true)
        );
        // A replica that never registered cannot join.
        let mut unregistered = led_by_1();
        unregistered.brokers.remove(&3);
        assert_eq!(
            why(check_alter_partition(&unregistered, &join, all_alive)),
            Some(Ineligible::Unregistered)
        );
    }

    /// A field of a request: the right value, or a random one.
    fn either<T: std::fmt::Debug + Clone>(
        wrong: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        prop_oneof![6 => Just(None), 1 => wrong.prop_map(Some)]
    }

    fn status_strategy() -> impl Strategy<Value = BrokerStatus> {
        prop_oneof![
            3 => Just(BrokerStatus::Alive),
            1 => Just(BrokerStatus::Fenced),
            1 => Just(BrokerStatus::ShuttingDown),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Over random partitions, requests and broker states, a request is accepted exactly
        /// when every condition holds, and refused for the first that does not, in the
        /// documented order. An accepted change applies, keeps the leader and its epoch, bumps
        /// the partition epoch, records the asked set in replica order, and adds only eligible
        /// brokers whose epoch (if named) is current.
        #[test]
        fn a_change_is_accepted_exactly_when_every_rule_holds(
            replicas in Just((1u64..=5).collect::<Vec<_>>()).prop_shuffle().prop_flat_map(|r| (1..=r.len()).prop_map(move |n| r[..n].to_vec())),
            isr_mask in 1u8..32,
            leader_pick in proptest::option::weighted(0.9, 0usize..5),
            leader_epoch in 0u32..5,
            partition_epoch in 0u32..5,
            wrong_broker in either(1u64..=6),
            wrong_broker_epoch in either(0u64..70),
            wrong_leader_epoch in either(0u32..6),
            wrong_partition_epoch in either(0u32..6),
            asked_mask in 0u8..32,
            extra in either(proptest::collection::vec(1u64..=6, 1..3)),
            statuses in proptest::collection::vec(status_strategy(), 6),
            named_epochs in proptest::collection::btree_map(1u64..=6, prop_oneof![Just(true), Just(false)], 0..4),
        ) {
            let isr: Vec<BrokerId> = replicas.iter().enumerate()
                .filter(|(i, _)| isr_mask & (1 << i) != 0).map(|(_, b)| *b).collect();
            let isr = if isr.is_empty() { vec![replicas[0]] } else { isr };
            let leader = leader_pick.map(|i| isr[i % isr.len()]);
            let state = PartitionImage {
                replicas: replicas.clone(),
                isr: isr.clone(),
                leader,
                leader_epoch,
                partition_epoch,
            };
            let image = image_with(state.clone());
            let broker = wrong_broker.or(leader).unwrap_or(1);
            let epoch_of = |b: BrokerId| image.brokers.get(&b).map(|r| r.epoch);
            let broker_epoch = wrong_broker_epoch.or(epoch_of(broker)).unwrap_or(0);
            let mut asked: Vec<BrokerId> = replicas.iter().enumerate()
                .filter(|(i, _)| asked_mask & (1 << i) != 0).map(|(_, b)| *b).collect();
            if leader_pick.is_some() && !asked.contains(&broker) && asked_mask % 3 != 0 {
                asked.push(broker);
            }
            asked.extend(extra.unwrap_or_default());
            let replica_epochs: Vec<ReplicaEpoch> = named_epochs.iter()
                .map(|(b, right)| ReplicaEpoch {
                    broker: *b,
                    epoch: epoch_of(*b).unwrap_or(0) + u64::from(!right),
                })
                .collect();
            let request = AlterPartition {
                broker,
                broker_epoch,
                topic: "t",
                partition: 0,
                leader_epoch: wrong_leader_epoch.unwrap_or(leader_epoch),
                partition_epoch: wrong_partition_epoch.unwrap_or(partition_epoch),
                isr: &asked,
                replica_epochs: &replica_epochs,
            };
            let status = |b: BrokerId| statuses[(b - 1) as usize % statuses.len()];
            let result = check_alter_partition(&image, &request, status);

            // The rules, restated.
            let asked_set: BTreeSet<BrokerId> = asked.iter().copied().collect();
            let added: Vec<BrokerId> = replicas.iter().copied()
                .filter(|b| asked_set.contains(b) && !isr.contains(b)).collect();
            let eligible = |b: BrokerId| {
                epoch_of(b).is_some()
                    && named_epochs.get(&b).is_none_or(|right| *right)
                    && status(b) == BrokerStatus::Alive
            };
            let expected = if epoch_of(broker) != Some(broker_epoch) {
                Err("stale broker epoch")
            } else if request.leader_epoch != leader_epoch {
                Err("fenced leader epoch")
            } else if leader != Some(broker) {
                Err("not leader")
            } else if request.partition_epoch != partition_epoch {
                Err("stale partition epoch")
            } else if asked.is_empty()
                || asked_set.len() != asked.len()
                || !asked.iter().all(|b| replicas.contains(b))
                || !asked_set.contains(&broker)
            {
                Err("invalid isr")
            } else if !added.iter().all(|b| eligible(*b)) {
                Err("ineligible replica")
            } else {
                Ok(())
            };
            let got = match &result {
                Ok(_) => Ok(()),
                Err(Rejection::StaleBrokerEpoch { .. }) => Err("stale broker epoch"),
                Err(Rejection::FencedLeaderEpoch { .. }) => Err("fenced leader epoch"),
                Err(Rejection::NotLeader { .. }) => Err("not leader"),
                Err(Rejection::StalePartitionEpoch { .. }) => Err("stale partition epoch"),
                Err(Rejection::InvalidIsr { .. }) => Err("invalid isr"),
                Err(Rejection::IneligibleReplica { broker, .. }) => {
                    prop_assert!(!eligible(*broker));
                    Err("ineligible replica")
                }
                Err(other) => {
                    return Err(TestCaseError::fail(format!("unexpected rejection: {other}")));
                }
            };
            prop_assert_eq!(got, expected, "{:?} {:?}", state, request);
            match result {
                Ok(None) => prop_assert_eq!(asked_set, isr.iter().copied().collect::<BTreeSet<_>>()),
                Ok(Some(change)) => {
                    let mut image = image;
                    let applied = image.apply(500, &change);
                    let in_order: Vec<BrokerId> = replicas.iter().copied()
                        .filter(|b| asked_set.contains(b)).collect();
                    prop_assert_eq!(applied, MetaResponse::PartitionChanged {
                        leader_epoch,
                        partition_epoch: partition_epoch + 1,
                        leader,
                        isr: in_order,
                    });
                }
                Err(_) => {}
            }
        }
    }
}
