//! ListOffsets: earliest, latest, max timestamp, or the first offset at or after a timestamp.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::HashMap;
use std::rc::Rc;

use super::produce::log_error_code;
use super::{OwnerCall, RoutedPartition};
use crate::shard::Shard;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// A partition's offset asked for: at `timestamp` (or a special one: latest, earliest, ...),
/// by a client that knows `current_leader_epoch`.
pub struct Asked {
    part: RoutedPartition,
    timestamp: i64,
    current_leader_epoch: i32,
}

/// `(error, timestamp, offset, leader epoch)`.
pub type Found = (i16, i64, i64, i32);

/// Looks an offset up on the owner shard. A `committed` (read_committed) client is answered
/// within the last stable offset.
pub async fn lookup(shard: Rc<Shard>, asked: Asked, committed: bool) -> Found {
    let Asked {
        part,
        timestamp,
        current_leader_epoch,
    } = asked;
    let readable = shard.readable_partition(
        &part.topic,
        part.topic_id,
        part.partition,
        current_leader_epoch,
        false,
    );
    let (log, epoch, _) = match readable {
        Ok(found) => found,
        Err(code) => return (code, -1, -1, -1),
    };
    let readable = match committed {
        true => log.last_stable_offset(),
        false => log.high_watermark(),
    };
    let (error, timestamp, offset) = match timestamp {
        LATEST => (0, -1, readable),
        EARLIEST | EARLIEST_LOCAL => (0, -1, log.log_start_offset()),
        MAX_TIMESTAMP => match log.max_timestamp().await {
            Ok(Some((ts, offset))) if offset < readable => (0, ts, offset),
            Ok(_) => (0, -1, -1),
            Err(e) => (log_error_code(&e), -1, -1),
        },
        ts if ts < 0 => (ResponseError::InvalidRequest.code(), -1, -1),
        ts => match log.find_timestamp(ts).await {
            Ok(Some((ts, offset))) if offset < readable => (0, ts, offset),
            Ok(_) => (0, -1, -1),
            Err(e) => (log_error_code(&e), -1, -1),
        },
    };
    (error, timestamp, offset, epoch)
}

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ResponseKind {
    let meta = shard.meta.snapshot();
    // A partition named more than once in one request gets INVALID_REQUEST in every copy, as
    // Kafka answers: which copy's answer a client would keep is otherwise undefined.
    let mut named: HashMap<(&str, i32), u32> = HashMap::new();
    for t in &req.topics {
        for p in &t.partitions {
            *named
                .entry((t.name.0.as_str(), p.partition_index))
                .or_default() += 1;
        }
    }
    let committed = req.isolation_level == 1;
    let mut asked = Vec::new();
    for t in &req.topics {
        let name = t.name.0.as_str();
        for p in &t.partitions {
            let partition = p.partition_index;
            asked.push(
                match (named[&(name, partition)] > 1, meta.route(name, partition)) {
                    (true, _) => Err((ResponseError::InvalidRequest.code(), -1, -1, -1)),
                    (false, None) => {
                        Err((ResponseError::UnknownTopicOrPartition.code(), -1, -1, -1))
                    }
                    (false, Some(route)) => {
                        let part = RoutedPartition {
                            topic: name.to_string(),
                            topic_id: route.topic_id,
                            partition,
                        };
                        let asked = Asked {
                            part,
                            timestamp: p.timestamp,
                            current_leader_epoch: p.current_leader_epoch,
                        };
                        Ok((route.owner, asked))
                    }
                },
            );
        }
    }
    let answers = shard
        .on_owners(asked, |parts, answers| OwnerCall::ListOffsets {
            parts,
            committed,
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
            .map(|(p, (error, timestamp, offset, epoch))| {
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error)
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(if error == 0 && version >= 4 {
                        epoch
                    } else {
                        -1
                    })
            })
            .collect();
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
}
