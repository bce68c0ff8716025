//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence
//! ranges of its last few batches, so a retried batch is recognised and not written twice.
//! A producer not heard from for `producer.id.expiration.ms` (by its batches' timestamps) is
//! forgotten, as Kafka forgets it.
//!
//! It also tracks transactions: a producer's transactional batches open its transaction at
//! the first one's offset, and the marker its coordinator writes (commit or abort) ends it.
//! The oldest open transaction bounds the last stable offset, what `read_committed`
//! consumers may read.

use std::collections::{BTreeSet, HashMap, VecDeque};
use tern_protocol::batch::BatchHeader;
use tern_protocol::markers;
use thiserror::Error;

/// Batches remembered per producer below what a cut can reach: clients keep at most 5
/// requests in flight.
const REMEMBERED: usize = 5;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id} sent sequence {got}, expected {expected}")]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id} sent a non-transactional batch inside its open transaction")]
    InvalidTxnState { producer_id: i64 },
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSeq {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
    /// The newest timestamp of its batches: when it was last heard from.
    last_timestamp: i64,
    /// First offset of its open transaction.
    open_txn: Option<i64>,
}

/// A producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last sequence number written (-1: none remembered).
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// First offset of its open transaction (-1: none).
    pub txn_start_offset: i64,
}

/// A transaction that a marker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    /// Its first batch's offset (the marker's own when it wrote nothing here).
    pub first_offset: i64,
    pub marker_offset: i64,
    pub aborted: bool,
}

/// Starts the snapshot format that carries each producer's last timestamp; the older format
/// (no header) starts with a producer id, never negative.
const SNAPSHOT_V2: [u8; 4] = [0xff, b'P', b'S', 2];
/// Adds open transactions and recently completed ones, with counts ahead of each list.
const SNAPSHOT_V3: [u8; 4] = [0xff, b'P', b'S', 3];

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Exists per partition, on the shard that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    /// Open transactions as (first offset, producer id): the first bounds the stable offset.
    open: BTreeSet<(i64, i64)>,
    /// Transactions ended by a marker, in marker order, kept while a cut could still remove
    /// their marker (reopening them) or the marker is above the high watermark.
    completed: VecDeque<CompletedTxn>,
    /// No cut reaches below this (`None`: none reaches any batch). Each producer keeps its
    /// batches from here on and the `REMEMBERED` newest below, so a cut leaves it the window it
    /// would have had without the batches cut.
    settled: Option<i64>,
}

impl ProducerStates {
    /// Checks a batch (`base_offset` not yet assigned) against its producer's state.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, ProducerError> {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
            // Unknown producer (new, or its state was lost): accept what it sends. Past its
            // first batch, that is rare enough to say (a retry would be written again).
            if h.base_sequence > 0 {
                tracing::info!(
                    producer_id = h.producer_id,
                    epoch = h.producer_epoch,
                    sequence = h.base_sequence,
                    "a producer unknown here continues its sequence: taken as new"
                );
            }
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < p.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: p.epoch,
            });
        }
        if p.open_txn.is_some() && !h.is_transactional() {
            return Err(ProducerError::InvalidTxnState {
                producer_id: h.producer_id,
            });
        }
        if h.producer_epoch > p.epoch {
            return match h.base_sequence {
                0 => Ok(SequenceCheck::Append),
                got => Err(ProducerError::OutOfOrder {
                    producer_id: h.producer_id,
                    expected: 0,
                    got,
                }),
            };
        }
        let last_seq = h
            .base_sequence
            .wrapping_add(h.last_offset_delta)
            .max(h.base_sequence);
        if let Some(b) = p
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = p
            .batches
            .back()
            .map_or(h.base_sequence, |b| next_seq(b.last_seq));
        if h.base_sequence != expected {
            return Err(ProducerError::OutOfOrder {
                producer_id: h.producer_id,
                expected,
                got: h.base_sequence,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Checks a transaction marker for `producer_id` at `epoch` before it is written: an
    /// older epoch than the producer's is a zombie's (fenced).
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), ProducerError> {
        match self.producers.get(&producer_id) {
            Some(p) if epoch < p.epoch => Err(ProducerError::InvalidEpoch {
                producer_id,
                epoch,
                current: p.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Remembers a batch that is now in the log (`h`, its header with its final base offset;
    /// `batch`, its bytes from the start, of which a control batch's first record is read).
    /// Returns the transaction a marker ended.
    pub fn record(&mut self, h: &BatchHeader, batch: &[u8]) -> Option<CompletedTxn> {
        if h.is_control() {
            let commit = markers::marker_kind(h, batch)?;
            return Some(self.end_txn(h, commit));
        }
        if h.producer_id < 0 {
            return None;
        }
        // A transactional batch opens its producer's transaction, sequenced or not (a group
        // coordinator writes transactional offset commits without sequences).
        if h.is_transactional() {
            let p = self.producers.entry(h.producer_id).or_default();
            if p.open_txn.is_none() {
                p.open_txn = Some(h.base_offset);
                self.open.insert((h.base_offset, h.producer_id));
            }
        }
        if h.base_sequence < 0 {
            return None;
        }
        let p = self.producers.entry(h.producer_id).or_default();
        p.last_timestamp = p.last_timestamp.max(h.max_timestamp);
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        p.batches.push_back(BatchSeq {
            first_seq: h.base_sequence,
            last_seq: h
                .base_sequence
                .wrapping_add(h.last_offset_delta)
                .max(h.base_sequence),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        let settled = self.settled.unwrap_or(i64::MAX);
        // The front goes once the REMEMBERED batches after it are all below any cut.
        while p.batches.len() > REMEMBERED && p.batches[REMEMBERED].base_offset < settled {
            p.batches.pop_front();
        }
        None
    }

    /// A marker (header `h`, in the log) ends its producer's open transaction. A newer epoch
    /// in it (KIP-890 bumps it per transaction) becomes the producer's, starting its
    /// sequences again.
    fn end_txn(&mut self, h: &BatchHeader, commit: bool) -> CompletedTxn {
        let p = self.producers.entry(h.producer_id).or_default();
        p.last_timestamp = p.last_timestamp.max(h.max_timestamp);
        if h.producer_epoch > p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        let first_offset = match p.open_txn.take() {
            Some(first) => {
                self.open.remove(&(first, h.producer_id));
                first
            }
            None => h.base_offset,
        };
        let done = CompletedTxn {
            producer_id: h.producer_id,
            first_offset,
            marker_offset: h.base_offset,
            aborted: !commit,
        };
        debug_assert!(
            self.completed
                .back()
                .is_none_or(|c| c.marker_offset < done.marker_offset),
            "markers come in offset order"
        );
        self.completed.push_back(done);
        done
    }

    /// Forgets batches at or after `offset` (they were rolled back): transactions they opened
    /// are gone, and those whose marker they held are open again.
    pub fn truncate_from(&mut self, offset: i64) {
        for p in self.producers.values_mut() {
            p.batches.retain(|b| b.base_offset < offset);
        }
        let gone: Vec<(i64, i64)> = self.open.range((offset, i64::MIN)..).copied().collect();
        for (first, pid) in gone {
            self.open.remove(&(first, pid));
            if let Some(p) = self.producers.get_mut(&pid) {
                p.open_txn = None;
            }
        }
        while let Some(c) = self.completed.back().copied() {
            if c.marker_offset < offset {
                break;
            }
            self.completed.pop_back();
            if c.first_offset < offset {
                self.producers.entry(c.producer_id).or_default().open_txn = Some(c.first_offset);
                self.open.insert((c.first_offset, c.producer_id));
            }
        }
    }

    /// No cut will reach below `offset` (the high watermark, or what is written): completed
    /// transactions whose marker is below it are forgotten (stable), and producers' windows
    /// keep what a cut at or past it must leave them.
    pub fn settle(&mut self, offset: i64) {
        self.settled = Some(offset);
        while self
            .completed
            .front()
            .is_some_and(|c| c.marker_offset < offset)
        {
            self.completed.pop_front();
        }
    }

    /// The first offset a `read_committed` consumer may not read yet, given the high
    /// watermark: the start of the oldest transaction that is open or whose marker is not
    /// below the high watermark. `None` when everything below it is stable.
    pub fn first_unstable_offset(&self, high_watermark: i64) -> Option<i64> {
        let open = self.open.first().map(|&(first, _)| first);
        let unsettled = self
            .completed
            .iter()
            .rev()
            .take_while(|c| c.marker_offset >= high_watermark)
            .map(|c| c.first_offset)
            .min();
        match (open, unsettled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every producer remembered, by id.
    pub fn describe(&self) -> Vec<ProducerView> {
        let mut all: Vec<ProducerView> = self
            .producers
            .iter()
            .map(|(&producer_id, p)| ProducerView {
                producer_id,
                epoch: p.epoch,
                last_sequence: p.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: p.last_timestamp,
                txn_start_offset: p.open_txn.unwrap_or(-1),
            })
            .collect();
        all.sort_by_key(|p| p.producer_id);
        all
    }

    /// The first offset of the oldest open transaction.
    pub fn first_open_offset(&self) -> Option<i64> {
        self.open.first().map(|&(first, _)| first)
    }

    /// Open transactions: (producer id, first offset).
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open.iter().map(|&(first, pid)| (pid, first))
    }

    /// Forgets producers last heard from before `now_ms - expiration_ms`, except those with an
    /// open transaction (its coordinator ends it). Returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let horizon = now_ms.saturating_sub(expiration_ms);
        self.producers
            .retain(|_, p| p.last_timestamp >= horizon || p.open_txn.is_some());
        before - self.producers.len()
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Snapshot (clean shutdown, segment roll): a header; the count of producers, then per
    /// producer `id epoch last_timestamp open_txn count` and its batches; the count of completed
    /// transactions, then each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = SNAPSHOT_V3.to_vec();
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (id, p) in &self.producers {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.extend_from_slice(&p.last_timestamp.to_be_bytes());
            out.extend_from_slice(&p.open_txn.unwrap_or(-1).to_be_bytes());
            // A snapshot describes a settled point: the newest REMEMBERED batches are the window.
            let skip = p.batches.len().saturating_sub(REMEMBERED);
            out.push((p.batches.len() - skip) as u8);
            for b in p.batches.iter().skip(skip) {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.completed.len() as u32).to_be_bytes());
        for c in &self.completed {
            out.extend_from_slice(&c.producer_id.to_be_bytes());
            out.extend_from_slice(&c.first_offset.to_be_bytes());
            out.extend_from_slice(&c.marker_offset.to_be_bytes());
            out.push(c.aborted as u8);
        }
        out
    }

    /// Parses a snapshot; `None` if it is damaged. Producers of the oldest format, which has no
    /// timestamps, count as heard from at `now_ms`.
    pub fn from_bytes(mut data: &[u8], now_ms: i64) -> Option<ProducerStates> {
        fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if data.len() < n {
                return None;
            }
            let (head, rest) = data.split_at(n);
            *data = rest;
            Some(head)
        }
        fn i64_from(data: &mut &[u8]) -> Option<i64> {
            Some(i64::from_be_bytes(take(data, 8)?.try_into().ok()?))
        }
        fn i32_from(data: &mut &[u8]) -> Option<i32> {
            Some(i32::from_be_bytes(take(data, 4)?.try_into().ok()?))
        }
        let version = match data {
            [0xff, b'P', b'S', v, ..] if *v == 2 || *v == 3 => *v,
            _ => 1,
        };
        if version > 1 {
            data = &data[SNAPSHOT_V2.len()..];
        }
        let mut states = ProducerStates::default();
        let mut producers_left = match version {
            3 => Some(i32_from(&mut data)? as u32),
            _ => None,
        };
        while producers_left.map_or(!data.is_empty(), |n| n > 0) {
            let id = i64_from(&mut data)?;
            let epoch = i16::from_be_bytes(take(&mut data, 2)?.try_into().ok()?);
            let last_timestamp = match version {
                1 => now_ms,
                _ => i64_from(&mut data)?,
            };
            let open_txn = match version {
                3 => Some(i64_from(&mut data)?).filter(|&o| o >= 0),
                _ => None,
            };
            let count = take(&mut data, 1)?[0] as usize;
            let mut p = Producer {
                epoch,
                batches: VecDeque::new(),
                last_timestamp,
                open_txn,
            };
            for _ in 0..count {
                p.batches.push_back(BatchSeq {
                    first_seq: i32_from(&mut data)?,
                    last_seq: i32_from(&mut data)?,
                    base_offset: i64_from(&mut data)?,
                    last_offset: i64_from(&mut data)?,
                });
            }
            if let Some(first) = open_txn {
                states.open.insert((first, id));
            }
            states.producers.insert(id, p);
            producers_left = producers_left.map(|n| n - 1);
        }
        if version == 3 {
            for _ in 0..i32_from(&mut data)? as u32 {
                states.completed.push_back(CompletedTxn {
                    producer_id: i64_from(&mut data)?,
                    first_offset: i64_from(&mut data)?,
                    marker_offset: i64_from(&mut data)?,
                    aborted: take(&mut data, 1)?[0] != 0,
                });
            }
            if !data.is_empty() {
                return None;
            }
        }
        Some(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn a_cut_leaves_the_window_the_producer_had_before_the_batches_cut() {
        let mut s = ProducerStates::default();
        // Ten one-record batches at offsets 0..10; only 0..3 are settled.
        s.settle(3);
        for i in 0..10 {
            s.record(&header(7, 0, i, 1, i as i64), &[]);
        }
        // A cut at 6 (uncommitted batches replaced): the five newest before it remain, so a
        // retry of the batch at 1 is still recognised, and the next batch is sequence 6.
        s.truncate_from(6);
        assert_eq!(
            s.check(&header(7, 0, 1, 1, -1)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 1,
                last_offset: 1
            })
        );
        assert_eq!(s.check(&header(7, 0, 6, 1, -1)), Ok(SequenceCheck::Append));
        // Settled everywhere, the window is back to the five newest; snapshots hold five too.
        s.settle(i64::MAX);
        s.record(&header(7, 0, 6, 1, 6), &[]);
        assert_eq!(s.producers[&7].batches.len(), REMEMBERED);
        let back = ProducerStates::from_bytes(&s.to_bytes(), 0).unwrap();
        assert_eq!(back.producers[&7].batches, s.producers[&7].batches);
    }

    #[test]
    fn duplicates_are_recognised_and_gaps_refused() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&header(7, 0, 0, 5, 0)), Ok(SequenceCheck::Append));
        s.record(&header(7, 0, 0, 5, 100), &[]);
        s.record(&header(7, 0, 5, 5, 105), &[]);
        assert_eq!(
            s.check(&header(7, 0, 0, 5, -1)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 104
            })
        );
        assert_eq!(s.check(&header(7, 0, 10, 1, -1)), Ok(SequenceCheck::Append));
        assert!(matches!(
            s.check(&header(7, 0, 12, 1, -1)),
            Err(ProducerError::OutOfOrder { expected: 10, .. })
        ));
        // A new epoch starts again at sequence 0; an older epoch is fenced.
        assert_eq!(s.check(&header(7, 1, 0, 1, -1)), Ok(SequenceCheck::Append));
        assert!(s.check(&header(7, 1, 3, 1, -1)).is_err());
        s.record(&header(7, 1, 0, 1, 110), &[]);
        assert!(matches!(
            s.check(&header(7, 0, 10, 1, -1)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
        // Non-idempotent batches are never checked.
        assert_eq!(
            s.check(&header(-1, -1, -1, 3, -1)),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn producers_not_heard_from_expire() {
        let mut s = ProducerStates::default();
        let mut h = header(1, 0, 0, 1, 10);
        h.max_timestamp = 1_000;
        s.record(&h, &[]);
        let mut h = header(2, 0, 0, 1, 11);
        h.max_timestamp = 5_000;
        s.record(&h, &[]);
        assert_eq!(s.expire(6_000, 2_000), 1);
        // Producer 1 is forgotten: its retry is taken as new; producer 2's is still known.
        assert_eq!(s.check(&header(1, 0, 0, 1, -1)), Ok(SequenceCheck::Append));
        assert!(matches!(
            s.check(&header(2, 0, 0, 1, -1)),
            Ok(SequenceCheck::Duplicate { .. })
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn snapshot_round_trips_and_rollback_forgets() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(&header(1, 0, i * 2, 2, 10 + i as i64 * 2), &[]);
        }
        s.record(&header(2, 3, 0, 1, 40), &[]);
        let back = ProducerStates::from_bytes(&s.to_bytes(), 0).unwrap();
        assert_eq!(back, s);
        assert!(ProducerStates::from_bytes(&[1, 2, 3], 0).is_none());
        // The format before timestamps: producers count as heard from when it is read.
        let old = [
            &7i64.to_be_bytes()[..],
            &3i16.to_be_bytes(),
            &[1],
            &0i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &50i64.to_be_bytes(),
            &51i64.to_be_bytes(),
        ]
        .concat();
        let mut read = ProducerStates::from_bytes(&old, 9_000).unwrap();
        assert_eq!(
            read.check(&header(7, 3, 0, 2, -1)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 50,
                last_offset: 51
            })
        );
        assert_eq!(read.expire(9_500, 1_000), 0);
        assert_eq!(read.expire(10_001, 1_000), 1);
        s.truncate_from(24);
        assert_eq!(s.check(&header(1, 0, 14, 2, -1)), Ok(SequenceCheck::Append));
    }

    fn txn(pid: i64, epoch: i16, seq: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            attributes: 0x10,
            ..header(pid, epoch, seq, 1, base_offset)
        }
    }

    fn marker(pid: i64, epoch: i16, commit: bool, offset: i64) -> (BatchHeader, bytes::Bytes) {
        let mut data = markers::Marker {
            producer_id: pid,
            producer_epoch: epoch,
            commit,
            coordinator_epoch: 0,
        }
        .encode(0);
        tern_protocol::batch::set_base_offset(&mut data, offset);
        (BatchHeader::parse(&data).unwrap(), data.freeze())
    }

    #[test]
    fn transactions_open_end_and_bound_the_stable_offset() {
        let mut s = ProducerStates::default();
        assert_eq!(s.first_unstable_offset(100), None);
        s.record(&txn(1, 0, 0, 10), &[]);
        s.record(&txn(2, 0, 0, 11), &[]);
        s.record(&txn(1, 0, 1, 12), &[]);
        assert_eq!(s.first_unstable_offset(100), Some(10));
        // Inside its transaction a producer may not write outside it.
        assert_eq!(
            s.check(&header(1, 0, 2, 1, -1)),
            Err(ProducerError::InvalidTxnState { producer_id: 1 })
        );
        let (h, data) = marker(1, 0, false, 13);
        let done = s.record(&h, &data).unwrap();
        assert_eq!(
            done,
            CompletedTxn {
                producer_id: 1,
                first_offset: 10,
                marker_offset: 13,
                aborted: true
            }
        );
        // The marker is not below the high watermark yet: still unstable.
        assert_eq!(s.first_unstable_offset(13), Some(10));
        assert_eq!(s.first_unstable_offset(14), Some(11));
        let back = ProducerStates::from_bytes(&s.to_bytes(), 0).unwrap();
        assert_eq!(back, s);
        // A cut through the marker reopens the transaction; one before it forgets it.
        let mut cut = s.clone();
        cut.truncate_from(13);
        assert_eq!(cut.first_open_offset(), Some(10));
        cut.truncate_from(11);
        assert_eq!(cut.open_transactions().collect::<Vec<_>>(), [(1, 10)]);
        cut.truncate_from(10);
        assert_eq!(cut.first_open_offset(), None);
        // A zombie's marker is refused; a newer epoch's marker restarts sequences.
        s.record(&txn(2, 1, 0, 14), &[]);
        assert!(s.check_marker(2, 0).is_err());
        let (h, data) = marker(2, 2, true, 15);
        assert!(!s.record(&h, &data).unwrap().aborted);
        assert_eq!(s.check(&txn(2, 2, 0, -1)), Ok(SequenceCheck::Append));
        assert_eq!(s.first_unstable_offset(16), None);
        s.settle(16);
        assert_eq!(s.first_unstable_offset(0), None);
        // Producers with an open transaction do not expire.
        s.record(&txn(3, 0, 0, 16), &[]);
        assert_eq!(s.expire(i64::MAX, 1), 2);
        assert_eq!(s.len(), 1);
    }
}
