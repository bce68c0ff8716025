//! The internal topics coordinators keep their state in (`__consumer_offsets`,
//! `__transaction_state`): appending to them (synced on a single node, committed by a majority
//! of the partition's replicas in a cluster, before the coordinator acts on it), mapping keys
//! to partitions, and which partitions a shard's coordinator serves.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;
use tern_storage::Durability;

use crate::kafka::now_ms;
use crate::shard::Shard;

/// The partition of an internal topic of `partitions` partitions that holds `key` (a group or
/// a transactional id): Java's `String.hashCode`, as Kafka maps them, so a key lands in the
/// same partition as in Kafka.
pub fn partition_for(key: &str, partitions: usize) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    (hash & 0x7fff_ffff) % partitions.max(1) as i32
}

/// The partitions of internal topic `topic` this shard owns (whose coordinator state it
/// reads back at start).
pub fn owned_partitions(shard: &Shard, topic: &str) -> Vec<i32> {
    let meta = shard.meta.snapshot();
    meta.topics
        .get(topic)
        .map(|t| {
            (0..t.shards.len() as i32)
                .filter(|&p| meta.owner_of(t, p) == Some(shard.id))
                .collect()
        })
        .unwrap_or_default()
}

/// Which partitions of an internal topic a shard's coordinator serves: on a single node every
/// one it owns, once read back at start; in a cluster those this node leads, once read back
/// after leadership came.
#[derive(Default)]
pub struct Served {
    loaded: Cell<bool>,
    clustered: Cell<bool>,
    led: RefCell<HashSet<i32>>,
    loading: RefCell<HashSet<i32>>,
}

impl Served {
    /// COORDINATOR_LOAD_IN_PROGRESS until `partition` is read back; in a cluster
    /// NOT_COORDINATOR unless this node leads it.
    pub fn check(&self, partition: i32) -> Result<(), i16> {
        if self.clustered.get() {
            if self.loading.borrow().contains(&partition) {
                return Err(ResponseError::CoordinatorLoadInProgress.code());
            }
            if !self.led.borrow().contains(&partition) {
                return Err(ResponseError::NotCoordinator.code());
            }
            return Ok(());
        }
        if self.loaded.get() {
            Ok(())
        } else {
            Err(ResponseError::CoordinatorLoadInProgress.code())
        }
    }

    /// Single node: every owned partition was read back.
    pub fn set_loaded(&self) {
        self.loaded.set(true);
    }

    /// Cluster mode: serving follows leadership from now on.
    pub fn set_clustered(&self) {
        self.clustered.set(true);
    }

    /// Cluster mode: this node leads `partition` now; it is read back before it is served.
    pub fn begin_leading(&self, partition: i32) {
        self.clustered.set(true);
        self.loading.borrow_mut().insert(partition);
    }

    /// Cluster mode: `partition` was read back; serve it.
    pub fn finish_loading(&self, partition: i32) {
        if self.loading.borrow_mut().remove(&partition) {
            self.led.borrow_mut().insert(partition);
        }
    }

    /// Cluster mode: another node leads `partition` now.
    pub fn stop_leading(&self, partition: i32) {
        self.clustered.set(true);
        self.loading.borrow_mut().remove(&partition);
        self.led.borrow_mut().remove(&partition);
    }
}

/// How long an append waits for a replicated commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Appends `batch` to partition `partition` of internal topic `topic`, owned by this shard,
/// and waits until it is durable. Errors are Kafka error codes for the coordinator's client.
pub async fn append(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    batch: Bytes,
) -> Result<(), i16> {
    let log = shard
        .partition(topic, partition)
        .ok_or(ResponseError::NotCoordinator.code())?;
    let now = now_ms();
    let storage_error = |e: tern_storage::LogError| {
        tracing::error!(topic, partition, error = %e, "append to an internal topic");
        ResponseError::KafkaStorageError.code()
    };
    match shard.replica_group(topic, partition) {
        Some(group) => {
            let replicas = shard
                .replicas()
                .ok_or(ResponseError::NotCoordinator.code())?;
            let proposed = replicas
                .replicator
                .propose(group, batch, now)
                .map_err(|_| ResponseError::NotCoordinator.code())?;
            let committed =
                replicas
                    .replicator
                    .committed(group, proposed.last_offset, proposed.term);
            match crate::rpc::with_timeout(COMMIT_TIMEOUT, committed).await {
                Some(Ok(())) => Ok(()),
                Some(Err(_)) => Err(ResponseError::NotCoordinator.code()),
                None => Err(ResponseError::RequestTimedOut.code()),
            }
        }
        None => {
            let appended = log.append(batch, now).map_err(storage_error)?;
            log.wait(&appended, Durability::Synced)
                .await
                .map_err(storage_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition_for;

    #[test]
    fn keys_map_to_partitions_as_java_string_hash_code_does() {
        // "hello".hashCode() == 99162322; "polygenelubricants".hashCode() == i32::MIN, which
        // Kafka masks to 0 (not abs(), which would overflow).
        assert_eq!(partition_for("hello", 50), 99162322 % 50);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("", 16), 0);
        assert_eq!(partition_for("x", 0), 0);
    }
}
