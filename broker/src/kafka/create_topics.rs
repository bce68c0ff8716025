//! CreateTopics: validated here, created by the controller.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::str_bytes;
use crate::controller::{self, ApiError, ControllerCall, NewTopic};
use crate::metadata::ConfigSource;
use crate::shard::Shard;
use crate::topic_config::TOPIC_CONFIGS;

fn new_topic(
    shard: &Shard,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, ApiError> {
    let node = shard.config.node_id;
    let clustered = shard.config.cluster.is_some();
    if t.replication_factor > 1 && !clustered {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is larger than the 1 available broker",
                t.replication_factor
            ),
        ));
    }
    if t.replication_factor == 0 || t.replication_factor < -1 {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            "replication factor must be positive",
        ));
    }
    let partitions = if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                "give either assignments or partitions/replication factor",
            ));
        }
        let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
        indexes.sort();
        if indexes != (0..indexes.len() as i32).collect::<Vec<_>>() {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                "assignments must cover partitions 0..n once each",
            ));
        }
        // The controller checks a cluster's assignments against its nodes.
        if !clustered
            && t.assignments
                .iter()
                .any(|a| !controller::on_this_node_only(node, &a.broker_ids))
        {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("every partition must be assigned to broker {node} only"),
            ));
        }
        indexes.len() as i32
    } else if t.num_partitions == -1 {
        shard.config.default_partitions
    } else {
        t.num_partitions
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        if let Some(v) = &c.value {
            configs.insert(c.name.to_string(), v.to_string());
        }
    }
    let mut assignments: Vec<_> = t.assignments.iter().collect();
    assignments.sort_by_key(|a| a.partition_index);
    let topic = NewTopic {
        name: t.name.0.to_string(),
        partitions,
        configs,
        replication_factor: t.replication_factor,
        assignments: (clustered && !assignments.is_empty()).then(|| {
            assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        }),
    };
    controller::validate_new_topic(&topic)?;
    Ok(topic)
}

pub async fn handle(shard: &Rc<Shard>, req: CreateTopicsRequest, version: i16) -> ResponseKind {
    let mut results = Vec::new();
    for t in &req.topics {
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let outcome = match new_topic(shard, t) {
            Ok(topic) if req.validate_only => {
                let meta = shard.meta.snapshot();
                if meta.topics.contains_key(&topic.name) {
                    Err(ApiError::new(
                        ResponseError::TopicAlreadyExists,
                        format!("topic {} already exists", topic.name),
                    ))
                } else if shard.config.cluster.is_some() {
                    // As the controller would place it, on the nodes this node knows of.
                    controller::place_replicas(&meta, &topic).map(|replicas| {
                        let factor = replicas.first().map_or(1, |r| r.len() as i16);
                        (topic, (uuid::Uuid::nil(), factor))
                    })
                } else {
                    Ok((topic, (uuid::Uuid::nil(), 1)))
                }
            }
            Ok(topic) => {
                let request = topic.clone();
                controller::call(shard, |answer| ControllerCall::CreateTopic {
                    topic: request,
                    answer,
                })
                .await
                .map(|created| (topic, created))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((topic, (id, replication_factor))) => {
                result = result
                    .with_topic_id(id)
                    .with_num_partitions(topic.partitions)
                    .with_replication_factor(replication_factor);
                if version >= 5 {
                    let meta = shard.meta.snapshot();
                    let set = meta.topic_configs_with_source(&topic.configs, shard.config.node_id);
                    result = result.with_configs(Some(
                        TOPIC_CONFIGS
                            .iter()
                            .map(|d| {
                                let (value, source) = set
                                    .get(d.name)
                                    .cloned()
                                    .unwrap_or((d.default.to_string(), ConfigSource::Default));
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(d.name))
                                    .with_value(Some(str_bytes(&value)))
                                    .with_config_source(source as i8)
                            })
                            .collect(),
                    ));
                }
            }
            Err(e) => {
                result = result
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(&e.message)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1);
            }
        }
        results.push(result);
    }
    ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(results))
}
