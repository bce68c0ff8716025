//! Node configuration, from `tern start` flags. Shared read-only by every shard.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Kafka listener address; every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to (Metadata).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: i32,
    /// `socket.request.max.bytes`.
    pub max_request_bytes: usize,
    /// Recent batches kept in memory per partition for tail consumers.
    pub cache_bytes_per_partition: usize,
    /// Consumer group session limits and initial rebalance delay.
    pub group: crate::group::state::GroupConfig,
    /// `offsets.topic.num.partitions`.
    pub offsets_partitions: i32,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: std::time::Duration,
}
