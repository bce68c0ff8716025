//! The shard runtime: one glommio executor per CPU, each owning its partitions, and the
//! message mesh shards use to run work on each other.

use anyhow::{Context, Result};
use futures::channel::oneshot;
use glommio::channels::shared_channel::ConnectedSender;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use tern_storage::{LogConfig, PartitionLog};
use uuid::Uuid;

use crate::cluster::ReplicaCall;
use crate::config::BrokerConfig;
use crate::controller::{ControllerCall, PartitionChange};
use crate::kafka::{GroupCall, OwnerCall};
use crate::mesh::{Connected, MeshEnds};
use crate::metadata::MetaStore;
use crate::topic_config;
use crate::txn::TxnCall;

/// What one shard sends another.
pub enum ShardMessage {
    /// A typed call; its answer comes back on a oneshot channel (`Shard::call`).
    Call(ShardCall),
    /// Cluster mode: what other nodes sent about a group the shard hosts.
    Notice(crate::cluster::Notice),
}

/// A typed call from one shard to another.
pub enum ShardCall {
    /// A request's part on the shard owning its partitions.
    Owner(OwnerCall),
    /// A request's step on its consumer group's coordinator (boxed: a JoinGroup is large).
    Group(Box<GroupCall>),
    /// A request's step on its transactional id's coordinator.
    Txn(TxnCall),
    /// A metadata change, on the controller shard.
    Controller(ControllerCall),
    /// A step of the node's replication on a shard hosting replicas.
    Replica(ReplicaCall),
    /// A change to the shard's partitions (the metadata changed).
    Partitions(PartitionChange),
}

impl ShardCall {
    /// Runs the call on its target shard and sends its answer.
    pub async fn run(self, shard: Rc<Shard>) {
        match self {
            ShardCall::Owner(call) => call.run(shard).await,
            ShardCall::Group(call) => call.run(shard).await,
            ShardCall::Txn(call) => call.run(shard).await,
            ShardCall::Controller(call) => call.run(shard).await,
            ShardCall::Replica(call) => call.run(shard).await,
            ShardCall::Partitions(change) => change.run(shard).await,
        }
    }
}

/// A partition's log on its owner shard, and the id of the topic it is a partition of.
struct OwnedLog {
    topic_id: Uuid,
    log: Rc<PartitionLog>,
}

/// Per-shard state. One exists on each shard's executor thread; it never leaves that thread.
pub struct Shard {
    pub id: usize,
    pub config: Arc<BrokerConfig>,
    pub meta: Arc<MetaStore>,
    /// Queues to the other shards, by shard id (None: this shard).
    peers: Vec<Option<ConnectedSender<ShardMessage>>>,
    /// Partitions this shard owns, by (topic, partition).
    partitions: RefCell<HashMap<(String, i32), OwnedLog>>,
    /// Serializes metadata changes; used on shard 0 (the controller) only.
    pub controller_lock: glommio::sync::Semaphore,
    /// Consumer groups this shard coordinates.
    pub groups: crate::group::Coordinator,
    /// Transactional ids this shard coordinates.
    pub txns: crate::txn::TxnCoordinator,
    /// Incremental fetch sessions of this shard's connections (KIP-227).
    pub fetch_sessions: crate::kafka::FetchSessions,
    /// Bytes of requests being read or handled; when used up the shard stops reading from
    /// sockets until responses go out (backpressure).
    pub request_memory: Rc<glommio::sync::Semaphore>,
    /// Segment writes in flight at once on this shard (`--write-slots`), shared by its
    /// partitions.
    pub write_slots: Rc<tern_storage::write_slots::WriteSlots>,
    /// Cluster mode, on shard 0: the node's metadata, controller and routing.
    cluster: RefCell<Option<Rc<crate::cluster::Cluster>>>,
    /// Cluster mode: the Raft groups of the partitions this shard owns.
    replicas: RefCell<Option<Rc<crate::cluster::Replicas>>>,
}

impl Shard {
    pub fn shard_count(&self) -> usize {
        self.peers.len()
    }

    /// Cluster mode, on shard 0 (where the controller runs).
    pub fn cluster(&self) -> Option<Rc<crate::cluster::Cluster>> {
        self.cluster.borrow().clone()
    }

    /// Cluster mode: the replicas this shard hosts (every shard has them).
    pub fn replicas(&self) -> Option<Rc<crate::cluster::Replicas>> {
        self.replicas.borrow().clone()
    }

    pub fn set_replicas(&self, replicas: Rc<crate::cluster::Replicas>) {
        *self.replicas.borrow_mut() = Some(replicas);
    }

    /// Cluster mode: hands `notice` to shard `target` (waiting only, when its queue is full,
    /// for room). Notices one task sends a shard are taken in the order sent.
    pub async fn notify(self: &Rc<Self>, target: usize, notice: crate::cluster::Notice) {
        if target == self.id {
            if let Some(r) = self.replicas() {
                r.take(self, notice);
            }
            return;
        }
        self.send(target, ShardMessage::Notice(notice)).await;
    }

    /// Sends a call (made with the sender of its answer) to shard `target` (run inline if that
    /// is this shard) and returns its answer.
    pub async fn call<T>(
        self: &Rc<Self>,
        target: usize,
        call: impl FnOnce(oneshot::Sender<T>) -> ShardCall,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let call = call(tx);
        match target == self.id {
            // Boxed: a call may make calls of its own (the async types would be recursive).
            true => {
                let run: Pin<Box<dyn Future<Output = ()>>> = Box::pin(call.run(self.clone()));
                run.await
            }
            false => self.send(target, ShardMessage::Call(call)).await,
        }
        rx.await.expect("a shard answers every call")
    }

    /// Queues `message` for shard `target` (another shard), waiting for room.
    async fn send(&self, target: usize, message: ShardMessage) {
        let sent = match self.peers.get(target) {
            Some(Some(queue)) => queue.send(message).await.is_ok(),
            _ => false,
        };
        // Queues are never closed, and targets are shard ids taken from this node's own
        // placement of partitions and coordinators.
        assert!(sent, "shard {} has no queue to shard {target}", self.id);
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .map(|owned| owned.log.clone())
    }

    /// A partition a request was routed to (`Route`): its log and, in cluster mode, its Raft
    /// group, if this shard holds it as a partition of the topic with id `topic_id`, which the
    /// node's metadata still has. A request routed before the topic was deleted (and perhaps
    /// created again under its name) gets None.
    pub fn routed_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Option<(Rc<PartitionLog>, Option<u64>)> {
        let log = {
            let partitions = self.partitions.borrow();
            let owned = partitions.get(&(topic.to_string(), partition))?;
            if owned.topic_id != topic_id {
                return None;
            }
            owned.log.clone()
        };
        let meta = self.meta.snapshot();
        let t = meta.topics.get(topic).filter(|t| t.id == topic_id)?;
        Some((log, t.group(partition)))
    }

    /// The Raft group of a replicated partition (cluster mode).
    pub fn replica_group(&self, topic: &str, partition: i32) -> Option<u64> {
        self.meta.snapshot().topics.get(topic)?.group(partition)
    }

    /// A partition this node serves reads of, on its owner shard (as routed, see
    /// `routed_partition`), its leader epoch and Raft group. In
    /// cluster mode only its leader does (NOT_LEADER_OR_FOLLOWER elsewhere), or with
    /// `any_replica` (a consumer reading from a follower, KIP-392) any replica it holds (reads
    /// stop at that replica's high watermark: committed records only). A client's
    /// `current_leader_epoch` (-1: none given) must be the replica's: older is
    /// FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH (KIP-320).
    pub fn readable_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
        current_leader_epoch: i32,
        any_replica: bool,
    ) -> Result<(Rc<PartitionLog>, i32, Option<u64>), i16> {
        use kafka_protocol::ResponseError;
        let not_leader = ResponseError::NotLeaderOrFollower.code();
        let (log, group) = self
            .routed_partition(topic, topic_id, partition)
            .ok_or(not_leader)?;
        let epoch = match group {
            None => 0,
            Some(group) => match self.replicas() {
                Some(c) if c.leads(group) => c.leader_epoch(group).ok_or(not_leader)?,
                Some(c) if any_replica => c.replica_epoch(group).ok_or(not_leader)?,
                _ => return Err(not_leader),
            },
        };
        match current_leader_epoch {
            e if e >= 0 && e < epoch => Err(ResponseError::FencedLeaderEpoch.code()),
            e if e > epoch => Err(ResponseError::UnknownLeaderEpoch.code()),
            _ => Ok((log, epoch, group)),
        }
    }

    pub fn partition_dir(&self, topic: &str, partition: i32) -> std::path::PathBuf {
        self.config.data_dir.join(format!("{topic}-{partition}"))
    }

    /// Opens (creating if new) a partition this shard owns.
    pub async fn open_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
        configs: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let log_config = self.log_config(configs);
        let log = PartitionLog::open(&self.partition_dir(topic, partition), log_config)
            .await
            .with_context(|| format!("open partition {topic}-{partition}"))?;
        log.share_write_slots(self.write_slots.clone());
        self.partitions
            .borrow_mut()
            .insert((topic.to_string(), partition), OwnedLog { topic_id, log });
        self.share_cache_budget();
        Ok(())
    }

    /// Storage settings of a partition of a topic with these configs (as they apply on this
    /// node), with the node's cleaner settings: `log.cleaner.dedupe.buffer.size` bounds a
    /// compaction round's key map.
    fn log_config(&self, configs: &std::collections::BTreeMap<String, String>) -> LogConfig {
        let mut log_config = topic_config::log_config(configs, self.cache_bytes());
        let meta = self.meta.snapshot();
        let brokers = meta.broker_configs_of(self.config.node_id);
        let name = "log.cleaner.dedupe.buffer.size";
        let value = brokers
            .get(name)
            .map(|(v, _)| *v)
            .or_else(|| topic_config::broker_def(name).map(|d| d.default));
        if let Some(bytes) = value.and_then(|v| v.parse::<usize>().ok()) {
            log_config.compaction_map_bytes = bytes;
        }
        log_config
    }

    /// Bytes of batch cache each partition of this shard may keep.
    fn cache_bytes(&self) -> usize {
        let partitions = self.partitions.borrow().len().max(1);
        (self.config.memory_per_shard / 2 / partitions).min(self.config.cache_bytes_per_partition)
    }

    /// Shares the shard's cache budget evenly among its partitions.
    fn share_cache_budget(&self) {
        let bytes = self.cache_bytes();
        for owned in self.partitions.borrow().values() {
            owned.log.set_cache_bytes(bytes);
        }
    }

    /// Removes a partition this shard owns, with its files.
    pub async fn remove_partition(&self, topic: &str, partition: i32) -> Result<()> {
        let log = self
            .partitions
            .borrow_mut()
            .remove(&(topic.to_string(), partition))
            .map(|owned| owned.log);
        self.share_cache_budget();
        match log {
            Some(log) => log
                .remove()
                .await
                .with_context(|| format!("remove partition {topic}-{partition}")),
            None => Ok(()),
        }
    }

    /// Applies every topic's configs as `meta` has them (the dynamic broker configs changed) to
    /// the partitions this shard owns.
    pub fn reconfigure_all(&self, meta: &crate::metadata::ClusterMeta) {
        for (name, t) in &meta.topics {
            let configs = meta.topic_configs(&t.configs, self.config.node_id);
            self.reconfigure_topic(name, &configs);
        }
    }

    /// Applies a topic's changed configs (as they apply on this node) to the partitions of it
    /// this shard owns.
    pub fn reconfigure_topic(
        &self,
        topic: &str,
        configs: &std::collections::BTreeMap<String, String>,
    ) {
        let log_config = self.log_config(configs);
        for ((t, _), owned) in self.partitions.borrow().iter() {
            if t == topic {
                owned.log.set_config(log_config.clone());
            }
        }
    }

    fn logs(&self) -> Vec<Rc<PartitionLog>> {
        let partitions = self.partitions.borrow();
        partitions.values().map(|owned| owned.log.clone()).collect()
    }

    /// Background upkeep of this shard's logs: `flush.ms` syncs every 100 ms, retention and
    /// compaction at the configured interval.
    pub async fn maintenance_loop(self: Rc<Self>) {
        let mut last_retention = std::time::Instant::now();
        loop {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            for log in self.logs() {
                if let Err(e) = log.flush_if_due().await {
                    tracing::error!(dir = %log.dir().display(), error = %e, "periodic flush");
                }
            }
            if last_retention.elapsed() >= self.config.retention_check_interval {
                last_retention = std::time::Instant::now();
                let now = crate::kafka::now_ms();
                let expiration = self.config.producer_id_expiration.as_millis() as i64;
                for log in self.logs() {
                    let expired = log.expire_producers(now, expiration);
                    if expired > 0 {
                        tracing::info!(dir = %log.dir().display(), expired, "idempotent producers expired");
                    }
                    if let Err(e) = log.enforce_retention(now).await {
                        tracing::error!(dir = %log.dir().display(), error = %e, "retention");
                    }
                    if let Err(e) = log.compact(now).await {
                        tracing::error!(dir = %log.dir().display(), error = %e, "compaction");
                    }
                }
            }
        }
    }

    /// Closes every partition cleanly (shutdown).
    pub async fn close_all(&self) {
        for log in self.logs() {
            if let Err(e) = log.close().await {
                tracing::error!(dir = %log.dir().display(), error = %e, "close partition");
            }
        }
    }
}

/// Everything a shard needs to start.
pub struct ShardSeed {
    pub id: usize,
    pub config: Arc<BrokerConfig>,
    pub meta: Arc<MetaStore>,
    /// Its ends of the queues between shards.
    pub mesh: MeshEnds<ShardMessage>,
    /// Fired by the main thread to stop the shard: it closes its partitions, then answers.
    pub stop: oneshot::Receiver<std::sync::mpsc::Sender<()>>,
}

impl ShardSeed {
    /// Builds the shard on its own executor, opens the partitions it owns, and starts serving
    /// jobs from other shards.
    pub async fn start(self) -> Result<Rc<Shard>> {
        // First, so that no shard waits for another's queues while it opens its partitions.
        let Connected { senders, receivers } = self.mesh.connect().await;
        let shards = senders.len();
        let shard = Rc::new(Shard {
            id: self.id,
            config: self.config.clone(),
            meta: self.meta,
            peers: senders,
            partitions: RefCell::new(HashMap::new()),
            controller_lock: glommio::sync::Semaphore::new(1),
            groups: crate::group::Coordinator::new(self.config.group),
            txns: crate::txn::TxnCoordinator::default(),
            fetch_sessions: crate::kafka::FetchSessions::new(self.id, shards),
            request_memory: Rc::new(glommio::sync::Semaphore::new(
                self.config.request_memory() as u64
            )),
            write_slots: tern_storage::write_slots::WriteSlots::new(self.config.write_slots),
            cluster: RefCell::new(None),
            replicas: RefCell::new(None),
        });
        tern_storage::fs::probe_direct_io(&shard.config.data_dir)
            .await
            .context("probe direct I/O on the data dir")?;
        let snapshot = shard.meta.snapshot();
        for (name, topic) in &snapshot.topics {
            for (p, &owner) in topic.shards.iter().enumerate() {
                if owner == shard.id {
                    let configs = snapshot.topic_configs(&topic.configs, shard.config.node_id);
                    shard
                        .open_partition(name, topic.id, p as i32, &configs)
                        .await?;
                }
            }
        }
        match (shard.id, &shard.config.cluster) {
            (_, None) => {}
            (0, Some(config)) => {
                let cluster = crate::cluster::Cluster::start(&shard, config.clone())
                    .await
                    .context("join the cluster")?;
                *shard.cluster.borrow_mut() = Some(cluster);
            }
            (_, Some(config)) => {
                let replicas = crate::cluster::Replicas::start_on_shard(&shard, config.clone())
                    .await
                    .context("start the shard's replication")?;
                shard.set_replicas(replicas);
            }
        }
        crate::group::load(&shard)
            .await
            .context("load consumer groups")?;
        glommio::spawn_local(crate::group::tick_loop(shard.clone())).detach();
        crate::txn::load(&shard)
            .await
            .context("load transaction state")?;
        glommio::spawn_local(crate::txn::tick_loop(shard.clone())).detach();
        glommio::spawn_local(shard.clone().maintenance_loop()).detach();
        for queue in receivers {
            let runner = shard.clone();
            // Only takes and spawns: never waits on anything else (see `mesh`).
            glommio::spawn_local(async move {
                while let Some(message) = queue.recv().await {
                    match message {
                        ShardMessage::Call(call) => {
                            glommio::spawn_local(call.run(runner.clone())).detach();
                        }
                        ShardMessage::Notice(notice) => {
                            if let Some(r) = runner.replicas() {
                                r.take(&runner, notice);
                            }
                        }
                    }
                }
            })
            .detach();
        }
        let stopping = shard.clone();
        let stop = self.stop;
        glommio::spawn_local(async move {
            if let Ok(done) = stop.await {
                stopping.close_all().await;
                let _ = done.send(());
            }
        })
        .detach();
        Ok(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Route, TopicMeta};
    use kafka_protocol::ResponseError;
    use std::time::Duration;

    fn config(data_dir: &std::path::Path) -> BrokerConfig {
        let ms = Duration::from_millis;
        BrokerConfig {
            node_id: 1,
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: 100 << 20,
            cache_bytes_per_partition: 1 << 20,
            memory_per_shard: 64 << 20,
            group: crate::group::state::GroupConfig {
                min_session_timeout: ms(6_000),
                max_session_timeout: ms(1_800_000),
                initial_rebalance_delay: ms(0),
                consumer_session_timeout: ms(45_000),
                consumer_heartbeat_interval: ms(5_000),
            },
            offsets_partitions: 1,
            transaction_partitions: 1,
            retention_check_interval: ms(300_000),
            producer_id_expiration: ms(86_400_000),
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration: ms(604_800_000),
            write_slots: 4,
            cluster: None,
        }
    }

    /// A single shard on a fresh data dir.
    async fn shard_with(dir: &std::path::Path) -> Rc<Shard> {
        let meta = Arc::new(MetaStore::load(dir, 1).unwrap());
        let mesh = crate::mesh::mesh(1, 1).pop().unwrap();
        let seed = ShardSeed {
            id: 0,
            config: Arc::new(config(dir)),
            meta,
            mesh,
            stop: oneshot::channel().1,
        };
        seed.start().await.unwrap()
    }

    /// Publishes the shard's metadata with topic `t` of one partition as the topic with id
    /// `id` (None: no topic `t`).
    fn publish_t(shard: &Shard, id: Option<Uuid>) {
        let mut meta = (*shard.meta.snapshot()).clone();
        meta.topics.remove("t");
        if let Some(id) = id {
            let t = TopicMeta::local(id, vec![0], Default::default());
            meta.topics.insert("t".into(), t);
        }
        shard.meta.publish(meta);
    }

    #[test]
    fn a_request_routed_before_its_topic_was_created_again_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let shard = shard_with(&dir).await;
                let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
                publish_t(&shard, Some(old));
                let configs = Default::default();
                shard.open_partition("t", old, 0, &configs).await.unwrap();
                let route = shard.meta.snapshot().route("t", 0).unwrap();
                assert_eq!(
                    route,
                    Route {
                        owner: 0,
                        topic_id: old
                    }
                );
                assert!(shard.routed_partition("t", route.topic_id, 0).is_some());

                // Created again under its name: the metadata has the new topic before the
                // old one's log is gone, then both agree.
                publish_t(&shard, Some(new));
                assert!(shard.routed_partition("t", new, 0).is_none());
                assert!(shard.routed_partition("t", route.topic_id, 0).is_none());
                shard.remove_partition("t", 0).await.unwrap();
                shard.open_partition("t", new, 0, &configs).await.unwrap();
                assert!(shard.routed_partition("t", route.topic_id, 0).is_none());
                let not_leader = ResponseError::NotLeaderOrFollower.code();
                let read = shard.readable_partition("t", route.topic_id, 0, -1, false);
                assert_eq!(read.err(), Some(not_leader));
                let route = shard.meta.snapshot().route("t", 0).unwrap();
                assert_eq!(route.topic_id, new);
                assert!(shard.readable_partition("t", new, 0, -1, false).is_ok());

                // Deleted from the metadata, its log not removed yet.
                publish_t(&shard, None);
                assert!(shard.routed_partition("t", new, 0).is_none());
                shard.close_all().await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
