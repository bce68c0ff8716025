//! DeleteGroups: removes empty groups and their committed offsets (tombstones in
//! `__consumer_offsets`).

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::group_call::GroupCall;
use crate::group::records::GroupRecord;
use crate::group::{self};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> ResponseKind {
    let mut results = Vec::new();
    for id in req.groups_names {
        let group_id = id.0.to_string();
        let error = match group::coordinator_of(shard, &group_id) {
            Err(code) => code,
            Ok((owner, partition)) => {
                let call = Call {
                    partition,
                    group_id,
                };
                shard
                    .call_group(owner, |answer| GroupCall::DeleteGroup(call, answer))
                    .await
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(error),
        );
    }
    ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
}

/// DeleteGroups on one group's coordinator shard.
pub struct Call {
    partition: i32,
    group_id: String,
}

pub type Answer = i16;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return code;
        }
        let members = s.groups.with_existing(&group_id, |g| g.members.len());
        let consumer = s
            .groups
            .with_existing_consumer_group(&group_id, |g| (g.members.len(), g.tombstones()));
        let offsets = s.groups.committed(&group_id);
        if members.is_none() && consumer.is_none() && offsets.is_empty() {
            return ResponseError::GroupIdNotFound.code();
        }
        let consumer_members = consumer.as_ref().map_or(0, |(n, _)| *n);
        if members.unwrap_or(0) > 0 || consumer_members > 0 {
            return ResponseError::NonEmptyGroup.code();
        }
        let mut tombstones: Vec<GroupRecord> = offsets
            .into_keys()
            .map(|(topic, partition)| GroupRecord::Offset {
                group: group_id.clone(),
                topic,
                partition,
                value: None,
            })
            .collect();
        tombstones.push(GroupRecord::Group {
            group: group_id.clone(),
            value: None,
        });
        let consumer_records = consumer.map(|(_, t)| t).unwrap_or_default();
        tombstones.extend(
            consumer_records
                .into_iter()
                .map(|record| GroupRecord::Consumer {
                    group: group_id.clone(),
                    record,
                }),
        );
        match group::store(&s, partition, tombstones).await {
            Ok(()) => {
                s.groups.forget(&group_id);
                0
            }
            Err(code) => code,
        }
    }
}
