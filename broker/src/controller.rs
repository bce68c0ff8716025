//! The controller: the one writer of cluster metadata. It runs on shard 0; other shards send
//! their topic changes here (`Shard::run_on(0, ..)`).

use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::rc::Rc;
use uuid::Uuid;

use crate::metadata::ClusterMeta;
use crate::shard::Shard;
use crate::topic_config;

pub const CONTROLLER_SHARD: usize = 0;

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: i32 = 100_000;

/// Whether an explicit replica assignment puts a partition on `node` alone: a single node
/// keeps one replica of each partition.
pub fn on_this_node_only(node: i32, broker_ids: &[kafka_protocol::messages::BrokerId]) -> bool {
    broker_ids.len() == 1 && broker_ids[0].0 == node
}

/// A Kafka error code with a message for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: i16,
    pub message: String,
}

impl ApiError {
    pub fn new(e: ResponseError, message: impl Into<String>) -> ApiError {
        ApiError {
            code: e.code(),
            message: message.into(),
        }
    }
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let legal = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name == "." || name == ".." || name.len() > 249 || !legal {
        return Err(ApiError::new(
            ResponseError::InvalidTopicException,
            format!("topic name {name:?} is illegal: use 1-249 of [a-zA-Z0-9._-], not . or .."),
        ));
    }
    Ok(())
}

/// What a new topic should look like.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// Checks a topic request without creating anything.
pub fn validate_new_topic(topic: &NewTopic) -> Result<(), ApiError> {
    validate_topic_name(&topic.name)?;
    if topic.partitions < 1 || topic.partitions > MAX_PARTITIONS {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!(
                "partition count {} must be 1..={MAX_PARTITIONS}",
                topic.partitions
            ),
        ));
    }
    for (name, value) in &topic.configs {
        topic_config::validate(name, value)
            .map_err(|m| ApiError::new(ResponseError::InvalidConfig, m))?;
    }
    Ok(())
}

/// Creates a topic: persist the metadata, open its partitions on their shards, publish.
/// Must run on the controller shard.
pub async fn create_topic(shard: &Rc<Shard>, topic: NewTopic) -> Result<Uuid, ApiError> {
    validate_new_topic(&topic)?;
    let (_lock, mut meta) = begin_change(shard).await?;
    if meta.topics.contains_key(&topic.name) {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic {} already exists", topic.name),
        ));
    }
    let id = Uuid::new_v4();
    let shards = meta.place(topic.partitions as usize, shard.shard_count());
    meta.topics.insert(
        topic.name.clone(),
        crate::metadata::TopicMeta {
            id,
            shards: shards.clone(),
            configs: topic.configs.clone(),
        },
    );
    persist_change(shard, &mut meta).await?;
    let opens = shards.iter().enumerate().map(|(p, &owner)| {
        let name = topic.name.clone();
        let configs = topic.configs.clone();
        shard.run_on(owner, move |s| async move {
            s.open_partition(&name, p as i32, &configs)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    });
    for result in futures::future::join_all(opens).await {
        result.map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e))?;
    }
    shard.meta.publish(meta);
    tracing::info!(topic = %topic.name, partitions = topic.partitions, "created topic");
    Ok(id)
}

/// Grows a topic to `count` partitions: place the new ones on shards, persist, open them on
/// their owners, publish. `assignments`: how many explicit assignments the request gave (one
/// per new partition is needed). With `validate_only`, only checks. Must run on the controller
/// shard.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    name: String,
    count: i32,
    assignments: Option<usize>,
    validate_only: bool,
) -> Result<(), ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let Some(topic) = meta.topics.get(&name) else {
        return Err(unknown_topic(&name));
    };
    let current = topic.shards.len() as i32;
    // Kafka's messages for the same refusals.
    if count < current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("topic currently has {current} partitions, which is higher than the requested {count}"),
        ));
    }
    if count == current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("topic already has {current} partitions"),
        ));
    }
    if count > MAX_PARTITIONS {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("partition count {count} must be at most {MAX_PARTITIONS}"),
        ));
    }
    if let Some(given) = assignments.filter(|&n| n as i32 != count - current) {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "{given} assignments given for {} new partitions",
                count - current
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    let added = meta.place((count - current) as usize, shard.shard_count());
    let configs = topic.configs.clone();
    if let Some(topic) = meta.topics.get_mut(&name) {
        topic.shards.extend(added.iter().copied());
    }
    persist_change(shard, &mut meta).await?;
    let opens = added.iter().enumerate().map(|(i, &owner)| {
        let (name, configs) = (name.clone(), configs.clone());
        let partition = current + i as i32;
        shard.run_on(owner, move |s| async move {
            s.open_partition(&name, partition, &configs)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    });
    for result in futures::future::join_all(opens).await {
        result.map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e))?;
    }
    shard.meta.publish(meta);
    tracing::info!(topic = %name, from = current, to = count, "added partitions");
    Ok(())
}

/// Deletes a topic: persist and publish the metadata without it, then remove its partitions.
/// Must run on the controller shard.
pub async fn delete_topic(shard: &Rc<Shard>, name: String) -> Result<Uuid, ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let Some(topic) = meta.topics.remove(&name) else {
        return Err(unknown_topic(&name));
    };
    persist_change(shard, &mut meta).await?;
    shard.meta.publish(meta);
    let removals = topic.shards.iter().enumerate().map(|(p, &owner)| {
        let name = name.clone();
        shard.run_on(owner, move |s| async move {
            s.remove_partition(&name, p as i32)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    });
    for result in futures::future::join_all(removals).await {
        if let Err(e) = result {
            tracing::error!(topic = %name, error = %e, "remove deleted topic's files");
        }
    }
    tracing::info!(topic = %name, "deleted topic");
    Ok(topic.id)
}

/// Replaces a topic's explicit configs: persist, publish, and apply on the owner shards
/// (effective at once, no restart). Must run on the controller shard.
pub async fn set_topic_configs(
    shard: &Rc<Shard>,
    name: String,
    configs: BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let Some(topic) = meta.topics.get_mut(&name) else {
        return Err(unknown_topic(&name));
    };
    topic.configs = configs.clone();
    let mut owners: Vec<usize> = topic.shards.clone();
    owners.sort();
    owners.dedup();
    persist_change(shard, &mut meta).await?;
    shard.meta.publish(meta);
    for owner in owners {
        let (name, configs) = (name.clone(), configs.clone());
        shard
            .run_on(owner, move |s| async move {
                s.reconfigure_topic(&name, &configs)
            })
            .await;
    }
    tracing::info!(topic = %name, ?configs, "changed topic configs");
    Ok(())
}

/// Hands out a new producer id, persisted first so it is never given out twice.
/// Must run on the controller shard.
pub async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let id = meta.next_producer_id;
    meta.next_producer_id += 1;
    persist_change(shard, &mut meta).await?;
    shard.meta.publish(meta);
    Ok(id)
}

/// Takes the controller lock (held by the returned permit) and a copy of the metadata to
/// change. Must run on the controller shard.
async fn begin_change(
    shard: &Rc<Shard>,
) -> Result<(glommio::sync::Permit<'_>, ClusterMeta), ApiError> {
    assert_eq!(
        shard.id, CONTROLLER_SHARD,
        "metadata changes run on the controller shard"
    );
    let permit = shard.controller_lock.acquire_permit(1).await.map_err(|_| {
        ApiError::new(
            ResponseError::UnknownServerError,
            "controller is shutting down",
        )
    })?;
    Ok((permit, (*shard.meta.snapshot()).clone()))
}

/// Gives the changed metadata a new version and stores it durably (not yet published).
async fn persist_change(shard: &Rc<Shard>, meta: &mut ClusterMeta) -> Result<(), ApiError> {
    meta.version += 1;
    shard.meta.persist(meta).await.map_err(storage_error)
}

fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name} does not exist"),
    )
}

fn storage_error(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "persist cluster metadata");
    ApiError::new(ResponseError::KafkaStorageError, format!("{e:#}"))
}

/// Makes sure `name` exists, creating it with the default partition count if auto-creation is
/// on. Returns an error code when the topic does not exist and cannot be created.
pub async fn ensure_topic(
    shard: &Rc<Shard>,
    name: &str,
    allow_auto_create: bool,
) -> Result<(), ApiError> {
    if shard.meta.snapshot().topics.contains_key(name) {
        return Ok(());
    }
    validate_topic_name(name)?;
    if !(allow_auto_create && shard.config.auto_create_topics) {
        return Err(unknown_topic(name));
    }
    let topic = NewTopic {
        name: name.to_string(),
        partitions: shard.config.default_partitions,
        configs: BTreeMap::new(),
    };
    match shard
        .run_on(CONTROLLER_SHARD, move |s| async move {
            create_topic(&s, topic).await
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a b", "x/y", &"a".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
