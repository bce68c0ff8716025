//! DescribeGroups: state, protocol and members (with assignments) of each group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::group_call::GroupCall;
use super::{authorized, str_bytes};
use crate::group;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DescribeGroupsRequest, version: i16) -> ResponseKind {
    let operations = authorized::if_requested(req.include_authorized_operations, authorized::GROUP);
    let mut groups = Vec::new();
    for id in req.groups {
        let group_id = id.0.to_string();
        let described = match group::coordinator_of(shard, &group_id) {
            Err(code) => DescribedGroup::default().with_error_code(code),
            Ok((owner, partition)) => {
                let call = Call {
                    partition,
                    group_id,
                    version,
                };
                shard
                    .call_group(owner, |answer| GroupCall::Describe(call, answer))
                    .await
            }
        };
        groups.push(
            described
                .with_group_id(id)
                .with_authorized_operations(operations),
        );
    }
    ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
}

/// DescribeGroups on one group's coordinator shard.
pub struct Call {
    partition: i32,
    group_id: String,
    version: i16,
}

pub type Answer = DescribedGroup;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            version,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return DescribedGroup::default().with_error_code(code);
        }
        let has_offsets = s.groups.has_offsets(&group_id);
        s.groups
            .with_existing(&group_id, |g| {
                let protocol = g.protocol.clone().unwrap_or_default();
                DescribedGroup::default()
                    .with_group_state(str_bytes(g.state.name()))
                    .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or("")))
                    .with_protocol_data(str_bytes(&protocol))
                    .with_members(
                        g.members
                            .values()
                            .map(|m| {
                                let d = DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&m.id))
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_member_metadata(m.metadata(&protocol))
                                    .with_member_assignment(m.assignment.clone());
                                if version >= 4 {
                                    d.with_group_instance_id(
                                        m.instance_id.as_deref().map(str_bytes),
                                    )
                                } else {
                                    d
                                }
                            })
                            .collect(),
                    )
            })
            .unwrap_or_else(|| {
                let state = if has_offsets { "Empty" } else { "Dead" };
                let d = DescribedGroup::default().with_group_state(str_bytes(state));
                if version >= 6 && !has_offsets {
                    d.with_error_code(ResponseError::GroupIdNotFound.code())
                } else {
                    d
                }
            })
    }
}
