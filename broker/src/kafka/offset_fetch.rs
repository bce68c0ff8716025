//! OffsetFetch: committed offsets of one group (v1-v7) or several (v8+). With `require_stable`
//! (KIP-447, read_committed consumers), a partition whose offset a transaction has committed
//! but not yet ended answers UNSTABLE_OFFSET_COMMIT, so the consumer waits rather than start
//! from the older offset.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use super::group_call::GroupCall;
use super::{str_bytes, topic_name};
use crate::group::records::Committed;
use crate::group::{self};
use crate::shard::Shard;

/// Per topic, per partition: the committed offset (None: nothing committed) and an error.
type Fetched = Vec<(String, Vec<(i32, Option<Committed>, i16)>)>;

/// Looks up `wanted` (None: everything committed) for `group` on its coordinator shard.
async fn fetch_group(
    shard: &Rc<Shard>,
    group_id: String,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Fetched, i16> {
    let (owner, partition) = group::coordinator_of(shard, &group_id)?;
    let call = Call {
        partition,
        group_id,
        wanted,
        require_stable,
    };
    shard
        .call_group(owner, |answer| GroupCall::OffsetFetch(call, answer))
        .await
}

fn parts(c: &Option<Committed>) -> (i64, i32, Option<String>) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, Some(c.metadata.clone())),
        None => (-1, -1, Some(String::new())),
    }
}

pub async fn handle(shard: &Rc<Shard>, req: OffsetFetchRequest, version: i16) -> ResponseKind {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in &req.groups {
            let wanted = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let result =
                fetch_group(shard, g.group_id.0.to_string(), wanted, req.require_stable).await;
            let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match result {
                Ok(fetched) => {
                    out = out.with_topics(
                        fetched
                            .into_iter()
                            .map(|(topic, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(topic_name(&topic))
                                    .with_partitions(
                                        ps.iter()
                                            .map(|(p, c, error)| {
                                                let (offset, epoch, metadata) = parts(c);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*p)
                                                    .with_error_code(*error)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(
                                                        metadata.as_deref().map(str_bytes),
                                                    )
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                }
                Err(code) => out = out.with_error_code(code),
            }
            groups.push(out);
        }
        return ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups));
    }
    let wanted = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let mut resp = OffsetFetchResponse::default();
    let require_stable = version >= 7 && req.require_stable;
    match fetch_group(shard, req.group_id.0.to_string(), wanted, require_stable).await {
        Ok(fetched) => {
            resp = resp.with_topics(
                fetched
                    .into_iter()
                    .map(|(topic, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(topic_name(&topic))
                            .with_partitions(
                                ps.iter()
                                    .map(|(p, c, error)| {
                                        let (offset, epoch, metadata) = parts(c);
                                        let mut r = OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_error_code(*error)
                                            .with_committed_offset(offset)
                                            .with_metadata(metadata.as_deref().map(str_bytes));
                                        if version >= 5 {
                                            r = r.with_committed_leader_epoch(epoch);
                                        }
                                        r
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        }
        Err(code) if version >= 2 => resp = resp.with_error_code(code),
        Err(_) => {}
    }
    ResponseKind::OffsetFetch(resp)
}

/// OffsetFetch of one group on its coordinator shard: `wanted` (None: everything committed).
pub struct Call {
    partition: i32,
    group_id: String,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
}

pub type Answer = Result<Fetched, i16>;

impl Call {
    pub async fn run(self, s: Rc<Shard>) -> Answer {
        let Call {
            partition,
            group_id,
            wanted,
            require_stable,
        } = self;
        s.groups.check_loaded(partition)?;
        let committed = s.groups.committed(&group_id);
        let unstable = match require_stable {
            true => s.groups.pending_txn_partitions(&group_id),
            false => HashSet::new(),
        };
        let answer = |topic: &str, p: i32, c: Option<Committed>| match unstable
            .contains(&(topic.to_string(), p))
        {
            true => (p, None, ResponseError::UnstableOffsetCommit.code()),
            false => (p, c, 0),
        };
        Ok(match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|p| answer(&topic, p, committed.get(&(topic.clone(), p)).cloned()))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<Committed>, i16)>> =
                    BTreeMap::new();
                for ((topic, p), c) in committed {
                    let found = answer(&topic, p, Some(c));
                    by_topic.entry(topic).or_default().push(found);
                }
                by_topic.into_iter().collect()
            }
        })
    }
}
