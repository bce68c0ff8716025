//! SyncGroup: the leader's assignment completes a rebalance; followers wait for it.

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::messages::{ResponseKind, SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Instant;

use super::group_call::GroupCall;
use super::str_bytes;
use crate::group;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: SyncGroupRequest, version: i16) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    let instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id;
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let (error, assignment, protocol_type, protocol) = match group::coordinator_of(shard, &group_id)
    {
        Err(code) => (code, Bytes::new(), None, None),
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                member_id,
                instance_id,
                generation,
                assignments,
            };
            shard
                .call_group(owner, |answer| GroupCall::Sync(call, answer))
                .await
        }
    };
    let mut resp = SyncGroupResponse::default()
        .with_error_code(error)
        .with_assignment(assignment);
    if version >= 5 {
        resp = resp
            .with_protocol_type(protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(protocol.as_deref().map(str_bytes));
    }
    ResponseKind::SyncGroup(resp)
}

/// SyncGroup on the group's coordinator shard: the member's assignment, with the protocol
/// type and name.
pub struct Call {
    partition: i32,
    group_id: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
}

pub type Answer = (i16, Bytes, Option<String>, Option<String>);

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            member_id,
            instance_id,
            generation,
            assignments,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return (code, Bytes::new(), None, None);
        }
        let (tx, rx) = oneshot::channel();
        let completed = s.groups.with_existing(&group_id, |g| {
            let done = g.sync(
                &member_id,
                instance_id.as_deref(),
                generation,
                assignments,
                Instant::now(),
                tx,
            );
            (
                done.then(|| group::group_record(g)),
                g.protocol_type.clone(),
                g.protocol.clone(),
            )
        });
        let Some((record, protocol_type, protocol)) = completed else {
            return (
                ResponseError::UnknownMemberId.code(),
                Bytes::new(),
                None,
                None,
            );
        };
        if let Some(record) = record {
            if let Err(code) = group::store(&s, partition, vec![record]).await {
                tracing::warn!(group = %group_id, code, "could not store group metadata");
            }
        }
        match rx.await {
            Ok((error, assignment)) => (error, assignment, protocol_type, protocol),
            Err(_) => (
                ResponseError::RebalanceInProgress.code(),
                Bytes::new(),
                None,
                None,
            ),
        }
    }
}
