use crate::{Offset, Term};

/// Leader epoch (term) → the first offset written in it: Kafka's leader-epoch checkpoint.
///
/// It answers "which term wrote the entry before this position" for Raft's log matching and
/// Kafka's OffsetForLeaderEpoch (the end offset of an epoch), without reading the log. The epoch
/// starts it lists are batch boundaries, and they are the same on every replica that has entries
/// of that epoch (those entries all come from that epoch's one leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochTable {
    /// The term of the entry just before the first epoch listed (0 for a log that began at 0).
    base_term: Term,
    /// (term, first offset), strictly increasing in both.
    epochs: Vec<(Term, Offset)>,
}

impl EpochTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table as persisted: the term before the first epoch, and the epochs (term, start),
    /// strictly increasing in both.
    pub fn from_parts(base_term: Term, epochs: Vec<(Term, Offset)>) -> Self {
        debug_assert!(epochs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        EpochTable { base_term, epochs }
    }

    /// The term of the entry just before the first epoch listed.
    pub fn base_term(&self) -> Term {
        self.base_term
    }

    /// The epochs listed, oldest first.
    pub fn epochs(&self) -> &[(Term, Offset)] {
        &self.epochs
    }

    /// The term of the entry that holds offset `end - 1` (0 when `end` is 0).
    pub fn term_before(&self, end: Offset) -> Term {
        match self.epochs.partition_point(|&(_, start)| start < end) {
            0 => self.base_term,
            i => self.epochs[i - 1].0,
        }
    }

    /// Where the epoch holding offset `end - 1` starts; `None` when that entry lies before every
    /// epoch listed.
    pub fn start_of_epoch_before(&self, end: Offset) -> Option<Offset> {
        match self.epochs.partition_point(|&(_, start)| start < end) {
            0 => None,
            i => Some(self.epochs[i - 1].1),
        }
    }

    /// The newest term in the table.
    pub fn last_term(&self) -> Term {
        self.epochs.last().map_or(self.base_term, |&(t, _)| t)
    }

    /// Records that an entry of `term` is appended at `start`; a new term opens an epoch.
    /// Returns whether the table changed.
    pub fn observe(&mut self, term: Term, start: Offset) -> bool {
        if term <= self.last_term() {
            debug_assert_eq!(
                term,
                self.last_term(),
                "appending an entry of an older term"
            );
            return false;
        }
        debug_assert!(self.epochs.last().is_none_or(|&(_, s)| s < start));
        self.epochs.push((term, start));
        true
    }

    /// Forgets the epochs of entries at and after `end` (the log was truncated there).
    pub fn truncate(&mut self, end: Offset) -> bool {
        let keep = self.epochs.partition_point(|&(_, start)| start < end);
        let changed = keep < self.epochs.len();
        self.epochs.truncate(keep);
        changed
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch not above `term` and the offset where it
    /// ends in a log that ends at `log_end` (the start of the next epoch, or the log end).
    pub fn end_for(&self, term: Term, log_end: Offset) -> (Term, Offset) {
        let i = self.epochs.partition_point(|&(t, _)| t <= term);
        let end = self.epochs.get(i).map_or(log_end, |&(_, start)| start);
        match i {
            0 => (self.base_term, end),
            _ => (self.epochs[i - 1].0, end),
        }
    }

    /// An empty log restarted at a position whose previous entry had `base_term`.
    pub fn reset(&mut self, base_term: Term) {
        self.base_term = base_term;
        self.epochs.clear();
    }

    /// Drops epochs that end before `start` (the log start moved there); `term_before(start)`
    /// and every answer for later positions stay the same.
    pub fn trim_front(&mut self, start: Offset) -> bool {
        let mut changed = false;
        while self.epochs.len() >= 2 && self.epochs[1].1 <= start {
            self.base_term = self.epochs.remove(0).0;
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> EpochTable {
        let mut t = EpochTable::new();
        t.observe(1, 0);
        t.observe(1, 5);
        t.observe(3, 10);
        t.observe(4, 20);
        t
    }

    #[test]
    fn term_before_positions() {
        let t = table();
        assert_eq!(t.term_before(0), 0);
        assert_eq!(t.term_before(1), 1);
        assert_eq!(t.term_before(10), 1);
        assert_eq!(t.term_before(11), 3);
        assert_eq!(t.term_before(21), 4);
        assert_eq!(t.start_of_epoch_before(15), Some(10));
        assert_eq!(t.start_of_epoch_before(0), None);
    }

    #[test]
    fn end_for_is_offset_for_leader_epoch() {
        let t = table();
        assert_eq!(t.end_for(1, 30), (1, 10));
        assert_eq!(
            t.end_for(2, 30),
            (1, 10),
            "an epoch the log lacks: the one before it"
        );
        assert_eq!(t.end_for(3, 30), (3, 20));
        assert_eq!(
            t.end_for(4, 30),
            (4, 30),
            "the newest epoch ends at the log end"
        );
        assert_eq!(t.end_for(9, 30), (4, 30));
    }

    #[test]
    fn truncate_and_trim() {
        let mut t = table();
        assert!(t.truncate(20));
        assert_eq!(t.last_term(), 3);
        assert!(!t.truncate(25));
        assert!(t.trim_front(12));
        assert_eq!(t.epochs(), &[(3, 10)]);
        assert_eq!(
            t.term_before(10),
            1,
            "the entry before the first listed epoch"
        );
        assert_eq!(t.term_before(12), 3);
    }
}
