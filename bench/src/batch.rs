//! Record batches as the load generator writes and reads them. Uncompressed batches are encoded
//! by hand (fast: one pass, no per-record allocation); compressed ones through kafka-protocol.

use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use tern_protocol::batch;
use tern_protocol::wire::{put_varint, varint_len};

/// One record to send: optional key, value, and its timestamp (when it was due, in ms).
pub struct Pending<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub timestamp: i64,
}

/// Encodes a RecordBatch v2 of `records`.
pub fn encode(records: &[Pending<'_>], compression: Compression) -> Result<Bytes> {
    if compression != Compression::None {
        let encoded: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                batch::plain_record(
                    i as i64,
                    r.timestamp,
                    r.key.map(Bytes::copy_from_slice),
                    Some(Bytes::copy_from_slice(r.value)),
                )
            })
            .collect();
        return batch::encode_plain(&encoded, compression);
    }
    let mut buf = BytesMut::with_capacity(encoded_len(records));
    encode_into(&mut buf, records);
    Ok(buf.freeze())
}

/// The body of record `i` (attributes to value), and its length.
fn record_len(i: usize, r: &Pending<'_>, base_ts: i64) -> usize {
    let key = r
        .key
        .map_or(varint_len(-1), |k| varint_len(k.len() as i64) + k.len());
    1 + varint_len(r.timestamp - base_ts)
        + varint_len(i as i64)
        + key
        + varint_len(r.value.len() as i64)
        + r.value.len()
        + 1 // empty headers
}

/// Bytes `encode_into` writes for `records`.
pub fn encoded_len(records: &[Pending<'_>]) -> usize {
    let base_ts = records.first().map_or(0, |r| r.timestamp);
    batch::HEADER_LEN
        + records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let len = record_len(i, r, base_ts);
                varint_len(len as i64) + len
            })
            .sum::<usize>()
}

/// Appends an uncompressed RecordBatch v2 of `records` (`encoded_len` bytes: callers size
/// `buf`) to `buf`: one pass, no per-record allocation, and the values are copied once,
/// straight to where they are sent from.
pub fn encode_into(buf: &mut BytesMut, records: &[Pending<'_>]) {
    let base_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(base_ts);
    let start = buf.len();
    buf.put_i64(0); // base offset
    buf.put_i32(0); // length, patched
    buf.put_i32(-1); // leader epoch
    buf.put_i8(2);
    buf.put_u32(0); // crc, patched
    buf.put_i16(0); // attributes
    buf.put_i32(records.len() as i32 - 1);
    buf.put_i64(base_ts);
    buf.put_i64(max_ts);
    buf.put_i64(-1); // producer id
    buf.put_i16(-1);
    buf.put_i32(-1);
    buf.put_i32(records.len() as i32);
    for (i, r) in records.iter().enumerate() {
        put_varint(buf, record_len(i, r, base_ts) as i64);
        buf.put_i8(0);
        put_varint(buf, r.timestamp - base_ts);
        put_varint(buf, i as i64);
        match r.key {
            Some(k) => {
                put_varint(buf, k.len() as i64);
                buf.put_slice(k);
            }
            None => put_varint(buf, -1),
        }
        put_varint(buf, r.value.len() as i64);
        buf.put_slice(r.value);
        put_varint(buf, 0);
    }
    let batch = &mut buf[start..];
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Calls `f(timestamp)` for every record in fetched record data (whole batches).
pub fn for_each_timestamp(mut data: Bytes, mut f: impl FnMut(i64)) -> Result<usize> {
    let mut records = 0;
    while data.len() >= batch::HEADER_LEN {
        let header = batch::BatchHeader::parse(&data).map_err(|e| anyhow::anyhow!(e))?;
        if header.total_len() > data.len() {
            break;
        }
        let batch = data.split_to(header.total_len());
        if header.is_control() {
            continue;
        }
        if header.compression() == 0 && !header.is_log_append_time() {
            // Uncompressed: read only each record's length and timestamp delta.
            let bad = || anyhow::anyhow!("malformed record in a fetched batch");
            let mut rest = &batch[batch::HEADER_LEN..];
            for _ in 0..header.record_count {
                let len = batch::take_varint(&mut rest).ok_or_else(bad)?;
                let record = rest.get(..len as usize).ok_or_else(bad)?;
                let mut fields = record.get(1..).ok_or_else(bad)?; // after the attributes
                f(header.base_timestamp + batch::take_varint(&mut fields).ok_or_else(bad)?);
                rest = &rest[len as usize..];
            }
        } else {
            let mut b = batch.clone();
            for r in RecordBatchDecoder::decode(&mut b)?.records {
                f(r.timestamp);
            }
        }
        records += header.record_count as usize;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoded_batches_are_valid_and_decodable() {
        let values: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 100 + i]).collect();
        let records: Vec<Pending> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Pending {
                key: (i % 2 == 0).then_some(b"key".as_slice()),
                value: v,
                timestamp: 1000 + i as i64,
            })
            .collect();
        for compression in [Compression::None, Compression::Lz4] {
            let batch = encode(&records, compression).unwrap();
            batch::validate(&batch).expect("valid batch");
            let decoded = RecordBatchDecoder::decode(&mut batch.clone())
                .unwrap()
                .records;
            assert_eq!(decoded.len(), 50);
            assert_eq!(decoded[7].value.as_deref(), Some(values[7].as_slice()));
            assert_eq!(decoded[8].key.as_deref(), Some(b"key".as_slice()));
            assert_eq!(decoded[9].key, None);
            let mut seen = Vec::new();
            assert_eq!(for_each_timestamp(batch, |t| seen.push(t)).unwrap(), 50);
            assert_eq!(seen, (1000..1050).collect::<Vec<_>>());
        }
        assert_eq!(
            encode(&records, Compression::None).unwrap().len(),
            encoded_len(&records)
        );
    }
}
