//! Raft's own entries as Kafka control batches, with KRaft's control record types: a new
//! leader's first entry of its term is a LeaderChange record, a configuration a KRaftVoters
//! record (learners, which KRaft has no record for, ride in a tagged field Kafka ignores). They
//! take one offset each, like transaction markers, and every consumer skips control batches.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::leader_change_message::{self, LeaderChangeMessage};
use kafka_protocol::messages::voters_record::{self, VotersRecord};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tern_raft as raft;
use thiserror::Error;

use crate::batch::{set_base_offset, set_leader_epoch, BatchHeader};

/// KRaft's control record type of a LeaderChange record.
pub const LEADER_CHANGE: i16 = 2;
/// KRaft's control record type of a KRaftVoters record.
pub const KRAFT_VOTERS: i16 = 6;
/// Tagged field of a VotersRecord holding the learners' ids (Tern's; Kafka skips unknown tags).
const LEARNERS_TAG: i32 = 10_000;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("not a control batch of one record")]
    NotControl,
    #[error("control record type {0} is not one of Raft's")]
    UnknownType(i16),
    #[error("malformed control record: {0}")]
    Malformed(String),
}

fn node(id: raft::NodeId) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

/// The control batch that stores a Raft control entry (`None` for a data entry): one record at
/// offset `entry.base`, stamped with the entry's term as its leader epoch.
pub fn encode(entry: &raft::Entry, timestamp: i64) -> Option<Bytes> {
    let (kind, value) = match &entry.payload {
        raft::Payload::Data(_) => return None,
        raft::Payload::LeaderChange(leader) => {
            let msg = LeaderChangeMessage::default()
                .with_leader_id(BrokerId(node(*leader)))
                .with_voters(vec![
                    leader_change_message::Voter::default().with_voter_id(node(*leader))
                ]);
            let mut buf = BytesMut::new();
            msg.encode(&mut buf, 0).expect("encodes");
            (LEADER_CHANGE, buf)
        }
        raft::Payload::Membership(m) => {
            let mut learners = BytesMut::new();
            for l in &m.learners {
                learners.put_u64(*l);
            }
            let mut msg = VotersRecord::default().with_voters(
                m.voters
                    .iter()
                    .map(|v| voters_record::Voter::default().with_voter_id(BrokerId(node(*v))))
                    .collect(),
            );
            msg.unknown_tagged_fields
                .insert(LEARNERS_TAG, learners.freeze());
            let mut buf = BytesMut::new();
            msg.encode(&mut buf, 0).expect("encodes");
            (KRAFT_VOTERS, buf)
        }
    };
    let mut buf = encode_record(kind, value.freeze(), (-1, -1, false), timestamp);
    set_base_offset(&mut buf, entry.base as i64);
    set_leader_epoch(&mut buf, entry.term as i32);
    Some(buf.freeze())
}

/// A control batch of one record at offset 0: key (version 0, `kind`), `value`, written for
/// `producer` (id, epoch, transactional) — Raft's entries (-1, -1, false) and transaction
/// markers alike.
pub(crate) fn encode_record(
    kind: i16,
    value: Bytes,
    producer: (i64, i16, bool),
    timestamp: i64,
) -> BytesMut {
    let (producer_id, producer_epoch, transactional) = producer;
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(kind);
    let record = Record {
        transactional,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(key.freeze()),
        value: Some(value),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a control record encodes");
    buf
}

/// The Raft payload a control batch written by [`encode`] stores.
pub fn decode(batch: &Bytes) -> Result<raft::Payload, ControlError> {
    let header = BatchHeader::parse(batch).map_err(|_| ControlError::NotControl)?;
    if !header.is_control() || header.record_count != 1 {
        return Err(ControlError::NotControl);
    }
    let mut buf = batch.clone();
    let set = RecordBatchDecoder::decode(&mut buf)
        .map_err(|e| ControlError::Malformed(format!("{e:#}")))?;
    let record = set
        .records
        .into_iter()
        .next()
        .ok_or(ControlError::NotControl)?;
    let (Some(mut key), Some(mut value)) = (record.key, record.value) else {
        return Err(ControlError::Malformed("no key or value".into()));
    };
    if key.len() < 4 {
        return Err(ControlError::Malformed("short key".into()));
    }
    let _version = key.get_i16();
    let malformed = |e: anyhow::Error| ControlError::Malformed(format!("{e:#}"));
    match key.get_i16() {
        LEADER_CHANGE => {
            let msg = LeaderChangeMessage::decode(&mut value, 0).map_err(malformed)?;
            Ok(raft::Payload::LeaderChange(msg.leader_id.0.max(0) as u64))
        }
        KRAFT_VOTERS => {
            let msg = VotersRecord::decode(&mut value, 0).map_err(malformed)?;
            let mut learners = msg
                .unknown_tagged_fields
                .get(&LEARNERS_TAG)
                .cloned()
                .unwrap_or_default();
            let mut membership =
                raft::Membership::new(msg.voters.iter().map(|v| v.voter_id.0.max(0) as u64));
            while learners.remaining() >= 8 {
                membership.learners.insert(learners.get_u64());
            }
            Ok(raft::Payload::Membership(membership))
        }
        other => Err(ControlError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_control_entries_round_trip_as_control_batches() {
        let entries = [
            raft::Entry {
                base: 42,
                last: 42,
                term: 7,
                payload: raft::Payload::LeaderChange(3),
            },
            raft::Entry {
                base: 43,
                last: 43,
                term: 7,
                payload: raft::Payload::Membership(raft::Membership {
                    voters: [1, 2, 3].into(),
                    learners: [4].into(),
                }),
            },
        ];
        for entry in entries {
            let batch = encode(&entry, 1000).unwrap();
            let h = crate::batch::validate(&batch).unwrap();
            assert!(h.is_control());
            assert_eq!(h.base_offset, entry.base as i64);
            assert_eq!(h.last_offset(), entry.base as i64);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(decode(&batch).unwrap(), entry.payload);
        }
        let data = raft::Entry {
            base: 0,
            last: 0,
            term: 1,
            payload: raft::Payload::Data(Bytes::new()),
        };
        assert!(encode(&data, 0).is_none());
    }
}
