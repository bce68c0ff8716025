//! DescribeProducers: the producers a partition's leader remembers, with each one's open
//! transaction (how `kafka-transactions.sh find-hanging` finds hanging transactions).

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DescribeProducersRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::new();
        for p in t.partition_indexes {
            let response = PartitionResponse::default().with_partition_index(p);
            let Some(owner) = meta.owner(&name, p) else {
                partitions
                    .push(response.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            let topic = name.clone();
            let found = shard
                .run_on(owner, move |s| async move {
                    s.readable_partition(&topic, p, -1, false)
                        .map(|(log, _)| log.producers())
                })
                .await;
            partitions.push(match found {
                Err(code) => response.with_error_code(code),
                Ok(producers) => response.with_active_producers(
                    producers
                        .into_iter()
                        .map(|v| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(v.producer_id))
                                .with_producer_epoch(v.epoch.into())
                                .with_last_sequence(v.last_sequence)
                                .with_last_timestamp(v.last_timestamp)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(v.txn_start_offset)
                        })
                        .collect(),
                ),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::DescribeProducers(DescribeProducersResponse::default().with_topics(topics))
}
