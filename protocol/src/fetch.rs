//! Fetch response framing written by hand, so record data never passes through an encoder:
//! the response becomes header bytes with the records of each partition left as gaps the
//! caller fills with whatever it holds (cached `Bytes`, a segment file range). Byte-for-byte
//! the same as kafka-protocol's encoding (tested below for every version Tern serves).

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::wire::{put_array_len, put_bytes_len, put_null_string, put_string, put_uvarint};

/// Fetch versions this encoder writes.
pub const VERSIONS: std::ops::RangeInclusive<i16> = 4..=16;

pub struct FetchTopic<R> {
    /// Written for v4-v12.
    pub name: String,
    /// Written for v13 and later.
    pub id: Uuid,
    pub partitions: Vec<FetchPartition<R>>,
}

pub struct FetchPartition<R> {
    pub index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// `(producer id, first offset)`; `None` encodes a null array.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    /// Record bytes: their length and what holds them. `None` encodes null records.
    pub records: Option<(usize, R)>,
    /// v12+: the partition's leader and leader epoch, for a replica that refuses the read as
    /// not the leader (KIP-951, tagged field 1).
    pub current_leader: Option<(i32, i32)>,
    /// v11+: the replica the consumer should read from instead (KIP-392), -1 for none.
    pub preferred_read_replica: i32,
}

/// v16+: a node named as a partition's current leader (KIP-951).
pub struct NodeEndpoint {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// A piece of an encoded response, in send order.
#[derive(Debug)]
pub enum Piece<R> {
    Bytes(Bytes),
    Records(R),
}

/// What a Fetch response says before its topics.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHeader {
    pub correlation_id: i32,
    pub version: i16,
    /// v7+: the top-level error (fetch sessions' errors).
    pub error_code: i16,
    /// v7+: the fetch session (KIP-227), 0 for none.
    pub session_id: i32,
}

/// Encodes a whole Fetch response frame (size prefix included) for `header.version` (see
/// [`VERSIONS`]), with throttle time zero. `endpoints` (v16+) are the nodes named as current
/// leaders.
pub fn encode_response<R>(
    header: ResponseHeader,
    topics: Vec<FetchTopic<R>>,
    endpoints: &[NodeEndpoint],
) -> Vec<Piece<R>> {
    let ResponseHeader {
        correlation_id,
        version,
        error_code,
        session_id,
    } = header;
    assert!(VERSIONS.contains(&version), "Fetch v{version} not encoded");
    let flexible = version >= 12;
    let mut buf = BytesMut::with_capacity(64 + topics.len() * 96);
    // Where record gaps go: (end of the header bytes before them, the records).
    let mut gaps: Vec<(usize, R)> = Vec::new();
    let mut records_len = 0usize;

    buf.put_i32(0); // size, patched below
    buf.put_i32(correlation_id);
    if flexible {
        buf.put_u8(0); // response header tagged fields
    }
    buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        buf.put_i16(error_code);
        buf.put_i32(session_id);
    }
    put_array_len(&mut buf, flexible, topics.len());
    for topic in topics {
        if version <= 12 {
            put_string(&mut buf, flexible, &topic.name);
        }
        if version >= 13 {
            buf.put_slice(topic.id.as_bytes());
        }
        put_array_len(&mut buf, flexible, topic.partitions.len());
        for p in topic.partitions {
            buf.put_i32(p.index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            match &p.aborted_transactions {
                None if flexible => buf.put_u8(0),
                None => buf.put_i32(-1),
                Some(aborted) => {
                    put_array_len(&mut buf, flexible, aborted.len());
                    for &(producer_id, first_offset) in aborted {
                        buf.put_i64(producer_id);
                        buf.put_i64(first_offset);
                        if flexible {
                            buf.put_u8(0);
                        }
                    }
                }
            }
            if version >= 11 {
                buf.put_i32(p.preferred_read_replica);
            }
            match p.records {
                None if flexible => buf.put_u8(0),
                None => buf.put_i32(-1),
                Some((len, records)) => {
                    put_bytes_len(&mut buf, flexible, len);
                    if len > 0 {
                        gaps.push((buf.len(), records));
                        records_len += len;
                    }
                }
            }
            match p.current_leader {
                // Tagged field 1, CurrentLeader: leader id, leader epoch, no tagged fields.
                Some((leader, epoch)) if flexible => {
                    put_uvarint(&mut buf, 1);
                    put_uvarint(&mut buf, 1);
                    put_uvarint(&mut buf, 9);
                    buf.put_i32(leader);
                    buf.put_i32(epoch);
                    buf.put_u8(0);
                }
                _ if flexible => buf.put_u8(0), // partition tagged fields
                _ => {}
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if version >= 16 && !endpoints.is_empty() {
        // Tagged field 0, NodeEndpoints.
        let mut field = BytesMut::new();
        put_array_len(&mut field, true, endpoints.len());
        for e in endpoints {
            field.put_i32(e.id);
            put_string(&mut field, true, &e.host);
            field.put_i32(e.port);
            match &e.rack {
                Some(rack) => put_string(&mut field, true, rack),
                None => put_null_string(&mut field, true),
            }
            field.put_u8(0);
        }
        put_uvarint(&mut buf, 1);
        put_uvarint(&mut buf, 0);
        put_uvarint(&mut buf, field.len() as u64);
        buf.put_slice(&field);
    } else if flexible {
        buf.put_u8(0); // response tagged fields
    }
    let size = (buf.len() - 4 + records_len) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());

    let header = buf.freeze();
    let mut pieces = Vec::with_capacity(gaps.len() * 2 + 1);
    let mut from = 0;
    for (at, records) in gaps {
        pieces.push(Piece::Bytes(header.slice(from..at)));
        pieces.push(Piece::Records(records));
        from = at;
    }
    if from < header.len() {
        pieces.push(Piece::Bytes(header.slice(from..)));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_response as encode_with_kafka_protocol;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::{FetchResponse, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    type Shape = Vec<(
        String,
        Vec<(i32, i16, i64, Option<Vec<(i64, i64)>>, Option<Vec<u8>>)>,
    )>;

    /// Responses carry a session id and a top-level error from v7.
    fn header(version: i16) -> ResponseHeader {
        ResponseHeader {
            correlation_id: 42,
            version,
            error_code: if version >= 7 { 71 } else { 0 },
            session_id: if version >= 7 { 123_456 } else { 0 },
        }
    }

    /// The current leader a partition of `index` names: some do, some do not.
    fn leader_of(index: i32) -> Option<(i32, i32)> {
        (index % 3 == 0).then_some((index.rem_euclid(7), index.rem_euclid(5)))
    }

    /// Endpoints named in a response with `shape` (one per topic, for variety).
    fn endpoints(shape: &Shape) -> Vec<NodeEndpoint> {
        shape
            .iter()
            .enumerate()
            .map(|(i, (name, _))| NodeEndpoint {
                id: i as i32,
                host: name.clone(),
                port: 9092 + i as i32,
                rack: (i % 2 == 0).then(|| format!("rack-{i}")),
            })
            .collect()
    }

    /// The topics of `shape`, with each partition's records as `records` makes them.
    fn topics<R>(shape: &Shape, records: impl Fn(&Vec<u8>) -> R) -> Vec<FetchTopic<R>> {
        shape
            .iter()
            .map(|(name, parts)| FetchTopic {
                name: name.clone(),
                id: Uuid::from_u128(name.len() as u128 + 7),
                partitions: parts
                    .iter()
                    .map(|(index, error, hw, aborted, data)| FetchPartition {
                        index: *index,
                        error_code: *error,
                        high_watermark: *hw,
                        last_stable_offset: *hw,
                        log_start_offset: hw / 2,
                        aborted_transactions: aborted.clone(),
                        records: data.as_ref().map(|d| (d.len(), records(d))),
                        current_leader: leader_of(*index),
                        preferred_read_replica: index % 4 - 1,
                    })
                    .collect(),
            })
            .collect()
    }

    fn ours(version: i16, shape: &Shape) -> Vec<u8> {
        let mut out = Vec::new();
        let topics = topics(shape, |d| Bytes::from(d.clone()));
        for piece in encode_response(header(version), topics, &endpoints(shape)) {
            match piece {
                Piece::Bytes(b) | Piece::Records(b) => out.extend_from_slice(&b),
            }
        }
        out
    }

    fn theirs(version: i16, shape: &Shape) -> Vec<u8> {
        let responses = shape
            .iter()
            .map(|(name, parts)| {
                FetchableTopicResponse::default()
                    .with_topic(if version <= 12 {
                        TopicName(StrBytes::from_string(name.clone()))
                    } else {
                        TopicName::default()
                    })
                    .with_topic_id(if version >= 13 {
                        Uuid::from_u128(name.len() as u128 + 7)
                    } else {
                        Uuid::nil()
                    })
                    .with_partitions(
                        parts
                            .iter()
                            .map(|(index, error, hw, aborted, records)| {
                                PartitionData::default()
                                    .with_partition_index(*index)
                                    .with_error_code(*error)
                                    .with_high_watermark(*hw)
                                    .with_last_stable_offset(*hw)
                                    .with_log_start_offset(hw / 2)
                                    .with_aborted_transactions(aborted.as_ref().map(|a| {
                                        a.iter()
                                            .map(|&(pid, first)| {
                                                AbortedTransaction::default()
                                                    .with_producer_id(pid.into())
                                                    .with_first_offset(first)
                                            })
                                            .collect()
                                    }))
                                    .with_records(records.clone().map(Bytes::from))
                                    .with_preferred_read_replica(if version >= 11 {
                                        (index % 4 - 1).into()
                                    } else {
                                        (-1).into()
                                    })
                                    .with_current_leader(match leader_of(*index) {
                                        Some((leader, epoch)) => LeaderIdAndEpoch::default()
                                            .with_leader_id(leader.into())
                                            .with_leader_epoch(epoch),
                                        None => LeaderIdAndEpoch::default(),
                                    })
                            })
                            .collect(),
                    )
            })
            .collect();
        let node_endpoints = endpoints(shape)
            .into_iter()
            .map(|e| {
                kafka_protocol::messages::fetch_response::NodeEndpoint::default()
                    .with_node_id(e.id.into())
                    .with_host(StrBytes::from_string(e.host))
                    .with_port(e.port)
                    .with_rack(e.rack.map(StrBytes::from_string))
            })
            .collect();
        let body = ResponseKind::Fetch(
            FetchResponse::default()
                .with_error_code(if version >= 7 { 71 } else { 0 })
                .with_session_id(if version >= 7 { 123_456 } else { 0 })
                .with_responses(responses)
                .with_node_endpoints(if version >= 16 {
                    node_endpoints
                } else {
                    Vec::new()
                }),
        );
        encode_with_kafka_protocol(42, version, &body)
            .unwrap()
            .to_vec()
    }

    fn shapes() -> impl Strategy<Value = Shape> {
        let partition = (
            any::<i32>(),
            any::<i16>(),
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(
                (any::<i64>(), any::<i64>()),
                0..3,
            )),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        );
        proptest::collection::vec(
            ("[a-z._-]{1,20}", proptest::collection::vec(partition, 0..4)),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn same_bytes_as_kafka_protocol(version in VERSIONS, shape in shapes()) {
            prop_assert_eq!(ours(version, &shape), theirs(version, &shape));
        }
    }

    #[test]
    fn records_are_gaps_between_header_pieces() {
        let shape: Shape = vec![(
            "t".into(),
            vec![
                (0, 0, 10, None, Some(vec![1; 100])),
                (1, 0, 10, None, Some(vec![])),
                (2, 0, 10, None, Some(vec![2; 50])),
            ],
        )];
        let topics = topics(&shape, |d| d.len());
        let pieces = encode_response(header(12), topics, &[]);
        let records: Vec<usize> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Records(len) => Some(*len),
                Piece::Bytes(_) => None,
            })
            .collect();
        assert_eq!(records, vec![100, 50], "empty records are not gaps");
        assert!(matches!(pieces.last(), Some(Piece::Bytes(_))));
    }
}
