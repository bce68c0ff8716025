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

use super::{OwnerCall, RoutedPartition};
use crate::shard::Shard;

/// Where a partition's leader epoch `epoch` ends, asked by a client that knows
/// `current_leader_epoch`.
pub struct Asked {
    part: RoutedPartition,
    current_leader_epoch: i32,
    epoch: i32,
}

/// `(error, epoch, end offset)`.
pub type Found = (i16, i32, i64);

/// On the owner shard: the largest epoch not above the one asked in the leader's log and the
/// offset where it ends (the log end for the current epoch). A log of one replica has epoch 0
/// throughout.
pub async fn lookup(shard: Rc<Shard>, asked: Asked) -> Found {
    let Asked {
        part,
        current_leader_epoch,
        epoch,
    } = asked;
    let readable = shard.readable_partition(
        &part.topic,
        part.topic_id,
        part.partition,
        current_leader_epoch,
        false,
    );
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
                let part = RoutedPartition {
                    topic: name.to_string(),
                    topic_id: route.topic_id,
                    partition: p.partition,
                };
                let asked = Asked {
                    part,
                    current_leader_epoch: p.current_leader_epoch,
                    epoch: p.leader_epoch,
                };
                Ok((route.owner, asked))
            }
            None => Err((ResponseError::UnknownTopicOrPartition.code(), -1, -1)),
        })
        .collect();
    let answers = shard
        .on_owners(asked, |parts, answers| OwnerCall::OffsetForLeaderEpoch {
            parts,
            answers,
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
