//! Group administration over the Kafka protocol: ListGroups, DescribeGroups, DeleteGroups,
//! read from the core's plain group view (the same one `strom groups` shows). As in Kafka,
//! ListGroups lists the groups this broker coordinates; DescribeGroups and DeleteGroups answer
//! NOT_COORDINATOR (or COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE) for a group
//! this broker does not serve.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{Kafka, KafkaResponse, Req, kafka_code};
use crate::core::groups::view::GroupKind;

/// Kafka's "unknown" authorised-operations value: strom has no ACLs yet.
const NO_OPERATIONS: i32 = i32::MIN;

fn s(text: String) -> StrBytes {
    StrBytes::from_string(text)
}

impl Kafka {
    pub(super) fn list_groups(
        &self,
        req: &Req,
        m: ListGroupsRequest,
    ) -> Result<KafkaResponse, String> {
        let states: Vec<String> = m.states_filter.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = m.types_filter.iter().map(|s| s.to_lowercase()).collect();
        let groups = self
            .core
            .groups
            .list()
            .into_iter()
            .filter(|g| states.is_empty() || states.contains(&g.state.kafka_name().to_lowercase()))
            .filter(|g| {
                let kind = match g.kind {
                    GroupKind::Consumer => "consumer",
                    GroupKind::Classic => "classic",
                };
                types.is_empty() || types.iter().any(|t| t == kind)
            })
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(s(g.name)))
                    .with_protocol_type(s(g.protocol_type))
                    .with_group_state(StrBytes::from_static_str(g.state.kafka_name()))
                    .with_group_type(StrBytes::from_static_str(match g.kind {
                        GroupKind::Consumer => "consumer",
                        GroupKind::Classic => "classic",
                    }))
            })
            .collect();
        req.respond(&ListGroupsResponse::default().with_groups(groups))
    }

    pub(super) fn describe_groups(
        &self,
        req: &Req,
        m: DescribeGroupsRequest,
    ) -> Result<KafkaResponse, String> {
        let core = &self.core;
        let groups = m
            .groups
            .into_iter()
            .map(|id| {
                let out = DescribedGroup::default()
                    .with_authorized_operations(NO_OPERATIONS)
                    .with_group_id(id.clone());
                match core.groups.describe_group(&core.topics, &id.0) {
                    Err((code, _)) => out
                        .with_error_code(kafka_code(code))
                        .with_group_state(StrBytes::from_static_str("Dead")),
                    // Kafka describes an unknown group as Dead, with no error.
                    Ok(None) => out.with_group_state(StrBytes::from_static_str("Dead")),
                    Ok(Some(g)) => out
                        .with_group_state(StrBytes::from_static_str(g.state.kafka_name()))
                        .with_protocol_type(s(g.protocol_type))
                        .with_protocol_data(s(g.assignor))
                        .with_members(
                            g.members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(s(m.id))
                                        .with_group_instance_id(m.instance_id.map(s))
                                        .with_client_id(s(m.client_id))
                                        .with_client_host(s(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        ),
                }
            })
            .collect();
        req.respond(&DescribeGroupsResponse::default().with_groups(groups))
    }

    pub(super) async fn delete_groups(
        &self,
        req: &Req,
        m: DeleteGroupsRequest,
    ) -> Result<KafkaResponse, String> {
        let mut results = Vec::with_capacity(m.groups_names.len());
        for id in m.groups_names {
            let r = self
                .core
                .groups
                .delete_group(&self.core.topics, &id.0)
                .await;
            let code = match r {
                Ok(()) => 0,
                Err((code, _)) => kafka_code(code),
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(code),
            );
        }
        req.respond(&DeleteGroupsResponse::default().with_results(results))
    }
}
