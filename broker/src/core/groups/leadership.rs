//! Which consumer groups this broker coordinates: those of the `__consumer_offsets`
//! partitions it leads ([`crate::core::coordination`] owns the rule and the slots). This module
//! reads a partition's commits when this broker comes to lead it ([`Coordinator::follow`]),
//! drops the groups of the partitions it no longer leads, and creates `__consumer_offsets` on
//! the first request that needs a coordinator ([`Core::offsets_topic_ready`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use strom_meta::image::MetadataImage;
use strom_meta::types::BrokerId;

use super::records::{parse_key, parse_value};
use super::{Catalog, Coordinator, OFFSETS_TOPIC, State, Tp, offsets_topic_configs};
use crate::core::coordination::{CoordinatorTopic, Load, Route, partition_for};
use crate::core::metadata::BrokerView;
use crate::core::partition::Partition;
use crate::core::topics::Topics;
use crate::core::{Core, Failure};

impl State {
    /// Where `group_id`'s requests are served ([`crate::core::coordination::Slots::route`]).
    pub(crate) fn route(&self, group_id: &str) -> Result<Option<Route>, Failure> {
        self.slots.route(group_id)
    }

    /// [`State::route`] for a request that needs the coordinator to exist.
    pub(crate) fn serve(&self, group_id: &str) -> Result<Route, Failure> {
        self.slots.serve(group_id)
    }

    /// A partition's groups are read: they are served from now on, unless leadership moved
    /// while they were read.
    fn loaded(&mut self, partition: usize, epoch: u32, groups: LoadedGroups) {
        if !self.slots.loaded(partition, epoch) {
            return;
        }
        for (name, offsets) in groups {
            self.groups.entry(name).or_default().offsets = offsets;
        }
    }
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
        let loads = {
            let mut state = self.lock();
            let plan = state.slots.replan(image, topics, me);
            if plan.all {
                state.groups.clear();
            } else if !plan.dropped.is_empty() {
                let before = state.groups.len();
                state
                    .groups
                    .retain(|name, _| !plan.dropped.contains(&partition_for(name, plan.count)));
                tracing::info!(
                    partitions = ?plan.dropped,
                    groups = before - state.groups.len(),
                    "no longer coordinating these {OFFSETS_TOPIC} partitions; their groups left memory"
                );
            }
            plan.loads
        };
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
                    state.slots.load_failed(partition, epoch);
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "reading {OFFSETS_TOPIC}-{partition} failed");
                    state.slots.load_failed(partition, epoch);
                }
            }
        }
    }

    /// Whether this broker follows a `__consumer_offsets` of the metadata image.
    fn follows_offsets_topic(&self) -> bool {
        self.lock().slots.followed()
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
        let spec = || CoordinatorTopic {
            name: OFFSETS_TOPIC,
            partitions: self.config.offsets_topic_partitions,
            configs: offsets_topic_configs(),
        };
        self.coordinator_topic_ready(spec, &self.groups.creating, || {
            self.offsets_topic_followed()
        })
        .await
    }

    /// Whether this broker follows `__consumer_offsets` and answers from an image that holds
    /// it: the coordinator slots are planned while an image is followed, before requests are
    /// answered from it, so the first alone would let a request see the topic missing.
    fn offsets_topic_followed(&self) -> bool {
        self.groups.follows_offsets_topic() && self.image().topics.contains_key(OFFSETS_TOPIC)
    }

    /// Where `group_id`'s coordinator is, once `__consumer_offsets` exists (created here if
    /// needed): the leader of the group's partition.
    pub(crate) async fn find_coordinator(&self, group_id: &str) -> Result<BrokerView, Failure> {
        self.offsets_topic_ready().await?;
        self.coordinator_of(&self.image(), OFFSETS_TOPIC, group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coordination::Slot;
    use crate::core::groups::SessionBounds;
    use std::time::Duration;
    use strom_protocol::ErrorCode;

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
        co.lock().slots.set(vec![
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
