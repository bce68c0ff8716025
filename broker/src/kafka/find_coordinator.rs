//! FindCoordinator: the node coordinating a group (the leader of its `__consumer_offsets`
//! partition) or a transactional id (the leader of its `__transaction_state` partition); on a
//! single node, this node.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::str_bytes;
use crate::shard::Shard;
use crate::{group, txn};

const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

pub fn handle(shard: &Rc<Shard>, req: FindCoordinatorRequest, version: i16) -> ResponseKind {
    let keys = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let cfg = &shard.config;
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            let c = Coordinator::default()
                .with_key(key.clone())
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            let error = if req.key_type == KEY_TRANSACTION {
                if txn::coordinator_of(shard, &key).is_err() {
                    Some((
                        ResponseError::CoordinatorNotAvailable,
                        "the transaction state topic does not exist",
                    ))
                } else {
                    None
                }
            } else if req.key_type != KEY_GROUP {
                Some((
                    ResponseError::InvalidRequest,
                    "unknown coordinator key type",
                ))
            } else if group::coordinator_of(shard, &key).is_err() {
                Some((
                    ResponseError::CoordinatorNotAvailable,
                    "the offsets topic does not exist",
                ))
            } else {
                None
            };
            // In a cluster, the coordinator is the leader of the key's partition.
            let node = match (error, &cfg.cluster) {
                (None, Some(_)) if req.key_type == KEY_TRANSACTION => {
                    let partition = txn::coordinator_of(shard, &key).map_or(-1, |(_, p)| p);
                    coordinator_node(shard, txn::TXN_TOPIC, partition)
                }
                (None, Some(_)) => {
                    let partition = group::coordinator_of(shard, &key).map_or(-1, |(_, p)| p);
                    coordinator_node(shard, group::OFFSETS_TOPIC, partition)
                }
                (None, None) => Some(super::nodes::NodeView {
                    id: cfg.node_id,
                    host: cfg.advertised_host.clone(),
                    port: cfg.advertised_port,
                    rack: None,
                    fenced: false,
                }),
                (Some(_), _) => None,
            };
            match (error, node) {
                (Some((e, message)), _) => c
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(message))),
                (None, None) => c
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                    .with_error_message(Some(str_bytes("the coordinator is being elected"))),
                (None, Some(n)) => c
                    .with_node_id(BrokerId(n.id))
                    .with_host(str_bytes(&n.host))
                    .with_port(n.port),
            }
        })
        .collect();
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp = resp.with_coordinators(coordinators);
    } else if let Some(c) = coordinators.into_iter().next() {
        resp = resp
            .with_error_code(c.error_code)
            .with_node_id(c.node_id)
            .with_host(c.host)
            .with_port(c.port);
        if version >= 1 {
            resp = resp.with_error_message(c.error_message);
        }
    }
    ResponseKind::FindCoordinator(resp)
}

/// Cluster mode: the node leading `partition` of internal topic `topic`.
fn coordinator_node(shard: &Shard, topic: &str, partition: i32) -> Option<super::nodes::NodeView> {
    let meta = shard.meta.snapshot();
    let topic = meta.topics.get(topic)?;
    topic.group(partition)?;
    let leader = super::nodes::partition(shard, topic, partition).leader;
    super::nodes::nodes(shard)
        .into_iter()
        .find(|n| n.id == leader)
}
