//! ListGroups: every group on every shard, with the state (v4+) and type (v5+) filters.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse, ResponseKind};
use std::rc::Rc;

use super::group_call::GroupCall;
use super::str_bytes;
use crate::group::state::GroupState;
use crate::shard::Shard;

/// ListGroups on one shard: the groups it coordinates.
pub struct Call;

/// `(group, protocol type, state, type)` of each group.
pub type Answer = Vec<(String, String, &'static str, &'static str)>;

impl Call {
    pub async fn run(self, shard: Rc<Shard>) -> Answer {
        groups_on(&shard)
    }
}

fn groups_on(shard: &Shard) -> Answer {
    shard
        .groups
        .group_ids()
        .into_iter()
        .map(|id| {
            if let Some(state) = shard
                .groups
                .with_existing_consumer_group(&id, |g| g.state())
            {
                return (id, "consumer".to_string(), state, "consumer");
            }
            let (protocol_type, state) = shard
                .groups
                .with_existing(&id, |g| {
                    (g.protocol_type.clone().unwrap_or_default(), g.state.name())
                })
                .unwrap_or_default();
            let state = if state.is_empty() {
                GroupState::Empty.name()
            } else {
                state
            };
            (id, protocol_type, state, "classic")
        })
        .collect()
}

pub async fn handle(shard: &Rc<Shard>, req: ListGroupsRequest, version: i16) -> ResponseKind {
    let mut all = Vec::new();
    for target in 0..shard.shard_count() {
        all.extend(
            shard
                .call_group(target, |answer| GroupCall::List(Call, answer))
                .await,
        );
    }
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = all
        .into_iter()
        .filter(|(_, _, state, _)| states.is_empty() || states.contains(&state.to_lowercase()))
        .filter(|(_, _, _, kind)| types.is_empty() || types.iter().any(|t| t == kind))
        .map(|(id, protocol_type, state, kind)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type));
            if version >= 4 {
                g = g.with_group_state(str_bytes(state));
            }
            if version >= 5 {
                g = g.with_group_type(str_bytes(kind));
            }
            g
        })
        .collect();
    ResponseKind::ListGroups(ListGroupsResponse::default().with_groups(groups))
}
