//! The group APIs' request decoders: a well-formed header for a group API at a version the
//! broker decodes, then any bytes as the body. A JoinGroup's protocol metadata is decoded as
//! the consumer protocol subscription the broker reads (OffsetDelete's in-use check).
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_protocol::kafka_protocol::messages::{
    ApiKey, ConsumerProtocolSubscription, RequestHeader, RequestKind,
};
use tern_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tern_protocol::{apis, frame};

const GROUP_APIS: &[ApiKey] = &[
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::OffsetDelete,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ConsumerGroupDescribe,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let api = GROUP_APIS[pick as usize % GROUP_APIS.len()];
    let Some((min, max)) = apis::range(api) else {
        return;
    };
    let version = min + (pick as i16 / GROUP_APIS.len() as i16) % (max - min + 1);
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    if header
        .encode(&mut buf, api.request_header_version(version))
        .is_err()
    {
        return;
    }
    buf.extend_from_slice(body);
    let Ok(request) = frame::decode_request(buf.freeze()) else {
        return;
    };
    if let RequestKind::JoinGroup(join) = request.body {
        for protocol in &join.protocols {
            let mut metadata: Bytes = protocol.metadata.clone();
            if metadata.len() >= 2 {
                let version = i16::from_be_bytes([metadata[0], metadata[1]]);
                bytes::Buf::advance(&mut metadata, 2);
                let _ = ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3));
            }
        }
    }
});
