//! Cluster mode: this node's part in the metadata Raft group (the controller quorum, KRaft's
//! `controller.quorum.voters`) and in the Raft groups of the partitions it holds.
//!
//! The metadata log (group 0, `<data>/__cluster_metadata-0`) holds the cluster metadata as a
//! sequence of whole snapshots, each one version after the one before: the controller (the
//! group's leader) proposes the next version, and every node applies each committed version in
//! order (opening the partitions it now holds and starting their Raft groups, removing those it
//! no longer holds, applying configs) and publishes it to its shards. A version proposed on a
//! stale base is refused by every node alike when applied, so two controllers in succession
//! never overwrite each other's changes.
//!
//! Every record is a whole snapshot, so the log is compacted by moving its start up to the
//! newest snapshot this node applied (`COMPACT_AFTER` records behind it at most): a restart
//! replays one snapshot and what followed, not the cluster's history. The snapshot at a log
//! start is the base: applied whatever its version, as long as it is newer.
//!
//! Nodes register through their RPC hello (Kafka listener, rack, RPC listener): the controller
//! adds the nodes it hears from to the metadata, and makes those that are not voters of the
//! quorum learners of the metadata group, so every node follows the metadata log. A node the
//! controller has not heard from within the session timeout is fenced in the metadata.
//!
//! Leaders tell every node what they lead (`leaders.rs`): Metadata on any node names each
//! partition's leader, ISR and configuration, and the controller sees reassignments finish.
//!
//! Exists on shard 0 only, beside that shard's [`Replicas`]: every shard hosts the replicas of
//! the partitions placed on it (`replicas.rs`), and shard 0 routes other nodes' envelopes and
//! messages to them.

use anyhow::{Context, Result};
use bytes::Bytes;
use event_listener::Event;
use futures::StreamExt;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::batch;
use tern_raft::{Envelope, GroupId, Membership, NodeId, Role};
use tern_storage::{LogConfig, PartitionLog};

use crate::controller::{change_partitions, ApiError, PartitionChange};
use crate::group::OFFSETS_TOPIC;
use crate::metadata::{ClusterMeta, NodeInfo};
use crate::replication::{Replicator, StateHome};
use crate::rpc::Transport;
use crate::shard::Shard;
use crate::txn::TXN_TOPIC;

mod calls;
mod leaders;
mod log_start;
mod migrate;
mod producer_ids;
pub mod replicas;
mod shard_calls;

pub use replicas::Replicas;
pub use shard_calls::ReplicaCall;

/// What shard 0, which reads the messages other nodes send, hands the shard that hosts the
/// group concerned (a `ShardMessage`).
pub enum Notice {
    /// Raft messages and heartbeats for groups the shard hosts, in the order they came.
    Raft(Envelope),
    /// Another node leads these groups (its periodic report): follow their log starts.
    Leaders {
        from: NodeId,
        groups: Vec<tern_protocol::rpc::Leadership>,
    },
    /// Hand the leadership of `group` over to `to` (ElectLeaders, rebalancing).
    TransferLeader { group: GroupId, to: NodeId },
    /// `from`'s replica of `group` starts at `start` (DeleteRecords on followers).
    LogStart {
        group: GroupId,
        from: NodeId,
        start: i64,
    },
    /// The answer to a call a replica on the shard made to another node.
    Answer {
        call: tern_protocol::rpc::Call,
        answer: tern_protocol::rpc::NodeMessage,
    },
}

impl Replicas {
    /// Acts on a notice for this shard. Never waits: the shard's queues are drained by a loop
    /// that must not (see `mesh`).
    pub fn take(self: &Rc<Self>, shard: &Rc<Shard>, notice: Notice) {
        match notice {
            Notice::Raft(envelope) => self.replicator.deliver(envelope),
            Notice::Leaders { from, groups } => {
                let (replicas, shard) = (self.clone(), shard.clone());
                glommio::spawn_local(async move {
                    replicas.follow_log_starts(&shard, from, &groups).await
                })
                .detach();
            }
            Notice::TransferLeader { group, to } => self.transfer(group, to),
            Notice::LogStart { group, from, start } => self.replica_log_start(group, from, start),
            Notice::Answer { call, answer } => self.calls.answer(call, answer),
        }
    }
}

/// The metadata log's Raft group.
pub const METADATA_GROUP: GroupId = 0;
const METADATA_DIR: &str = "__cluster_metadata-0";
/// Key of the records holding a metadata snapshot.
const SNAPSHOT_KEY: &[u8] = b"cluster-metadata";
/// How long a controller change may wait for its commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Replicas a node opens at once when metadata gives it new partitions.
const OPEN_CONCURRENCY: usize = 64;
/// Metadata records kept before the newest applied snapshot before the log is compacted.
const COMPACT_AFTER: i64 = 16;
/// Metadata log segments: small, so compaction deletes files.
const METADATA_SEGMENT_BYTES: u64 = 8 << 20;
/// How often the controller checks the nodes it hears from against the metadata.
const REGISTER_INTERVAL: Duration = Duration::from_millis(200);

/// `tern start` flags of cluster mode.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub rpc_listen: SocketAddr,
    /// Where other nodes reach this one's RPC listener.
    pub rpc_advertised: SocketAddr,
    /// A node not heard from for this long is fenced (broker.session.timeout.ms).
    pub session_timeout: Duration,
    /// How often leaders hand partitions back to their preferred replicas (`None`: never).
    pub leader_rebalance: Option<Duration>,
    /// The controller quorum's voters and their RPC addresses.
    pub quorum: BTreeMap<NodeId, SocketAddr>,
    pub rack: Option<String>,
    /// A follower that has not held everything committed for this long leaves the ISR
    /// (replica.lag.time.max.ms).
    pub replica_lag: Duration,
}

impl ClusterConfig {
    /// Parses `--controller-quorum`: `1@host:port,2@host:port,...`.
    pub fn parse_quorum(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>> {
        let mut quorum = BTreeMap::new();
        for voter in s.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let (id, addr) = voter
                .split_once('@')
                .with_context(|| format!("quorum voter {voter:?} is not ID@HOST:PORT"))?;
            let id: NodeId = id
                .parse()
                .with_context(|| format!("node id of quorum voter {voter:?}"))?;
            let addr = crate::resolve(addr)?;
            if quorum.insert(id, addr).is_some() {
                anyhow::bail!("node {id} is named twice in the controller quorum");
            }
        }
        if quorum.is_empty() {
            anyhow::bail!("the controller quorum names no voter");
        }
        Ok(quorum)
    }

    /// Names the cluster in RPC hellos: nodes configured with another quorum are refused.
    pub(crate) fn cluster_name(&self) -> String {
        self.quorum
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The node's cluster membership. Exists on shard 0 only.
pub struct Cluster {
    pub config: ClusterConfig,
    /// Shard 0's replicas (with the metadata group).
    local: Rc<Replicas>,
    replicator: Rc<Replicator>,
    transport: Rc<Transport>,
    metadata: Rc<PartitionLog>,
    /// Partitions this node holds: their Raft group → (topic, partition, owner shard).
    hosted: RefCell<BTreeMap<GroupId, (String, i32, usize)>>,
    /// The metadata log is applied up to here.
    applied: Cell<i64>,
    /// Outcomes of the newest snapshots applied: (offset, accepted).
    outcomes: RefCell<VecDeque<(i64, bool)>>,
    applied_event: Event,
    /// What this node last told the others of the groups it leads.
    told: RefCell<leaders::Told>,
    /// Controller: when it first heard each node's hello (a node just registered is not
    /// fenced before it could be heard from).
    first_seen: RefCell<BTreeMap<i32, Instant>>,
    /// The block of producer ids this node hands out.
    pub producer_ids: producer_ids::ProducerIds,
}

impl Cluster {
    /// Joins the cluster: starts the RPC listener, the replication driver and the metadata
    /// group, then applies the metadata log in the background.
    pub async fn start(shard: &Rc<Shard>, config: ClusterConfig) -> Result<Rc<Cluster>> {
        let me = config.node_id;
        if config.rpc_advertised.ip().is_unspecified() {
            anyhow::bail!(
                "the RPC address {} cannot be dialled by other nodes: give --rpc-advertised",
                config.rpc_advertised
            );
        }
        let voter = config.quorum.contains_key(&me);
        let listener = glommio::net::TcpListener::bind(config.rpc_listen)
            .map_err(|e| anyhow::anyhow!("bind RPC listener {}: {e}", config.rpc_listen))?;
        let (transport, inbound) = Transport::start(replicas::rpc_config(shard, &config), listener);
        let messages = transport
            .take_messages()
            .context("the transport's node messages")?;
        let home = StateHome::File(shard.config.data_dir.clone());
        let local = Replicas::start(shard, config.clone(), transport.clone(), home).await?;
        shard.set_replicas(local.clone());
        let replicator = local.replicator.clone();
        let metadata = PartitionLog::open(
            &shard.config.data_dir.join(METADATA_DIR),
            LogConfig {
                segment_bytes: METADATA_SEGMENT_BYTES,
                ..LogConfig::default()
            },
        )
        .await
        .context("open the metadata log")?;
        // A broker that is not a voter starts outside the group: the controller makes it a
        // learner once it registered.
        replicator
            .add_group(
                METADATA_GROUP,
                metadata.clone(),
                Membership::new(config.quorum.keys().copied()),
                None,
            )
            .await
            .context("start the metadata group")?;
        tracing::info!(
            node = me,
            role = if voter { "controller voter" } else { "broker" },
            shards = shard.shard_count(),
            "joining the cluster"
        );
        let cluster = Rc::new(Cluster {
            config,
            local,
            replicator,
            transport,
            metadata,
            hosted: RefCell::new(BTreeMap::new()),
            applied: Cell::new(0),
            outcomes: RefCell::new(VecDeque::new()),
            applied_event: Event::new(),
            told: RefCell::default(),
            first_seen: RefCell::default(),
            producer_ids: Default::default(),
        });
        glommio::spawn_local(cluster.clone().route_loop(shard.clone(), inbound)).detach();
        glommio::spawn_local(cluster.clone().apply_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().register_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().report_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().message_loop(shard.clone(), messages)).detach();
        Ok(cluster)
    }

    /// The shard hosting `group` on this node (shard 0 for the metadata group, and for groups
    /// this node does not hold: their envelopes are dropped there).
    fn owner(&self, group: GroupId) -> usize {
        self.hosted.borrow().get(&group).map_or(0, |h| h.2)
    }

    /// Hands each shard the part of every envelope from other nodes for its groups. Jobs to a
    /// shard run in the order sent, so envelopes keep their order; what waits for a busy shard
    /// is bounded by Raft's per-follower window and one heartbeat per group per interval.
    async fn route_loop(
        self: Rc<Self>,
        shard: Rc<Shard>,
        inbound: glommio::channels::local_channel::LocalReceiver<Envelope>,
    ) {
        while let Some(envelope) = inbound.recv().await {
            for (owner, part) in split_envelope(envelope, |g| self.owner(g)) {
                match owner {
                    0 => self.replicator.deliver(part),
                    _ => shard.notify(owner, Notice::Raft(part)).await,
                }
            }
        }
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id as i32
    }

    pub fn is_controller(&self) -> bool {
        self.replicator
            .role(METADATA_GROUP)
            .is_some_and(|r| r.role == Role::Leader)
    }

    /// Before a controller change: this node must be the controller, with every committed
    /// snapshot applied (a new controller may not have applied its predecessor's last ones).
    pub async fn ready_to_change(&self) -> Result<(), ApiError> {
        let deadline = std::time::Instant::now() + COMMIT_TIMEOUT;
        loop {
            if !self.is_controller() {
                return Err(not_controller());
            }
            let listener = self.applied_event.listen();
            if self.applied.get() >= self.metadata.high_watermark() && self.term_committed() {
                return Ok(());
            }
            if crate::rpc::with_timeout(
                deadline.saturating_duration_since(std::time::Instant::now()),
                listener,
            )
            .await
            .is_none()
            {
                return Err(ApiError::new(
                    ResponseError::RequestTimedOut,
                    "the controller is still catching up",
                ));
            }
        }
    }

    /// Whether the metadata group committed an entry of the leader's own term (then everything
    /// before it is committed, and the high watermark is final up to there).
    fn term_committed(&self) -> bool {
        self.replicator.commit_in_term(METADATA_GROUP)
    }

    /// Commits `meta` (the next version) through the metadata log and waits until this node
    /// applied it. Other nodes apply it as they learn of the commit.
    pub async fn commit(&self, meta: &ClusterMeta) -> Result<(), ApiError> {
        let value = serde_json::to_vec(meta).map_err(|e| {
            ApiError::new(
                ResponseError::UnknownServerError,
                format!("encode metadata: {e}"),
            )
        })?;
        let record = batch::plain_record(
            0,
            crate::kafka::now_ms(),
            Some(Bytes::from_static(SNAPSHOT_KEY)),
            Some(value.into()),
        );
        let records = batch::encode_plain(&[record], Compression::None)
            .map_err(|e| ApiError::new(ResponseError::UnknownServerError, format!("{e:#}")))?;
        let proposed = self
            .replicator
            .propose(METADATA_GROUP, records, crate::kafka::now_ms())
            .map_err(|_| not_controller())?;
        let committed =
            self.replicator
                .committed(METADATA_GROUP, proposed.last_offset, proposed.term);
        match crate::rpc::with_timeout(COMMIT_TIMEOUT, committed).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(not_controller()),
            None => {
                return Err(ApiError::new(
                    ResponseError::RequestTimedOut,
                    "the metadata change was not committed in time",
                ))
            }
        }
        // Committed: every node applies it. This one is waited for (bounded: a slow applier
        // must not hold the controller lock for good; the next change waits for it anyway).
        let applied = async {
            loop {
                let listener = self.applied_event.listen();
                if self.applied.get() > proposed.last_offset {
                    break;
                }
                listener.await;
            }
        };
        if crate::rpc::with_timeout(COMMIT_TIMEOUT, applied)
            .await
            .is_none()
        {
            return Err(ApiError::new(
                ResponseError::RequestTimedOut,
                "the metadata change is committed but not yet applied on the controller",
            ));
        }
        let accepted = self
            .outcomes
            .borrow()
            .iter()
            .find(|(o, _)| *o == proposed.last_offset)
            .is_some_and(|&(_, ok)| ok);
        match accepted {
            true => Ok(()),
            false => Err(ApiError::new(
                ResponseError::NotController,
                "a concurrent metadata change won; retry",
            )),
        }
    }

    /// Applies committed metadata snapshots in log order, for as long as the node runs.
    async fn apply_loop(self: Rc<Self>, shard: Rc<Shard>) {
        let mut next = self.metadata.log_start_offset();
        // The next snapshot is the one at the log start (a base).
        let mut base = true;
        loop {
            let listener = self.metadata.listen();
            let start = self.metadata.log_start_offset();
            if next < start {
                // Behind the leader's log start: the log was restarted there.
                next = start;
                base = true;
            }
            let hw = self.metadata.high_watermark();
            if next >= hw {
                listener.await;
                continue;
            }
            let data = match self.metadata.read(next, 1 << 20, true).await {
                Ok(data) if !data.is_empty() => data,
                Ok(_) => {
                    listener.await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "read the metadata log");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            for (pos, h) in batch::headers(&data) {
                if h.base_offset >= hw {
                    break;
                }
                next = h.last_offset() + 1;
                if h.is_control() {
                    continue;
                }
                let snapshot = decode_snapshot(&data.slice(pos..pos + h.total_len()));
                let accepted = match snapshot {
                    Some(meta) => self.apply(&shard, meta, std::mem::take(&mut base)).await,
                    None => {
                        tracing::error!(
                            offset = h.base_offset,
                            "undecodable metadata record; skipped"
                        );
                        false
                    }
                };
                let mut outcomes = self.outcomes.borrow_mut();
                outcomes.push_back((h.last_offset(), accepted));
                if outcomes.len() > 64 {
                    outcomes.pop_front();
                }
            }
            self.applied.set(next);
            self.applied_event.notify(usize::MAX);
            self.compact_metadata().await;
        }
    }

    /// Moves the metadata log's start up to the newest snapshot applied, once enough records
    /// lie before it.
    async fn compact_metadata(&self) {
        let newest = self
            .outcomes
            .borrow()
            .iter()
            .rev()
            .find(|(_, accepted)| *accepted)
            .map(|&(offset, _)| offset);
        let Some(offset) = newest else {
            return;
        };
        if offset - self.metadata.log_start_offset() < COMPACT_AFTER {
            return;
        }
        match self.metadata.delete_records(offset).await {
            Ok(_) => self.replicator.log_start_advanced(METADATA_GROUP),
            Err(e) => tracing::warn!(error = %e, "compact the metadata log"),
        }
    }

    /// Applies one committed snapshot if it is the next version (or, as the `base` at the log
    /// start, any newer one); returns whether it was.
    async fn apply(&self, shard: &Rc<Shard>, meta: ClusterMeta, base: bool) -> bool {
        let current = shard.meta.snapshot();
        let next = match base {
            true => meta.version > current.version,
            false => meta.version == current.version + 1,
        };
        if !next {
            tracing::warn!(
                version = meta.version,
                current = current.version,
                "metadata snapshot proposed on a stale version; refused"
            );
            return false;
        }
        let me = self.node_id();
        let mut peers = Vec::new();
        for (&id, node) in &meta.nodes {
            // Voters are reached at their quorum address; other nodes where they registered.
            let id = id as NodeId;
            if !self.config.quorum.contains_key(&id) {
                match node.rpc.parse::<SocketAddr>() {
                    Ok(addr) => peers.push((id, addr)),
                    Err(_) => {
                        tracing::warn!(node = id, rpc = %node.rpc, "node registered without a usable RPC address")
                    }
                }
            }
        }
        if !peers.is_empty() {
            // Every shard connects to them (a known peer at the same address is kept).
            for target in 0..shard.shard_count() {
                let peers = peers.clone();
                shard
                    .call_replicas(target, |answer| ReplicaCall::AddPeers { peers, answer })
                    .await;
            }
        }
        // The partitions this node holds, or joins as a reassignment's new replica.
        let shards = shard.shard_count();
        let mut wanted = BTreeMap::new();
        for (name, t) in &meta.topics {
            for (p, replicas) in t.replicas.iter().enumerate() {
                let target = t.reassigning.get(&(p as i32));
                let mine = replicas.contains(&me) || target.is_some_and(|t| t.contains(&me));
                if let (true, Some(&group), Some(&owner)) = (mine, t.groups.get(p), t.shards.get(p))
                {
                    let owner = owner % shards;
                    wanted.insert(group, (name.clone(), p as i32, owner, replicas.clone()));
                }
            }
        }
        let gone: Vec<(GroupId, (String, i32, usize))> = self
            .hosted
            .borrow()
            .iter()
            .filter(|(g, _)| !wanted.contains_key(g))
            .map(|(g, h)| (*g, h.clone()))
            .collect();
        for (group, (name, p, owner)) in gone {
            let exists = meta
                .topics
                .get(&name)
                .is_some_and(|t| t.groups.contains(&group));
            let removed = shard
                .call_replicas(owner, |answer| ReplicaCall::Remove {
                    group,
                    exists,
                    answer,
                })
                .await;
            match removed {
                Ok(()) => {
                    self.hosted.borrow_mut().remove(&group);
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = %name, partition = p, "remove a partition no longer held")
                }
            }
        }
        // Opened concurrently (each waits on its own file I/O): a topic of thousands of
        // partitions opens in seconds, not minutes.
        let new: Vec<_> = wanted
            .into_iter()
            .filter(|(group, _)| !self.hosted.borrow().contains_key(group))
            .collect();
        futures::stream::iter(new)
            .for_each_concurrent(OPEN_CONCURRENCY, |(group, (name, p, owner, replicas))| {
                self.open_replica(shard, &meta, &current, group, name, p, owner, replicas)
            })
            .await;
        let brokers_changed = current.broker_configs != meta.broker_configs;
        let changed: Vec<(String, BTreeMap<String, String>)> = meta
            .topics
            .iter()
            .filter(|(name, t)| {
                brokers_changed
                    || current
                        .topics
                        .get(*name)
                        .is_some_and(|old| old.configs != t.configs)
            })
            .map(|(name, t)| (name.clone(), meta.topic_configs(&t.configs, me)))
            .collect();
        if !changed.is_empty() {
            for target in 0..shards {
                let reconfigure = |answer| PartitionChange::Reconfigure {
                    topics: changed.clone(),
                    answer,
                };
                change_partitions(shard, target, reconfigure).await;
            }
        }
        tracing::info!(
            version = meta.version,
            nodes = meta.nodes.len(),
            "applied cluster metadata"
        );
        shard.meta.publish(meta);
        true
    }

    /// Opens this node's replica of partition `p` of `name` on shard `owner` and starts its
    /// Raft group there.
    #[allow(clippy::too_many_arguments)]
    async fn open_replica(
        &self,
        shard: &Rc<Shard>,
        meta: &ClusterMeta,
        current: &ClusterMeta,
        group: GroupId,
        name: String,
        p: i32,
        owner: usize,
        replicas: Vec<i32>,
    ) {
        let topic = &meta.topics[&name];
        let (configs, topic_id) = (meta.topic_configs(&topic.configs, self.node_id()), topic.id);
        // A new partition's first replica is its preferred leader: it stands first. (A topic
        // created again under an old name is new.)
        let new_partition = current
            .topics
            .get(&name)
            .filter(|t| t.id == topic_id)
            .is_none_or(|t| p as usize >= t.replicas.len());
        let campaign = new_partition && replicas.first() == Some(&self.node_id());
        // Shard 0 holds the node's Raft state file: the owner starts from what it stored.
        let stored = match owner {
            0 => None,
            _ => self.replicator.stored_state(group),
        };
        // Envelopes for the group go to its shard from now on.
        self.hosted
            .borrow_mut()
            .insert(group, (name.clone(), p, owner));
        let open = |answer| ReplicaCall::Open {
            group,
            topic: (name.clone(), topic_id),
            partition: p,
            configs,
            replicas,
            stored: stored.map(Box::new),
            campaign,
            answer,
        };
        let opened = shard.call_replicas(owner, open).await;
        if let Err(e) = opened {
            self.hosted.borrow_mut().remove(&group);
            tracing::error!(topic = %name, partition = p, error = %e, "open a replicated partition");
        }
    }

    /// The controller registers the nodes it hears from (and itself): their Kafka listener,
    /// rack and RPC listener, so Metadata can name them and nodes can reach each other; fences
    /// those it stops hearing from; makes brokers learners of the metadata group; finishes
    /// reassignments.
    async fn register_loop(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            glommio::timer::sleep(REGISTER_INTERVAL).await;
            if !self.is_controller() {
                continue;
            }
            let mut nodes: BTreeMap<i32, NodeInfo> = self
                .transport
                .hellos()
                .into_iter()
                .map(|(id, h)| {
                    let rack = Some(h.rack).filter(|r| !r.is_empty());
                    let info = NodeInfo {
                        kafka: h.kafka,
                        rack,
                        rpc: h.rpc,
                    };
                    (id as i32, info)
                })
                .collect();
            nodes.insert(
                self.node_id(),
                NodeInfo {
                    kafka: advertised(&shard),
                    rack: self.config.rack.clone(),
                    rpc: self.config.rpc_advertised.to_string(),
                },
            );
            for &id in nodes.keys() {
                self.first_seen
                    .borrow_mut()
                    .entry(id)
                    .or_insert_with(Instant::now);
            }
            let current = shard.meta.snapshot();
            let fenced = self.fenced(&current);
            let changed = nodes.iter().any(|(id, n)| current.nodes.get(id) != Some(n))
                || current.cluster_id.is_empty()
                || fenced != current.fenced;
            if changed {
                let Ok((_lock, mut meta)) = crate::controller::begin_change(&shard).await else {
                    continue;
                };
                if meta.cluster_id.is_empty() {
                    meta.cluster_id = uuid::Uuid::new_v4().simple().to_string();
                }
                for (id, n) in nodes {
                    meta.nodes.insert(id, n);
                }
                for id in fenced.symmetric_difference(&meta.fenced) {
                    let now = if fenced.contains(id) {
                        "fenced"
                    } else {
                        "unfenced"
                    };
                    tracing::info!(node = id, "{now}");
                }
                meta.fenced = fenced;
                meta.version += 1;
                if let Err(e) = self.commit(&meta).await {
                    tracing::debug!(error = %e.message, "register nodes");
                }
                continue;
            }
            self.add_metadata_learners(&current);
            if self.migrate_single_node(&shard, &current).await {
                continue;
            }
            // Every voter registered: the coordinators' topics can get their replicas.
            if current.nodes.len() >= self.config.quorum.len() {
                for (name, partitions) in [
                    (OFFSETS_TOPIC, shard.config.offsets_partitions),
                    (TXN_TOPIC, shard.config.transaction_partitions),
                ] {
                    if !current.topics.contains_key(name) {
                        create_internal_topic(&shard, name, partitions).await;
                    }
                }
            }
            self.finish_reassignments(&shard, &current).await;
        }
    }

    /// The registered nodes the controller has not heard from within the session timeout
    /// (counted from when it became controller at the earliest).
    fn fenced(&self, meta: &ClusterMeta) -> std::collections::BTreeSet<i32> {
        let Some(controller_since) = self.local.controller_since.get() else {
            return meta.fenced.clone();
        };
        let first_seen = self.first_seen.borrow();
        meta.nodes
            .keys()
            .copied()
            .filter(|&id| id != self.node_id())
            .filter(|&id| {
                let timeout = self.config.session_timeout;
                let since = first_seen
                    .get(&id)
                    .map_or(controller_since, |&s| s.max(controller_since));
                let heard = self.replicator.heard_from(id as NodeId);
                if heard.is_some_and(|h| h.elapsed() <= timeout) {
                    false
                } else if since.elapsed() <= timeout {
                    meta.fenced.contains(&id) // not known yet: as the last controller said
                } else {
                    true
                }
            })
            .collect()
    }

    /// Every registered node that is not a voter follows the metadata log as a learner (one
    /// configuration change at a time: the others wait for the next round).
    fn add_metadata_learners(&self, meta: &ClusterMeta) {
        let Some(members) = self.replicator.membership(METADATA_GROUP) else {
            return;
        };
        let broker = meta
            .nodes
            .keys()
            .map(|&id| id as NodeId)
            .find(|id| !self.config.quorum.contains_key(id) && !members.is_member(*id));
        if let Some(id) = broker {
            match self
                .replicator
                .propose_membership(METADATA_GROUP, tern_raft::MembershipChange::AddLearner(id))
            {
                Ok(_) => tracing::info!(node = id, "broker joins the metadata log as a learner"),
                Err(e) => tracing::debug!(node = id, error = ?e, "add a metadata learner"),
            }
        }
    }
}

/// Creates internal topic `name` (`__consumer_offsets`, `__transaction_state`), compacted,
/// replication factor min(3, nodes), as Kafka does when the first group or transactional
/// producer needs it.
async fn create_internal_topic(shard: &Rc<Shard>, name: &str, partitions: i32) {
    let topic = crate::controller::NewTopic {
        name: name.to_string(),
        partitions,
        configs: [
            ("cleanup.policy", "compact"),
            ("segment.bytes", "104857600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        replication_factor: -1,
        assignments: None,
    };
    match crate::controller::create_topic(shard, topic).await {
        Ok(_) => tracing::info!(topic = name, "created an internal topic"),
        Err(e) => tracing::debug!(topic = name, error = %e.message, "create an internal topic"),
    }
}

fn advertised(shard: &Shard) -> String {
    format!(
        "{}:{}",
        shard.config.advertised_host, shard.config.advertised_port
    )
}

fn not_controller() -> ApiError {
    ApiError::new(
        ResponseError::NotController,
        "this node is not the controller",
    )
}

/// The metadata snapshot in a metadata log batch.
fn decode_snapshot(batch: &Bytes) -> Option<ClusterMeta> {
    let mut buf = batch.clone();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    let record = set.records.into_iter().last()?;
    if record.key.as_deref() != Some(SNAPSHOT_KEY) {
        return None;
    }
    serde_json::from_slice(&record.value?).ok()
}

/// The parts of `envelope` for each shard, by the shard `owner` gives each group (one part,
/// without copying, when all of it goes to one shard).
fn split_envelope(envelope: Envelope, owner: impl Fn(GroupId) -> usize) -> Vec<(usize, Envelope)> {
    let groups = envelope
        .messages
        .iter()
        .map(|(g, _)| *g)
        .chain(envelope.heartbeats.iter().map(|h| h.group))
        .chain(envelope.acks.iter().map(|a| a.group));
    let mut owners = groups.map(&owner);
    let Some(first) = owners.next() else {
        return vec![(0, envelope)];
    };
    if owners.all(|o| o == first) {
        return vec![(first, envelope)];
    }
    let mut parts: BTreeMap<usize, Envelope> = BTreeMap::new();
    let (from, to) = (envelope.from, envelope.to);
    let empty = || Envelope {
        from,
        to,
        messages: Vec::new(),
        heartbeats: Vec::new(),
        acks: Vec::new(),
    };
    for (g, m) in envelope.messages {
        let part = parts.entry(owner(g)).or_insert_with(empty);
        part.messages.push((g, m));
    }
    for h in envelope.heartbeats {
        let part = parts.entry(owner(h.group)).or_insert_with(empty);
        part.heartbeats.push(h);
    }
    for a in envelope.acks {
        let part = parts.entry(owner(a.group)).or_insert_with(empty);
        part.acks.push(a);
    }
    parts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::split_envelope;
    use tern_raft::{Body, Envelope, HeartbeatAck, HeartbeatItem, Message};

    fn message(term: u64) -> Message {
        Message {
            from: 1,
            to: 2,
            term,
            body: Body::PreVoteResponse { granted: true },
        }
    }

    fn heartbeat(group: u64) -> HeartbeatItem {
        HeartbeatItem {
            group,
            term: 1,
            commit: 0,
            round: 1,
        }
    }

    fn ack(group: u64) -> HeartbeatAck {
        HeartbeatAck {
            group,
            term: 1,
            match_end: 0,
            durable: 0,
            round: 1,
        }
    }

    #[test]
    fn an_envelope_splits_by_the_shard_of_each_group_in_order() {
        let envelope = Envelope {
            from: 1,
            to: 2,
            messages: vec![(10, message(1)), (11, message(2)), (12, message(3))],
            heartbeats: vec![heartbeat(10), heartbeat(11), heartbeat(13)],
            acks: vec![ack(12), ack(10)],
        };
        // Even groups on shard 0, odd ones on shard 1.
        let parts = split_envelope(envelope, |g| (g % 2) as usize);
        assert_eq!(parts.len(), 2);
        let (zero, one) = (&parts[0], &parts[1]);
        assert_eq!((zero.0, one.0), (0, 1));
        let groups = |e: &Envelope| {
            let m: Vec<u64> = e.messages.iter().map(|(g, _)| *g).collect();
            let h: Vec<u64> = e.heartbeats.iter().map(|h| h.group).collect();
            let a: Vec<u64> = e.acks.iter().map(|a| a.group).collect();
            (m, h, a)
        };
        assert_eq!(groups(&zero.1), (vec![10, 12], vec![10], vec![12, 10]));
        assert_eq!(groups(&one.1), (vec![11], vec![11, 13], vec![]));
        assert_eq!(zero.1.messages[1].1.term, 3, "messages keep their order");
        assert!(parts.iter().all(|(_, e)| e.from == 1 && e.to == 2));
    }

    #[test]
    fn an_envelope_for_one_shard_goes_whole() {
        let envelope = Envelope {
            from: 3,
            to: 1,
            messages: vec![(5, message(1))],
            heartbeats: vec![heartbeat(7)],
            acks: Vec::new(),
        };
        let parts = split_envelope(envelope.clone(), |_| 1);
        assert_eq!(parts, vec![(1, envelope)]);
        let empty = Envelope {
            from: 3,
            to: 1,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            acks: Vec::new(),
        };
        assert_eq!(split_envelope(empty.clone(), |_| 1), vec![(0, empty)]);
    }
}
