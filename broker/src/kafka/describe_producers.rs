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

use super::{OwnerCall, RoutedPartition};
use crate::shard::Shard;

/// The producers a partition's leader remembers, or an error.
pub type Found = Result<Vec<tern_storage::producers::ProducerView>, i16>;

/// On the owner shard: the producers of `part`.
pub fn producers(shard: &Shard, part: RoutedPartition) -> Found {
    let readable = shard.readable_partition(&part.topic, part.topic_id, part.partition, -1, false);
    readable.map(|(log, _, _)| log.producers())
}

pub async fn handle(shard: &Rc<Shard>, req: DescribeProducersRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let asked = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partition_indexes
                .iter()
                .map(move |&p| (t.name.0.as_str(), p))
        })
        .map(|(name, p)| match meta.route(name, p) {
            Some(route) => {
                let part = RoutedPartition {
                    topic: name.to_string(),
                    topic_id: route.topic_id,
                    partition: p,
                };
                Ok((route.owner, part))
            }
            None => Err(Err(ResponseError::UnknownTopicOrPartition.code())),
        })
        .collect();
    let answers = shard
        .on_owners(asked, |parts, answers| OwnerCall::DescribeProducers {
            parts,
            answers,
        })
        .await;
    let mut answers = answers.into_iter();
    let mut topics = Vec::new();
    for t in req.topics {
        let partitions = t
            .partition_indexes
            .iter()
            .zip(answers.by_ref())
            .map(|(&p, found)| {
                let response = PartitionResponse::default().with_partition_index(p);
                match found {
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
                }
            })
            .collect();
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::DescribeProducers(DescribeProducersResponse::default().with_topics(topics))
}
