//! A partition log: its segments, the batch cache, offsets, and the write path.
//!
//! Appends are synchronous: a batch gets its offsets and lands in the cache (readable at once)
//! and in the pending list. Writing pending batches to the active segment, and `fdatasync`, are
//! done by whoever waits for them first: concurrent waiters share one write and one sync (group
//! commit). A write is issued under the write lock and goes to the file outside it, so the next
//! group is issued while earlier ones are in flight; writes complete (move `written`) in order.

use bytes::{Bytes, BytesMut};
use event_listener::{Event, EventListener};
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tern_protocol::batch::{self, BatchError};
use tern_protocol::markers::Marker;
use thiserror::Error;

use crate::cache::BatchCache;
use crate::config::LogConfig;
use crate::fs;
use crate::producers::{CompletedTxn, ProducerError, ProducerStates, SequenceCheck};
use crate::records::{Chunk, Records, StoredBatch};
use crate::segment::{parse_segment_name, OpenMode, PreparedWrite, Segment};
use crate::txn_index::{self, AbortedTxn, TxnIndex};
use crate::write_slots::{Slot, WriteSlots};

/// Marker file saying the partition was closed cleanly, so its tail need not be scanned.
const CLEAN_MARKER: &str = "clean-shutdown";
/// Idempotent-producer state saved at a clean shutdown.
const PRODUCER_SNAPSHOT: &str = "producer-state";
/// `<offset, 20 digits>.snapshot`: idempotent-producer state of the batches before `offset`,
/// written at each roll (Kafka's `.snapshot` files), so recovery after a crash replays only the
/// segments after the newest one.
const ROLL_SNAPSHOT: &str = "snapshot";
/// Roll snapshots kept (the newest may be missing if a crash hit its write).
const ROLL_SNAPSHOTS_KEPT: usize = 2;

fn roll_snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.{ROLL_SNAPSHOT}"))
}

fn parse_roll_snapshot_name(path: &Path) -> Option<i64> {
    if path.extension()? != ROLL_SNAPSHOT {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}
/// The log start offset, when DeleteRecords moved it inside a segment.
const LOG_START: &str = "log-start-offset";
/// Compaction reads segments this many bytes of batches at a time.
const COMPACTION_CHUNK: usize = 1 << 20;
/// Compaction gives its shard back after this much work: glommio preempts a task queue only
/// every 100 ms, far too long for the requests waiting behind it.
const COMPACTION_SLICE: std::time::Duration = std::time::Duration::from_micros(500);

/// Ends a slice of long CPU work on a shard once it has run [`COMPACTION_SLICE`]: the task
/// queue yields, so the shard's network and disk completions are handled in between.
struct Slices(std::time::Instant);

impl Slices {
    fn new() -> Slices {
        Slices(std::time::Instant::now())
    }

    async fn next(&mut self) {
        if self.0.elapsed() >= COMPACTION_SLICE {
            glommio::executor().yield_task_queue_now().await;
            self.0 = std::time::Instant::now();
        }
    }
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
    #[error("the write of this batch failed and was rolled back")]
    WriteFailed,
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error("a produce request must carry exactly one record batch per partition, not {0}")]
    BatchCount(usize),
    /// A replicated batch that does not start where the log ends.
    #[error("a replicated batch at offset {offset} does not start at the log end {end}")]
    NotAtEnd { offset: i64, end: i64 },
    /// A write of this replica failed while it led: it appends nothing more as leader in this
    /// epoch, lest it reissue offsets its followers may already hold.
    #[error("this replica is fenced after a failed write")]
    Fenced,
    /// Records without a key sent to a compacted topic, by index in their batch.
    #[error("a compacted topic cannot accept records without a key ({} in this batch)", .0.len())]
    KeylessRecords(Vec<i32>),
}

impl From<batch::ProduceError> for LogError {
    fn from(e: batch::ProduceError) -> LogError {
        match e {
            batch::ProduceError::Batch(e) => LogError::Batch(e),
            batch::ProduceError::BatchCount(n) => LogError::BatchCount(n),
            batch::ProduceError::KeylessRecords(k) => LogError::KeylessRecords(k),
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Broker timestamp when the topic uses LogAppendTime, else -1.
    pub log_append_time: i64,
    /// Number of rollbacks that had happened when the append was made.
    generation: usize,
}

/// A produced batch made ready for a replicated leader to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Stamped with the offsets it takes at the log end (Raft gives it those same offsets).
    Batch {
        data: Bytes,
        records: u64,
        /// Broker timestamp when the topic uses LogAppendTime, else -1.
        log_append_time: i64,
    },
    /// A retry of a batch already in the log, at these offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// How far an append must have gone before its producer is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the segment file (acks=1).
    Written,
    /// Written and fdatasync'ed (acks=all).
    Synced,
}

/// Takes one unit of `lock`. A closed lock means the log was closed or removed.
async fn take(lock: &Semaphore) -> Result<glommio::sync::Permit<'_>, LogError> {
    lock.acquire_permit(1)
        .await
        .map_err(|_| LogError::WriteFailed)
}

/// Whether a rollback since `generation` (a count of rollbacks) took offset `offset`.
fn rolled_back(st: &State, generation: usize, offset: i64) -> bool {
    st.rollbacks[generation..]
        .iter()
        .any(|&from| offset >= from)
}

/// One partition's log. Exists per partition replica, on the shard that owns it.
pub struct PartitionLog {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    state: RefCell<State>,
    /// Held while writes are issued, and while segments change (then with no write in flight).
    write_lock: Semaphore,
    /// Held while the active segment is synced. Apart from the write lock, so the next group
    /// of batches is written while the previous one is being synced.
    sync_lock: Semaphore,
    /// Segment writes the shard lets run at once, shared by its partitions (see
    /// `share_write_slots`).
    write_slots: RefCell<Rc<WriteSlots>>,
    /// Fires when the high watermark moves (consumers' long polls wait on it).
    advanced: Event,
    /// Fires when a write in flight completes or fails.
    write_done: Event,
    sealer: Rc<Sealer>,
}

#[cfg(test)]
thread_local! {
    /// Test hook: sealing a rolled segment waits for this latch first.
    pub(crate) static SEAL_GATE: RefCell<Option<Rc<crate::segment::Latch>>> = const { RefCell::new(None) };
}

/// Segments rolled and not yet sealed. A seal (truncate, fdatasync, two index files, each
/// synced) takes milliseconds; done in the background, one at a time, it holds up no write.
/// Until a segment is sealed, syncs cover it too.
struct Sealer {
    dir: PathBuf,
    rolled: RefCell<Vec<Rolled>>,
    /// Held while sealing and writing snapshots, so seals run in roll order, never twice at
    /// once on a segment, and a cut that waits for them sees every snapshot they wrote.
    lock: Semaphore,
}

/// A rolled segment with the producer snapshot of the batches before its end, written once it
/// is sealed (so a snapshot never describes batches a crash could still lose).
#[derive(Clone)]
struct Rolled {
    segment: Rc<Segment>,
    end: i64,
    snapshot: Rc<Vec<u8>>,
}

impl Sealer {
    /// Seals the rolled segments, oldest first. A failed seal leaves its segment rolled: the
    /// next call tries it again.
    async fn seal_rolled(&self) -> io::Result<()> {
        let _permit = self.lock.acquire_permit(1).await.ok();
        loop {
            let Some(Rolled {
                segment,
                end,
                snapshot,
            }) = self.rolled.borrow().first().cloned()
            else {
                return Ok(());
            };
            #[cfg(test)]
            if let Some(gate) = SEAL_GATE.with(|g| g.borrow().clone()) {
                gate.wait().await;
            }
            segment.seal().await?;
            if let Err(error) = write_roll_snapshot(&self.dir, end, &snapshot).await {
                tracing::warn!(dir = %self.dir.display(), %error, "writing the producer snapshot failed; recovery replays older segments");
            }
            // Only sealing (under the lock) takes segments off the list: it is still first.
            self.rolled.borrow_mut().remove(0);
        }
    }

    /// Forgets the rolled segments (their files are going), after any seal in progress.
    async fn forget(&self) {
        let _permit = self.lock.acquire_permit(1).await.ok();
        self.rolled.borrow_mut().clear();
    }
}

/// Writes the roll snapshot for `offset` and removes all but the newest few.
async fn write_roll_snapshot(dir: &Path, offset: i64, data: &[u8]) -> io::Result<()> {
    fs::write_file_atomic(&roll_snapshot_path(dir, offset), data).await?;
    let mut offsets: Vec<i64> = fs::list_dir(dir)
        .await?
        .iter()
        .filter_map(|p| parse_roll_snapshot_name(p))
        .collect();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    for old in offsets.into_iter().skip(ROLL_SNAPSHOTS_KEPT) {
        fs::remove_file(&roll_snapshot_path(dir, old)).await?;
    }
    Ok(())
}

/// A write of pending batches to the active segment, issued and not yet completed.
struct Issued {
    segment: Rc<Segment>,
    write: PreparedWrite,
    batches: Vec<StoredBatch>,
    /// Offsets `[from, to)`.
    from: i64,
    to: i64,
    /// Rollbacks that had happened when it was issued.
    generation: usize,
    /// The shard's write slot, held until the write is on the device.
    slot: Slot,
}

/// A cut of the log's tail requested and not yet applied to its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Everything from this offset (a batch boundary) on goes.
    Truncate(i64),
    /// Everything goes; the log restarts, empty, at this offset.
    Reset(i64),
}

impl Cut {
    /// This cut followed by `later`, as one.
    fn then(self, later: Cut) -> Cut {
        match (self, later) {
            (Cut::Truncate(a), Cut::Truncate(b)) => Cut::Truncate(a.min(b)),
            (Cut::Reset(s), Cut::Truncate(_)) => Cut::Reset(s),
            (_, reset) => reset,
        }
    }
}

struct State {
    segments: BTreeMap<i64, Rc<Segment>>,
    log_start: i64,
    next_offset: i64,
    /// Offsets below this are in segment files.
    written: i64,
    /// Writes issued and not yet completed or failed.
    in_flight: usize,
    /// A write failed: the active segment must forget its uncommitted writes before the next.
    reset_active: bool,
    /// Offsets below this are in segment files and synced.
    synced: i64,
    /// When data was last synced (flush.ms).
    last_sync: std::time::Instant,
    pending: Vec<StoredBatch>,
    cache: BatchCache,
    /// (max timestamp, offset of the batch holding it).
    max_timestamp: (i64, i64),
    /// Offsets from which each failed write rolled back, in order.
    rollbacks: Vec<i64>,
    producers: ProducerStates,
    aborted: TxnIndex,
    /// Closed segments below this offset were compacted with nothing newer to apply.
    compacted_upto: i64,
    /// `partitionLeaderEpoch` stamped into the batches this replica appends as leader.
    leader_epoch: i32,
    /// Epoch of the newest batch appended since the log was opened (epochs never decrease).
    last_epoch: i32,
    /// Set by replication (the Raft commit index). `None` for a log with one replica: then
    /// it is `written`, so no reader sees a batch that a failed write may roll back.
    high_watermark: Option<i64>,
    /// A write failed while replicated: appends as leader are refused until the next epoch.
    fenced: bool,
    /// A truncation or reset done in memory, to apply to the files before the next write.
    cut: Option<Cut>,
}

impl State {
    /// Takes a batch at the log end (`header` as stored: final offsets and max timestamp) into
    /// the producer state, the cache and the pending writes.
    fn push(&mut self, header: &batch::BatchHeader, data: StoredBatch, cache_bytes: usize) {
        debug_assert_eq!(header.base_offset, self.next_offset, "offsets are dense");
        if header.max_timestamp > self.max_timestamp.0 {
            self.max_timestamp = (header.max_timestamp, header.base_offset);
        }
        // A cut reaches back to the high watermark at most, and a roll snapshot to what is
        // written: below both, producer state is settled.
        let settled = self
            .high_watermark
            .unwrap_or(self.written)
            .min(self.written);
        self.producers.settle(settled);
        if let Some(done) = self.producers.record(header, data.head()) {
            if done.aborted {
                self.aborted.insert(aborted_entry(&self.producers, &done));
            }
        }
        self.cache
            .push(header.base_offset, header.last_offset(), data.clone());
        self.pending.push(data);
        self.next_offset = header.last_offset() + 1;
        let written = self.written;
        self.cache.trim(cache_bytes, written);
    }

    /// Forgets what producers and transactions did from `offset` on (a rollback or a cut).
    fn forget_from(&mut self, offset: i64) {
        self.producers.truncate_from(offset);
        self.aborted.truncate_from(offset);
    }

    /// Offsets below this are in writes issued (complete or in flight); `pending` holds the
    /// rest.
    fn issued(&self) -> i64 {
        self.pending
            .first()
            .map_or(self.next_offset, |b| batch::base_offset(b.head()))
    }
}

/// Milliseconds since the Unix epoch (batch timestamps are in it).
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The closed segments of `segments` (all of the log's, oldest first) wholly below `bound`:
/// with the high watermark, retention touches nothing a truncation could still remove (and
/// never moves the log start past it); with the last stable offset, compaction touches no
/// open transaction.
fn closed_below(segments: &[Rc<Segment>], bound: i64) -> &[Rc<Segment>] {
    let closed = &segments[..segments.len().saturating_sub(1)];
    let n = closed
        .iter()
        .take_while(|s| s.next_offset() <= bound)
        .count();
    &closed[..n]
}

/// `marker`'s batch at the log end, stamped with leader epoch `epoch`.
fn stamp_marker(st: &State, marker: &Marker, now_ms: i64, epoch: i32) -> Bytes {
    let mut data = marker.encode(now_ms);
    batch::set_base_offset(&mut data, st.next_offset);
    batch::set_leader_epoch(&mut data, epoch);
    data.freeze()
}

/// The aborted-index entry of a transaction a marker just aborted; its stable offset is where
/// the oldest transaction still open starts (or past the marker).
fn aborted_entry(producers: &ProducerStates, done: &CompletedTxn) -> AbortedTxn {
    let past_marker = done.marker_offset + 1;
    AbortedTxn {
        producer_id: done.producer_id,
        first_offset: done.first_offset,
        last_offset: done.marker_offset,
        last_stable_offset: producers
            .first_open_offset()
            .map_or(past_marker, |o| o.min(past_marker)),
    }
}

/// Producer state after a crash: the newest roll snapshot at or below the active segment's
/// base, then the batches of the segments from its offset on. Without a usable snapshot, the
/// active segment's batches alone (older producers are forgotten and their next batches
/// accepted as they come).
async fn recover_producers(
    files: &[PathBuf],
    segments: &BTreeMap<i64, Rc<Segment>>,
    aborted: &mut TxnIndex,
) -> io::Result<ProducerStates> {
    let active_base = *segments.keys().next_back().expect("one segment");
    let mut snapshots: Vec<(i64, &PathBuf)> = files
        .iter()
        .filter_map(|p| parse_roll_snapshot_name(p).map(|o| (o, p)))
        .filter(|&(o, _)| o <= active_base)
        .collect();
    snapshots.sort_by_key(|&(o, _)| std::cmp::Reverse(o));
    let mut loaded = None;
    for (offset, path) in snapshots {
        if let Some(p) = fs::read_file(path)
            .await?
            .and_then(|d| ProducerStates::from_bytes(&d, wall_clock_ms()))
        {
            loaded = Some((offset, p));
            break;
        }
    }
    let (from, mut producers) = loaded.unwrap_or((active_base, ProducerStates::default()));
    for (_, segment) in segments.range(from..) {
        segment
            .visit_batches(|h, b| {
                if let Some(done) = producers.record(h, b).filter(|d| d.aborted) {
                    aborted.insert(aborted_entry(&producers, &done));
                }
            })
            .await?;
    }
    Ok(producers)
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering its tail unless it was closed cleanly.
    pub async fn open(dir: &Path, config: LogConfig) -> io::Result<Rc<PartitionLog>> {
        fs::create_dir_all(dir).await?;
        if let Some(parent) = dir.parent() {
            fs::probe_direct_io(parent).await?;
        }
        let marker = dir.join(CLEAN_MARKER);
        let clean = fs::exists(&marker).await;
        let files = fs::list_dir(dir).await?;
        // A compaction that did not finish: the original segment is intact.
        for leftover in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == crate::segment::CLEANED))
        {
            fs::remove_file(leftover).await?;
        }
        let bases: Vec<i64> = files.iter().filter_map(|p| parse_segment_name(p)).collect();
        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let mode = if last && !clean {
                OpenMode::Recover
            } else {
                OpenMode::Sealed
            };
            let (seg, cut) = Segment::open(dir, base, mode, config.index_interval_bytes).await?;
            if cut.data {
                tracing::warn!(dir = %dir.display(), base, cut = cut.bytes, "truncated torn or corrupt tail of segment");
            } else if cut.bytes > 0 {
                tracing::info!(dir = %dir.display(), base, cut = cut.bytes, "released preallocated space after the last batch of segment");
            }
            segments.insert(base, Rc::new(seg));
        }
        if segments.is_empty() {
            segments.insert(0, Rc::new(Segment::create(dir, 0).await?));
        }
        let snapshot_path = dir.join(PRODUCER_SNAPSHOT);
        let snapshot = match clean {
            true => fs::read_file(&snapshot_path)
                .await?
                .and_then(|d| ProducerStates::from_bytes(&d, wall_clock_ms())),
            false => None,
        };
        // Aborted transactions of rolled (or cleanly closed) segments; a crash's replay
        // adds those of the segments after the last roll snapshot.
        let mut aborted = TxnIndex::default();
        for index in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "txnindex"))
        {
            if let Some(data) = fs::read_file(index).await? {
                aborted.load(&data);
            }
        }
        let producers = match snapshot {
            Some(p) => p,
            None => recover_producers(&files, &segments, &mut aborted).await?,
        };
        // The marker and snapshot must go before any write: after this, a crash needs a scan.
        if clean {
            fs::remove_file(&marker).await?;
            fs::remove_file(&snapshot_path).await?;
        }
        let first_base = *segments.keys().next().expect("one segment");
        let stored_start = fs::read_file(&dir.join(LOG_START))
            .await?
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| s.trim().parse::<i64>().ok());
        let active = segments.values().next_back().expect("one segment");
        let next_offset = active.next_offset();
        let log_start = stored_start
            .unwrap_or(first_base)
            .clamp(first_base, next_offset);
        let max_timestamp = segments
            .values()
            .map(|s| (s.max_timestamp(), s.base_offset))
            .max_by_key(|&(ts, _)| ts)
            .unwrap_or((-1, -1));
        aborted.truncate_from(next_offset);
        aborted.forget_below(log_start);
        Ok(Rc::new(PartitionLog {
            dir: dir.to_path_buf(),
            config: RefCell::new(config),
            state: RefCell::new(State {
                segments,
                log_start,
                next_offset,
                written: next_offset,
                in_flight: 0,
                reset_active: false,
                synced: next_offset,
                last_sync: std::time::Instant::now(),
                pending: Vec::new(),
                cache: BatchCache::default(),
                max_timestamp,
                rollbacks: Vec::new(),
                producers,
                aborted,
                compacted_upto: 0,
                leader_epoch: 0,
                last_epoch: -1,
                high_watermark: None,
                fenced: false,
                cut: None,
            }),
            write_lock: Semaphore::new(1),
            sync_lock: Semaphore::new(1),
            write_slots: RefCell::new(WriteSlots::unlimited()),
            advanced: Event::new(),
            write_done: Event::new(),
            sealer: Rc::new(Sealer {
                dir: dir.to_path_buf(),
                rolled: RefCell::new(Vec::new()),
                lock: Semaphore::new(1),
            }),
        }))
    }

    pub fn set_config(&self, config: LogConfig) {
        let cache_bytes = config.cache_bytes;
        *self.config.borrow_mut() = config;
        self.set_cache_bytes(cache_bytes);
    }

    /// Changes how many bytes of recent batches this partition keeps in memory (the shard's
    /// memory budget shared among its partitions), trimming at once.
    pub fn set_cache_bytes(&self, bytes: usize) {
        self.config.borrow_mut().cache_bytes = bytes;
        let mut st = self.state.borrow_mut();
        let written = st.written;
        st.cache.trim(bytes, written);
    }

    /// Makes this partition's segment writes take a slot from `slots`, shared by the shard's
    /// partitions. While all slots are busy, appends gather: each partition then writes more at
    /// once, in fewer device requests (each costs a doorbell and an interrupt, the dominant
    /// per-write costs, most of all in virtual machines).
    pub fn share_write_slots(&self, slots: Rc<WriteSlots>) {
        *self.write_slots.borrow_mut() = slots;
    }

    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    /// Validates the produce payload `records` (exactly one batch, as Kafka requires),
    /// assigns offsets and appends it. A retried batch of an idempotent producer is recognised
    /// and answered with its original offsets. The data is readable at once; use `wait` for
    /// durability.
    pub fn append(&self, records: Bytes, now_ms: i64) -> Result<Appended, LogError> {
        let header = self.validate_produced(&records)?;
        let config = self.config.borrow();
        let mut st = self.state.borrow_mut();
        if st.fenced {
            return Err(LogError::Fenced);
        }
        let generation = st.rollbacks.len();
        if let SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        } = st.producers.check(&header)?
        {
            return Ok(Appended {
                base_offset,
                last_offset,
                log_append_time: -1,
                generation,
            });
        }
        let base_offset = st.next_offset;
        // Only the header is copied (to rewrite it); the records stay in the request buffer.
        let mut head = BytesMut::from(&records[..batch::HEADER_LEN]);
        let rest = records.slice(batch::HEADER_LEN..);
        batch::set_base_offset(&mut head, base_offset);
        batch::set_leader_epoch(&mut head, st.leader_epoch);
        st.last_epoch = st.leader_epoch;
        let (log_append_time, max_ts) = if config.log_append_time {
            batch::set_log_append_time(&mut head, &rest, now_ms);
            (now_ms, now_ms)
        } else {
            (-1, header.max_timestamp)
        };
        let stamped = batch::BatchHeader {
            base_offset,
            max_timestamp: max_ts,
            ..header
        };
        let last_offset = stamped.last_offset();
        let data = StoredBatch::new(head.freeze(), rest);
        st.push(&stamped, data, config.cache_bytes);
        Ok(Appended {
            base_offset,
            last_offset,
            log_append_time,
            generation,
        })
    }

    /// Checks a producer's payload (`batch::check_produced`) against this log's config.
    fn validate_produced(&self, records: &Bytes) -> Result<batch::BatchHeader, LogError> {
        let config = self.config.borrow();
        Ok(batch::check_produced(
            records,
            config.max_message_bytes,
            config.compact_enabled,
        )?)
    }

    /// A replicated leader's side of a produce: validates `records` as [`Self::append`] does
    /// and, unless it is a retry of a batch already in the log, returns it as one buffer with
    /// the offsets it will take (from the log end), `epoch` and LogAppendTime stamped, for Raft
    /// to propose (Raft then appends it through [`Self::append_replica`]). The batch is copied
    /// once here: Raft entries are single buffers.
    pub fn prepare_leader_batch(
        &self,
        records: Bytes,
        now_ms: i64,
        epoch: i32,
    ) -> Result<Prepared, LogError> {
        let header = self.validate_produced(&records)?;
        let st = self.state.borrow();
        if let SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        } = st.producers.check(&header)?
        {
            return Ok(Prepared::Duplicate {
                base_offset,
                last_offset,
            });
        }
        let mut data = BytesMut::from(&records[..]);
        batch::set_base_offset(&mut data, st.next_offset);
        batch::set_leader_epoch(&mut data, epoch);
        let log_append_time = match self.config.borrow().log_append_time {
            true => {
                batch::set_log_append_time(&mut data, &[], now_ms);
                now_ms
            }
            false => -1,
        };
        Ok(Prepared::Batch {
            data: data.freeze(),
            records: header.record_count.max(0) as u64,
            log_append_time,
        })
    }

    /// Appends one batch a leader sent this follower replica, as it is: its offsets and epoch
    /// are the leader's (Raft has checked that it follows this log). It must start at the log
    /// end. Idempotent-producer state is built from it as on the leader, so a new leader
    /// recognises retries.
    pub fn append_replica(&self, data: Bytes) -> Result<Appended, LogError> {
        let header = batch::validate(&data)?;
        if header.total_len() != data.len() {
            return Err(LogError::BatchCount(batch::headers(&data).count()));
        }
        let mut st = self.state.borrow_mut();
        if header.base_offset != st.next_offset {
            return Err(LogError::NotAtEnd {
                offset: header.base_offset,
                end: st.next_offset,
            });
        }
        debug_assert!(
            header.partition_leader_epoch >= st.last_epoch,
            "epochs never decrease along a log"
        );
        st.last_epoch = header.partition_leader_epoch;
        let (base_offset, last_offset) = (header.base_offset, header.last_offset());
        st.push(
            &header,
            StoredBatch::from(data),
            self.config.borrow().cache_bytes,
        );
        Ok(Appended {
            base_offset,
            last_offset,
            log_append_time: -1,
            generation: st.rollbacks.len(),
        })
    }

    /// Appends `marker`, ending its producer's transaction (WriteTxnMarkers, on a log with
    /// one replica). An older producer epoch than the log knows is a zombie's: refused.
    pub fn append_marker(&self, marker: &Marker, now_ms: i64) -> Result<Appended, LogError> {
        let mut st = self.state.borrow_mut();
        if st.fenced {
            return Err(LogError::Fenced);
        }
        st.producers
            .check_marker(marker.producer_id, marker.producer_epoch)?;
        let data = stamp_marker(&st, marker, now_ms, st.leader_epoch);
        let header = batch::BatchHeader::parse(&data)?;
        st.last_epoch = st.leader_epoch;
        let generation = st.rollbacks.len();
        st.push(
            &header,
            StoredBatch::from(data),
            self.config.borrow().cache_bytes,
        );
        Ok(Appended {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            log_append_time: -1,
            generation,
        })
    }

    /// A replicated leader's side of [`Self::append_marker`]: the marker batch, at the log
    /// end and stamped with `epoch`, for Raft to propose.
    pub fn prepare_marker(
        &self,
        marker: &Marker,
        now_ms: i64,
        epoch: i32,
    ) -> Result<Bytes, LogError> {
        let st = self.state.borrow();
        st.producers
            .check_marker(marker.producer_id, marker.producer_epoch)?;
        Ok(stamp_marker(&st, marker, now_ms, epoch))
    }

    /// Offsets below this are stable: a `read_committed` consumer may read them (Kafka's last
    /// stable offset). The high watermark, or the start of the oldest transaction that is
    /// still open or whose marker is not below the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        let st = self.state.borrow();
        st.producers
            .first_unstable_offset(hw)
            .map_or(hw, |first| first.min(hw))
    }

    /// Aborted transactions a `read_committed` read of `[from, upto)` overlaps.
    pub fn aborted_transactions(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        self.state.borrow().aborted.overlapping(from, upto)
    }

    /// The producers this log remembers (DescribeProducers).
    pub fn producers(&self) -> Vec<crate::producers::ProducerView> {
        self.state.borrow().producers.describe()
    }

    /// Open transactions: (producer id, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.state.borrow().producers.open_transactions().collect()
    }

    /// Starts a new leader epoch: this replica's appends as leader are stamped with `epoch`
    /// from now on, and a fence left by a failed write is lifted.
    pub fn set_leader_epoch(&self, epoch: i32) {
        let mut st = self.state.borrow_mut();
        debug_assert!(epoch >= st.last_epoch, "leader epochs never go back");
        st.leader_epoch = epoch;
        st.fenced = false;
    }

    /// Lifts a fence once the replication layer has restarted the replica from what is stored
    /// (it forgot the rolled-back batches; a leader's next appends come in a later term).
    pub fn unfence(&self) {
        self.state.borrow_mut().fenced = false;
    }

    /// Whether a failed write fenced this replica (see [`LogError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        self.state.borrow().fenced
    }

    /// Replication decides the high watermark from now on (see [`Self::high_watermark`]).
    /// It never goes back, and never passes what this replica has written.
    pub fn set_high_watermark(&self, hw: i64) {
        let mut st = self.state.borrow_mut();
        debug_assert!(
            st.high_watermark.is_none_or(|old| hw >= old),
            "the high watermark never goes back"
        );
        debug_assert!(hw <= st.next_offset, "the high watermark is inside the log");
        st.high_watermark = Some(hw);
        drop(st);
        self.advanced.notify(usize::MAX);
    }

    /// Offsets below this are visible to consumers: the commit index of a replicated log, or
    /// what is written for a log with one replica.
    pub fn high_watermark(&self) -> i64 {
        let st = self.state.borrow();
        st.high_watermark
            .map_or(st.written, |hw| hw.min(st.written))
    }

    /// Removes every batch from offset `end` (a batch boundary, not below the high watermark)
    /// on: a follower whose tail diverged from its leader's. Done in memory at once (later
    /// appends go at `end`); the files are cut before the next write, and that cut is synced
    /// before anything written after it. Waiters for removed batches fail.
    pub fn truncate(&self, end: i64) -> Result<(), LogError> {
        let mut st = self.state.borrow_mut();
        if end >= st.next_offset {
            return Ok(());
        }
        if end < st.log_start || st.high_watermark.is_some_and(|hw| end < hw) {
            return Err(LogError::OffsetOutOfRange {
                offset: end,
                start: st.log_start,
                end: st.next_offset,
            });
        }
        let on_file = st.issued() > end;
        st.rollbacks.push(end);
        st.pending.retain(|b| batch::base_offset(b.head()) < end);
        st.next_offset = end;
        st.written = st.written.min(end);
        st.synced = st.synced.min(end);
        st.cache.truncate_from(end);
        st.forget_from(end);
        st.last_epoch = -1; // unknown until the next append
        if st.max_timestamp.1 >= end {
            st.max_timestamp = (-1, -1);
        }
        if on_file {
            st.cut = Some(
                st.cut
                    .map_or(Cut::Truncate(end), |c| c.then(Cut::Truncate(end))),
            );
        }
        drop(st);
        self.write_done.notify(usize::MAX);
        Ok(())
    }

    /// Drops every batch and restarts the log, empty, at `start` (a follower too far behind
    /// its leader's log start). In memory at once; the files follow before the next write.
    pub fn reset(&self, start: i64) {
        let mut st = self.state.borrow_mut();
        // Every batch appended before, written or not, is lost to its waiters.
        st.rollbacks.push(i64::MIN);
        st.pending.clear();
        st.cache.clear();
        st.producers = ProducerStates::default();
        st.aborted.clear();
        st.log_start = start;
        st.next_offset = start;
        st.written = start;
        st.synced = start;
        st.max_timestamp = (-1, -1);
        st.last_epoch = -1;
        st.high_watermark = st.high_watermark.map(|hw| hw.max(start));
        st.cut = Some(
            st.cut
                .map_or(Cut::Reset(start), |c| c.then(Cut::Reset(start))),
        );
        drop(st);
        self.write_done.notify(usize::MAX);
    }

    /// Waits until `appended` is written (or synced), writing (and syncing) pending batches
    /// itself if no one else is. Fails if the write of these batches failed.
    pub async fn wait(&self, appended: &Appended, durability: Durability) -> Result<(), LogError> {
        let lost = |st: &State| rolled_back(st, appended.generation, appended.base_offset);
        loop {
            let issue = {
                let st = self.state.borrow();
                if lost(&st) {
                    return Err(LogError::WriteFailed);
                }
                if st.written > appended.last_offset {
                    break;
                }
                st.issued() <= appended.last_offset
            };
            if !issue {
                // In a write someone else issued. (Listening right after the check misses
                // nothing: the state changes only while this task is suspended.)
                self.write_done.listen().await;
                continue;
            }
            let permit = take(&self.write_lock).await?;
            let still_pending = {
                let st = self.state.borrow();
                st.issued() <= appended.last_offset && !lost(&st)
            };
            if still_pending {
                let write = self.issue().await?;
                drop(permit);
                if let Some(write) = write {
                    self.complete(write).await?;
                }
            }
        }
        let flush_messages = self.config.borrow().flush_messages;
        let (written, synced) = {
            let st = self.state.borrow();
            (st.written, st.synced)
        };
        if durability == Durability::Synced {
            self.sync_upto(appended.last_offset).await?;
        } else if flush_messages.is_some_and(|n| (written - synced) as u64 >= n) {
            self.sync_upto(written - 1).await?;
        }
        Ok(())
    }

    /// Syncs the active segment unless everything up to `offset` (written already) is synced.
    /// Concurrent callers share one fdatasync: it covers all that was written when it began.
    async fn sync_upto(&self, offset: i64) -> Result<(), LogError> {
        if self.state.borrow().synced > offset {
            return Ok(());
        }
        let _permit = take(&self.sync_lock).await?;
        // Sealed segments are synced; the active one and those rolled but not sealed yet hold
        // everything written but not synced. All are read before any await.
        let (target, unsynced, generation) = {
            let st = self.state.borrow();
            if st.synced > offset {
                return Ok(());
            }
            let mut unsynced: Vec<Rc<Segment>> = self
                .sealer
                .rolled
                .borrow()
                .iter()
                .map(|r| r.segment.clone())
                .collect();
            unsynced.push(self.active());
            (st.written, unsynced, st.rollbacks.len())
        };
        futures::future::try_join_all(unsynced.iter().map(|s| s.sync())).await?;
        let mut st = self.state.borrow_mut();
        // What a truncation (or failed write) meanwhile removed may have been written anew
        // after the sync began: it does not count.
        let target = st.rollbacks[generation..]
            .iter()
            .fold(target, |t, &cut| t.min(cut.max(st.log_start)));
        st.synced = st.synced.max(target);
        st.last_sync = std::time::Instant::now();
        Ok(())
    }

    /// Issues a write of the pending batches that fit in the active segment (rolling it first
    /// when due; a large group commit may so span segments). `None` when nothing is pending.
    /// Caller holds the write lock.
    async fn issue(&self) -> Result<Option<Issued>, LogError> {
        if self.state.borrow().pending.is_empty() {
            return Ok(None);
        }
        let slots = self.write_slots.borrow().clone();
        let slot = slots.acquire().await.map_err(|_| LogError::WriteFailed)?;
        // After a failure, the active segment is reset once no write is in flight (see
        // `complete`), and a truncation is applied to the files; nothing may be prepared on
        // the active segment before.
        if self.state.borrow().reset_active || self.state.borrow().cut.is_some() {
            self.drain().await?;
        }
        let first_len = match self.state.borrow().pending.first() {
            Some(b) => b.len() as u64,
            None => return Ok(None),
        };
        if let Err(e) = self.roll_if_due(first_len).await {
            let from = self.state.borrow().issued();
            self.roll_back(from, &e);
            return Err(e.into());
        }
        let active = self.active();
        let segment_bytes = self.config.borrow().segment_bytes;
        let (batches, from, to, generation) = {
            let mut st = self.state.borrow_mut();
            // A segment ends before the batch that would take it past segment.bytes (as in
            // Kafka): the batches after it wait for the next write, after the roll.
            let room = segment_bytes.saturating_sub(active.end());
            let (mut take, mut bytes) = (0, 0u64);
            for b in &st.pending {
                if take > 0 && bytes + b.len() as u64 > room {
                    break;
                }
                bytes += b.len() as u64;
                take += 1;
            }
            if take == 0 {
                return Ok(None);
            }
            let from = st.issued();
            let batches: Vec<StoredBatch> = st.pending.drain(..take).collect();
            let to = st.issued();
            st.in_flight += 1;
            (batches, from, to, st.rollbacks.len())
        };
        let write = active.prepare(&batches, segment_bytes).await;
        Ok(Some(Issued {
            segment: active,
            write,
            batches,
            from,
            to,
            generation,
            slot,
        }))
    }

    /// Sends an issued write to its segment and completes it in turn: once every write issued
    /// before it has completed, its batches count as written. A failed write rolls back its
    /// batches and everything after them.
    async fn complete(&self, issued: Issued) -> Result<(), LogError> {
        let Issued {
            from, generation, ..
        } = issued;
        let result = issued.segment.write(issued.write).await;
        let bytes = issued.batches.iter().map(|b| b.len() as u64).sum();
        issued.slot.done(bytes);
        loop {
            {
                let st = self.state.borrow();
                if st.written == from || rolled_back(&st, generation, from) {
                    break;
                }
            }
            self.write_done.listen().await;
        }
        let lost = rolled_back(&self.state.borrow(), generation, from);
        let result = match result {
            _ if lost => Err(LogError::WriteFailed),
            Ok(()) => {
                let interval = self.config.borrow().index_interval_bytes;
                issued.segment.commit(&issued.batches, interval);
                let mut st = self.state.borrow_mut();
                // A truncation while the write was in flight removed its batches past the cut.
                st.written = match st.cut {
                    Some(Cut::Truncate(end)) => issued.to.min(end),
                    _ => issued.to,
                };
                let limit = self.config.borrow().cache_bytes;
                let written = st.written;
                st.cache.trim(limit, written);
                // The high watermark consumers see is min(commit, written): this write moved
                // it when there is no commit index (one replica) or when the commit index was
                // already past what was written (a majority of followers stored the batches
                // before this replica did). Then waiting readers (long polls, the metadata
                // log's appliers) must hear of it: the commit index will not move again.
                let visible = st.high_watermark.is_none_or(|hw| hw > from);
                drop(st);
                if visible {
                    self.advanced.notify(usize::MAX);
                }
                Ok(())
            }
            Err(e) => {
                self.roll_back(from, &e);
                Err(e.into())
            }
        };
        // The last write in flight after a failure cuts what the failed writes left in the
        // file at once (a crash must not bring them back), before it counts as done. If that
        // fails, the next write tries again (`drain`).
        if self.state.borrow().in_flight == 1 && self.state.borrow().reset_active {
            let _ = self.reset_active_segment().await;
        }
        self.state.borrow_mut().in_flight -= 1;
        self.write_done.notify(usize::MAX);
        result
    }

    /// Forgets the batches from offset `from` on, after their write failed (`error`), so
    /// offsets stay dense and no reader sees data that was never stored. Writes in flight
    /// after it fail too; what they leave in the file is cut off once none is in flight.
    fn roll_back(&self, from: i64, error: &io::Error) {
        tracing::error!(dir = %self.dir.display(), from, %error, "segment write failed; rolling back unwritten batches");
        let mut st = self.state.borrow_mut();
        // Followers may hold the rolled-back batches: a replicated leader must not give their
        // offsets to other batches in this epoch.
        st.fenced = st.high_watermark.is_some();
        st.written = from;
        st.rollbacks.push(from);
        st.next_offset = from;
        st.pending.clear();
        st.cache.truncate_from(from);
        st.forget_from(from);
        if st.max_timestamp.1 >= from {
            st.max_timestamp = (-1, -1);
        }
        st.reset_active = true;
        drop(st);
        self.write_done.notify(usize::MAX);
    }

    /// Waits until no write is in flight, then brings the files in line with the log (after a
    /// failed write, or a truncation). Caller holds the write lock, so no write starts
    /// meanwhile.
    async fn drain(&self) -> io::Result<()> {
        while self.state.borrow().in_flight > 0 {
            self.write_done.listen().await;
        }
        self.reset_active_segment().await?;
        self.apply_cut().await
    }

    /// Applies a truncation or reset made in memory to the segment files: whole segments past
    /// the cut are deleted, the one holding it is cut (and synced), and the directory is
    /// synced, all before any later write. If it fails, the next write tries again.
    async fn apply_cut(&self) -> io::Result<()> {
        let Some(cut) = self.state.borrow().cut else {
            return Ok(());
        };
        // A seal in progress would write the index files of a segment being cut or deleted.
        self.sealer.seal_rolled().await?;
        let segments: Vec<Rc<Segment>> = self.state.borrow().segments.values().cloned().collect();
        let keep = match cut {
            // The first segment stays (emptied, at worst): a log always has one.
            Cut::Truncate(end) => segments
                .iter()
                .take_while(|s| s.base_offset < end)
                .count()
                .max(1),
            Cut::Reset(_) => 0,
        };
        for segment in &segments[keep..] {
            segment.remove().await?;
            self.state
                .borrow_mut()
                .segments
                .remove(&segment.base_offset);
        }
        match cut {
            Cut::Truncate(end) => {
                let interval = self.config.borrow().index_interval_bytes;
                let cut = &segments[keep - 1];
                cut.truncate_to(end, interval).await?;
                let aborted = self.state.borrow().aborted.to_bytes(cut.base_offset, end);
                txn_index::write(cut.path(), &aborted).await?;
            }
            Cut::Reset(start) => {
                let segment = Rc::new(Segment::create(&self.dir, start).await?);
                self.state.borrow_mut().segments.insert(start, segment);
                fs::write_file_atomic(&self.dir.join(LOG_START), start.to_string().as_bytes())
                    .await?;
            }
        }
        // Roll snapshots past the cut describe batches that are gone: a recovery must not load
        // one once the log has grown past its offset again. (Rolls write them while sealing,
        // which is done above.)
        let kept = match cut {
            Cut::Truncate(end) => end,
            Cut::Reset(_) => i64::MIN,
        };
        for file in fs::list_dir(&self.dir).await? {
            if parse_roll_snapshot_name(&file).is_some_and(|o| o > kept) {
                fs::remove_file(&file).await?;
            }
        }
        fs::sync_dir(&self.dir).await?;
        let mut st = self.state.borrow_mut();
        // Batches appended since the cut are in `max_timestamp` already.
        st.max_timestamp = st
            .segments
            .values()
            .map(|s| (s.max_timestamp(), s.base_offset))
            .chain([st.max_timestamp])
            .max_by_key(|&(ts, _)| ts)
            .unwrap_or((-1, -1));
        st.compacted_upto = st.compacted_upto.min(st.written);
        st.cut = None;
        tracing::info!(dir = %self.dir.display(), ?cut, "cut the log");
        Ok(())
    }

    /// After a failed write, with none in flight: the active segment forgets the writes that
    /// did not complete, and the file is cut where the written data ends.
    async fn reset_active_segment(&self) -> io::Result<()> {
        // The flag stays up until the reset is done: an issuer seeing it waits (`drain`).
        if self.state.borrow().reset_active {
            self.active().reset_to_committed().await?;
            self.state.borrow_mut().reset_active = false;
        }
        Ok(())
    }

    /// Writes everything pending and waits for every write in flight. Caller holds the write
    /// lock.
    async fn write_all(&self) -> Result<(), LogError> {
        while let Some(write) = self.issue().await? {
            self.complete(write).await?;
        }
        Ok(self.drain().await?)
    }

    fn active(&self) -> Rc<Segment> {
        self.state
            .borrow()
            .segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
            .clone()
    }

    /// Rolls when a batch of `incoming` bytes would take the active segment past
    /// segment.bytes, or the segment is older than segment.ms.
    async fn roll_if_due(&self, incoming: u64) -> io::Result<()> {
        let active = self.active();
        let config = self.config.borrow().clone();
        let due = active.end() > 0
            && (active.end() + incoming > config.segment_bytes
                || active.age() >= config.segment_ms);
        if !due {
            return Ok(());
        }
        self.roll().await
    }

    /// Starts a new segment where the active one ends (later batches go to the new one) and
    /// seals the old one in the background. Caller holds the write lock.
    async fn roll(&self) -> io::Result<()> {
        self.drain().await?;
        let active = self.active();
        // Where the old segment ends (no write is in flight: that is `written`).
        let base = active.next_offset();
        let segment = Rc::new(Segment::create(&self.dir, base).await?);
        // The producer state of the batches before `base` (appended ones past it may wait).
        let snapshot = {
            let mut st = self.state.borrow_mut();
            st.segments.insert(base, segment);
            let mut producers = st.producers.clone();
            producers.truncate_from(base);
            active.set_aborted(st.aborted.to_bytes(active.base_offset, base));
            producers.to_bytes()
        };
        self.sealer.rolled.borrow_mut().push(Rolled {
            segment: active,
            end: base,
            snapshot: Rc::new(snapshot),
        });
        let sealer = self.sealer.clone();
        glommio::spawn_local(async move {
            if let Err(error) = sealer.seal_rolled().await {
                tracing::error!(dir = %sealer.dir.display(), %error, "sealing a rolled segment failed; syncs cover it until a later seal succeeds");
            }
        })
        .detach();
        Ok(())
    }

    /// Syncs written data if `flush.ms` has passed since the last sync (called periodically).
    pub async fn flush_if_due(&self) -> Result<(), LogError> {
        let due = {
            let st = self.state.borrow();
            let flush_ms = self.config.borrow().flush_ms;
            st.next_offset > st.synced && flush_ms.is_some_and(|ms| st.last_sync.elapsed() >= ms)
        };
        if !due {
            return Ok(());
        }
        {
            let _permit = take(&self.write_lock).await?;
            self.write_all().await?;
        }
        let written = self.state.borrow().written;
        self.sync_upto(written - 1).await
    }

    /// Moves the log start offset to `offset` (DeleteRecords; -1: the high watermark) and
    /// deletes segments that hold only older records. Returns the new log start offset.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, LogError> {
        let (start, end) = (self.log_start_offset(), self.high_watermark());
        let offset = if offset == -1 { end } else { offset };
        if offset < 0 || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset > start {
            fs::write_file_atomic(&self.dir.join(LOG_START), offset.to_string().as_bytes()).await?;
            self.state.borrow_mut().log_start = offset;
        }
        self.delete_segments_below_start().await?;
        Ok(self.state.borrow().log_start)
    }

    /// Forgets idempotent producers last heard from before `now_ms - expiration_ms`
    /// (`producer.id.expiration.ms`). Returns how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.state
            .borrow_mut()
            .producers
            .expire(now_ms, expiration_ms)
    }

    /// Applies `retention.ms` and `retention.bytes` to closed segments (rolling the active
    /// segment first when all of it has expired). Returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let config = self.config.borrow().clone();
        if !config.delete_enabled
            || (config.retention_ms.is_none() && config.retention_bytes.is_none())
        {
            return Ok(0);
        }
        let expired = |max_ts: i64| {
            config
                .retention_ms
                .is_some_and(|ms| max_ts >= 0 && max_ts < now_ms - ms.as_millis() as i64)
        };
        let active = self.active();
        if active.size() > 0 && expired(active.max_timestamp()) {
            let _permit = take(&self.write_lock).await?;
            self.write_all().await?;
            self.roll().await?;
        }
        let segments = self.settled_segments();
        let closed = closed_below(&segments, self.high_watermark());
        let mut total: u64 = segments.iter().map(|s| s.size()).sum();
        let mut new_start = None;
        for (i, segment) in closed.iter().enumerate() {
            let over_size = config.retention_bytes.is_some_and(|limit| total > limit);
            if !(expired(segment.max_timestamp()) || over_size) {
                break;
            }
            total -= segment.size();
            new_start = Some(segments[i + 1].base_offset);
        }
        let Some(new_start) = new_start else {
            return Ok(0);
        };
        {
            let mut st = self.state.borrow_mut();
            st.log_start = st.log_start.max(new_start);
        }
        self.delete_segments_below_start().await
    }

    /// Compacts the closed segments (cleanup.policy=compact): keeps the newest record per
    /// key, drops tombstones, and markers of transactions with no records left, older than
    /// delete.retention.ms. Returns records removed.
    pub async fn compact(&self, now_ms: i64) -> Result<usize, LogError> {
        let config = self.config.borrow().clone();
        if !config.compact_enabled {
            return Ok(0);
        }
        let segments = self.settled_segments();
        // Below the last stable offset: an open transaction may still abort.
        let closed = closed_below(&segments, self.last_stable_offset());
        // As Kafka's cleaner: closed segments are compactable once their newest record is
        // min.compaction.lag.ms old; they are compacted when min.cleanable.dirty.ratio of them
        // is dirty, or when a dirty record is older than max.compaction.lag.ms.
        let lag_ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let compactable_until = now_ms.saturating_sub(lag_ms(config.min_compaction_lag));
        let compactable = closed
            .iter()
            .take_while(|s| s.max_timestamp() <= compactable_until)
            .count();
        let closed = &closed[..compactable];
        let dirty_end = closed.last().map_or(0, |s| s.next_offset());
        let compacted_upto = self.state.borrow().compacted_upto;
        if closed.is_empty() || dirty_end <= compacted_upto {
            return Ok(0);
        }
        let dirty: Vec<&Rc<Segment>> = closed
            .iter()
            .filter(|s| s.next_offset() > compacted_upto)
            .collect();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size()).sum();
        let all_bytes: u64 = closed.iter().map(|s| s.size()).sum();
        let ratio = dirty_bytes as f64 / all_bytes.max(1) as f64;
        if ratio < config.min_cleanable_dirty_ratio {
            // Not dirty enough: only a dirty record past max.compaction.lag.ms makes it due.
            let first = match dirty.first() {
                Some(s) => s.first_timestamp().await?,
                None => None,
            };
            let overdue = first.is_some_and(|first| {
                now_ms.saturating_sub(first) >= lag_ms(config.max_compaction_lag)
            });
            if !overdue {
                return Ok(0);
            }
        }
        // A seal in progress would write index files over a replacement's.
        self.sealer.seal_rolled().await?;
        // As Kafka's cleaner: index the keys of the dirty segments, oldest first, while the
        // map stays within its budget (at least one segment); then clean every segment up to
        // the last one indexed. A later round goes on from there.
        let aborted = {
            let st = self.state.borrow();
            let end = closed.last().map_or(0, |s| s.next_offset());
            crate::compaction::AbortedRanges::new(&st.aborted.overlapping(st.log_start, end))
        };
        let mut map = crate::compaction::OffsetMap::new();
        let mut map_bytes = 0;
        let mut cleanable = 0;
        for segment in closed {
            if segment.next_offset() > compacted_upto {
                if map_bytes > config.compaction_map_bytes {
                    break;
                }
                map_bytes += self.index_segment(segment, &aborted, &mut map).await?;
            }
            cleanable += 1;
        }
        let closed = &closed[..cleanable];
        let indexed_end = closed.last().map_or(0, |s| s.next_offset());
        let horizon = now_ms - config.delete_retention_ms.as_millis() as i64;
        let mut removed = 0;
        let mut txns = crate::compaction::Transactions::default();
        for segment in closed {
            txns.removed_aborts.clear();
            let Some((replacement, counts)) = self
                .clean_segment(segment, &aborted, &map, horizon, &mut txns)
                .await?
            else {
                continue;
            };
            // DeleteRecords may have dropped the segment meanwhile: its replacement must not
            // bring it back.
            let held = |st: &State| {
                st.segments
                    .get(&segment.base_offset)
                    .is_some_and(|s| Rc::ptr_eq(s, segment))
            };
            if !held(&self.state.borrow()) {
                replacement.abandon().await?;
                continue;
            }
            if !txns.removed_aborts.is_empty() {
                // The index first: the removed markers' transactions have no records left, so
                // a crash before the swap leaves markers that end nothing, which readers skip.
                let entries = self.state.borrow().aborted.to_bytes_without(
                    segment.base_offset,
                    segment.next_offset(),
                    &txns.removed_aborts,
                );
                txn_index::write(segment.path(), &entries).await?;
            }
            let replacement = segment
                .replace(&self.dir, replacement, config.index_interval_bytes)
                .await?;
            if held(&self.state.borrow()) {
                let mut st = self.state.borrow_mut();
                st.segments
                    .insert(segment.base_offset, Rc::new(replacement));
                for &marker in &txns.removed_aborts {
                    st.aborted.remove(marker);
                }
                removed += counts.removed;
            } else {
                replacement.remove().await?;
            }
        }
        {
            let mut st = self.state.borrow_mut();
            st.compacted_upto = indexed_end;
            // Readers must see the compacted segments, not the cached originals.
            st.cache.drop_before(indexed_end);
        }
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, "compacted");
        }
        Ok(removed)
    }

    /// Adds a segment's keys to `map`, a chunk of batches at a time, giving the shard back
    /// between batches; returns the bytes its new keys take.
    async fn index_segment(
        &self,
        segment: &Segment,
        aborted: &crate::compaction::AbortedRanges,
        map: &mut crate::compaction::OffsetMap,
    ) -> Result<usize, LogError> {
        let mut added = 0;
        let mut pos = 0;
        let mut slices = Slices::new();
        while let Some(data) = segment.read_batches(pos, COMPACTION_CHUNK).await? {
            for (at, header) in batch::headers(&data) {
                let one = &data[at..at + header.total_len()];
                added += crate::compaction::index_batch(one, &header, aborted, map)?;
                slices.next().await;
            }
            pos += data.len() as u64;
        }
        Ok(added)
    }

    /// Writes what compaction keeps of a segment to its replacement, a batch at a time; the
    /// replacement is started at the first batch that loses records (the bytes before it
    /// copied as they are). `None` when the segment loses nothing.
    async fn clean_segment(
        &self,
        segment: &Segment,
        aborted: &crate::compaction::AbortedRanges,
        map: &crate::compaction::OffsetMap,
        horizon: i64,
        txns: &mut crate::compaction::Transactions,
    ) -> Result<Option<(crate::segment::Replacement, crate::compaction::Counts)>, LogError> {
        let mut replacement = None;
        let mut counts = crate::compaction::Counts::default();
        let mut kept = Vec::new();
        let mut pos = 0;
        let mut slices = Slices::new();
        let result: Result<(), LogError> = async {
            while let Some(data) = segment.read_batches(pos, COMPACTION_CHUNK).await? {
                for (at, header) in batch::headers(&data) {
                    let one = &data[at..at + header.total_len()];
                    kept.clear();
                    let c = crate::compaction::clean_batch(
                        one, &header, aborted, map, horizon, txns, &mut kept,
                    )?;
                    counts.kept += c.kept;
                    counts.removed += c.removed;
                    if c.removed > 0 && replacement.is_none() {
                        let mut r = segment.start_replacement(&self.dir).await?;
                        let res = segment.copy_to(&mut r, 0, pos + at as u64).await;
                        replacement = Some(r);
                        res?;
                    }
                    if let Some(r) = &mut replacement {
                        r.write(&kept).await?;
                    }
                    slices.next().await;
                }
                pos += data.len() as u64;
            }
            Ok(())
        }
        .await;
        match (result, replacement) {
            (Ok(()), replacement) => Ok(replacement.map(|r| (r, counts))),
            (Err(e), Some(r)) => {
                let _ = r.abandon().await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// The segments, or none while a truncation is still to be applied to them.
    fn settled_segments(&self) -> Vec<Rc<Segment>> {
        let st = self.state.borrow();
        match st.cut {
            Some(_) => Vec::new(),
            None => st.segments.values().cloned().collect(),
        }
    }

    /// Deletes closed segments whose records are all below the log start offset.
    async fn delete_segments_below_start(&self) -> Result<usize, LogError> {
        // A seal in progress would write the index files of a deleted segment.
        self.sealer.seal_rolled().await?;
        let doomed: Vec<Rc<Segment>> = {
            let mut st = self.state.borrow_mut();
            let start = st.log_start;
            st.aborted.forget_below(start);
            let bases: Vec<i64> = st.segments.keys().copied().collect();
            let mut doomed = Vec::new();
            for pair in bases.windows(2) {
                if pair[1] <= start {
                    doomed.extend(st.segments.remove(&pair[0]));
                }
            }
            doomed
        };
        for segment in &doomed {
            segment.remove().await?;
            tracing::info!(dir = %self.dir.display(), base = segment.base_offset, "deleted segment");
        }
        Ok(doomed.len())
    }

    /// Whole batches from the one holding `offset`, at most `max_bytes` (the first one even if
    /// larger, when `min_one`, as KIP-74 asks), below the high watermark: what a consumer may
    /// read. Empty at the high watermark.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Bytes, LogError> {
        Ok(self
            .read_records(offset, max_bytes, min_one)
            .await?
            .into_bytes()
            .await?)
    }

    /// Like [`read`](Self::read), but hands out the batches as they are held: shared cache
    /// buffers, or a range of a segment file, ready to go to a socket without a copy.
    pub async fn read_records(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Records, LogError> {
        let hw = self.high_watermark();
        self.read_upto(offset, max_bytes, min_one, hw).await
    }

    /// Like [`read_records`](Self::read_records), but up to offset `upto` (a batch boundary
    /// at most the log end): replication reads past the high watermark.
    pub async fn read_upto(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        upto: i64,
    ) -> Result<Records, LogError> {
        let segment = {
            let st = self.state.borrow();
            if offset < st.log_start || offset > st.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: st.log_start,
                    end: st.next_offset,
                });
            }
            if offset >= upto {
                return Ok(Records::default());
            }
            if let Some(records) = st.cache.read(offset, max_bytes, min_one, upto) {
                return Ok(records);
            }
            st.segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s.clone())
                .expect("offset >= log start has a segment")
        };
        // Files hold nothing of use from `written` on (the cache has it), and may still hold
        // batches a truncation removed.
        let upto = upto.min(self.state.borrow().written);
        let mut segment = segment;
        loop {
            if let Some(range) = segment.read(offset, max_bytes, min_one, upto).await? {
                let mut records = Records::default();
                records.push(Chunk::File(range));
                return Ok(records);
            }
            // Nothing at or after `offset` here (compaction can empty whole segments): go on
            // with the next segment, if any.
            let next = self
                .state
                .borrow()
                .segments
                .range(segment.base_offset + 1..)
                .next()
                .map(|(_, s)| s.clone());
            match next {
                Some(s) => segment = s,
                None => return Ok(Records::default()),
            }
        }
    }

    /// Whole batches from the one starting at `offset` to the log end, at most `max_bytes`
    /// after the first, each as one buffer, if the batch cache holds them (replication reads
    /// recent batches from memory; `None` sends it to the files). Batches a leader appended
    /// through [`Self::append`] are joined from their two parts (a copy); replicated logs
    /// append whole batches.
    pub fn read_cached(&self, offset: i64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let st = self.state.borrow();
        if offset >= st.next_offset {
            return Some(Vec::new());
        }
        st.cache.batches_from(offset, max_bytes)
    }

    /// Writes what is pending and makes the log durable up to `end` (exclusive). Fails if a
    /// truncation or a failed write removed part of it meanwhile.
    pub async fn sync_to(&self, end: i64) -> Result<(), LogError> {
        if self.state.borrow().synced >= end {
            return Ok(());
        }
        if self.state.borrow().written < end {
            let _permit = take(&self.write_lock).await?;
            self.write_all().await?;
        }
        if self.state.borrow().written < end {
            return Err(LogError::WriteFailed);
        }
        self.sync_upto(end - 1).await?;
        match self.state.borrow().synced >= end {
            true => Ok(()),
            false => Err(LogError::WriteFailed),
        }
    }

    /// First record below the high watermark with timestamp >= `ts`: `(timestamp, offset)`,
    /// `None` if there is none.
    pub async fn find_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let hw = self.high_watermark();
        // Batches a truncation removed may still be in the files: they are past `hw`.
        let segments: Vec<Rc<Segment>> = self.state.borrow().segments.values().cloned().collect();
        for segment in segments {
            if segment.base_offset >= hw {
                break;
            }
            if let Some(found) = segment.find_timestamp(ts).await? {
                return Ok(Some(found).filter(|&(_, offset)| offset < hw));
            }
        }
        Ok(None)
    }

    /// `(max timestamp, offset of the first record with it)`, for ListOffsets
    /// MAX_TIMESTAMP; `None` for an empty log.
    pub async fn max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        let (ts, _) = self.state.borrow().max_timestamp;
        if ts < 0 {
            return Ok(None);
        }
        self.find_timestamp(ts).await
    }
    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start
    }

    /// Bytes of the log's segment files (DescribeLogDirs' partition size).
    pub fn size_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .values()
            .map(|s| s.size())
            .sum()
    }
    /// Offsets below this are durable (written and fdatasync'ed).
    pub fn synced_offset(&self) -> i64 {
        self.state.borrow().synced
    }

    /// The log end offset (next offset to be assigned).
    pub fn end_offset(&self) -> i64 {
        self.state.borrow().next_offset
    }

    /// A listener that fires when the high watermark next moves (for long-polling fetches).
    pub fn listen(&self) -> EventListener {
        self.advanced.listen()
    }

    /// Writes everything pending, seals the active segment and leaves the clean-shutdown mark,
    /// so the next open trusts the files without scanning.
    pub async fn close(&self) -> Result<(), LogError> {
        let _permit = take(&self.write_lock).await?;
        self.write_all().await?;
        // Sealing syncs; waiting for the sync lock lets a sync in progress finish first.
        let _sync = self.sync_lock.acquire_permit(1).await.ok();
        self.sealer.seal_rolled().await?;
        let active = self.active();
        active.set_aborted(
            self.state
                .borrow()
                .aborted
                .to_bytes(active.base_offset, i64::MAX),
        );
        active.seal().await?;
        let snapshot = self.state.borrow().producers.to_bytes();
        fs::write_file(&self.dir.join(PRODUCER_SNAPSHOT), &snapshot).await?;
        fs::write_file(&self.dir.join(CLEAN_MARKER), b"").await?;
        self.write_lock.close();
        Ok(())
    }

    /// Deletes the log's files. The log must not be used afterwards.
    pub async fn remove(&self) -> io::Result<()> {
        let _permit = self.write_lock.acquire_permit(1).await.ok();
        self.write_lock.close();
        // Writes still in flight complete (or fail) into files about to go.
        let _ = self.drain().await;
        self.sealer.forget().await;
        fs::remove_dir_all(&self.dir).await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
