//! TxnOffsetCommit: a transactional producer commits a group's offsets inside its transaction
//! (consume-transform-produce). They are stored at once, as transactional records of the
//! producer, and take effect with the transaction's commit marker (dropped on abort).

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ResponseKind, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use std::rc::Rc;

use super::group_call::GroupCall;
use super::offset_commit::{
    check_generation, offset_record, partition_error, records_to_store, CommitPart,
};
use crate::group::records::GroupRecord;
use crate::group::{self, OFFSETS_TOPIC};
use crate::shard::Shard;
use crate::txn;

pub async fn handle(shard: &Rc<Shard>, req: TxnOffsetCommitRequest) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let meta = shard.meta.snapshot();
    let planned: Vec<Vec<Result<GroupRecord, i16>>> = req
        .topics
        .iter()
        .map(|t| {
            let topic = t.name.0.to_string();
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
                .collect()
        })
        .collect();
    let records = records_to_store(&planned);
    let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
    let member = req.member_id.to_string();
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id;
    let group = group_id.clone();
    let txn_id = req.transactional_id.0.to_string();
    let stored: Result<(), i16> = match group::coordinator_of(shard, &group_id) {
        Err(code) => Err(code),
        Ok((owner, partition)) => {
            // The group's offsets partition must be in the producer's open transaction
            // (AddOffsetsToTxn), or no marker would ever settle these offsets.
            let offsets = OFFSETS_TOPIC.to_string();
            match txn::verify_produce(shard, &txn_id, pid, epoch, offsets, partition).await {
                Err(code) => Err(code),
                Ok(()) => {
                    let call = Call {
                        partition,
                        group,
                        member,
                        instance,
                        generation,
                        pid,
                        epoch,
                        records,
                    };
                    shard
                        .call_group(owner, |answer| GroupCall::TxnOffsetCommit(call, answer))
                        .await
                }
            }
        }
    };
    let topics = req
        .topics
        .iter()
        .zip(planned)
        .map(|(t, results)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(results)
                        .map(|(p, r)| {
                            let code = partition_error(&r, &stored);
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
}

/// TxnOffsetCommit on the group's coordinator shard: stores `records` as pending in
/// producer `pid`'s transaction.
pub struct Call {
    partition: i32,
    group: String,
    member: String,
    instance: Option<String>,
    generation: i32,
    pid: i64,
    epoch: i16,
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
            pid,
            epoch,
            records,
        } = self;
        s.groups.check_loaded(partition)?;
        // Producers before KIP-447 send no member: only the transaction
        // binds them.
        if generation >= 0 || !member.is_empty() {
            check_generation(&s, &group, &member, instance.as_deref(), generation)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        group::store_transactional(&s, partition, pid, epoch, records).await
    }
}
