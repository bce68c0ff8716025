//! ConsumerGroupDescribe (KIP-848): epochs, assignor, members with their current and target
//! assignments.

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as WireAssignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::group_call::GroupCall;
use super::{authorized, str_bytes, topic_name};
use crate::group::consumer::Assignment;
use crate::group::{self};
use crate::metadata::ClusterMeta;
use crate::shard::Shard;

fn wire(meta: &ClusterMeta, a: &Assignment) -> WireAssignment {
    WireAssignment::default().with_topic_partitions(
        a.iter()
            .filter_map(|(topic, parts)| {
                meta.topics.get(topic).map(|t| {
                    TopicPartitions::default()
                        .with_topic_id(t.id)
                        .with_topic_name(topic_name(topic))
                        .with_partitions(parts.iter().copied().collect())
                })
            })
            .collect(),
    )
}

pub async fn handle(shard: &Rc<Shard>, req: ConsumerGroupDescribeRequest) -> ResponseKind {
    let operations = authorized::if_requested(req.include_authorized_operations, authorized::GROUP);
    let mut groups = Vec::new();
    for id in req.group_ids {
        let group_id = id.0.to_string();
        let described = match group::coordinator_of(shard, &group_id) {
            Err(code) => DescribedGroup::default().with_error_code(code),
            Ok((owner, partition)) => {
                let call = Call {
                    partition,
                    group_id,
                };
                shard
                    .call_group(owner, |answer| GroupCall::ConsumerDescribe(call, answer))
                    .await
            }
        };
        groups.push(
            described
                .with_group_id(id)
                .with_authorized_operations(operations),
        );
    }
    ResponseKind::ConsumerGroupDescribe(
        ConsumerGroupDescribeResponse::default().with_groups(groups),
    )
}

/// ConsumerGroupDescribe on one group's coordinator shard.
pub struct Call {
    partition: i32,
    group_id: String,
}

pub type Answer = DescribedGroup;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return DescribedGroup::default().with_error_code(code);
        }
        let meta = s.meta.snapshot();
        s.groups
            .with_existing_consumer_group(&group_id, |g| {
                DescribedGroup::default()
                    .with_group_state(str_bytes(g.state()))
                    .with_group_epoch(g.group_epoch)
                    .with_assignment_epoch(g.assignment_epoch)
                    .with_assignor_name(str_bytes(&g.assignor))
                    .with_members(
                        g.members
                            .values()
                            .map(|m| {
                                Member::default()
                                    .with_member_id(str_bytes(&m.id))
                                    .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                    .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                                    .with_member_epoch(m.epoch)
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_subscribed_topic_names(
                                        m.subscribed.iter().map(|t| topic_name(t)).collect(),
                                    )
                                    .with_subscribed_topic_regex(
                                        m.regex.as_ref().map(|r| str_bytes(&r.source)),
                                    )
                                    .with_assignment(wire(&meta, &m.owned))
                                    .with_target_assignment(wire(
                                        &meta,
                                        &g.target.get(&m.id).cloned().unwrap_or_default(),
                                    ))
                            })
                            .collect(),
                    )
            })
            .unwrap_or_else(|| {
                DescribedGroup::default()
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes("no consumer-protocol group with this id")))
            })
    }
}
