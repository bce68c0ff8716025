//! Writes seed inputs for the `produce_path` fuzz target into the directory given: record
//! batches in every codec, with keyed and keyless records, in the target's "wrap and fix the
//! header" mode. libFuzzer rarely builds a valid compressed stream by itself; from these it
//! mutates inside them. (`scripts/fuzz` runs this.)

use bytes::Bytes;
use std::path::PathBuf;
use tern_protocol::batch;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    let keys = [Some("a"), None, Some("key-c"), None];
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let key = k.map(|k| Bytes::from(k.to_string()));
            let value = Bytes::from(format!("value {i} ").repeat(i + 1));
            batch::plain_record(i as i64, 1_700_000_000_000, key, Some(value))
        })
        .collect();
    for codec in batch::COMPRESSIONS {
        for n in [1, records.len()] {
            let data = batch::encode_plain(&records[..n], codec)?;
            // Mode 0b011: wrap in a Produce request, fix length, magic and CRC.
            let mut seed = vec![0b011];
            seed.extend_from_slice(&data);
            std::fs::write(dir.join(format!("seed-{codec:?}-{n}")), seed)?;
        }
    }
    Ok(())
}
