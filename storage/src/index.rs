//! Sparse per-segment indexes, kept in memory and saved next to the segment when it closes.
//! Both are derived data: when a file is missing or fails its checks it is rebuilt from the log.

/// Offset index: relative offset -> byte position, one entry every `index.interval.bytes`.
/// Exists per segment, on the shard that owns the partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if self
            .entries
            .last()
            .is_none_or(|&(o, p)| relative_offset > o && position > p)
        {
            self.entries.push((relative_offset, position));
        }
    }

    /// Position of the last indexed batch starting at or before `relative_offset` (0 if none).
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        self.lookup_entry(relative_offset).1
    }

    /// `(relative offset, position)` of the last indexed batch starting at or before
    /// `relative_offset`; `(0, 0)` (the segment's start) if none.
    pub fn lookup_entry(&self, relative_offset: u32) -> (u32, u32) {
        let i = self.entries.partition_point(|&(o, _)| o <= relative_offset);
        i.checked_sub(1).map_or((0, 0), |i| self.entries[i])
    }

    /// Start of the last indexed batch at or before byte `position`: a batch boundary.
    pub fn boundary_at_or_before(&self, position: u32) -> Option<u32> {
        let i = self.entries.partition_point(|&(_, p)| p <= position);
        i.checked_sub(1).map(|i| self.entries[i].1)
    }

    pub fn last_position(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.1)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for (o, p) in &self.entries {
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Parses a saved index; `None` if it is damaged or points past `segment_size`.
    pub fn from_bytes(data: &[u8], segment_size: u64) -> Option<OffsetIndex> {
        if !data.len().is_multiple_of(8) {
            return None;
        }
        let mut index = OffsetIndex::default();
        for chunk in data.chunks_exact(8) {
            let o = u32::from_be_bytes(chunk[..4].try_into().ok()?);
            let p = u32::from_be_bytes(chunk[4..].try_into().ok()?);
            if p as u64 >= segment_size
                || index
                    .entries
                    .last()
                    .is_some_and(|&(lo, lp)| o <= lo || p <= lp)
            {
                return None;
            }
            index.entries.push((o, p));
        }
        Some(index)
    }
}

/// Time index: max timestamp so far -> relative offset of the batch that raised it.
/// Exists per segment, on the shard that owns the partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub fn push(&mut self, max_timestamp: i64, relative_offset: u32) {
        if self
            .entries
            .last()
            .is_none_or(|&(t, o)| max_timestamp > t && relative_offset > o)
        {
            self.entries.push((max_timestamp, relative_offset));
        }
    }

    /// Relative offset to start scanning from for the first record with timestamp >= `ts`:
    /// the batch that last raised the max below `ts` (everything before it is older).
    pub fn scan_start(&self, ts: i64) -> u32 {
        let i = self.entries.partition_point(|&(t, _)| t < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].1
        }
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|e| e.0)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for (t, o) in &self.entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }

    pub fn from_bytes(data: &[u8]) -> Option<TimeIndex> {
        if !data.len().is_multiple_of(12) {
            return None;
        }
        let mut index = TimeIndex::default();
        for chunk in data.chunks_exact(12) {
            let t = i64::from_be_bytes(chunk[..8].try_into().ok()?);
            let o = u32::from_be_bytes(chunk[8..].try_into().ok()?);
            if index
                .entries
                .last()
                .is_some_and(|&(lt, lo)| t <= lt || o <= lo)
            {
                return None;
            }
            index.entries.push((t, o));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let mut idx = OffsetIndex::default();
        idx.push(0, 0);
        idx.push(10, 4096);
        idx.push(25, 9000);
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 4096);
        assert_eq!(idx.lookup(24), 4096);
        assert_eq!(idx.lookup(1000), 9000);
        let bytes = idx.to_bytes();
        assert_eq!(OffsetIndex::from_bytes(&bytes, 10_000), Some(idx.clone()));
        assert_eq!(
            OffsetIndex::from_bytes(&bytes, 9000),
            None,
            "points past the segment"
        );
        assert_eq!(OffsetIndex::from_bytes(&bytes[..7], 10_000), None);
    }

    #[test]
    fn time_index_scan_start() {
        let mut idx = TimeIndex::default();
        idx.push(100, 0);
        idx.push(200, 5);
        idx.push(150, 7); // not a new max: ignored
        idx.push(300, 9);
        assert_eq!(idx.scan_start(50), 0);
        assert_eq!(idx.scan_start(150), 0);
        assert_eq!(idx.scan_start(201), 5);
        assert_eq!(idx.scan_start(1000), 9);
        assert_eq!(idx.max_timestamp(), Some(300));
        assert_eq!(TimeIndex::from_bytes(&idx.to_bytes()), Some(idx));
    }

    proptest! {
        #[test]
        fn garbage_index_files_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = OffsetIndex::from_bytes(&data, u64::MAX);
            let _ = TimeIndex::from_bytes(&data);
        }
    }
}
