//! OffsetCommit: validated against the group's generation, stored durably in
//! `__consumer_offsets` before it is acknowledged.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::group_call::GroupCall;
use super::now_ms;
use crate::group::records::{Committed, GroupRecord};
use crate::group::state::GroupState;
use crate::group::{self};
use crate::metadata::ClusterMeta;
use crate::shard::Shard;

/// `offset.metadata.max.bytes`.
const MAX_METADATA: usize = 4096;

/// One partition of an offset commit (OffsetCommit or TxnOffsetCommit).
pub(super) struct CommitPart<'a> {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<&'a str>,
}

/// The record storing `part` (committed now) as `group`'s offset of `topic`, or why not: the
/// partition does not exist, or the metadata is too large.
pub(super) fn offset_record(
    meta: &ClusterMeta,
    group: &str,
    topic: &str,
    part: CommitPart,
) -> Result<GroupRecord, i16> {
    if meta.owner(topic, part.partition).is_none() {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    let metadata = part.metadata.unwrap_or("");
    if metadata.len() > MAX_METADATA {
        return Err(ResponseError::OffsetMetadataTooLarge.code());
    }
    Ok(GroupRecord::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition: part.partition,
        value: Some(Committed {
            offset: part.offset,
            leader_epoch: part.leader_epoch,
            metadata: metadata.to_string(),
            commit_timestamp: now_ms(),
        }),
    })
}

/// The records to store of a commit planned per partition (the others answer their error).
pub(super) fn records_to_store(planned: &[Vec<Result<GroupRecord, i16>>]) -> Vec<GroupRecord> {
    planned
        .iter()
        .flatten()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect()
}

/// A partition's answer: its own error, else the store's.
pub(super) fn partition_error(planned: &Result<GroupRecord, i16>, stored: &Result<(), i16>) -> i16 {
    match (planned, stored) {
        (Err(code), _) | (Ok(_), Err(code)) => *code,
        (Ok(_), Ok(())) => 0,
    }
}

/// Whether this member may commit now: simple (no generation) commits only to groups without
/// members, group members only in the current generation.
pub(super) fn check_generation(
    shard: &Shard,
    group: &str,
    member: &str,
    instance: Option<&str>,
    generation: i32,
) -> Result<(), i16> {
    // Consumer-protocol groups: the member's epoch stands for the generation.
    let consumer = shard.groups.with_existing_consumer_group(group, |g| {
        if generation < 0 && member.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId.code())
            };
        }
        g.check_commit(member, generation).map_err(|e| e.code())
    });
    if let Some(result) = consumer {
        return result;
    }
    let check = shard.groups.with_existing(group, |g| {
        // A commit from outside the group (AlterConsumerGroupOffsets) to a group with members:
        // Kafka answers UNKNOWN_MEMBER_ID, for classic groups as for consumer-protocol ones.
        if generation < 0 && member.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId.code())
            };
        }
        g.check_member(member, instance).map_err(|e| e.code())?;
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration.code());
        }
        // Members may still commit while a rebalance is being prepared (on revocation),
        // not between the join and the new assignment.
        if g.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress.code());
        }
        Ok(())
    });
    match check {
        Some(result) => result,
        None if generation < 0 => Ok(()),
        None => Err(ResponseError::IllegalGeneration.code()),
    }
}

pub async fn handle(shard: &Rc<Shard>, req: OffsetCommitRequest) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let meta = shard.meta.snapshot();
    // Per partition: Ok(record) to store, or an error code.
    let mut planned: Vec<Vec<Result<GroupRecord, i16>>> = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        planned.push(
            t.partitions
                .iter()
                .map(|p| {
                    let part = CommitPart {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_deref(),
                    };
                    offset_record(&meta, &group_id, &topic, part)
                })
                .collect(),
        );
    }
    let records = records_to_store(&planned);
    let member = req.member_id.to_string();
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id_or_member_epoch;
    let group = group_id.clone();
    let stored: Result<(), i16> = match group::coordinator_of(shard, &group_id) {
        Err(code) => Err(code),
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group,
                member,
                instance,
                generation,
                records,
            };
            shard
                .call_group(owner, |answer| GroupCall::OffsetCommit(call, answer))
                .await
        }
    };
    let topics = req
        .topics
        .iter()
        .zip(planned)
        .map(|(t, results)| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(results)
                        .map(|(p, r)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(partition_error(&r, &stored))
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
}

/// OffsetCommit on the group's coordinator shard: stores `records` once the member is checked.
pub struct Call {
    partition: i32,
    group: String,
    member: String,
    instance: Option<String>,
    generation: i32,
    records: Vec<GroupRecord>,
}

pub type Answer = Result<(), i16>;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group,
            member,
            instance,
            generation,
            records,
        } = self;
        s.groups.check_loaded(partition)?;
        check_generation(&s, &group, &member, instance.as_deref(), generation)?;
        group::store(&s, partition, records).await
    }
}
