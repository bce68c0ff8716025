use crate::{Entry, Offset};

/// The partition log as Raft sees it. The host implements it over its storage; Raft calls it
/// synchronously and never waits on it: `append` and `truncate` change what the log holds now,
/// and the host makes that durable later, telling the group with [`crate::Group::synced`].
///
/// Terms are not asked of the log: the group keeps them in its [`crate::EpochTable`].
pub trait Log {
    /// The first offset still in the log (Kafka's log start offset).
    fn start(&self) -> Offset;
    /// The offset the next entry will take (Kafka's log end offset).
    fn end(&self) -> Offset;
    /// Appends an entry whose `base` is `end()`.
    fn append(&mut self, entry: Entry);
    /// Removes every entry at or after `end`, a batch boundary at or after `start()`. The host
    /// must make the removal durable before it makes later appends durable.
    fn truncate(&mut self, end: Offset);
    /// Drops every entry and restarts the log, empty, at `start`.
    fn reset(&mut self, start: Offset);
    /// Entries from `from` (a batch boundary) on, at least one if there is one, and no more
    /// after the first than fit in `max_bytes`.
    fn read(&self, from: Offset, max_bytes: usize) -> Vec<Entry>;
}

/// A log in memory: for tests, and for hosts that keep no log of their own.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    start: Offset,
    entries: Vec<Entry>,
}

impl MemLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Drops entries before `start` (retention); `start` must be a batch boundary.
    pub fn trim_front(&mut self, start: Offset) {
        let i = self.entries.partition_point(|e| e.base < start);
        self.entries.drain(..i);
        self.start = start;
    }
}

impl Log for MemLog {
    fn start(&self) -> Offset {
        self.start
    }

    fn end(&self) -> Offset {
        self.entries.last().map_or(self.start, Entry::end)
    }

    fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.base, self.end(), "appends are dense");
        self.entries.push(entry);
    }

    fn truncate(&mut self, end: Offset) {
        let i = self.entries.partition_point(|e| e.base < end);
        debug_assert!(i == self.entries.len() || self.entries[i].base == end);
        self.entries.truncate(i);
    }

    fn reset(&mut self, start: Offset) {
        self.entries.clear();
        self.start = start;
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Vec<Entry> {
        read_entries(&self.entries, from, max_bytes)
    }
}

/// `Log::read` over entries held in order in memory: from the entry starting at `from` (none if
/// no entry starts there), as many as fit in `max_bytes` after the first.
pub(crate) fn read_entries(entries: &[Entry], from: Offset, max_bytes: usize) -> Vec<Entry> {
    let i = entries.partition_point(|e| e.base < from);
    if i == entries.len() || entries[i].base != from {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in &entries[i..] {
        if !out.is_empty() && bytes + e.bytes() > max_bytes {
            break;
        }
        bytes += e.bytes();
        out.push(e.clone());
    }
    out
}
