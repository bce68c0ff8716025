//! The simulated disk: a log whose entries are durable only once synced, and which a crash cuts
//! back to the synced part plus a random prefix of the rest (the rest lost or torn). Each entry
//! carries a hash of the whole log up to it, so the checker compares logs in O(1).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::log::read_entries;
use crate::rng::Rng;
use crate::{Entry, Log, Offset, Payload};

/// The committed prefix of one group as the checker has seen it: each committed entry's end
/// with the hash of the log up to it (0 → 0 for the empty log).
pub(super) struct CommittedChain {
    pub hashes: BTreeMap<Offset, u64>,
    pub end: Offset,
}

impl CommittedChain {
    pub fn new() -> Self {
        CommittedChain {
            hashes: BTreeMap::from([(0, 0)]),
            end: 0,
        }
    }
}

pub(super) type Committed = Rc<RefCell<CommittedChain>>;

pub(super) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The data id a simulated proposal carries in its first 8 bytes.
pub(super) fn data_id(e: &Entry) -> Option<u64> {
    match &e.payload {
        Payload::Data(b) => Some(u64::from_le_bytes(b[..8].try_into().ok()?)),
        _ => None,
    }
}

fn chain(prev: u64, e: &Entry) -> u64 {
    let digest = match &e.payload {
        Payload::Data(_) => data_id(e).unwrap_or(0),
        Payload::LeaderChange(n) => mix(0x1eade7, *n),
        Payload::Membership(m) => {
            let v = m.voters.iter().fold(0xc0f1, |h, &n| mix(h, n));
            m.learners.iter().fold(mix(v, 0x1ea7), |h, &n| mix(h, n))
        }
    };
    mix(mix(mix(mix(prev, e.base), e.last), e.term), digest)
}

pub(super) struct SimLog {
    start: Offset,
    /// Hash of the log up to `start`.
    base_hash: u64,
    entries: Vec<Entry>,
    hashes: Vec<u64>,
    /// `entries[..durable]` are on disk.
    durable: usize,
    /// `entries[..checked]` were seen by the log-matching check.
    pub checked: Cell<usize>,
    committed: Committed,
    /// Set when the log was restarted at a position the checker never saw committed.
    pub bad_reset: Cell<Option<Offset>>,
}

impl SimLog {
    pub fn new(committed: Committed) -> Self {
        SimLog {
            start: 0,
            base_hash: 0,
            entries: Vec::new(),
            hashes: Vec::new(),
            durable: 0,
            checked: Cell::new(0),
            committed,
            bad_reset: Cell::new(None),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn hash(&self, i: usize) -> u64 {
        self.hashes[i]
    }

    /// The index of the entry ending at `end`, searching `entries[..limit]`.
    fn ending_at(&self, end: Offset, limit: usize) -> Option<usize> {
        let i = self.entries[..limit].partition_point(|e| e.end() < end);
        (i < limit && self.entries[i].end() == end).then_some(i)
    }

    /// Hash of the log up to `end`, if an entry ends there (or it is the log start).
    pub fn hash_at(&self, end: Offset) -> Option<u64> {
        if end == self.start {
            return Some(self.base_hash);
        }
        self.ending_at(end, self.entries.len())
            .map(|i| self.hashes[i])
    }

    /// The same, on disk: would a crash now keep the log up to `end`?
    pub fn durable_hash_at(&self, end: Offset) -> Option<u64> {
        if end == self.start {
            return Some(self.base_hash);
        }
        self.ending_at(end, self.durable).map(|i| self.hashes[i])
    }

    pub fn sync_all(&mut self) {
        self.durable = self.entries.len();
    }

    /// A crash: the synced entries stay, then a random prefix of the others.
    pub fn crash(&mut self, rng: &mut Rng) {
        let unsynced = (self.entries.len() - self.durable) as u64;
        let keep = self.durable + rng.below(unsynced + 1) as usize;
        self.cut(keep);
        self.durable = self.entries.len();
    }

    fn cut(&mut self, len: usize) {
        self.entries.truncate(len);
        self.hashes.truncate(len);
        self.durable = self.durable.min(len);
        self.checked.set(self.checked.get().min(len));
    }

    /// Retention: drop entries before `start` (a boundary at or below the durable commit).
    pub fn trim_front(&mut self, start: Offset) {
        let Some(hash) = self.hash_at(start) else {
            return;
        };
        let i = self.entries.partition_point(|e| e.base < start);
        self.entries.drain(..i);
        self.hashes.drain(..i);
        self.durable = self.durable.saturating_sub(i);
        self.checked.set(self.checked.get().saturating_sub(i));
        self.base_hash = hash;
        self.start = start;
    }
}

impl Log for SimLog {
    fn start(&self) -> Offset {
        self.start
    }

    fn end(&self) -> Offset {
        self.entries.last().map_or(self.start, Entry::end)
    }

    fn append(&mut self, entry: Entry) {
        let prev = self.hashes.last().copied().unwrap_or(self.base_hash);
        self.hashes.push(chain(prev, &entry));
        self.entries.push(entry);
    }

    fn truncate(&mut self, end: Offset) {
        let i = self.entries.partition_point(|e| e.base < end);
        self.cut(i);
    }

    fn reset(&mut self, start: Offset) {
        self.cut(0);
        self.start = start;
        match self.committed.borrow().hashes.get(&start) {
            Some(&h) => self.base_hash = h,
            None => self.bad_reset.set(Some(start)),
        }
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Vec<Entry> {
        read_entries(&self.entries, from, max_bytes)
    }
}
