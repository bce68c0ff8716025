//! ListPartitionReassignments (KIP-455): the partitions being moved, from this node's copy of
//! the metadata.

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ResponseKind,
};
use std::rc::Rc;

use super::topic_name;
use crate::shard::Shard;

pub fn handle(shard: &Rc<Shard>, req: ListPartitionReassignmentsRequest) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let wanted = |name: &str, p: i32| match &req.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.name.0.as_str() == name && t.partition_indexes.contains(&p)),
    };
    let ids = |v: Vec<i32>| v.into_iter().map(BrokerId).collect::<Vec<_>>();
    let mut topics = Vec::new();
    for (name, t) in &meta.topics {
        let partitions: Vec<OngoingPartitionReassignment> = t
            .reassigning
            .iter()
            .filter(|(&p, _)| wanted(name, p))
            .map(|(&p, target)| {
                let current = t.replicas.get(p as usize).cloned().unwrap_or_default();
                let adding = target.iter().filter(|n| !current.contains(n)).copied();
                let removing = current.iter().filter(|n| !target.contains(n)).copied();
                OngoingPartitionReassignment::default()
                    .with_partition_index(p)
                    .with_replicas(ids(t.replicas_of(p, shard.config.node_id)))
                    .with_adding_replicas(ids(adding.collect()))
                    .with_removing_replicas(ids(removing.collect()))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(topic_name(name))
                    .with_partitions(partitions),
            );
        }
    }
    ResponseKind::ListPartitionReassignments(
        ListPartitionReassignmentsResponse::default().with_topics(topics),
    )
}
