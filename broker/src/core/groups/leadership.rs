//! Which groups this broker coordinates. `__consumer_offsets` is a topic of the metadata log
//! with several partitions spread over the brokers; a group lives on the leader of its
//! partition, chosen by Kafka's rule ([`partition_for`]). This module owns:
//!
//! - the rule itself (Java's `String.hashCode`, as Kafka computes it);
//! - the coordinator's view of each partition ([`Slot`]), refreshed by
//!   [`Coordinator::follow`] every time the broker follows the metadata image: a partition this
//!   broker has just come to lead (and holds open) is loaded, that partition's records only,
//!   before its groups are served (COORDINATOR_LOAD_IN_PROGRESS meanwhile); the groups of a
//!   partition it no longer leads leave memory;
//! - routing a group request ([`State::route`]): NOT_COORDINATOR when another broker leads the
//!   group's partition, COORDINATOR_NOT_AVAILABLE when nobody does;
//! - creating `__consumer_offsets` through the controller on the first request that needs a
//!   coordinator ([`Core::offsets_topic_ready`]), once even when requests race.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use strom_meta::image::MetadataImage;
use strom_meta::rpc::ControllerRequest;
use strom_meta::types::BrokerId;
use strom_protocol::ErrorCode;

use super::records::{parse_key, parse_value};
use super::{Catalog, Coordinator, OFFSETS_TOPIC, State, Tp, offsets_topic_configs};
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

/// The `__consumer_offsets` partition of `group_id` among `partitions` (Kafka's
/// `Utils.abs(groupId.hashCode()) % groupMetadataTopicPartitionCount`, where `Utils.abs` masks
/// the sign bit, so `Integer.MIN_VALUE` gives 0).
pub(crate) fn partition_for(group_id: &str, partitions: usize) -> usize {
    let hash = (java_string_hash(group_id) & 0x7fff_ffff).unsigned_abs() as usize;
    hash % partitions.max(1)
}

/// One partition of `__consumer_offsets`, as this broker serves it.
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

/// The partition a group request was served under: commits go to it, and its leader epoch
/// tells whether leadership changed while the request waited for its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub partition: i32,
    pub epoch: u32,
}

impl State {
    /// Where `group_id`'s requests are served: `Ok(Some(_))` here; `Ok(None)` when the image
    /// holds no `__consumer_offsets` yet (so no group exists anywhere); otherwise the error the
    /// client gets (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE).
    pub(crate) fn route(&self, group_id: &str) -> Result<Option<Route>, Failure> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        let p = partition_for(group_id, slots.len());
        let partition = i32::try_from(p).unwrap_or(i32::MAX);
        match slots.get(p) {
            Some(Slot::Ready(epoch)) => Ok(Some(Route {
                partition,
                epoch: *epoch,
            })),
            Some(Slot::Loading(_)) => Err((
                ErrorCode::CoordinatorLoadInProgress,
                format!("loading {OFFSETS_TOPIC}-{partition}, which holds group {group_id}"),
            )),
            Some(Slot::Elsewhere(leader)) => Err((
                ErrorCode::NotCoordinator,
                format!(
                    "broker {leader} coordinates group {group_id} (it leads {OFFSETS_TOPIC}-{partition})"
                ),
            )),
            Some(Slot::Offline) | None => Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC}-{partition}, which holds group {group_id}, has no leader"),
            )),
        }
    }

    /// [`State::route`] for a request that needs the coordinator to exist:
    /// COORDINATOR_NOT_AVAILABLE while `__consumer_offsets` is not in the image.
    pub(crate) fn serve(&self, group_id: &str) -> Result<Route, Failure> {
        self.route(group_id)?.ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} is being created; find the coordinator again"),
            )
        })
    }

    /// Brings the slots in line with `image`; returns the partitions to load. Groups of a
    /// partition this broker stops serving (or must load again) leave memory.
    fn replan(&mut self, image: &MetadataImage, topics: &Topics, me: BrokerId) -> Vec<Load> {
        let Some(topic) = image.topics.get(OFFSETS_TOPIC) else {
            if self.slots.take().is_some() {
                tracing::warn!("{OFFSETS_TOPIC} left the metadata image; no group is served here");
            }
            self.groups.clear();
            return Vec::new();
        };
        let count = topic.partitions.len();
        // Only this topic's logs: a local one of another id (an older data directory's that
        // was not imported) is never served as the cluster's.
        let local = topics
            .get(OFFSETS_TOPIC)
            .filter(|t| t.id == local_id(topic.id));
        let old = match self.slots.take() {
            Some(old) if old.len() == count => old,
            Some(_) => {
                tracing::warn!(
                    count,
                    "{OFFSETS_TOPIC} changed its partition count; every group is loaded again"
                );
                self.groups.clear();
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
        if !dropped.is_empty() {
            let before = self.groups.len();
            self.groups
                .retain(|name, _| !dropped.contains(&partition_for(name, count)));
            tracing::info!(
                partitions = ?dropped,
                groups = before - self.groups.len(),
                "no longer coordinating these {OFFSETS_TOPIC} partitions; their groups left memory"
            );
        }
        self.slots = Some(slots);
        loads
    }

    /// A partition's groups are read: they are served from now on, unless leadership moved
    /// while they were read.
    fn loaded(&mut self, partition: usize, epoch: u32, groups: LoadedGroups) {
        let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(partition)) else {
            return;
        };
        if *slot != Slot::Loading(epoch) {
            return;
        }
        *slot = Slot::Ready(epoch);
        for (name, offsets) in groups {
            self.groups.entry(name).or_default().offsets = offsets;
        }
    }

    /// A partition could not be read: offline until the next follow tries again.
    fn load_failed(&mut self, partition: usize, epoch: u32) {
        if let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(partition))
            && *slot == Slot::Loading(epoch)
        {
            *slot = Slot::Offline;
        }
    }
}

/// A partition to read the groups of.
#[derive(Debug)]
struct Load {
    partition: usize,
    epoch: u32,
    log: Arc<Partition>,
    /// The topic's partition count (which partition a group belongs to).
    count: usize,
}

/// Committed offsets by group.
type LoadedGroups = HashMap<String, BTreeMap<Tp, (i64, Option<String>)>>;

/// Reads a partition's commits: the newest record per group and partition wins, a tombstone
/// deletes. A record of a group that belongs to another partition (none should exist) is
/// skipped.
fn read_groups(
    log: &Partition,
    partition: usize,
    count: usize,
) -> Result<(LoadedGroups, usize), strom_storage::StorageError> {
    let mut groups: LoadedGroups = HashMap::new();
    let mut records = 0usize;
    let mut stray = 0usize;
    log.for_each_record(|rec| {
        let Some((g, t, p)) = rec.key.as_deref().and_then(parse_key) else {
            return;
        };
        records += 1;
        if partition_for(&g, count) != partition {
            stray += 1;
            return;
        }
        let offsets = groups.entry(g).or_default();
        match rec.value.as_deref().and_then(parse_value) {
            Some(v) => {
                offsets.insert((t, p), v);
            }
            None => {
                offsets.remove(&(t, p));
            }
        }
    })?;
    if stray > 0 {
        tracing::warn!(
            partition,
            stray,
            "{OFFSETS_TOPIC} records of groups of other partitions were skipped"
        );
    }
    groups.retain(|_, offsets| !offsets.is_empty());
    Ok((groups, records))
}

impl Coordinator {
    /// Follows the metadata image: the partitions of `__consumer_offsets` this broker (`me`)
    /// has come to lead are loaded (each from its own log, before its groups are served), the
    /// groups of the ones it no longer leads are dropped. Called by `Core::follow_image` after
    /// the registry follows the image, so newly placed partitions are open.
    pub(crate) async fn follow(&self, image: &MetadataImage, topics: &Topics, me: BrokerId) {
        let loads = self.lock().replan(image, topics, me);
        for load in loads {
            let Load {
                partition,
                epoch,
                log,
                count,
            } = load;
            let started = Instant::now();
            let read =
                tokio::task::spawn_blocking(move || read_groups(&log, partition, count)).await;
            let mut state = self.lock();
            match read {
                Ok(Ok((groups, records))) => {
                    tracing::info!(
                        partition,
                        leader_epoch = epoch,
                        groups = groups.len(),
                        records,
                        ms = started.elapsed().as_millis() as u64,
                        "coordinating the groups of {OFFSETS_TOPIC}-{partition}"
                    );
                    state.loaded(partition, epoch, groups);
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition, error = %e, "cannot read {OFFSETS_TOPIC}-{partition}; its groups are unavailable");
                    state.load_failed(partition, epoch);
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "reading {OFFSETS_TOPIC}-{partition} failed");
                    state.load_failed(partition, epoch);
                }
            }
        }
    }

    /// Whether this broker follows a `__consumer_offsets` of the metadata image.
    fn follows_offsets_topic(&self) -> bool {
        self.lock().slots.is_some()
    }
}

impl Core {
    /// The image and registry the coordinator looks topics up in.
    pub(crate) fn catalog(&self) -> Catalog<'_> {
        Catalog {
            image: self.image(),
            topics: &self.topics,
        }
    }

    /// Makes sure `__consumer_offsets` exists and this broker follows it: on the first request
    /// that needs a group coordinator it is created through the controller with
    /// `offsets_topic_partitions` partitions, spread over the registered brokers (as Kafka
    /// creates it on demand). Concurrent first requests wait for one creation; a creation by
    /// another broker (TOPIC_ALREADY_EXISTS) is followed. COORDINATOR_NOT_AVAILABLE when it
    /// cannot be created now.
    pub(crate) async fn offsets_topic_ready(&self) -> Result<(), Failure> {
        if self.offsets_topic_followed() {
            return Ok(());
        }
        let _creating = self.groups.creating.lock().await;
        if self.offsets_topic_followed() {
            return Ok(());
        }
        let unavailable = |(code, msg): Failure| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "{OFFSETS_TOPIC} is not available yet ({}: {msg})",
                    code.name()
                ),
            )
        };
        if !self.image().topics.contains_key(OFFSETS_TOPIC) {
            let partitions = self.config.offsets_topic_partitions;
            // Replicated as Kafka's offsets.topic.replication.factor (3), on every live broker
            // when there are fewer (the controller's default, 0): a group's commits survive
            // its coordinator's death.
            let request = ControllerRequest::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                partitions,
                replication_factor: 0,
                configs: offsets_topic_configs(),
            };
            match self.cluster.call(request).await {
                Ok(index) => {
                    tracing::info!(partitions, "{OFFSETS_TOPIC} created");
                    return self
                        .cluster
                        .settled(index, OFFSETS_TOPIC)
                        .await
                        .map_err(unavailable);
                }
                Err((ErrorCode::TopicAlreadyExists, _)) => {}
                Err(failure) => return Err(unavailable(failure)),
            }
        }
        // Created by another broker (or just before): wait until this one follows it.
        self.settled_on_topic(OFFSETS_TOPIC)
            .await
            .map_err(unavailable)
    }

    /// Whether this broker follows `__consumer_offsets` and answers from an image that holds
    /// it: the coordinator slots are planned while an image is followed, before requests are
    /// answered from it, so the first alone would let a request see the topic missing.
    fn offsets_topic_followed(&self) -> bool {
        self.groups.follows_offsets_topic() && self.image().topics.contains_key(OFFSETS_TOPIC)
    }

    /// The coordinator of `group_id` as `image` places it: the leader of the group's partition
    /// of `__consumer_offsets`, with its addresses. COORDINATOR_NOT_AVAILABLE while the topic
    /// does not exist or the partition has no leader (its broker is down).
    pub(crate) fn coordinator_of(
        &self,
        image: &MetadataImage,
        group_id: &str,
    ) -> Result<BrokerView, Failure> {
        let topic = image.topics.get(OFFSETS_TOPIC).ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} is being created"),
            )
        })?;
        let p = partition_for(group_id, topic.partitions.len());
        let leader = topic
            .partitions
            .get(p)
            .and_then(|placed| placed.leader)
            .ok_or_else(|| {
                (
                    ErrorCode::CoordinatorNotAvailable,
                    format!("{OFFSETS_TOPIC}-{p}, which holds group {group_id}, has no leader"),
                )
            })?;
        let registration = image.brokers.get(&leader).ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("broker {leader} leads {OFFSETS_TOPIC}-{p} but is not registered"),
            )
        })?;
        Ok(BrokerView {
            id: broker_id(leader),
            endpoints: registration.endpoints.clone(),
            rack: registration.rack.clone(),
        })
    }

    /// Where `group_id`'s coordinator is, once `__consumer_offsets` exists (created here if
    /// needed): the leader of the group's partition.
    pub(crate) async fn find_coordinator(&self, group_id: &str) -> Result<BrokerView, Failure> {
        self.offsets_topic_ready().await?;
        self.coordinator_of(&self.image(), group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::groups::SessionBounds;
    use std::time::Duration;

    #[test]
    fn groups_hash_to_partitions_as_kafka_computes() {
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

    fn coordinator() -> Coordinator {
        Coordinator::new(
            SessionBounds {
                min_ms: 1000,
                max_ms: 60_000,
                default_ms: 10_000,
            },
            Duration::ZERO,
        )
    }

    /// A classic heartbeat of a member no group has: UNKNOWN_MEMBER_ID where the group is
    /// served, the routing error elsewhere.
    fn heartbeat(co: &Coordinator, group: &str) -> Option<ErrorCode> {
        co.classic_heartbeat(group, 1, "nobody", None)
            .err()
            .map(|e| e.0)
    }

    /// A group whose partition is `p` of `count`.
    fn group_on(p: usize, count: usize) -> String {
        (0..)
            .map(|i| format!("group-{i}"))
            .find(|g| partition_for(g, count) == p)
            .unwrap_or_default()
    }

    #[test]
    fn requests_for_groups_this_broker_does_not_serve_are_refused() {
        let co = coordinator();
        // No __consumer_offsets yet: no group exists, and none can be joined.
        assert_eq!(co.lock().route("g"), Ok(None));
        assert_eq!(
            heartbeat(&co, "g"),
            Some(ErrorCode::CoordinatorNotAvailable)
        );
        let (here, elsewhere, offline, loading) = (
            group_on(0, 4),
            group_on(1, 4),
            group_on(2, 4),
            group_on(3, 4),
        );
        co.lock().slots = Some(vec![
            Slot::Ready(3),
            Slot::Elsewhere(2),
            Slot::Offline,
            Slot::Loading(1),
        ]);
        assert_eq!(heartbeat(&co, &here), Some(ErrorCode::UnknownMemberId));
        assert_eq!(heartbeat(&co, &elsewhere), Some(ErrorCode::NotCoordinator));
        assert_eq!(
            heartbeat(&co, &offline),
            Some(ErrorCode::CoordinatorNotAvailable)
        );
        assert_eq!(
            heartbeat(&co, &loading),
            Some(ErrorCode::CoordinatorLoadInProgress)
        );
        assert_eq!(
            co.lock().route(&here),
            Ok(Some(Route {
                partition: 0,
                epoch: 3
            }))
        );
        assert_eq!(
            co.fetch(&elsewhere, None).map_err(|e| e.0),
            Err(ErrorCode::NotCoordinator)
        );
        assert!(
            co.fetch(&here, None).is_ok(),
            "a served group with no commits"
        );

        // The load finishes: the partition's groups are served with their offsets. A load of
        // an older leadership changes nothing.
        let offsets = BTreeMap::from([(("t".to_string(), 0), (42, None))]);
        co.lock()
            .loaded(3, 0, HashMap::from([(loading.clone(), offsets.clone())]));
        assert_eq!(
            heartbeat(&co, &loading),
            Some(ErrorCode::CoordinatorLoadInProgress)
        );
        co.lock()
            .loaded(3, 1, HashMap::from([(loading.clone(), offsets)]));
        let fetched = co.fetch(&loading, None).expect("served");
        assert_eq!(fetched, vec![("t".to_string(), vec![(0, 42, None)])]);
    }
}
