//! Produce requests written straight into their frame, as Kafka clients send them: each
//! uncompressed batch is encoded where it is sent from. (kafka-protocol's encoder would copy
//! every batch once more; at full speed that copy was half the load generator's `memmove`.)

use anyhow::{bail, Result};
use bytes::{BufMut, BytesMut};
use kafka_protocol::records::Compression;
use tern_protocol::wire::{put_array_len, put_bytes_len, put_null_string, put_string, put_uvarint};

use crate::batch::{self, Pending};

/// Produce versions this encoder writes: 3-8 plain, 9 flexible (10 and later add fields).
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=9;

/// Writes the body of a Produce request (after the request header) for one topic, with one
/// batch of `records` per partition.
pub fn encode_body(
    buf: &mut BytesMut,
    version: i16,
    acks: i16,
    timeout_ms: i32,
    topic: &str,
    batches: &[(i32, Vec<Pending<'_>>)],
    compression: Compression,
) -> Result<()> {
    if !VERSIONS.contains(&version) {
        bail!("cannot write Produce v{version}");
    }
    let flexible = version >= 9;
    put_null_string(buf, flexible); // no transactional id
    buf.put_i16(acks);
    buf.put_i32(timeout_ms);
    put_array_len(buf, flexible, 1);
    put_string(buf, flexible, topic);
    put_array_len(buf, flexible, batches.len());
    for (partition, records) in batches {
        buf.put_i32(*partition);
        if compression == Compression::None {
            put_bytes_len(buf, flexible, batch::encoded_len(records));
            batch::encode_into(buf, records);
        } else {
            let encoded = batch::encode(records, compression)?;
            put_bytes_len(buf, flexible, encoded.len());
            buf.put_slice(&encoded);
        }
        if flexible {
            put_uvarint(buf, 0); // partition's tagged fields
        }
    }
    if flexible {
        put_uvarint(buf, 0); // topic's tagged fields
        put_uvarint(buf, 0); // request's tagged fields
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn written_as_kafka_protocol_writes_it() {
        let values: Vec<Vec<u8>> = (0..300).map(|i| vec![i as u8; 1000 + i]).collect();
        let records = |from: usize| -> Vec<Pending> {
            (from..from + 100)
                .map(|i| Pending {
                    key: (i % 3 == 0).then_some(b"some-key".as_slice()),
                    value: &values[i],
                    timestamp: 1_700_000_000_000 + i as i64,
                })
                .collect()
        };
        let batches = vec![(0, records(0)), (4, records(100)), (2, records(200))];
        for compression in [Compression::None, Compression::Lz4] {
            for version in VERSIONS {
                let mut ours = BytesMut::new();
                encode_body(
                    &mut ours,
                    version,
                    -1,
                    30_000,
                    "a-topic",
                    &batches,
                    compression,
                )
                .unwrap();
                let req = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(30_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("a-topic")))
                        .with_partition_data(
                            batches
                                .iter()
                                .map(|(p, r)| {
                                    PartitionProduceData::default()
                                        .with_index(*p)
                                        .with_records(Some(batch::encode(r, compression).unwrap()))
                                })
                                .collect(),
                        )]);
                let mut theirs = BytesMut::new();
                req.encode(&mut theirs, version).unwrap();
                assert!(ours == theirs, "v{version} {compression:?} differs");
            }
        }
        assert!(encode_body(
            &mut BytesMut::new(),
            10,
            1,
            1,
            "t",
            &batches,
            Compression::None
        )
        .is_err());
    }
}
