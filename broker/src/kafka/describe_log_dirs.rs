//! DescribeLogDirs: this node's log directory (one: `--data-dir`), the replicas it holds in it
//! and their sizes, and (v4) the disk's total and usable bytes.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, ResponseKind};
use std::collections::BTreeMap;
use std::rc::Rc;

use super::OwnerCall;
use super::{str_bytes, topic_name};
use crate::shard::Shard;

/// A partition this shard holds: its name, index, size in bytes, and how far its log end is
/// behind what is committed (a follower that has not caught up).
pub type Found = (String, i32, i64, i64);

/// On the owner shard: the partitions of `parts` it holds.
pub fn sizes(shard: &Shard, parts: Vec<(String, i32)>) -> Vec<Found> {
    parts
        .into_iter()
        .filter_map(|(name, p)| {
            let log = shard.partition(&name, p)?;
            let lag = (log.high_watermark() - log.end_offset()).max(0);
            Some((name, p, log.size_bytes() as i64, lag))
        })
        .collect()
}

pub async fn handle(shard: &Rc<Shard>, req: DescribeLogDirsRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    // The partitions asked for (all when null), by owner shard.
    let mut by_owner: BTreeMap<usize, Vec<(String, i32)>> = BTreeMap::new();
    for (name, t) in &meta.topics {
        for (p, &owner) in t.shards.iter().enumerate() {
            let (p, owner) = (p as i32, owner % meta.local_shards.max(1));
            let asked = match &req.topics {
                None => true,
                Some(topics) => topics
                    .iter()
                    .any(|d| d.topic.0.as_str() == name && d.partitions.contains(&p)),
            };
            if asked {
                by_owner.entry(owner).or_default().push((name.clone(), p));
            }
        }
    }
    let sizes = by_owner.into_iter().map(|(owner, parts)| {
        shard.call_owner(owner, |answers| OwnerCall::LogDirs { parts, answers })
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (name, p, size, lag) in futures::future::join_all(sizes).await.into_iter().flatten() {
        topics.entry(name).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(p)
                .with_partition_size(size)
                .with_offset_lag(lag),
        );
    }
    let dir = &shard.config.data_dir;
    let (total, usable) = match tern_storage::fs::disk_space(dir).await {
        Ok((total, usable)) => (total as i64, usable as i64),
        Err(_) => (-1, -1),
    };
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&dir.display().to_string()))
        .with_total_bytes(total)
        .with_usable_bytes(usable)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(topic_name(&name))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_results(vec![result]))
}
