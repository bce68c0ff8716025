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
    (topic, topic_id): (String, uuid::Uuid),
    partition: i32,
    current_leader_epoch: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    let readable =
        shard.readable_partition(&topic, topic_id, partition, current_leader_epoch, false);
    let (log, leader_epoch, group) = match readable {
        Ok(found) => found,
        Err(code) => return (code, -1, -1),
    };
    if epoch < 0 {
        return (0, -1, -1);
    }
    match group {
        None => (0, leader_epoch, log.end_offset()),
        Some(group) => match shard.replicas().and_then(|r| r.epoch_end(group, epoch)) {
            Some((found, end)) => (0, found, end),
            None => (ResponseError::NotLeaderOrFollower.code(), -1, -1),
        },
    }
}

pub async fn handle(shard: &Rc<Shard>, req: OffsetForLeaderEpochRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let asked = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.as_str(), p)))
        .map(|(name, p)| match meta.route(name, p.partition) {
            Some(route) => {
                let item = (
                    (name.to_string(), route.topic_id),
                    p.partition,
                    p.current_leader_epoch,
                    p.leader_epoch,
                );
                Ok((route.owner, item))
            }
            None => Err((ResponseError::UnknownTopicOrPartition.code(), -1, -1)),
        })
        .collect();
    let answers = shard
        .on_owners(asked, |s, (topic, partition, current, epoch)| {
            lookup(s, topic, partition, current, epoch)
        })
        .await;
    let mut answers = answers.into_iter();
    let mut topics = Vec::new();
    for t in &req.topics {
        let partitions = t
            .partitions
            .iter()
            .zip(answers.by_ref())
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
