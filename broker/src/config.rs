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
    /// Recent batches kept in memory per partition for tail consumers (at most; the shard's
    /// cache budget is shared among its partitions).
    pub cache_bytes_per_partition: usize,
    /// Memory budget of each shard (`--memory` / shards): half for the batch cache, half for
    /// requests being read and handled.
    pub memory_per_shard: usize,
    /// Consumer group session limits and initial rebalance delay.
    pub group: crate::group::state::GroupConfig,
    /// `offsets.topic.num.partitions`.
    pub offsets_partitions: i32,
    /// `transaction.state.log.num.partitions`.
    pub transaction_partitions: i32,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: std::time::Duration,
    /// `producer.id.expiration.ms`: idempotent producers not heard from for this long are
    /// forgotten (checked with retention).
    pub producer_id_expiration: std::time::Duration,
    /// `transaction.max.timeout.ms`.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub transactional_id_expiration: std::time::Duration,
    /// Segment writes each shard runs at once (its partitions share them).
    pub write_slots: usize,
    /// Cluster mode (`--controller-quorum`); `None`: a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl BrokerConfig {
    /// Bytes each shard lets requests occupy before it stops reading from sockets.
    pub fn request_memory(&self) -> usize {
        (self.memory_per_shard / 2).max(1 << 20)
    }
}

/// Parses a size such as `512M`, `2G`, `1048576` (K, M, G, T are powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 2G"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown size unit in {s:?}: use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
    }
}
