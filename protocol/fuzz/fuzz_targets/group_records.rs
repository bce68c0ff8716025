//! Any bytes as a `__consumer_offsets` or `__transaction_state` record (the first byte splits
//! key from value, and says whether there is a value): decoding must not panic, and what
//! decodes must re-encode to something that decodes to the same record.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_protocol::group_records::GroupRecord;
use tern_protocol::txn_records;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize & 0x7f).min(rest.len());
    let key = Bytes::copy_from_slice(&rest[..at]);
    let value = (split & 0x80 != 0).then(|| Bytes::copy_from_slice(&rest[at..]));
    if let Some((id, txn)) = txn_records::decode(key.clone(), value.clone()) {
        let (k, v) = txn_records::encode(&id, txn.as_ref());
        assert_eq!(txn_records::decode(k, v), Some((id, txn)));
    }
    if let Some(record) = GroupRecord::decode(key, value) {
        let (key, value) = record.encode();
        assert_eq!(GroupRecord::decode(key, value), Some(record));
    }
});
