//! Any bytes as an internal RPC frame (after its length prefix): decoding must not panic, and
//! whatever decodes must encode again to a frame that decodes to the same thing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_protocol::rpc;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = rpc::decode(bytes::Bytes::copy_from_slice(data)) {
        let wire = match &frame {
            rpc::Frame::Hello(h) => rpc::encode_hello(h),
            rpc::Frame::Envelope(e) => rpc::encode_envelope(e),
            rpc::Frame::Node(m) => rpc::encode_node(m),
        }
        .to_bytes();
        assert_eq!(rpc::decode(wire.slice(4..)).ok(), Some(frame));
    }
});
