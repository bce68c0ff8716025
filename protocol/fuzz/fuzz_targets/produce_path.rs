//! The Produce path as the broker sees it: a frame is decoded, and each partition's records
//! get the leader's check (`batch::check_produced`, with and without the compacted-topic key
//! check, which decompresses). The first byte picks the mode: bit 0 clear, the rest is a whole
//! frame; set, the rest is records wrapped in a well-formed Produce request (bits 3.. pick its
//! version), and with bit 1 the first batch's length, magic and CRC are made right first, so
//! the fuzzer gets past the CRC into the records and the codecs (`scripts/fuzz` seeds it with
//! batches in every codec).
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use tern_protocol::kafka_protocol::messages::{ProduceRequest, RequestHeader, RequestKind};
use tern_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use tern_protocol::{batch, frame};

/// A Produce request frame (v3..=v11 by `pick`) carrying `records` for one partition.
fn produce_frame(pick: u8, records: &[u8]) -> Option<Bytes> {
    let version = 3 + (pick % 9) as i16;
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let partition = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::copy_from_slice(records)));
    let topic = TopicProduceData::default()
        .with_name(StrBytes::from_static_str("t").into())
        .with_partition_data(vec![partition]);
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![topic]);
    let mut buf = BytesMut::new();
    let header_version =
        tern_protocol::kafka_protocol::messages::ApiKey::Produce.request_header_version(version);
    header.encode(&mut buf, header_version).ok()?;
    request.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

/// Makes the first batch's length span `records`, its magic 2 and its CRC right.
fn fix_header(records: &mut [u8]) {
    let len = (records.len() - batch::LOG_OVERHEAD) as i32;
    records[8..12].copy_from_slice(&len.to_be_bytes());
    records[16] = 2;
    let crc = batch::compute_crc(records);
    records[17..21].copy_from_slice(&crc.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let frame = if mode & 1 == 0 {
        Bytes::copy_from_slice(rest)
    } else {
        let mut records = rest.to_vec();
        if mode & 2 != 0 && records.len() >= batch::HEADER_LEN {
            fix_header(&mut records);
        }
        match produce_frame(mode >> 3, &records) {
            Some(frame) => frame,
            None => return,
        }
    };
    let Ok(request) = frame::decode_request(frame) else {
        return;
    };
    let RequestKind::Produce(produce) = request.body else {
        return;
    };
    for topic in &produce.topic_data {
        for partition in &topic.partition_data {
            if let Some(records) = &partition.records {
                let plain = batch::check_produced(records, 1 << 20, false);
                let compacted = batch::check_produced(records, 1 << 20, true);
                // The key check only adds refusals: it never accepts what the plain one refuses.
                assert!(plain.is_ok() || compacted.is_err());
            }
        }
    }
});
