//! The controller protocol: what brokers' controllers say to each other over the controller
//! listener, and how it is framed.
//!
//! A frame is `length: u32 BE | JSON`. The length is checked against [`MAX_FRAME`] before
//! anything is allocated. Every request names the node it is for, so a misconfigured address is
//! refused ([`Response::WrongNode`]) instead of silently talking to the wrong controller (which
//! openraft forbids). A connection carries one request at a time, answered in order.
//!
//! Raft's own messages (append entries, vote, install snapshot) travel as openraft's serde
//! types; the rest ([`ControllerRequest`]) are the cluster's admin and liveness calls, which any
//! broker sends to the active controller.

use std::collections::BTreeMap;
use std::io;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::{BrokerId, Endpoints, Rejection, TopicId, TypeConfig};

/// The largest frame either side accepts: a snapshot chunk (3 MiB by default) or a batch of
/// log entries fits with room to spare.
pub const MAX_FRAME: usize = 64 << 20;

/// A request, addressed to one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The node the sender means to reach.
    pub to: BrokerId,
    /// What it asks.
    pub request: Request,
}

/// Everything a controller can be asked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Raft: replicate entries (also the heartbeat).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: ask for a vote.
    Vote(VoteRequest<BrokerId>),
    /// Raft: one chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker's call to the active controller.
    Controller(ControllerRequest),
}

/// Everything a controller answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Raft: the append's outcome.
    AppendEntries(Result<AppendEntriesResponse<BrokerId>, RaftError<BrokerId>>),
    /// Raft: the vote's outcome.
    Vote(Result<VoteResponse<BrokerId>, RaftError<BrokerId>>),
    /// Raft: the snapshot chunk's outcome.
    InstallSnapshot(
        Result<InstallSnapshotResponse<BrokerId>, RaftError<BrokerId, InstallSnapshotError>>,
    ),
    /// The answer to a [`ControllerRequest`].
    Controller(ControllerResponse),
    /// The request was for another node: this one is `actual`.
    WrongNode {
        /// This node's id.
        actual: BrokerId,
    },
}

/// A broker's call to the active controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ControllerRequest {
    /// A broker that is not a voter asks to follow the metadata log as a learner.
    Join {
        /// Its id.
        broker: BrokerId,
        /// Its controller listener.
        addr: String,
    },
    /// A broker process registers (once per start).
    Register {
        /// Its id.
        broker: BrokerId,
        /// A random id of this process start.
        #[serde(with = "crate::types::hex128")]
        incarnation: u128,
        /// Its client-facing addresses.
        endpoints: Endpoints,
        /// Its rack.
        rack: Option<String>,
    },
    /// A registered broker is alive.
    Heartbeat {
        /// Its id.
        broker: BrokerId,
        /// The epoch its registration was given.
        epoch: u64,
        /// A write to its storage failed (a full disk, an I/O error) and none has been shown
        /// to work since: it gives up its leaderships and leaves its ISRs until it clears.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        storage_failed: bool,
    },
    /// Creates a topic, placing its replicas over the live brokers.
    CreateTopic {
        /// The name.
        name: String,
        /// Partitions.
        partitions: u32,
        /// Replicas per partition; 0: the cluster's default, three, or every live broker when
        /// there are fewer. A factor of 3 or more gets `min.insync.replicas` 2 unless `configs`
        /// names it.
        replication_factor: u32,
        /// Settings.
        configs: BTreeMap<String, String>,
    },
    /// Records a topic that exists on `broker` from before it was part of a quorum (a data
    /// directory of an older strom), with its id and every partition on that broker.
    ImportTopic {
        /// The name.
        name: String,
        /// Its id.
        id: TopicId,
        /// Partitions.
        partitions: u32,
        /// Settings.
        configs: BTreeMap<String, String>,
        /// The broker that holds it.
        broker: BrokerId,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// The name.
        name: String,
    },
    /// Grows a topic to `total` partitions.
    CreatePartitions {
        /// The name.
        name: String,
        /// The partition count wanted.
        total: u32,
    },
    /// Sets (`Some`) or removes (`None`) topic settings.
    AlterTopicConfigs {
        /// The name.
        name: String,
        /// The changes.
        configs: BTreeMap<String, Option<String>>,
    },
    /// A block of producer ids for `broker`.
    AllocateProducerIds {
        /// The broker.
        broker: BrokerId,
        /// How many.
        count: u32,
    },
    /// The quorum's state as the active controller sees it.
    Status,
    /// A partition leader asks to change its ISR (Kafka's AlterPartition). Accepted only from the
    /// current leader's current process, in the current leader epoch, computed from the current
    /// partition epoch (a compare-and-set), for a valid ISR whose added members may join
    /// ([`crate::isr`]); answered with [`ControllerResponse::PartitionState`] once committed.
    AlterPartition {
        /// The leader.
        broker: BrokerId,
        /// Its broker epoch.
        broker_epoch: u64,
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The leader epoch it leads in.
        leader_epoch: u32,
        /// The partition epoch its new ISR was computed from.
        partition_epoch: u32,
        /// The ISR it wants.
        isr: Vec<BrokerId>,
        /// The broker epoch each follower it adds carried in its fetches (KIP-903): a follower
        /// that restarted since is refused. Optional, but a leader should always send them.
        /// A list rather than a map: serde cannot read integer map keys back through the
        /// tagged enum this request is part of.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replica_epochs: Vec<ReplicaEpoch>,
    },
    /// A broker asks to shut down cleanly (Kafka's ControlledShutdown): the controller moves its
    /// leaderships to other in-sync replicas, takes it out of ISRs that keep a live member without
    /// it, and never elects it or adds it to an ISR again until it registers anew. Answered with
    /// [`ControllerResponse::ShuttingDown`]; the broker asks again until it leads nothing.
    ControlledShutdown {
        /// The broker.
        broker: BrokerId,
        /// Its broker epoch.
        broker_epoch: u64,
    },
}

/// The broker epoch a leader saw in a follower's fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEpoch {
    /// The follower.
    pub broker: BrokerId,
    /// The broker epoch its fetches carried.
    pub epoch: u64,
}

/// The active controller's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ControllerResponse {
    /// Done; committed at this log index.
    Committed {
        /// The metadata log index of the entry that did it.
        index: u64,
    },
    /// Registered with this broker epoch.
    Registered {
        /// The broker epoch.
        epoch: u64,
        /// The log index of the registration.
        index: u64,
    },
    /// The heartbeat was taken.
    HeartbeatAck {
        /// False once the broker is unfenced.
        fenced: bool,
    },
    /// The broker must register again (its epoch is not its newest registration's).
    StaleEpoch,
    /// Producer ids `first .. first + count`.
    ProducerIds {
        /// The first id.
        first: i64,
        /// How many.
        count: u32,
    },
    /// The quorum's state.
    Status(ClusterStatus),
    /// A partition's state after an accepted AlterPartition, as committed (or as it already
    /// was, when the ISR asked for was the current one).
    PartitionState {
        /// The leader.
        leader: Option<BrokerId>,
        /// The leader epoch (an ISR change leaves it as it was).
        leader_epoch: u32,
        /// The partition epoch, for the leader's next change.
        partition_epoch: u32,
        /// The ISR, in the replicas' order.
        isr: Vec<BrokerId>,
    },
    /// The broker is in controlled shutdown and still leads this many partitions: those whose
    /// ISR has no other live member. At 0 it may exit; otherwise it asks again (a later
    /// reconciliation may have moved more), or exits anyway and those partitions go offline
    /// when its session ends.
    ShuttingDown {
        /// The partitions it still leads.
        leading: u32,
    },
    /// This node is not the active controller; the leader is this one, if known.
    NotController {
        /// The active controller's id and controller address, if known.
        leader: Option<(BrokerId, String)>,
    },
    /// The metadata refused the change.
    Rejected(Rejection),
    /// The request was not valid (a bad replication factor, say).
    Invalid {
        /// Why.
        message: String,
    },
    /// The controller could not do it now (no quorum, shutting down); retrying may help.
    Unavailable {
        /// Why.
        message: String,
    },
}

/// The quorum as the active controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The active controller.
    pub leader: BrokerId,
    /// Its Raft term.
    pub term: u64,
    /// The metadata log's committed index.
    pub committed: u64,
    /// Voters and learners with their controller addresses.
    pub members: Vec<Member>,
    /// Registered brokers.
    pub brokers: Vec<BrokerState>,
}

/// One member of the metadata quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: BrokerId,
    /// Its controller listener.
    pub addr: String,
    /// A voter (true) or a learner.
    pub voter: bool,
    /// The last log index the leader knows it holds (`None` if unknown).
    pub matched: Option<u64>,
}

/// One registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    /// Its id.
    pub id: BrokerId,
    /// Its broker epoch.
    pub epoch: u64,
    /// Its client-facing addresses.
    pub endpoints: Endpoints,
    /// Heartbeating within its session.
    pub alive: bool,
    /// In controlled shutdown.
    #[serde(default)]
    pub shutting_down: bool,
    /// Its storage failed: it leads nothing and joins no ISR until it clears.
    #[serde(default)]
    pub storage_failed: bool,
}

/// Writes one frame.
pub async fn write_frame<W, T>(writer: &mut W, value: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes is over the {MAX_FRAME}-byte limit",
                body.len()
            ),
        ));
    }
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub async fn read_frame<R, T>(reader: &mut R) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let request = Envelope {
            to: 3,
            request: Request::Controller(ControllerRequest::Heartbeat {
                broker: 1,
                epoch: 7,
                storage_failed: false,
            }),
        };
        write_frame(&mut a, &request).await.unwrap();
        let read: Envelope = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(read.to, 3);
        assert!(matches!(
            read.request,
            Request::Controller(ControllerRequest::Heartbeat {
                broker: 1,
                epoch: 7,
                storage_failed: false,
            })
        ));

        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, Envelope>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{}}}}").await.unwrap();
        assert!(
            read_frame::<_, Envelope>(&mut b).await.is_err(),
            "garbage is an error"
        );
        drop(a);
        assert!(
            read_frame::<_, Envelope>(&mut b).await.unwrap().is_none(),
            "clean end"
        );
    }

    /// The calls and answers of replication cross the wire between brokers: each must come
    /// back as it left.
    #[test]
    fn replication_calls_and_answers_round_trip_through_json() {
        let alter = |replica_epochs| ControllerRequest::AlterPartition {
            broker: 1,
            broker_epoch: 40,
            topic: "orders".into(),
            partition: 2,
            leader_epoch: 3,
            partition_epoch: 9,
            isr: vec![1, 3],
            replica_epochs,
        };
        for request in [
            alter(Vec::new()),
            alter(vec![
                ReplicaEpoch {
                    broker: 3,
                    epoch: 77,
                },
                ReplicaEpoch {
                    broker: u64::MAX,
                    epoch: u64::MAX,
                },
            ]),
            ControllerRequest::ControlledShutdown {
                broker: 2,
                broker_epoch: 12,
            },
        ] {
            let json = serde_json::to_vec(&request).unwrap();
            let back: ControllerRequest = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, request, "{}", String::from_utf8_lossy(&json));
        }
        for response in [
            ControllerResponse::PartitionState {
                leader: Some(1),
                leader_epoch: 3,
                partition_epoch: 10,
                isr: vec![1, 3],
            },
            ControllerResponse::PartitionState {
                leader: None,
                leader_epoch: 3,
                partition_epoch: 10,
                isr: vec![3],
            },
            ControllerResponse::ShuttingDown { leading: 0 },
            ControllerResponse::Rejected(Rejection::FencedLeaderEpoch {
                topic: "orders".into(),
                partition: 2,
                sent: 2,
                current: 3,
            }),
        ] {
            let json = serde_json::to_vec(&response).unwrap();
            let back: ControllerResponse = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, response, "{}", String::from_utf8_lossy(&json));
        }
    }
}
