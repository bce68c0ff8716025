//! Log compaction (`cleanup.policy=compact`): closed segments are rewritten keeping only the
//! newest record of each key; tombstones (null values) go once older than
//! `delete.retention.ms`. Offsets never change, and the active segment is never touched.
//!
//! Records of aborted transactions are dropped and never shadow an older record of their key.
//! A transaction marker stays while any record of its transaction does; once a round finds
//! none left (earlier rounds removed them), the marker goes when older than
//! `delete.retention.ms`, as Kafka's cleaner removes it. Compaction stays below the last
//! stable offset, so no open transaction's records are touched.
//!
//! Each segment is rewritten to `<base>.cleaned`, synced, then renamed over the original, so a
//! crash leaves either the old or the new segment, never a mix (left-over `.cleaned` files are
//! removed on open).

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
use std::collections::{HashMap, HashSet};
use std::io;
use tern_protocol::batch::{self, BatchHeader};
use tern_protocol::compression::{codec, decode_records, invalid};
use tern_protocol::markers;

use crate::txn_index::AbortedTxn;

/// Key -> offset of its newest record. Keys are copied out of their batches, so the map holds
/// no batch buffer alive.
pub type OffsetMap = HashMap<Bytes, i64>;

/// What a key costs in an [`OffsetMap`] beyond its bytes (hash table slot, `Bytes`, offset).
pub const MAP_ENTRY_OVERHEAD: usize = 64;

/// The offset ranges of aborted transactions, by producer.
#[derive(Debug, Default)]
pub struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    pub fn new(aborted: &[AbortedTxn]) -> AbortedRanges {
        let mut ranges: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for t in aborted {
            ranges
                .entry(t.producer_id)
                .or_default()
                .push((t.first_offset, t.last_offset));
        }
        AbortedRanges(ranges)
    }

    /// Whether `header` is a data batch of an aborted transaction.
    pub fn contains(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && self.0.get(&header.producer_id).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|&(first, last)| (first..=last).contains(&header.base_offset))
            })
    }
}

/// What a round has read of the log so far, in order, about transactions: the producers with
/// a transaction whose records are still in the log (records read since the producer's last
/// marker), and the abort markers the round removed.
#[derive(Debug, Default)]
pub struct Transactions {
    with_records: HashSet<i64>,
    /// Offsets of the abort markers removed (their aborted-index entries go with them).
    pub removed_aborts: Vec<i64>,
}

/// Adds the keys of one batch's records to `map`; returns the bytes its new keys take.
/// Aborted batches add nothing.
pub fn index_batch(
    batch: &[u8],
    header: &BatchHeader,
    aborted: &AbortedRanges,
    map: &mut OffsetMap,
) -> io::Result<usize> {
    if header.is_control() || aborted.contains(header) {
        return Ok(0);
    }
    let mut added = 0;
    for r in decode_records(batch)? {
        let Some(key) = r.key else { continue };
        match map.get_mut(&key) {
            Some(offset) => *offset = r.offset,
            None => {
                added += key.len() + MAP_ENTRY_OVERHEAD;
                map.insert(Bytes::copy_from_slice(&key), r.offset);
            }
        }
    }
    Ok(added)
}

/// What compacting some batches kept and removed (records).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub kept: usize,
    pub removed: usize,
}

/// Appends to `out` what compaction keeps of one batch: the batch as it is when it loses
/// nothing, else its surviving records re-encoded (same codec, offsets and leader epoch), or
/// nothing when none survive. A record survives unless `map` holds its key at a newer offset
/// (keys `map` does not hold were indexed by an earlier compaction: their newest record
/// survives) or it is a tombstone with a timestamp before `tombstone_horizon_ms`. Records
/// without a key are kept; batches of aborted transactions are dropped. Control batches are
/// kept but for a transaction marker older than the horizon whose transaction has no records
/// left in what `txns` saw (the batches are passed in log order, from the log start).
pub fn clean_batch(
    original: &[u8],
    header: &BatchHeader,
    aborted: &AbortedRanges,
    map: &OffsetMap,
    tombstone_horizon_ms: i64,
    txns: &mut Transactions,
    out: &mut Vec<u8>,
) -> io::Result<Counts> {
    if header.is_control() {
        if let Some(commit) = markers::marker_kind(header, original) {
            let had_records = txns.with_records.remove(&header.producer_id);
            if !had_records && header.max_timestamp < tombstone_horizon_ms {
                if !commit {
                    txns.removed_aborts.push(header.base_offset);
                }
                return Ok(Counts {
                    kept: 0,
                    removed: 1,
                });
            }
        }
        out.extend_from_slice(original);
        return Ok(Counts::default());
    }
    if header.is_transactional() {
        // Present in the log this round, even if removed now: its marker stays until a
        // round finds the transaction empty, so a crash between the rewrites of two segments
        // never leaves records whose marker is gone.
        txns.with_records.insert(header.producer_id);
    }
    if aborted.contains(header) {
        return Ok(Counts {
            kept: 0,
            removed: header.record_count.max(0) as usize,
        });
    }
    let records = decode_records(original)?;
    let total = records.len();
    let survivors: Vec<_> = records
        .into_iter()
        .filter(|r| match &r.key {
            None => true,
            Some(key) => {
                map.get(key).is_none_or(|newest| *newest == r.offset)
                    && !(r.value.is_none() && r.timestamp < tombstone_horizon_ms)
            }
        })
        .collect();
    let counts = Counts {
        kept: survivors.len(),
        removed: total - survivors.len(),
    };
    if counts.removed == 0 {
        out.extend_from_slice(original);
        return Ok(counts);
    }
    if survivors.is_empty() {
        return Ok(counts);
    }
    let mut encoded = if header.producer_id >= 0 {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &survivors,
            &RecordEncodeOptions {
                version: 2,
                compression: codec(header),
            },
        )
        .map_err(invalid)?;
        buf
    } else {
        BytesMut::from(&batch::encode_plain(&survivors, codec(header)).map_err(invalid)?[..])
    };
    let spans: Vec<_> = batch::headers(&encoded)
        .map(|(pos, h)| pos..pos + h.total_len())
        .collect();
    for span in spans {
        batch::set_leader_epoch(&mut encoded[span], header.partition_leader_epoch);
    }
    out.extend_from_slice(&encoded);
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    // Whole-data forms of the per-batch steps, as compaction runs them over a segment.
    /// Adds the keys of every record in `data` (whole batches) to `map`.
    fn index_keys(data: &[u8], map: &mut OffsetMap) -> io::Result<()> {
        for (pos, header) in batch::headers(data) {
            index_batch(
                &data[pos..pos + header.total_len()],
                &header,
                &AbortedRanges::default(),
                map,
            )?;
        }
        Ok(())
    }

    /// What compacting one segment's data kept.
    struct Cleaned {
        data: Vec<u8>,
        kept: usize,
        removed: usize,
    }

    /// Rewrites `data` (whole batches) as [`clean_batch`] does each batch.
    fn clean(data: &[u8], map: &OffsetMap, tombstone_horizon_ms: i64) -> io::Result<Cleaned> {
        let mut out = Vec::with_capacity(data.len());
        let (mut kept, mut removed) = (0, 0);
        for (pos, header) in batch::headers(data) {
            let original = &data[pos..pos + header.total_len()];
            let counts = clean_batch(
                original,
                &header,
                &AbortedRanges::default(),
                map,
                tombstone_horizon_ms,
                &mut Transactions::default(),
                &mut out,
            )?;
            kept += counts.kept;
            removed += counts.removed;
        }
        Ok(Cleaned {
            data: out,
            kept,
            removed,
        })
    }

    fn batch_of(
        base: i64,
        items: &[(&str, Option<&str>)],
        ts: i64,
        compression: Compression,
    ) -> Vec<u8> {
        let records: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                batch::plain_record(
                    base + i as i64,
                    ts,
                    Some(Bytes::from(k.to_string())),
                    v.map(|v| Bytes::from(v.to_string())),
                )
            })
            .collect();
        batch::encode_plain(&records, compression).unwrap().to_vec()
    }

    #[test]
    fn keeps_the_newest_value_per_key_and_expires_tombstones() {
        for compression in batch::COMPRESSIONS {
            let mut log = batch_of(
                0,
                &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))],
                100,
                compression,
            );
            log.extend(batch_of(
                3,
                &[("a", Some("2")), ("b", None)],
                100,
                compression,
            ));
            log.extend(batch_of(5, &[("d", None)], 5000, compression));
            let mut map = OffsetMap::new();
            index_keys(&log, &mut map).unwrap();
            let cleaned = clean(&log, &map, 1000).unwrap();
            assert_eq!((cleaned.kept, cleaned.removed), (3, 3));
            let mut seen = Vec::new();
            for (pos, h) in batch::headers(&cleaned.data) {
                let one = &cleaned.data[pos..pos + h.total_len()];
                batch::validate(one).expect("valid batch");
                assert_eq!(h.base_sequence, -1);
                let mut b = Bytes::copy_from_slice(one);
                for r in RecordBatchDecoder::decode(&mut b).unwrap().records {
                    seen.push((
                        String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                        r.offset,
                        r.value.is_some(),
                    ));
                }
            }
            // c keeps offset 2, a its newest (3); b's tombstone (old) is gone; d's is recent.
            assert_eq!(
                seen,
                vec![
                    ("c".into(), 2, true),
                    ("a".into(), 3, true),
                    ("d".into(), 5, false)
                ]
            );
        }
    }

    #[test]
    fn a_compression_bomb_is_refused_not_decompressed() {
        // 64 MiB of zeros compresses to well under 1/64 of that with these codecs (snappy
        // cannot go below about 1/21, so its batches stay within the ratio).
        for compression in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let zeros = "\0".repeat(64 << 20);
            let bomb = batch_of(0, &[("k", Some(zeros.as_str()))], 100, compression);
            assert!(
                bomb.len() < 4 << 20,
                "{compression:?}: {} bytes",
                bomb.len()
            );
            let err = index_keys(&bomb, &mut OffsetMap::new()).unwrap_err();
            assert!(
                err.to_string().contains("decompresses to more than"),
                "{compression:?}: {err}"
            );
        }
    }
}
