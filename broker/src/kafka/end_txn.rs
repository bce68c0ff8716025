//! EndTxn: commits or aborts a producer's transaction; answered once every marker is written.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ResponseKind};
use std::rc::Rc;

use crate::shard::Shard;
use crate::txn;

pub async fn handle(shard: &Rc<Shard>, req: EndTxnRequest) -> ResponseKind {
    let id = req.transactional_id.0.to_string();
    let (pid, epoch, commit) = (req.producer_id.0, req.producer_epoch, req.committed);
    let txn_id = id.clone();
    let result = txn::on_coordinator(shard, &id, move |s, partition| async move {
        txn::end_txn(&s, partition, &txn_id, pid, epoch, commit).await
    })
    .await;
    ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(result.err().unwrap_or(0)))
}
