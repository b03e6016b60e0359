//! Which queue groups this broker coordinates: those of the `__queue_state` partitions it
//! leads. `__queue_state` is a topic of the metadata log like `__consumer_offsets`, replicated
//! (RF 3 where there are three brokers) and created on the first request that needs a queue
//! coordinator; a queue group, and a redrive task of a dead-letter topic, live on the leader of
//! the partition their name hashes to ([`crate::core::coordination`], Kafka's rule).
//!
//! This module owns:
//! - routing ([`Core::queue_route`], [`Core::queue_group`]): NOT_COORDINATOR when another
//!   broker leads the partition, COORDINATOR_LOAD_IN_PROGRESS while it is read here;
//! - following the image ([`Core::queue_follow`]): a partition this broker has come to lead is
//!   read whole (every group's settings, snapshots and deltas, every redrive task) before its
//!   groups are served; the groups of a partition it no longer leads leave memory, and a
//!   request still running on one of them is refused at its next write (each group remembers
//!   the leader epoch it was loaded in, [`super::Core::queue_persist`]).
//!
//! Reading a partition whole is what makes the promise hold across a failover: every change
//! was acknowledged only once on every in-sync replica, so the new leader's log holds it, and
//! the leases it records keep running (a record held by a member is not handed to another
//! before its lease ends; attempt counts never go down).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use strom_meta::image::MetadataImage;
use strom_protocol::ErrorCode;
use tokio::sync::Notify;

use super::codec::{self, Key, SNAPSHOT};
use super::settings::{self, Settings};
use super::state::QueuePartition;
use super::{Inner, QueueGroup, Queues, STATE_TOPIC, Tp, lock_groups, redrive};
use crate::core::coordination::{CoordinatorTopic, Load, Route, Slots, partition_for};
use crate::core::metadata::BrokerView;
use crate::core::partition::Partition;
use crate::core::{Core, Failure};

/// The settings `__queue_state` is created with: kept forever (compaction by snapshots moves
/// its start), in 64 MiB segments, batches as large as a group's snapshot may be.
fn state_topic_configs() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("segment.bytes".to_string(), (64u64 << 20).to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
        ("max.message.bytes".to_string(), (64u64 << 20).to_string()),
    ])
}

impl Queues {
    pub(super) fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one partition of `__queue_state` holds.
#[derive(Debug, Default)]
struct Loaded {
    groups: HashMap<String, Inner>,
    redrives: HashMap<String, redrive::Task>,
    records: usize,
    stray: usize,
}

impl Core {
    /// Makes sure `__queue_state` exists and this broker follows it (created through the
    /// controller on the first request that needs a queue coordinator).
    pub(crate) async fn queue_state_ready(&self) -> Result<(), Failure> {
        let spec = || CoordinatorTopic {
            name: STATE_TOPIC,
            partitions: self.config.queue_state_partitions,
            configs: state_topic_configs(),
        };
        self.coordinator_topic_ready(spec, &self.queues.creating, || {
            self.queues.slots().followed() && self.image().topics.contains_key(STATE_TOPIC)
        })
        .await
    }

    /// Where requests about `key` (a queue group, or the dead-letter topic of a redrive) are
    /// served, once `__queue_state` exists (created here if needed): here, or the routing error.
    pub(crate) async fn queue_route(&self, key: &str) -> Result<Route, Failure> {
        self.queue_state_ready().await?;
        self.queues.slots().serve(key)
    }

    /// The group `name`, coordinated here: the routing error when it is not served here,
    /// GROUP_ID_NOT_FOUND when no such group exists.
    pub(crate) fn queue_group(&self, name: &str) -> Result<Arc<QueueGroup>, Failure> {
        let not_found = || (ErrorCode::GroupIdNotFound, format!("no queue group {name}"));
        let route = self.queues.slots().route(name)?.ok_or_else(not_found)?;
        self.queues
            .get(name)
            .filter(|g| g.route == route)
            .ok_or_else(not_found)
    }

    /// Where the coordinator of `key` (a queue group or a dead-letter topic) is.
    pub(crate) async fn find_queue_coordinator(&self, key: &str) -> Result<BrokerView, Failure> {
        self.queue_state_ready().await?;
        self.coordinator_of(&self.image(), STATE_TOPIC, key)
    }

    /// Follows the metadata image: the `__queue_state` partitions this broker has come to lead
    /// are read before their groups are served; the groups and redrive tasks of the ones it no
    /// longer leads leave memory.
    pub(crate) async fn queue_follow(&self, image: &MetadataImage) {
        let plan = self
            .queues
            .slots()
            .replan(image, &self.topics, self.cluster.id());
        if plan.all || !plan.dropped.is_empty() {
            let gone =
                |name: &str| plan.all || plan.dropped.contains(&partition_for(name, plan.count));
            let dropped: Vec<Arc<QueueGroup>> = {
                let mut groups = lock_groups(&self.queues);
                let names: Vec<String> = groups.keys().filter(|n| gone(n)).cloned().collect();
                names.iter().filter_map(|n| groups.remove(n)).collect()
            };
            self.queues
                .redrives
                .lock()
                .await
                .retain(|dlq, _| !gone(dlq));
            for g in &dropped {
                g.wake.notify_waiters();
            }
            if !plan.dropped.is_empty() || !dropped.is_empty() {
                tracing::info!(
                    partitions = ?plan.dropped,
                    groups = dropped.len(),
                    "no longer coordinating these {STATE_TOPIC} partitions; their queue groups left memory"
                );
            }
        }
        for load in plan.loads {
            self.queue_load(load).await;
        }
    }

    async fn queue_load(&self, load: Load) {
        let Load {
            partition,
            epoch,
            log,
            count,
        } = load;
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || read_state(&log, partition, count)).await;
        let loaded = match read {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                tracing::warn!(partition, error = %e, "cannot read {STATE_TOPIC}-{partition}; its queue groups are unavailable");
                self.queues.slots().load_failed(partition, epoch);
                return;
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "reading {STATE_TOPIC}-{partition} failed");
                self.queues.slots().load_failed(partition, epoch);
                return;
            }
        };
        if loaded.stray > 0 {
            tracing::warn!(
                partition,
                stray = loaded.stray,
                "{STATE_TOPIC} records of groups of other partitions were skipped"
            );
        }
        let route = Route {
            partition: i32::try_from(partition).unwrap_or(i32::MAX),
            epoch,
        };
        // The redrive tasks go in before the slot is ready, under their lock, so a request
        // routed here once it is ready finds them.
        let mut redrives = self.queues.redrives.lock().await;
        let mut groups = lock_groups(&self.queues);
        if !self.queues.slots().loaded(partition, epoch) {
            return;
        }
        let count_groups = loaded.groups.len();
        for (name, inner) in loaded.groups {
            if inner.deleted {
                continue;
            }
            let g = Arc::new(QueueGroup {
                name: name.clone(),
                route,
                inner: tokio::sync::Mutex::new(inner),
                wake: Notify::new(),
            });
            groups.insert(name, g);
        }
        redrives.extend(loaded.redrives);
        drop(groups);
        drop(redrives);
        tracing::info!(
            partition,
            leader_epoch = epoch,
            groups = count_groups,
            records = loaded.records,
            ms = started.elapsed().as_millis() as u64,
            "coordinating the queue groups of {STATE_TOPIC}-{partition}"
        );
    }
}

/// Reads a partition of `__queue_state` whole. Records of groups (or redrive tasks) that belong
/// to another partition (none should exist) and delayed runs (an older strom's, moved to
/// `__queue_delays` at start-up) are skipped; an unreadable record is logged and skipped.
fn read_state(
    log: &Partition,
    partition: usize,
    count: usize,
) -> Result<Loaded, strom_storage::StorageError> {
    let mut loaded = Loaded::default();
    log.for_each_record(|rec| {
        loaded.records += 1;
        if let Err(e) = replay(
            &mut loaded,
            partition,
            count,
            rec.key.as_deref(),
            rec.value.as_deref(),
        ) {
            tracing::error!(offset = rec.offset, error = %e, "skipping an unreadable queue state record");
        }
    })?;
    Ok(loaded)
}

/// Applies one state record to the groups being rebuilt.
fn replay(
    loaded: &mut Loaded,
    partition: usize,
    count: usize,
    raw_key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(), codec::CodecError> {
    let raw_key = raw_key.ok_or(codec::CodecError("no key"))?;
    let key = codec::decode_key(raw_key)?;
    let owner = match &key {
        Key::Delay => return Ok(()),
        Key::Redrive(name) | Key::Group(name) => name,
        Key::Partition { group, .. } => group,
    };
    if partition_for(owner, count) != partition {
        loaded.stray += 1;
        return Ok(());
    }
    let groups = &mut loaded.groups;
    match key {
        Key::Delay => {}
        Key::Redrive(dlq) => match value {
            None => {
                loaded.redrives.remove(&dlq);
            }
            Some(v) => {
                loaded
                    .redrives
                    .insert(dlq.clone(), redrive::decode(&dlq, v)?);
            }
        },
        Key::Group(name) => match value {
            None => {
                if let Some(g) = groups.get_mut(&name) {
                    g.deleted = true;
                    g.qps.clear();
                }
            }
            Some(v) => {
                let settings = settings::decode(v)?;
                let g = groups
                    .entry(name)
                    .or_insert_with(|| Inner::new(settings.clone()));
                g.settings = settings;
                g.deleted = false;
            }
        },
        Key::Partition {
            group,
            topic,
            partition,
        } => {
            let (kind, delta) = codec::decode_state(value.ok_or(codec::CodecError("no value"))?)?;
            let g = groups
                .entry(group)
                .or_insert_with(|| Inner::new(Settings::default()));
            let tp: Tp = (Arc::from(topic.as_str()), partition);
            if kind == SNAPSHOT {
                g.qps.insert(tp, QueuePartition::restore(&delta));
            } else {
                g.qps
                    .entry(tp)
                    .or_insert_with(|| QueuePartition::new(delta.start))
                    .apply(&delta);
            }
        }
    }
    Ok(())
}
