//! OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ends in the leader's log, so a
//! consumer that saw an older leader can tell whether its position was truncated.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use crate::shard::Shard;

/// `(error, epoch, end offset)` on the owner shard: the largest epoch not above `epoch` in
/// the leader's log and the offset where it ends (the log end for the current epoch). A log of
/// one replica has epoch 0 throughout.
async fn lookup(
    shard: Rc<Shard>,
    topic: String,
    partition: i32,
    current_leader_epoch: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    let (log, leader_epoch) =
        match shard.readable_partition(&topic, partition, current_leader_epoch, false) {
            Ok(found) => found,
            Err(code) => return (code, -1, -1),
        };
    if epoch < 0 {
        return (0, -1, -1);
    }
    match shard.replica_group(&topic, partition) {
        None => (0, leader_epoch, log.end_offset()),
        Some(group) => match shard.replicas().and_then(|r| r.epoch_end(group, epoch)) {
            Some((found, end)) => (0, found, end),
            None => (ResponseError::NotLeaderOrFollower.code(), -1, -1),
        },
    }
}

pub async fn handle(shard: &Rc<Shard>, req: OffsetForLeaderEpochRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let mut topics = Vec::new();
    for t in &req.topics {
        let name = t.topic.0.to_string();
        let lookups = t.partitions.iter().map(|p| {
            let (topic, partition) = (name.clone(), p.partition);
            let (current, epoch) = (p.current_leader_epoch, p.leader_epoch);
            let owner = meta.owner(&name, partition);
            async move {
                match owner {
                    Some(owner) => {
                        shard
                            .run_on(owner, move |s| lookup(s, topic, partition, current, epoch))
                            .await
                    }
                    None => (ResponseError::UnknownTopicOrPartition.code(), -1, -1),
                }
            }
        });
        let results = futures::future::join_all(lookups).await;
        let partitions = t
            .partitions
            .iter()
            .zip(results)
            .map(|(p, (error, epoch, end))| {
                EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_error_code(error)
                    .with_leader_epoch(epoch)
                    .with_end_offset(end)
            })
            .collect();
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions),
        );
    }
    ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default().with_topics(topics))
}
