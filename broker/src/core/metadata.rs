//! Where things are, as every listener's Metadata answers it and as produce and fetch check it:
//! topics and their partitions with leader, replicas and ISR from the metadata image, the
//! brokers with their addresses, the active controller, and each group's coordinator (the
//! leader of its `__consumer_offsets` partition, found by the group coordinator's leadership module). Internal topics the
//! image does not hold (`__queue_state`) are local to each broker and led by it;
//! `__consumer_offsets` is in the image like any topic.
//!
//! [`Core::leader_partition`] is the one check produce and fetch make: a partition this broker
//! leads is served from its local log; one led elsewhere is `NOT_LEADER_OR_FOLLOWER` (the client
//! refreshes metadata and goes to the leader); one without a leader is `LEADER_NOT_AVAILABLE`.

use std::sync::Arc;

use strom_meta::image::MetadataImage;
use strom_meta::types::Endpoints;
use strom_protocol::ErrorCode;
use strom_protocol::topic::{is_internal_topic, validate_topic_name};

use super::partition::Partition;
use super::topics::{Topic, TopicId};
use super::{Core, Failure};

/// One partition as Metadata describes it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionView {
    pub index: i32,
    /// The leader's broker id, -1 when the partition has none.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The local log, when this broker hosts the partition.
    pub local: Option<Arc<Partition>>,
}

/// One topic as Metadata describes it.
#[derive(Debug, Clone)]
pub(crate) struct TopicView {
    pub id: TopicId,
    pub internal: bool,
    pub partitions: Vec<PartitionView>,
}

/// One registered broker.
#[derive(Debug, Clone)]
pub(crate) struct BrokerView {
    pub id: i32,
    pub endpoints: Endpoints,
    pub rack: Option<String>,
}

/// `HOST:PORT` split, for the protocols' separate fields.
pub(crate) fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// A broker id as the protocols' `int32` carries it.
pub(crate) fn broker_id(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

impl Core {
    /// The metadata image this broker's topic registry has caught up with (a change is
    /// answered from once the broker has opened what it places here).
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.cluster.published()
    }

    /// This broker's id.
    pub(crate) fn broker_id(&self) -> i32 {
        broker_id(self.cluster.id())
    }

    /// The active controller's id, -1 while there is none.
    pub(crate) fn controller_id(&self) -> i32 {
        self.cluster.leader().map_or(-1, broker_id)
    }

    /// The registered brokers, in id order.
    pub(crate) fn brokers(&self) -> Vec<BrokerView> {
        self.image()
            .brokers
            .iter()
            .map(|(id, registration)| BrokerView {
                id: broker_id(*id),
                endpoints: registration.endpoints.clone(),
                rack: registration.rack.clone(),
            })
            .collect()
    }

    /// Every topic's name, sorted: the image's and this broker's internal ones.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.image().topics.keys().cloned().collect();
        names.extend(
            self.topics
                .all()
                .into_iter()
                .filter(|t| is_internal_topic(&t.name))
                .map(|t| t.name.to_string()),
        );
        names.sort();
        names.dedup();
        names
    }

    /// The name of the topic with id `id`, if one has it.
    pub(crate) fn topic_name_by_id(&self, id: &TopicId) -> Option<String> {
        let image = self.image();
        image
            .topics
            .iter()
            .find(|(_, t)| t.id.to_bytes() == *id)
            .map(|(name, _)| name.clone())
            .or_else(|| self.topics.get_by_id(id).map(|t| t.name.to_string()))
    }

    /// A topic as Metadata describes it, or the error Metadata reports for the name.
    pub(crate) fn topic_view(&self, name: &str) -> Result<TopicView, ErrorCode> {
        let local = self.topics.get(name);
        let image = self.image();
        match (is_internal_topic(name), image.topics.get(name), local) {
            (internal, Some(topic), local) => Ok(TopicView {
                id: topic.id.to_bytes(),
                internal,
                partitions: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(index, p)| {
                        let index = i32::try_from(index).unwrap_or(i32::MAX);
                        PartitionView {
                            index,
                            leader: p.leader.map_or(-1, broker_id),
                            leader_epoch: i32::try_from(p.leader_epoch).unwrap_or(i32::MAX),
                            replicas: p.replicas.iter().copied().map(broker_id).collect(),
                            isr: p.isr.iter().copied().map(broker_id).collect(),
                            local: local.as_ref().and_then(|t| t.partition(index)).cloned(),
                        }
                    })
                    .collect(),
            }),
            (true, _, Some(topic)) => Ok(self.local_view(&topic)),
            _ if validate_topic_name(name).is_err() => Err(ErrorCode::InvalidTopicName),
            _ => Err(ErrorCode::UnknownTopicOrPartition),
        }
    }

    /// A topic only this broker holds (an internal one): it leads every partition.
    fn local_view(&self, topic: &Topic) -> TopicView {
        let me = self.broker_id();
        TopicView {
            id: topic.id,
            internal: true,
            partitions: topic
                .partitions
                .iter()
                .map(|p| PartitionView {
                    index: p.index,
                    leader: me,
                    leader_epoch: 0,
                    replicas: vec![me],
                    isr: vec![me],
                    local: Some(p.clone()),
                })
                .collect(),
        }
    }

    /// The local log of a partition this broker leads, checked against `image`; `local` is the
    /// broker's registry entry for the topic, if any.
    pub(crate) fn leader_partition(
        &self,
        image: &MetadataImage,
        local: Option<&Arc<Topic>>,
        name: &str,
        index: i32,
    ) -> Result<Arc<Partition>, Failure> {
        let unknown = || {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no partition {index} of topic {name}"),
            )
        };
        if is_internal_topic(name) && !image.topics.contains_key(name) {
            return local
                .and_then(|t| t.partition(index))
                .cloned()
                .ok_or_else(unknown);
        }
        let placed = image
            .topics
            .get(name)
            .and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
            .ok_or_else(unknown)?;
        match placed.leader {
            Some(leader) if leader == self.cluster.id() => local
                .and_then(|t| t.partition(index))
                .cloned()
                .ok_or_else(|| {
                    (
                        ErrorCode::LeaderNotAvailable,
                        format!("{name}-{index} is not open on its leader yet"),
                    )
                }),
            Some(leader) => Err((
                ErrorCode::NotLeaderOrFollower,
                format!(
                    "broker {leader} leads {name}-{index}, not broker {}",
                    self.cluster.id()
                ),
            )),
            None => Err((
                ErrorCode::LeaderNotAvailable,
                format!("{name}-{index} has no leader: its broker is down"),
            )),
        }
    }

    /// KIP-320: a request naming leader epoch `asked` (-1: none) for `name`-`index` is
    /// FENCED_LEADER_EPOCH when the partition has moved on to a newer epoch (the client's
    /// metadata is stale), UNKNOWN_LEADER_EPOCH when this broker has not heard of that epoch
    /// yet (its metadata is); both retriable after a metadata refresh.
    pub(crate) fn check_leader_epoch(
        &self,
        image: &MetadataImage,
        name: &str,
        index: i32,
        asked: i32,
    ) -> Result<(), Failure> {
        if asked < 0 {
            return Ok(());
        }
        let Some(placed) = image
            .topics
            .get(name)
            .and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
        else {
            return Ok(());
        };
        let current = i32::try_from(placed.leader_epoch).unwrap_or(i32::MAX);
        if asked == current {
            return Ok(());
        }
        Err(super::replication::replica::epoch_mismatch(asked, current))
    }

    /// OffsetForLeaderEpoch, on both listeners: after the KIP-320 check of the epoch the client
    /// knows (`current`, -1: none), the largest epoch at or below `epoch` this leader's log
    /// holds and the offset where it ends (`(-1, -1)`: the log holds no epoch that old).
    pub(crate) async fn epoch_end(
        &self,
        name: &str,
        index: i32,
        current: i32,
        epoch: i32,
    ) -> Result<(i32, i64), Failure> {
        let image = self.image();
        let topic = self.topics.get(name);
        let part = self.leader_partition(&image, topic.as_ref(), name, index)?;
        self.check_leader_epoch(&image, name, index, current)?;
        part.end_offset_for_epoch(epoch).await
    }

    /// The current leader of `topic`-`partition` and its leader epoch, as the image says (for
    /// KIP-951's hints on `NOT_LEADER_OR_FOLLOWER`); `None` when it has none.
    pub(crate) fn current_leader(&self, topic: &str, partition: i32) -> Option<(i32, i32)> {
        let image = self.image();
        let p = image
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        let leader = p.leader?;
        Some((
            broker_id(leader),
            i32::try_from(p.leader_epoch).unwrap_or(i32::MAX),
        ))
    }
}
