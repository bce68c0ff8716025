//! Any bytes as a Produce v0-v2 request: the hand-written codec must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tern_protocol::legacy::produce_unsupported_response(bytes::Bytes::copy_from_slice(data));
});
