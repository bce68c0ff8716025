//! RecordBatch v2 headers: parsing, validation and the few in-place edits the broker makes.
//!
//! The broker never decodes records on the produce or fetch path. It reads the 61-byte batch
//! header, checks magic, length and CRC-32C, then patches the base offset and partition leader
//! epoch (neither is covered by the CRC) and stores the bytes as they came.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use thiserror::Error;

/// Size of the fixed RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s coverage starts (base offset + length field).
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// Why a record batch was refused. Mapped to Kafka error codes in one place (`error_code`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch truncated: {0} bytes left, need {1}")]
    Truncated(usize, usize),
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    #[error("record batch magic {0} is not supported (only v2)")]
    BadMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record batch has inconsistent record count {count} / last offset delta {delta}")]
    BadCount { count: i32, delta: i32 },
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("no record batch in request")]
    Empty,
    #[error("record batch records do not match its header: {0}")]
    BadRecords(&'static str),
}

impl BatchError {
    /// The Kafka error code a producer gets for this batch.
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            BatchError::TooLarge { .. } => E::MessageTooLarge.code(),
            // Not retriable: the same bytes would be refused again.
            BatchError::Empty | BatchError::BadRecords(_) => E::InvalidRecord.code(),
            _ => E::CorruptMessage.code(),
        }
    }
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed header of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `buf` without checking the CRC.
    /// Checks only what is needed to walk safely: enough bytes, a sane length, magic 2.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated(buf.len(), HEADER_LEN));
        }
        let batch_length = i32_at(buf, BATCH_LENGTH);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        let magic = buf[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length,
            partition_leader_epoch: i32_at(buf, LEADER_EPOCH),
            magic,
            crc: u32::from_be_bytes(buf[CRC..CRC + 4].try_into().expect("4 bytes")),
            attributes: i16_at(buf, ATTRIBUTES),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            record_count: i32_at(buf, RECORD_COUNT),
        })
    }

    /// Whole size of the batch on the wire and on disk.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// CRC-32C of a whole batch as stored in its header (covers attributes to the end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Parses and fully validates the batch at the start of `buf` (length, magic, CRC, counts).
/// Returns the header; the batch occupies `header.total_len()` bytes of `buf`.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_len();
    if buf.len() < total {
        return Err(BatchError::Truncated(buf.len(), total));
    }
    let computed = compute_crc(&buf[..total]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count < 0
        || header.last_offset_delta < 0
        || (header.compression() == 0
            && header.record_count > 0
            && header.last_offset_delta != header.record_count - 1)
    {
        return Err(BatchError::BadCount {
            count: header.record_count,
            delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Summary of the batches in one produce payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedBatches {
    /// Number of batches.
    pub count: usize,
    /// Offsets the batches take in the log (sum of lastOffsetDelta + 1).
    pub offset_span: i64,
    pub max_timestamp: i64,
}

/// Every codec a record batch may use (attributes bits 0-2 = 0..4).
pub const COMPRESSIONS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// Validates every batch of a produce payload: each must be whole, v2, CRC-correct and at most
/// `max_batch_bytes` long, and the batches must fill the payload exactly. The records of an
/// uncompressed batch must also match its header (compressed ones are not decompressed here).
/// With `keyless`, the walk also collects the indexes of uncompressed records without a key (a
/// produce carries one batch, so they are indexes in it), for compacted topics.
pub fn validate_produce(
    records: &[u8],
    max_batch_bytes: usize,
    mut keyless: Option<&mut Vec<i32>>,
) -> Result<ProducedBatches, BatchError> {
    let mut at = 0;
    let mut summary = ProducedBatches {
        count: 0,
        offset_span: 0,
        max_timestamp: -1,
    };
    while at < records.len() {
        let header = validate(&records[at..])?;
        if header.total_len() > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: header.total_len(),
                max: max_batch_bytes,
            });
        }
        if header.compression() == 0 {
            check_records(
                &records[at..at + header.total_len()],
                &header,
                keyless.as_deref_mut(),
            )?;
        }
        summary.count += 1;
        summary.offset_span += header.last_offset_delta as i64 + 1;
        summary.max_timestamp = summary.max_timestamp.max(header.max_timestamp);
        at += header.total_len();
    }
    if summary.count == 0 {
        return Err(BatchError::Empty);
    }
    Ok(summary)
}

/// Why a partition leader refuses a producer's payload.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProduceError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("a produce request must carry exactly one record batch per partition, not {0}")]
    BatchCount(usize),
    /// Records without a key sent to a compacted topic, by index in their batch.
    #[error("a compacted topic cannot accept records without a key ({} in this batch)", .0.len())]
    KeylessRecords(Vec<i32>),
}

/// The check a partition leader makes of a producer's payload before it takes offsets:
/// exactly one valid batch (as Kafka requires) within `max_message_bytes`, and for a
/// `compacted` topic every record keyed. An uncompressed batch is walked in place; a
/// compressed one is decompressed (within a bound) only for a compacted topic.
pub fn check_produced(
    records: &[u8],
    max_message_bytes: usize,
    compacted: bool,
) -> Result<BatchHeader, ProduceError> {
    let mut keyless = Vec::new();
    let summary = validate_produce(
        records,
        max_message_bytes,
        compacted.then_some(&mut keyless),
    )?;
    if summary.count != 1 {
        return Err(ProduceError::BatchCount(summary.count));
    }
    let header = BatchHeader::parse(records)?;
    if header.is_control() {
        // Only coordinators and Raft write control batches.
        return Err(BatchError::BadRecords("clients may not write control batches").into());
    }
    if compacted {
        if header.compression() != 0 {
            keyless = crate::compression::keyless_records(records, &header)
                .map_err(|_| BatchError::BadRecords("records that do not decompress or parse"))?;
        }
        if !keyless.is_empty() {
            return Err(ProduceError::KeylessRecords(keyless));
        }
    }
    Ok(header)
}

/// Walks the records of an uncompressed batch (no allocation): each must parse and fill its
/// declared length, offset deltas must run 0, 1, 2, ..., and exactly `record_count` records
/// must fill the batch. As Kafka checks, so a batch whose header lies is refused, not stored.
fn check_records(
    batch: &[u8],
    header: &BatchHeader,
    mut keyless: Option<&mut Vec<i32>>,
) -> Result<(), BatchError> {
    let rest = split_records(
        &batch[HEADER_LEN..],
        header.record_count,
        |index, record| {
            let null_key =
                check_record(record, index).ok_or(BatchError::BadRecords("malformed record"))?;
            if let (true, Some(k)) = (null_key, keyless.as_deref_mut()) {
                k.push(index);
            }
            Ok(())
        },
    )?;
    if !rest.is_empty() {
        return Err(BatchError::BadRecords("bytes after the last record"));
    }
    Ok(())
}

/// Hands each of `record_count` length-prefixed records to `each` with its index; returns
/// what follows the last one.
fn split_records(
    mut rest: &[u8],
    record_count: i32,
    mut each: impl FnMut(i32, &[u8]) -> Result<(), BatchError>,
) -> Result<&[u8], BatchError> {
    for index in 0..record_count {
        let len = take_varint(&mut rest).ok_or(BatchError::BadRecords("record length"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or(BatchError::BadRecords("record length past the batch end"))?;
        let (record, after) = rest.split_at(len);
        each(index, record)?;
        rest = after;
    }
    Ok(rest)
}

/// Checks one record's fields (attributes, timestamp delta, offset delta, key, value,
/// headers) fill it exactly; returns whether its key is null.
fn check_record(mut r: &[u8], index: i32) -> Option<bool> {
    let (_attributes, rest) = r.split_first()?;
    r = rest;
    take_varint(&mut r)?; // timestamp delta
    if take_varint(&mut r)? != index as i64 {
        return None;
    }
    let skip_bytes = |r: &mut &[u8], nullable: bool| -> Option<()> {
        let len = take_varint(r)?;
        if len == -1 && nullable {
            return Some(());
        }
        let len = usize::try_from(len).ok().filter(|&l| l <= r.len())?;
        *r = &r[len..];
        Some(())
    };
    let null_key = take_varint(&mut { r })? == -1;
    skip_bytes(&mut r, true)?; // key
    skip_bytes(&mut r, true)?; // value
    let headers = take_varint(&mut r)?;
    if headers < 0 {
        return None;
    }
    for _ in 0..headers {
        skip_bytes(&mut r, false)?; // header key
        skip_bytes(&mut r, true)?; // header value
    }
    r.is_empty().then_some(null_key)
}

/// The indexes of the records without a key (null key) in a batch's records section
/// (`record_count` records: the bytes after the header, decompressed if the batch is
/// compressed). Walks them in place; fails on records that do not parse.
pub fn keyless_records(records: &[u8], record_count: i32) -> Result<Vec<i32>, BatchError> {
    let mut keyless = Vec::new();
    split_records(records, record_count, |index, mut record| {
        // attributes (1 byte), timestamp delta, offset delta, then the key's length.
        record = record
            .get(1..)
            .ok_or(BatchError::BadRecords("malformed record"))?;
        for _ in 0..2 {
            take_varint(&mut record).ok_or(BatchError::BadRecords("malformed record"))?;
        }
        if take_varint(&mut record).ok_or(BatchError::BadRecords("malformed record"))? < 0 {
            keyless.push(index);
        }
        Ok(())
    })?;
    Ok(keyless)
}

/// Reads a zigzag varint (at most 10 bytes) from the front of `buf`, advancing it.
pub fn take_varint(buf: &mut &[u8]) -> Option<i64> {
    let mut n: u64 = 0;
    for (i, &b) in buf.iter().take(10).enumerate() {
        n |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some((n >> 1) as i64 ^ -((n & 1) as i64));
        }
    }
    None
}

/// Iterates the headers of well-formed batches laid end to end (stored log data), stopping at
/// the first incomplete or malformed one. Yields `(position, header)`. CRCs are not checked.
pub fn headers(buf: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = BatchHeader::parse(&buf[at..]).ok()?;
        if buf.len() - at < header.total_len() {
            return None;
        }
        let here = at;
        at += header.total_len();
        Some((here, header))
    })
}

/// The base offset of the batch at the start of `batch` (which holds at least its header).
pub fn base_offset(batch: &[u8]) -> i64 {
    i64::from_be_bytes(
        batch[BASE_OFFSET..BASE_OFFSET + 8]
            .try_into()
            .expect("8 bytes"),
    )
}

/// Sets the base offset of the batch at the start of `batch` (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the partition leader epoch (not covered by the CRC).
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Sets the base sequence (covered by the CRC, which is rewritten).
pub fn set_base_sequence(batch: &mut [u8], sequence: i32) {
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&sequence.to_be_bytes());
    rewrite_crc(batch);
}

fn rewrite_crc(batch: &mut [u8]) {
    let len = (i32_at(batch, BATCH_LENGTH) as usize + LOG_OVERHEAD).min(batch.len());
    let crc = compute_crc(&batch[..len]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `now_ms` as its max timestamp and rewrites the CRC.
/// The batch is `head` (at least its header) followed by `rest`, which is left as it is.
pub fn set_log_append_time(head: &mut [u8], rest: &[u8], now_ms: i64) {
    let attributes = i16_at(head, ATTRIBUTES) | TIMESTAMP_TYPE_LOG_APPEND;
    head[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    head[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[ATTRIBUTES..]), rest);
    head[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A record of a plain batch (not idempotent, not transactional), for `encode_plain`.
pub fn plain_record(
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Encodes plain records (offsets ascending) as one RecordBatch v2, as a client would: the
/// kafka-protocol encoder starts a new batch whenever offset - sequence changes, so records
/// get sequences that keep them together, and the header's base sequence is then reset to -1.
pub fn encode_plain(records: &[Record], compression: Compression) -> anyhow::Result<Bytes> {
    let first = records.first().map_or(0, |r| r.offset);
    let aligned: Vec<Record> = records
        .iter()
        .map(|r| Record {
            sequence: (r.offset - first) as i32,
            ..r.clone()
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &aligned,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    if !buf.is_empty() {
        set_base_sequence(&mut buf, -1);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    /// Encodes `n` records with the kafka-protocol crate, as a client would.
    pub fn sample_batch(n: usize, compression: Compression, value_len: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                headers: [(StrBytes::from_static_str("h"), Some(b"x".to_vec().into()))]
                    .into_iter()
                    .collect(),
                ..plain_record(
                    i as i64,
                    1_700_000_000_000 + i as i64,
                    Some(format!("key-{i}").into_bytes().into()),
                    Some(vec![b'v'; value_len].into()),
                )
            })
            .collect();
        encode_plain(&records, compression)
            .expect("encode")
            .to_vec()
    }

    #[test]
    fn the_produce_walk_collects_records_without_a_key() {
        let records: Vec<Record> = [Some("a"), None, Some("c"), None]
            .iter()
            .enumerate()
            .map(|(i, k)| plain_record(i as i64, 1, k.map(|k| Bytes::from(k.to_string())), None))
            .collect();
        let batch = encode_plain(&records, Compression::None).unwrap();
        let mut keyless = Vec::new();
        validate_produce(&batch, 1 << 20, Some(&mut keyless)).expect("valid");
        assert_eq!(keyless, vec![1, 3]);
        let section = &batch[HEADER_LEN..];
        assert_eq!(
            keyless_records(section, 4),
            Ok(vec![1, 3]),
            "the same by the key-only walk"
        );
    }

    #[test]
    fn parses_client_batches_for_every_codec() {
        for codec in COMPRESSIONS {
            let batch = sample_batch(10, codec, 100);
            let summary = validate_produce(&batch, 1 << 20, None).expect("valid");
            assert_eq!(summary.count, 1);
            assert_eq!(summary.offset_span, 10);
            assert_eq!(summary.max_timestamp, 1_700_000_000_009);
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(header.record_count, 10);
            assert_eq!(header.compression(), codec as i16);
        }
    }

    #[test]
    fn rejects_bad_crc_magic_and_size() {
        let batch = sample_batch(3, Compression::None, 10);
        let mut flipped = batch.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            validate_produce(&flipped, 1 << 20, None),
            Err(BatchError::BadCrc { .. })
        ));
        let mut old_magic = batch.clone();
        old_magic[MAGIC] = 1;
        assert_eq!(
            validate_produce(&old_magic, 1 << 20, None),
            Err(BatchError::BadMagic(1))
        );
        assert!(matches!(
            validate_produce(&batch, 20, None),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            validate_produce(&batch[..batch.len() - 1], 1 << 20, None),
            Err(BatchError::Truncated(..))
        ));
        assert_eq!(validate_produce(&[], 1 << 20, None), Err(BatchError::Empty));
    }

    /// `batch` with its header's record count and last offset delta set to `count` (CRC fixed).
    fn with_declared_count(batch: &[u8], count: i32) -> Vec<u8> {
        let mut b = batch.to_vec();
        b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(count - 1).to_be_bytes());
        rewrite_crc(&mut b);
        b
    }

    #[test]
    fn uncompressed_records_must_match_the_header() {
        let batch = sample_batch(3, Compression::None, 10);
        assert!(validate_produce(&batch, 1 << 20, None).is_ok());
        for count in [2, 4, 1000, i32::MAX] {
            let lying = with_declared_count(&batch, count);
            assert!(
                matches!(
                    validate_produce(&lying, 1 << 20, None),
                    Err(BatchError::BadRecords(_))
                ),
                "count {count}"
            );
        }
        // A first record whose length does not match its fields.
        let mut long = batch.clone();
        long[HEADER_LEN] = 0x7e; // zigzag 63
        rewrite_crc(&mut long);
        assert!(matches!(
            validate_produce(&long, 1 << 20, None),
            Err(BatchError::BadRecords(_))
        ));
        // Compressed batches are not decompressed: their count is taken as declared.
        let lz4 = sample_batch(3, Compression::Lz4, 10);
        assert!(validate_produce(&with_declared_count(&lz4, 5), 1 << 20, None).is_ok());
    }

    proptest! {
        /// Any bytes in place of an uncompressed batch's records are refused or accepted
        /// without panicking, and accepted ones really hold the declared records.
        #[test]
        fn record_walk_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), count in 0i32..20) {
            let mut b = sample_batch(1, Compression::None, 1)[..HEADER_LEN].to_vec();
            b.extend_from_slice(&body);
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            let b = with_declared_count(&b, count.max(1));
            if validate_produce(&b, 1 << 20, None).is_ok() {
                let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes::Bytes::from(b)).unwrap();
                prop_assert_eq!(decoded.records.len() as i32, count.max(1));
            }
        }
    }

    #[test]
    fn edits_keep_the_batch_valid() {
        let mut batch = sample_batch(5, Compression::Lz4, 50);
        set_base_offset(&mut batch, 1234);
        set_leader_epoch(&mut batch, 7);
        let mut head = batch[..HEADER_LEN].to_vec();
        set_log_append_time(&mut head, &batch[HEADER_LEN..], 42);
        batch[..HEADER_LEN].copy_from_slice(&head);
        let header = validate(&batch).expect("still valid");
        assert_eq!(header.base_offset, 1234);
        assert_eq!(header.last_offset(), 1238);
        assert_eq!(header.partition_leader_epoch, 7);
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 42);
    }

    #[test]
    fn plain_records_encode_as_one_batch() {
        let records: Vec<Record> = (0..10)
            .map(|i| {
                plain_record(
                    i,
                    1000 + i,
                    Some(Bytes::from(format!("k{i}"))),
                    Some(Bytes::from_static(b"v")),
                )
            })
            .collect();
        for codec in [Compression::None, Compression::Zstd] {
            let data = encode_plain(&records, codec).unwrap();
            let header = validate(&data).expect("valid");
            assert_eq!(header.total_len(), data.len(), "a single batch");
            assert_eq!(
                (
                    header.record_count,
                    header.base_sequence,
                    header.producer_id
                ),
                (10, -1, -1)
            );
        }
    }

    #[test]
    fn walks_concatenated_batches() {
        let mut log = Vec::new();
        for i in 0..4 {
            let mut b = sample_batch(i + 1, Compression::None, 8);
            set_base_offset(&mut b, (i * 10) as i64);
            log.extend_from_slice(&b);
        }
        let tail = log.len();
        log.extend_from_slice(&[0u8; 100]);
        let found: Vec<_> = headers(&log).map(|(pos, h)| (pos, h.base_offset)).collect();
        assert_eq!(found.len(), 4);
        assert_eq!(found[3].1, 30);
        let end = found.last().map(|(p, _)| *p).unwrap()
            + BatchHeader::parse(&log[found[3].0..]).unwrap().total_len();
        assert_eq!(end, tail);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate_produce(&data, 1 << 20, Some(&mut Vec::new()));
            let _ = headers(&data).count();
        }

        #[test]
        fn any_single_byte_corruption_is_caught(pos in 0usize..400, bit in 0u8..8) {
            let batch = sample_batch(4, Compression::None, 60);
            let pos = pos % batch.len();
            // Base offset and leader epoch are outside the CRC by design.
            prop_assume!(pos >= MAGIC);
            let mut bad = batch.clone();
            bad[pos] ^= 1 << bit;
            prop_assert!(validate_produce(&bad, 1 << 20, None).is_err());
        }
    }
}
