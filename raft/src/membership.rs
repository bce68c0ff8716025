use std::collections::BTreeSet;

use crate::{NodeId, Offset};

/// A group's configuration: the voters, and the learners that receive the log without voting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Voters, then learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// One change at a time: each moves at most one voter, so any majority of the old voters and
/// any majority of the new ones overlap (Raft dissertation §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new replica that receives the log but does not vote.
    AddLearner(NodeId),
    /// A learner that has caught up becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves. The leader cannot remove itself: transfer leadership first.
    Remove(NodeId),
}

/// The configurations in a replica's log: the one in effect at the log start and each change
/// after it with its offset. The latest one is in effect whether committed or not; truncating
/// the log reverts to the one before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipLog {
    base: Membership,
    changes: Vec<(Offset, Membership)>,
}

impl MembershipLog {
    pub fn new(base: Membership) -> Self {
        MembershipLog {
            base,
            changes: Vec::new(),
        }
    }

    /// A log of configurations as persisted: the one at the log start, then each change with
    /// its offset, in order.
    pub fn from_parts(base: Membership, changes: Vec<(Offset, Membership)>) -> Self {
        debug_assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
        MembershipLog { base, changes }
    }

    /// The configuration at the log start.
    pub fn base(&self) -> &Membership {
        &self.base
    }

    /// The changes in the log, with their offsets.
    pub fn changes(&self) -> &[(Offset, Membership)] {
        &self.changes
    }

    /// The configuration in effect.
    pub fn current(&self) -> &Membership {
        self.changes.last().map_or(&self.base, |(_, m)| m)
    }

    /// The configuration of a log that ends at `end`.
    pub fn at(&self, end: Offset) -> &Membership {
        let i = self.changes.partition_point(|&(o, _)| o < end);
        if i == 0 {
            &self.base
        } else {
            &self.changes[i - 1].1
        }
    }

    /// The offset of the newest change, if any is in the log.
    pub fn last_change(&self) -> Option<Offset> {
        self.changes.last().map(|&(o, _)| o)
    }

    pub fn push(&mut self, offset: Offset, m: Membership) {
        debug_assert!(self.last_change().is_none_or(|o| o < offset));
        self.changes.push((offset, m));
    }

    /// Forgets changes at and after `end`; returns whether the configuration in effect changed.
    pub fn truncate(&mut self, end: Offset) -> bool {
        let keep = self.changes.partition_point(|&(o, _)| o < end);
        let changed = keep < self.changes.len();
        self.changes.truncate(keep);
        changed
    }

    /// Folds changes before `start` into the base (the log start moved there).
    pub fn trim_front(&mut self, start: Offset) -> bool {
        let fold = self.changes.partition_point(|&(o, _)| o < start);
        if fold == 0 {
            return false;
        }
        self.base = self.changes[fold - 1].1.clone();
        self.changes.drain(..fold);
        true
    }

    /// An empty log restarted with `base` in effect.
    pub fn reset(&mut self, base: Membership) {
        self.base = base;
        self.changes.clear();
    }
}
