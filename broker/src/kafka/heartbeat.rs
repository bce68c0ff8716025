//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Instant;

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
            shard
                .run_on(owner, move |s| async move {
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
                })
                .await
        }
    };
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error))
}
