//! DescribeTransactions: the state of transactional ids, each from its coordinator.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, ResponseKind,
};
use std::collections::BTreeMap;
use std::rc::Rc;

use super::{str_bytes, topic_name};
use crate::shard::Shard;
use crate::txn::{self, TxnOp};

pub async fn handle(shard: &Rc<Shard>, req: DescribeTransactionsRequest) -> ResponseKind {
    let mut states = Vec::new();
    for id in req.transactional_ids {
        let name = id.0.to_string();
        let found = txn::on_coordinator(shard, &name, |answer| TxnOp::Describe { answer }).await;
        let state = TransactionState::default().with_transactional_id(id);
        states.push(match found {
            Err(code) => state.with_error_code(code),
            Ok(m) => {
                let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &m.partitions {
                    topics.entry(t).or_default().push(*p);
                }
                state
                    .with_transaction_state(str_bytes(m.status.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.start_ms)
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(t, ps)| {
                                TopicData::default()
                                    .with_topic(topic_name(t))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    )
            }
        });
    }
    ResponseKind::DescribeTransactions(
        DescribeTransactionsResponse::default().with_transaction_states(states),
    )
}
