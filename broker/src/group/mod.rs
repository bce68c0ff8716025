//! Group coordination: which shard coordinates a group, the per-shard coordinator state, and
//! persisting groups and committed offsets as records in `__consumer_offsets`.

pub mod consumer;
pub use tern_protocol::group_records as records;
pub mod state;

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use kafka_protocol::ResponseError;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::batch;

use crate::kafka::now_ms;
use crate::shard::Shard;
use records::StoredMember;
use records::{Committed, GroupRecord, StoredGroup};
use state::{Group, GroupConfig};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The `__consumer_offsets` partition holding `group`.
pub fn partition_for(group: &str, partitions: usize) -> i32 {
    crate::internal::partition_for(group, partitions)
}

/// The shard coordinating `group`, and its partition, or COORDINATOR_NOT_AVAILABLE.
pub fn coordinator_of(shard: &Shard, group: &str) -> Result<(usize, i32), i16> {
    let meta = shard.meta.snapshot();
    let topic = meta
        .topics
        .get(OFFSETS_TOPIC)
        .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    let partition = partition_for(group, topic.shards.len());
    let owner = meta.owner_of(topic, partition);
    Ok((
        owner.ok_or(ResponseError::CoordinatorNotAvailable.code())?,
        partition,
    ))
}

/// A group's committed offsets by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, i32), Committed>;

/// The groups and committed offsets a shard coordinates. Exists per shard; holds the groups
/// whose `__consumer_offsets` partition the shard owns.
pub struct Coordinator {
    pub config: GroupConfig,
    groups: RefCell<HashMap<String, Group>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    /// KIP-848 groups (`group.protocol=consumer`), stored as Kafka's records so members and
    /// assignments survive a restart or a coordinator moving.
    consumer_groups: RefCell<HashMap<String, consumer::ConsumerGroup>>,
    /// The `__consumer_offsets` partitions whose groups are served here.
    pub served: crate::internal::Served,
    /// Offsets committed inside transactions (TxnOffsetCommit), by (producer id, partition),
    /// waiting for the transaction's marker.
    pub pending_txn_offsets: RefCell<HashMap<(i64, i32), Vec<GroupRecord>>>,
}

impl Coordinator {
    pub fn new(config: GroupConfig) -> Coordinator {
        Coordinator {
            config,
            groups: RefCell::new(HashMap::new()),
            offsets: RefCell::new(HashMap::new()),
            consumer_groups: RefCell::new(HashMap::new()),
            served: Default::default(),
            pending_txn_offsets: RefCell::new(HashMap::new()),
        }
    }

    /// COORDINATOR_LOAD_IN_PROGRESS until this shard has read back the groups of
    /// `__consumer_offsets` partition `partition`; in cluster mode NOT_COORDINATOR unless this
    /// node leads it.
    pub fn check_loaded(&self, partition: i32) -> Result<(), i16> {
        self.served.check(partition)
    }

    /// Drops the groups of `partition` (of `partitions`) from memory: another node leads
    /// it, or this one is about to read it back.
    pub fn forget_partition(&self, partition: i32, partitions: usize) {
        let here = |g: &String| partition_for(g, partitions) == partition;
        self.groups.borrow_mut().retain(|g, _| !here(g));
        self.offsets.borrow_mut().retain(|g, _| !here(g));
        self.consumer_groups.borrow_mut().retain(|g, _| !here(g));
        self.pending_txn_offsets
            .borrow_mut()
            .retain(|&(_, p), _| p != partition);
    }

    /// The partitions whose offsets for `group` a transaction has committed and not ended.
    pub fn pending_txn_partitions(&self, group: &str) -> HashSet<(String, i32)> {
        self.pending_txn_offsets
            .borrow()
            .values()
            .flatten()
            .filter_map(|r| match r {
                GroupRecord::Offset {
                    group: g,
                    topic,
                    partition,
                    ..
                } if g == group => Some((topic.clone(), *partition)),
                _ => None,
            })
            .collect()
    }

    /// A transaction marker of producer `producer_id` reached `__consumer_offsets` partition
    /// `partition`: the offsets it committed there take effect, or are dropped.
    pub fn complete_txn(&self, producer_id: i64, partition: i32, commit: bool) {
        let pending = self
            .pending_txn_offsets
            .borrow_mut()
            .remove(&(producer_id, partition));
        if let (true, Some(records)) = (commit, pending) {
            let now = Instant::now();
            for r in records {
                self.apply(r, now);
            }
        }
    }

    /// Runs `f` on the group, creating it (empty) if needed. Never hold this across an await.
    pub fn with_group<T>(&self, id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .entry(id.to_string())
            .or_insert_with(|| Group::new(id));
        f(group)
    }

    /// Runs `f` on the group if it exists.
    pub fn with_existing<T>(&self, id: &str, f: impl FnOnce(&mut Group) -> T) -> Option<T> {
        self.groups.borrow_mut().get_mut(id).map(f)
    }

    /// Runs `f` on a consumer-protocol group, creating it if needed.
    pub fn with_consumer_group<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut consumer::ConsumerGroup) -> T,
    ) -> T {
        let mut groups = self.consumer_groups.borrow_mut();
        f(groups.entry(id.to_string()).or_default())
    }

    /// Runs `f` on a consumer-protocol group if it exists.
    pub fn with_existing_consumer_group<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut consumer::ConsumerGroup) -> T,
    ) -> Option<T> {
        self.consumer_groups.borrow_mut().get_mut(id).map(f)
    }

    /// Whether `id` is a classic group with members (a consumer group may not take its name).
    pub fn is_active_classic(&self, id: &str) -> bool {
        self.groups
            .borrow()
            .get(id)
            .is_some_and(|g| !g.members.is_empty())
    }

    pub fn group_ids(&self) -> Vec<String> {
        let groups = self.groups.borrow();
        let offsets = self.offsets.borrow();
        let consumer_groups = self.consumer_groups.borrow();
        let mut ids: Vec<String> = groups
            .keys()
            .chain(offsets.keys())
            .chain(consumer_groups.keys())
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn committed(&self, group: &str) -> GroupOffsets {
        self.offsets
            .borrow()
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    pub fn has_offsets(&self, group: &str) -> bool {
        self.offsets
            .borrow()
            .get(group)
            .is_some_and(|o| !o.is_empty())
    }

    fn apply(&self, record: GroupRecord, now: Instant) {
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let mut offsets = self.offsets.borrow_mut();
                let entry = offsets.entry(group.clone()).or_default();
                match value {
                    Some(c) => {
                        entry.insert((topic, partition), c);
                    }
                    None => {
                        entry.remove(&(topic, partition));
                        if entry.is_empty() {
                            offsets.remove(&group);
                        }
                    }
                }
            }
            // Read back by `load_partition`, which knows the topics' ids.
            GroupRecord::Consumer { .. } => {}
            GroupRecord::Group { group, value } => {
                let mut groups = self.groups.borrow_mut();
                match value {
                    Some(g) => {
                        let restored = Group::restore(
                            &group,
                            g.generation,
                            Some(g.protocol_type).filter(|p| !p.is_empty()),
                            g.protocol,
                            g.leader,
                            g.members,
                            now,
                        );
                        groups.insert(group, restored);
                    }
                    None => {
                        groups.remove(&group);
                    }
                }
            }
        }
    }

    /// Forgets a group and its offsets (DeleteGroups).
    pub fn forget(&self, group: &str) {
        self.groups.borrow_mut().remove(group);
        self.consumer_groups.borrow_mut().remove(group);
        self.offsets.borrow_mut().remove(group);
    }
}

/// The metadata record of a group as it stands.
pub fn group_record(group: &Group) -> GroupRecord {
    let protocol = group.protocol.clone().unwrap_or_default();
    GroupRecord::Group {
        group: group.id.clone(),
        value: Some(StoredGroup {
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            generation: group.generation,
            protocol: group.protocol.clone(),
            leader: group.leader.clone(),
            timestamp: now_ms(),
            members: group
                .members
                .values()
                .map(|m| StoredMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout: m.rebalance_timeout,
                    session_timeout: m.session_timeout,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }),
    }
}

/// Appends records to a `__consumer_offsets` partition this shard owns, synced (committed by
/// Raft in a cluster). Offset records take effect once stored; group records only persist the
/// live group's state.
pub async fn store(
    shard: &Rc<Shard>,
    partition: i32,
    records: Vec<GroupRecord>,
) -> Result<(), i16> {
    if records.is_empty() {
        return Ok(());
    }
    let batch = encode_records(&records, None)?;
    crate::internal::append(shard, OFFSETS_TOPIC, partition, batch).await?;
    let at = Instant::now();
    for r in records {
        if matches!(r, GroupRecord::Offset { .. }) {
            shard.groups.apply(r, at);
        }
    }
    Ok(())
}

/// One batch of group records; `transactional`: (producer id, epoch) of the transaction the
/// batch belongs to (TxnOffsetCommit), which its marker commits or aborts.
fn encode_records(
    records: &[GroupRecord],
    transactional: Option<(i64, i16)>,
) -> Result<Bytes, i16> {
    let now = now_ms();
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (key, value) = r.encode();
            let mut record = batch::plain_record(i as i64, now, Some(key), value);
            if let Some((producer_id, epoch)) = transactional {
                record.transactional = true;
                record.producer_id = producer_id;
                record.producer_epoch = epoch;
            }
            record
        })
        .collect();
    batch::encode_plain(&encoded, Compression::None)
        .map_err(|_| ResponseError::UnknownServerError.code())
}

/// TxnOffsetCommit: stores offset records in the transaction of producer `producer_id`
/// (`epoch`); they take effect when its commit marker reaches the partition.
pub async fn store_transactional(
    shard: &Rc<Shard>,
    partition: i32,
    producer_id: i64,
    epoch: i16,
    records: Vec<GroupRecord>,
) -> Result<(), i16> {
    let batch = encode_records(&records, Some((producer_id, epoch)))?;
    crate::internal::append(shard, OFFSETS_TOPIC, partition, batch).await?;
    shard
        .groups
        .pending_txn_offsets
        .borrow_mut()
        .entry((producer_id, partition))
        .or_default()
        .extend(records);
    Ok(())
}

/// Reads one `__consumer_offsets` partition of this shard back into its coordinator, up to its
/// high watermark; returns the records applied.
pub async fn load_partition(shard: &Rc<Shard>, p: i32) -> anyhow::Result<usize> {
    let Some(log) = shard.partition(OFFSETS_TOPIC, p) else {
        return Ok(0);
    };
    let now = Instant::now();
    let meta = shard.meta.snapshot();
    let names: HashMap<uuid::Uuid, &String> = meta.topics.iter().map(|(n, t)| (t.id, n)).collect();
    let name_of = |id: uuid::Uuid| names.get(&id).map(|n| n.to_string());
    let session = shard.groups.config.consumer_session_timeout;
    let mut consumer_groups = HashSet::new();
    let mut count = 0;
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let data = log.read(offset, 1 << 20, true).await?;
        if data.is_empty() {
            break;
        }
        let mut buf: Bytes = data;
        while !buf.is_empty() {
            let set = RecordBatchDecoder::decode(&mut buf)
                .map_err(|e| anyhow::anyhow!("decode {OFFSETS_TOPIC}-{p}: {e:#}"))?;
            for r in set.records {
                offset = r.offset + 1;
                // Control records: a transaction's marker settles its offsets; Raft's (in a
                // cluster) have no group record key.
                if r.control {
                    if let Some(commit) = r.key.as_deref().and_then(marker_kind) {
                        shard.groups.complete_txn(r.producer_id, p, commit);
                    }
                    continue;
                }
                if r.transactional {
                    if let Some(record @ GroupRecord::Offset { .. }) =
                        r.key.and_then(|k| GroupRecord::decode(k, r.value))
                    {
                        shard
                            .groups
                            .pending_txn_offsets
                            .borrow_mut()
                            .entry((r.producer_id, p))
                            .or_default()
                            .push(record);
                    }
                    continue;
                }
                match r.key.and_then(|k| GroupRecord::decode(k, r.value)) {
                    Some(GroupRecord::Consumer { group, record }) => {
                        shard.groups.with_consumer_group(&group, |g| {
                            g.restore(record, &name_of, session, now)
                        });
                        consumer_groups.insert(group);
                        count += 1;
                    }
                    Some(record) => {
                        shard.groups.apply(record, now);
                        count += 1;
                    }
                    None => {}
                }
            }
        }
    }
    let topics = topic_partition_counts(shard);
    let mut groups = shard.groups.consumer_groups.borrow_mut();
    for id in consumer_groups {
        if let Some(g) = groups.get_mut(&id) {
            g.restored(&topics);
            if g.is_deleted() {
                groups.remove(&id);
            }
        }
    }
    Ok(count)
}

/// Commit (`true`) or abort from a control record's key (version, type), if it is a marker.
fn marker_kind(key: &[u8]) -> Option<bool> {
    match key {
        [_, _, 0, 1] => Some(true),
        [_, _, 0, 0] => Some(false),
        _ => None,
    }
}

/// Reads this shard's `__consumer_offsets` partitions back into its coordinator.
pub async fn load(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let mut count = 0usize;
    for p in crate::internal::owned_partitions(shard, OFFSETS_TOPIC) {
        count += load_partition(shard, p).await?;
    }
    shard.groups.served.set_loaded();
    if count > 0 {
        tracing::info!(shard = shard.id, records = count, "loaded consumer groups");
    }
    Ok(())
}

/// Partition count of every topic, for consumer-protocol assignors.
pub fn topic_partition_counts(shard: &Shard) -> BTreeMap<String, i32> {
    shard
        .meta
        .snapshot()
        .topics
        .iter()
        .filter(|(name, _)| !name.starts_with("__"))
        .map(|(name, t)| (name.clone(), t.shards.len() as i32))
        .collect()
}

/// Expires sessions and completes due rebalances every 100 ms, storing changed groups.
pub async fn tick_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let changed: Vec<GroupRecord> = {
            let mut groups = shard.groups.groups.borrow_mut();
            groups
                .values_mut()
                .filter_map(|g| g.tick(&shard.groups.config, now).then(|| group_record(g)))
                .collect()
        };
        let topics = topic_partition_counts(&shard);
        let meta = shard.meta.snapshot();
        let id_of = |t: &str| meta.topics.get(t).map(|t| t.id);
        let mut changed = changed;
        for (id, g) in shard.groups.consumer_groups.borrow_mut().iter_mut() {
            if g.tick(&topics, now) {
                changed.extend(
                    g.changes(&id_of)
                        .into_iter()
                        .map(|record| GroupRecord::Consumer {
                            group: id.clone(),
                            record,
                        }),
                );
            }
        }
        for record in changed {
            let (GroupRecord::Group { group, .. } | GroupRecord::Consumer { group, .. }) = &record
            else {
                continue;
            };
            if let Ok((_, partition)) = coordinator_of(&shard, group) {
                let _ = store(&shard, partition, vec![record]).await;
            }
        }
    }
}
