//! The cluster as Kafka clients ask about it: DescribeCluster (the registered brokers) and
//! OffsetForLeaderEpoch, which consumers use to validate their position after a leader change.
//! Every partition has had one leader, at epoch 0, since it was created: any epoch up to 0
//! ends at the log end offset.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::metadata::CLUSTER_ID;
use super::{Kafka, KafkaResponse, Req, kafka_code};

/// The leader epoch of every partition of a single broker.
const LEADER_EPOCH: i32 = 0;

impl Kafka {
    pub(super) fn describe_cluster(
        &self,
        req: &Req,
        _m: DescribeClusterRequest,
    ) -> Result<KafkaResponse, String> {
        let brokers = self
            .kafka_brokers()
            .into_iter()
            .map(|(id, host, port, rack)| {
                DescribeClusterBroker::default()
                    .with_broker_id(id)
                    .with_host(host)
                    .with_port(port)
                    .with_rack(rack)
            })
            .collect();
        let resp = DescribeClusterResponse::default()
            .with_endpoint_type(1)
            .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
            .with_controller_id(BrokerId(self.core.controller_id()))
            .with_brokers(brokers)
            .with_cluster_authorized_operations(i32::MIN);
        req.respond(&resp)
    }

    pub(super) fn offset_for_leader_epoch(
        &self,
        req: &Req,
        m: OffsetForLeaderEpochRequest,
    ) -> Result<KafkaResponse, String> {
        let topics = m
            .topics
            .into_iter()
            .map(|t| {
                let topic = self.core.topics.get(&t.topic.0);
                let image = self.core.image();
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let out = EpochEndOffset::default().with_partition(p.partition);
                        let part = match self.core.leader_partition(
                            &image,
                            topic.as_ref(),
                            &t.topic.0,
                            p.partition,
                        ) {
                            Ok(part) => part,
                            Err((code, _)) => return out.with_error_code(kafka_code(code)),
                        };
                        if p.current_leader_epoch > LEADER_EPOCH {
                            return out.with_error_code(ResponseError::UnknownLeaderEpoch.code());
                        }
                        if p.leader_epoch > LEADER_EPOCH || p.leader_epoch < 0 {
                            return out.with_leader_epoch(-1).with_end_offset(-1);
                        }
                        out.with_leader_epoch(LEADER_EPOCH)
                            .with_end_offset(part.reader().end_offset())
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions)
            })
            .collect();
        req.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
    }
}
