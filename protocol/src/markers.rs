//! Transaction markers: the control batches a transaction coordinator has written to each
//! partition a transaction touched, ending it (commit or abort). As Kafka writes them: a
//! transactional control batch of the producer's id and epoch holding one record whose key is
//! (version 0, type) and whose value is (version 0, coordinator epoch).

use bytes::{BufMut, BytesMut};

use crate::batch::{take_varint, BatchHeader, HEADER_LEN};

/// Control record type of an abort marker.
pub const ABORT: i16 = 0;
/// Control record type of a commit marker.
pub const COMMIT: i16 = 1;

/// A transaction marker: the coordinator (in `coordinator_epoch`) ends producer
/// `producer_id`'s transaction, at `producer_epoch`, with a commit or an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

impl Marker {
    /// The marker batch (offset 0: the log assigns it), ready to be stamped in place.
    pub fn encode(&self, timestamp: i64) -> BytesMut {
        let mut value = BytesMut::with_capacity(6);
        value.put_i16(0);
        value.put_i32(self.coordinator_epoch);
        let kind = if self.commit { COMMIT } else { ABORT };
        let producer = (self.producer_id, self.producer_epoch, true);
        crate::control::encode_record(kind, value.freeze(), producer, timestamp)
    }
}

/// The control record type of a control batch (`header` parsed from `batch`, which holds at
/// least the start of its first record): [`COMMIT`], [`ABORT`], or Raft's types. `None` if the
/// record does not parse. Reads in place: no allocation.
pub fn control_type(header: &BatchHeader, batch: &[u8]) -> Option<i16> {
    if !header.is_control() || header.compression() != 0 || batch.len() < HEADER_LEN {
        return None;
    }
    let mut rest = &batch[HEADER_LEN..];
    let _length = take_varint(&mut rest)?;
    let (_attributes, after) = rest.split_first()?;
    rest = after;
    let _timestamp_delta = take_varint(&mut rest)?;
    let _offset_delta = take_varint(&mut rest)?;
    let key_len = take_varint(&mut rest)?;
    if key_len < 4 || rest.len() < 4 {
        return None;
    }
    Some(i16::from_be_bytes([rest[2], rest[3]]))
}

/// Whether a batch is a transaction marker, and which: `Some(true)` commit, `Some(false)` abort.
pub fn marker_kind(header: &BatchHeader, batch: &[u8]) -> Option<bool> {
    if !header.is_transactional() || header.producer_id < 0 {
        return None;
    }
    match control_type(header, batch)? {
        COMMIT => Some(true),
        ABORT => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_encode_as_kafka_writes_them() {
        for commit in [true, false] {
            let marker = Marker {
                producer_id: 77,
                producer_epoch: 3,
                commit,
                coordinator_epoch: 5,
            };
            let batch = marker.encode(1_000);
            let h = crate::batch::validate(&batch).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.record_count),
                (77, 3, 1)
            );
            assert_eq!(h.base_sequence, -1);
            assert_eq!(marker_kind(&h, &batch), Some(commit));
            // Only the first record's start is needed.
            assert_eq!(marker_kind(&h, &batch[..HEADER_LEN + 9]), Some(commit));
            assert_eq!(marker_kind(&h, &batch[..HEADER_LEN + 2]), None);
        }
        // Raft's control batches are not markers.
        let raft = crate::control::encode(
            &tern_raft::Entry {
                base: 0,
                last: 0,
                term: 1,
                payload: tern_raft::Payload::LeaderChange(1),
            },
            0,
        )
        .unwrap();
        let h = BatchHeader::parse(&raft).unwrap();
        assert_eq!(control_type(&h, &raft), Some(crate::control::LEADER_CHANGE));
        assert_eq!(marker_kind(&h, &raft), None);
    }
}
