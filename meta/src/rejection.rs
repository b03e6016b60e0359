//! Why a metadata command or a controller request changed nothing: [`Rejection`], the typed
//! answer every member gives the same way for a command the image cannot take, and the active
//! controller gives for a request it refuses before proposing anything. Each variant names the
//! Kafka error a broker answers its clients with.

use serde::{Deserialize, Serialize};

use crate::types::BrokerId;

/// Why applying a command changed nothing. The command is still in the log: every replica
/// rejects it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    /// A topic of that name exists.
    #[error("topic {name} already exists")]
    TopicExists {
        /// The name.
        name: String,
    },
    /// No topic of that name (or with that id) exists.
    #[error("topic {name} does not exist")]
    UnknownTopic {
        /// The name.
        name: String,
    },
    /// The partition number is past the topic's last partition.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// A replica list names no broker, a broker twice, or a broker that never registered.
    #[error("invalid assignment: {reason}")]
    InvalidAssignment {
        /// What is wrong.
        reason: String,
    },
    /// The partition changed since the proposer looked (compare-and-set failed).
    #[error(
        "partition {topic}-{partition} is at epoch {current}, the change was made at {expected}"
    )]
    StalePartitionEpoch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The epoch the proposer saw.
        expected: u32,
        /// The epoch the partition is at.
        current: u32,
    },
    /// The proposed leader is not one of the partition's in-sync replicas.
    #[error("broker {leader} is not in the ISR of {topic}-{partition}")]
    LeaderNotInIsr {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The proposed leader.
        leader: BrokerId,
    },
    /// A batch held another batch.
    #[error("a batch of metadata commands cannot hold another batch")]
    NestedBatch,
    /// The broker has not registered.
    #[error("broker {broker} is not registered")]
    UnknownBroker {
        /// The broker.
        broker: BrokerId,
    },
    /// The sender's leader epoch is not the partition's (Kafka's `FENCED_LEADER_EPOCH`): it was
    /// deposed, or acts on leadership it has not caught up with.
    #[error("leader epoch {sent} of {topic}-{partition} is not its current {current}")]
    FencedLeaderEpoch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The epoch the sender named.
        sent: u32,
        /// The partition's leader epoch.
        current: u32,
    },
    /// The broker does not lead the partition (Kafka's `NOT_LEADER_OR_FOLLOWER`).
    #[error("broker {broker} does not lead {topic}-{partition} (its leader: {leader:?})")]
    NotLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The broker that asked.
        broker: BrokerId,
        /// The partition's leader, `None` while it is offline.
        leader: Option<BrokerId>,
    },
    /// The broker epoch is not that of the broker's newest registration (Kafka's
    /// `STALE_BROKER_EPOCH`): the request comes from an older process of that broker, or from
    /// one that never registered.
    #[error("broker {broker} sent broker epoch {sent}, its registration has {current:?}")]
    StaleBrokerEpoch {
        /// The broker.
        broker: BrokerId,
        /// The epoch it sent.
        sent: u64,
        /// The epoch of its newest registration, `None` if it never registered.
        current: Option<u64>,
    },
    /// A proposed ISR is not a valid one: empty, a broker twice, a broker that is not a replica,
    /// or without the leader (Kafka answers `INVALID_REQUEST`).
    #[error("invalid ISR for {topic}-{partition}: {reason}")]
    InvalidIsr {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What is wrong.
        reason: String,
    },
    /// A replica the change would add to the ISR may not join it now (Kafka's
    /// `INELIGIBLE_REPLICA`).
    #[error("broker {broker} cannot join the ISR of {topic}-{partition}: {why}")]
    IneligibleReplica {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The replica.
        broker: BrokerId,
        /// Why not.
        why: Ineligible,
    },
    /// A topic setting the controller itself reads has a value it cannot take (Kafka's
    /// `INVALID_CONFIG`).
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidConfig {
        /// The setting.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a replica may not join an ISR (KRaft's rule, with KIP-903's broker epochs): only a
/// registered, unfenced broker that is not shutting down, and only the process whose fetches the
/// leader saw catch up. A broker that restarted since lost what it had not written to disk, so
/// the fetches of its previous process prove nothing about its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Ineligible {
    /// It never registered.
    #[error("it is not registered")]
    Unregistered,
    /// Its session ran out (or it has not heartbeated since it registered).
    #[error("it is fenced")]
    Fenced,
    /// It is in controlled shutdown.
    #[error("it is shutting down")]
    ShuttingDown,
    /// A write to its storage failed and none has been shown to work since.
    #[error("its storage failed")]
    StorageFailed,
    /// The leader saw the fetches of another process of that broker.
    #[error("the leader saw broker epoch {seen}, its registration has {current}")]
    StaleBrokerEpoch {
        /// The broker epoch the leader saw in its fetches.
        seen: u64,
        /// The epoch of its newest registration.
        current: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MetaResponse;

    /// Answers travel too: a broker learns why its change was refused from the decoded
    /// rejection, and a leader its partition's new state from the decoded response.
    #[test]
    fn every_rejection_and_answer_round_trips_through_json() {
        let t = || "t".to_string();
        let rejections = vec![
            Rejection::StalePartitionEpoch {
                topic: t(),
                partition: 1,
                expected: 2,
                current: 3,
            },
            Rejection::FencedLeaderEpoch {
                topic: t(),
                partition: 1,
                sent: 4,
                current: 5,
            },
            Rejection::NotLeader {
                topic: t(),
                partition: 0,
                broker: 2,
                leader: None,
            },
            Rejection::NotLeader {
                topic: t(),
                partition: 0,
                broker: 2,
                leader: Some(1),
            },
            Rejection::StaleBrokerEpoch {
                broker: 1,
                sent: 9,
                current: None,
            },
            Rejection::StaleBrokerEpoch {
                broker: 1,
                sent: 9,
                current: Some(12),
            },
            Rejection::InvalidIsr {
                topic: t(),
                partition: 0,
                reason: "empty".into(),
            },
            Rejection::InvalidConfig {
                key: "min.insync.replicas".into(),
                value: "0".into(),
                reason: "at least 1".into(),
            },
        ]
        .into_iter()
        .chain(
            [
                Ineligible::Unregistered,
                Ineligible::Fenced,
                Ineligible::ShuttingDown,
                Ineligible::StaleBrokerEpoch {
                    seen: 3,
                    current: 8,
                },
            ]
            .map(|why| Rejection::IneligibleReplica {
                topic: t(),
                partition: 2,
                broker: 3,
                why,
            }),
        );
        let mut responses: Vec<MetaResponse> = rejections.map(MetaResponse::Rejected).collect();
        responses.push(MetaResponse::PartitionChanged {
            leader_epoch: 3,
            partition_epoch: 7,
            leader: None,
            isr: vec![2],
        });
        responses.push(MetaResponse::PartitionChanged {
            leader_epoch: 3,
            partition_epoch: 7,
            leader: Some(2),
            isr: vec![2, 1],
        });
        for response in responses {
            let json = serde_json::to_vec(&response).unwrap();
            let back: MetaResponse = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, response, "{}", String::from_utf8_lossy(&json));
        }
    }
}
