//! Coordinators that live where an internal topic's partitions are led: consumer groups on
//! `__consumer_offsets`, queue groups on `__queue_state`. Each is a topic of the metadata log
//! with several partitions spread over the brokers; a group lives on the leader of its
//! partition, chosen by Kafka's rule ([`partition_for`]). This module owns what the two share:
//!
//! - the rule itself (Java's `String.hashCode`, as Kafka computes it);
//! - a coordinator's view of each partition ([`Slot`]) in [`Slots`], brought in line with the
//!   metadata image every time the broker follows it ([`Slots::replan`]): a partition this
//!   broker has just come to lead (and holds open) is to be loaded before its groups are served
//!   (COORDINATOR_LOAD_IN_PROGRESS meanwhile); the groups of a partition it no longer leads
//!   leave memory;
//! - routing a request ([`Slots::route`]): NOT_COORDINATOR when another broker leads the
//!   group's partition, COORDINATOR_NOT_AVAILABLE when nobody does;
//! - creating the topic through the controller on the first request that needs a coordinator
//!   ([`Core::coordinator_topic_ready`]), once even when requests race, and finding the
//!   coordinator of a key ([`Core::coordinator_of`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use strom_meta::image::MetadataImage;
use strom_meta::rpc::ControllerRequest;
use strom_meta::types::BrokerId;
use strom_protocol::ErrorCode;

use crate::core::cluster::local_id;
use crate::core::metadata::{BrokerView, broker_id};
use crate::core::partition::Partition;
use crate::core::topics::Topics;
use crate::core::{Core, Failure};

/// Java's `String.hashCode()`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, in
/// wrapping 32-bit arithmetic.
pub(crate) fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The partition of `key` among `partitions` (Kafka's
/// `Utils.abs(groupId.hashCode()) % groupMetadataTopicPartitionCount`, where `Utils.abs` masks
/// the sign bit, so `Integer.MIN_VALUE` gives 0).
pub(crate) fn partition_for(key: &str, partitions: usize) -> usize {
    let hash = (java_string_hash(key) & 0x7fff_ffff).unsigned_abs() as usize;
    hash % partitions.max(1)
}

/// One partition of a coordinator topic, as this broker serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Another broker leads it: its groups are that broker's.
    Elsewhere(BrokerId),
    /// Nobody leads it (its broker is down), or this broker leads it without holding it open.
    Offline,
    /// This broker leads it (at this leader epoch) and is reading its records.
    Loading(u32),
    /// This broker leads it (at this leader epoch) and coordinates its groups.
    Ready(u32),
}

/// The partition a request was served under: its writes go to it, and its leader epoch tells
/// whether leadership changed while the request waited for its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub partition: i32,
    pub epoch: u32,
}

/// A partition to read the groups of.
#[derive(Debug)]
pub(crate) struct Load {
    pub partition: usize,
    pub epoch: u32,
    pub log: Arc<Partition>,
    /// The topic's partition count (which partition a group belongs to).
    pub count: usize,
}

/// What following an image changed.
#[derive(Debug, Default)]
pub(crate) struct Replan {
    /// Partitions to read before their groups are served.
    pub loads: Vec<Load>,
    /// Partitions whose groups must leave memory (their partition count when `all` is false).
    pub dropped: BTreeSet<usize>,
    /// Every group must leave memory (the topic left the image or changed its partition count).
    pub all: bool,
    /// The topic's partition count now.
    pub count: usize,
}

/// Which partitions of one coordinator topic this broker serves.
#[derive(Debug)]
pub(crate) struct Slots {
    topic: &'static str,
    /// What a group is called in messages ("group", "queue group").
    kind: &'static str,
    /// Each partition as this broker last followed the metadata image (its length is the
    /// partition count); `None` while the image holds no such topic.
    slots: Option<Vec<Slot>>,
}

impl Slots {
    pub(crate) const fn new(topic: &'static str, kind: &'static str) -> Self {
        Self {
            topic,
            kind,
            slots: None,
        }
    }

    /// Sets the slots as they are (unit tests of a coordinator's logic).
    #[cfg(test)]
    pub(crate) fn set(&mut self, slots: Vec<Slot>) {
        self.slots = Some(slots);
    }

    /// Whether the image this broker follows holds the topic.
    pub(crate) fn followed(&self) -> bool {
        self.slots.is_some()
    }

    /// The topic's partition count, while followed.
    pub(crate) fn count(&self) -> Option<usize> {
        self.slots.as_ref().map(Vec::len)
    }

    /// The partitions served here now, with their leader epochs.
    pub(crate) fn ready(&self) -> Vec<(usize, u32)> {
        self.slots
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(p, s)| match s {
                Slot::Ready(e) => Some((p, *e)),
                _ => None,
            })
            .collect()
    }

    /// Where `key`'s requests are served: `Ok(Some(_))` here; `Ok(None)` when the image holds
    /// no such topic yet (so no group exists anywhere); otherwise the error the client gets
    /// (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE).
    pub(crate) fn route(&self, key: &str) -> Result<Option<Route>, Failure> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        let (topic, kind) = (self.topic, self.kind);
        let p = partition_for(key, slots.len());
        let partition = i32::try_from(p).unwrap_or(i32::MAX);
        match slots.get(p) {
            Some(Slot::Ready(epoch)) => Ok(Some(Route {
                partition,
                epoch: *epoch,
            })),
            Some(Slot::Loading(_)) => Err((
                ErrorCode::CoordinatorLoadInProgress,
                format!("loading {topic}-{partition}, which holds {kind} {key}"),
            )),
            Some(Slot::Elsewhere(leader)) => Err((
                ErrorCode::NotCoordinator,
                format!("broker {leader} coordinates {kind} {key} (it leads {topic}-{partition})"),
            )),
            Some(Slot::Offline) | None => Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("{topic}-{partition}, which holds {kind} {key}, has no leader"),
            )),
        }
    }

    /// [`Slots::route`] for a request that needs the coordinator to exist:
    /// COORDINATOR_NOT_AVAILABLE while the topic is not in the image.
    pub(crate) fn serve(&self, key: &str) -> Result<Route, Failure> {
        self.route(key)?.ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "{} is being created; find the coordinator again",
                    self.topic
                ),
            )
        })
    }

    /// Brings the slots in line with `image` (`topics` holds this broker's logs).
    pub(crate) fn replan(
        &mut self,
        image: &MetadataImage,
        topics: &Topics,
        me: BrokerId,
    ) -> Replan {
        let name = self.topic;
        let Some(topic) = image.topics.get(name) else {
            if self.slots.take().is_some() {
                tracing::warn!(
                    "{name} left the metadata image; no {} is served here",
                    self.kind
                );
            }
            return Replan {
                all: true,
                ..Replan::default()
            };
        };
        let count = topic.partitions.len();
        let mut all = false;
        // Only this topic's logs: a local one of another id (an older data directory's that
        // was not imported) is never served as the cluster's.
        let local = topics.get(name).filter(|t| t.id == local_id(topic.id));
        let old = match self.slots.take() {
            Some(old) if old.len() == count => old,
            Some(_) => {
                tracing::warn!(
                    count,
                    "{name} changed its partition count; everything is loaded again"
                );
                all = true;
                vec![Slot::Offline; count]
            }
            None => vec![Slot::Offline; count],
        };
        let mut loads = Vec::new();
        let mut slots = Vec::with_capacity(count);
        for (p, placed) in topic.partitions.iter().enumerate() {
            let index = i32::try_from(p).unwrap_or(i32::MAX);
            let slot = match placed.leader {
                Some(leader) if leader == me => {
                    let epoch = placed.leader_epoch;
                    match (old[p], local.as_ref().and_then(|t| t.partition(index))) {
                        (Slot::Ready(e) | Slot::Loading(e), Some(_)) if e == epoch => old[p],
                        (_, Some(log)) => {
                            loads.push(Load {
                                partition: p,
                                epoch,
                                log: log.clone(),
                                count,
                            });
                            Slot::Loading(epoch)
                        }
                        (_, None) => Slot::Offline,
                    }
                }
                Some(leader) => Slot::Elsewhere(leader),
                None => Slot::Offline,
            };
            slots.push(slot);
        }
        let dropped: BTreeSet<usize> = (0..count)
            .filter(|p| matches!(old[*p], Slot::Ready(_)) && slots[*p] != old[*p])
            .collect();
        self.slots = Some(slots);
        Replan {
            loads,
            dropped,
            all,
            count,
        }
    }

    /// A partition's groups were read: whether they are to be served from now on (no when
    /// leadership moved while they were read).
    pub(crate) fn loaded(&mut self, partition: usize, epoch: u32) -> bool {
        let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(partition)) else {
            return false;
        };
        if *slot != Slot::Loading(epoch) {
            return false;
        }
        *slot = Slot::Ready(epoch);
        true
    }

    /// A partition could not be read: offline until the next follow tries again.
    pub(crate) fn load_failed(&mut self, partition: usize, epoch: u32) {
        if let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(partition))
            && *slot == Slot::Loading(epoch)
        {
            *slot = Slot::Offline;
        }
    }
}

/// An internal topic a coordinator lives on, as it is created.
#[derive(Debug)]
pub(crate) struct CoordinatorTopic {
    pub name: &'static str,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

impl Core {
    /// Makes sure `spec`'s topic exists and this broker follows it (`followed` says whether it
    /// does): on the first request that needs a coordinator it is created through the
    /// controller, spread over the registered brokers (as Kafka creates `__consumer_offsets`
    /// on demand). Concurrent first requests wait for one creation (`creating`); a creation by
    /// another broker (TOPIC_ALREADY_EXISTS) is followed. COORDINATOR_NOT_AVAILABLE when it
    /// cannot be created now.
    pub(crate) async fn coordinator_topic_ready(
        &self,
        spec: impl FnOnce() -> CoordinatorTopic,
        creating: &tokio::sync::Mutex<()>,
        followed: impl Fn() -> bool,
    ) -> Result<(), Failure> {
        if followed() {
            return Ok(());
        }
        let _creating = creating.lock().await;
        if followed() {
            return Ok(());
        }
        let spec = spec();
        let name = spec.name;
        let unavailable = |(code, msg): Failure| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("{name} is not available yet ({}: {msg})", code.name()),
            )
        };
        if !self.image().topics.contains_key(name) {
            let partitions = spec.partitions;
            // Replicated as Kafka's offsets.topic.replication.factor (3), on every live broker
            // when there are fewer (the controller's default, 0): a group's state survives
            // its coordinator's death.
            let request = ControllerRequest::CreateTopic {
                name: name.to_string(),
                partitions,
                replication_factor: 0,
                configs: spec.configs,
            };
            match self.cluster.call(request).await {
                Ok(index) => {
                    tracing::info!(partitions, "{name} created");
                    return self.cluster.settled(index, name).await.map_err(unavailable);
                }
                Err((ErrorCode::TopicAlreadyExists, _)) => {}
                Err(failure) => return Err(unavailable(failure)),
            }
        }
        // Created by another broker (or just before): wait until this one follows it.
        self.settled_on_topic(name).await.map_err(unavailable)
    }

    /// The coordinator of `key` on `topic` as `image` places it: the leader of the key's
    /// partition, with its addresses. COORDINATOR_NOT_AVAILABLE while the topic does not exist
    /// or the partition has no leader (its broker is down).
    pub(crate) fn coordinator_of(
        &self,
        image: &MetadataImage,
        topic: &str,
        key: &str,
    ) -> Result<BrokerView, Failure> {
        let placed = image.topics.get(topic).ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("{topic} is being created"),
            )
        })?;
        let p = partition_for(key, placed.partitions.len());
        let leader = placed
            .partitions
            .get(p)
            .and_then(|placed| placed.leader)
            .ok_or_else(|| {
                (
                    ErrorCode::CoordinatorNotAvailable,
                    format!("{topic}-{p}, which holds {key}, has no leader"),
                )
            })?;
        let registration = image.brokers.get(&leader).ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("broker {leader} leads {topic}-{p} but is not registered"),
            )
        })?;
        Ok(BrokerView {
            id: broker_id(leader),
            endpoints: registration.endpoints.clone(),
            rack: registration.rack.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_partitions_as_kafka_computes() {
        // Java's String.hashCode by hand: "a" = 97; "ab" = 97*31 + 98 = 3105;
        // "hello" = 99162322 (104*31^4 + 101*31^3 + 108*31^2 + 108*31 + 111);
        // "Aa" and "BB" collide at 2112 (65*31+97 = 66*31+66).
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("ab"), 3105);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("Aa"), 2112);
        assert_eq!(java_string_hash("BB"), 2112);
        // Overflow wraps as in Java: "polygenelubricants".hashCode() is Integer.MIN_VALUE,
        // which Kafka's Utils.abs masks to 0; "billing".hashCode() is -109829509, whose low 31
        // bits are 2037654139: partition 11 of 16, 39 of 50.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 16), 0);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(java_string_hash("billing"), -109_829_509);
        assert_eq!(partition_for("billing", 16), 11);
        assert_eq!(partition_for("billing", 50), 39);
        // Kafka with 50 partitions (its default): 99162322 % 50 = 22; with 16: 99162322 % 16 = 2.
        assert_eq!(partition_for("hello", 50), 22);
        assert_eq!(partition_for("hello", 16), 2);
        assert_eq!(partition_for("ab", 16), 1);
        // Non-ASCII: UTF-16 code units, not bytes ("é" is U+00E9 = 233; "😀" is the surrogate
        // pair D83D DE00: 55357*31 + 56832 = 1772899).
        assert_eq!(java_string_hash("é"), 233);
        assert_eq!(java_string_hash("😀"), 1_772_899);
        assert_eq!(partition_for("anything", 1), 0);
    }
}
