//! ElectLeaders (KIP-460): preferred-leader election. The controller asks each partition's
//! leader to hand leadership to the partition's first replica (Raft leadership transfer) and
//! waits for it to take over. Raft elects only replicas holding every committed record, so an
//! unclean election is never needed: with no leader, none is eligible.

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::{str_bytes, topic_name};
use crate::controller::{self, ApiError, ControllerCall};
use crate::shard::Shard;

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// (topic, partition, outcome)
/// A partition's election: its topic, index and result.
pub type Outcome = (String, i32, Result<(), ApiError>);

pub async fn handle(shard: &Rc<Shard>, req: ElectLeadersRequest, version: i16) -> ResponseKind {
    let all = req.topic_partitions.is_none();
    let asked: Option<Vec<(String, i32)>> = req.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|&p| (t.topic.0.to_string(), p)))
            .collect()
    });
    let election = req.election_type;
    let outcome = controller::call(shard, |answer| ControllerCall::Elect {
        election,
        asked,
        answer,
    })
    .await;
    let mut resp = ElectLeadersResponse::default();
    let outcomes = match outcome {
        Ok(o) => o,
        Err(e) if version >= 1 => {
            return ResponseKind::ElectLeaders(resp.with_error_code(e.code));
        }
        Err(e) => {
            // v0 has no top-level error: every partition asked gets it.
            let asked = req.topic_partitions.iter().flatten();
            asked
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|&p| (t.topic.0.to_string(), p, Err(e.clone())))
                })
                .collect()
        }
    };
    for (topic, p, result) in outcomes {
        let not_needed = ResponseError::ElectionNotNeeded.code();
        let result = match result {
            // Asked for every partition: only those that needed an election are named.
            Err(e) if e.code == not_needed && all => continue,
            // v0 knows no ELECTION_NOT_NEEDED: the preferred leader leads, as asked.
            Err(e) if e.code == not_needed && version == 0 => Ok(()),
            other => other,
        };
        let r = PartitionResult::default().with_partition_id(p);
        let r = match result {
            Ok(()) => r,
            Err(e) => r
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(&e.message))),
        };
        match resp
            .replica_election_results
            .iter_mut()
            .find(|t| t.topic.0.as_str() == topic)
        {
            Some(t) => t.partition_result.push(r),
            None => resp.replica_election_results.push(
                ReplicaElectionResult::default()
                    .with_topic(topic_name(&topic))
                    .with_partition_result(vec![r]),
            ),
        }
    }
    ResponseKind::ElectLeaders(resp)
}

/// On the controller shard: the outcome for each partition asked (every partition when
/// `None`).
pub async fn elect(
    shard: &Rc<Shard>,
    election: i8,
    asked: Option<Vec<(String, i32)>>,
) -> Result<Vec<Outcome>, ApiError> {
    if election != PREFERRED && election != UNCLEAN {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("unknown election type {election}"),
        ));
    }
    let cluster = shard.cluster();
    if let Some(c) = &cluster {
        if !c.is_controller() {
            return Err(ApiError::new(
                ResponseError::NotController,
                "this node is not the controller",
            ));
        }
    }
    let meta = shard.meta.snapshot();
    let asked = asked.unwrap_or_else(|| {
        meta.topics
            .iter()
            .flat_map(|(n, t)| (0..t.shards.len() as i32).map(move |p| (n.clone(), p)))
            .collect()
    });
    let elections = asked.into_iter().map(|(topic, p)| {
        let (meta, cluster) = (meta.clone(), cluster.clone());
        async move {
            let Some(t) = meta
                .topics
                .get(&topic)
                .filter(|t| (0..t.shards.len() as i32).contains(&p))
            else {
                let e = ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic}-{p} does not exist"),
                );
                return (topic, p, Err(e));
            };
            let leads = || {
                ApiError::new(
                    ResponseError::ElectionNotNeeded,
                    "the partition has its leader",
                )
            };
            let (Some(cluster), Some(group)) = (cluster, t.group(p)) else {
                return (topic, p, Err(leads())); // one replica, always its leader
            };
            let result = match election {
                UNCLEAN => match shard.meta.leader(group) {
                    Some((l, _)) if l >= 0 => Err(leads()),
                    _ => Err(ApiError::new(
                        ResponseError::EligibleLeadersNotAvailable,
                        "no replica holding every committed record is available",
                    )),
                },
                _ => {
                    let preferred = t.replicas_of(p, -1)[0];
                    cluster.elect_preferred(shard, group, preferred).await
                }
            };
            (topic, p, result)
        }
    });
    Ok(futures::future::join_all(elections).await)
}
