//! AddPartitionsToTxn (v0-3, as producers send it): partitions join a producer's transaction
//! before it writes to them.

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use crate::shard::Shard;
use crate::txn::{self, TxnOp};

pub async fn handle(shard: &Rc<Shard>, req: AddPartitionsToTxnRequest) -> ResponseKind {
    let id = req.v3_and_below_transactional_id.0.to_string();
    let meta = shard.meta.snapshot();
    let wanted: Vec<(String, i32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect();
    let unknown = |t: &str, p: i32| meta.owner(t, p).is_none() || t == txn::TXN_TOPIC;
    // As Kafka: if any partition is unknown, it gets UNKNOWN_TOPIC_OR_PARTITION and nothing
    // is added (the others: OPERATION_NOT_ATTEMPTED).
    let any_unknown = wanted.iter().any(|(t, p)| unknown(t, *p));
    let result = if any_unknown {
        Err(ResponseError::OperationNotAttempted.code())
    } else {
        let (pid, epoch) = (
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
        );
        txn::on_coordinator(shard, &id, |answer| TxnOp::AddPartitions {
            producer_id: pid,
            epoch,
            partitions: wanted,
            answer,
        })
        .await
    };
    let topics = req
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let name = t.name.0.to_string();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            let code = match result {
                                Ok(()) => 0,
                                Err(_) if unknown(&name, p) => {
                                    ResponseError::UnknownTopicOrPartition.code()
                                }
                                Err(code) => code,
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics),
    )
}
