//! Raft per partition, as a pure state machine over the partition log.
//!
//! The crate does no I/O, reads no clock and spawns nothing. A host (the broker's shard) feeds a
//! [`Group`] messages, ticks, proposals and notices that the log was synced, and after each
//! input takes a [`Ready`]: what to persist, what to send, what became committed. The log itself
//! is the Kafka partition log, reached through the [`Log`] trait: a position is a Kafka offset, an
//! entry is a record batch covering `[base, last]`, and its term is the batch's
//! `partitionLeaderEpoch`. [`MultiRaft`] drives many groups on one node and coalesces their
//! heartbeats into one message per node pair per interval.
//!
//! The invariants this relies on, and how they are proven (a seeded deterministic simulator with
//! a checker run after every step, and mutations that the checker must catch), are described in
//! ARCHITECTURE.md ("Replication: Raft per partition").

mod entry;
mod epochs;
mod group;
mod log;
mod membership;
mod message;
mod multi;
mod progress;
mod rng;

#[cfg(test)]
mod paper_tests;
#[cfg(test)]
mod sim;

pub use entry::{Entry, Payload};
pub use epochs::EpochTable;
pub use group::{
    Config, Group, HardState, LeadershipCheck, Meta, ProposeError, Ready, Role, RoleChange,
    SyncToken,
};
pub use log::{Log, MemLog};
pub use membership::{Membership, MembershipChange, MembershipLog};
pub use message::{Body, Message, Reject};
pub use multi::{Envelope, HeartbeatAck, HeartbeatItem, MultiRaft, MultiReady};
pub use progress::{Progress, ProgressState};

/// A node of the cluster (Kafka's broker id).
pub type NodeId = u64;
/// A Raft term; it is the Kafka leader epoch stamped into each batch as `partitionLeaderEpoch`.
pub type Term = u64;
/// A Kafka offset. Ranges are end-exclusive where a field is named `end`.
pub type Offset = u64;
/// A Raft group (one partition) on a node.
pub type GroupId = u64;
