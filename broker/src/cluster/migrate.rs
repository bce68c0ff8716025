//! A single node's topics move into the cluster: on the first start in cluster mode of a data
//! dir that holds a single node's metadata file, with a quorum of that node alone. The
//! controller commits them to the metadata log as partitions whose one replica is this node
//! (same names, ids, configs and shards), and each becomes a Raft group over the log it
//! already has: its first leader's first entry commits everything before it, so consumers
//! read on at the same offsets and groups keep their committed offsets. The file is then
//! renamed `cluster-meta.json.migrated`. Partitions move onto other nodes afterwards as any
//! partition does (AlterPartitionReassignments).

use std::rc::Rc;

use super::Cluster;
use crate::metadata::ClusterMeta;
use crate::shard::Shard;

impl Cluster {
    /// Controller: moves the single node's topics in; once the metadata holds them, renames
    /// the file. Returns whether a move is still under way (nothing else is created meanwhile:
    /// the single node's `__consumer_offsets` is the cluster's).
    pub(super) async fn migrate_single_node(
        &self,
        shard: &Rc<Shard>,
        current: &ClusterMeta,
    ) -> bool {
        let Some(old) = shard.meta.single_node() else {
            return false;
        };
        let moved = old
            .topics
            .iter()
            .all(|(name, t)| current.topics.get(name).is_some_and(|c| c.id == t.id));
        if moved {
            match shard.meta.single_node_migrated().await {
                Ok(()) => tracing::info!(
                    topics = old.topics.len(),
                    "the single node's topics are in the cluster; its metadata file is renamed"
                ),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "finish moving the single node's topics")
                }
            }
            return false;
        }
        if let Some(name) = old.topics.keys().find(|n| current.topics.contains_key(*n)) {
            tracing::error!(topic = %name, "the single node's topics are not moved into the cluster: it has a topic of the same name");
            shard.meta.forget_single_node();
            return false;
        }
        let Ok((_lock, mut meta)) = crate::controller::begin_change(shard).await else {
            return true;
        };
        let me = self.node_id();
        // Ids the single node gave out are never given again.
        meta.next_producer_id = meta.next_producer_id.max(old.next_producer_id);
        for (name, t) in &old.topics {
            let partitions = t.shards.len() as u64;
            let first_group = meta.next_group.max(1);
            let mut topic = t.clone();
            topic.replicas = vec![vec![me]; partitions as usize];
            topic.groups = (first_group..first_group + partitions).collect();
            topic.reassigning.clear();
            meta.next_group = first_group + partitions;
            meta.topics.insert(name.clone(), topic);
        }
        meta.version += 1;
        match self.commit(&meta).await {
            Ok(()) => tracing::info!(
                topics = old.topics.len(),
                "moved the single node's topics into the cluster"
            ),
            Err(e) => tracing::debug!(error = %e.message, "move the single node's topics"),
        }
        true
    }
}
