//! The calls the node's cluster driver (on shard 0) makes on the shards hosting its
//! replicas, and the one the other shards make on shard 0 (which holds the node's Raft state
//! file).

use futures::channel::oneshot;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use tern_protocol::rpc::Leadership;
use tern_raft::{GroupId, NodeId};
use uuid::Uuid;

use crate::metadata::ClusterMeta;
use crate::replication::state::Persisted;
use crate::shard::{Shard, ShardCall};

/// A call to a shard's replicas.
pub enum ReplicaCall {
    /// Connect to these nodes (newly registered).
    AddPeers {
        peers: Vec<(NodeId, SocketAddr)>,
        answer: oneshot::Sender<()>,
    },
    /// Open this shard's replica of a partition and start its Raft group.
    Open {
        group: GroupId,
        topic: (String, Uuid),
        partition: i32,
        configs: BTreeMap<String, String>,
        replicas: Vec<i32>,
        /// The Raft state shard 0 stored for it (boxed: it is large).
        stored: Option<Box<Persisted>>,
        campaign: bool,
        answer: oneshot::Sender<Result<(), String>>,
    },
    /// Stop replicating a partition that left this node, and remove its files.
    Remove {
        group: GroupId,
        exists: bool,
        answer: oneshot::Sender<Result<(), String>>,
    },
    /// One report round: the groups the shard leads.
    Report {
        meta: Arc<ClusterMeta>,
        full: bool,
        rebalance: bool,
        answer: oneshot::Sender<Vec<Leadership>>,
    },
    /// On shard 0: store another shard's groups' Raft states in the node's state file.
    StoreStates {
        states: Vec<(GroupId, Option<Persisted>)>,
        answer: oneshot::Sender<std::io::Result<()>>,
    },
}

impl ReplicaCall {
    /// Runs the call on its shard and sends its answer.
    pub async fn run(self, shard: Rc<Shard>) {
        let no_replicas = || "no replicas on this shard".to_string();
        let replicas = shard.replicas();
        match self {
            ReplicaCall::AddPeers { peers, answer } => {
                if let Some(r) = replicas {
                    for (id, addr) in peers {
                        r.transport.add_peer(id, addr);
                    }
                }
                let _ = answer.send(());
            }
            ReplicaCall::Open {
                group,
                topic,
                partition,
                configs,
                replicas: voters,
                stored,
                campaign,
                answer,
            } => {
                let opened = match replicas {
                    None => Err(no_replicas()),
                    Some(r) => r
                        .open_replica(
                            &shard,
                            group,
                            topic,
                            partition,
                            configs,
                            voters,
                            stored.map(|s| *s),
                            campaign,
                        )
                        .await
                        .map_err(|e| format!("{e:#}")),
                };
                let _ = answer.send(opened);
            }
            ReplicaCall::Remove {
                group,
                exists,
                answer,
            } => {
                let removed = match replicas {
                    None => Err(no_replicas()),
                    Some(r) => r
                        .remove_replica(&shard, group, exists)
                        .await
                        .map_err(|e| format!("{e:#}")),
                };
                let _ = answer.send(removed);
            }
            ReplicaCall::Report {
                meta,
                full,
                rebalance,
                answer,
            } => {
                let led = replicas
                    .map_or_else(Vec::new, |r| r.report_round(&shard, &meta, full, rebalance));
                let _ = answer.send(led);
            }
            ReplicaCall::StoreStates { states, answer } => {
                let stored = match replicas {
                    Some(r) => r.replicator.store_for_shard(states).await,
                    None => Err(std::io::Error::other("shard 0 has no Raft state file")),
                };
                let _ = answer.send(stored);
            }
        }
    }
}

impl Shard {
    /// Sends a replica call (made with the sender of its answer) to shard `target`.
    pub async fn call_replicas<T>(
        self: &Rc<Self>,
        target: usize,
        call: impl FnOnce(oneshot::Sender<T>) -> ReplicaCall,
    ) -> T {
        self.call(target, |answer| ShardCall::Replica(call(answer)))
            .await
    }
}
