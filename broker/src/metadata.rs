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

/// A partition's owner shard as a request was routed to it, with the id of the topic it was
/// routed for. The owner serves the request only from that topic's log: a request routed
/// with metadata from before the topic was deleted and created again under the same name
/// must not reach the new topic's log (or its Raft group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    pub owner: usize,
    pub topic_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub id: Uuid,
    /// Owner shard of each partition, by partition index.
    pub shards: Vec<usize>,
    /// Configs set explicitly for this topic (the rest take defaults).
    pub configs: BTreeMap<String, String>,
    /// Cluster mode: the nodes holding each partition's replicas, by partition index (empty
    /// on a single node: this node alone).
    #[serde(default)]
    pub replicas: Vec<Vec<i32>>,
    /// Cluster mode: each partition's Raft group, by partition index.
    #[serde(default)]
    pub groups: Vec<u64>,
    /// Cluster mode: partitions being moved, and the replicas they move to
    /// (AlterPartitionReassignments). `replicas` says where they are until the move is done.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<i32, Vec<i32>>,
}

impl TopicMeta {
    /// A topic of this node alone (single-node mode).
    pub fn local(id: Uuid, shards: Vec<usize>, configs: BTreeMap<String, String>) -> TopicMeta {
        TopicMeta {
            id,
            shards,
            configs,
            replicas: Vec::new(),
            groups: Vec::new(),
            reassigning: BTreeMap::new(),
        }
    }

    /// The Raft group of partition `p`, if the topic is replicated.
    pub fn group(&self, p: i32) -> Option<u64> {
        usize::try_from(p)
            .ok()
            .and_then(|p| self.groups.get(p).copied())
    }

    /// The replicas of partition `p`: its nodes in cluster mode, else `node` alone. A
    /// partition being moved lists its current replicas, then those it moves to (as Kafka
    /// does during a reassignment).
    pub fn replicas_of(&self, p: i32, node: i32) -> Vec<i32> {
        let mut replicas = usize::try_from(p)
            .ok()
            .and_then(|p| self.replicas.get(p).cloned())
            .unwrap_or_else(|| vec![node]);
        for &n in self.reassigning.get(&p).into_iter().flatten() {
            if !replicas.contains(&n) {
                replicas.push(n);
            }
        }
        replicas
    }
}

/// A node of the cluster, as it registered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kafka listener clients are told to use, `host:port`.
    pub kafka: String,
    #[serde(default)]
    pub rack: Option<String>,
    /// The internal RPC listener other nodes use, `host:port`.
    #[serde(default)]
    pub rpc: String,
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
    /// Cluster mode: the nodes, by id.
    #[serde(default)]
    pub nodes: BTreeMap<i32, NodeInfo>,
    /// Cluster mode: the next Raft group id to give a partition (0 is the metadata group).
    #[serde(default)]
    pub next_group: u64,
    /// Cluster mode: nodes the controller has not heard from within the session timeout
    /// (KRaft's fenced brokers): new replicas avoid them, Metadata lists their replicas as
    /// offline.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub fenced: std::collections::BTreeSet<i32>,
    /// Dynamic broker configs (AlterConfigs on BROKER resources), by resource: "" for the
    /// cluster-wide defaults, a node id for one node's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// This node's shard count (not stored: in a cluster, nodes may differ). A node takes
    /// a partition's shard modulo it.
    #[serde(skip)]
    pub local_shards: usize,
}

/// Where a config's value comes from (DescribeConfigs' config_source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Topic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

impl ClusterMeta {
    /// The dynamic broker configs that apply on `node`, by name, with their source: the
    /// node's own over the cluster-wide ones.
    pub fn broker_configs_of(&self, node: i32) -> BTreeMap<&str, (&str, ConfigSource)> {
        let mut out = BTreeMap::new();
        let layers = [
            ("", ConfigSource::DynamicDefaultBroker),
            (&*node.to_string(), ConfigSource::DynamicBroker),
        ];
        for (resource, source) in layers {
            for (k, v) in self.broker_configs.get(resource).into_iter().flatten() {
                out.insert(k.as_str(), (v.as_str(), source));
            }
        }
        out
    }

    /// A topic's configs as they apply on `node`, by topic config name: the topic's own, over
    /// the dynamic broker configs that set topic defaults (Kafka's order), with their source.
    /// Configs at Kafka's default are left out.
    pub fn topic_configs_with_source(
        &self,
        configs: &BTreeMap<String, String>,
        node: i32,
    ) -> BTreeMap<String, (String, ConfigSource)> {
        let mut out: BTreeMap<String, (String, ConfigSource)> = self
            .broker_configs_of(node)
            .into_iter()
            .filter_map(|(k, (v, source))| {
                let topic_name = crate::topic_config::topic_default_of(k)?;
                Some((topic_name.to_string(), (v.to_string(), source)))
            })
            .collect();
        for (k, v) in configs {
            out.insert(k.clone(), (v.clone(), ConfigSource::Topic));
        }
        out
    }

    /// One config of a topic as it applies on `node`, if set (by the topic or a dynamic broker
    /// config).
    pub fn topic_config<'a>(
        &'a self,
        configs: &'a BTreeMap<String, String>,
        node: i32,
        name: &str,
    ) -> Option<&'a str> {
        if let Some(v) = configs.get(name) {
            return Some(v);
        }
        let (broker_name, _) = crate::topic_config::BROKER_TOPIC_DEFAULTS
            .iter()
            .find(|(_, t)| *t == name)?;
        [node.to_string(), String::new()]
            .iter()
            .find_map(|r| self.broker_configs.get(r)?.get(*broker_name))
            .map(String::as_str)
    }

    /// A topic's configs as they apply on `node` (see [`Self::topic_configs_with_source`]).
    pub fn topic_configs(
        &self,
        configs: &BTreeMap<String, String>,
        node: i32,
    ) -> BTreeMap<String, String> {
        self.topic_configs_with_source(configs, node)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<(&String, &TopicMeta)> {
        self.topics.iter().find(|(_, t)| t.id == id)
    }

    /// Owner shard of a partition on this node, if the topic and partition exist.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<usize> {
        self.owner_of(self.topics.get(topic)?, partition)
    }

    /// Where a request for a partition goes on this node, and which topic it was routed for.
    pub fn route(&self, topic: &str, partition: i32) -> Option<Route> {
        let t = self.topics.get(topic)?;
        Some(Route {
            owner: self.owner_of(t, partition)?,
            topic_id: t.id,
        })
    }

    /// Owner shard of partition `partition` of `t` on this node.
    pub fn owner_of(&self, t: &TopicMeta, partition: i32) -> Option<usize> {
        let s = *t.shards.get(usize::try_from(partition).ok()?)?;
        Some(s % self.local_shards.max(1))
    }

    /// Cluster mode: shards for new partitions with these replicas. Each goes to the shard
    /// where its preferred leader (first replica) leads the fewest partitions, then to the one
    /// holding the fewest, so each node's leaderships spread over its shards.
    pub fn place_replicated(&self, replicas: &[Vec<i32>], shards: usize) -> Vec<usize> {
        let shards = shards.max(1);
        let mut load = vec![0usize; shards];
        let mut led: BTreeMap<(i32, usize), usize> = BTreeMap::new();
        for t in self.topics.values() {
            for (p, &s) in t.shards.iter().enumerate() {
                load[s % shards] += 1;
                if let Some(&first) = t.replicas.get(p).and_then(|r| r.first()) {
                    *led.entry((first, s % shards)).or_default() += 1;
                }
            }
        }
        replicas
            .iter()
            .map(|r| {
                let first = r.first().copied().unwrap_or(-1);
                let leading = |s: usize| led.get(&(first, s)).copied().unwrap_or(0);
                let s = (0..shards)
                    .min_by_key(|&s| (leading(s), load[s]))
                    .unwrap_or(0);
                load[s] += 1;
                *led.entry((first, s)).or_default() += 1;
                s
            })
            .collect()
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

/// A partition leader as this node knows it: (node, leader epoch).
pub type Leader = (i32, i32);

/// The published snapshot. Node-wide; every shard holds an `Arc` of it.
pub struct MetaStore {
    current: ArcSwap<ClusterMeta>,
    /// Cluster mode: a single node's metadata found at start, to move into the cluster.
    single_node: std::sync::Mutex<Option<ClusterMeta>>,
    /// This node's shard count.
    shards: usize,
    path: PathBuf,
    /// Cluster mode: the leader of each Raft group this node hosts, as its replica knows it
    /// (each shard's replication driver writes its groups' on each role change; Metadata
    /// reads it).
    leaders: std::sync::RwLock<std::collections::HashMap<u64, Leader>>,
    /// Cluster mode: the in-sync replicas of each Raft group, as its leader last told.
    isr: std::sync::RwLock<std::collections::HashMap<u64, Vec<i32>>>,
    /// Cluster mode: each Raft group's configuration (voters, learners), as its leader last
    /// told.
    configs: std::sync::RwLock<std::collections::HashMap<u64, GroupConfig>>,
}

/// A Raft group's configuration as its leader reported it: (voters, learners).
pub type GroupConfig = (Vec<i32>, Vec<i32>);

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
            current: ArcSwap::from_pointee(ClusterMeta {
                local_shards: shards,
                ..meta
            }),
            shards,
            single_node: Default::default(),
            path,
            leaders: Default::default(),
            isr: Default::default(),
            configs: Default::default(),
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
            TopicMeta::local(
                Uuid::new_v4(),
                placed,
                configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
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

    /// Cluster mode, at start: sets a single node's metadata (the file's) aside for the
    /// cluster to take over, and starts from nothing (the metadata log). Returns its topic
    /// count.
    pub fn set_aside_single_node(&self) -> usize {
        let file = self.snapshot();
        if file.topics.is_empty() {
            return 0;
        }
        let topics = file.topics.len();
        if let Ok(mut aside) = self.single_node.lock() {
            *aside = Some((*file).clone());
        }
        self.publish(ClusterMeta::default());
        topics
    }

    /// The single node's metadata is not to be moved into the cluster (this run).
    pub fn forget_single_node(&self) {
        if let Ok(mut aside) = self.single_node.lock() {
            *aside = None;
        }
    }

    /// The single node's metadata set aside at start, if any (see `set_aside_single_node`).
    pub fn single_node(&self) -> Option<ClusterMeta> {
        self.single_node.lock().ok()?.clone()
    }

    /// The single node's metadata is in the cluster now: its file is kept, renamed, so a
    /// restart does not find it again.
    pub async fn single_node_migrated(&self) -> Result<()> {
        let (from, to) = (self.path.clone(), self.path.with_extension("json.migrated"));
        tern_storage::fs::blocking(move || std::fs::rename(&from, &to))
            .await
            .context("rename the single node's metadata file")?;
        if let Some(dir) = self.path.parent() {
            tern_storage::fs::sync_dir(dir).await?;
        }
        if let Ok(mut aside) = self.single_node.lock() {
            *aside = None;
        }
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

    pub fn publish(&self, mut meta: ClusterMeta) {
        meta.local_shards = self.shards;
        self.current.store(Arc::new(meta));
    }

    /// The leader of Raft group `group` as this node knows it, with its term (`None`:
    /// nothing known; node -1: no leader known in that term).
    pub fn leader(&self, group: u64) -> Option<Leader> {
        self.leaders.read().ok()?.get(&group).copied()
    }

    /// The in-sync replicas of a group, as its leader last told.
    pub fn isr(&self, group: u64) -> Option<Vec<i32>> {
        self.isr.read().ok()?.get(&group).cloned()
    }

    /// The configuration of a group, as its leader last told.
    pub fn config(&self, group: u64) -> Option<GroupConfig> {
        self.configs.read().ok()?.get(&group).cloned()
    }

    /// A group's leader told its state (term `epoch`): taken unless this node knows a later
    /// term.
    pub fn leader_told(
        &self,
        group: u64,
        leader: i32,
        epoch: i32,
        isr: Vec<i32>,
        config: GroupConfig,
    ) {
        let Ok(mut leaders) = self.leaders.write() else {
            return;
        };
        if leaders.get(&group).is_some_and(|&(_, known)| known > epoch) {
            return;
        }
        leaders.insert(group, (leader, epoch));
        drop(leaders);
        self.set_isr(group, Some(isr));
        if let Ok(mut configs) = self.configs.write() {
            configs.insert(group, config);
        }
    }

    pub fn set_isr(&self, group: u64, isr: Option<Vec<i32>>) {
        if let Ok(mut all) = self.isr.write() {
            match isr {
                Some(isr) => all.insert(group, isr),
                None => all.remove(&group),
            };
        }
    }

    /// Sets what this node's own replica of `group` knows of its leader (`None`: forgets the
    /// group, which left this node).
    pub fn set_leader(&self, group: u64, leader: Option<Leader>) {
        if let Ok(mut leaders) = self.leaders.write() {
            match leader {
                Some(l) => leaders.insert(group, l),
                None => leaders.remove(&group),
            };
        }
        if leader.is_none() {
            self.set_isr(group, None);
            if let Ok(mut configs) = self.configs.write() {
                configs.remove(&group);
            }
        }
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
            TopicMeta::local(Uuid::new_v4(), vec![0, 0, 0], BTreeMap::new()),
        );
        assert_eq!(meta.place(4, 2), vec![1, 1, 1, 0]);
        assert_eq!(meta.owner("a", 2), Some(0));
        assert_eq!(meta.owner("a", 3), None);
        assert_eq!(meta.owner("a", -1), None);
        assert_eq!(meta.owner("b", 0), None);
    }

    #[test]
    fn each_nodes_leaderships_spread_over_its_shards() {
        let mut meta = ClusterMeta {
            local_shards: 2,
            ..ClusterMeta::default()
        };
        // Two nodes leading in turn, two shards: placing by count alone ([0, 1, 0, 1]) would
        // put both of node 1's leaderships on shard 0 and both of node 2's on shard 1.
        let replicas = vec![vec![1, 2], vec![2, 1], vec![1, 2], vec![2, 1]];
        assert_eq!(meta.place(4, 2), vec![0, 1, 0, 1]);
        let shards = meta.place_replicated(&replicas, 2);
        assert_eq!(shards, vec![0, 1, 1, 0]);
        // Existing topics count: node 1 already leads on shard 0.
        let mut old = TopicMeta::local(Uuid::new_v4(), vec![0], BTreeMap::new());
        old.replicas = vec![vec![1, 2]];
        meta.topics.insert("old".into(), old);
        assert_eq!(meta.place_replicated(&[vec![1, 2]], 2), vec![1]);
        // The shard a node uses is the placement modulo its own count.
        meta.topics.insert("new".into(), {
            let mut t = TopicMeta::local(Uuid::new_v4(), vec![3, 2], BTreeMap::new());
            t.replicas = vec![vec![1], vec![2]];
            t
        });
        assert_eq!(meta.owner("new", 0), Some(1));
        assert_eq!(meta.owner("new", 1), Some(0));
    }
}
