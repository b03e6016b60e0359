//! Where requests go in a cluster: the brokers' addresses and each partition's leader, as the
//! latest Metadata answers say.
//!
//! Every Metadata answer the client receives updates the table ([`Routes::learn`]); data paths
//! look a partition's leader up per request ([`Routes::leader`]) and forget a topic's leaders
//! when a broker says it does not lead one of them (`NOT_LEADER_OR_FOLLOWER`,
//! `LEADER_NOT_AVAILABLE`, `UNKNOWN_TOPIC_OR_PARTITION`) or that the leader epoch the client
//! sent is stale or ahead of it (`FENCED_LEADER_EPOCH`, `UNKNOWN_LEADER_EPOCH`), which makes
//! the next lookup ask again.
//!
//! A broker that listens on an unspecified address (`0.0.0.0`, `::`) reports that address in
//! Metadata; connecting to it would reach this machine, not the broker's. Such a host is
//! replaced by the host of the connection the answer came from, which reached that cluster.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use strom_protocol::messages::MetadataResponse;

/// A broker's node id, as Metadata names it.
pub(crate) type NodeId = i32;

#[derive(Debug, Default)]
struct Table {
    /// Native-protocol address by node id.
    brokers: HashMap<NodeId, String>,
    /// Leader and leader epoch (-1: not said) by topic and partition; a partition without a
    /// leader has leader -1.
    leaders: HashMap<Arc<str>, Vec<(NodeId, i32)>>,
    /// Bumped by every change, so callers can tell a refresh happened.
    version: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    table: Mutex<Table>,
}

impl Routes {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change is a few map assignments: a poisoned lock still holds a usable table.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what `m` says, received over a connection to `via` (`HOST:PORT`).
    pub(crate) fn learn(&self, m: &MetadataResponse, via: &str) {
        let via_host = via.rsplit_once(':').map(|(h, _)| h);
        let mut t = self.lock();
        for b in &m.brokers {
            let host = match (b.host.parse::<IpAddr>(), via_host) {
                (Ok(ip), Some(via)) if ip.is_unspecified() => via.to_string(),
                _ if b.host.contains(':') && !b.host.starts_with('[') => format!("[{}]", b.host),
                _ => b.host.clone(),
            };
            t.brokers.insert(b.node_id, format!("{host}:{}", b.port));
        }
        for topic in &m.topics {
            if topic.partitions.is_empty() {
                continue;
            }
            let mut leaders = vec![(-1, -1); topic.partitions.len()];
            for p in &topic.partitions {
                if let Some(slot) = usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| leaders.get_mut(i))
                {
                    *slot = (p.leader_id, p.leader_epoch);
                }
            }
            t.leaders.insert(Arc::from(topic.name.as_str()), leaders);
        }
        t.version += 1;
    }

    /// The leader of `topic`/`partition` and its address, when known.
    pub(crate) fn leader(&self, topic: &str, partition: i32) -> Option<(NodeId, String)> {
        let t = self.lock();
        let (id, _) = *t
            .leaders
            .get(topic)?
            .get(usize::try_from(partition).ok()?)?;
        let addr = t.brokers.get(&id)?.clone();
        Some((id, addr))
    }

    /// The leader epoch of `topic`/`partition` the latest Metadata answer gave, when it gave
    /// one: what fetches send as their current leader epoch (KIP-320).
    pub(crate) fn leader_epoch(&self, topic: &str, partition: i32) -> Option<i32> {
        let t = self.lock();
        let (id, epoch) = *t
            .leaders
            .get(topic)?
            .get(usize::try_from(partition).ok()?)?;
        (id >= 0 && epoch >= 0).then_some(epoch)
    }

    /// Every broker's address the client has learned, by node id.
    pub(crate) fn broker_addresses(&self) -> Vec<String> {
        let t = self.lock();
        let mut known: Vec<(NodeId, &String)> = t.brokers.iter().map(|(id, a)| (*id, a)).collect();
        known.sort_unstable();
        known.into_iter().map(|(_, a)| a.clone()).collect()
    }

    /// The address of broker `id`, when known.
    pub(crate) fn broker(&self, id: NodeId) -> Option<String> {
        self.lock().brokers.get(&id).cloned()
    }

    /// Forgets `topic`'s leaders: a broker said one of them moved.
    pub(crate) fn forget(&self, topic: &str) {
        let mut t = self.lock();
        if t.leaders.remove(topic).is_some() {
            t.version += 1;
        }
    }

    /// Changes with every update.
    pub(crate) fn version(&self) -> u64 {
        self.lock().version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::messages::{BrokerMetadata, PartitionMetadata, TopicMetadata};

    fn metadata(host: &str) -> MetadataResponse {
        MetadataResponse {
            brokers: vec![
                BrokerMetadata {
                    node_id: 1,
                    host: host.into(),
                    port: 7001,
                    rack: None,
                },
                BrokerMetadata {
                    node_id: 2,
                    host: "10.0.0.2".into(),
                    port: 7002,
                    rack: None,
                },
            ],
            topics: vec![TopicMetadata {
                name: "t".into(),
                partitions: vec![
                    PartitionMetadata {
                        partition: 1,
                        leader_id: 2,
                        leader_epoch: 7,
                        ..Default::default()
                    },
                    PartitionMetadata {
                        partition: 0,
                        leader_id: 1,
                        ..Default::default()
                    },
                    PartitionMetadata {
                        partition: 2,
                        leader_id: -1,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            cluster_id: None,
        }
    }

    #[test]
    fn leaders_by_partition_index_and_unspecified_hosts_replaced() {
        let r = Routes::default();
        r.learn(&metadata("0.0.0.0"), "broker.example:7000");
        assert_eq!(r.leader("t", 0), Some((1, "broker.example:7001".into())));
        assert_eq!(r.leader("t", 1), Some((2, "10.0.0.2:7002".into())));
        assert_eq!(r.leader("t", 2), None, "no leader");
        assert_eq!(r.leader_epoch("t", 1), Some(7));
        assert_eq!(r.leader_epoch("t", 0), Some(0));
        assert_eq!(r.leader_epoch("t", 2), None, "no leader, no epoch");
        assert_eq!(r.leader("t", 3), None, "no such partition");
        assert_eq!(r.leader("t", -1), None);
        assert_eq!(r.leader("u", 0), None);
        let v = r.version();
        r.forget("t");
        assert!(r.version() > v);
        assert_eq!(r.leader("t", 0), None);
        assert_eq!(r.broker(2).as_deref(), Some("10.0.0.2:7002"));
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        let r = Routes::default();
        r.learn(&metadata("::1"), "[::1]:7000");
        assert_eq!(r.broker(1).as_deref(), Some("[::1]:7001"));
        r.learn(&metadata("::"), "[::1]:7000");
        assert_eq!(r.broker(1).as_deref(), Some("[::1]:7001"));
    }
}
