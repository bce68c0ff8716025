//! Kafka request framing: the 4-byte size prefix, the request header, and response frames.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

use crate::apis;

/// Why a request frame could not be turned into a request. None of these can be answered with
/// a response the client would match, except `UnsupportedVersion` for ApiVersions.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("request size {size} is outside 0..={max} (socket.request.max.bytes)")]
    BadSize { size: i32, max: usize },
    #[error("request of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} v{version} is not supported")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Checks a frame's size prefix against the configured limit.
pub fn check_size(size: i32, max: usize) -> Result<usize, FrameError> {
    if size < 0 || size as usize > max {
        return Err(FrameError::BadSize { size, max });
    }
    Ok(size as usize)
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Decodes one request frame (without its size prefix). Byte fields such as produce records
/// stay slices of `frame`: no copy.
pub fn decode_request(mut frame: Bytes) -> Result<Request, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApi(key))?;
    if !apis::is_decodable(api, version) {
        return Err(FrameError::UnsupportedVersion {
            api,
            version,
            correlation_id,
        });
    }
    let malformed = |e: anyhow::Error| FrameError::Malformed {
        api,
        version,
        reason: format!("{e:#}"),
    };
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version).map_err(malformed)?;
    // Trailing bytes are ignored, as Kafka does: librdkafka sends some after Metadata v12.
    let body = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    Ok(Request {
        api,
        version,
        header,
        body,
    })
}

/// Encodes a whole response frame: size prefix, response header, body.
pub fn encode_response(
    correlation_id: i32,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let header_version = body.header_version(version);
    // Fetch responses carry record data: size the buffer once instead of growing it.
    let capacity = match body {
        ResponseKind::Fetch(f) => f.compute_size(version).unwrap_or(0) + 16,
        _ => 256,
    };
    let mut buf = BytesMut::with_capacity(capacity);
    buf.put_i32(0); // size, patched below
    buf.put_i32(correlation_id);
    if header_version >= 1 {
        buf.put_u8(0); // no tagged fields
    }
    body.encode(&mut buf, version)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Encodes any message body (used by tests and by the bench client).
pub fn encode_body<M: Encodable>(msg: &M, version: i16) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};
    use proptest::prelude::*;

    fn frame_of<M: Encodable>(api: ApiKey, version: i16, msg: &M) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        encode_request_header_into_buffer(&mut buf, &header).unwrap();
        msg.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_classic_requests() {
        let req = decode_request(frame_of(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        ))
        .unwrap();
        assert_eq!(req.api, ApiKey::ApiVersions);
        assert_eq!(req.header.correlation_id, 77);
        let req =
            decode_request(frame_of(ApiKey::Metadata, 1, &MetadataRequest::default())).unwrap();
        assert_eq!(req.version, 1);
        assert_eq!(req.header.client_id.as_deref(), Some("test"));
    }

    #[test]
    fn refuses_unknown_keys_versions_and_garbage() {
        let mut f = frame_of(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        f[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(matches!(
            decode_request(f.into()),
            Err(FrameError::UnknownApi(999))
        ));
        let f = frame_of(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        let mut v99 = f.clone();
        v99[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(v99.into()),
            Err(FrameError::UnsupportedVersion {
                correlation_id: 77,
                ..
            })
        ));
        let mut truncated = frame_of(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        truncated.truncate(truncated.len() - 2);
        assert!(matches!(
            decode_request(truncated.into()),
            Err(FrameError::Malformed { .. })
        ));
        assert!(check_size(-1, 100).is_err());
        assert!(check_size(101, 100).is_err());
        assert_eq!(check_size(100, 100).unwrap(), 100);
    }

    #[test]
    fn huge_array_counts_are_refused_before_allocating() {
        // Found by cargo fuzz: DeleteGroups v0 whose group array claims 0x4b4b4b00 entries made
        // kafka-protocol ask for 40 GB and abort the process.
        let frame = [
            0u8, 42, 0, 0, 0, 16, 0, 0, 0, 0, 75, 75, 75, 0, 0, 236, 0, 0, 0,
        ];
        assert!(matches!(
            decode_request(Bytes::copy_from_slice(&frame)),
            Err(FrameError::Malformed { .. })
        ));
        // The same through a compact array: Metadata v12 claiming 2^31 topics.
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(12)
            .with_correlation_id(1);
        encode_request_header_into_buffer(&mut buf, &header).unwrap();
        buf.put_slice(&[0x80, 0x80, 0x80, 0x80, 0x08]);
        assert!(matches!(
            decode_request(buf.freeze()),
            Err(FrameError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(data));
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..64, byte in any::<u8>(), api in 0usize..4) {
            let apis = [ApiKey::Metadata, ApiKey::Produce, ApiKey::Fetch, ApiKey::ListOffsets];
            let frame = match apis[api] {
                ApiKey::Metadata => frame_of(ApiKey::Metadata, 12, &MetadataRequest::default()),
                ApiKey::Produce => frame_of(ApiKey::Produce, 9, &kafka_protocol::messages::ProduceRequest::default()),
                ApiKey::Fetch => frame_of(ApiKey::Fetch, 12, &kafka_protocol::messages::FetchRequest::default()),
                _ => frame_of(ApiKey::ListOffsets, 7, &kafka_protocol::messages::ListOffsetsRequest::default()),
            };
            let mut data = frame.to_vec();
            let pos = pos % data.len();
            data[pos] = byte;
            let _ = decode_request(Bytes::from(data));
        }
    }
}
