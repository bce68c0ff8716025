//! The calls a request's handler sends to the shard coordinating its transactional id (or,
//! for ListTransactions, to every shard).

use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use std::rc::Rc;

use tern_protocol::txn_records::TxnStatus;

use super::{machine, TxnMeta};
use crate::shard::{Shard, ShardCall};

/// The answer to an operation on a transactional id: its result, or a Kafka error code.
type Answer<T> = oneshot::Sender<Result<T, i16>>;

/// A call to a shard's transaction coordinator.
pub enum TxnCall {
    /// An operation on transactional id `id`, whose state is partition `partition` of
    /// `__transaction_state`, once that partition is loaded.
    Id {
        partition: i32,
        id: String,
        op: TxnOp,
    },
    /// The transactions the shard coordinates, filtered (ListTransactions).
    List {
        filter: ListFilter,
        answer: oneshot::Sender<Vec<(String, i64, &'static str)>>,
    },
}

/// What ListTransactions asks for: states (empty: any), producer ids (empty: any), and
/// transactions running longer than `min_duration_ms` at `now_ms` (-1: any).
pub struct ListFilter {
    pub states: Vec<String>,
    pub producers: Vec<i64>,
    pub min_duration_ms: i64,
    pub now_ms: i64,
}

/// An operation on one transactional id.
pub enum TxnOp {
    /// InitProducerId: the producer's id and epoch.
    Init {
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        answer: Answer<(i64, i16)>,
    },
    /// AddPartitionsToTxn / AddOffsetsToTxn.
    AddPartitions {
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
        answer: Answer<()>,
    },
    /// EndTxn.
    End {
        producer_id: i64,
        epoch: i16,
        commit: bool,
        answer: Answer<()>,
    },
    /// A transactional produce's partition is in the producer's open transaction (KIP-890).
    Verify {
        producer_id: i64,
        epoch: i16,
        topic: String,
        partition: i32,
        answer: Answer<()>,
    },
    /// DescribeTransactions.
    Describe { answer: Answer<TxnMeta> },
}

impl TxnCall {
    /// Runs the call on the coordinator shard and sends its answer.
    pub async fn run(self, shard: Rc<Shard>) {
        match self {
            TxnCall::Id { partition, id, op } => match shard.txns.check_loaded(partition) {
                Ok(()) => op.run(&shard, partition, &id).await,
                Err(code) => op.refuse(code),
            },
            TxnCall::List { filter, answer } => {
                let _ = answer.send(list(&shard, &filter));
            }
        }
    }
}

impl TxnOp {
    async fn run(self, shard: &Rc<Shard>, partition: i32, id: &str) {
        match self {
            TxnOp::Init {
                timeout_ms,
                expected,
                answer,
            } => {
                let result = super::init_producer(shard, partition, id, timeout_ms, expected);
                let _ = answer.send(result.await);
            }
            TxnOp::AddPartitions {
                producer_id,
                epoch,
                partitions,
                answer,
            } => {
                let result =
                    super::add_partitions(shard, partition, id, producer_id, epoch, partitions);
                let _ = answer.send(result.await);
            }
            TxnOp::End {
                producer_id,
                epoch,
                commit,
                answer,
            } => {
                let result = super::end_txn(shard, partition, id, producer_id, epoch, commit);
                let _ = answer.send(result.await);
            }
            TxnOp::Verify {
                producer_id,
                epoch,
                topic,
                partition,
                answer,
            } => {
                let current = shard.txns.get(id);
                let result =
                    machine::verify(current.as_ref(), producer_id, epoch, &topic, partition);
                let _ = answer.send(result);
            }
            TxnOp::Describe { answer } => {
                let found = shard.txns.get(id);
                let _ = answer.send(found.ok_or(ResponseError::TransactionalIdNotFound.code()));
            }
        }
    }

    /// Answers with `code` (the coordinator's state is not loaded).
    fn refuse(self, code: i16) {
        match self {
            TxnOp::Init { answer, .. } => drop(answer.send(Err(code))),
            TxnOp::AddPartitions { answer, .. }
            | TxnOp::End { answer, .. }
            | TxnOp::Verify { answer, .. } => drop(answer.send(Err(code))),
            TxnOp::Describe { answer } => drop(answer.send(Err(code))),
        }
    }
}

/// `(transactional id, producer id, state)` of the transactions this shard coordinates that
/// `filter` lets through.
fn list(shard: &Shard, filter: &ListFilter) -> Vec<(String, i64, &'static str)> {
    let ListFilter {
        states,
        producers,
        min_duration_ms,
        now_ms,
    } = filter;
    shard
        .txns
        .all()
        .into_iter()
        .filter(|(_, m)| states.is_empty() || states.iter().any(|f| f == m.status.name()))
        .filter(|(_, m)| producers.is_empty() || producers.contains(&m.producer_id))
        .filter(|(_, m)| {
            *min_duration_ms < 0
                || (m.status == TxnStatus::Ongoing && now_ms - m.start_ms > *min_duration_ms)
        })
        .map(|(id, m)| (id, m.producer_id, m.status.name()))
        .collect()
}

/// Runs an operation (made with the sender of its answer) on the shard coordinating `id`.
pub async fn on_coordinator<T>(
    shard: &Rc<Shard>,
    id: &str,
    op: impl FnOnce(Answer<T>) -> TxnOp,
) -> Result<T, i16> {
    let (owner, partition) = super::coordinator_of(shard, id)?;
    let id = id.to_string();
    shard
        .call(owner, |answer| {
            ShardCall::Txn(TxnCall::Id {
                partition,
                id,
                op: op(answer),
            })
        })
        .await
}
