//! ConsumerGroupHeartbeat (KIP-848): joins, leaves and reconciles members of
//! consumer-protocol groups, with server-side assignors.

use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as WireAssignment, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use std::time::Instant;

use super::group_call::GroupCall;
use super::str_bytes;
use crate::group::consumer::{Assignment, Heartbeat, HeartbeatResult};
use crate::group::records::GroupRecord;
use crate::group::{self};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    req: ConsumerGroupHeartbeatRequest,
    client_id: String,
    client_host: String,
) -> ResponseKind {
    let group_id = req.group_id.0.to_string();
    let meta = shard.meta.snapshot();
    let name_of = |id: &uuid::Uuid| meta.topic_by_id(*id).map(|(n, _)| n.clone());
    let owned: Option<Assignment> = req.topic_partitions.as_ref().map(|tps| {
        tps.iter()
            .filter_map(|tp| {
                name_of(&tp.topic_id).map(|n| (n, tp.partitions.iter().copied().collect()))
            })
            .collect()
    });
    let hb = Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
        subscribed: req
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
        regex: req.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
        assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
        owned,
        client_id,
        client_host,
    };
    let interval = shard.config.group.consumer_heartbeat_interval.as_millis() as i32;
    let result = match group::coordinator_of(shard, &group_id) {
        Err(code) => HeartbeatResult {
            error: code,
            message: None,
            member_id: hb.member_id.clone(),
            member_epoch: -1,
            assignment: None,
        },
        Ok((owner, partition)) => {
            let call = Call {
                partition,
                group_id,
                hb,
            };
            shard
                .call_group(owner, |answer| GroupCall::ConsumerHeartbeat(call, answer))
                .await
        }
    };
    let meta = shard.meta.snapshot();
    let assignment = result.assignment.map(|a| {
        WireAssignment::default().with_topic_partitions(
            a.into_iter()
                .filter_map(|(topic, parts)| {
                    meta.topics.get(&topic).map(|t| {
                        TopicPartitions::default()
                            .with_topic_id(t.id)
                            .with_partitions(parts.into_iter().collect())
                    })
                })
                .collect(),
        )
    });
    ResponseKind::ConsumerGroupHeartbeat(
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(result.error)
            .with_error_message(result.message.as_deref().map(str_bytes))
            .with_member_id(Some(str_bytes(&result.member_id)))
            .with_member_epoch(result.member_epoch)
            .with_heartbeat_interval_ms(interval)
            .with_assignment(assignment),
    )
}

/// ConsumerGroupHeartbeat (KIP-848) on the group's coordinator shard.
pub struct Call {
    partition: i32,
    group_id: String,
    hb: Heartbeat,
}

pub type Answer = HeartbeatResult;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            hb,
        } = self;
        if let Err(code) = s.groups.check_loaded(partition) {
            return HeartbeatResult {
                error: code,
                message: None,
                member_id: hb.member_id,
                member_epoch: -1,
                assignment: None,
            };
        }
        if s.groups.is_active_classic(&group_id) {
            return HeartbeatResult {
                error: ResponseError::GroupIdNotFound.code(),
                message: Some("the group uses the classic protocol".into()),
                member_id: hb.member_id,
                member_epoch: -1,
                assignment: None,
            };
        }
        let topics = group::topic_partition_counts(&s);
        let session = s.groups.config.consumer_session_timeout;
        let meta = s.meta.snapshot();
        let id_of = |t: &str| meta.topics.get(t).map(|t| t.id);
        let (result, records) = s.groups.with_consumer_group(&group_id, |g| {
            let result = g.heartbeat(hb, &topics, session, Instant::now());
            (result, g.changes(&id_of))
        });
        // The member hears of its new state once the group's records are stored
        // (committed, in a cluster), so a coordinator that takes over knows it.
        let stored: Vec<GroupRecord> = records
            .iter()
            .map(|record| GroupRecord::Consumer {
                group: group_id.clone(),
                record: record.clone(),
            })
            .collect();
        match group::store(&s, partition, stored).await {
            Ok(()) => result,
            Err(code) => {
                s.groups
                    .with_existing_consumer_group(&group_id, |g| g.unstored(&records));
                HeartbeatResult {
                    error: code,
                    message: None,
                    member_id: result.member_id,
                    member_epoch: -1,
                    assignment: None,
                }
            }
        }
    }
}
