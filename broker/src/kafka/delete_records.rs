//! DeleteRecords: moves partitions' log start offsets forward (records before it are gone).
//! A replicated partition's leader moves its own, then answers once every in-sync replica
//! followed (`cluster/log_start.rs`), with the lowest start among them.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Duration;

use super::produce::log_error_code;
use super::{OwnerCall, RoutedPartition};
use crate::shard::Shard;

/// Moves one partition's log start on its owner shard: `(error, low watermark)`.
pub async fn delete(
    s: Rc<Shard>,
    part: RoutedPartition,
    offset: i64,
    timeout: Duration,
) -> (i16, i64) {
    let not_leader = (ResponseError::NotLeaderOrFollower.code(), -1);
    let Some((log, group)) = s.routed_partition(&part.topic, part.topic_id, part.partition) else {
        return not_leader;
    };
    let replicated = group.map(|g| (g, s.replicas()));
    if let Some((group, replicas)) = &replicated {
        if !replicas.as_ref().is_some_and(|r| r.leads(*group)) {
            return not_leader;
        }
    }
    let start = match log.delete_records(offset).await {
        Ok(start) => start,
        Err(e) => return (log_error_code(&e), -1),
    };
    let Some((group, Some(replicas))) = replicated else {
        return (0, start);
    };
    match replicas
        .replicate_log_start(&s, group, start, timeout)
        .await
    {
        Ok(low) => (0, low),
        Err(e) => (e.code(), -1),
    }
}

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let asked = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.as_str(), p)))
        .map(|(name, p)| match meta.route(name, p.partition_index) {
            Some(route) => {
                let part = RoutedPartition {
                    topic: name.to_string(),
                    topic_id: route.topic_id,
                    partition: p.partition_index,
                };
                Ok((route.owner, (part, p.offset)))
            }
            None => Err((ResponseError::UnknownTopicOrPartition.code(), -1)),
        })
        .collect();
    let answers = shard
        .on_owners(asked, |parts, answers| OwnerCall::DeleteRecords {
            parts,
            timeout,
            answers,
        })
        .await;
    let mut answers = answers.into_iter();
    let mut topics = Vec::new();
    for t in req.topics {
        let partitions = t
            .partitions
            .iter()
            .zip(answers.by_ref())
            .map(|(p, (error, low))| {
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error)
                    .with_low_watermark(low)
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::DeleteRecords(DeleteRecordsResponse::default().with_topics(topics))
}
