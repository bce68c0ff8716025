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
//! Exists on shard 0 only: the replication driver runs there, and replicated partitions are
//! placed there (per shard: planned).

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
use tern_raft::{GroupId, Membership, NodeId, Role, RoleChange};
use tern_storage::{LogConfig, PartitionLog};

use crate::controller::ApiError;
use crate::group::OFFSETS_TOPIC;
use crate::metadata::{ClusterMeta, NodeInfo};
use crate::replication::{Replicator, Timing};
use crate::rpc::{RpcConfig, Transport};
use crate::shard::Shard;

mod leaders;
mod log_start;

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
    fn cluster_name(&self) -> String {
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
    pub replicator: Rc<Replicator>,
    transport: Rc<Transport>,
    metadata: Rc<PartitionLog>,
    /// Partitions this node holds: their Raft group → (topic, partition).
    hosted: RefCell<BTreeMap<GroupId, (String, i32)>>,
    /// The metadata log is applied up to here.
    applied: Cell<i64>,
    /// Outcomes of the newest snapshots applied: (offset, accepted).
    outcomes: RefCell<VecDeque<(i64, bool)>>,
    applied_event: Event,
    /// Since when this node is the controller (it fences no node before it could hear from
    /// each for a session timeout).
    controller_since: Cell<Option<Instant>>,
    /// What this node last told the others of the groups it leads.
    told: RefCell<leaders::Told>,
    /// Log starts of the replicas of the groups this node holds.
    starts: RefCell<log_start::LogStarts>,
    /// Controller: when it first heard each node's hello (a node just registered is not
    /// fenced before it could be heard from).
    first_seen: RefCell<BTreeMap<i32, Instant>>,
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
        let rpc = RpcConfig {
            node_id: me,
            cluster: config.cluster_name(),
            peers: config
                .quorum
                .iter()
                .filter(|(&id, _)| id != me)
                .map(|(&id, &addr)| (id, addr))
                .collect(),
            kafka: advertised(shard),
            rack: config.rack.clone(),
            rpc: config.rpc_advertised.to_string(),
            dial_from: Some(config.rpc_listen.ip()).filter(|ip| !ip.is_unspecified()),
        };
        let (transport, inbound) = Transport::start(rpc, listener);
        let messages = transport
            .take_messages()
            .context("the transport's node messages")?;
        let replicator = Replicator::start(
            transport.clone(),
            inbound,
            Timing::default(),
            &shard.config.data_dir,
        )
        .await
        .context("start replication")?;
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
            )
            .await
            .context("start the metadata group")?;
        tracing::info!(
            node = me,
            role = if voter { "controller voter" } else { "broker" },
            "joining the cluster"
        );
        let cluster = Rc::new(Cluster {
            config,
            replicator,
            transport,
            metadata,
            hosted: RefCell::new(BTreeMap::new()),
            applied: Cell::new(0),
            outcomes: RefCell::new(VecDeque::new()),
            applied_event: Event::new(),
            controller_since: Cell::new(None),
            told: RefCell::default(),
            starts: RefCell::default(),
            first_seen: RefCell::default(),
        });
        shard.groups.set_clustered();
        let (weak, shard_ref) = (Rc::downgrade(&cluster), shard.clone());
        cluster
            .replicator
            .on_role_change(Box::new(move |group, role| {
                if let Some(cluster) = weak.upgrade() {
                    cluster.role_changed(&shard_ref, group, role);
                }
            }));
        glommio::spawn_local(cluster.clone().apply_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().register_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().report_loop(shard.clone())).detach();
        glommio::spawn_local(cluster.clone().message_loop(shard.clone(), messages)).detach();
        Ok(cluster)
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id as i32
    }

    /// A group's role, term or leader changed: published for Metadata; for a
    /// `__consumer_offsets` partition, its groups come to or leave this node's coordinator.
    fn role_changed(self: &Rc<Self>, shard: &Rc<Shard>, group: GroupId, role: RoleChange) {
        let leader = role.leader.map_or(-1, |l| l as i32);
        shard
            .meta
            .set_leader(group, Some((leader, role.term as i32)));
        if group == METADATA_GROUP {
            let since = (role.role == Role::Leader).then(Instant::now);
            self.controller_since.set(since);
        }
        let Some((topic, p)) = self.hosted.borrow().get(&group).cloned() else {
            return;
        };
        if topic != OFFSETS_TOPIC {
            return;
        }
        let partitions = shard
            .meta
            .snapshot()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(1, |t| t.shards.len());
        if role.role != Role::Leader {
            shard.groups.stop_leading(p, partitions);
            return;
        }
        shard.groups.begin_leading(p, partitions);
        let (me, shard) = (self.clone(), shard.clone());
        glommio::spawn_local(async move {
            // Everything committed before this term is in the log (and under the high
            // watermark) once an entry of this term commits.
            while !me.replicator.commit_in_term(group) {
                if !me.leads(group) {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            match crate::group::load_partition(&shard, p).await {
                Ok(records) => {
                    tracing::info!(
                        partition = p,
                        records,
                        "coordinating the groups of an offsets partition"
                    );
                    shard.groups.finish_loading(p);
                }
                Err(e) => tracing::error!(partition = p, error = %format!("{e:#}"), "load groups"),
            }
        })
        .detach();
    }

    pub fn is_controller(&self) -> bool {
        self.replicator
            .role(METADATA_GROUP)
            .is_some_and(|r| r.role == Role::Leader)
    }

    /// The in-sync replicas of a group this node leads (`None` elsewhere).
    pub fn in_sync(&self, group: GroupId) -> Option<Vec<i32>> {
        let isr = self.replicator.in_sync(group, self.config.replica_lag)?;
        Some(isr.into_iter().map(|n| n as i32).collect())
    }

    /// The leader epoch (Raft term) of a group this node leads.
    pub fn leader_epoch(&self, group: GroupId) -> Option<i32> {
        let role = self.replicator.role(group)?;
        (role.role == Role::Leader).then_some(role.term as i32)
    }

    /// The leader epoch (Raft term) of this node's replica of `group`, leader or not, while it
    /// knows a leader (a follower serving a consumer, KIP-392).
    pub fn replica_epoch(&self, group: GroupId) -> Option<i32> {
        let role = self.replicator.role(group)?;
        role.leader.map(|_| role.term as i32)
    }

    /// OffsetForLeaderEpoch on a group this node leads: the largest epoch not above `epoch`
    /// and where it ends.
    pub fn epoch_end(&self, group: GroupId, epoch: i32) -> Option<(i32, i64)> {
        let (term, end) = self.replicator.epoch_end(group, epoch.max(0) as u64)?;
        Some((term as i32, end as i64))
    }

    /// Whether this node leads partition group `group`.
    pub fn leads(&self, group: GroupId) -> bool {
        self.replicator
            .role(group)
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
        for (&id, node) in &meta.nodes {
            // Voters are reached at their quorum address; other nodes where they registered.
            let id = id as NodeId;
            if !self.config.quorum.contains_key(&id) {
                match node.rpc.parse() {
                    Ok(addr) => self.transport.add_peer(id, addr),
                    Err(_) => {
                        tracing::warn!(node = id, rpc = %node.rpc, "node registered without a usable RPC address")
                    }
                }
            }
        }
        // The partitions this node holds, or joins as a reassignment's new replica.
        let mut wanted = BTreeMap::new();
        for (name, t) in &meta.topics {
            for (p, replicas) in t.replicas.iter().enumerate() {
                let target = t.reassigning.get(&(p as i32));
                let mine = replicas.contains(&me) || target.is_some_and(|t| t.contains(&me));
                if let (true, Some(&group)) = (mine, t.groups.get(p)) {
                    wanted.insert(group, (name.clone(), p as i32, replicas.clone()));
                }
            }
        }
        let gone: Vec<(GroupId, (String, i32))> = self
            .hosted
            .borrow()
            .iter()
            .filter(|(g, _)| !wanted.contains_key(g))
            .map(|(g, tp)| (*g, tp.clone()))
            .collect();
        for (group, (name, p)) in gone {
            if let Err(e) = self.replicator.remove_group(group).await {
                // Its files stay: a later start must not find its state without them.
                tracing::error!(error = %e, topic = %name, partition = p, "forget a partition's Raft state");
                continue;
            }
            let exists = meta
                .topics
                .get(&name)
                .is_some_and(|t| t.groups.contains(&group));
            if !exists {
                shard.meta.set_leader(group, None); // else its leader keeps telling
            }
            self.hosted.borrow_mut().remove(&group);
            self.starts.borrow_mut().forget(group);
            if let Err(e) = shard.remove_partition(&name, p).await {
                tracing::error!(error = %format!("{e:#}"), "remove a partition no longer held");
            }
        }
        // Opened concurrently (each waits on its own file I/O): a topic of thousands of
        // partitions opens in seconds, not minutes.
        let new: Vec<_> = wanted
            .into_iter()
            .filter(|(group, _)| !self.hosted.borrow().contains_key(group))
            .collect();
        futures::stream::iter(new)
            .for_each_concurrent(OPEN_CONCURRENCY, |(group, (name, p, replicas))| {
                self.open_replica(shard, &meta, &current, group, name, p, replicas)
            })
            .await;
        let brokers_changed = current.broker_configs != meta.broker_configs;
        for (name, t) in &meta.topics {
            if brokers_changed
                || current
                    .topics
                    .get(name)
                    .is_some_and(|old| old.configs != t.configs)
            {
                let configs = meta.topic_configs(&t.configs, self.node_id());
                shard.reconfigure_topic(name, &configs);
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

    /// Opens this node's replica of partition `p` of `name` and starts its Raft group.
    #[allow(clippy::too_many_arguments)]
    async fn open_replica(
        &self,
        shard: &Rc<Shard>,
        meta: &ClusterMeta,
        current: &ClusterMeta,
        group: GroupId,
        name: String,
        p: i32,
        replicas: Vec<i32>,
    ) {
        let opened = async {
            let configs = meta.topic_configs(&meta.topics[&name].configs, self.node_id());
            shard.open_partition(&name, p, &configs).await?;
            let log = shard.partition(&name, p).context("partition just opened")?;
            let members = Membership::new(replicas.iter().map(|&n| n as u64));
            self.replicator.add_group(group, log, members).await
        };
        match opened.await {
            Ok(()) => {
                // A new partition's first replica is its preferred leader: it stands first.
                let new_partition = current
                    .topics
                    .get(&name)
                    .is_none_or(|t| p as usize >= t.replicas.len());
                if new_partition && replicas.first() == Some(&self.node_id()) {
                    self.replicator.campaign(group);
                }
                self.hosted.borrow_mut().insert(group, (name, p));
            }
            Err(e) => {
                tracing::error!(topic = %name, partition = p, error = %format!("{e:#}"), "open a replicated partition")
            }
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
            // Every voter registered: the groups' topic can get its replicas.
            if !current.topics.contains_key(OFFSETS_TOPIC)
                && current.nodes.len() >= self.config.quorum.len()
            {
                self.create_offsets_topic(&shard).await;
            }
            self.finish_reassignments(&shard, &current).await;
        }
    }

    /// The registered nodes the controller has not heard from within the session timeout
    /// (counted from when it became controller at the earliest).
    fn fenced(&self, meta: &ClusterMeta) -> std::collections::BTreeSet<i32> {
        let Some(controller_since) = self.controller_since.get() else {
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

impl Cluster {
    /// Creates `__consumer_offsets` (replication factor min(3, nodes)), as Kafka does when
    /// the first group needs it.
    async fn create_offsets_topic(&self, shard: &Rc<Shard>) {
        let topic = crate::controller::NewTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: shard.config.offsets_partitions,
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
            Ok(_) => tracing::info!("created the consumer offsets topic"),
            Err(e) => tracing::debug!(error = %e.message, "create the consumer offsets topic"),
        }
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
