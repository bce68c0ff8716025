//! JoinGroup: runs on the group's coordinator shard; answered when the rebalance completes.

use futures::channel::oneshot;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::group_call::GroupCall;
use super::str_bytes;
use crate::group::state::{Join, JoinResult};
use crate::group::{self};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    let rebalance = if req.rebalance_timeout_ms > 0 {
        Duration::from_millis(req.rebalance_timeout_ms as u64)
    } else {
        session
    };
    let join = Join {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id,
        client_host,
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    let result = match group::coordinator_of(shard, &group_id) {
        Err(code) => JoinResult {
            error: code,
            ..JoinResult::error(ResponseError::CoordinatorNotAvailable, &member_id)
        },
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                join,
                member_id,
            };
            shard
                .call_group(owner, |answer| GroupCall::Join(call, answer))
                .await
        }
    };
    let members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let m = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(&id))
                .with_metadata(metadata);
            if version >= 5 {
                m.with_group_instance_id(instance.as_deref().map(str_bytes))
            } else {
                m
            }
        })
        .collect();
    let mut resp = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_protocol_name(result.protocol.as_deref().map(str_bytes))
        .with_leader(str_bytes(&result.leader))
        .with_member_id(str_bytes(&result.member_id))
        .with_members(members);
    if version >= 7 {
        resp = resp.with_protocol_type(result.protocol_type.as_deref().map(str_bytes));
    }
    if version >= 9 {
        resp = resp.with_skip_assignment(result.skip_assignment);
    }
    ResponseKind::JoinGroup(resp)
}

/// JoinGroup on the group's coordinator shard: answered when the rebalance completes.
pub struct Call {
    partition: i32,
    group_id: String,
    join: Join,
    member_id: String,
}

pub type Answer = JoinResult;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            join,
            member_id,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return JoinResult {
                error: code,
                ..JoinResult::error(ResponseError::CoordinatorLoadInProgress, &join.member_id)
            };
        }
        let (tx, rx) = oneshot::channel();
        let config = s.groups.config;
        s.groups
            .with_group(&group_id, |g| g.join(join, &config, Instant::now(), tx));
        rx.await
            .unwrap_or_else(|_| JoinResult::error(ResponseError::UnknownMemberId, &member_id))
    }
}
