//! The transaction coordinator: each transactional id's producer id, epoch and transaction,
//! kept in `__transaction_state` (Kafka's record formats) on the shard owning the id's
//! partition (`hash(id) % n`, as Kafka maps it), and the commit/abort markers it writes to
//! the partitions a transaction touched.
//!
//! A transaction goes Empty → Ongoing (partitions added) → PrepareCommit/PrepareAbort (stored
//! before any marker is written) → markers on every partition → CompleteCommit/CompleteAbort.
//! A coordinator that stops between prepare and complete (a crash) finishes the markers when
//! it loads the state again; one left Ongoing past its timeout is aborted with the producer's
//! epoch bumped, which fences the producer that let it lapse. While a state change is being
//! stored or markers written, other requests for the id get CONCURRENT_TRANSACTIONS and retry.
//!
//! In a cluster the id's partition is replicated and its leader coordinates: the state is
//! read back when leadership arrives and forgotten when it leaves; markers go through each
//! partition's leader (Raft), on this node or another (`cluster/calls.rs`).

use bytes::Bytes;
use futures::future::{FutureExt, LocalBoxFuture};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;
use tern_protocol::batch;
use tern_protocol::markers::Marker;
use tern_protocol::rpc::NodeMessage;
use tern_protocol::txn_records;
use tern_raft::NodeId;
use tern_storage::{Durability, LogError};

use crate::controller::{self, ControllerCall};
use crate::group::OFFSETS_TOPIC;
use crate::kafka::{now_ms, OwnerCall, RoutedPartition};
use crate::replication::ReplicateError;
use crate::shard::Shard;
pub use calls::{on_coordinator, ListFilter, TxnCall, TxnOp};
pub use machine::TxnMeta;
use machine::{EndStep, InitStep, TickStep};

mod calls;
mod machine;
#[cfg(test)]
mod sim;

pub const TXN_TOPIC: &str = "__transaction_state";

/// How long a marker waits for its replicated commit.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The transactional ids a shard coordinates (those of the `__transaction_state` partitions
/// it owns; in a cluster, those it leads).
#[derive(Default)]
pub struct TxnCoordinator {
    txns: RefCell<HashMap<String, TxnMeta>>,
    /// Ids with a state change or markers in progress.
    busy: RefCell<BTreeSet<String>>,
    /// The `__transaction_state` partitions whose ids are served here.
    pub served: crate::internal::Served,
}

/// Holds an id busy until dropped.
struct Busy<'a> {
    coordinator: &'a TxnCoordinator,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.coordinator.busy.borrow_mut().remove(&self.id);
    }
}

impl TxnCoordinator {
    /// COORDINATOR_LOAD_IN_PROGRESS until this shard has read back the ids of
    /// `__transaction_state` partition `partition`; in a cluster NOT_COORDINATOR unless this
    /// node leads it.
    pub fn check_loaded(&self, partition: i32) -> Result<(), i16> {
        self.served.check(partition)
    }

    /// Drops the ids of `partition` (of `partitions`) from memory: another node leads
    /// it, or this one is about to read it back.
    pub fn forget_partition(&self, partition: i32, partitions: usize) {
        let here = |id: &String| crate::internal::partition_for(id, partitions) == partition;
        self.txns.borrow_mut().retain(|id, _| !here(id));
    }

    /// Marks `id` busy, or CONCURRENT_TRANSACTIONS if it already is.
    fn claim(&self, id: &str) -> Result<Busy<'_>, i16> {
        if !self.busy.borrow_mut().insert(id.to_string()) {
            return Err(ResponseError::ConcurrentTransactions.code());
        }
        Ok(Busy {
            coordinator: self,
            id: id.to_string(),
        })
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.txns.borrow().get(id).cloned()
    }

    /// Every transactional id here with its state.
    pub fn all(&self) -> Vec<(String, TxnMeta)> {
        let mut all: Vec<_> = self
            .txns
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The shard coordinating transactional id `id` and its `__transaction_state` partition, or
/// COORDINATOR_NOT_AVAILABLE.
pub fn coordinator_of(shard: &Shard, id: &str) -> Result<(usize, i32), i16> {
    let meta = shard.meta.snapshot();
    let topic = meta
        .topics
        .get(TXN_TOPIC)
        .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    let partition = crate::internal::partition_for(id, topic.shards.len());
    let owner = meta.owner_of(topic, partition);
    Ok((
        owner.ok_or(ResponseError::CoordinatorNotAvailable.code())?,
        partition,
    ))
}

/// Cluster mode: the node leading partition `partition` of `topic`, if one is known.
fn leader_node(shard: &Shard, topic: &str, partition: i32) -> Option<i32> {
    let meta = shard.meta.snapshot();
    let t = meta.topics.get(topic)?;
    t.group(partition)?;
    let leader = crate::kafka::nodes::partition(shard, t, partition).leader;
    (leader >= 0).then_some(leader)
}

/// The coordinator epoch markers of `partition`'s ids carry: its leader epoch in a cluster.
fn coordinator_epoch(shard: &Shard, partition: i32) -> i32 {
    let meta = shard.meta.snapshot();
    let group = meta.topics.get(TXN_TOPIC).and_then(|t| t.group(partition));
    match (shard.replicas(), group) {
        (Some(r), Some(g)) => r.leader_epoch(g).unwrap_or(0),
        _ => 0,
    }
}

/// Stores `meta` (None: a tombstone) as the state of `id`, then takes it in memory.
async fn store(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    meta: Option<TxnMeta>,
) -> Result<(), i16> {
    let stored = meta.as_ref().map(TxnMeta::stored);
    let (key, value) = txn_records::encode(id, stored.as_ref());
    let record = batch::plain_record(0, now_ms(), Some(key), value);
    let data = batch::encode_plain(&[record], Compression::None)
        .map_err(|_| ResponseError::UnknownServerError.code())?;
    crate::internal::append(shard, TXN_TOPIC, partition, data).await?;
    if shard.txns.check_loaded(partition).is_err() {
        // Leadership moved while it was stored: the new coordinator reads it back.
        return Err(ResponseError::NotCoordinator.code());
    }
    let mut txns = shard.txns.txns.borrow_mut();
    match meta {
        Some(m) => txns.insert(id.to_string(), m),
        None => txns.remove(id),
    };
    Ok(())
}

/// InitProducerId for a transactional id: a new producer id (epoch 0) the first time, else
/// the next epoch, which fences older instances; a transaction they left open is aborted
/// first. `expected`: the (producer id, epoch) a re-initialising producer had (KIP-360).
pub async fn init_producer(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
) -> Result<(i64, i16), i16> {
    let _busy = shard.txns.claim(id)?;
    let (mut expected, mut new_id) = (expected, None);
    loop {
        let current = shard.txns.get(id);
        let step = machine::init_step(
            current.as_ref(),
            expected.take(),
            new_id,
            timeout_ms,
            now_ms(),
        )?;
        match step {
            InitStep::NewProducerId => {
                let allocate = |answer| ControllerCall::AllocateProducerId { answer };
                let allocated = controller::call(shard, allocate)
                    .await
                    .map_err(|e| e.code)?;
                new_id = Some(allocated);
            }
            InitStep::Complete(prepared) => {
                // Left between prepare and markers (a crash, a failed marker write).
                tracing::info!(transactional_id = %id, status = prepared.status.name(), "finishing a prepared transaction");
                complete(shard, partition, id, prepared).await?;
            }
            InitStep::Abort(fenced) => {
                end(shard, partition, id, fenced, false).await?;
            }
            InitStep::Store(meta) => {
                let answer = (meta.producer_id, meta.producer_epoch);
                store(shard, partition, id, Some(meta)).await?;
                return Ok(answer);
            }
        }
    }
}

/// Checks a transactional produce to `topic`-`partition` against the coordinator (KIP-890's
/// verification, done locally): the producer must be the id's current one, with its
/// transaction open and the partition added. So a fenced or timed-out producer cannot open a
/// transaction on a partition that no marker would ever end (a hanging transaction).
pub async fn verify_produce(
    shard: &Rc<Shard>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    topic: String,
    partition: i32,
) -> Result<(), i16> {
    if let Some(replicas) = shard.replicas() {
        let (_, txn_partition) = coordinator_of(shard, id)?;
        let leader = leader_node(shard, TXN_TOPIC, txn_partition)
            .ok_or(ResponseError::NotCoordinator.code())?;
        if leader != shard.config.node_id {
            let transactional_id = id.to_string();
            let answer = replicas
                .call(shard.id, leader as NodeId, |call| NodeMessage::VerifyTxn {
                    call,
                    transactional_id,
                    producer_id,
                    producer_epoch: epoch,
                    topic,
                    partition,
                })
                .await?;
            return match answer {
                NodeMessage::TxnVerified { error: 0, .. } => Ok(()),
                NodeMessage::TxnVerified { error, .. } => Err(error),
                _ => Err(ResponseError::UnknownServerError.code()),
            };
        }
    }
    verify_here(shard, id, producer_id, epoch, topic, partition).await
}

/// [`verify_produce`] with the coordinator on this node.
pub async fn verify_here(
    shard: &Rc<Shard>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    topic: String,
    partition: i32,
) -> Result<(), i16> {
    on_coordinator(shard, id, |answer| TxnOp::Verify {
        producer_id,
        epoch,
        topic,
        partition,
        answer,
    })
    .await
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the partitions join the producer's transaction
/// (starting it).
pub async fn add_partitions(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), i16> {
    let _busy = shard.txns.claim(id)?;
    let current = shard.txns.get(id);
    match machine::add_partitions(current.as_ref(), producer_id, epoch, partitions, now_ms())? {
        Some(next) => store(shard, partition, id, Some(next)).await,
        None => Ok(()),
    }
}

/// EndTxn: commits or aborts the producer's transaction. A retry of the end that completed
/// succeeds; ending a transaction that is not open is INVALID_TXN_STATE.
pub async fn end_txn(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<(), i16> {
    let _busy = shard.txns.claim(id)?;
    let current = shard.txns.get(id);
    match machine::end_step(current.as_ref(), producer_id, epoch, commit)? {
        EndStep::Done => Ok(()),
        EndStep::End(meta) => end(shard, partition, id, meta, commit).await.map(|_| ()),
    }
}

/// Prepares the end of `meta`'s transaction (stored first), writes its markers and completes
/// it. Returns the completed state. The caller holds the id busy.
async fn end(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    meta: TxnMeta,
    commit: bool,
) -> Result<TxnMeta, i16> {
    let prepared = machine::prepare(meta, commit, now_ms());
    store(shard, partition, id, Some(prepared.clone())).await?;
    complete(shard, partition, id, prepared)
        .await
        .map_err(|code| {
            // Decided and stored: the coordinator's tick finishes it, and the client's retry
            // then finds it complete.
            tracing::info!(transactional_id = %id, code, "markers not all written yet");
            ResponseError::ConcurrentTransactions.code()
        })
}

/// Writes the markers of a prepared transaction and stores it complete.
async fn complete(
    shard: &Rc<Shard>,
    partition: i32,
    id: &str,
    prepared: TxnMeta,
) -> Result<TxnMeta, i16> {
    let marker = Marker {
        producer_id: prepared.producer_id,
        producer_epoch: prepared.producer_epoch,
        commit: machine::commits(&prepared),
        coordinator_epoch: coordinator_epoch(shard, partition),
    };
    write_markers(shard, marker, &prepared.partitions).await?;
    let done = machine::complete(prepared, now_ms());
    store(shard, partition, id, Some(done.clone())).await?;
    Ok(done)
}

/// Writes producer `producer_id`'s commit or abort marker to each of `partitions`: see
/// [`write_markers_to`]. A partition that no longer exists is skipped, and one where a newer
/// epoch wrote already needs no marker of this one.
async fn write_markers(
    shard: &Rc<Shard>,
    marker: Marker,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<(), i16> {
    let settled = [
        ResponseError::UnknownTopicOrPartition.code(),
        ResponseError::InvalidProducerEpoch.code(),
    ];
    let partitions: Vec<(String, i32)> = partitions.iter().cloned().collect();
    for (_, result) in write_markers_to(shard, marker, partitions).await {
        match result {
            Err(code) if !settled.contains(&code) => return Err(code),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `marker` to each of `partitions` (in a cluster, through their leaders, here or on
/// other nodes): see [`write_local_markers`]. Returns each partition's result.
pub async fn write_markers_to(
    shard: &Rc<Shard>,
    marker: Marker,
    partitions: Vec<(String, i32)>,
) -> Vec<((String, i32), Result<(), i16>)> {
    let Some(replicas) = shard.replicas() else {
        return write_local_markers(shard, marker, partitions).await;
    };
    let me = shard.config.node_id;
    let mut results = Vec::new();
    let mut local = Vec::new();
    let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, p) in partitions {
        match leader_node(shard, &topic, p) {
            Some(node) if node != me => remote.entry(node).or_default().push((topic, p)),
            // Led here, or not replicated: this node's answer says which.
            _ if shard.meta.snapshot().topics.contains_key(&topic) => local.push((topic, p)),
            _ => results.push((
                (topic, p),
                Err(ResponseError::UnknownTopicOrPartition.code()),
            )),
        }
    }
    let mut writes: Vec<LocalBoxFuture<'_, Vec<_>>> = Vec::new();
    if !local.is_empty() {
        writes.push(write_local_markers(shard, marker, local).boxed_local());
    }
    for (node, parts) in remote {
        let replicas = replicas.clone();
        writes.push(
            async move {
                let asked = parts.clone();
                let answer = replicas
                    .call(shard.id, node as NodeId, |call| NodeMessage::WriteMarkers {
                        call,
                        producer_id: marker.producer_id,
                        producer_epoch: marker.producer_epoch,
                        commit: marker.commit,
                        coordinator_epoch: marker.coordinator_epoch,
                        partitions: parts,
                    })
                    .await;
                let mut answered: HashMap<(String, i32), i16> = match answer {
                    Ok(NodeMessage::MarkersWritten { results, .. }) => results
                        .into_iter()
                        .map(|(t, p, code)| ((t, p), code))
                        .collect(),
                    Ok(_) => HashMap::new(),
                    Err(code) => asked.iter().map(|tp| (tp.clone(), code)).collect(),
                };
                let unanswered = ResponseError::UnknownServerError.code();
                asked
                    .into_iter()
                    .map(|tp| {
                        let code = answered.remove(&tp).unwrap_or(unanswered);
                        (tp, if code == 0 { Ok(()) } else { Err(code) })
                    })
                    .collect()
            }
            .boxed_local(),
        );
    }
    results.extend(
        futures::future::join_all(writes)
            .await
            .into_iter()
            .flatten(),
    );
    results
}

/// Writes `marker` to each of `partitions` held here, on their owner shards: committed by a
/// majority of a replicated partition's replicas (at its leader: NOT_LEADER_OR_FOLLOWER
/// elsewhere), synced on a partition of one replica. Offsets the transaction committed to a
/// group take effect (or are dropped) with the marker on their `__consumer_offsets`
/// partition. A marker of an older epoch than the partition knows (a zombie's) is refused
/// there: INVALID_PRODUCER_EPOCH. Returns each partition's result.
pub async fn write_local_markers(
    shard: &Rc<Shard>,
    marker: Marker,
    partitions: Vec<(String, i32)>,
) -> Vec<((String, i32), Result<(), i16>)> {
    let meta = shard.meta.snapshot();
    let routed = partitions
        .iter()
        .map(|(topic, p)| match meta.route(topic, *p) {
            Some(route) => {
                let part = RoutedPartition {
                    topic: topic.clone(),
                    topic_id: route.topic_id,
                    partition: *p,
                };
                Ok((route.owner, part))
            }
            None => Err(Err(ResponseError::UnknownTopicOrPartition.code())),
        })
        .collect();
    let results = shard
        .on_owners(routed, |parts, answers| OwnerCall::WriteMarkers {
            marker,
            parts,
            answers,
        })
        .await;
    partitions.into_iter().zip(results).collect()
}

/// On the owner shard: writes `marker` to `part`; offsets the transaction committed to a
/// group (on a `__consumer_offsets` partition) take effect or are dropped with it.
pub async fn write_owned_marker(
    shard: Rc<Shard>,
    marker: Marker,
    part: RoutedPartition,
) -> Result<(), i16> {
    let written = write_marker(&shard, &marker, &part).await;
    if written.is_ok() && part.topic == OFFSETS_TOPIC {
        shard
            .groups
            .complete_txn(marker.producer_id, part.partition, marker.commit);
    }
    written
}

/// Writes `marker` to `part`, owned by this shard.
async fn write_marker(
    shard: &Rc<Shard>,
    marker: &Marker,
    part: &RoutedPartition,
) -> Result<(), i16> {
    let (topic, p) = (part.topic.as_str(), part.partition);
    let not_leader = ResponseError::NotLeaderOrFollower.code();
    // Routed before the topic was deleted (or created again): no longer here.
    let Some((log, group)) = shard.routed_partition(topic, part.topic_id, p) else {
        return Err(not_leader);
    };
    let refused = |e: LogError| match e {
        LogError::Producer(_) => ResponseError::InvalidProducerEpoch.code(),
        e => {
            tracing::error!(topic, partition = p, error = %e, "write a transaction marker");
            crate::kafka::log_error_code(&e)
        }
    };
    let Some(group) = group else {
        let appended = log.append_marker(marker, now_ms()).map_err(refused)?;
        return log
            .wait(&appended, Durability::Synced)
            .await
            .map_err(refused);
    };
    let replicas = shard.replicas().ok_or(not_leader)?;
    let proposed = match replicas.replicator.propose_marker(group, marker, now_ms()) {
        Ok(p) => p,
        Err(ReplicateError::Log(e)) => return Err(refused(e)),
        Err(_) => return Err(not_leader),
    };
    let committed = replicas
        .replicator
        .committed(group, proposed.last_offset, proposed.term);
    match crate::rpc::with_timeout(MARKER_TIMEOUT, committed).await {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(not_leader),
        None => Err(ResponseError::RequestTimedOut.code()),
    }
}

/// Reads this shard's `__transaction_state` partitions back (in a cluster, each as this node
/// comes to lead it: [`load_partition`]).
pub async fn load(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if shard.config.cluster.is_some() {
        return Ok(()); // each partition as leadership comes (cluster/replicas.rs)
    }
    let mut count = 0;
    for p in crate::internal::owned_partitions(shard, TXN_TOPIC) {
        count += load_partition(shard, p).await?;
    }
    shard.txns.served.set_loaded();
    if count > 0 {
        tracing::info!(
            shard = shard.id,
            records = count,
            "loaded transaction state"
        );
    }
    Ok(())
}

/// Reads `__transaction_state` partition `p` back, up to its high watermark: the newest
/// record of each id wins, a tombstone removes it. Returns the records read.
pub async fn load_partition(shard: &Rc<Shard>, p: i32) -> anyhow::Result<usize> {
    let mut count = 0;
    let Some(log) = shard.partition(TXN_TOPIC, p) else {
        return Ok(0);
    };
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let mut data: Bytes = log.read(offset, 1 << 20, true).await?;
        if data.is_empty() {
            break;
        }
        while !data.is_empty() {
            let set = RecordBatchDecoder::decode(&mut data)
                .map_err(|e| anyhow::anyhow!("decode {TXN_TOPIC}-{p}: {e:#}"))?;
            for r in set.records {
                offset = r.offset + 1;
                if r.control {
                    continue;
                }
                let Some((id, stored)) = r.key.and_then(|k| txn_records::decode(k, r.value)) else {
                    continue;
                };
                count += 1;
                let mut txns = shard.txns.txns.borrow_mut();
                match stored {
                    Some(s) => txns.insert(id, TxnMeta::from_stored(s)),
                    None => txns.remove(&id),
                };
            }
        }
    }
    Ok(count)
}

/// Every second: finishes transactions left between prepare and complete (a restart, a failed
/// marker write), aborts those open past their timeout, bumping the epoch so the producer
/// that let it lapse is fenced, and forgets ids unused past `transactional.id.expiration.ms`.
pub async fn tick_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let now = now_ms();
        let expiration_ms = shard.config.transactional_id_expiration.as_millis() as i64;
        let due: Vec<(String, TxnMeta)> = shard
            .txns
            .txns
            .borrow()
            .iter()
            .filter(|(id, _)| {
                coordinator_of(&shard, id).is_ok_and(|(_, p)| shard.txns.check_loaded(p).is_ok())
            })
            .filter(|(_, m)| machine::tick_step(m, now, expiration_ms).is_some())
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        for (id, m) in due {
            let Ok((_, partition)) = coordinator_of(&shard, &id) else {
                continue;
            };
            let Ok(_busy) = shard.txns.claim(&id) else {
                continue;
            };
            // Whatever changed while others held it.
            let Some(current) = shard.txns.get(&id).filter(|c| *c == m) else {
                continue;
            };
            let result = match machine::tick_step(&current, now, expiration_ms) {
                None => Ok(()),
                Some(TickStep::Complete) => {
                    tracing::info!(transactional_id = %id, status = current.status.name(), "finishing a prepared transaction");
                    complete(&shard, partition, &id, current).await.map(|_| ())
                }
                Some(TickStep::Forget) => {
                    tracing::info!(transactional_id = %id, "forgetting an expired transactional id");
                    store(&shard, partition, &id, None).await
                }
                Some(TickStep::Abort(fenced)) => {
                    tracing::info!(transactional_id = %id, "aborting a transaction past its timeout");
                    end(&shard, partition, &id, fenced, false).await.map(|_| ())
                }
            };
            if let Err(code) = result {
                tracing::warn!(transactional_id = %id, code, "completing a transaction failed; retrying");
            }
        }
    }
}
