//! LeaveGroup: one member (v0-v2) or a batch of members (v3+) leave; the rest rebalance.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Instant;

use super::group_call::GroupCall;
use super::str_bytes;
use crate::group;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: LeaveGroupRequest, version: i16) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let request = leaving.clone();
    let (error, errors) = match group::coordinator_of(shard, &group_id) {
        Err(code) => (code, vec![code; leaving.len()]),
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                request,
            };
            shard
                .call_group(owner, |answer| GroupCall::Leave(call, answer))
                .await
        }
    };
    let mut resp = LeaveGroupResponse::default();
    if version >= 3 {
        resp = resp.with_members(
            leaving
                .iter()
                .zip(errors)
                .map(|((id, instance), e)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_error_code(e)
                })
                .collect(),
        );
        if error == ResponseError::CoordinatorNotAvailable.code()
            || error == ResponseError::CoordinatorLoadInProgress.code()
        {
            resp = resp.with_error_code(error);
        }
    } else {
        resp = resp.with_error_code(error);
    }
    ResponseKind::LeaveGroup(resp)
}

/// LeaveGroup on the group's coordinator shard: the error, and each leaving member's.
pub struct Call {
    partition: i32,
    group_id: String,
    request: Vec<(String, Option<String>)>,
}

pub type Answer = (i16, Vec<i16>);

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            request,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return (code, vec![code; request.len()]);
        }
        let config = s.groups.config;
        let outcome = s.groups.with_existing(&group_id, |g| {
            let mut ids = Vec::new();
            let mut errors = Vec::new();
            for (member_id, instance_id) in &request {
                // A static member may leave by instance id alone.
                let resolved = match instance_id {
                    Some(instance) if member_id.is_empty() => g
                        .members
                        .values()
                        .find(|m| m.instance_id.as_deref() == Some(instance.as_str()))
                        .map(|m| m.id.clone())
                        .ok_or(ResponseError::UnknownMemberId),
                    _ => g
                        .check_member(member_id, instance_id.as_deref())
                        .map(|_| member_id.clone()),
                };
                match resolved {
                    Ok(id) => {
                        ids.push(id);
                        errors.push(0);
                    }
                    Err(e) => errors.push(e.code()),
                }
            }
            let changed = g.remove_members(&ids, &config, Instant::now());
            (errors, changed.then(|| group::group_record(g)))
        });
        let Some((errors, record)) = outcome else {
            return (
                ResponseError::UnknownMemberId.code(),
                vec![ResponseError::UnknownMemberId.code(); request.len()],
            );
        };
        if let Some(record) = record {
            let _ = group::store(&s, partition, vec![record]).await;
        }
        // v0-v2 carry one member: its error is the response's.
        let top = if request.len() == 1 { errors[0] } else { 0 };
        (top, errors)
    }
}
