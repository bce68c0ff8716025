//! DeleteRecords: moves partitions' log start offsets forward (records before it are gone).

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::produce::log_error_code;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
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
                        let Some(log) = s.partition(&topic, partition) else {
                            return (ResponseError::NotLeaderOrFollower.code(), -1);
                        };
                        match log.delete_records(offset).await {
                            Ok(start) => (0, start),
                            Err(e) => (log_error_code(&e), -1),
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
