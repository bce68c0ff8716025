//! Cluster metadata: topics, their partitions' owner shards, and topic configs.
//!
//! One writer (the controller on shard 0) changes it, persists it atomically, then publishes a
//! new immutable snapshot. Every shard reads the current snapshot lock-free.

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub id: Uuid,
    /// Owner shard of each partition, by partition index.
    pub shards: Vec<usize>,
    /// Configs set explicitly for this topic (the rest take defaults).
    pub configs: BTreeMap<String, String>,
}

/// A versioned snapshot of the cluster's metadata. Node-wide view, shared by every shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClusterMeta {
    pub version: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Next producer id to hand out (InitProducerId); ids are never reused.
    #[serde(default)]
    pub next_producer_id: i64,
}

impl ClusterMeta {
    pub fn topic_by_id(&self, id: Uuid) -> Option<(&String, &TopicMeta)> {
        self.topics.iter().find(|(_, t)| t.id == id)
    }

    /// Owner shard of a partition, if the topic and partition exist.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.topics.get(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| t.shards.get(p).copied())
    }

    /// Shards for `count` new partitions: each goes to the shard owning the fewest.
    pub fn place(&self, count: usize, shards: usize) -> Vec<usize> {
        let mut load = vec![0usize; shards];
        for t in self.topics.values() {
            for &s in &t.shards {
                load[s % shards] += 1;
            }
        }
        (0..count)
            .map(|_| {
                let s = (0..shards)
                    .min_by_key(|&s| load[s])
                    .expect("at least one shard");
                load[s] += 1;
                s
            })
            .collect()
    }
}

/// The published snapshot. Node-wide; every shard holds an `Arc` of it.
pub struct MetaStore {
    current: ArcSwap<ClusterMeta>,
    path: PathBuf,
}

impl MetaStore {
    /// Loads the metadata at startup (before any shard runs) and fits partition placement to
    /// the number of shards this run has.
    pub fn load(data_dir: &Path, shards: usize) -> Result<MetaStore> {
        let path = data_dir.join("cluster-meta.json");
        let mut meta: ClusterMeta = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parse {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClusterMeta::default(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        if meta.cluster_id.is_empty() {
            meta.cluster_id = Uuid::new_v4().simple().to_string();
        }
        for topic in meta.topics.values_mut() {
            for s in &mut topic.shards {
                *s %= shards;
            }
        }
        Ok(MetaStore {
            current: ArcSwap::from_pointee(meta),
            path,
        })
    }

    /// Creates an internal topic at startup (before any shard runs) if it does not exist.
    pub fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
        shards: usize,
    ) -> Result<()> {
        let current = self.snapshot();
        if current.topics.contains_key(name) {
            return Ok(());
        }
        let mut meta = (*current).clone();
        let placed = meta.place(partitions as usize, shards);
        meta.topics.insert(
            name.to_string(),
            TopicMeta {
                id: Uuid::new_v4(),
                shards: placed,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
        meta.version += 1;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("rename to {}", self.path.display()))?;
        self.publish(meta);
        Ok(())
    }

    pub fn snapshot(&self) -> Arc<ClusterMeta> {
        self.current.load_full()
    }

    /// Persists `meta` atomically; only the controller calls this.
    pub async fn persist(&self, meta: &ClusterMeta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta)?;
        tern_storage::fs::write_file_atomic(&self.path, &bytes)
            .await
            .context("write cluster metadata")
    }

    pub fn publish(&self, meta: ClusterMeta) {
        self.current.store(Arc::new(meta));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_balances_by_partition_count() {
        let mut meta = ClusterMeta::default();
        meta.topics.insert(
            "a".into(),
            TopicMeta {
                id: Uuid::new_v4(),
                shards: vec![0, 0, 0],
                configs: BTreeMap::new(),
            },
        );
        assert_eq!(meta.place(4, 2), vec![1, 1, 1, 0]);
        assert_eq!(meta.owner("a", 2), Some(0));
        assert_eq!(meta.owner("a", 3), None);
        assert_eq!(meta.owner("a", -1), None);
        assert_eq!(meta.owner("b", 0), None);
    }
}
