//! Bounded decompression of record batches: the broker decompresses only where it must (a
//! compacted topic's produce check and compaction), and never past a limit, so a compression
//! bomb costs an error, not the shard's memory.

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use std::io::{self, Read};

use crate::batch::{self, BatchHeader};

pub fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The records of one stored batch. A compressed batch may decompress to at most 64 times its
/// size (and never more than 256 MiB; at least 16 MiB is always allowed): produce does not
/// decompress, so a compression bomb would otherwise take the shard's memory here. A batch over
/// the limit is an error like a corrupt one: the segment is left uncompacted.
pub fn decode_records(batch: &[u8]) -> io::Result<Vec<Record>> {
    let limit = batch.len().saturating_mul(64).clamp(16 << 20, 256 << 20);
    let mut bytes = Bytes::copy_from_slice(batch);
    let decompress = |data: &mut Bytes, codec: Compression| decompress_limited(data, codec, limit);
    Ok(
        RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(decompress))
            .map_err(invalid)?
            .records,
    )
}

/// The indexes of the records without a key in one produced batch (already validated), for a
/// compacted topic, which refuses them as Kafka does. A compressed batch is decompressed within
/// the same bound as compaction uses; uncompressed records are walked in place.
pub fn keyless_records(batch: &[u8], header: &BatchHeader) -> io::Result<Vec<i32>> {
    let records = &batch[batch::HEADER_LEN..header.total_len()];
    let count = header.record_count;
    let found = match codec(header) {
        Compression::None => batch::keyless_records(records, count),
        codec => {
            let limit = batch.len().saturating_mul(64).clamp(16 << 20, 256 << 20);
            let mut input = Bytes::copy_from_slice(records);
            let plain = decompress_limited(&mut input, codec, limit).map_err(invalid)?;
            batch::keyless_records(&plain, count)
        }
    };
    found.map_err(invalid)
}

/// Decompresses a batch's records (Kafka's framing for each codec), failing past `limit` bytes
/// before allocating them.
fn decompress_limited(data: &mut Bytes, codec: Compression, limit: usize) -> anyhow::Result<Bytes> {
    let input = std::mem::take(data);
    let mut out = Vec::new();
    match codec {
        Compression::None => return Ok(input),
        Compression::Gzip => {
            read_limited(flate2::read::GzDecoder::new(&input[..]), limit, &mut out)?
        }
        Compression::Lz4 => read_limited(lz4::Decoder::new(&input[..])?, limit, &mut out)?,
        Compression::Zstd => read_limited(
            zstd::stream::read::Decoder::new(&input[..])?,
            limit,
            &mut out,
        )?,
        Compression::Snappy => snappy_limited(&input, limit, &mut out)?,
    }
    Ok(out.into())
}

fn read_limited(reader: impl Read, limit: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
    reader.take(limit as u64 + 1).read_to_end(out)?;
    within_limit(out.len(), limit)
}

fn within_limit(len: usize, limit: usize) -> anyhow::Result<()> {
    if len > limit {
        anyhow::bail!("batch decompresses to more than {limit} bytes");
    }
    Ok(())
}

/// Kafka's snappy: xerial framing (a 16-byte header, then length-prefixed raw blocks), or one
/// raw block without the header. Each block states its decompressed length up front.
fn snappy_limited(input: &[u8], limit: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
    const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let block = |raw: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let len = snap::raw::decompress_len(raw)?;
        within_limit(out.len() + len, limit)?;
        let start = out.len();
        out.resize(start + len, 0);
        let written = snap::raw::Decoder::new().decompress(raw, &mut out[start..])?;
        out.truncate(start + written);
        Ok(())
    };
    if !(input.starts_with(XERIAL_MAGIC) && input.len() >= 16) {
        return block(input, out);
    }
    let mut rest = &input[16..];
    while !rest.is_empty() {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            anyhow::bail!("truncated snappy block length");
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > after.len() {
            anyhow::bail!("truncated snappy block");
        }
        block(&after[..len], out)?;
        rest = &after[len..];
    }
    Ok(())
}

/// The codec a batch header names.
pub fn codec(header: &BatchHeader) -> Compression {
    match header.compression() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_records_are_found_in_every_codec() {
        let keys = [Some("a"), None, Some("c"), None, None];
        let records: Vec<Record> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = k.map(|k| Bytes::from(k.to_string()));
                batch::plain_record(i as i64, 1_000, key, Some(Bytes::from_static(b"v")))
            })
            .collect();
        for codec in batch::COMPRESSIONS {
            let data = batch::encode_plain(&records, codec).unwrap();
            let header = BatchHeader::parse(&data).unwrap();
            assert_eq!(
                keyless_records(&data, &header).unwrap(),
                vec![1, 3, 4],
                "{codec:?}"
            );
        }
        let keyed = batch::encode_plain(&records[..1], Compression::Gzip).unwrap();
        let header = BatchHeader::parse(&keyed).unwrap();
        assert!(keyless_records(&keyed, &header).unwrap().is_empty());
    }
}
