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
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let deletions = t.partitions.iter().map(|p| {
            let (topic, partition, offset) = (name.clone(), p.partition_index, p.offset);
            let owner = meta.owner(&name, partition);
            async move {
                let Some(owner) = owner else {
                    return (ResponseError::UnknownTopicOrPartition.code(), -1);
                };
                shard
                    .run_on(owner, move |s| async move {
                        let not_leader = (ResponseError::NotLeaderOrFollower.code(), -1);
                        let Some(log) = s.partition(&topic, partition) else {
                            return not_leader;
                        };
                        let replicated = s
                            .replica_group(&topic, partition)
                            .map(|g| (g, s.replicas()));
                        if let Some((group, cluster)) = &replicated {
                            if !cluster.as_ref().is_some_and(|c| c.leads(*group)) {
                                return not_leader;
                            }
                        }
                        let start = match log.delete_records(offset).await {
                            Ok(start) => start,
                            Err(e) => return (log_error_code(&e), -1),
                        };
                        let Some((group, Some(cluster))) = replicated else {
                            return (0, start);
                        };
                        match cluster.replicate_log_start(&s, group, start, timeout).await {
                            Ok(low) => (0, low),
                            Err(e) => (e.code(), -1),
                        }
                    })
                    .await
            }
        });
        let results = futures::future::join_all(deletions).await;
        let partitions = t
            .partitions
            .iter()
            .zip(results)
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
