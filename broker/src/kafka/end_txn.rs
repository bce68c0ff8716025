//! EndTxn: commits or aborts a producer's transaction; answered once every marker is written.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ResponseKind};
use std::rc::Rc;

use crate::shard::Shard;
use crate::txn::{self, TxnOp};

pub async fn handle(shard: &Rc<Shard>, req: EndTxnRequest) -> ResponseKind {
    let id = req.transactional_id.0.to_string();
    let (pid, epoch, commit) = (req.producer_id.0, req.producer_epoch, req.committed);
    let result = txn::on_coordinator(shard, &id, |answer| TxnOp::End {
        producer_id: pid,
        epoch,
        commit,
        answer,
    })
    .await;
    ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(result.err().unwrap_or(0)))
}
