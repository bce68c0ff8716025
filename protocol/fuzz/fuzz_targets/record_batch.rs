//! Any bytes as a produce payload or stored log data: validation and header walks must not
//! panic, and a batch that validates must survive the broker's in-place edits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern_protocol::batch;

fuzz_target!(|data: &[u8]| {
    let _ = batch::headers(data).count();
    if let Ok(header) = batch::validate(data) {
        let mut copy = data[..header.total_len()].to_vec();
        batch::set_base_offset(&mut copy, 42);
        batch::set_leader_epoch(&mut copy, 1);
        let (head, rest) = copy.split_at_mut(batch::HEADER_LEN);
        batch::set_log_append_time(head, rest, 7);
        assert!(batch::validate(&copy).is_ok());
    }
    let _ = batch::validate_produce(data, 1 << 20, Some(&mut Vec::new()));
    let _ = batch::keyless_records(data, 64);
});
