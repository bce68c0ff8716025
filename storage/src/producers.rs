//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence
//! ranges of its last few batches, so a retried batch is recognised and not written twice.
//! A producer not heard from for `producer.id.expiration.ms` (by its batches' timestamps) is
//! forgotten, as Kafka forgets it.

use std::collections::{HashMap, VecDeque};
use tern_protocol::batch::BatchHeader;
use thiserror::Error;

/// Batches remembered per producer: clients keep at most 5 requests in flight.
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
}

/// Starts the snapshot format that carries each producer's last timestamp; the older format
/// (no header) starts with a producer id, never negative.
const SNAPSHOT_V2: [u8; 4] = [0xff, b'P', b'S', 2];

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
}

impl ProducerStates {
    /// Checks a batch (`base_offset` not yet assigned) against its producer's state.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, ProducerError> {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
            // Unknown producer (new, or its state was lost): accept what it sends.
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < p.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: p.epoch,
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

    /// Remembers a batch that is now in the log (its header carries its final base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
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
        if p.batches.len() > REMEMBERED {
            p.batches.pop_front();
        }
    }

    /// Forgets batches at or after `offset` (they were rolled back).
    pub fn truncate_from(&mut self, offset: i64) {
        for p in self.producers.values_mut() {
            p.batches.retain(|b| b.base_offset < offset);
        }
    }

    /// Forgets producers last heard from before `now_ms - expiration_ms`. Returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let horizon = now_ms.saturating_sub(expiration_ms);
        self.producers.retain(|_, p| p.last_timestamp >= horizon);
        before - self.producers.len()
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Snapshot (clean shutdown, segment roll): a header, then per producer `id epoch
    /// last_timestamp count` and its batches.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = SNAPSHOT_V2.to_vec();
        for (id, p) in &self.producers {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.extend_from_slice(&p.last_timestamp.to_be_bytes());
            out.push(p.batches.len() as u8);
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        out
    }

    /// Parses a snapshot; `None` if it is damaged. Producers of an older snapshot, which has no
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
        let v2 = data.starts_with(&SNAPSHOT_V2);
        if v2 {
            data = &data[SNAPSHOT_V2.len()..];
        }
        let mut states = ProducerStates::default();
        while !data.is_empty() {
            let id = i64::from_be_bytes(take(&mut data, 8)?.try_into().ok()?);
            let epoch = i16::from_be_bytes(take(&mut data, 2)?.try_into().ok()?);
            let last_timestamp = match v2 {
                true => i64::from_be_bytes(take(&mut data, 8)?.try_into().ok()?),
                false => now_ms,
            };
            let count = take(&mut data, 1)?[0] as usize;
            let mut p = Producer {
                epoch,
                batches: VecDeque::new(),
                last_timestamp,
            };
            for _ in 0..count {
                p.batches.push_back(BatchSeq {
                    first_seq: i32::from_be_bytes(take(&mut data, 4)?.try_into().ok()?),
                    last_seq: i32::from_be_bytes(take(&mut data, 4)?.try_into().ok()?),
                    base_offset: i64::from_be_bytes(take(&mut data, 8)?.try_into().ok()?),
                    last_offset: i64::from_be_bytes(take(&mut data, 8)?.try_into().ok()?),
                });
            }
            states.producers.insert(id, p);
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
    fn duplicates_are_recognised_and_gaps_refused() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&header(7, 0, 0, 5, 0)), Ok(SequenceCheck::Append));
        s.record(&header(7, 0, 0, 5, 100));
        s.record(&header(7, 0, 5, 5, 105));
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
        s.record(&header(7, 1, 0, 1, 110));
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
        s.record(&h);
        let mut h = header(2, 0, 0, 1, 11);
        h.max_timestamp = 5_000;
        s.record(&h);
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
            s.record(&header(1, 0, i * 2, 2, 10 + i as i64 * 2));
        }
        s.record(&header(2, 3, 0, 1, 40));
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
}
