//! The records the transaction coordinator keeps in `__transaction_state`, in Kafka's formats
//! (TransactionLogKey v0: the transactional id; TransactionLogValue v0: producer id and epoch,
//! timeout, state, partitions, timestamps), so the topic reads as Kafka's does. A record with
//! no value is a tombstone (an expired transactional id).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::group_records::{get_str, need};

/// A transaction's state, with Kafka's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnStatus {
    pub fn from_code(code: i8) -> Option<TxnStatus> {
        use TxnStatus::*;
        Some(match code {
            0 => Empty,
            1 => Ongoing,
            2 => PrepareCommit,
            3 => PrepareAbort,
            4 => CompleteCommit,
            5 => CompleteAbort,
            6 => Dead,
            7 => PrepareEpochFence,
            _ => return None,
        })
    }

    /// Kafka's name, as DescribeTransactions and ListTransactions report it.
    pub fn name(self) -> &'static str {
        use TxnStatus::*;
        match self {
            Empty => "Empty",
            Ongoing => "Ongoing",
            PrepareCommit => "PrepareCommit",
            PrepareAbort => "PrepareAbort",
            CompleteCommit => "CompleteCommit",
            CompleteAbort => "CompleteAbort",
            Dead => "Dead",
            PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// A transactional id's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTxn {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// (topic, partition) pairs in the transaction.
    pub partitions: Vec<(String, Vec<i32>)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

/// Encodes a record: its key, and its value (`None`: a tombstone).
pub fn encode(id: &str, txn: Option<&StoredTxn>) -> (Bytes, Option<Bytes>) {
    let mut key = BytesMut::new();
    key.put_i16(0);
    put_str(&mut key, id);
    let value = txn.map(|t| {
        let mut v = BytesMut::new();
        v.put_i16(0);
        v.put_i64(t.producer_id);
        v.put_i16(t.producer_epoch);
        v.put_i32(t.timeout_ms);
        v.put_i8(t.status as i8);
        v.put_i32(t.partitions.len() as i32);
        for (topic, partitions) in &t.partitions {
            put_str(&mut v, topic);
            v.put_i32(partitions.len() as i32);
            for p in partitions {
                v.put_i32(*p);
            }
        }
        v.put_i64(t.last_update_ms);
        v.put_i64(t.start_ms);
        v.freeze()
    });
    (key.freeze(), value)
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

/// Decodes a record: the transactional id and its state (`None`: a tombstone). `None` if it
/// is not a transaction record of a known version.
pub fn decode(mut key: Bytes, value: Option<Bytes>) -> Option<(String, Option<StoredTxn>)> {
    need(&key, 2)?;
    if key.get_i16() != 0 {
        return None;
    }
    let id = get_str(&mut key)?;
    let Some(mut v) = value else {
        return Some((id, None));
    };
    need(&v, 2 + 8 + 2 + 4 + 1 + 4)?;
    let version = v.get_i16();
    if !(0..=1).contains(&version) {
        return None;
    }
    let producer_id = v.get_i64();
    let producer_epoch = v.get_i16();
    let timeout_ms = v.get_i32();
    let status = TxnStatus::from_code(v.get_i8())?;
    let count = v.get_i32();
    if count < 0 {
        return None;
    }
    let mut partitions = Vec::new();
    for _ in 0..count {
        let topic = get_str(&mut v)?;
        need(&v, 4)?;
        let n = v.get_i32();
        if n < 0 || v.remaining() < n as usize * 4 {
            return None;
        }
        partitions.push((topic, (0..n).map(|_| v.get_i32()).collect()));
    }
    need(&v, 16)?;
    Some((
        id,
        Some(StoredTxn {
            producer_id,
            producer_epoch,
            timeout_ms,
            status,
            partitions,
            last_update_ms: v.get_i64(),
            start_ms: v.get_i64(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_records_round_trip() {
        let txn = StoredTxn {
            producer_id: 4000,
            producer_epoch: 7,
            timeout_ms: 60_000,
            status: TxnStatus::PrepareCommit,
            partitions: vec![
                ("orders".into(), vec![0, 3]),
                ("__consumer_offsets".into(), vec![9]),
            ],
            last_update_ms: 1_700_000_000_001,
            start_ms: 1_700_000_000_000,
        };
        let (key, value) = encode("app-1", Some(&txn));
        assert_eq!(
            decode(key.clone(), value.clone()),
            Some(("app-1".to_string(), Some(txn)))
        );
        assert_eq!(decode(key.clone(), None), Some(("app-1".to_string(), None)));
        // Truncated or unknown values are refused, never misread.
        let value = value.unwrap();
        for cut in 0..value.len() {
            assert_eq!(decode(key.clone(), Some(value.slice(..cut))), None, "{cut}");
        }
        let mut bad = BytesMut::from(&value[..]);
        bad[16] = 99; // the status
        assert_eq!(decode(key, Some(bad.freeze())), None);
    }
}
