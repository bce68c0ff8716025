//! Kafka API handlers, one file per API. `handle` dispatches a decoded request and encodes the
//! response; handlers return response bodies.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;
use tern_protocol::frame::{self, Request};

use crate::server::Reply;
use crate::shard::Shard;

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_configs;
mod alter_partition_reassignments;
mod api_versions;
mod authorized;
mod consumer_group_describe;
mod consumer_group_heartbeat;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod describe_producers;
mod describe_transactions;
mod elect_leaders;
mod end_txn;
mod fetch;
mod fetch_session;
mod find_coordinator;
mod group_call;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
pub mod list_groups;
mod list_offsets;
mod list_partition_reassignments;
mod list_transactions;
mod metadata;
pub(crate) mod nodes;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod owner_call;
mod produce;
pub use elect_leaders::{elect, Outcome as ElectOutcome};
pub use fetch_session::FetchSessions;
pub use group_call::GroupCall;
pub use owner_call::{OwnerCall, RoutedPartition};
pub use produce::log_error_code;
mod sync_group;
mod txn_offset_commit;
mod write_txn_markers;

pub async fn handle(shard: Rc<Shard>, request: Request, peer: Rc<str>) -> Reply {
    let Request {
        api,
        version,
        header,
        body,
    } = request;
    let response = match body {
        RequestKind::ApiVersions(req) => api_versions::handle(req, version),
        RequestKind::Metadata(req) => metadata::handle(&shard, req, version).await,
        RequestKind::Produce(req) => match produce::handle(&shard, req).await {
            Some(resp) => ResponseKind::Produce(resp),
            None => return Reply::Nothing,
        },
        RequestKind::Fetch(req) => {
            return fetch::handle(&shard, req, version, header.correlation_id).await
        }
        RequestKind::ListOffsets(req) => list_offsets::handle(&shard, req, version).await,
        RequestKind::CreateTopics(req) => create_topics::handle(&shard, req, version).await,
        RequestKind::CreatePartitions(req) => create_partitions::handle(&shard, req).await,
        RequestKind::DeleteTopics(req) => delete_topics::handle(&shard, req, version).await,
        RequestKind::DescribeConfigs(req) => describe_configs::handle(&shard, req, version),
        RequestKind::InitProducerId(req) => init_producer_id::handle(&shard, req).await,
        RequestKind::FindCoordinator(req) => find_coordinator::handle(&shard, req, version),
        RequestKind::JoinGroup(req) => {
            let client_id = header.client_id.as_deref().unwrap_or("").to_string();
            let host = format!("/{}", peer.rsplit_once(':').map_or(&*peer, |(h, _)| h));
            join_group::handle(&shard, req, version, client_id, host).await
        }
        RequestKind::ConsumerGroupHeartbeat(req) => {
            let client_id = header.client_id.as_deref().unwrap_or("").to_string();
            let host = format!("/{}", peer.rsplit_once(':').map_or(&*peer, |(h, _)| h));
            consumer_group_heartbeat::handle(&shard, req, client_id, host).await
        }
        RequestKind::ConsumerGroupDescribe(req) => {
            consumer_group_describe::handle(&shard, req).await
        }
        RequestKind::SyncGroup(req) => sync_group::handle(&shard, req, version).await,
        RequestKind::Heartbeat(req) => heartbeat::handle(&shard, req).await,
        RequestKind::LeaveGroup(req) => leave_group::handle(&shard, req, version).await,
        RequestKind::OffsetCommit(req) => offset_commit::handle(&shard, req).await,
        RequestKind::AddPartitionsToTxn(req) => add_partitions_to_txn::handle(&shard, req).await,
        RequestKind::AddOffsetsToTxn(req) => add_offsets_to_txn::handle(&shard, req).await,
        RequestKind::EndTxn(req) => end_txn::handle(&shard, req).await,
        RequestKind::ListTransactions(req) => list_transactions::handle(&shard, req).await,
        RequestKind::DescribeProducers(req) => describe_producers::handle(&shard, req).await,
        RequestKind::WriteTxnMarkers(req) => write_txn_markers::handle(&shard, req).await,
        RequestKind::DescribeTransactions(req) => describe_transactions::handle(&shard, req).await,
        RequestKind::TxnOffsetCommit(req) => txn_offset_commit::handle(&shard, req).await,
        RequestKind::OffsetFetch(req) => offset_fetch::handle(&shard, req, version).await,
        RequestKind::ListGroups(req) => list_groups::handle(&shard, req, version).await,
        RequestKind::DescribeGroups(req) => describe_groups::handle(&shard, req, version).await,
        RequestKind::DescribeCluster(req) => describe_cluster::handle(&shard, req, version),
        RequestKind::DeleteGroups(req) => delete_groups::handle(&shard, req).await,
        RequestKind::OffsetDelete(req) => offset_delete::handle(&shard, req).await,
        RequestKind::DeleteRecords(req) => delete_records::handle(&shard, req).await,
        RequestKind::OffsetForLeaderEpoch(req) => {
            offset_for_leader_epoch::handle(&shard, req).await
        }
        RequestKind::AlterConfigs(req) => alter_configs::handle_alter(&shard, req).await,
        RequestKind::ElectLeaders(req) => elect_leaders::handle(&shard, req, version).await,
        RequestKind::AlterPartitionReassignments(req) => {
            alter_partition_reassignments::handle(&shard, req, version).await
        }
        RequestKind::ListPartitionReassignments(req) => {
            list_partition_reassignments::handle(&shard, req)
        }
        RequestKind::DescribeLogDirs(req) => describe_log_dirs::handle(&shard, req).await,
        RequestKind::IncrementalAlterConfigs(req) => {
            alter_configs::handle_incremental(&shard, req).await
        }
        _ => {
            tracing::warn!(
                ?api,
                version,
                "request for an API that is not advertised; closing connection"
            );
            return Reply::Close;
        }
    };
    match frame::encode_response(header.correlation_id, version, &response) {
        Ok(bytes) => Reply::Frame(bytes),
        Err(e) => {
            tracing::error!(?api, version, error = %format!("{e:#}"), "encode response; closing connection");
            Reply::Close
        }
    }
}

/// The answer to a request whose version Tern does not decode: ApiVersions gets the v0
/// error response clients expect (KIP-511), Produce v0-v2 get UNSUPPORTED_VERSION per
/// partition. Anything else has no answer.
pub fn unsupported_version_reply(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    frame: Bytes,
) -> Option<Reply> {
    match api {
        ApiKey::ApiVersions => {
            let body = api_versions::unsupported(version);
            frame::encode_response(correlation_id, 0, &body)
                .ok()
                .map(Reply::Frame)
        }
        ApiKey::Produce if version < 3 => Some(
            match tern_protocol::legacy::produce_unsupported_response(frame) {
                Some(bytes) => Reply::Frame(bytes),
                None => Reply::Nothing,
            },
        ),
        _ => None,
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
