//! The batch cache: the most recently appended batches of a partition, as the `Bytes` that were
//! written. Tail consumers are served from here without touching the disk.

use crate::records::{Records, StoredBatch};
use bytes::Bytes;
use std::collections::VecDeque;

/// Exists per partition, on the shard that owns it.
#[derive(Debug, Default)]
pub struct BatchCache {
    /// (base offset, last offset, batch bytes), in offset order.
    batches: VecDeque<(i64, i64, StoredBatch)>,
    bytes: usize,
}

impl BatchCache {
    pub fn push(&mut self, base: i64, last: i64, batch: StoredBatch) {
        self.bytes += batch.len();
        self.batches.push_back((base, last, batch));
    }

    /// Drops the oldest batches until at most `limit` bytes are held, but never a batch at or
    /// after `keep_from` (batches not yet written to the segment must stay readable).
    pub fn trim(&mut self, limit: usize, keep_from: i64) {
        while self.bytes > limit {
            match self.batches.front() {
                Some(&(base, _, _)) if base < keep_from => {
                    let (_, _, b) = self.batches.pop_front().expect("front exists");
                    self.bytes -= b.len();
                }
                _ => break,
            }
        }
    }

    /// Removes every batch that ends before `offset` (compaction rewrote them on disk).
    pub fn drop_before(&mut self, offset: i64) {
        while self
            .batches
            .front()
            .is_some_and(|&(_, last, _)| last < offset)
        {
            let (_, _, b) = self.batches.pop_front().expect("front exists");
            self.bytes -= b.len();
        }
    }

    /// Removes every batch at or after `offset` (a failed write rolled them back, or the log was
    /// truncated).
    pub fn truncate_from(&mut self, offset: i64) {
        while self
            .batches
            .back()
            .is_some_and(|&(base, _, _)| base >= offset)
        {
            let (_, _, b) = self.batches.pop_back().expect("back exists");
            self.bytes -= b.len();
        }
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (the first batch is
    /// returned even if larger when `min_one`) and none starting at or after `upto`, shared,
    /// not copied. `None` if the cache does not reach back to `offset`.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool, upto: i64) -> Option<Records> {
        let first = self.batches.front()?;
        if offset < first.0 {
            return None;
        }
        let start = self.batches.partition_point(|&(_, last, _)| last < offset);
        let mut taken = 0;
        let mut total = 0;
        for (base, _, b) in self.batches.range(start..) {
            if *base >= upto {
                break;
            }
            if total + b.len() > max_bytes && !(min_one && taken == 0) {
                break;
            }
            total += b.len();
            taken += 1;
        }
        Some(
            self.batches
                .range(start..start + taken)
                .map(|(_, _, b)| b)
                .collect(),
        )
    }

    /// Whole batches from the one starting at `offset`, at most `max_bytes` after the first,
    /// each as one buffer. `None` if no cached batch starts at `offset`.
    pub fn batches_from(&self, offset: i64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let start = self.batches.partition_point(|&(base, _, _)| base < offset);
        if self.batches.get(start)?.0 != offset {
            return None;
        }
        let mut out = Vec::new();
        let mut total = 0;
        for (_, _, b) in self.batches.range(start..) {
            if !out.is_empty() && total + b.len() > max_bytes {
                break;
            }
            total += b.len();
            out.push(b.to_contiguous());
        }
        Some(out)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_byte(r: Option<Records>) -> u8 {
        match r.unwrap().into_chunks().first() {
            Some(crate::records::Chunk::Memory(b)) => b[0],
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn cache() -> BatchCache {
        let mut c = BatchCache::default();
        c.push(0, 4, Bytes::from(vec![0u8; 100]).into());
        c.push(5, 9, Bytes::from(vec![1u8; 100]).into());
        c.push(10, 10, Bytes::from(vec![2u8; 100]).into());
        c
    }

    #[test]
    fn reads_whole_batches_within_budget() {
        let c = cache();
        assert_eq!(c.read(0, 250, true, i64::MAX).unwrap().len(), 200);
        assert_eq!(first_byte(c.read(7, 1000, true, i64::MAX)), 1);
        assert_eq!(c.read(7, 1000, true, i64::MAX).unwrap().len(), 200);
        assert_eq!(
            c.read(7, 10, true, i64::MAX).unwrap().len(),
            100,
            "first batch always"
        );
        assert_eq!(c.read(7, 10, false, i64::MAX).unwrap().len(), 0);
        assert_eq!(c.read(11, 1000, true, i64::MAX).unwrap().len(), 0);
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let c = cache();
        assert_eq!(c.read(0, 1000, true, 10).unwrap().len(), 200);
        assert_eq!(c.read(0, 1000, true, 5).unwrap().len(), 100);
        assert_eq!(
            c.read(5, 1000, true, 5).unwrap().len(),
            0,
            "nothing below it"
        );
    }

    #[test]
    fn trims_only_written_batches() {
        let mut c = cache();
        c.trim(100, 5);
        assert!(c.read(0, 1000, true, i64::MAX).is_none());
        assert_eq!(
            c.bytes(),
            200,
            "batches from offset 5 are unwritten and stay"
        );
        c.trim(100, 100);
        assert_eq!(c.bytes(), 100);
        c.truncate_from(10);
        assert_eq!(c.bytes(), 0);
        let mut c = cache();
        c.drop_before(10);
        assert!(c.read(0, 1000, true, i64::MAX).is_none());
        assert_eq!(first_byte(c.read(10, 1000, true, i64::MAX)), 2);
    }
}
