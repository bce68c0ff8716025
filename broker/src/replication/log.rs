//! A partition log as its Raft group sees it.

use bytes::Bytes;
use std::cell::RefCell;
use std::rc::Rc;
use tern_protocol::batch::BatchHeader;
use tern_protocol::control;
use tern_raft::{Entry, GroupId, Log, Offset, Payload};
use tern_storage::{Appended, PartitionLog};

/// Reads that missed memory: (group, offset), for the driver to load.
pub type Misses = Rc<RefCell<Vec<(GroupId, Offset)>>>;

/// Most bytes of older batches loaded from the files for a follower that is behind the cache.
const LOAD_BYTES: usize = 4 << 20;
/// Runs of loaded batches kept per replica (followers behind at different places each need one).
const LOADED_RUNS: usize = 4;

/// The storage log of one partition replica behind Raft's synchronous [`Log`] trait. Appends,
/// truncations and resets change the storage log in memory at once (it writes and syncs them
/// later, when the driver asks). Reads come from the batch cache, or from batches the driver
/// loaded from the files after a read missed. Exists per replica, on its shard.
pub struct ReplicaLog {
    log: Rc<PartitionLog>,
    /// Runs of consecutive entries read from the files (Raft reads synchronously), newest
    /// last: one per follower that is behind, at most [`LOADED_RUNS`].
    loaded: Vec<Vec<Entry>>,
    group: GroupId,
    /// Where reads found nothing in memory, by group, shared by a node's replica logs: the
    /// driver loads from there, and Raft's next attempt (at the next heartbeat answer) finds it.
    misses: Misses,
    /// The newest append, for a leader to wait on its write.
    last_appended: Option<Appended>,
    /// The storage refused a change Raft made (a bug or a failed write): the driver rebuilds the
    /// group from what is stored.
    broken: bool,
}

/// The Raft entry a stored batch is: Raft's control records become their payloads again, every
/// other batch (data, transaction markers) is data.
pub fn entry_of(batch: Bytes) -> Option<Entry> {
    let h = BatchHeader::parse(&batch).ok()?;
    let payload = match h.is_control() {
        true => control::decode(&batch).unwrap_or(Payload::Data(batch)),
        false => Payload::Data(batch),
    };
    Some(Entry {
        base: u64::try_from(h.base_offset).ok()?,
        last: u64::try_from(h.last_offset()).ok()?,
        term: u64::try_from(h.partition_leader_epoch).unwrap_or(0),
        payload,
    })
}

impl ReplicaLog {
    pub fn new(log: Rc<PartitionLog>, group: GroupId, misses: Misses) -> ReplicaLog {
        ReplicaLog {
            log,
            group,
            misses,
            loaded: Vec::new(),
            last_appended: None,
            broken: false,
        }
    }

    pub fn storage(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    pub fn take_last_appended(&mut self) -> Option<Appended> {
        self.last_appended.take()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads batches from `from` out of the files (async), for the next synchronous read.
    pub async fn load(log: &PartitionLog, from: Offset) -> Vec<Entry> {
        let end = log.end_offset();
        let Ok(records) = log.read_upto(from as i64, LOAD_BYTES, true, end).await else {
            return Vec::new();
        };
        let Ok(data) = records.into_bytes().await else {
            return Vec::new();
        };
        tern_protocol::batch::headers(&data)
            .map_while(|(pos, h)| entry_of(data.slice(pos..pos + h.total_len())))
            .collect()
    }

    /// Keeps `entries` (from [`Self::load`]) for reads, dropping the oldest run kept.
    pub fn add_loaded(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if self.loaded.len() == LOADED_RUNS {
            self.loaded.remove(0);
        }
        self.loaded.push(entries);
    }

    fn fail(&mut self, what: &str, e: impl std::fmt::Display) {
        tracing::error!(dir = %self.log.dir().display(), error = %e, "replica log refused {what}; rebuilding its group from storage");
        self.broken = true;
    }
}

impl Log for ReplicaLog {
    fn start(&self) -> Offset {
        self.log.log_start_offset() as Offset
    }

    fn end(&self) -> Offset {
        self.log.end_offset() as Offset
    }

    fn append(&mut self, entry: Entry) {
        // Control entries are encoded the same on every replica (no clock), so replicas hold
        // the same bytes.
        let data = match &entry.payload {
            Payload::Data(b) => b.clone(),
            _ => control::encode(&entry, -1).expect("a control entry encodes"),
        };
        match self.log.append_replica(data) {
            Ok(a) => self.last_appended = Some(a),
            Err(e) => self.fail("an append", e),
        }
    }

    fn truncate(&mut self, end: Offset) {
        for run in &mut self.loaded {
            run.retain(|e| e.end() <= end);
        }
        self.loaded.retain(|run| !run.is_empty());
        if let Err(e) = self.log.truncate(end as i64) {
            self.fail("a truncation", e);
        }
    }

    fn reset(&mut self, start: Offset) {
        self.loaded.clear();
        self.log.reset(start as i64);
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Vec<Entry> {
        if let Some(batches) = self.log.read_cached(from as i64, max_bytes) {
            return batches.into_iter().map_while(entry_of).collect();
        }
        for run in self.loaded.iter().rev() {
            let i = run.partition_point(|e| e.base < from);
            if run.get(i).is_none_or(|e| e.base != from) {
                continue;
            }
            let mut bytes = 0;
            return run[i..]
                .iter()
                .take_while(|e| {
                    bytes += e.bytes();
                    bytes <= max_bytes || bytes == e.bytes()
                })
                .cloned()
                .collect();
        }
        self.misses.borrow_mut().push((self.group, from));
        Vec::new()
    }
}
