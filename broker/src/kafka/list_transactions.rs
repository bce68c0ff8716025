//! ListTransactions (v0-1): the transactional ids this node coordinates, filtered by state and
//! producer id, from every shard's coordinator.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, ResponseKind, TransactionalId,
};
use std::rc::Rc;
use tern_protocol::txn_records::TxnStatus;

use super::{now_ms, str_bytes};
use crate::shard::{Shard, ShardCall};
use crate::txn::{ListFilter, TxnCall};

/// Every state a filter may name.
const STATES: [TxnStatus; 8] = [
    TxnStatus::Empty,
    TxnStatus::Ongoing,
    TxnStatus::PrepareCommit,
    TxnStatus::PrepareAbort,
    TxnStatus::CompleteCommit,
    TxnStatus::CompleteAbort,
    TxnStatus::Dead,
    TxnStatus::PrepareEpochFence,
];

pub async fn handle(shard: &Rc<Shard>, req: ListTransactionsRequest) -> ResponseKind {
    let known = |s: &str| STATES.iter().any(|t| t.name() == s);
    let unknown: Vec<_> = req
        .state_filters
        .iter()
        .filter(|s| !known(s))
        .cloned()
        .collect();
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let producers: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    // v1: only transactions running longer than this (-1: any).
    let min_duration = req.duration_filter;
    let now = now_ms();
    let per_shard = (0..shard.shard_count()).map(|target| {
        let filter = ListFilter {
            states: states.clone(),
            producers: producers.clone(),
            min_duration_ms: min_duration,
            now_ms: now,
        };
        shard.call(target, |answer| {
            ShardCall::Txn(TxnCall::List { filter, answer })
        })
    });
    let mut listed: Vec<_> = futures::future::join_all(per_shard)
        .await
        .into_iter()
        .flatten()
        .collect();
    listed.sort();
    ResponseKind::ListTransactions(
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(
                listed
                    .into_iter()
                    .map(|(id, pid, state)| {
                        TransactionState::default()
                            .with_transactional_id(TransactionalId(str_bytes(&id)))
                            .with_producer_id(ProducerId(pid))
                            .with_transaction_state(str_bytes(state))
                    })
                    .collect(),
            ),
    )
}
