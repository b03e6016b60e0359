//! Metadata and FindCoordinator: where topics, partitions and group coordinators are. Topics,
//! leaders and brokers come from the metadata image ([`crate::core::metadata`]); a group's
//! coordinator is the leader of its `__consumer_offsets` partition, answered with its Kafka
//! address (`__consumer_offsets` is created on the first FindCoordinator that needs it).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strom_protocol::ErrorCode;
use strom_protocol::topic::is_internal_topic;
use uuid::Uuid;

use super::{Kafka, KafkaResponse, Req, kafka_code};
use crate::core::Failure;
use crate::core::metadata::host_port;

/// The cluster id Metadata reports (a single broker is its own cluster; the cluster work gives
/// it a real id).
pub(super) const CLUSTER_ID: &str = "strom";

/// A topic a Metadata request asks about.
enum Wanted {
    Name(String),
    /// Named by an id no topic has.
    UnknownId(Uuid),
}

impl Kafka {
    fn node(&self) -> BrokerId {
        BrokerId(self.core.broker_id())
    }

    /// The registered brokers with a Kafka listener, as Metadata lists them.
    pub(super) fn kafka_brokers(&self) -> Vec<(BrokerId, StrBytes, i32, Option<StrBytes>)> {
        self.core
            .brokers()
            .into_iter()
            .filter_map(|b| {
                let addr = b.endpoints.kafka.as_deref()?;
                let (host, port) = host_port(addr)?;
                Some((
                    BrokerId(b.id),
                    StrBytes::from_string(host.to_string()),
                    i32::from(port),
                    b.rack.map(StrBytes::from_string),
                ))
            })
            .collect()
    }

    fn host(&self) -> StrBytes {
        StrBytes::from_string(self.advertised.ip().to_string())
    }

    pub(super) async fn metadata(
        &self,
        req: &Req,
        m: MetadataRequest,
    ) -> Result<KafkaResponse, String> {
        // Version 0 asks for every topic with an empty list; later versions with a null one.
        let wanted: Option<Vec<Wanted>> = match m.topics {
            None => None,
            Some(t) if t.is_empty() && req.version == 0 => None,
            Some(t) => {
                let mut wanted = Vec::with_capacity(t.len());
                for t in t {
                    wanted.push(match t.name {
                        Some(n) => Wanted::Name(n.0.to_string()),
                        // Before version 10 a topic name is not nullable: the request is
                        // malformed, and Kafka closes the connection.
                        None if req.version < 10 => {
                            return Err(format!(
                                "a Metadata v{} request names a topic with a null name",
                                req.version
                            ));
                        }
                        // From version 10 a topic may be named by its id alone.
                        None => match self.core.topic_name_by_id(t.topic_id.as_bytes()) {
                            Some(name) => Wanted::Name(name),
                            None => Wanted::UnknownId(t.topic_id),
                        },
                    });
                }
                Some(wanted)
            }
        };
        // Before version 4 a client could not ask for auto-creation, and every Metadata did it.
        let auto_create = req.version < 4 || m.allow_auto_topic_creation;
        let wanted = match wanted {
            Some(wanted) => {
                if auto_create {
                    let names: Vec<String> = wanted
                        .iter()
                        .filter_map(|w| match w {
                            Wanted::Name(n) => Some(n.clone()),
                            Wanted::UnknownId(_) => None,
                        })
                        .collect();
                    self.core.auto_create(&names).await;
                }
                wanted
            }
            None => self
                .core
                .topic_names()
                .into_iter()
                .map(Wanted::Name)
                .collect(),
        };
        let topics = wanted
            .iter()
            .map(|w| match w {
                Wanted::Name(n) => self.topic_metadata(n),
                Wanted::UnknownId(id) => MetadataResponseTopic::default()
                    .with_topic_id(*id)
                    .with_error_code(kafka_protocol::ResponseError::UnknownTopicId.code()),
            })
            .collect();
        let brokers = self
            .kafka_brokers()
            .into_iter()
            .map(|(id, host, port, rack)| {
                MetadataResponseBroker::default()
                    .with_node_id(id)
                    .with_host(host)
                    .with_port(port)
                    .with_rack(rack)
            })
            .collect();
        let resp = MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
            .with_controller_id(BrokerId(self.core.controller_id()))
            .with_topics(topics);
        req.respond(&resp)
    }

    fn topic_metadata(&self, name: &str) -> MetadataResponseTopic {
        let out = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
            .with_is_internal(is_internal_topic(name));
        let view = match self.core.topic_view(name) {
            Ok(view) => view,
            Err(code) => return out.with_error_code(kafka_code(code)),
        };
        let ids = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect::<Vec<_>>();
        out.with_topic_id(Uuid::from_bytes(view.id))
            .with_partitions(
                view.partitions
                    .iter()
                    .map(|p| {
                        let code = if p.leader < 0 {
                            kafka_code(ErrorCode::LeaderNotAvailable)
                        } else {
                            0
                        };
                        MetadataResponsePartition::default()
                            .with_error_code(code)
                            .with_partition_index(p.index)
                            .with_leader_id(BrokerId(p.leader))
                            .with_leader_epoch(p.leader_epoch)
                            .with_replica_nodes(ids(&p.replicas))
                            .with_isr_nodes(ids(&p.isr))
                    })
                    .collect(),
            )
    }

    /// Where `key`'s coordinator is: (node, host, port) on the Kafka listener, or the error.
    /// Key type 1 (a transactional id) has no coordinator placement yet: this broker answers,
    /// as it always did.
    async fn coordinator_for(
        &self,
        key_type: i8,
        key: &str,
    ) -> Result<(BrokerId, StrBytes, i32), Failure> {
        if key_type == 1 {
            return Ok((self.node(), self.host(), i32::from(self.advertised.port())));
        }
        let broker = self.core.find_coordinator(key).await?;
        let addr = broker
            .endpoints
            .kafka
            .as_deref()
            .and_then(host_port)
            .ok_or_else(|| {
                (
                    ErrorCode::CoordinatorNotAvailable,
                    format!(
                        "the coordinator of {key}, broker {}, has no Kafka listener",
                        broker.id
                    ),
                )
            })?;
        Ok((
            BrokerId(broker.id),
            StrBytes::from_string(addr.0.to_string()),
            i32::from(addr.1),
        ))
    }

    pub(super) async fn find_coordinator(
        &self,
        req: &Req,
        m: FindCoordinatorRequest,
    ) -> Result<KafkaResponse, String> {
        let resp = if req.version >= 4 {
            // Version 4 asks for many keys at once and gets one entry per key.
            let mut coordinators = Vec::with_capacity(m.coordinator_keys.len());
            for key in m.coordinator_keys {
                let out = Coordinator::default();
                coordinators.push(match self.coordinator_for(m.key_type, &key).await {
                    Ok((node, host, port)) => out
                        .with_key(key)
                        .with_node_id(node)
                        .with_host(host)
                        .with_port(port),
                    Err((code, msg)) => out
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(kafka_code(code))
                        .with_error_message(Some(StrBytes::from_string(msg))),
                });
            }
            FindCoordinatorResponse::default().with_coordinators(coordinators)
        } else {
            let out = FindCoordinatorResponse::default();
            match self.coordinator_for(m.key_type, &m.key).await {
                Ok((node, host, port)) => out.with_node_id(node).with_host(host).with_port(port),
                Err((code, msg)) => out
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(kafka_code(code))
                    .with_error_message(Some(StrBytes::from_string(msg))),
            }
        };
        req.respond(&resp)
    }
}
