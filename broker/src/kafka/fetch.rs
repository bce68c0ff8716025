//! Fetch: reads on each partition's owner shard, long-polls until `min_bytes` or `max_wait_ms`,
//! and honours the response's and each partition's byte limits (KIP-74).
//!
//! KIP-392: a consumer that names its rack (`client.rack`) is sent by the leader to an in-sync
//! replica in that rack (`preferred_read_replica`), and a follower serves such consumers up to
//! its own high watermark. Consumers that name no rack read from leaders only (a follower
//! refuses them, naming the leader).

use futures::future::{select, select_all};
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::fetch::{self as framing, FetchPartition, FetchTopic, NodeEndpoint, Piece};
use tern_storage::{Chunk, Records};
use uuid::Uuid;

use super::fetch_session::{self, Plan};
use super::produce::log_error_code;
use super::OwnerCall;
use crate::metadata::{ClusterMeta, Route};
use crate::server::Reply;
use crate::shard::Shard;

/// One partition to read, as resolved from the request.
struct Wanted {
    topic: String,
    partition: i32,
    offset: i64,
    /// The leader epoch the client knows (-1: none).
    current_leader_epoch: i32,
    max_bytes: usize,
    route: Option<Route>,
    /// Set when the topic or partition is unknown.
    error: Option<i16>,
    /// The replica in the consumer's rack it should read from instead of this leader.
    preferred: Option<i32>,
}

/// What the owner shard read.
#[derive(Default)]
pub struct Read {
    error: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start: i64,
    records: Records,
    /// For `read_committed`: the aborted transactions `records` may hold, as
    /// `(producer id, first offset)`.
    aborted: Vec<(i64, i64)>,
}

/// One partition of a Fetch as its owner shard reads it.
pub struct ShardRead {
    /// Its place in the request.
    index: usize,
    topic: String,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
    /// The client's limit for this partition; 0 when no records are wanted (the consumer is
    /// sent to another replica).
    max_bytes: usize,
    current_leader_epoch: i32,
}

/// An owner shard's part of a Fetch: its partitions in request order, read one after the
/// other while `budget` (the response's limit) lasts, as Kafka fills a response in partition
/// order. The first batch read is returned whole even past the limit, so a consumer always
/// progresses; after it, a partition gets only what still fits.
pub async fn read_owned(
    shard: Rc<Shard>,
    parts: Vec<ShardRead>,
    mut budget: usize,
    any_replica: bool,
    committed: bool,
) -> Vec<(usize, Read)> {
    let mut out = Vec::with_capacity(parts.len());
    let mut first = true;
    for p in parts {
        let max_bytes = p.max_bytes.min(budget);
        let min_one = first && p.max_bytes > 0;
        let read = read_local(&shard, &p, max_bytes, min_one, any_replica, committed).await;
        if !read.records.is_empty() {
            first = false;
            budget = budget.saturating_sub(read.records.len());
        }
        out.push((p.index, read));
    }
    out
}

/// Reads one partition: up to `max_bytes` of records (at least one batch with `min_one`), below
/// the high watermark, or for a `committed` (read_committed) read below the last stable offset,
/// with the aborted transactions those records may hold.
async fn read_local(
    shard: &Shard,
    p: &ShardRead,
    max_bytes: usize,
    min_one: bool,
    any_replica: bool,
    committed: bool,
) -> Read {
    let readable = shard.readable_partition(
        &p.topic,
        p.topic_id,
        p.partition,
        p.current_leader_epoch,
        any_replica,
    );
    let log = match readable {
        Ok((log, _, _)) => log,
        Err(error) => {
            return Read {
                error,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start: -1,
                ..Read::default()
            }
        }
    };
    let high_watermark = log.high_watermark();
    let last_stable_offset = log.last_stable_offset();
    let upto = if committed {
        last_stable_offset
    } else {
        high_watermark
    };
    let mut read = Read {
        error: 0,
        high_watermark,
        last_stable_offset,
        log_start: log.log_start_offset(),
        ..Read::default()
    };
    if max_bytes == 0 && !min_one {
        return read;
    }
    match log.read_upto(p.offset, max_bytes, min_one, upto).await {
        Ok(records) => {
            if committed && !records.is_empty() {
                read.aborted = log
                    .aborted_transactions(p.offset, upto)
                    .iter()
                    .map(|t| (t.producer_id, t.first_offset))
                    .collect();
            }
            read.records = records;
        }
        Err(e) => read.error = log_error_code(&e),
    }
    read
}

/// Waits on the owner shard until one of `parts` has data past its fetch offset (that a
/// `committed` read may see), or `deadline`.
pub async fn wait_local(
    shard: Rc<Shard>,
    parts: Vec<(String, i32, i64)>,
    deadline: Instant,
    committed: bool,
) {
    let mut listeners = Vec::new();
    for (topic, partition, offset) in &parts {
        if let Some(log) = shard.partition(topic, *partition) {
            // Listen before checking, so an append in between is not missed. (The stable
            // offset moves only with the high watermark.)
            listeners.push(log.listen());
            let readable = match committed {
                true => log.last_stable_offset(),
                false => log.high_watermark(),
            };
            if readable > *offset {
                return;
            }
        }
    }
    let timeout = Box::pin(glommio::timer::sleep(
        deadline.saturating_duration_since(Instant::now()),
    ));
    if listeners.is_empty() {
        timeout.await;
        return;
    }
    let _ = select(select_all(listeners), timeout).await;
}

/// KIP-392: the in-sync replica in the consumer's rack that should serve it instead of this
/// node, if this node leads the partition and is in another rack.
fn preferred_replica(
    shard: &Shard,
    meta: &ClusterMeta,
    topic: &str,
    p: i32,
    rack: &str,
) -> Option<i32> {
    if rack.is_empty() {
        return None; // the common case: nothing looked up
    }
    let group = meta.topics.get(topic)?.group(p)?;
    let me = shard.config.node_id;
    let rack_of = |n: &i32| meta.nodes.get(n).and_then(|n| n.rack.as_deref());
    if shard.meta.leader(group)?.0 != me || rack_of(&me) == Some(rack) {
        return None;
    }
    shard
        .meta
        .isr(group)?
        .into_iter()
        .find(|n| *n != me && rack_of(n) == Some(rack) && !meta.fenced.contains(n))
}

/// The rack a consumer's Fetch names (v11+, KIP-392); empty when none, or for a replica's
/// fetch (replicas of Tern never fetch).
fn consumer_rack(req: &FetchRequest, version: i16) -> &str {
    let consumer = req.replica_id.0 < 0 && req.replica_state.replica_id.0 < 0;
    match version >= 11 && consumer {
        true => req.rack_id.as_str(),
        false => "",
    }
}

fn resolve(
    shard: &Shard,
    req: &FetchRequest,
    version: i16,
    rack: &str,
) -> Vec<(String, Uuid, Vec<Wanted>)> {
    let meta = shard.meta.snapshot();
    req.topics
        .iter()
        .map(|t| {
            let (name, id, topic_error) = if version >= 13 {
                match meta.topic_by_id(t.topic_id) {
                    Some((n, _)) => (n.clone(), t.topic_id, None),
                    None => (
                        String::new(),
                        t.topic_id,
                        Some(ResponseError::UnknownTopicId.code()),
                    ),
                }
            } else {
                let name = t.topic.0.to_string();
                let id = meta.topics.get(&name).map_or(Uuid::nil(), |m| m.id);
                (name, id, None)
            };
            let wanted = t
                .partitions
                .iter()
                .map(|p| {
                    let asked = (
                        p.fetch_offset,
                        p.current_leader_epoch,
                        p.partition_max_bytes,
                    );
                    wanted(shard, &meta, &name, p.partition, asked, topic_error, rack)
                })
                .collect();
            (name, id, wanted)
        })
        .collect()
}

/// The partitions of a fetch session, in its order (a topic's consecutive partitions
/// together).
fn resolve_session(
    shard: &Shard,
    parts: &[fetch_session::SessionPart],
    rack: &str,
) -> Vec<(String, Uuid, Vec<Wanted>)> {
    let meta = shard.meta.snapshot();
    let mut topics: Vec<(String, Uuid, Vec<Wanted>)> = Vec::new();
    for p in parts {
        // A topic deleted (or, by id, recreated) since it joined the session.
        let gone = meta
            .topics
            .get(&p.topic)
            .is_none_or(|t| !p.id.is_nil() && t.id != p.id);
        let error = gone.then_some(ResponseError::UnknownTopicOrPartition.code());
        let asked = (p.fetch_offset, p.current_leader_epoch, p.max_bytes);
        let w = wanted(shard, &meta, &p.topic, p.partition, asked, error, rack);
        match topics.last_mut() {
            Some((name, _, ws)) if *name == p.topic => ws.push(w),
            _ => topics.push((p.topic.clone(), p.id, vec![w])),
        }
    }
    topics
}

/// One partition to read: where from and within what (`asked`: fetch offset, the client's
/// leader epoch, its byte limit).
fn wanted(
    shard: &Shard,
    meta: &ClusterMeta,
    name: &str,
    partition: i32,
    asked: (i64, i32, i32),
    topic_error: Option<i16>,
    rack: &str,
) -> Wanted {
    let route = meta.route(name, partition);
    let error = topic_error.or(match route {
        None => Some(ResponseError::UnknownTopicOrPartition.code()),
        Some(_) => None,
    });
    let (offset, current_leader_epoch, max_bytes) = asked;
    Wanted {
        topic: name.to_string(),
        partition,
        offset,
        current_leader_epoch,
        max_bytes: max_bytes.max(0) as usize,
        route,
        error,
        preferred: preferred_replica(shard, meta, name, partition, rack),
    }
}

/// Reads every wanted partition, one request per owner shard (they run concurrently), each
/// shard within `max_bytes`; the reads come back in request order.
async fn read_all(
    shard: &Rc<Shard>,
    topics: &[(String, Uuid, Vec<Wanted>)],
    max_bytes: usize,
    any_replica: bool,
    committed: bool,
) -> Vec<Read> {
    let wanted: Vec<&Wanted> = topics.iter().flat_map(|(_, _, parts)| parts).collect();
    let mut reads: Vec<Read> = wanted
        .iter()
        .map(|w| Read {
            error: w
                .error
                .unwrap_or(ResponseError::UnknownTopicOrPartition.code()),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start: -1,
            ..Read::default()
        })
        .collect();
    let mut by_owner: BTreeMap<usize, Vec<ShardRead>> = BTreeMap::new();
    for (index, w) in wanted.iter().enumerate() {
        if let (Some(route), None) = (w.route, w.error) {
            by_owner.entry(route.owner).or_default().push(ShardRead {
                index,
                topic: w.topic.clone(),
                topic_id: route.topic_id,
                partition: w.partition,
                offset: w.offset,
                max_bytes: if w.preferred.is_some() {
                    0
                } else {
                    w.max_bytes
                },
                current_leader_epoch: w.current_leader_epoch,
            });
        }
    }
    let per_owner = by_owner.into_iter().map(|(owner, parts)| {
        shard.call_owner(owner, |answers| OwnerCall::Read {
            parts,
            budget: max_bytes,
            any_replica,
            committed,
            answers,
        })
    });
    for (index, read) in futures::future::join_all(per_owner)
        .await
        .into_iter()
        .flatten()
    {
        reads[index] = read;
    }
    reads
}

pub async fn handle(
    shard: &Rc<Shard>,
    req: FetchRequest,
    version: i16,
    correlation_id: i32,
) -> Reply {
    let rack = consumer_rack(&req, version);
    let plan = {
        let meta = shard.meta.snapshot();
        let name_of = |t: &kafka_protocol::messages::TopicName, id: Uuid| match version >= 13 {
            true => meta.topic_by_id(id).map(|(n, _)| n.clone()),
            false => Some(t.0.to_string()),
        };
        shard.fetch_sessions.plan(&req, version, name_of)
    };
    let topics = match &plan {
        Plan::Refused(e) => return encode(correlation_id, version, e.code(), 0, Vec::new(), &[]),
        Plan::Full(_) => resolve(shard, &req, version, rack),
        Plan::Incremental { parts, .. } => resolve_session(shard, parts, rack),
    };
    // The response is bounded by the client's max_bytes and by the shard's memory budget;
    // partitions fill it in request order (each owner shard reads within it, so at most one
    // budget per shard is read).
    let max_bytes = (req.max_bytes.max(0) as usize).min(shard.config.memory_per_shard / 8);
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    // Consumers that name their rack may read from followers (KIP-392).
    let any_replica = !rack.is_empty();
    // A consumer sent to another replica is answered at once.
    let redirected = topics
        .iter()
        .flat_map(|(_, _, parts)| parts)
        .any(|w| w.preferred.is_some());
    let committed = req.isolation_level == 1;
    let reads = loop {
        let reads = read_all(shard, &topics, max_bytes, any_replica, committed).await;
        let total: usize = reads.iter().map(|r| r.records.len()).sum();
        let any_error = reads.iter().any(|r| r.error != 0);
        if total >= min_bytes.max(1) || any_error || redirected || Instant::now() >= deadline {
            break reads;
        }
        // Long-poll: wait on each owner shard for an append to one of its partitions.
        let mut by_owner: BTreeMap<usize, Vec<(String, i32, i64)>> = BTreeMap::new();
        for w in topics.iter().flat_map(|(_, _, parts)| parts) {
            if let Some(route) = w.route {
                by_owner.entry(route.owner).or_default().push((
                    w.topic.clone(),
                    w.partition,
                    w.offset,
                ));
            }
        }
        if by_owner.is_empty() {
            break reads;
        }
        let waits = by_owner.into_iter().map(|(owner, parts)| {
            Box::pin(shard.call_owner(owner, |answer| OwnerCall::Wait {
                parts,
                deadline,
                committed,
                answer,
            }))
        });
        select_all(waits).await;
    };
    let asked = match plan {
        Plan::Full(Some(_)) => session_parts(&topics),
        _ => Vec::new(),
    };
    let (mut response, endpoints) = build_response(shard, topics, reads, max_bytes, committed);
    let session_id = match plan {
        Plan::Full(Some(id)) => {
            shard
                .fetch_sessions
                .start(id, told_in_full(asked, &response));
            id
        }
        Plan::Incremental { id, parts } => {
            let told = incremental(&mut response, &parts);
            shard.fetch_sessions.answered(id, &told);
            id
        }
        Plan::Full(None) | Plan::Refused(_) => 0,
    };
    encode(correlation_id, version, 0, session_id, response, &endpoints)
}

/// A Fetch response's frame, records sent from their own buffers.
fn encode(
    correlation_id: i32,
    version: i16,
    error_code: i16,
    session_id: i32,
    topics: Vec<FetchTopic<Records>>,
    endpoints: &[NodeEndpoint],
) -> Reply {
    let header = framing::ResponseHeader {
        correlation_id,
        version,
        error_code,
        session_id,
    };
    let mut chunks = Vec::new();
    for piece in framing::encode_response(header, topics, endpoints) {
        match piece {
            Piece::Bytes(header) => chunks.push(Chunk::Memory(header)),
            Piece::Records(records) => chunks.extend(records.into_chunks()),
        }
    }
    Reply::Chunks(chunks)
}

/// A new session's partitions, as the full fetch that starts it asked for them.
fn session_parts(topics: &[(String, Uuid, Vec<Wanted>)]) -> Vec<fetch_session::SessionPart> {
    topics
        .iter()
        .flat_map(|(name, id, parts)| {
            parts.iter().map(|w| fetch_session::SessionPart {
                topic: name.clone(),
                id: *id,
                partition: w.partition,
                fetch_offset: w.offset,
                current_leader_epoch: w.current_leader_epoch,
                max_bytes: w.max_bytes as i32,
                sent: None,
            })
        })
        .collect()
}

/// The session's partitions with what the full response (same partitions, same order) told
/// them.
fn told_in_full(
    mut parts: Vec<fetch_session::SessionPart>,
    response: &[FetchTopic<Records>],
) -> Vec<fetch_session::SessionPart> {
    let told = response.iter().flat_map(|t| &t.partitions);
    for (part, p) in parts.iter_mut().zip(told) {
        part.sent = Some((p.high_watermark, p.last_stable_offset, p.log_start_offset));
    }
    parts
}

/// Keeps in an incremental response only the partitions with something to say: records, an
/// error, a replica to read from, or a high watermark, stable offset or log start the client
/// was not told yet. Returns what each partition was told, and whether it had records.
fn incremental(
    response: &mut Vec<FetchTopic<Records>>,
    session: &[fetch_session::SessionPart],
) -> Vec<fetch_session::Told> {
    let known: std::collections::HashMap<(&str, i32), Option<fetch_session::Offsets>> = session
        .iter()
        .map(|p| ((p.topic.as_str(), p.partition), p.sent))
        .collect();
    let mut told = Vec::new();
    for topic in response.iter_mut() {
        let name = topic.name.clone();
        topic.partitions.retain(|p| {
            let now = (p.high_watermark, p.last_stable_offset, p.log_start_offset);
            let data = p.records.as_ref().is_some_and(|(len, _)| *len > 0);
            let changed = known.get(&(name.as_str(), p.index)).copied().flatten() != Some(now);
            let send = data || changed || p.error_code != 0 || p.preferred_read_replica >= 0;
            told.push(fetch_session::Told {
                topic: name.clone(),
                partition: p.index,
                sent: send.then_some(now),
                records: data,
            });
            send
        });
    }
    response.retain(|t| !t.partitions.is_empty());
    told
}

fn build_response(
    shard: &Shard,
    topics: Vec<(String, Uuid, Vec<Wanted>)>,
    reads: Vec<Read>,
    max_bytes: usize,
    committed: bool,
) -> (Vec<FetchTopic<Records>>, Vec<NodeEndpoint>) {
    // KIP-951: a partition refused as not led here (or with a stale epoch) names its leader,
    // and the response carries that node's endpoint.
    let mut named = std::collections::BTreeSet::new();
    let mut leader_of = |topic: &str, p: i32, error: i16| {
        let redirect = [
            ResponseError::NotLeaderOrFollower.code(),
            ResponseError::FencedLeaderEpoch.code(),
        ];
        if !redirect.contains(&error) {
            return None;
        }
        let view = super::nodes::partition(shard, shard.meta.snapshot().topics.get(topic)?, p);
        (view.leader >= 0).then(|| {
            named.insert(view.leader);
            (view.leader, view.epoch)
        })
    };
    let mut reads = reads.into_iter();
    let mut budget = max_bytes;
    let mut first = true;
    let response: Vec<FetchTopic<Records>> = topics
        .into_iter()
        .map(|(name, id, parts)| {
            let partitions = parts
                .iter()
                .map(|w| {
                    let mut r = reads.next().unwrap_or_default();
                    // The first non-empty partition is sent whole even past the budget, so a
                    // consumer always progresses; later ones only if they fit.
                    if !r.records.is_empty() {
                        if first || r.records.len() <= budget {
                            budget = budget.saturating_sub(r.records.len());
                            first = false;
                        } else {
                            r.records = Records::default();
                        }
                    }
                    FetchPartition {
                        index: w.partition,
                        current_leader: leader_of(&w.topic, w.partition, r.error),
                        error_code: r.error,
                        high_watermark: r.high_watermark,
                        last_stable_offset: r.last_stable_offset,
                        log_start_offset: r.log_start,
                        aborted_transactions: committed.then_some(r.aborted),
                        records: Some((r.records.len(), r.records)),
                        preferred_read_replica: w.preferred.unwrap_or(-1),
                    }
                })
                .collect();
            FetchTopic {
                name,
                id,
                partitions,
            }
        })
        .collect();
    let endpoints = super::nodes::named(shard, &named)
        .into_iter()
        .map(|n| NodeEndpoint {
            id: n.id,
            host: n.host,
            port: n.port,
            rack: n.rack,
        })
        .collect();
    (response, endpoints)
}
