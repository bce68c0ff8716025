//! ApiVersions: advertises exactly the table in `tern_protocol::apis`.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use tern_protocol::apis;

fn api_keys() -> Vec<ApiVersion> {
    apis::SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

pub fn handle(_req: ApiVersionsRequest, _version: i16) -> ResponseKind {
    ResponseKind::ApiVersions(ApiVersionsResponse::default().with_api_keys(api_keys()))
}

/// The response to an ApiVersions request of a version Tern does not know, encoded as v0 so
/// any client can read it and retry with a version from the list.
pub fn unsupported(_version: i16) -> ResponseKind {
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(api_keys()),
    )
}
