use bytes::Bytes;

use crate::{Membership, NodeId, Offset, Term};

/// One entry of the Raft log: a record batch covering offsets `[base, last]`, written in `term`.
///
/// Data entries are the producers' batches as opaque bytes. Raft's own entries (a new leader's
/// first entry of its term, configuration changes) take one offset each; the host stores them as
/// Kafka control batches, so consumers skip them as they skip transaction markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub base: Offset,
    pub last: Offset,
    pub term: Term,
    pub payload: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A batch of records, opaque to Raft.
    Data(Bytes),
    /// The first entry of a leader's term (KRaft's LeaderChange control record).
    LeaderChange(NodeId),
    /// A new configuration, in effect from the moment it is in a replica's log.
    Membership(Membership),
}

/// What a control entry counts as against the replication window (its encoded size is small).
const CONTROL_ENTRY_BYTES: usize = 64;

impl Entry {
    /// The offset just after this entry.
    pub fn end(&self) -> Offset {
        self.last + 1
    }

    /// Bytes this entry counts for in replication windows and read limits.
    pub fn bytes(&self) -> usize {
        match &self.payload {
            Payload::Data(b) => b.len(),
            _ => CONTROL_ENTRY_BYTES,
        }
    }
}
