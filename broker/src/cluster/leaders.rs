//! What partition leaders tell every node, and the leader's part in reassignments and
//! elections; the node messages other nodes send (also the transaction coordinators' calls,
//! `calls.rs`) are taken here.
//!
//! Twice a second each node tells the others the groups it leads: term, ISR and committed
//! configuration (only what changed, and everything every few seconds so a node that restarted
//! or dropped a message catches up). Any node then answers Metadata with each partition's
//! leader and ISR, and the controller sees when a reassignment's new configuration is in
//! place. Information from a leader of an older term than one already known is ignored.
//!
//! Leadership goes back to each partition's preferred (first) replica by itself: every
//! `--leader-imbalance-check-interval-ms` a leader hands each partition whose preferred replica
//! is in sync over to it (Kafka's automatic leader rebalance), so leadership spreads over nodes
//! as placement spread first replicas.
//!
//! A reassignment is driven by the partition's leader, one configuration change at a time:
//! the new replicas join as learners, become voters once caught up, then the replicas not in
//! the target leave (the leader last: it hands leadership to a new replica first). The
//! controller then records the target as the partition's replicas, and the nodes that left
//! drop their copy.

use glommio::channels::local_channel::LocalReceiver;
use kafka_protocol::ResponseError;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::markers::Marker;
use tern_protocol::rpc::{Leadership, NodeFrame, NodeMessage};
use tern_raft::{GroupId, MembershipChange, NodeId, Role};

use super::{Cluster, Notice, ReplicaCall, Replicas};
use crate::controller::ApiError;
use crate::metadata::ClusterMeta;
use crate::shard::Shard;

pub(super) const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many reports, all of a node's leaderships are told, not only changes.
const FULL_EVERY: u64 = 10;
/// How long ElectLeaders waits for the preferred replica to take over.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node last told the others.
#[derive(Default)]
pub(super) struct Told {
    last: HashMap<GroupId, Leadership>,
    rounds: u64,
}

fn ids(nodes: &[u64]) -> Vec<i32> {
    nodes.iter().map(|&n| n as i32).collect()
}

impl Cluster {
    /// Tells every other node the groups this node leads (gathered from every shard), and
    /// moves this node's reassigning partitions one step.
    pub(super) async fn report_loop(self: Rc<Self>, shard: Rc<Shard>) {
        let mut rebalanced = Instant::now();
        loop {
            glommio::timer::sleep(REPORT_INTERVAL).await;
            let meta = shard.meta.snapshot();
            let full = self.told.borrow().rounds.is_multiple_of(FULL_EVERY);
            let rebalance = self
                .config
                .leader_rebalance
                .is_some_and(|interval| rebalanced.elapsed() >= interval);
            if rebalance {
                rebalanced = Instant::now();
            }
            let mut led = Vec::new();
            for target in 0..shard.shard_count() {
                let report = |answer| ReplicaCall::Report {
                    meta: meta.clone(),
                    full,
                    rebalance,
                    answer,
                };
                let part = shard.call_replicas(target, report).await;
                led.extend(part);
            }
            let me = self.config.node_id;
            for l in &led {
                take_leadership(&shard, me, l);
            }
            let mut told = self.told.borrow_mut();
            let groups: Vec<Leadership> = led
                .iter()
                .filter(|l| full || told.last.get(&l.group) != Some(l))
                .cloned()
                .collect();
            told.last = led.into_iter().map(|l| (l.group, l)).collect();
            told.rounds += 1;
            drop(told);
            if full || !groups.is_empty() {
                for &id in meta.nodes.keys() {
                    if id as NodeId != me {
                        let message = NodeMessage::Leaders {
                            groups: groups.clone(),
                        };
                        // A full queue drops it: the next full report repeats it.
                        let _ = self.transport.send_message(id as NodeId, message);
                    }
                }
            }
        }
    }

    /// Takes other nodes' messages for as long as the node runs; what concerns one group goes
    /// to the shard hosting it.
    pub(super) async fn message_loop(
        self: Rc<Self>,
        shard: Rc<Shard>,
        messages: LocalReceiver<NodeFrame>,
    ) {
        while let Some(frame) = messages.recv().await {
            let from = frame.from;
            match frame.message {
                NodeMessage::Leaders { groups } => {
                    let mut by_owner: HashMap<usize, Vec<Leadership>> = HashMap::new();
                    for l in groups {
                        take_leadership(&shard, from, &l);
                        if self.hosted.borrow().contains_key(&l.group) {
                            by_owner.entry(self.owner(l.group)).or_default().push(l);
                        }
                    }
                    for (owner, groups) in by_owner {
                        let notice = Notice::Leaders { from, groups };
                        shard.notify(owner, notice).await;
                    }
                }
                NodeMessage::TransferLeader { group, to } => {
                    let notice = Notice::TransferLeader { group, to };
                    shard.notify(self.owner(group), notice).await;
                }
                NodeMessage::LogStart { group, start } => {
                    let notice = Notice::LogStart { group, from, start };
                    shard.notify(self.owner(group), notice).await;
                }
                NodeMessage::WriteMarkers {
                    call,
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                    partitions,
                } => {
                    let (transport, shard) = (self.transport.clone(), shard.clone());
                    glommio::spawn_local(async move {
                        let marker = Marker {
                            producer_id,
                            producer_epoch,
                            commit,
                            coordinator_epoch,
                        };
                        let results = crate::txn::write_local_markers(&shard, marker, partitions)
                            .await
                            .into_iter()
                            .map(|((t, p), r)| (t, p, r.err().unwrap_or(0)))
                            .collect();
                        let answer = NodeMessage::MarkersWritten { call, results };
                        let _ = transport.send_message(from, answer);
                    })
                    .detach();
                }
                NodeMessage::VerifyTxn {
                    call,
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    topic,
                    partition,
                } => {
                    let (transport, shard) = (self.transport.clone(), shard.clone());
                    glommio::spawn_local(async move {
                        let verified = crate::txn::verify_here(
                            &shard,
                            &transactional_id,
                            producer_id,
                            producer_epoch,
                            topic,
                            partition,
                        )
                        .await;
                        let error = verified.err().unwrap_or(0);
                        let _ =
                            transport.send_message(from, NodeMessage::TxnVerified { call, error });
                    })
                    .detach();
                }
                NodeMessage::AllocateProducerIds { call } => {
                    let (transport, shard) = (self.transport.clone(), shard.clone());
                    glommio::spawn_local(async move {
                        let block = crate::controller::allocate_producer_id_block(&shard).await;
                        let (first, error) = match block {
                            Ok(first) => (first, 0),
                            Err(e) => (-1, e.code),
                        };
                        let count = crate::controller::PRODUCER_ID_BLOCK;
                        let answer = NodeMessage::ProducerIds {
                            call,
                            first,
                            count,
                            error,
                        };
                        let _ = transport.send_message(from, answer);
                    })
                    .detach();
                }
                answer @ (NodeMessage::MarkersWritten { call, .. }
                | NodeMessage::TxnVerified { call, .. }
                | NodeMessage::ProducerIds { call, .. }) => {
                    let target = call.shard as usize;
                    if target >= shard.shard_count() {
                        tracing::debug!(node = from, shard = target, "an answer for no shard");
                        continue;
                    }
                    let notice = Notice::Answer { call, answer };
                    shard.notify(target, notice).await;
                }
            }
        }
    }

    /// Controller: records as done the reassignments whose target is the committed
    /// configuration of their group (its leader said so).
    pub(super) async fn finish_reassignments(&self, shard: &Rc<Shard>, meta: &ClusterMeta) {
        let sorted = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
        let mut done = Vec::new();
        for (name, t) in &meta.topics {
            for (&p, target) in &t.reassigning {
                let Some((voters, learners)) = t.group(p).and_then(|g| shard.meta.config(g)) else {
                    continue;
                };
                if learners.is_empty() && sorted(&voters) == sorted(target) {
                    done.push((name.clone(), p, target.clone()));
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let Ok((_lock, mut meta)) = crate::controller::begin_change(shard).await else {
            return;
        };
        for (name, p, target) in &done {
            let Some(t) = meta.topics.get_mut(name) else {
                continue;
            };
            if t.reassigning.get(p) == Some(target) {
                if let Some(replicas) = t.replicas.get_mut(*p as usize) {
                    *replicas = target.clone();
                }
                t.reassigning.remove(p);
            }
        }
        meta.version += 1;
        match self.commit(&meta).await {
            Ok(()) => tracing::info!(partitions = ?done, "reassignments done"),
            Err(e) => tracing::debug!(error = %e.message, "finish reassignments"),
        }
    }

    /// ElectLeaders (preferred) for one partition: its leader hands leadership to its first
    /// replica, if that one is in sync; waits until it took over.
    pub async fn elect_preferred(
        &self,
        shard: &Rc<Shard>,
        group: GroupId,
        preferred: i32,
    ) -> Result<(), ApiError> {
        let meta = shard.meta.snapshot();
        let (leader, _) = shard.meta.leader(group).unwrap_or((-1, -1));
        if leader == preferred {
            return Err(ApiError::new(
                ResponseError::ElectionNotNeeded,
                "the preferred replica leads already",
            ));
        }
        let isr = shard.meta.isr(group).unwrap_or_default();
        if leader < 0 || meta.fenced.contains(&preferred) || !isr.contains(&preferred) {
            return Err(ApiError::new(
                ResponseError::PreferredLeaderNotAvailable,
                format!("replica {preferred} is not in sync with a leader"),
            ));
        }
        let message = NodeMessage::TransferLeader {
            group,
            to: preferred as NodeId,
        };
        if leader == self.node_id() {
            let notice = Notice::TransferLeader {
                group,
                to: preferred as NodeId,
            };
            shard.notify(self.owner(group), notice).await;
        } else if self
            .transport
            .send_message(leader as NodeId, message)
            .is_err()
        {
            return Err(ApiError::new(
                ResponseError::PreferredLeaderNotAvailable,
                format!("the leader {leader} cannot be reached"),
            ));
        }
        let deadline = Instant::now() + ELECTION_TIMEOUT;
        while Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            if shard
                .meta
                .leader(group)
                .is_some_and(|(l, _)| l == preferred)
            {
                return Ok(());
            }
        }
        Err(ApiError::new(
            ResponseError::RequestTimedOut,
            "the preferred replica did not take over in time",
        ))
    }
}

impl Replicas {
    /// One report round on this shard: the groups it leads (their log starts told to Raft on
    /// a `full` round), a reassignment step for each, and with `rebalance` leadership handed
    /// back to preferred replicas.
    pub(super) fn report_round(
        &self,
        shard: &Shard,
        meta: &ClusterMeta,
        full: bool,
        rebalance: bool,
    ) -> Vec<Leadership> {
        if full {
            self.note_log_starts(shard);
        }
        let groups: Vec<GroupId> = self.hosted.borrow().keys().copied().collect();
        let led = groups
            .into_iter()
            .filter_map(|group| self.leadership(shard, meta, group))
            .collect();
        self.drive_reassignments(meta);
        if rebalance {
            self.prefer_leaders(meta);
        }
        led
    }

    /// Hands each partition this shard leads to its preferred replica, if that one is in sync
    /// and not fenced (and the partition is not being moved).
    fn prefer_leaders(&self, meta: &ClusterMeta) {
        let me = self.node_id();
        let hosted: Vec<(GroupId, String, i32)> = self
            .hosted
            .borrow()
            .iter()
            .map(|(&g, (t, p))| (g, t.clone(), *p))
            .collect();
        for (group, topic, p) in hosted {
            let Some(t) = meta.topics.get(&topic) else {
                continue;
            };
            let preferred = t.replicas.get(p as usize).and_then(|r| r.first().copied());
            let Some(preferred) = preferred.filter(|&n| n != me) else {
                continue;
            };
            if t.reassigning.contains_key(&p) || meta.fenced.contains(&preferred) {
                continue;
            }
            let in_sync = self
                .in_sync(group)
                .is_some_and(|isr| isr.contains(&preferred));
            if in_sync {
                self.transfer(group, preferred as NodeId);
            }
        }
    }

    /// A partition group as this node tells it, if it leads it. Fenced replicas are not in
    /// sync (as KRaft's controller takes them out of every ISR).
    pub(super) fn leadership(
        &self,
        shard: &Shard,
        meta: &ClusterMeta,
        group: GroupId,
    ) -> Option<Leadership> {
        let role = self.replicator.role(group)?;
        if role.role != Role::Leader {
            return None;
        }
        let mut isr = self.replicator.in_sync(group, self.config.replica_lag)?;
        isr.retain(|&n| !meta.fenced.contains(&(n as i32)));
        let config = self.replicator.committed_membership(group)?;
        Some(Leadership {
            group,
            term: role.term,
            isr,
            voters: config.voters.into_iter().collect(),
            learners: config.learners.into_iter().collect(),
            log_start: self.hosted_log(shard, group)?.log_start_offset(),
        })
    }

    /// Leader: one configuration change toward each reassigning partition's target.
    fn drive_reassignments(&self, meta: &ClusterMeta) {
        let me = self.config.node_id;
        for t in meta.topics.values() {
            for (&p, target) in &t.reassigning {
                let Some(group) = t.group(p) else {
                    continue;
                };
                if !self.leads(group) {
                    continue;
                }
                let Some(config) = self.replicator.membership(group) else {
                    continue;
                };
                let target: Vec<NodeId> = target.iter().map(|&n| n as NodeId).collect();
                let change = if let Some(&x) = target.iter().find(|&&x| !config.is_member(x)) {
                    MembershipChange::AddLearner(x)
                } else if let Some(&x) = target.iter().find(|x| config.learners.contains(x)) {
                    MembershipChange::Promote(x)
                } else if let Some(x) = config.members().find(|&x| x != me && !target.contains(&x))
                {
                    MembershipChange::Remove(x)
                } else {
                    if !target.contains(&me) {
                        // Only this node is left to go: a new replica takes over first.
                        self.transfer(group, target[0]);
                    }
                    continue;
                };
                match self.replicator.propose_membership(group, change) {
                    Ok(_) => tracing::info!(group, ?change, "reassignment step"),
                    Err(e) => tracing::debug!(group, ?change, error = ?e, "reassignment waits"),
                }
            }
        }
    }
}

/// A leader told a group's state: Metadata on this node answers with it.
fn take_leadership(shard: &Shard, leader: NodeId, l: &Leadership) {
    shard.meta.leader_told(
        l.group,
        leader as i32,
        l.term as i32,
        ids(&l.isr),
        (ids(&l.voters), ids(&l.learners)),
    );
}
