//! The data path's calls between shards: a request's part on the shard that owns its
//! partitions, one message per owner shard carrying all of that shard's partitions, run there
//! concurrently and answered in the order given.

use futures::channel::oneshot;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::markers::Marker;
use uuid::Uuid;

use super::offset_for_leader_epoch;
use super::produce;
use super::{delete_records, describe_log_dirs, describe_producers, fetch, list_offsets};
use crate::shard::{Shard, ShardCall};

/// The answers to a call's partitions, in the order given.
type Answers<R> = oneshot::Sender<Vec<R>>;

/// A call to the owner shard of the partitions it names.
pub enum OwnerCall {
    /// Append each partition's batch, and wait as `acks` asks.
    Produce {
        parts: Vec<produce::Routed>,
        acks: i16,
        answers: Answers<produce::Outcome>,
    },
    /// Read each partition in order within `budget` bytes (Fetch).
    Read {
        parts: Vec<fetch::ShardRead>,
        budget: usize,
        any_replica: bool,
        committed: bool,
        answers: Answers<(usize, fetch::Read)>,
    },
    /// Answer once one of the partitions has data past its offset, or at `deadline` (Fetch's
    /// long poll).
    Wait {
        parts: Vec<(String, i32, i64)>,
        deadline: Instant,
        committed: bool,
        answer: oneshot::Sender<()>,
    },
    ListOffsets {
        parts: Vec<list_offsets::Asked>,
        committed: bool,
        answers: Answers<list_offsets::Found>,
    },
    OffsetForLeaderEpoch {
        parts: Vec<offset_for_leader_epoch::Asked>,
        answers: Answers<offset_for_leader_epoch::Found>,
    },
    DescribeProducers {
        parts: Vec<RoutedPartition>,
        answers: Answers<describe_producers::Found>,
    },
    /// Move each partition's log start (DeleteRecords).
    DeleteRecords {
        parts: Vec<(RoutedPartition, i64)>,
        timeout: Duration,
        answers: Answers<(i16, i64)>,
    },
    /// The size and lag of each partition the shard holds (DescribeLogDirs).
    LogDirs {
        parts: Vec<(String, i32)>,
        answers: Answers<describe_log_dirs::Found>,
    },
    /// Write a transaction's marker to each partition.
    WriteMarkers {
        marker: Marker,
        parts: Vec<RoutedPartition>,
        answers: Answers<Result<(), i16>>,
    },
}

impl OwnerCall {
    /// Runs the call on the owner shard and sends its answers.
    pub async fn run(self, shard: Rc<Shard>) {
        match self {
            OwnerCall::Produce {
                parts,
                acks,
                answers,
            } => {
                let each = |p| produce::produce_local(shard.clone(), p, acks);
                answer_each(answers, parts, each).await
            }
            OwnerCall::Read {
                parts,
                budget,
                any_replica,
                committed,
                answers,
            } => {
                let reads = fetch::read_owned(shard, parts, budget, any_replica, committed);
                let _ = answers.send(reads.await);
            }
            OwnerCall::Wait {
                parts,
                deadline,
                committed,
                answer,
            } => {
                fetch::wait_local(shard, parts, deadline, committed).await;
                let _ = answer.send(());
            }
            OwnerCall::ListOffsets {
                parts,
                committed,
                answers,
            } => {
                let each = |p| list_offsets::lookup(shard.clone(), p, committed);
                answer_each(answers, parts, each).await
            }
            OwnerCall::OffsetForLeaderEpoch { parts, answers } => {
                let each = |p| offset_for_leader_epoch::lookup(shard.clone(), p);
                answer_each(answers, parts, each).await
            }
            OwnerCall::DescribeProducers { parts, answers } => {
                let each = |p| async { describe_producers::producers(&shard, p) };
                answer_each(answers, parts, each).await
            }
            OwnerCall::DeleteRecords {
                parts,
                timeout,
                answers,
            } => {
                let each = |(p, offset)| delete_records::delete(shard.clone(), p, offset, timeout);
                answer_each(answers, parts, each).await
            }
            OwnerCall::LogDirs { parts, answers } => {
                let _ = answers.send(describe_log_dirs::sizes(&shard, parts));
            }
            OwnerCall::WriteMarkers {
                marker,
                parts,
                answers,
            } => {
                let each = |p| crate::txn::write_owned_marker(shard.clone(), marker, p);
                answer_each(answers, parts, each).await
            }
        }
    }
}

/// Answers each part, run concurrently, in the order given.
async fn answer_each<I, R, Fut>(answers: Answers<R>, parts: Vec<I>, each: impl Fn(I) -> Fut)
where
    Fut: std::future::Future<Output = R>,
{
    let found = futures::future::join_all(parts.into_iter().map(each)).await;
    let _ = answers.send(found);
}

impl Shard {
    /// Sends `call` (made with the sender of its answer) to shard `owner` (run inline if that
    /// is this shard) and returns its answer.
    pub async fn call_owner<T>(
        self: &Rc<Self>,
        owner: usize,
        call: impl FnOnce(oneshot::Sender<T>) -> OwnerCall,
    ) -> T {
        self.call(owner, |answer| ShardCall::Owner(call(answer)))
            .await
    }

    /// Answers the parts of a request that touches partitions on several shards: each
    /// `Ok((owner, part))` goes to its owner shard, one call per owner shard carrying all of
    /// its parts (made by `call` from them and the sender of their answers); an
    /// `Err(answer)` is answered already. Returns the answers in the parts' order.
    pub async fn on_owners<I, R>(
        self: &Rc<Self>,
        parts: Vec<Result<(usize, I), R>>,
        call: impl Fn(Vec<I>, Answers<R>) -> OwnerCall,
    ) -> Vec<R> {
        let mut out: Vec<Option<R>> = Vec::with_capacity(parts.len());
        let mut by_owner: std::collections::BTreeMap<usize, (Vec<usize>, Vec<I>)> =
            Default::default();
        for (i, part) in parts.into_iter().enumerate() {
            match part {
                Ok((owner, part)) => {
                    let (at, parts) = by_owner.entry(owner).or_default();
                    at.push(i);
                    parts.push(part);
                    out.push(None);
                }
                Err(answer) => out.push(Some(answer)),
            }
        }
        let calls = by_owner.into_iter().map(|(owner, (at, parts))| {
            let answers = self.call_owner(owner, |tx| call(parts, tx));
            async move { at.into_iter().zip(answers.await) }
        });
        for (i, answer) in futures::future::join_all(calls).await.into_iter().flatten() {
            out[i] = Some(answer);
        }
        out.into_iter()
            .map(|a| a.expect("an owner answers each part it was given (`answer_each`)"))
            .collect()
    }
}

/// A partition as a request names it, with the id of the topic it was routed for
/// (`metadata::Route`).
#[derive(Debug, Clone)]
pub struct RoutedPartition {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
}
