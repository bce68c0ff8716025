//! The transaction coordinator's decisions, without I/O: given an id's state and a request,
//! what to answer and what state to store next. The driver (`txn/mod.rs`) does the storing,
//! the marker writes and the producer-id allocation these steps ask for, in order; the
//! simulation (`txn/sim.rs`) drives the same steps through crashes and failed writes and
//! checks the invariants after every step.
//!
//! The rules the steps keep:
//! - a state is stored before the coordinator acts on it (memory follows the log);
//! - an end is decided by storing PrepareCommit/PrepareAbort before any marker is written, and
//!   stored complete only after every marker is written: a crash in between finishes the same
//!   decision;
//! - a new epoch (InitProducerId, a timed-out transaction) first ends what the old epoch left
//!   open, so no partition is left with a transaction no marker will end;
//! - a transactional produce is accepted only from the current epoch, with its transaction
//!   open and the partition in it.

use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};
use tern_protocol::txn_records::{StoredTxn, TxnStatus};

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub last_update_ms: i64,
}

impl TxnMeta {
    pub fn stored(&self) -> StoredTxn {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &self.partitions {
            by_topic.entry(t).or_default().push(*p);
        }
        StoredTxn {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            status: self.status,
            partitions: by_topic
                .into_iter()
                .map(|(t, ps)| (t.to_string(), ps))
                .collect(),
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
        }
    }

    pub fn from_stored(s: StoredTxn) -> TxnMeta {
        TxnMeta {
            producer_id: s.producer_id,
            producer_epoch: s.producer_epoch,
            timeout_ms: s.timeout_ms,
            status: s.status,
            partitions: s
                .partitions
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .collect(),
            start_ms: s.start_ms,
            last_update_ms: s.last_update_ms,
        }
    }

    /// Between prepare and complete: its markers are being written.
    pub fn completing(&self) -> bool {
        matches!(
            self.status,
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence
        )
    }
}

/// Faults the simulation injects into the rules, to show its checker catches them.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A transactional produce of an older epoch is accepted.
    VerifyIgnoresEpoch,
    /// A new epoch leaves the old epoch's open transaction as it is.
    InitLeavesOpenTransaction,
    /// An end is stored complete at once, before its markers.
    CompleteBeforeMarkers,
}

#[cfg(test)]
thread_local! {
    pub static MUTATION: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn mutated(m: Mutation) -> bool {
    MUTATION.with(|c| c.get() == Some(m))
}

#[cfg(not(test))]
fn mutated(_: Mutation) -> bool {
    false
}

/// Checks a request's producer id and epoch against the id's state.
pub fn check_producer(
    meta: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
) -> Result<TxnMeta, i16> {
    let meta = meta.ok_or(ResponseError::InvalidProducerIdMapping.code())?;
    if meta.producer_id != producer_id {
        return Err(ResponseError::InvalidProducerIdMapping.code());
    }
    if epoch != meta.producer_epoch {
        return Err(ResponseError::ProducerFenced.code());
    }
    if meta.completing() {
        return Err(ResponseError::ConcurrentTransactions.code());
    }
    Ok(meta.clone())
}

/// What InitProducerId does next, decided from the id's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitStep {
    /// Allocate a producer id (the first for the id, or its epochs are exhausted), then
    /// decide again with it.
    NewProducerId,
    /// Finish this prepared end (markers, then complete), then decide again.
    Complete(TxnMeta),
    /// End this open transaction of an older instance: abort it with this state (the epoch
    /// bumped, fencing that instance), then decide again.
    Abort(TxnMeta),
    /// Store this state and answer with its producer id and epoch.
    Store(TxnMeta),
}

/// InitProducerId: a new producer id (epoch 0) the first time, else the next epoch.
/// `expected`: the (producer id, epoch) a re-initialising producer had (KIP-360), checked on
/// the first decision only; `new_id`: an id allocated after [`InitStep::NewProducerId`].
pub fn init_step(
    current: Option<&TxnMeta>,
    expected: Option<(i64, i16)>,
    new_id: Option<i64>,
    timeout_ms: i32,
    now: i64,
) -> Result<InitStep, i16> {
    if let (Some(m), Some((pid, epoch))) = (current, expected) {
        if m.producer_id != pid || m.producer_epoch != epoch {
            return Err(ResponseError::ProducerFenced.code());
        }
    }
    let (producer_id, epoch) = match current {
        None => match new_id {
            None => return Ok(InitStep::NewProducerId),
            Some(id) => (id, -1),
        },
        Some(m) if m.completing() => return Ok(InitStep::Complete(m.clone())),
        Some(m)
            if m.status == TxnStatus::Ongoing && !mutated(Mutation::InitLeavesOpenTransaction) =>
        {
            return Ok(InitStep::Abort(bump_epoch(m.clone())));
        }
        Some(m) if m.producer_epoch >= i16::MAX - 1 => match new_id {
            None => return Ok(InitStep::NewProducerId),
            Some(id) => (id, -1),
        },
        Some(m) => (m.producer_id, m.producer_epoch),
    };
    Ok(InitStep::Store(TxnMeta {
        producer_id,
        producer_epoch: epoch + 1,
        timeout_ms,
        status: TxnStatus::Empty,
        partitions: BTreeSet::new(),
        start_ms: -1,
        last_update_ms: now,
    }))
}

pub fn bump_epoch(m: TxnMeta) -> TxnMeta {
    TxnMeta {
        producer_epoch: m.producer_epoch.saturating_add(1).min(i16::MAX - 1),
        ..m
    }
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the state with the partitions in the producer's
/// transaction (starting it), or `None` when nothing changes.
pub fn add_partitions(
    current: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    partitions: impl IntoIterator<Item = (String, i32)>,
    now: i64,
) -> Result<Option<TxnMeta>, i16> {
    let meta = check_producer(current, producer_id, epoch)?;
    let mut next = meta.clone();
    if meta.status != TxnStatus::Ongoing {
        next.status = TxnStatus::Ongoing;
        next.start_ms = now;
        next.partitions.clear();
    }
    next.partitions.extend(partitions);
    if next == meta {
        return Ok(None);
    }
    next.last_update_ms = now;
    Ok(Some(next))
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndStep {
    /// A retry of the end that completed: nothing to do.
    Done,
    /// End this open transaction: [`prepare`] it, write its markers, [`complete`] it.
    End(TxnMeta),
}

/// EndTxn: a retry of the end that completed succeeds; ending a transaction that is not open
/// is INVALID_TXN_STATE.
pub fn end_step(
    current: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<EndStep, i16> {
    let meta = check_producer(current, producer_id, epoch)?;
    match (meta.status, commit) {
        (TxnStatus::Ongoing, _) => Ok(EndStep::End(meta)),
        (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(EndStep::Done),
        _ => Err(ResponseError::InvalidTxnState.code()),
    }
}

/// The decided end of `meta`'s transaction, stored before any marker is written.
pub fn prepare(meta: TxnMeta, commit: bool, now: i64) -> TxnMeta {
    let status = match commit {
        true => TxnStatus::PrepareCommit,
        false => TxnStatus::PrepareAbort,
    };
    if mutated(Mutation::CompleteBeforeMarkers) {
        return complete(
            TxnMeta {
                status,
                ..meta.clone()
            },
            now,
        );
    }
    TxnMeta {
        status,
        last_update_ms: now,
        ..meta
    }
}

/// A prepared end, once every marker is written.
pub fn complete(prepared: TxnMeta, now: i64) -> TxnMeta {
    let status = match commits(&prepared) {
        true => TxnStatus::CompleteCommit,
        false => TxnStatus::CompleteAbort,
    };
    TxnMeta {
        status,
        partitions: BTreeSet::new(),
        last_update_ms: now,
        ..prepared
    }
}

/// Whether a prepared end commits.
pub fn commits(prepared: &TxnMeta) -> bool {
    matches!(
        prepared.status,
        TxnStatus::PrepareCommit | TxnStatus::CompleteCommit
    )
}

/// KIP-890's verification of a transactional produce to `topic`-`partition`: the producer
/// must be the id's current one, with its transaction open and the partition added.
pub fn verify(
    current: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    topic: &str,
    partition: i32,
) -> Result<(), i16> {
    let Some(m) = current else {
        return Err(ResponseError::InvalidProducerIdMapping.code());
    };
    if m.producer_id != producer_id {
        return Err(ResponseError::InvalidProducerIdMapping.code());
    }
    let current_epoch = if mutated(Mutation::VerifyIgnoresEpoch) {
        epoch
    } else {
        m.producer_epoch
    };
    if epoch < current_epoch {
        return Err(ResponseError::InvalidProducerEpoch.code());
    }
    let added = m.partitions.contains(&(topic.to_string(), partition));
    if epoch != current_epoch || m.status != TxnStatus::Ongoing || !added {
        return Err(ResponseError::InvalidTxnState.code());
    }
    Ok(())
}

/// What the coordinator's tick does with an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickStep {
    /// Finish its prepared end (a restart, a failed marker write).
    Complete,
    /// Abort its transaction, open past its timeout, with this state (the epoch bumped, which
    /// fences the producer that let it lapse).
    Abort(TxnMeta),
    /// Forget it: unused past `transactional.id.expiration.ms` with nothing open.
    Forget,
}

pub fn tick_step(m: &TxnMeta, now: i64, expiration_ms: i64) -> Option<TickStep> {
    if m.completing() {
        return Some(TickStep::Complete);
    }
    if m.status == TxnStatus::Ongoing && now.saturating_sub(m.start_ms) > i64::from(m.timeout_ms) {
        return Some(TickStep::Abort(bump_epoch(m.clone())));
    }
    let idle = matches!(
        m.status,
        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
    );
    (idle && now.saturating_sub(m.last_update_ms) > expiration_ms).then_some(TickStep::Forget)
}
