//! OffsetDelete: drops committed offsets of partitions the group no longer consumes.

use bytes::Buf;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, ResponseKind};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::group_call::GroupCall;
use crate::group::records::GroupRecord;
use crate::group::{self};
use crate::shard::Shard;

/// Topics named in a consumer-protocol subscription (a version, then the message).
fn subscribed_topics(mut metadata: bytes::Bytes) -> Vec<String> {
    if metadata.remaining() < 2 {
        return Vec::new();
    }
    let version = metadata.get_i16();
    ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3))
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

pub async fn handle(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let wanted: Vec<(String, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let request = wanted.clone();
    let outcome: Result<Vec<Vec<i16>>, i16> = match group::coordinator_of(shard, &group_id) {
        Err(code) => Err(code),
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                request,
            };
            shard
                .call_group(owner, |answer| GroupCall::OffsetDelete(call, answer))
                .await
        }
    };
    let resp = match outcome {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(errors) => OffsetDeleteResponse::default().with_topics(
            req.topics
                .iter()
                .zip(errors)
                .map(|(t, errs)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .zip(errs)
                                .map(|(p, e)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(e)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    ResponseKind::OffsetDelete(resp)
}

/// OffsetDelete on the group's coordinator shard: per topic, per partition, an error.
pub struct Call {
    partition: i32,
    group_id: String,
    request: Vec<(String, Vec<i32>)>,
}

pub type Answer = Result<Vec<Vec<i16>>, i16>;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            request,
        } = self;
        s.groups.check_loaded(partition)?;
        let committed = s.groups.committed(&group_id);
        let group = s.groups.with_existing(&group_id, |g| {
            let protocol = g.protocol.clone().unwrap_or_default();
            let topics: Vec<String> = g
                .members
                .values()
                .flat_map(|m| subscribed_topics(m.metadata(&protocol)))
                .collect();
            (g.members.is_empty(), g.protocol_type.clone(), topics)
        });
        if group.is_none() && committed.is_empty() {
            return Err(ResponseError::GroupIdNotFound.code());
        }
        if let Some((false, Some(t), _)) = &group {
            if t != "consumer" {
                return Err(ResponseError::NonEmptyGroup.code());
            }
        }
        let subscribed = group.map(|(_, _, topics)| topics).unwrap_or_default();
        let mut tombstones = Vec::new();
        let errors = request
            .iter()
            .map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(|&p| {
                        if subscribed.contains(topic) {
                            return ResponseError::GroupSubscribedToTopic.code();
                        }
                        if committed.contains_key(&(topic.clone(), p)) {
                            tombstones.push(GroupRecord::Offset {
                                group: group_id.clone(),
                                topic: topic.clone(),
                                partition: p,
                                value: None,
                            });
                        }
                        0
                    })
                    .collect()
            })
            .collect();
        group::store(&s, partition, tombstones).await?;
        Ok(errors)
    }
}
