//! Produce v0-v2: advertised (see `apis`), answered with UNSUPPORTED_VERSION for every partition.
//! The message schemas crate has no v0-v2 Produce, so this small codec is hand-written.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

fn get_string(buf: &mut Bytes) -> Option<Bytes> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_i16();
    if len < 0 || buf.remaining() < len as usize {
        return None;
    }
    Some(buf.split_to(len as usize))
}

/// Builds the whole response frame for a Produce v0-v2 request frame (header included), or
/// `None` when the request is malformed or has acks=0 (no response is expected then).
pub fn produce_unsupported_response(mut frame: Bytes) -> Option<Bytes> {
    if frame.remaining() < 8 {
        return None;
    }
    frame.advance(2);
    let version = frame.get_i16();
    let correlation_id = frame.get_i32();
    get_string(&mut frame)?; // client id (v1 header, never null from real clients)
    if frame.remaining() < 6 {
        return None;
    }
    let acks = frame.get_i16();
    frame.advance(4); // timeout
    if frame.remaining() < 4 {
        return None;
    }
    let topics = frame.get_i32();
    let mut body = BytesMut::new();
    body.put_i32(0); // size, patched below
    body.put_i32(correlation_id);
    body.put_i32(topics.max(0));
    for _ in 0..topics.max(0) {
        let name = get_string(&mut frame)?;
        if frame.remaining() < 4 {
            return None;
        }
        let partitions = frame.get_i32();
        body.put_i16(name.len() as i16);
        body.put_slice(&name);
        body.put_i32(partitions.max(0));
        for _ in 0..partitions.max(0) {
            if frame.remaining() < 8 {
                return None;
            }
            let index = frame.get_i32();
            let set_len = frame.get_i32();
            if set_len < 0 || frame.remaining() < set_len as usize {
                return None;
            }
            frame.advance(set_len as usize);
            body.put_i32(index);
            body.put_i16(UNSUPPORTED_VERSION);
            body.put_i64(-1); // base offset
            if version >= 2 {
                body.put_i64(-1); // log append time
            }
        }
    }
    if version >= 1 {
        body.put_i32(0); // throttle time
    }
    if acks == 0 {
        return None;
    }
    let size = (body.len() - 4) as i32;
    body[..4].copy_from_slice(&size.to_be_bytes());
    Some(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_partition_with_unsupported_version() {
        let mut req = BytesMut::new();
        req.put_i16(0); // Produce
        req.put_i16(2);
        req.put_i32(5); // correlation id
        req.put_i16(3);
        req.put_slice(b"cli");
        req.put_i16(1); // acks
        req.put_i32(1000);
        req.put_i32(1);
        req.put_i16(1);
        req.put_slice(b"t");
        req.put_i32(2);
        for p in 0..2 {
            req.put_i32(p);
            req.put_i32(3);
            req.put_slice(b"abc");
        }
        let resp = produce_unsupported_response(req.freeze()).expect("response");
        let mut r = resp.clone();
        assert_eq!(r.get_i32() as usize, resp.len() - 4);
        assert_eq!(r.get_i32(), 5);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(r.get_i16(), 1);
        r.advance(1);
        assert_eq!(r.get_i32(), 2);
        assert_eq!(r.get_i32(), 0);
        assert_eq!(r.get_i16(), UNSUPPORTED_VERSION);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = produce_unsupported_response(Bytes::from(data));
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(
            produce_unsupported_response(Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff]))
                .is_none()
        );
    }
}
