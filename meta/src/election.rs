//! Partition leadership and ISR membership as liveness calls for them: the controller's
//! elections, as pure functions of the metadata image and each broker's [`BrokerStatus`].
//!
//! The rules (Kafka's, `../shared/research/cluster.md` §2.3 I5 and I8):
//! - **Elect only from the ISR**, preferred order first: its members hold every acknowledged
//!   write. A topic with `unclean.leader.election.enable` may, when no ISR member is up at all,
//!   elect the first live replica instead; its ISR becomes that replica alone.
//! - **The ISR never empties**: a fenced member leaves it unless it is the last, so the last
//!   in-sync replica leads again when it returns rather than a replica without its data.
//! - **Controlled shutdown**: a broker shutting down is never elected and never joins an ISR; it
//!   hands its leaderships to another live ISR member and leaves every ISR that keeps a live
//!   member without it. Where it is the only one up, it keeps what it has until it exits.
//! - **Failed storage**: a broker whose disk failed a write (full, or an I/O error) is treated
//!   as one shutting down until it reports the disk working again: a leader that cannot append
//!   hands its partitions to replicas that can, instead of refusing every produce.
//! - **Preferred leader**: a partition whose first replica is alive, in the ISR and not leading
//!   moves back to it (Kafka's `auto.leader.rebalance.enable`, without its imbalance
//!   threshold). Being in the ISR is what proves a returning broker caught up, so one that just
//!   restarted is never elected before its leader adds it back.
//!
//! The controller proposes what [`reconcile`] returns; the tests below drive it with random
//! brokers, failures, shutdowns and ISR changes (proptest).

use crate::image::{MetadataImage, PartitionImage};
use crate::types::{BrokerId, LeaderChange, MetaCommand};

/// A broker as the active controller's liveness table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerStatus {
    /// Not heartbeating within its session (or never registered): it cannot lead or serve.
    Fenced,
    /// Heartbeating: it can lead and join ISRs.
    Alive,
    /// Heartbeating, but in controlled shutdown: it keeps serving what it has until it exits,
    /// and takes on nothing new.
    ShuttingDown,
    /// Heartbeating, but a write to its storage failed (a full disk, an I/O error) and none has
    /// been shown to work since: elections treat it as one shutting down (it hands over its
    /// leaderships and leaves the ISRs that keep a live member without it) until it reports
    /// its storage working, then it is [`BrokerStatus::Alive`] again and rejoins the ISRs once
    /// it has caught up.
    StorageFailed,
}

impl BrokerStatus {
    /// Heartbeating, shutting down or not.
    pub fn is_up(self) -> bool {
        self != BrokerStatus::Fenced
    }

    /// May be elected leader or join an ISR.
    pub fn is_eligible(self) -> bool {
        self == BrokerStatus::Alive
    }
}

/// The leader a partition without a usable one should get: its first replica, in preferred
/// order, that is in the ISR and `eligible`. `None` means it stays offline; an unclean election
/// (from outside the ISR) is [`reconcile`]'s decision, never this function's.
pub fn choose_leader(
    partition: &PartitionImage,
    eligible: impl Fn(BrokerId) -> bool,
) -> Option<BrokerId> {
    first_in(&partition.replicas, &partition.isr, eligible)
}

/// The first of `replicas` that is in `isr` and `eligible`.
fn first_in(
    replicas: &[BrokerId],
    isr: &[BrokerId],
    eligible: impl Fn(BrokerId) -> bool,
) -> Option<BrokerId> {
    replicas
        .iter()
        .copied()
        .find(|replica| isr.contains(replica) && eligible(*replica))
}

/// The partition changes that make the image agree with `status`, by the rules of this module,
/// one `ChangePartition` per partition that changes (each bumps the partition epoch; those that
/// move the leader bump the leader epoch). Applying them and calling this again returns nothing.
pub fn reconcile(
    image: &MetadataImage,
    status: impl Fn(BrokerId) -> BrokerStatus,
) -> Vec<MetaCommand> {
    let mut changes = Vec::new();
    for (name, topic) in &image.topics {
        let unclean = topic.unclean_leader_election();
        for (index, partition) in topic.partitions.iter().enumerate() {
            let Some((leader, isr)) = partition_change(partition, unclean, &status) else {
                continue;
            };
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

/// What one partition needs: its leader change and its new ISR (`None`: unchanged), or `None`
/// when it is as it should be.
fn partition_change(
    partition: &PartitionImage,
    unclean: bool,
    status: &impl Fn(BrokerId) -> BrokerStatus,
) -> Option<(LeaderChange, Option<Vec<BrokerId>>)> {
    let eligible = |broker: BrokerId| status(broker).is_eligible();
    let up = |broker: BrokerId| status(broker).is_up();
    let members = |keep: &dyn Fn(BrokerId) -> bool| -> Vec<BrokerId> {
        partition.isr.iter().copied().filter(|b| keep(*b)).collect()
    };
    // Fenced and shutting-down members leave, as long as someone eligible stays; failing that
    // the shutting-down ones stay (they still serve), failing that everyone stays: the ISR
    // never empties, and its last members are the only replicas known to hold every write.
    let mut isr = members(&eligible);
    if isr.is_empty() {
        isr = members(&up);
    }
    if isr.is_empty() {
        isr = partition.isr.clone();
    }
    let mut leader = match partition.leader {
        Some(leader) if eligible(leader) => match partition.replicas.first() {
            Some(&preferred)
                if preferred != leader && isr.contains(&preferred) && eligible(preferred) =>
            {
                Some(preferred)
            }
            _ => Some(leader),
        },
        // Shutting down: hand over when another member can take it, else keep serving.
        Some(leader) if up(leader) => {
            first_in(&partition.replicas, &isr, eligible).or(Some(leader))
        }
        _ => first_in(&partition.replicas, &isr, eligible),
    };
    if leader.is_none()
        && unclean
        && !partition.isr.iter().any(|b| up(*b))
        && let Some(replica) = partition.replicas.iter().copied().find(|b| eligible(*b))
    {
        tracing::warn!(
            replica,
            isr = ?partition.isr,
            "unclean leader election: no in-sync replica is alive"
        );
        leader = Some(replica);
        isr = vec![replica];
    }
    let leader = LeaderChange::between(partition.leader, leader);
    let isr = (isr != partition.isr).then_some(isr);
    (!leader.is_unchanged() || isr.is_some()).then_some((leader, isr))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::image::MetadataImage;
    use crate::isr::{AlterPartition, check_alter_partition};
    use crate::placement::assign_replicas;
    use crate::topic_config::UNCLEAN_LEADER_ELECTION;
    use crate::types::{Endpoints, MetaResponse, Rejection, TopicId};

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

    fn create(image: &mut MetadataImage, name: &str, unclean: bool, assignments: Vec<Vec<u64>>) {
        let configs = if unclean {
            BTreeMap::from([(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string())])
        } else {
            BTreeMap::new()
        };
        let created = image.apply(
            1000,
            &MetaCommand::CreateTopic {
                name: name.into(),
                id: TopicId(7),
                configs,
                assignments,
            },
        );
        assert_eq!(created, MetaResponse::Done);
    }

    /// Applies every change, as a member that got the entry over the wire does.
    fn apply_all(image: &mut MetadataImage, index: &mut u64, changes: &[MetaCommand]) {
        for change in changes {
            *index += 1;
            let change: MetaCommand =
                serde_json::from_slice(&serde_json::to_vec(change).unwrap()).unwrap();
            let applied = image.apply(*index, &change);
            assert!(
                matches!(applied, MetaResponse::PartitionChanged { .. }),
                "{applied:?}"
            );
        }
    }

    /// Reconciles with `status` and applies the changes.
    fn settle(
        image: &mut MetadataImage,
        index: &mut u64,
        status: &BTreeMap<BrokerId, BrokerStatus>,
    ) {
        let changes = reconcile(image, statuses(status));
        apply_all(image, index, &changes);
    }

    fn statuses(map: &BTreeMap<BrokerId, BrokerStatus>) -> impl Fn(BrokerId) -> BrokerStatus + '_ {
        |b| map.get(&b).copied().unwrap_or(BrokerStatus::Fenced)
    }

    fn one_partition(replicas: &[BrokerId], unclean: bool) -> MetadataImage {
        let mut image = image_with(&[1, 2, 3]);
        create(&mut image, "t", unclean, vec![replicas.to_vec()]);
        image
    }

    fn state(image: &MetadataImage) -> (Option<BrokerId>, Vec<BrokerId>, u32, u32) {
        let p = image.partition("t", 0).unwrap();
        (p.leader, p.isr.clone(), p.leader_epoch, p.partition_epoch)
    }

    #[test]
    fn a_fenced_leader_moves_to_the_next_isr_member_and_the_last_member_stays() {
        use BrokerStatus::{Alive, Fenced};
        let mut image = one_partition(&[1, 2, 3], false);
        let mut index = 2000;
        let mut status = BTreeMap::from([(1, Fenced), (2, Alive), (3, Alive)]);
        let changes = reconcile(&image, statuses(&status));
        apply_all(&mut image, &mut index, &changes);
        assert_eq!(state(&image), (Some(2), vec![2, 3], 1, 1));
        // A stale change is refused by the compare-and-set.
        assert!(matches!(
            image.apply(index + 1, &changes[0]),
            MetaResponse::Rejected(Rejection::StalePartitionEpoch { .. })
        ));
        status.insert(2, Fenced);
        status.insert(3, Fenced);
        settle(&mut image, &mut index, &status);
        assert_eq!(
            state(&image),
            (None, vec![2, 3], 2, 2),
            "both members went at once: both stay"
        );
        // 1 returns, but it is not in the ISR: the partition stays offline (a clean topic).
        status.insert(1, Alive);
        assert!(reconcile(&image, statuses(&status)).is_empty());
        status.insert(3, Alive);
        settle(&mut image, &mut index, &status);
        assert_eq!(state(&image), (Some(3), vec![3], 3, 3));
    }

    #[test]
    fn an_unclean_topic_elects_a_live_replica_outside_the_isr() {
        use BrokerStatus::{Alive, Fenced};
        let mut image = one_partition(&[1, 2, 3], true);
        let mut index = 2000;
        let status = BTreeMap::from([(1, Alive), (2, Fenced), (3, Fenced)]);
        settle(&mut image, &mut index, &status);
        assert_eq!(state(&image), (Some(1), vec![1], 0, 1), "1 was in sync");
        let status = BTreeMap::from([(1, Fenced), (2, Fenced), (3, Alive)]);
        settle(&mut image, &mut index, &status);
        assert_eq!(state(&image), (Some(3), vec![3], 1, 2), "unclean: 3 alone");
        assert!(reconcile(&image, statuses(&status)).is_empty());
    }

    #[test]
    fn a_shutting_down_broker_hands_over_and_keeps_only_what_no_one_else_can_take() {
        use BrokerStatus::{Alive, Fenced, ShuttingDown};
        let mut image = image_with(&[1, 2, 3]);
        create(
            &mut image,
            "t",
            false,
            vec![vec![1, 2, 3], vec![1], vec![2, 1], vec![1, 3]],
        );
        let mut index = 2000;
        let status = BTreeMap::from([(1, ShuttingDown), (2, Alive), (3, Fenced)]);
        settle(&mut image, &mut index, &status);
        let view: Vec<_> = image.topics["t"]
            .partitions
            .iter()
            .map(|p| (p.leader, p.isr.clone(), p.leader_epoch))
            .collect();
        assert_eq!(
            view,
            vec![
                (Some(2), vec![2], 1),
                (Some(1), vec![1], 0),
                (Some(2), vec![2], 0),
                // 3 is fenced: 1 is the only one up, it keeps leading until it exits.
                (Some(1), vec![1], 0),
            ]
        );
        assert!(reconcile(&image, statuses(&status)).is_empty());
        // It exits: its partitions go offline, their ISR stays.
        let status = BTreeMap::from([(1, Fenced), (2, Alive), (3, Fenced)]);
        settle(&mut image, &mut index, &status);
        assert_eq!(image.partition("t", 1).unwrap().leader, None);
        assert_eq!(image.partition("t", 3).unwrap().isr, vec![1]);
    }

    #[test]
    fn the_preferred_replica_leads_again_once_in_sync() {
        use BrokerStatus::{Alive, Fenced};
        let mut image = one_partition(&[1, 2, 3], false);
        let mut index = 2000;
        let mut status = BTreeMap::from([(1, Fenced), (2, Alive), (3, Alive)]);
        settle(&mut image, &mut index, &status);
        status.insert(1, Alive);
        assert!(
            reconcile(&image, statuses(&status)).is_empty(),
            "back, but not in sync: not elected"
        );
        let expand = MetaCommand::ChangePartition {
            topic: "t".into(),
            partition: 0,
            partition_epoch: 1,
            leader: LeaderChange::Unchanged,
            isr: Some(vec![1, 2, 3]),
        };
        apply_all(&mut image, &mut index, &[expand]);
        settle(&mut image, &mut index, &status);
        assert_eq!(state(&image), (Some(1), vec![1, 2, 3], 2, 3));
    }

    /// The leader of `topic`-`number`, if it has one, asks for `isr`; applied if accepted.
    fn alter(
        image: &mut MetadataImage,
        index: &mut u64,
        topic: &str,
        number: u32,
        isr: &[BrokerId],
        status: &BTreeMap<BrokerId, BrokerStatus>,
    ) {
        let p = image.partition(topic, number).unwrap();
        let Some(leader) = p.leader else { return };
        let request = AlterPartition {
            broker: leader,
            broker_epoch: image.brokers[&leader].epoch,
            topic,
            partition: number,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
            replica_epochs: &[],
        };
        if let Ok(Some(change)) = check_alter_partition(image, &request, statuses(status)) {
            apply_all(image, index, &[change]);
        }
    }

    /// What a test step does.
    #[derive(Debug, Clone)]
    enum Step {
        /// A broker's session ends, or it returns (a returning broker is alive).
        Flip(usize),
        /// A broker asks for controlled shutdown (if it is alive).
        Shutdown(usize),
        /// A live broker's storage fails, or a failed one's works again.
        Storage(usize),
        /// A partition's leader asks for this ISR (bits over its replicas).
        Alter { partition: usize, mask: u8 },
        /// Every partition's leader adds every live replica, as it would once they caught up.
        CatchUp,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0usize..6).prop_map(Step::Flip),
            1 => (0usize..6).prop_map(Step::Shutdown),
            1 => (0usize..6).prop_map(Step::Storage),
            3 => (0usize..60, any::<u8>()).prop_map(|(partition, mask)| Step::Alter { partition, mask }),
            1 => Just(Step::CatchUp),
        ]
    }

    proptest! {
        /// Brokers failing, returning, shutting down and losing and regaining their storage in
        /// any order, leaders shrinking and
        /// expanding their ISRs, over a clean topic and an unclean one. After each
        /// reconciliation (I5 of research/cluster.md §2.3 and this module's rules):
        /// - a leader is an up ISR member; a leader shutting down (or with failed storage)
        ///   only while no eligible member could take over; no leader only while no ISR member is eligible (and, for
        ///   the unclean topic, while some member is up or no replica is eligible);
        /// - the ISR never empties, and holds no fenced, shutting-down or storage-failed member
        ///   beside an eligible one; the preferred replica leads whenever it is eligible and in sync;
        /// - reconciling again changes nothing.
        /// For every applied change: the partition epoch goes up by one; the leader epoch goes
        /// up exactly when the leader changes; a new leader is eligible and comes from the ISR
        /// it replaces, except for an unclean topic, whose ISR is then the new leader alone; no
        /// change adds a member but an unclean election. Once every broker is back and none is
        /// shutting down, every partition is led, and once every replica is back in sync, by
        /// its preferred replica.
        #[test]
        fn reconcile_elects_only_from_the_isr_and_keeps_the_epochs_moving(
            brokers in proptest::collection::btree_set(1u64..10, 1..6),
            partitions in 1u32..30,
            rf_seed in 0u32..6,
            steps in proptest::collection::vec(step(), 0..24),
        ) {
            use BrokerStatus::{Alive, Fenced, ShuttingDown, StorageFailed};
            let ids: Vec<BrokerId> = brokers.iter().copied().collect();
            let mut image = image_with(&ids);
            let rf = rf_seed % ids.len() as u32 + 1;
            for (name, unclean) in [("clean", false), ("unclean", true)] {
                let assignments = assign_replicas(&image, &brokers, partitions, rf).unwrap();
                create(&mut image, name, unclean, assignments);
            }
            let mut status: BTreeMap<BrokerId, BrokerStatus> =
                ids.iter().map(|b| (*b, Alive)).collect();
            let mut index = 2000;
            for step in steps.into_iter().map(Some).chain([None]) {
                match step {
                    Some(Step::Flip(pick)) => {
                        let s = status.get_mut(&ids[pick % ids.len()]).unwrap();
                        *s = if s.is_up() { Fenced } else { Alive };
                    }
                    Some(Step::Shutdown(pick)) => {
                        let s = status.get_mut(&ids[pick % ids.len()]).unwrap();
                        if *s == Alive {
                            *s = ShuttingDown;
                        }
                    }
                    Some(Step::Storage(pick)) => {
                        let s = status.get_mut(&ids[pick % ids.len()]).unwrap();
                        *s = match *s {
                            Alive => StorageFailed,
                            StorageFailed => Alive,
                            other => other,
                        };
                    }
                    Some(Step::Alter { partition, mask }) => {
                        let topic = if partition % 2 == 0 { "clean" } else { "unclean" };
                        let number = (partition / 2) as u32 % partitions;
                        let replicas = &image.partition(topic, number).unwrap().replicas;
                        let isr: Vec<BrokerId> = replicas.iter().enumerate()
                            .filter(|(i, _)| mask & (1 << i) != 0)
                            .map(|(_, b)| *b)
                            .collect();
                        alter(&mut image, &mut index, topic, number, &isr, &status);
                    }
                    Some(Step::CatchUp) => {
                        for topic in ["clean", "unclean"] {
                            for number in 0..partitions {
                                let p = image.partition(topic, number).unwrap();
                                let isr: Vec<BrokerId> = p.replicas.iter().copied()
                                    .filter(|b| p.isr.contains(b) || status[b] == Alive)
                                    .collect();
                                alter(&mut image, &mut index, topic, number, &isr, &status);
                            }
                        }
                    }
                    None => status = ids.iter().map(|b| (*b, Alive)).collect(),
                }
                let before = image.clone();
                let changes = reconcile(&image, statuses(&status));
                apply_all(&mut image, &mut index, &changes);
                prop_assert!(reconcile(&image, statuses(&status)).is_empty());
                let s = statuses(&status);
                for (name, topic) in &image.topics {
                    let unclean = topic.unclean_leader_election();
                    for (number, (p, old)) in topic.partitions.iter()
                        .zip(&before.topics[name].partitions).enumerate()
                    {
                        let at = format!("{name}-{number}: {old:?} -> {p:?} with {status:?}");
                        prop_assert!(!p.isr.is_empty(), "{}", at);
                        prop_assert!(p.isr.iter().all(|b| p.replicas.contains(b)), "{}", at);
                        let any_eligible = p.isr.iter().any(|b| s(*b).is_eligible());
                        let any_up = p.isr.iter().any(|b| s(*b).is_up());
                        if any_eligible {
                            prop_assert!(p.isr.iter().all(|b| s(*b).is_eligible()), "{}", at);
                        } else if any_up {
                            prop_assert!(p.isr.iter().all(|b| s(*b).is_up()), "{}", at);
                        }
                        match p.leader {
                            Some(leader) => {
                                prop_assert!(p.isr.contains(&leader), "{}", at);
                                prop_assert!(s(leader).is_up(), "{}", at);
                                if !s(leader).is_eligible() {
                                    prop_assert!(!any_eligible, "{}", at);
                                }
                            }
                            None => {
                                prop_assert!(!any_eligible, "{}", at);
                                if unclean {
                                    prop_assert!(
                                        any_up || !p.replicas.iter().any(|b| s(*b).is_eligible()),
                                        "{}", at
                                    );
                                }
                            }
                        }
                        if let Some(&preferred) = p.replicas.first()
                            && s(preferred).is_eligible()
                            && p.isr.contains(&preferred)
                        {
                            prop_assert_eq!(p.leader, Some(preferred), "{}", at);
                        }
                        if p == old {
                            continue;
                        }
                        prop_assert_eq!(p.partition_epoch, old.partition_epoch + 1, "{}", at);
                        if p.leader == old.leader {
                            prop_assert_eq!(p.leader_epoch, old.leader_epoch, "{}", at);
                            prop_assert!(p.isr.iter().all(|b| old.isr.contains(b)), "{}", at);
                            continue;
                        }
                        prop_assert_eq!(p.leader_epoch, old.leader_epoch + 1, "{}", at);
                        let Some(leader) = p.leader else { continue };
                        prop_assert!(s(leader).is_eligible(), "{}", at);
                        if old.isr.contains(&leader) {
                            prop_assert!(p.isr.iter().all(|b| old.isr.contains(b)), "{}", at);
                        } else {
                            prop_assert!(unclean, "unclean election in a clean topic: {}", at);
                            prop_assert_eq!(&p.isr, &vec![leader], "{}", at);
                        }
                    }
                }
            }
            for topic in image.topics.values() {
                prop_assert!(topic.partitions.iter().all(|p| p.leader.is_some()));
            }
            // And once every replica has caught up, leadership is back where placement put it.
            for topic in ["clean", "unclean"] {
                for number in 0..partitions {
                    let replicas = image.partition(topic, number).unwrap().replicas.clone();
                    alter(&mut image, &mut index, topic, number, &replicas, &status);
                }
            }
            settle(&mut image, &mut index, &status);
            for topic in image.topics.values() {
                for p in &topic.partitions {
                    prop_assert_eq!(&p.isr, &p.replicas);
                    prop_assert_eq!(p.leader, p.replicas.first().copied());
                }
            }
        }
    }
}
