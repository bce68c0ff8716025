//! CreatePartitions: grow topics (never shrink them). Checked here, applied by the controller.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::HashMap;
use std::rc::Rc;

use super::metadata::is_internal;
use super::str_bytes;
use crate::controller::{self, ApiError, ControllerCall};
use crate::shard::Shard;

/// What does not need the controller: internal topics keep their partition count (it decides
/// which partition holds a group), and on a single node explicit assignments put each new
/// partition on this broker only (the controller checks a cluster's against its nodes).
fn check(shard: &Shard, t: &CreatePartitionsTopic) -> Result<(), ApiError> {
    let name = t.name.0.as_str();
    if is_internal(name) {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("the partition count of internal topic {name} cannot change"),
        ));
    }
    let node = shard.config.node_id;
    let assignments = t.assignments.iter().flatten();
    if shard.config.cluster.is_none()
        && assignments
            .clone()
            .any(|a| !controller::on_this_node_only(node, &a.broker_ids))
    {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!("every new partition must be assigned to broker {node} only"),
        ));
    }
    Ok(())
}

pub async fn handle(shard: &Rc<Shard>, req: CreatePartitionsRequest) -> ResponseKind {
    let mut named: HashMap<&str, usize> = HashMap::new();
    for t in &req.topics {
        *named.entry(t.name.0.as_str()).or_default() += 1;
    }
    let mut results = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let result = if named[name.as_str()] > 1 {
            Err(ApiError::new(
                ResponseError::InvalidRequest,
                "duplicate topic in request",
            ))
        } else {
            match check(shard, t) {
                Err(e) => Err(e),
                Ok(()) => {
                    let (count, validate_only) = (t.count, req.validate_only);
                    let assignments = t.assignments.as_ref().map(|a| {
                        a.iter()
                            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                            .collect()
                    });
                    controller::call(shard, |answer| ControllerCall::CreatePartitions {
                        name,
                        count,
                        assignments,
                        validate_only,
                        answer,
                    })
                    .await
                }
            }
        };
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if let Err(e) = result {
            r = r
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(&e.message)));
        }
        results.push(r);
    }
    ResponseKind::CreatePartitions(CreatePartitionsResponse::default().with_results(results))
}
