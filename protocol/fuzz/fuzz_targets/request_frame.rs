//! Any bytes as a request frame: decoding must return a request or an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let size = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let _ = tern_protocol::frame::check_size(size, 100 << 20);
    }
    let _ = tern_protocol::frame::decode_request(bytes::Bytes::copy_from_slice(data));
});
