//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Instant;

use super::group_call::GroupCall;
use crate::group;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: HeartbeatRequest) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    let instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id;
    let error = match group::coordinator_of(shard, &group_id) {
        Err(code) => code,
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                member_id,
                instance_id,
                generation,
            };
            shard
                .call_group(owner, |answer| GroupCall::Heartbeat(call, answer))
                .await
        }
    };
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error))
}

/// Heartbeat on the group's coordinator shard.
pub struct Call {
    partition: i32,
    group_id: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
}

pub type Answer = i16;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            member_id,
            instance_id,
            generation,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return code;
        }
        s.groups
            .with_existing(&group_id, |g| {
                g.heartbeat(
                    &member_id,
                    instance_id.as_deref(),
                    generation,
                    Instant::now(),
                )
            })
            .unwrap_or(ResponseError::UnknownMemberId.code())
    }
}
