//! The metadata log's vocabulary: the Raft type configuration, the commands a controller
//! proposes (KRaft's records, in serde form) and what applying one answers.
//!
//! Commands carry every decision already made (topic ids, replica placement, the new leader):
//! applying a command is deterministic and checks only what the image itself can decide (does the
//! topic exist, is the partition epoch the one the proposer saw). The controller makes the
//! decisions with the pure functions of [`crate::placement`] before it proposes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use crate::rejection::{Ineligible, Rejection};

/// A broker's id, which is also its Raft node id (Kafka's `node.id`).
pub type BrokerId = u64;

openraft::declare_raft_types!(
    /// strom's metadata quorum types.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = BrokerId,
        Node = ControllerNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Where a member of the metadata quorum listens for Raft traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerNode {
    /// `HOST:PORT` of the broker's controller listener.
    pub addr: String,
}

impl fmt::Display for ControllerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// The client-facing addresses a broker advertises, one per listener it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// `HOST:PORT` of the native protocol listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
    /// `HOST:PORT` of the Kafka protocol listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<String>,
    /// `HOST:PORT` of the HTTP listener (metrics, API, console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// A topic's cluster-wide id (Kafka's topic UUID), chosen by the controller that created it.
/// Stored as 32 hex digits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TopicId(#[serde(with = "hex128")] pub u128);

/// 128-bit ids as 32 hex digits: serde cannot carry a `u128` through an internally tagged enum
/// (the form the log's commands take), and a string reads well in a dump.
pub mod hex128 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `value` as 32 hex digits.
    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:032x}"))
    }

    /// Reads 1 to 32 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.is_empty() || text.len() > 32 {
            return Err(serde::de::Error::custom(format!(
                "{text:?} is not a 128-bit hex id"
            )));
        }
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

impl TopicId {
    /// The id as the 16 bytes Kafka's protocol carries.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One partition's replicas in preferred order, the first being the preferred leader.
pub type Assignment = Vec<BrokerId>;

/// One entry of the metadata log (Kafka's metadata records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetaCommand {
    /// A broker process announces itself (KRaft's `RegisterBrokerRecord`). Its broker epoch is
    /// the log index of this entry, so every restart gets a larger one.
    RegisterBroker {
        /// The broker's id.
        broker: BrokerId,
        /// A random id per process start: a registration from the same incarnation is a retry.
        #[serde(with = "hex128")]
        incarnation: u128,
        /// Its client-facing addresses.
        endpoints: Endpoints,
        /// Its rack, when the operator set one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rack: Option<String>,
    },
    /// A topic and all its partitions (`TopicRecord` + `PartitionRecord`s). The first replica
    /// of each partition leads.
    CreateTopic {
        /// The topic's name.
        name: String,
        /// Its id.
        id: TopicId,
        /// Per-topic settings (Kafka's names, such as `retention.ms`).
        configs: BTreeMap<String, String>,
        /// One assignment per partition, in partition order.
        assignments: Vec<Assignment>,
    },
    /// Removes a topic (`RemoveTopicRecord`).
    DeleteTopic {
        /// The topic's name.
        name: String,
        /// The id the proposer saw: a topic re-created since is left alone.
        id: TopicId,
    },
    /// Adds partitions to a topic, numbered after the existing ones.
    CreatePartitions {
        /// The topic's name.
        name: String,
        /// One assignment per new partition.
        assignments: Vec<Assignment>,
    },
    /// Sets (`Some`) or removes (`None`) topic settings (`ConfigRecord`).
    AlterTopicConfigs {
        /// The topic's name.
        name: String,
        /// The settings to change.
        configs: BTreeMap<String, Option<String>>,
    },
    /// Changes one partition's leader or ISR (`PartitionChangeRecord`), applied only if the
    /// partition epoch is still the one the proposer saw.
    ChangePartition {
        /// The topic's name.
        topic: String,
        /// The partition.
        partition: u32,
        /// The partition epoch the change was computed from.
        partition_epoch: u32,
        /// What happens to the leader.
        #[serde(default, skip_serializing_if = "LeaderChange::is_unchanged")]
        leader: LeaderChange,
        /// The new ISR, or `None` to keep it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        isr: Option<Vec<BrokerId>>,
    },
    /// Hands a broker the next block of producer ids (`ProducerIdsRecord`), so idempotent
    /// producers get ids unique across the cluster.
    AllocateProducerIds {
        /// The broker asking.
        broker: BrokerId,
        /// How many ids it wants.
        count: u32,
    },
    /// Several commands applied in order as one entry (a reconciliation that moves many
    /// partitions at once). Each is answered on its own; a batch inside a batch is rejected.
    Batch {
        /// The commands.
        commands: Vec<MetaCommand>,
    },
    /// Changes nothing (a liveness probe of the quorum).
    NoOp,
}

/// A partition change's effect on the leader. An enum, not `Option<Option<_>>`: serde reads
/// a `null` back as "absent", so "no leader" would replay as "unchanged" on a member that
/// received the entry over the wire (a test below round-trips every command).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderChange {
    /// The leader stays.
    #[default]
    Unchanged,
    /// This broker leads.
    Elect(BrokerId),
    /// No leader: the partition is offline.
    Offline,
}

impl LeaderChange {
    /// True for [`LeaderChange::Unchanged`].
    pub fn is_unchanged(&self) -> bool {
        *self == LeaderChange::Unchanged
    }

    /// The leader after the change, given the one before.
    pub fn apply(self, before: Option<BrokerId>) -> Option<BrokerId> {
        match self {
            LeaderChange::Unchanged => before,
            LeaderChange::Elect(broker) => Some(broker),
            LeaderChange::Offline => None,
        }
    }

    /// The change that makes `before` into `after`.
    pub fn between(before: Option<BrokerId>, after: Option<BrokerId>) -> Self {
        match after {
            _ if before == after => LeaderChange::Unchanged,
            Some(broker) => LeaderChange::Elect(broker),
            None => LeaderChange::Offline,
        }
    }
}

/// What applying one command answers to whoever proposed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetaResponse {
    /// Applied; nothing more to say (also the answer to Raft's own entries).
    #[default]
    Done,
    /// The broker is registered with this epoch.
    Registered {
        /// The broker epoch (the log index of the registration that counts).
        broker_epoch: u64,
    },
    /// The partition change was applied; this is the partition's state after it.
    PartitionChanged {
        /// The leader epoch after the change.
        leader_epoch: u32,
        /// The partition epoch after the change.
        partition_epoch: u32,
        /// The leader after the change.
        #[serde(default)]
        leader: Option<BrokerId>,
        /// The ISR after the change.
        #[serde(default)]
        isr: Vec<BrokerId>,
    },
    /// The broker owns producer ids `first .. first + count`.
    ProducerIds {
        /// The first id of the block.
        first: i64,
        /// How many ids.
        count: u32,
    },
    /// The answers to a [`MetaCommand::Batch`], in order.
    Batch {
        /// One answer per command.
        responses: Vec<MetaResponse>,
    },
    /// Nothing changed, for this reason.
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member must apply exactly the command the leader applied, and members that got an
    /// entry over the wire or from disk apply the deserialized one: every command must survive
    /// the round trip unchanged.
    #[test]
    fn every_command_round_trips_through_json() {
        let change = |leader, isr| MetaCommand::ChangePartition {
            topic: "t".into(),
            partition: 1,
            partition_epoch: 4,
            leader,
            isr,
        };
        let commands = vec![
            MetaCommand::RegisterBroker {
                broker: 3,
                incarnation: u128::MAX - 5,
                endpoints: Endpoints {
                    native: Some("127.0.0.1:9494".into()),
                    kafka: None,
                    http: Some("127.0.0.1:9644".into()),
                },
                rack: Some("r1".into()),
            },
            MetaCommand::CreateTopic {
                name: "orders".into(),
                id: TopicId(u128::MAX),
                configs: BTreeMap::from([("retention.ms".into(), "1".into())]),
                assignments: vec![vec![1, 2], vec![2, 3]],
            },
            MetaCommand::DeleteTopic {
                name: "orders".into(),
                id: TopicId(7),
            },
            MetaCommand::CreatePartitions {
                name: "orders".into(),
                assignments: vec![vec![3]],
            },
            MetaCommand::AlterTopicConfigs {
                name: "orders".into(),
                configs: BTreeMap::from([("a".into(), Some("1".into())), ("b".into(), None)]),
            },
            change(LeaderChange::Unchanged, None),
            change(LeaderChange::Offline, None),
            change(LeaderChange::Elect(2), Some(vec![2, 3])),
            change(LeaderChange::Unchanged, Some(vec![])),
            // An ISR change a leader asked for (AlterPartition), and an unclean election.
            change(LeaderChange::Unchanged, Some(vec![1, 3])),
            change(LeaderChange::Elect(3), Some(vec![3])),
            MetaCommand::CreateTopic {
                name: "replicated".into(),
                id: TopicId(1),
                configs: BTreeMap::from([
                    ("min.insync.replicas".into(), "2".into()),
                    ("unclean.leader.election.enable".into(), "true".into()),
                ]),
                assignments: vec![vec![1, 2, 3]],
            },
            MetaCommand::AlterTopicConfigs {
                name: "replicated".into(),
                configs: BTreeMap::from([
                    ("min.insync.replicas".into(), None),
                    (
                        "unclean.leader.election.enable".into(),
                        Some("false".into()),
                    ),
                ]),
            },
            MetaCommand::AllocateProducerIds {
                broker: 1,
                count: 1000,
            },
            MetaCommand::NoOp,
        ];
        let batch = MetaCommand::Batch {
            commands: commands.clone(),
        };
        for command in commands.into_iter().chain([batch]) {
            let json = serde_json::to_vec(&command).unwrap();
            let back: MetaCommand = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, command, "{}", String::from_utf8_lossy(&json));
        }
    }
}
