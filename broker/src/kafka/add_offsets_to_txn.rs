//! AddOffsetsToTxn: a group's `__consumer_offsets` partition joins a producer's transaction,
//! so the offsets it commits for the group (TxnOffsetCommit) end with the transaction.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, ResponseKind};
use std::rc::Rc;

use crate::group::{self, OFFSETS_TOPIC};
use crate::shard::Shard;
use crate::txn::{self, TxnOp};

pub async fn handle(shard: &Rc<Shard>, req: AddOffsetsToTxnRequest) -> ResponseKind {
    let id = req.transactional_id.0.to_string();
    let result = match group::coordinator_of(shard, &req.group_id.0) {
        Err(code) => Err(code),
        Ok((_, offsets_partition)) => {
            let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
            txn::on_coordinator(shard, &id, |answer| TxnOp::AddPartitions {
                producer_id: pid,
                epoch,
                partitions: vec![(OFFSETS_TOPIC.to_string(), offsets_partition)],
                answer,
            })
            .await
        }
    };
    ResponseKind::AddOffsetsToTxn(
        AddOffsetsToTxnResponse::default().with_error_code(result.err().unwrap_or(0)),
    )
}
