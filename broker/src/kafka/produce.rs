//! Produce: split per owner shard, append, wait per acks, answer in request order.

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use tern_storage::producers::ProducerError;
use tern_storage::{Durability, LogError};
use uuid::Uuid;

use super::OwnerCall;
use super::{now_ms, str_bytes};
use crate::controller;
use crate::replication::ReplicateError;
use crate::shard::Shard;

/// What a partition's owner shard reports back.
pub struct Outcome {
    error: i16,
    message: Option<String>,
    base_offset: i64,
    log_append_time: i64,
    log_start: i64,
    /// The records that made the batch invalid, by index in it (KIP-467).
    record_errors: Vec<i32>,
}

impl Outcome {
    fn error(code: i16, message: impl Into<String>) -> Outcome {
        Outcome {
            error: code,
            message: Some(message.into()),
            base_offset: -1,
            log_append_time: -1,
            log_start: -1,
            record_errors: Vec::new(),
        }
    }
}

/// The Kafka error for a failed append or write.
pub fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::Batch(b) => b.error_code(),
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::Io(_) | LogError::WriteFailed => ResponseError::KafkaStorageError.code(),
        // The replica stopped leading after a failed write: clients look for the new leader.
        LogError::Fenced => ResponseError::NotLeaderOrFollower.code(),
        // Only replication appends at given offsets; a client never reaches it.
        LogError::NotAtEnd { .. } => ResponseError::UnknownServerError.code(),
        LogError::BatchCount(_) | LogError::KeylessRecords(_) => {
            ResponseError::InvalidRecord.code()
        }
        LogError::Producer(ProducerError::InvalidEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch.code()
        }
        LogError::Producer(ProducerError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber.code()
        }
        LogError::Producer(ProducerError::InvalidTxnState { .. }) => {
            ResponseError::InvalidTxnState.code()
        }
    }
}

/// Appends on the owner shard and waits as `acks` asks: replicated through the partition's
/// Raft group in cluster mode.
pub async fn produce_local(shard: Rc<Shard>, routed: Routed, acks: i16) -> Outcome {
    let Routed {
        topic,
        topic_id,
        partition,
        records,
    } = routed;
    let Some((log, group)) = shard.routed_partition(&topic, topic_id, partition) else {
        return Outcome::error(
            ResponseError::NotLeaderOrFollower.code(),
            format!("{topic}-{partition} is not on this shard"),
        );
    };
    if let Some(group) = group {
        return produce_replicated(&shard, &topic, log, group, records, acks).await;
    }
    let appended = match log.append(records, now_ms()) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%topic, partition, error = %e, "produce refused");
            let mut outcome = Outcome::error(log_error_code(&e), e.to_string());
            if let LogError::KeylessRecords(indexes) = e {
                outcome.record_errors = indexes;
            }
            return outcome;
        }
    };
    let waited = match acks {
        0 => {
            // Nobody waits for the answer; still write the batch out promptly.
            let log = log.clone();
            glommio::spawn_local(async move {
                let _ = log.wait(&appended, Durability::Written).await;
            })
            .detach();
            Ok(())
        }
        1 => log.wait(&appended, Durability::Written).await,
        _ => log.wait(&appended, Durability::Synced).await,
    };
    if let Err(e) = waited {
        return Outcome::error(log_error_code(&e), e.to_string());
    }
    Outcome {
        error: 0,
        message: None,
        base_offset: appended.base_offset,
        log_append_time: appended.log_append_time,
        log_start: log.log_start_offset(),
        record_errors: Vec::new(),
    }
}

/// How long acks=all waits for a replicated batch to commit before REQUEST_TIMED_OUT.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The leader's side of a produce to a replicated partition: propose through Raft, then wait
/// for the local write (acks=1) or the commit (acks=all).
async fn produce_replicated(
    shard: &Rc<Shard>,
    topic: &str,
    log: Rc<tern_storage::PartitionLog>,
    group: u64,
    records: Bytes,
    acks: i16,
) -> Outcome {
    let not_leader = |why: &str| Outcome::error(ResponseError::NotLeaderOrFollower.code(), why);
    let Some(cluster) = shard.replicas() else {
        return not_leader("this shard holds no replicas");
    };
    // acks=all needs min.insync.replicas in sync, before the append and after it (Kafka's
    // NOT_ENOUGH_REPLICAS and NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    // Looked up only for acks=all.
    let min_isr = match acks {
        -1 => {
            let meta = shard.meta.snapshot();
            meta.topics
                .get(topic)
                .and_then(|t| {
                    let node = shard.config.node_id;
                    meta.topic_config(&t.configs, node, "min.insync.replicas")?
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(1)
        }
        _ => 1,
    };
    let enough = |cluster: &crate::cluster::Replicas| {
        cluster
            .in_sync(group)
            .is_some_and(|isr| isr.len() >= min_isr)
    };
    if acks == -1 && cluster.leads(group) && !enough(&cluster) {
        return Outcome::error(
            ResponseError::NotEnoughReplicas.code(),
            format!("fewer than min.insync.replicas={min_isr} replicas are in sync"),
        );
    }
    let proposed = cluster.replicator.propose(group, records, now_ms());
    if let Err(ReplicateError::Log(LogError::Producer(e @ ProducerError::OutOfOrder { .. }))) =
        &proposed
    {
        // A sequence gap at a leader is earlier batches of the producer refused by a replica
        // that was not leading yet, or still in flight: they come again, in order. Answered
        // OUT_OF_ORDER_SEQUENCE_NUMBER, librdkafka would bump its epoch and renumber every
        // unanswered batch of every partition, and one that was written (its answer lost in a
        // failover) would then be written twice. A retriable answer makes it send them again
        // in order; a gap that never fills (the client gave up on a batch) makes the client
        // bump its epoch itself.
        tracing::debug!(topic, group, error = %e, "a sequence gap: the producer retries");
        return not_leader(&format!(
            "{e}: earlier batches of the producer are missing; retry them in order"
        ));
    }
    let proposed = match proposed {
        Ok(p) => p,
        Err(ReplicateError::Log(e)) => {
            let mut outcome = Outcome::error(log_error_code(&e), e.to_string());
            if let LogError::KeylessRecords(indexes) = e {
                outcome.record_errors = indexes;
            }
            return outcome;
        }
        Err(e) => return not_leader(&e.to_string()),
    };
    let waited = match (acks, &proposed.appended) {
        (0, Some(appended)) => {
            let (log, appended) = (log.clone(), *appended);
            glommio::spawn_local(async move {
                let _ = log.wait(&appended, Durability::Written).await;
            })
            .detach();
            Ok(())
        }
        (0, None) => Ok(()),
        (1, Some(appended)) => log
            .wait(appended, Durability::Written)
            .await
            .map_err(|e| Outcome::error(log_error_code(&e), e.to_string())),
        _ => {
            // A retried batch found in the log waits for its entry, in the term it has.
            let committed =
                cluster
                    .replicator
                    .committed(group, proposed.last_offset, proposed.term);
            match crate::rpc::with_timeout(COMMIT_TIMEOUT, committed).await {
                Some(Ok(())) if !enough(&cluster) => Err(Outcome::error(
                    ResponseError::NotEnoughReplicasAfterAppend.code(),
                    format!("the batch committed, but fewer than min.insync.replicas={min_isr} replicas are in sync"),
                )),
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(not_leader(&e.to_string())),
                None => Err(Outcome::error(
                    ResponseError::RequestTimedOut.code(),
                    "the batch was not committed in time",
                )),
            }
        }
    };
    if let Err(outcome) = waited {
        return outcome;
    }
    Outcome {
        error: 0,
        message: None,
        base_offset: proposed.base_offset,
        log_append_time: proposed.log_append_time,
        log_start: log.log_start_offset(),
        record_errors: Vec::new(),
    }
}

/// A partition's batch, checked, for its owner shard.
pub struct Routed {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    records: Bytes,
}

/// The checks of one partition of a produce request made on the connection's shard: its
/// owner shard and what to append there, or the answer.
async fn route_partition(
    shard: &Rc<Shard>,
    topic: String,
    partition: i32,
    records: Option<Bytes>,
    transactional_id: Option<&str>,
) -> Result<(usize, Routed), Outcome> {
    produce_checks(shard, &topic, partition, records.as_ref(), transactional_id)
        .await
        .map_err(|(code, message)| Outcome::error(code, message))?;
    let Some(route) = shard.meta.snapshot().route(&topic, partition) else {
        return Err(Outcome::error(
            ResponseError::UnknownTopicOrPartition.code(),
            format!("{topic} has no partition {partition}"),
        ));
    };
    let Some(records) = records else {
        return Err(Outcome::error(
            ResponseError::InvalidRecord.code(),
            "no records",
        ));
    };
    let routed = Routed {
        topic,
        topic_id: route.topic_id,
        partition,
        records,
    };
    Ok((route.owner, routed))
}

/// The topic exists (or is created), and a transactional batch belongs to its producer's open
/// transaction, which this partition has joined.
async fn produce_checks(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    records: Option<&Bytes>,
    transactional_id: Option<&str>,
) -> Result<(), (i16, String)> {
    if let Err(e) = controller::ensure_topic(shard, topic, true).await {
        return Err((e.code, e.message));
    }
    // A transactional batch must belong to its producer's open transaction, which this
    // partition has joined (a single node's coordinator is local).
    let header = records.and_then(|r| tern_protocol::batch::BatchHeader::parse(r).ok());
    let transactional = header.filter(|h| h.is_transactional() && !h.is_control());
    let invalid_txn = ResponseError::InvalidTxnState.code();
    if let Some(h) = transactional {
        let Some(id) = transactional_id else {
            let why = "a transactional batch needs the producer's transactional id";
            return Err((invalid_txn, why.to_string()));
        };
        let verified = crate::txn::verify_produce(
            shard,
            id,
            h.producer_id,
            h.producer_epoch,
            topic.to_string(),
            partition,
        )
        .await;
        if let Err(code) = verified {
            if coordinator_unsure(code) {
                // The coordinator could not say (it is moving, loading or busy): retriable,
                // as Kafka answers (KIP-890).
                let why =
                    format!("the transaction coordinator could not verify {topic}-{partition} yet");
                return Err((ResponseError::NotEnoughReplicas.code(), why));
            }
            let why = format!("{topic}-{partition} is not in an open transaction of this producer");
            return Err((code, why));
        }
    }
    Ok(())
}

/// Whether a verification error says the coordinator could not answer, rather than that the
/// producer's transaction does not hold the partition.
fn coordinator_unsure(code: i16) -> bool {
    [
        ResponseError::NotCoordinator,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::ConcurrentTransactions,
        ResponseError::RequestTimedOut,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Returns `None` for acks=0 (no response is sent).
pub async fn handle(shard: &Rc<Shard>, req: ProduceRequest) -> Option<ProduceResponse> {
    let acks = req.acks;
    if !(-1..=1).contains(&acks) {
        return (acks != 0).then(|| error_response(&req, ResponseError::InvalidRequiredAcks));
    }
    let transactional_id = req.transactional_id.as_ref().map(|id| id.0.as_str());
    let mut checks = Vec::new();
    for topic in &req.topic_data {
        for p in &topic.partition_data {
            checks.push(route_partition(
                shard,
                topic.name.0.to_string(),
                p.index,
                p.records.clone(),
                transactional_id,
            ));
        }
    }
    let routed = futures::future::join_all(checks).await;
    let outcomes = shard
        .on_owners(routed, |parts, answers| OwnerCall::Produce {
            parts,
            acks,
            answers,
        })
        .await;
    let mut outcomes = outcomes.into_iter();
    if acks == 0 {
        return None;
    }
    // KIP-951: a partition refused with NOT_LEADER_OR_FOLLOWER names its leader as this node
    // knows it, and the response carries that node's endpoint, so clients move at once.
    let meta = shard.meta.snapshot();
    let mut leaders_named = std::collections::BTreeSet::new();
    let mut current_leader = |topic: &str, p: i32| {
        let view = super::nodes::partition(shard, meta.topics.get(topic)?, p);
        (view.leader >= 0).then(|| {
            leaders_named.insert(view.leader);
            LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(view.epoch)
        })
    };
    let not_leader = ResponseError::NotLeaderOrFollower.code();
    let responses = req
        .topic_data
        .iter()
        .map(|topic| {
            let partitions = topic
                .partition_data
                .iter()
                .map(|p| {
                    let o = outcomes.next().expect("one outcome per partition");
                    let leader = match o.error == not_leader {
                        true => current_leader(&topic.name.0, p.index),
                        false => None,
                    };
                    PartitionProduceResponse::default()
                        .with_current_leader(leader.unwrap_or_default())
                        .with_index(p.index)
                        .with_error_code(o.error)
                        .with_error_message(o.message.as_deref().map(str_bytes))
                        .with_base_offset(o.base_offset)
                        .with_log_append_time_ms(o.log_append_time)
                        .with_log_start_offset(o.log_start)
                        .with_record_errors(
                            o.record_errors
                                .iter()
                                .map(|&i| BatchIndexAndErrorMessage::default().with_batch_index(i))
                                .collect(),
                        )
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partitions)
        })
        .collect();
    let endpoints = super::nodes::named(shard, &leaders_named)
        .into_iter()
        .map(|n| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(n.id))
                .with_host(str_bytes(&n.host))
                .with_port(n.port)
                .with_rack(n.rack.as_deref().map(str_bytes))
        })
        .collect();
    Some(
        ProduceResponse::default()
            .with_responses(responses)
            .with_node_endpoints(endpoints),
    )
}

fn error_response(req: &ProduceRequest, e: ResponseError) -> ProduceResponse {
    let responses = req
        .topic_data
        .iter()
        .map(|topic| {
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(
                    topic
                        .partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(e.code())
                        })
                        .collect(),
                )
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}
