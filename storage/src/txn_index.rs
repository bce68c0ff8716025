//! The aborted-transaction index: which offset ranges hold a producer's aborted records, so a
//! `read_committed` consumer can drop them (Fetch hands it the aborted transactions its
//! records overlap). Held in memory per log; each segment's entries (by marker offset) go to
//! `<base>.txnindex` beside it when it is sealed (rolled, or the log closes), and crash recovery replays
//! the markers past the last roll snapshot.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::fs;

/// One aborted transaction of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The abort marker's offset.
    pub last_offset: i64,
    /// The last stable offset once this transaction ended (Kafka's): no transaction aborted
    /// later started below it, so a search for transactions starting below an offset stops at
    /// the first entry whose stable offset reaches it.
    pub last_stable_offset: i64,
}

const ENTRY: usize = 32;

/// The index file of the segment whose log file is `segment`.
pub fn path(segment: &Path) -> PathBuf {
    segment.with_extension("txnindex")
}

/// Writes an index file for the segment whose log file is `segment` (atomically), or removes it
/// when `data` is empty.
pub async fn write(segment: &Path, data: &[u8]) -> io::Result<()> {
    match data.is_empty() {
        true => fs::remove_file(&path(segment)).await,
        false => fs::write_file_atomic(&path(segment), data).await,
    }
}

/// Aborted transactions of a partition, by marker offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnIndex {
    entries: BTreeMap<i64, AbortedTxn>,
}

impl TxnIndex {
    pub fn insert(&mut self, txn: AbortedTxn) {
        debug_assert!(txn.first_offset <= txn.last_offset);
        self.entries.insert(txn.last_offset, txn);
    }

    /// Forgets the transaction whose abort marker is at `marker` (compaction removed it).
    pub fn remove(&mut self, marker: i64) {
        self.entries.remove(&marker);
    }

    /// Forgets transactions whose marker is at or after `offset` (a cut).
    pub fn truncate_from(&mut self, offset: i64) {
        self.entries.split_off(&offset);
    }

    /// Forgets transactions whose marker is below `offset` (the log start moved past it).
    pub fn forget_below(&mut self, offset: i64) {
        self.entries = self.entries.split_off(&offset);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Aborted transactions overlapping `[from, upto)`: marker at or after `from`, first offset
    /// below `upto`, in marker order.
    pub fn overlapping(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let mut out = Vec::new();
        for txn in self.entries.range(from..).map(|(_, t)| t) {
            if txn.first_offset < upto {
                out.push(*txn);
            }
            if txn.last_stable_offset >= upto {
                break;
            }
        }
        out
    }

    /// Entries whose marker is in `[from, to)`, as a file's bytes.
    pub fn to_bytes(&self, from: i64, to: i64) -> Vec<u8> {
        self.to_bytes_without(from, to, &[])
    }

    /// [`Self::to_bytes`] without the entries whose marker is at one of `markers`.
    pub fn to_bytes_without(&self, from: i64, to: i64, markers: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        let kept = self
            .entries
            .range(from..to)
            .filter(|(m, _)| !markers.contains(m));
        for t in kept.map(|(_, t)| t) {
            for v in [
                t.producer_id,
                t.first_offset,
                t.last_offset,
                t.last_stable_offset,
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out
    }

    /// Adds the entries of a file written by [`Self::to_bytes`]; a torn last entry is ignored.
    pub fn load(&mut self, data: &[u8]) {
        for e in data.chunks_exact(ENTRY) {
            let v = |i: usize| i64::from_be_bytes(e[i * 8..i * 8 + 8].try_into().expect("8"));
            self.insert(AbortedTxn {
                producer_id: v(0),
                first_offset: v(1),
                last_offset: v(2),
                last_stable_offset: v(3),
            });
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(pid: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn overlapping_stops_where_no_later_transaction_can_start_below() {
        let mut index = TxnIndex::default();
        // Producer 1's transaction spans 0..=20, producer 2's 5..=10 ends first (while 1's is
        // open, so the stable offset stays at 0); producer 3's 30..=40 starts later.
        index.insert(txn(2, 5, 10, 0));
        index.insert(txn(1, 0, 20, 21));
        index.insert(txn(3, 30, 40, 41));
        assert_eq!(
            index.overlapping(0, 8),
            [txn(2, 5, 10, 0), txn(1, 0, 20, 21)]
        );
        assert_eq!(index.overlapping(11, 25), [txn(1, 0, 20, 21)]);
        assert_eq!(
            index.overlapping(11, 35),
            [txn(1, 0, 20, 21), txn(3, 30, 40, 41)]
        );
        assert_eq!(index.overlapping(41, 100), []);
        let mut back = TxnIndex::default();
        back.load(&index.to_bytes(0, 21));
        back.load(&index.to_bytes(21, 100)[..20]);
        assert_eq!(back.len(), 2);
        back.load(&index.to_bytes(21, 100));
        assert_eq!(back, index);
        index.truncate_from(20);
        assert_eq!(index.overlapping(0, 100), [txn(2, 5, 10, 0)]);
        index.forget_below(11);
        assert!(index.is_empty());
    }
}
