//! Field writers for the hand-written encoders (Fetch responses here, Produce requests and
//! record batches in tern-bench): Kafka's primitive encodings, plain and flexible (compact).

use bytes::{BufMut, BytesMut};

/// An unsigned varint (compact lengths, tagged-field counts).
pub fn put_uvarint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// A zigzag varint (record fields); the reader is [`crate::batch::take_varint`].
pub fn put_varint(buf: &mut BytesMut, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Bytes `put_varint(v)` writes.
pub fn varint_len(v: i64) -> usize {
    let n = ((v << 1) ^ (v >> 63)) as u64;
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// An array's length: compact in flexible versions, INT32 before.
pub fn put_array_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_uvarint(buf, len as u64 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

/// A (non-null) byte string's length, records included: compact or INT32.
pub fn put_bytes_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    put_array_len(buf, flexible, len);
}

/// A string: compact or INT16 length, then its bytes.
pub fn put_string(buf: &mut BytesMut, flexible: bool, s: &str) {
    if flexible {
        put_uvarint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s.as_bytes());
}

/// A null string: compact 0 or INT16 -1.
pub fn put_null_string(buf: &mut BytesMut, flexible: bool) {
    if flexible {
        put_uvarint(buf, 0);
    } else {
        buf.put_i16(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::take_varint;

    #[test]
    fn varints_round_trip_and_their_lengths_are_known() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            8191,
            8192,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
            let mut rest = &buf[..];
            assert_eq!(take_varint(&mut rest), Some(v));
            assert!(rest.is_empty());
        }
    }
}
