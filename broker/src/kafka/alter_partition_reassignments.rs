//! AlterPartitionReassignments (KIP-455): move partitions to other replicas, or cancel a move.
//! Recorded by the controller; each partition's leader carries it out (`cluster/leaders.rs`).

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ResponseKind,
};
use std::rc::Rc;

use super::str_bytes;
use crate::controller::{self, ControllerCall, Reassignment};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> ResponseKind {
    let moves: Vec<Reassignment> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Reassignment {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                replicas: p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
            })
        })
        .collect();
    // v1 may forbid changing the replica count (KIP-860); v0 always allows it.
    let allow = version < 1 || req.allow_replication_factor_change;
    let outcome = controller::call(shard, |answer| ControllerCall::Reassign {
        moves,
        allow_factor_change: allow,
        answer,
    })
    .await;
    let mut resp =
        AlterPartitionReassignmentsResponse::default().with_allow_replication_factor_change(allow);
    let mut results = match outcome {
        Ok(results) => results.into_iter(),
        Err(e) => {
            return ResponseKind::AlterPartitionReassignments(
                resp.with_error_code(e.code)
                    .with_error_message(Some(str_bytes(&e.message))),
            )
        }
    };
    for t in &req.topics {
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let r = ReassignablePartitionResponse::default()
                    .with_partition_index(p.partition_index);
                match results.next() {
                    Some(Err(e)) => r
                        .with_error_code(e.code)
                        .with_error_message(Some(str_bytes(&e.message))),
                    _ => r,
                }
            })
            .collect();
        resp.responses.push(
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    ResponseKind::AlterPartitionReassignments(resp)
}
