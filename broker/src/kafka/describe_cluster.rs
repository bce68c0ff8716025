//! DescribeCluster: the cluster id, the controller and the brokers (admin clients'
//! `describe_cluster`), with the cluster's authorized operations when asked (KIP-430).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::{authorized, str_bytes};
use crate::shard::Shard;

/// `endpointType` 1: the brokers' listeners (2 asks for the controllers', KIP-919).
const BROKER_ENDPOINT: i8 = 1;

pub fn handle(shard: &Rc<Shard>, req: DescribeClusterRequest, version: i16) -> ResponseKind {
    let resp = DescribeClusterResponse::default().with_endpoint_type(BROKER_ENDPOINT);
    if version >= 1 && req.endpoint_type != BROKER_ENDPOINT {
        // As a Kafka broker answers a request meant for a controller listener.
        return ResponseKind::DescribeCluster(
            resp.with_error_code(ResponseError::MismatchedEndpointType.code())
                .with_error_message(Some(str_bytes(
                    "this is a broker listener; controllers are not described here",
                ))),
        );
    }
    // v2 (KIP-1073) names fenced brokers only when asked, and says which they are.
    let brokers = super::nodes::nodes(shard)
        .into_iter()
        .filter(|n| version < 2 || req.include_fenced_brokers || !n.fenced)
        .map(|n| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(n.id))
                .with_host(str_bytes(&n.host))
                .with_port(n.port)
                .with_rack(n.rack.as_deref().map(str_bytes))
                .with_is_fenced(n.fenced)
        })
        .collect();
    ResponseKind::DescribeCluster(
        resp.with_cluster_id(str_bytes(&shard.meta.snapshot().cluster_id))
            .with_controller_id(BrokerId(super::nodes::controller(shard)))
            .with_brokers(brokers)
            .with_cluster_authorized_operations(authorized::if_requested(
                req.include_cluster_authorized_operations,
                authorized::CLUSTER,
            )),
    )
}
