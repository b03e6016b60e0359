//! The cluster as Kafka clients ask about it: DescribeCluster (the registered brokers) and
//! OffsetForLeaderEpoch, which consumers use to validate their position after a leader change:
//! the request's current leader epoch is checked against the metadata image's (older:
//! FENCED_LEADER_EPOCH, newer: UNKNOWN_LEADER_EPOCH), and the answer comes from the log's
//! leader-epoch checkpoint (the largest epoch at or below the one asked that the log holds, and
//! where it ends).

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

    pub(super) async fn offset_for_leader_epoch(
        &self,
        req: &Req,
        m: OffsetForLeaderEpochRequest,
    ) -> Result<KafkaResponse, String> {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let out = EpochEndOffset::default().with_partition(p.partition);
                let answer = match self
                    .core
                    .epoch_end(
                        &t.topic.0,
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    )
                    .await
                {
                    Ok((epoch, end)) => out.with_leader_epoch(epoch).with_end_offset(end),
                    Err((code, _)) => out.with_error_code(kafka_code(code)),
                };
                partitions.push(answer);
            }
            topics.push(
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions),
            );
        }
        req.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
    }
}
