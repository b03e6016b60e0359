//! The metadata image: the cluster's state as of one point of the metadata log (registered
//! brokers, topics with their settings and partitions, the producer-id counter), and the one
//! function that moves it forward, [`MetadataImage::apply`].
//!
//! Applying is deterministic and never fails: a command the image cannot take (a topic that
//! exists, a stale partition epoch) is answered with a [`Rejection`] and changes nothing, the same
//! way on every replica. Every broker serves Metadata from its copy of the image; the state
//! machine snapshots it whole.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::topic_config;
use crate::types::{
    Assignment, BrokerId, Endpoints, LeaderChange, MetaCommand, MetaResponse, Rejection, TopicId,
};

/// The first producer id the cluster hands out. Ids below it are left to single-node data
/// directories formatted before the cluster existed, whose producers kept their own counter.
pub const FIRST_PRODUCER_ID: i64 = 1 << 32;

/// The most producer ids one allocation may take.
pub const MAX_PRODUCER_ID_BLOCK: u32 = 1 << 20;

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// The random id of the process that registered.
    #[serde(with = "crate::types::hex128")]
    pub incarnation: u128,
    /// The log index of its registration: larger for every restart.
    pub epoch: u64,
    /// Its client-facing addresses.
    pub endpoints: Endpoints,
    /// Its rack, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// One partition's replicas, leader and epochs (KRaft's `PartitionRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    /// All replicas, preferred leader first.
    pub replicas: Assignment,
    /// The in-sync replicas.
    pub isr: Vec<BrokerId>,
    /// The leader, or `None` while the partition is offline.
    pub leader: Option<BrokerId>,
    /// Bumped whenever the leader changes.
    pub leader_epoch: u32,
    /// Bumped whenever anything about the partition changes.
    pub partition_epoch: u32,
}

impl PartitionImage {
    /// A new partition: its first replica leads and every replica is in sync, since all of them
    /// hold the same thing, nothing (Kafka starts a partition the same way). From then on the
    /// ISR changes only through the leader's AlterPartition ([`crate::isr`]) and the
    /// controller's reconciliation ([`crate::election`]).
    fn new(replicas: Assignment) -> Self {
        Self {
            isr: replicas.clone(),
            leader: replicas.first().copied(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
        }
    }
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    /// Its cluster-wide id.
    pub id: TopicId,
    /// Its settings.
    pub configs: BTreeMap<String, String>,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionImage>,
}

impl TopicImage {
    /// The topic's `min.insync.replicas` ([`topic_config::MIN_INSYNC_REPLICAS`]), 1 unless it
    /// sets one. It may be larger than the replication factor (see [`topic_config::check`]).
    pub fn min_insync_replicas(&self) -> usize {
        self.configs
            .get(topic_config::MIN_INSYNC_REPLICAS)
            .and_then(|value| topic_config::parse_min_insync_replicas(value).ok())
            .unwrap_or(topic_config::DEFAULT_MIN_INSYNC_REPLICAS)
    }

    /// Whether the topic allows unclean leader elections
    /// ([`topic_config::UNCLEAN_LEADER_ELECTION`]), false unless it says so.
    pub fn unclean_leader_election(&self) -> bool {
        self.configs
            .get(topic_config::UNCLEAN_LEADER_ELECTION)
            .and_then(|value| topic_config::parse_bool(value).ok())
            .unwrap_or(topic_config::DEFAULT_UNCLEAN_LEADER_ELECTION)
    }
}

/// The whole of the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Registered brokers by id.
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicImage>,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
}

impl Default for MetadataImage {
    fn default() -> Self {
        Self {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_producer_id: FIRST_PRODUCER_ID,
        }
    }
}

impl MetadataImage {
    /// Applies the command at log `index` and says what happened.
    pub fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaResponse {
        match self.try_apply(index, command) {
            Ok(response) => response,
            Err(rejection) => {
                tracing::debug!(index, %rejection, "metadata command rejected");
                MetaResponse::Rejected(rejection)
            }
        }
    }

    fn try_apply(&mut self, index: u64, command: &MetaCommand) -> Result<MetaResponse, Rejection> {
        match command {
            MetaCommand::RegisterBroker {
                broker,
                incarnation,
                endpoints,
                rack,
            } => Ok(self.register(index, *broker, *incarnation, endpoints, rack)),
            MetaCommand::CreateTopic {
                name,
                id,
                configs,
                assignments,
            } => {
                if self.topics.contains_key(name) {
                    return Err(Rejection::TopicExists { name: name.clone() });
                }
                self.check_assignments(assignments)?;
                let partitions = assignments
                    .iter()
                    .cloned()
                    .map(PartitionImage::new)
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        id: *id,
                        configs: configs.clone(),
                        partitions,
                    },
                );
                Ok(MetaResponse::Done)
            }
            MetaCommand::DeleteTopic { name, id } => match self.topics.get(name) {
                Some(topic) if topic.id == *id => {
                    self.topics.remove(name);
                    Ok(MetaResponse::Done)
                }
                _ => Err(Rejection::UnknownTopic { name: name.clone() }),
            },
            MetaCommand::CreatePartitions { name, assignments } => {
                self.check_assignments(assignments)?;
                let topic = self.topic_mut(name)?;
                topic
                    .partitions
                    .extend(assignments.iter().cloned().map(PartitionImage::new));
                Ok(MetaResponse::Done)
            }
            MetaCommand::AlterTopicConfigs { name, configs } => {
                let topic = self.topic_mut(name)?;
                for (key, value) in configs {
                    match value {
                        Some(value) => topic.configs.insert(key.clone(), value.clone()),
                        None => topic.configs.remove(key),
                    };
                }
                Ok(MetaResponse::Done)
            }
            MetaCommand::ChangePartition {
                topic,
                partition,
                partition_epoch,
                leader,
                isr,
            } => {
                self.change_partition(topic, *partition, *partition_epoch, *leader, isr.as_deref())
            }
            MetaCommand::AllocateProducerIds { broker, count } => {
                if !self.brokers.contains_key(broker) {
                    return Err(Rejection::UnknownBroker { broker: *broker });
                }
                let count = (*count).clamp(1, MAX_PRODUCER_ID_BLOCK);
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add(i64::from(count));
                Ok(MetaResponse::ProducerIds { first, count })
            }
            MetaCommand::Batch { commands } => {
                let mut responses = Vec::with_capacity(commands.len());
                for command in commands {
                    responses.push(match command {
                        MetaCommand::Batch { .. } => MetaResponse::Rejected(Rejection::NestedBatch),
                        command => self.apply(index, command),
                    });
                }
                Ok(MetaResponse::Batch { responses })
            }
            MetaCommand::NoOp => Ok(MetaResponse::Done),
        }
    }

    fn register(
        &mut self,
        index: u64,
        broker: BrokerId,
        incarnation: u128,
        endpoints: &Endpoints,
        rack: &Option<String>,
    ) -> MetaResponse {
        if let Some(existing) = self.brokers.get_mut(&broker)
            && existing.incarnation == incarnation
        {
            // A retry from the same process: keep its epoch, take the newest addresses.
            existing.endpoints = endpoints.clone();
            existing.rack = rack.clone();
            return MetaResponse::Registered {
                broker_epoch: existing.epoch,
            };
        }
        let restarted = self
            .brokers
            .insert(
                broker,
                BrokerRegistration {
                    incarnation,
                    epoch: index,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                },
            )
            .is_some();
        if restarted {
            // A new process of a broker that led partitions: whatever it leads it leads in a
            // new leader epoch, decided here by the log itself (the liveness table may see the
            // old session fenced and the new one unfenced between two reconciliations, which
            // then change nothing). Its log may have lost an unflushed tail that followers
            // hold: batches it writes now must not share an epoch with what it wrote before.
            for topic in self.topics.values_mut() {
                for p in &mut topic.partitions {
                    if p.leader == Some(broker) {
                        p.leader_epoch = p.leader_epoch.saturating_add(1);
                        p.partition_epoch = p.partition_epoch.saturating_add(1);
                    }
                }
            }
        }
        MetaResponse::Registered {
            broker_epoch: index,
        }
    }

    fn change_partition(
        &mut self,
        topic_name: &str,
        partition: u32,
        expected: u32,
        leader: LeaderChange,
        isr: Option<&[BrokerId]>,
    ) -> Result<MetaResponse, Rejection> {
        let registered: BTreeSet<BrokerId> = self.brokers.keys().copied().collect();
        let topic = self.topic_mut(topic_name)?;
        let image = topic
            .partitions
            .get_mut(partition as usize)
            .ok_or_else(|| Rejection::UnknownPartition {
                topic: topic_name.to_owned(),
                partition,
            })?;
        if image.partition_epoch != expected {
            return Err(Rejection::StalePartitionEpoch {
                topic: topic_name.to_owned(),
                partition,
                expected,
                current: image.partition_epoch,
            });
        }
        let new_isr = match isr {
            Some(isr) => {
                let mut seen = BTreeSet::new();
                for broker in isr {
                    if !image.replicas.contains(broker) || !seen.insert(*broker) {
                        return Err(Rejection::InvalidAssignment {
                            reason: format!(
                                "ISR {isr:?} is not a set of replicas {:?}",
                                image.replicas
                            ),
                        });
                    }
                    if !registered.contains(broker) {
                        return Err(Rejection::UnknownBroker { broker: *broker });
                    }
                }
                isr.to_vec()
            }
            None => image.isr.clone(),
        };
        let new_leader = leader.apply(image.leader);
        if let Some(new_leader) = new_leader
            && !new_isr.contains(&new_leader)
        {
            return Err(Rejection::LeaderNotInIsr {
                topic: topic_name.to_owned(),
                partition,
                leader: new_leader,
            });
        }
        if new_leader != image.leader {
            image.leader_epoch = image.leader_epoch.saturating_add(1);
        }
        image.leader = new_leader;
        image.isr = new_isr;
        image.partition_epoch = image.partition_epoch.saturating_add(1);
        Ok(MetaResponse::PartitionChanged {
            leader_epoch: image.leader_epoch,
            partition_epoch: image.partition_epoch,
            leader: image.leader,
            isr: image.isr.clone(),
        })
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut TopicImage, Rejection> {
        self.topics
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownTopic {
                name: name.to_owned(),
            })
    }

    /// Every replica list names registered brokers, at least one, none twice.
    fn check_assignments(&self, assignments: &[Assignment]) -> Result<(), Rejection> {
        for (partition, replicas) in assignments.iter().enumerate() {
            if replicas.is_empty() {
                return Err(Rejection::InvalidAssignment {
                    reason: format!("partition {partition} has no replicas"),
                });
            }
            let mut seen = BTreeSet::new();
            for broker in replicas {
                if !seen.insert(*broker) {
                    return Err(Rejection::InvalidAssignment {
                        reason: format!("partition {partition} names broker {broker} twice"),
                    });
                }
                if !self.brokers.contains_key(broker) {
                    return Err(Rejection::UnknownBroker { broker: *broker });
                }
            }
        }
        Ok(())
    }

    /// Whether `epoch` is the broker epoch of `broker`'s newest registration: requests that act
    /// for a broker process (AlterPartition, ControlledShutdown) carry it, so an older process of
    /// the same broker is refused (Kafka's KIP-380).
    pub fn check_broker_epoch(&self, broker: BrokerId, epoch: u64) -> Result<(), Rejection> {
        match self.brokers.get(&broker) {
            Some(registration) if registration.epoch == epoch => Ok(()),
            registration => Err(Rejection::StaleBrokerEpoch {
                broker,
                sent: epoch,
                current: registration.map(|r| r.epoch),
            }),
        }
    }

    /// The partition, if the topic and partition exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionImage> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// How many partitions each registered broker leads.
    pub fn leader_counts(&self) -> BTreeMap<BrokerId, usize> {
        let mut counts: BTreeMap<BrokerId, usize> = self.brokers.keys().map(|b| (*b, 0)).collect();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            if let Some(leader) = partition.leader {
                *counts.entry(leader).or_default() += 1;
            }
        }
        counts
    }

    /// How many replicas each registered broker holds.
    pub fn replica_counts(&self) -> BTreeMap<BrokerId, usize> {
        let mut counts: BTreeMap<BrokerId, usize> = self.brokers.keys().map(|b| (*b, 0)).collect();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            for replica in &partition.replicas {
                *counts.entry(*replica).or_default() += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(brokers: &[BrokerId]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for broker in brokers {
            image.apply(
                *broker * 10,
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

    #[test]
    fn a_new_partition_has_every_replica_in_sync_and_the_first_leading() {
        let mut image = registered(&[1, 2, 3]);
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            id: TopicId(1),
            configs: BTreeMap::new(),
            assignments: vec![vec![2, 3, 1], vec![3]],
        };
        assert_eq!(image.apply(100, &create), MetaResponse::Done);
        let grow = MetaCommand::CreatePartitions {
            name: "t".into(),
            assignments: vec![vec![1, 2]],
        };
        assert_eq!(image.apply(101, &grow), MetaResponse::Done);
        let partitions = &image.topics["t"].partitions;
        let state: Vec<_> = partitions
            .iter()
            .map(|p| (p.leader, p.isr.clone(), p.leader_epoch, p.partition_epoch))
            .collect();
        assert_eq!(
            state,
            vec![
                (Some(2), vec![2, 3, 1], 0, 0),
                (Some(3), vec![3], 0, 0),
                (Some(1), vec![1, 2], 0, 0),
            ]
        );
    }

    #[test]
    fn a_restarted_broker_leads_in_a_new_epoch() {
        let mut image = registered(&[1, 2]);
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            id: TopicId(1),
            configs: BTreeMap::new(),
            assignments: vec![vec![1, 2], vec![2, 1]],
        };
        image.apply(100, &create);
        let epochs = |image: &MetadataImage| -> Vec<(u32, u32)> {
            image.topics["t"]
                .partitions
                .iter()
                .map(|p| (p.leader_epoch, p.partition_epoch))
                .collect()
        };
        let register = |incarnation| MetaCommand::RegisterBroker {
            broker: 1,
            incarnation,
            endpoints: Endpoints::default(),
            rack: None,
        };
        // A retry of the same process changes nothing.
        image.apply(101, &register(1));
        assert_eq!(epochs(&image), [(0, 0), (0, 0)]);
        // A new process: the partition it leads gets a new epoch, the other does not.
        assert_eq!(
            image.apply(102, &register(99)),
            MetaResponse::Registered { broker_epoch: 102 }
        );
        assert_eq!(epochs(&image), [(1, 1), (0, 0)]);
        assert_eq!(image.topics["t"].partitions[0].leader, Some(1));
    }

    #[test]
    fn topic_settings_read_with_defaults() {
        let mut topic = TopicImage {
            id: TopicId(1),
            configs: BTreeMap::new(),
            partitions: Vec::new(),
        };
        assert_eq!(topic.min_insync_replicas(), 1);
        assert!(!topic.unclean_leader_election());
        topic
            .configs
            .insert(topic_config::MIN_INSYNC_REPLICAS.into(), "3".into());
        topic
            .configs
            .insert(topic_config::UNCLEAN_LEADER_ELECTION.into(), "True".into());
        assert_eq!(topic.min_insync_replicas(), 3);
        assert!(topic.unclean_leader_election());
        // Only a log from before validation can hold these; they read as the defaults.
        topic
            .configs
            .insert(topic_config::MIN_INSYNC_REPLICAS.into(), "0".into());
        topic
            .configs
            .insert(topic_config::UNCLEAN_LEADER_ELECTION.into(), "maybe".into());
        assert_eq!(topic.min_insync_replicas(), 1);
        assert!(!topic.unclean_leader_election());
    }

    #[test]
    fn only_the_newest_registration_s_epoch_is_current() {
        let mut image = registered(&[1]);
        assert_eq!(image.check_broker_epoch(1, 10), Ok(()));
        image.apply(
            50,
            &MetaCommand::RegisterBroker {
                broker: 1,
                incarnation: 99,
                endpoints: Endpoints::default(),
                rack: None,
            },
        );
        assert_eq!(
            image.check_broker_epoch(1, 10),
            Err(Rejection::StaleBrokerEpoch {
                broker: 1,
                sent: 10,
                current: Some(50)
            })
        );
        assert_eq!(image.check_broker_epoch(1, 50), Ok(()));
        assert_eq!(
            image.check_broker_epoch(2, 50),
            Err(Rejection::StaleBrokerEpoch {
                broker: 2,
                sent: 50,
                current: None
            })
        );
    }
}
