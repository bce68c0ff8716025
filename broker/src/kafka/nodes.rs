//! The cluster as Kafka clients see it: nodes, the controller, partition leaders. One node's
//! answers, single-node or cluster mode alike.

use crate::metadata::TopicMeta;
use crate::shard::Shard;

/// A node as Metadata and DescribeCluster name it.
pub struct NodeView {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// The controller has not heard from it within the session timeout.
    pub fenced: bool,
}

/// Every node of the cluster (this one alone on a single node, and until the controller
/// registered it).
pub fn nodes(shard: &Shard) -> Vec<NodeView> {
    let me = NodeView {
        id: shard.config.node_id,
        host: shard.config.advertised_host.clone(),
        port: shard.config.advertised_port,
        rack: shard.config.cluster.as_ref().and_then(|c| c.rack.clone()),
        fenced: false,
    };
    let meta = shard.meta.snapshot();
    if shard.config.cluster.is_none() || !meta.nodes.contains_key(&me.id) {
        return vec![me];
    }
    meta.nodes
        .iter()
        .filter_map(|(&id, n)| {
            let (host, port) = n.kafka.rsplit_once(':')?;
            Some(NodeView {
                id,
                host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port: port.parse().ok()?,
                rack: n.rack.clone(),
                fenced: meta.fenced.contains(&id),
            })
        })
        .collect()
}

/// The nodes among `ids` (KIP-951: the leaders a response names). Nothing is looked up in the
/// common case of a response that names none.
pub fn named(shard: &Shard, ids: &std::collections::BTreeSet<i32>) -> Vec<NodeView> {
    if ids.is_empty() {
        return Vec::new();
    }
    nodes(shard)
        .into_iter()
        .filter(|n| ids.contains(&n.id))
        .collect()
}

/// The controller's node id (-1 while none is known).
pub fn controller(shard: &Shard) -> i32 {
    match shard.config.cluster {
        None => shard.config.node_id,
        Some(_) => shard
            .meta
            .leader(crate::cluster::METADATA_GROUP)
            .map_or(-1, |(node, _)| node),
    }
}

/// A partition as this node knows it.
pub struct PartitionView {
    pub leader: i32,
    pub epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// A partition's leader, leader epoch, replicas and in-sync replicas as this node knows them.
/// The ISR is the leader's knowledge: elsewhere every replica is listed. A partition this node
/// does not hold is named with its first replica as leader and epoch -1: a client that finds
/// it wrong is told so there (NOT_LEADER_OR_FOLLOWER) and asks again.
pub fn partition(shard: &Shard, topic: &TopicMeta, p: i32) -> PartitionView {
    let node = shard.config.node_id;
    let replicas = topic.replicas_of(p, node);
    let Some(group) = topic.group(p) else {
        return PartitionView {
            leader: node,
            epoch: 0,
            isr: replicas.clone(),
            replicas,
        };
    };
    let (leader, epoch) = match shard.meta.leader(group) {
        Some(known) => known,
        None if replicas.contains(&node) => (-1, -1),
        None => (replicas.first().copied().unwrap_or(-1), -1),
    };
    let isr = shard.meta.isr(group).unwrap_or_else(|| replicas.clone());
    PartitionView {
        leader,
        epoch,
        replicas,
        isr,
    }
}
