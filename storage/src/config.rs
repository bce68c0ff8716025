//! Per-partition log settings, derived from the topic's configs (Kafka names) and broker defaults.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment once it is this large.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment once it is this old.
    pub segment_ms: Duration,
    /// `index.interval.bytes`: bytes between offset index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type=LogAppendTime`.
    pub log_append_time: bool,
    /// Bytes of recent batches kept in memory per partition for tail reads.
    pub cache_bytes: usize,
    /// `retention.ms`: delete closed segments whose newest record is older (None: keep).
    pub retention_ms: Option<Duration>,
    /// `retention.bytes`: delete the oldest closed segments beyond this size (None: keep).
    pub retention_bytes: Option<u64>,
    /// `cleanup.policy` includes `delete` (retention applies).
    pub delete_enabled: bool,
    /// `cleanup.policy` includes `compact`.
    pub compact_enabled: bool,
    /// `delete.retention.ms`: how long tombstones survive compaction.
    pub delete_retention_ms: Duration,
    /// `min.compaction.lag.ms`: records newer than this are not compacted yet.
    pub min_compaction_lag: Duration,
    /// `max.compaction.lag.ms`: a record not compacted after this is compacted whatever the
    /// dirty ratio.
    pub max_compaction_lag: Duration,
    /// `min.cleanable.dirty.ratio`: compact when this share of the cleanable log is dirty.
    pub min_cleanable_dirty_ratio: f64,
    /// Compaction's key map may grow past this many bytes only while it indexes its first
    /// dirty segment; later segments wait for the next round (Kafka's
    /// `log.cleaner.dedupe.buffer.size`).
    pub compaction_map_bytes: usize,
    /// `flush.ms`: fdatasync written data at least this often (None: only as acks ask).
    pub flush_ms: Option<Duration>,
    /// `flush.messages`: fdatasync after this many unsynced records (None: only as acks ask).
    pub flush_messages: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            log_append_time: false,
            cache_bytes: 8 << 20,
            retention_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            delete_enabled: true,
            compact_enabled: false,
            delete_retention_ms: Duration::from_secs(24 * 3600),
            min_compaction_lag: Duration::ZERO,
            max_compaction_lag: Duration::from_millis(i64::MAX as u64),
            min_cleanable_dirty_ratio: 0.5,
            compaction_map_bytes: 64 << 20,
            flush_ms: None,
            flush_messages: None,
        }
    }
}
