//! The controller: the one writer of cluster metadata. It runs on shard 0; other shards send
//! their topic changes here (`ControllerCall`), and it changes the shards' partitions to match
//! (`PartitionChange`).

use futures::channel::oneshot;
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
    /// Replicas per partition (-1: the default); cluster mode only, a single node has 1.
    pub replication_factor: i16,
    /// Explicit replica assignments, by partition (cluster mode).
    pub assignments: Option<Vec<Vec<i32>>>,
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
/// Creates a topic; returns its id and replication factor.
pub async fn create_topic(shard: &Rc<Shard>, topic: NewTopic) -> Result<(Uuid, i16), ApiError> {
    validate_new_topic(&topic)?;
    let (_lock, mut meta) = begin_change(shard).await?;
    if shard.cluster().is_some() && shard.meta.single_node().is_some() {
        // A single node's topics are moving in (cluster/migrate.rs): one created now could
        // take one of their names. Retriable, as while a controller is elected.
        return Err(ApiError::new(
            ResponseError::NotController,
            "the single node's topics are moving into the cluster; retry",
        ));
    }
    if meta.topics.contains_key(&topic.name) {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic {} already exists", topic.name),
        ));
    }
    let id = Uuid::new_v4();
    let clustered = shard.cluster().is_some();
    let (shards, replicas) = match clustered {
        // Each node takes a partition's shard modulo its own shard count.
        true => {
            let replicas = place_replicas(&meta, &topic)?;
            (
                meta.place_replicated(&replicas, shard.shard_count()),
                replicas,
            )
        }
        false => (
            meta.place(topic.partitions as usize, shard.shard_count()),
            Vec::new(),
        ),
    };
    let mut created = crate::metadata::TopicMeta::local(id, shards.clone(), topic.configs.clone());
    if clustered {
        created.replicas = replicas;
        created.groups = (0..topic.partitions as u64)
            .map(|i| meta.next_group.max(1) + i)
            .collect();
        meta.next_group = meta.next_group.max(1) + topic.partitions as u64;
    }
    let factor = created.replicas.first().map_or(1, |r| r.len() as i16);
    meta.topics.insert(topic.name.clone(), created);
    if !persist_change(shard, &mut meta).await? {
        tracing::info!(topic = %topic.name, partitions = topic.partitions, "created topic");
        return Ok((id, factor));
    }
    let configs = meta.topic_configs(&topic.configs, shard.config.node_id);
    let opens = shards.iter().enumerate().map(|(p, &owner)| {
        let (topic, configs) = (topic.name.clone(), configs.clone());
        let open = move |answer| PartitionChange::Open {
            topic,
            topic_id: id,
            partition: p as i32,
            configs,
            answer,
        };
        change_partitions(shard, owner, open)
    });
    for result in futures::future::join_all(opens).await {
        result.map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e))?;
    }
    shard.meta.publish(meta);
    tracing::info!(topic = %topic.name, partitions = topic.partitions, "created topic");
    Ok((id, factor))
}

/// Grows a topic to `count` partitions: place the new ones on shards (and in cluster mode on
/// nodes, as many replicas as the topic's first partition has), persist, open them on their
/// owners, publish. `assignments`: explicit replicas of each new partition (one per new
/// partition is needed). With `validate_only`, only checks. Must run on the controller shard.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    name: String,
    count: i32,
    assignments: Option<Vec<Vec<i32>>>,
    validate_only: bool,
) -> Result<(), ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let Some(topic) = meta.topics.get(&name) else {
        return Err(unknown_topic(&name));
    };
    let current = topic.shards.len() as i32;
    let id = topic.id;
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
    if let Some(given) = assignments
        .as_ref()
        .map(Vec::len)
        .filter(|&n| n as i32 != count - current)
    {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "{given} assignments given for {} new partitions",
                count - current
            ),
        ));
    }
    if shard.cluster().is_some() {
        let factor = topic.replicas.first().map_or(1, Vec::len) as i16;
        let new = NewTopic {
            name: name.clone(),
            partitions: count - current,
            configs: BTreeMap::new(),
            replication_factor: factor,
            assignments,
        };
        let replicas = place_replicas(&meta, &new)?;
        if validate_only {
            return Ok(());
        }
        let placed = meta.place_replicated(&replicas, shard.shard_count());
        let first_group = meta.next_group.max(1);
        meta.next_group = first_group + new.partitions as u64;
        if let Some(topic) = meta.topics.get_mut(&name) {
            topic.shards.extend(placed);
            topic
                .groups
                .extend((0..replicas.len() as u64).map(|i| first_group + i));
            topic.replicas.extend(replicas);
        }
        persist_change(shard, &mut meta).await?;
        tracing::info!(topic = %name, from = current, to = count, "added partitions");
        return Ok(());
    }
    if validate_only {
        return Ok(());
    }
    let added = meta.place((count - current) as usize, shard.shard_count());
    let configs = meta.topic_configs(&topic.configs, shard.config.node_id);
    if let Some(topic) = meta.topics.get_mut(&name) {
        topic.shards.extend(added.iter().copied());
    }
    persist_change(shard, &mut meta).await?;
    let opens = added.iter().enumerate().map(|(i, &owner)| {
        let (topic, configs) = (name.clone(), configs.clone());
        let open = move |answer| PartitionChange::Open {
            topic,
            topic_id: id,
            partition: current + i as i32,
            configs,
            answer,
        };
        change_partitions(shard, owner, open)
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
    if !persist_change(shard, &mut meta).await? {
        tracing::info!(topic = %name, "deleted topic");
        return Ok(topic.id);
    }
    shard.meta.publish(meta);
    let removals = topic.shards.iter().enumerate().map(|(p, &owner)| {
        let topic = name.clone();
        let remove = move |answer| PartitionChange::Remove {
            topic,
            partition: p as i32,
            answer,
        };
        change_partitions(shard, owner, remove)
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
    if !persist_change(shard, &mut meta).await? {
        tracing::info!(topic = %name, ?configs, "changed topic configs");
        return Ok(());
    }
    let effective = meta.topic_configs(&configs, shard.config.node_id);
    shard.meta.publish(meta);
    for owner in owners {
        let reconfigure = |answer| PartitionChange::Reconfigure {
            topics: vec![(name.clone(), effective.clone())],
            answer,
        };
        change_partitions(shard, owner, reconfigure).await;
    }
    tracing::info!(topic = %name, ?configs, "changed topic configs");
    Ok(())
}

/// Replaces the dynamic broker configs of `resource` ("" for the cluster-wide defaults, or a
/// node id), and applies them to every partition without a restart.
pub async fn set_broker_configs(
    shard: &Rc<Shard>,
    resource: String,
    configs: BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    if meta
        .broker_configs
        .get(&resource)
        .map_or(configs.is_empty(), |c| *c == configs)
    {
        return Ok(());
    }
    match configs.is_empty() {
        true => meta.broker_configs.remove(&resource),
        false => meta
            .broker_configs
            .insert(resource.clone(), configs.clone()),
    };
    let applied_by_nodes = !persist_change(shard, &mut meta).await?;
    tracing::info!(resource = %resource, ?configs, "changed dynamic broker configs");
    if applied_by_nodes {
        return Ok(());
    }
    shard.meta.publish(meta);
    let meta = shard.meta.snapshot();
    for owner in 0..shard.shard_count() {
        let reconfigure = |answer| PartitionChange::ReconfigureAll {
            meta: meta.clone(),
            answer,
        };
        change_partitions(shard, owner, reconfigure).await;
    }
    Ok(())
}

/// Hands out a new producer id, persisted first so it is never given out twice.
/// Must run on the controller shard.
pub async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, ApiError> {
    if let Some(cluster) = shard.cluster() {
        return cluster.producer_ids.next(shard).await;
    }
    let (_lock, mut meta) = begin_change(shard).await?;
    let id = meta.next_producer_id;
    meta.next_producer_id += 1;
    persist_change(shard, &mut meta).await?;
    shard.meta.publish(meta);
    Ok(id)
}

/// How many producer ids a node of a cluster takes from the controller at a time (Kafka's
/// block size).
pub const PRODUCER_ID_BLOCK: i32 = 1000;

/// Cluster mode, on the controller: the first id of a block of [`PRODUCER_ID_BLOCK`] ids
/// for a node to hand out, committed to the metadata log before it is given.
pub async fn allocate_producer_id_block(shard: &Rc<Shard>) -> Result<i64, ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let first = meta.next_producer_id;
    meta.next_producer_id += i64::from(PRODUCER_ID_BLOCK);
    persist_change(shard, &mut meta).await?;
    Ok(first)
}

/// Cluster mode: replicas for a new topic's partitions, from explicit assignments (checked
/// against the registered nodes) or placed on the nodes holding the fewest replicas.
pub fn place_replicas(meta: &ClusterMeta, topic: &NewTopic) -> Result<Vec<Vec<i32>>, ApiError> {
    let registered: Vec<i32> = meta.nodes.keys().copied().collect();
    // Fenced nodes take no new replicas unless named.
    let nodes: Vec<i32> = registered
        .iter()
        .copied()
        .filter(|n| !meta.fenced.contains(n))
        .collect();
    if let Some(assignments) = &topic.assignments {
        for replicas in assignments {
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            if replicas.is_empty()
                || distinct.len() != replicas.len()
                || replicas.iter().any(|n| !meta.nodes.contains_key(n))
            {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicas {replicas:?} must be distinct nodes of {registered:?}"),
                ));
            }
        }
        return Ok(assignments.clone());
    }
    let factor = match topic.replication_factor {
        -1 => nodes.len().min(3),
        n if n >= 1 => n as usize,
        _ => 0,
    };
    if factor == 0 || factor > nodes.len() {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} must be 1..={} (the nodes registered and not fenced)",
                topic.replication_factor,
                nodes.len()
            ),
        ));
    }
    let mut load: BTreeMap<i32, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for t in meta.topics.values() {
        for replicas in &t.replicas {
            for n in replicas {
                *load.entry(*n).or_default() += 1;
            }
        }
    }
    let mut placed = Vec::new();
    for p in 0..topic.partitions as usize {
        let mut order = nodes.clone();
        // Least loaded first; ties rotate with the partition, so first replicas (the preferred
        // leaders) spread too.
        order.sort_by_key(|n| {
            (
                load[n],
                (*n as usize + nodes.len() - p % nodes.len()) % nodes.len(),
            )
        });
        let replicas: Vec<i32> = order.into_iter().take(factor).collect();
        for n in &replicas {
            *load.entry(*n).or_default() += 1;
        }
        placed.push(replicas);
    }
    Ok(placed)
}

/// Takes the controller lock (held by the returned permit) and a copy of the metadata to
/// change. Must run on the controller shard. In cluster mode, this node must be the
/// controller, caught up with the metadata log.
pub(crate) async fn begin_change(
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
    if let Some(cluster) = shard.cluster() {
        cluster.ready_to_change().await?;
    }
    Ok((permit, (*shard.meta.snapshot()).clone()))
}

/// Gives the changed metadata a new version and stores it durably. On a single node it is
/// not yet published, and the caller applies it (returns true); in cluster mode it is
/// committed to the metadata log, and every node, this one included, has applied it.
async fn persist_change(shard: &Rc<Shard>, meta: &mut ClusterMeta) -> Result<bool, ApiError> {
    meta.version += 1;
    if let Some(cluster) = shard.cluster() {
        cluster.commit(meta).await?;
        return Ok(false);
    }
    shard.meta.persist(meta).await.map_err(storage_error)?;
    Ok(true)
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
    // The coordinators' topics are made by the broker, with their own settings, never by a
    // client.
    if !(allow_auto_create && shard.config.auto_create_topics)
        || name == crate::group::OFFSETS_TOPIC
        || name == crate::txn::TXN_TOPIC
    {
        return Err(unknown_topic(name));
    }
    let topic = NewTopic {
        name: name.to_string(),
        partitions: shard.config.default_partitions,
        configs: BTreeMap::new(),
        replication_factor: -1,
        assignments: None,
    };
    match call(shard, |answer| ControllerCall::CreateTopic {
        topic,
        answer,
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        // Only the controller creates topics: the client retries, as while a leader is elected.
        Err(e) if e.code == ResponseError::NotController.code() => {
            Err(ApiError::new(ResponseError::LeaderNotAvailable, e.message))
        }
        Err(e) => Err(e),
    }
}

/// One partition's requested move: its new replicas, or `None` to cancel a move in progress.
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Option<Vec<i32>>,
}

/// AlterPartitionReassignments: records each partition's target replicas in the metadata (the
/// partition's leader then moves it there); one result per request, in order. With
/// `allow_factor_change` false, a move must keep the replica count. Must run on the controller
/// shard.
pub async fn reassign_partitions(
    shard: &Rc<Shard>,
    moves: Vec<Reassignment>,
    allow_factor_change: bool,
) -> Result<Vec<Result<(), ApiError>>, ApiError> {
    let (_lock, mut meta) = begin_change(shard).await?;
    let clustered = shard.cluster().is_some();
    let node = shard.config.node_id;
    let mut results = Vec::with_capacity(moves.len());
    let mut changed = false;
    for m in moves {
        let result = (|| {
            let topic = meta
                .topics
                .get(&m.topic)
                .filter(|t| m.partition >= 0 && (m.partition as usize) < t.shards.len())
                .ok_or_else(|| {
                    ApiError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("{}-{} does not exist", m.topic, m.partition),
                    )
                })?;
            let current = topic.replicas_of(m.partition, node);
            let current = &current[..topic.replicas.get(m.partition as usize).map_or(1, Vec::len)];
            let ongoing = topic.reassigning.get(&m.partition).cloned();
            let Some(target) = m.replicas else {
                if ongoing.is_none() {
                    return Err(ApiError::new(
                        ResponseError::NoReassignmentInProgress,
                        format!("{}-{} is not being moved", m.topic, m.partition),
                    ));
                }
                // Cancelled: back to where it was.
                return Ok(Some(current.to_vec()));
            };
            let mut distinct = target.clone();
            distinct.sort();
            distinct.dedup();
            let known = |n: &i32| match clustered {
                true => meta.nodes.contains_key(n),
                false => *n == node,
            };
            if target.is_empty() || distinct.len() != target.len() || !target.iter().all(known) {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicas {target:?} must be distinct registered nodes"),
                ));
            }
            if !allow_factor_change && target.len() != current.len() {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "the move changes the replica count from {} to {}",
                        current.len(),
                        target.len()
                    ),
                ));
            }
            if target == current && ongoing.is_none() {
                return Ok(None); // already there
            }
            Ok(Some(target))
        })();
        match result {
            Ok(Some(target)) => {
                if let Some(t) = meta.topics.get_mut(&m.topic) {
                    t.reassigning.insert(m.partition, target);
                    changed = true;
                }
                results.push(Ok(()));
            }
            Ok(None) => results.push(Ok(())),
            Err(e) => results.push(Err(e)),
        }
    }
    if changed {
        persist_change(shard, &mut meta).await?;
        tracing::info!("partition reassignments recorded");
    }
    Ok(results)
}

/// A change to the partitions a shard owns, as the metadata changed.
pub enum PartitionChange {
    /// Open (creating if new) a partition of topic `topic_id`.
    Open {
        topic: String,
        topic_id: Uuid,
        partition: i32,
        configs: BTreeMap<String, String>,
        answer: oneshot::Sender<Result<(), String>>,
    },
    /// Remove a partition with its files.
    Remove {
        topic: String,
        partition: i32,
        answer: oneshot::Sender<Result<(), String>>,
    },
    /// Apply topics' changed configs (as they apply on this node).
    Reconfigure {
        topics: Vec<(String, BTreeMap<String, String>)>,
        answer: oneshot::Sender<()>,
    },
    /// Apply every topic's configs as `meta` has them (the dynamic broker configs changed).
    ReconfigureAll {
        meta: std::sync::Arc<ClusterMeta>,
        answer: oneshot::Sender<()>,
    },
}

impl PartitionChange {
    /// Makes the change on the shard and sends its answer.
    pub async fn run(self, shard: Rc<Shard>) {
        match self {
            PartitionChange::Open {
                topic,
                topic_id,
                partition,
                configs,
                answer,
            } => {
                let opened = shard.open_partition(&topic, topic_id, partition, &configs);
                let _ = answer.send(opened.await.map_err(|e| format!("{e:#}")));
            }
            PartitionChange::Remove {
                topic,
                partition,
                answer,
            } => {
                let removed = shard.remove_partition(&topic, partition);
                let _ = answer.send(removed.await.map_err(|e| format!("{e:#}")));
            }
            PartitionChange::Reconfigure { topics, answer } => {
                for (topic, configs) in &topics {
                    shard.reconfigure_topic(topic, configs);
                }
                let _ = answer.send(());
            }
            PartitionChange::ReconfigureAll { meta, answer } => {
                shard.reconfigure_all(&meta);
                let _ = answer.send(());
            }
        }
    }
}

/// Makes a change (made with the sender of its answer) to shard `owner`'s partitions.
pub async fn change_partitions<T>(
    shard: &Rc<Shard>,
    owner: usize,
    change: impl FnOnce(oneshot::Sender<T>) -> PartitionChange,
) -> T {
    shard
        .call(owner, |answer| {
            crate::shard::ShardCall::Partitions(change(answer))
        })
        .await
}

/// The answer to a controller call.
type Answer<T> = oneshot::Sender<Result<T, ApiError>>;

/// A call to the controller (on `CONTROLLER_SHARD`): a metadata change asked by a request.
pub enum ControllerCall {
    CreateTopic {
        topic: NewTopic,
        answer: Answer<(Uuid, i16)>,
    },
    CreatePartitions {
        name: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
        answer: Answer<()>,
    },
    DeleteTopic {
        name: String,
        answer: Answer<Uuid>,
    },
    /// A topic's or (`broker`) the dynamic broker configs' explicit configs.
    SetConfigs {
        broker: bool,
        name: String,
        configs: BTreeMap<String, String>,
        answer: Answer<()>,
    },
    Reassign {
        moves: Vec<Reassignment>,
        allow_factor_change: bool,
        answer: Answer<Vec<Result<(), ApiError>>>,
    },
    /// ElectLeaders: `asked` (None: every partition).
    Elect {
        election: i8,
        asked: Option<Vec<(String, i32)>>,
        answer: Answer<Vec<crate::kafka::ElectOutcome>>,
    },
    AllocateProducerId {
        answer: Answer<i64>,
    },
}

impl ControllerCall {
    /// Runs the call on the controller shard and sends its answer.
    pub async fn run(self, shard: Rc<Shard>) {
        let shard = &shard;
        match self {
            ControllerCall::CreateTopic { topic, answer } => {
                let _ = answer.send(create_topic(shard, topic).await);
            }
            ControllerCall::CreatePartitions {
                name,
                count,
                assignments,
                validate_only,
                answer,
            } => {
                let created = create_partitions(shard, name, count, assignments, validate_only);
                let _ = answer.send(created.await);
            }
            ControllerCall::DeleteTopic { name, answer } => {
                let _ = answer.send(delete_topic(shard, name).await);
            }
            ControllerCall::SetConfigs {
                broker,
                name,
                configs,
                answer,
            } => {
                let set = match broker {
                    true => set_broker_configs(shard, name, configs).await,
                    false => set_topic_configs(shard, name, configs).await,
                };
                let _ = answer.send(set);
            }
            ControllerCall::Reassign {
                moves,
                allow_factor_change,
                answer,
            } => {
                let moved = reassign_partitions(shard, moves, allow_factor_change);
                let _ = answer.send(moved.await);
            }
            ControllerCall::Elect {
                election,
                asked,
                answer,
            } => {
                let elected = crate::kafka::elect(shard, election, asked);
                let _ = answer.send(elected.await);
            }
            ControllerCall::AllocateProducerId { answer } => {
                let _ = answer.send(allocate_producer_id(shard).await);
            }
        }
    }
}

/// Sends a call (made with the sender of its answer) to the controller shard.
pub async fn call<T>(
    shard: &Rc<Shard>,
    call: impl FnOnce(Answer<T>) -> ControllerCall,
) -> Result<T, ApiError> {
    shard
        .call(CONTROLLER_SHARD, |answer| {
            crate::shard::ShardCall::Controller(call(answer))
        })
        .await
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
