//! Metadata: brokers (this node), topics and partitions, auto-creating requested topics.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use uuid::Uuid;

use super::{authorized, nodes, str_bytes, topic_name};
use crate::controller;
use crate::metadata::TopicMeta;
use crate::shard::Shard;

/// Topics starting with `__` are internal, as in Kafka.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

pub fn describe_topic(shard: &Shard, name: &str, topic: &TopicMeta) -> MetadataResponseTopic {
    let partitions = (0..topic.shards.len() as i32)
        .map(|p| {
            let view = nodes::partition(shard, topic, p);
            let error = match view.leader {
                -1 => ResponseError::LeaderNotAvailable.code(),
                _ => 0,
            };
            let offline: Vec<BrokerId> = match shard.config.cluster {
                Some(_) => {
                    let meta = shard.meta.snapshot();
                    view.replicas
                        .iter()
                        .filter(|n| !meta.nodes.contains_key(n) || meta.fenced.contains(n))
                        .map(|&n| BrokerId(n))
                        .collect()
                }
                None => Vec::new(),
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(p)
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(view.epoch)
                .with_isr_nodes(view.isr.into_iter().map(BrokerId).collect())
                .with_replica_nodes(view.replicas.into_iter().map(BrokerId).collect())
                .with_offline_replicas(offline)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(name)))
        .with_topic_id(topic.id)
        .with_is_internal(is_internal(name))
        .with_partitions(partitions)
}

fn missing_topic(name: Option<&str>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(topic_name))
        .with_topic_id(id)
}

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> ResponseKind {
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested = match req.topics {
        Some(t) if !(version == 0 && t.is_empty()) => Some(t),
        _ => None,
    };
    let allow_auto_create = version < 4 || req.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match requested {
        None => {
            let meta = shard.meta.snapshot();
            topics.extend(meta.topics.iter().map(|(n, t)| describe_topic(shard, n, t)));
        }
        Some(requested) => {
            for t in requested {
                let name = match t.name {
                    Some(n) => n.0.to_string(),
                    None => match shard.meta.snapshot().topic_by_id(t.topic_id) {
                        Some((n, _)) => n.clone(),
                        None => {
                            topics.push(missing_topic(
                                None,
                                t.topic_id,
                                ResponseError::UnknownTopicId.code(),
                            ));
                            continue;
                        }
                    },
                };
                if let Err(e) = controller::ensure_topic(shard, &name, allow_auto_create).await {
                    topics.push(missing_topic(Some(&name), Uuid::nil(), e.code));
                    continue;
                }
                match shard.meta.snapshot().topics.get(&name) {
                    Some(topic) => topics.push(describe_topic(shard, &name, topic)),
                    None => topics.push(missing_topic(
                        Some(&name),
                        Uuid::nil(),
                        ResponseError::UnknownTopicOrPartition.code(),
                    )),
                }
            }
        }
    }
    // v8+ (the cluster's only up to v10) may ask which operations the client may perform.
    let topic_ops = authorized::if_requested(
        version >= 8 && req.include_topic_authorized_operations,
        authorized::TOPIC,
    );
    for t in topics.iter_mut().filter(|t| t.error_code == 0) {
        t.topic_authorized_operations = topic_ops;
    }
    let cluster_ops = authorized::if_requested(
        (8..=10).contains(&version) && req.include_cluster_authorized_operations,
        authorized::CLUSTER,
    );
    let meta = shard.meta.snapshot();
    ResponseKind::Metadata(
        MetadataResponse::default()
            .with_cluster_authorized_operations(cluster_ops)
            .with_brokers(
                nodes::nodes(shard)
                    .into_iter()
                    .map(|n| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(n.id))
                            .with_host(str_bytes(&n.host))
                            .with_port(n.port)
                            .with_rack(n.rack.as_deref().map(str_bytes))
                    })
                    .collect(),
            )
            .with_cluster_id(Some(str_bytes(&meta.cluster_id)))
            .with_controller_id(BrokerId(nodes::controller(shard)))
            .with_topics(topics),
    )
}
