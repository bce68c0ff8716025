//! A shard's part of cluster mode: the Raft groups of the partitions it owns, their driver
//! (`replication`) and its outgoing connections to other nodes.
//!
//! Every shard of a cluster node has one. Shard 0's also drives the metadata group and writes
//! the node's Raft state file; the others send it their groups' state (`StateHome::Remote`).
//! Shard 0 receives every envelope from other nodes and hands each shard the part for its
//! groups (`Cluster::route`); each shard sends its own envelopes, so heartbeats are coalesced
//! per (shard, node) pair. Handlers ask the shard owning a partition: produce, fetch,
//! ListOffsets, DeleteRecords and the coordinators' appends run where the replica is.

use anyhow::{Context, Result};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_raft::{GroupId, Membership, NodeId, Role, RoleChange};

use super::log_start::LogStarts;
use super::{ClusterConfig, METADATA_GROUP};
use crate::group::OFFSETS_TOPIC;
use crate::replication::state::Persisted;
use crate::replication::{Replicator, StateHome, Timing};
use crate::rpc::{RpcConfig, Transport};
use crate::shard::Shard;
use crate::txn::TXN_TOPIC;

/// The Raft groups a shard hosts.
pub struct Replicas {
    pub config: ClusterConfig,
    pub replicator: Rc<Replicator>,
    pub(super) transport: Rc<Transport>,
    /// Partitions this shard holds: their Raft group → (topic, partition).
    pub(super) hosted: RefCell<BTreeMap<GroupId, (String, i32)>>,
    /// Log starts of the replicas of the groups this shard holds.
    pub(super) starts: RefCell<LogStarts>,
    /// Shard 0: since when this node leads the metadata group (is the controller).
    pub(super) controller_since: Cell<Option<Instant>>,
    /// Requests to other nodes waiting for their answers.
    pub(super) calls: super::calls::Calls,
}

/// Who this node is to the others, as every shard's connections say in their hello.
pub(super) fn rpc_config(shard: &Shard, config: &ClusterConfig) -> RpcConfig {
    let me = config.node_id;
    RpcConfig {
        node_id: me,
        cluster: config.cluster_name(),
        peers: config
            .quorum
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(&id, &addr)| (id, addr))
            .collect(),
        kafka: super::advertised(shard),
        rack: config.rack.clone(),
        rpc: config.rpc_advertised.to_string(),
        dial_from: Some(config.rpc_listen.ip()).filter(|ip| !ip.is_unspecified()),
    }
}

impl Replicas {
    /// Starts a shard's driver on `transport`; `home` says where its Raft state goes.
    pub(super) async fn start(
        shard: &Rc<Shard>,
        config: ClusterConfig,
        transport: Rc<Transport>,
        home: StateHome,
    ) -> Result<Rc<Replicas>> {
        let replicator = Replicator::start(transport.clone(), Timing::default(), home)
            .await
            .context("start replication")?;
        let replicas = Rc::new(Replicas {
            config,
            replicator,
            transport,
            hosted: RefCell::default(),
            starts: RefCell::default(),
            controller_since: Cell::new(None),
            calls: Default::default(),
        });
        shard.groups.served.set_clustered();
        shard.txns.served.set_clustered();
        let (weak, shard_ref) = (Rc::downgrade(&replicas), shard.clone());
        replicas
            .replicator
            .on_role_change(Box::new(move |group, role| {
                if let Some(replicas) = weak.upgrade() {
                    replicas.role_changed(&shard_ref, group, role);
                }
            }));
        Ok(replicas)
    }

    /// A shard other than 0: its own connections, its Raft state written by shard 0.
    pub async fn start_on_shard(shard: &Rc<Shard>, config: ClusterConfig) -> Result<Rc<Replicas>> {
        let transport = Transport::outgoing(rpc_config(shard, &config));
        let writer = Rc::downgrade(shard);
        let home = StateHome::Remote(Box::new(
            move |states: Vec<(GroupId, Option<Persisted>)>| {
                let writer = writer.clone();
                Box::pin(async move {
                    let shard = writer
                        .upgrade()
                        .ok_or_else(|| std::io::Error::other("shutting down"))?;
                    let store = |answer| super::ReplicaCall::StoreStates { states, answer };
                    shard.call_replicas(0, store).await
                })
            },
        ));
        Self::start(shard, config, transport, home).await
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id as i32
    }

    /// A group's role, term or leader changed: published for Metadata; for a partition of
    /// `__consumer_offsets` or `__transaction_state`, its groups or transactional ids come to
    /// or leave this shard's coordinator.
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
        let coordinator = match topic.as_str() {
            OFFSETS_TOPIC => Coordinator::Groups,
            TXN_TOPIC => Coordinator::Transactions,
            _ => return,
        };
        let partitions = shard
            .meta
            .snapshot()
            .topics
            .get(&topic)
            .map_or(1, |t| t.shards.len());
        if role.role != Role::Leader {
            coordinator.stop_leading(shard, p, partitions);
            return;
        }
        coordinator.begin_leading(shard, p, partitions);
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
            match coordinator.load(&shard, p).await {
                Ok(records) => {
                    tracing::info!(topic, partition = p, records, "coordinating a partition");
                    coordinator.finish_loading(&shard, p);
                }
                Err(e) => {
                    tracing::error!(topic, partition = p, error = %format!("{e:#}"), "load a coordinator's state")
                }
            }
        })
        .detach();
    }

    /// The in-sync replicas of a group this shard leads (`None` elsewhere).
    pub fn in_sync(&self, group: GroupId) -> Option<Vec<i32>> {
        let isr = self.replicator.in_sync(group, self.config.replica_lag)?;
        Some(isr.into_iter().map(|n| n as i32).collect())
    }

    /// The leader epoch (Raft term) of a group this shard leads.
    pub fn leader_epoch(&self, group: GroupId) -> Option<i32> {
        let role = self.replicator.role(group)?;
        (role.role == Role::Leader).then_some(role.term as i32)
    }

    /// The leader epoch (Raft term) of this shard's replica of `group`, leader or not, while
    /// it knows a leader (a follower serving a consumer, KIP-392).
    pub fn replica_epoch(&self, group: GroupId) -> Option<i32> {
        let role = self.replicator.role(group)?;
        role.leader.map(|_| role.term as i32)
    }

    /// OffsetForLeaderEpoch on a group this shard leads: the largest epoch not above `epoch`
    /// and where it ends.
    pub fn epoch_end(&self, group: GroupId, epoch: i32) -> Option<(i32, i64)> {
        let (term, end) = self.replicator.epoch_end(group, epoch.max(0) as u64)?;
        Some((term as i32, end as i64))
    }

    /// Whether this shard leads partition group `group`.
    pub fn leads(&self, group: GroupId) -> bool {
        self.replicator
            .role(group)
            .is_some_and(|r| r.role == Role::Leader)
    }

    /// Opens this shard's replica of partition `p` of `name` and starts its Raft group
    /// (from `stored` state, handed over by shard 0, if it has one). `campaign`: it is a new
    /// partition's first replica, its preferred leader, and stands first.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open_replica(
        &self,
        shard: &Shard,
        group: GroupId,
        (name, topic_id): (String, uuid::Uuid),
        p: i32,
        configs: BTreeMap<String, String>,
        replicas: Vec<i32>,
        stored: Option<Persisted>,
        campaign: bool,
    ) -> Result<()> {
        shard.open_partition(&name, topic_id, p, &configs).await?;
        let log = shard.partition(&name, p).context("partition just opened")?;
        let members = Membership::new(replicas.iter().map(|&n| n as u64));
        self.replicator
            .add_group(group, log, members, stored)
            .await?;
        if campaign {
            self.replicator.campaign(group);
        }
        tracing::info!(topic = %name, partition = p, group, shard = shard.id, "hosting a replica");
        self.hosted.borrow_mut().insert(group, (name, p));
        Ok(())
    }

    /// Stops replicating `group` (the partition left this node) and removes its files; its
    /// Raft state is forgotten first. `exists`: the partition still exists elsewhere.
    pub(super) async fn remove_replica(
        &self,
        shard: &Shard,
        group: GroupId,
        exists: bool,
    ) -> Result<()> {
        let Some((name, p)) = self.hosted.borrow().get(&group).cloned() else {
            return Ok(());
        };
        // Its files stay if this fails: a later start must not find its state without them.
        self.replicator
            .remove_group(group)
            .await
            .context("forget a partition's Raft state")?;
        if !exists {
            shard.meta.set_leader(group, None); // else its leader keeps telling
        }
        self.hosted.borrow_mut().remove(&group);
        self.starts.borrow_mut().forget(group);
        shard.remove_partition(&name, p).await
    }

    pub(super) fn transfer(&self, group: GroupId, to: NodeId) {
        match self.replicator.transfer_leader(group, to) {
            Ok(()) => tracing::info!(group, to, "handing leadership over"),
            Err(e) => tracing::info!(group, to, error = ?e, "leadership not handed over"),
        }
    }
}

/// A coordinator whose state is an internal topic's partitions, and which follows their
/// leadership.
#[derive(Clone, Copy)]
enum Coordinator {
    Groups,
    Transactions,
}

impl Coordinator {
    fn served(self, shard: &Shard) -> &crate::internal::Served {
        match self {
            Coordinator::Groups => &shard.groups.served,
            Coordinator::Transactions => &shard.txns.served,
        }
    }

    fn forget_partition(self, shard: &Shard, p: i32, partitions: usize) {
        match self {
            Coordinator::Groups => shard.groups.forget_partition(p, partitions),
            Coordinator::Transactions => shard.txns.forget_partition(p, partitions),
        }
    }

    /// This node leads `p` now: what memory holds of it goes; it is read back before served.
    fn begin_leading(self, shard: &Shard, p: i32, partitions: usize) {
        self.forget_partition(shard, p, partitions);
        self.served(shard).begin_leading(p);
    }

    fn finish_loading(self, shard: &Shard, p: i32) {
        self.served(shard).finish_loading(p);
    }

    /// Another node leads `p` now: its state leaves this node.
    fn stop_leading(self, shard: &Shard, p: i32, partitions: usize) {
        self.served(shard).stop_leading(p);
        self.forget_partition(shard, p, partitions);
    }

    /// Reads partition `p` back; returns the records read.
    async fn load(self, shard: &Rc<Shard>, p: i32) -> Result<usize> {
        match self {
            Coordinator::Groups => crate::group::load_partition(shard, p).await,
            Coordinator::Transactions => crate::txn::load_partition(shard, p).await,
        }
    }
}
