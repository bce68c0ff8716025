//! Partition log tests on a real glommio executor and real files.

use crate::log::{Durability, LogError, PartitionLog};
use crate::LogConfig;
use kafka_protocol::records::Compression;
use std::path::Path;
use tern_protocol::batch;
use tern_protocol::markers::Marker;

/// Producer `producer_id`'s marker at `producer_epoch` from coordinator epoch 0.
fn marker(producer_id: i64, producer_epoch: i16, commit: bool) -> Marker {
    Marker {
        producer_id,
        producer_epoch,
        commit,
        coordinator_epoch: 0,
    }
}

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    run_with(f)
}

/// [`run`], returning what the future returns.
fn run_with<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("join")
}

/// A client-encoded batch of `n` records with timestamps `ts0 + i`.
fn client_batch(n: usize, ts0: i64, value_len: usize) -> Vec<u8> {
    let records: Vec<_> = (0..n)
        .map(|i| {
            let key = Some(format!("k{i}").into_bytes().into());
            batch::plain_record(
                i as i64,
                ts0 + i as i64,
                key,
                Some(vec![b'x'; value_len].into()),
            )
        })
        .collect();
    batch::encode_plain(&records, Compression::None)
        .unwrap()
        .to_vec()
}

/// A fresh partition directory; it lives as long as the returned TempDir.
fn partition_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    (tmp, dir)
}

/// A partition directory holding a log of `batches` batches (of 5 records, default settings)
/// that was never closed cleanly, as a crash leaves it.
fn crashed_partition(batches: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, LogConfig::default()).await.unwrap();
        fill(&log, batches).await;
    });
    (tmp, dir)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 1024,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// Default settings, but no batch cache: every read goes to the segment files.
fn uncached() -> LogConfig {
    LogConfig {
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// Appends `batches` batches of 5 records of ~100 bytes each; timestamps 1000 + offset.
async fn fill(log: &PartitionLog, batches: usize) {
    for _ in 0..batches {
        let next = log.end_offset();
        let a = log
            .append(client_batch(5, 1000 + next, 100).into(), 0)
            .unwrap();
        assert_eq!(a.base_offset, next);
        log.wait(&a, Durability::Synced).await.unwrap();
    }
}

/// Reads every batch from offset 0 and returns the record offsets covered, in order.
async fn read_all(log: &PartitionLog) -> Vec<i64> {
    let mut offsets = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let data = log.read(next, 3000, true).await.unwrap();
        if data.is_empty() {
            break;
        }
        for (_, h) in batch::headers(&data) {
            batch::validate(&data[..]).ok();
            offsets.extend(h.base_offset..=h.last_offset());
            next = h.last_offset() + 1;
        }
    }
    offsets
}

fn dir_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn appends_roll_and_read_back_across_segments() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        fill(&log, 60).await;
        assert_eq!(log.end_offset(), 300);
        assert!(dir_files(&dir, "log").len() > 3, "rolled at segment.bytes");
        assert_eq!(read_all(&log).await, (0..300).collect::<Vec<_>>());
        // A read in the middle of a batch returns that whole batch.
        let data = log.read(102, 10, true).await.unwrap();
        let (_, h) = batch::headers(&data).next().unwrap();
        assert_eq!(h.base_offset, 100);
        assert!(matches!(
            log.read(301, 10, true).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(300, 10, true).await.unwrap().is_empty());
        assert_eq!(
            log.find_timestamp(1000 + 123).await.unwrap(),
            Some((1123, 123))
        );
        assert_eq!(log.find_timestamp(99_999).await.unwrap(), None);
        log.close().await.unwrap();
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert_eq!(log.end_offset(), 300);
        assert_eq!(read_all(&log).await, (0..300).collect::<Vec<_>>());
        assert_eq!(
            log.append(client_batch(1, 5000, 10).into(), 0)
                .unwrap()
                .base_offset,
            300
        );
    });
}

#[test]
fn cold_reads_are_file_ranges_of_whole_batches_and_tail_reads_share_cache_buffers() {
    use crate::records::Chunk;
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            index_interval_bytes: 1024,
            cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, config.clone()).await.unwrap();
        fill(&log, 40).await;
        let batch_len = log.read(0, 1, true).await.unwrap().len();
        for (offset, max) in [(0, 1), (7, 5000), (0, 1 << 20), (120, 3 * batch_len + 1)] {
            let records = log.read_records(offset, max, true).await.unwrap();
            let chunks = records.clone().into_chunks();
            assert!(
                matches!(chunks.as_slice(), [Chunk::File(_)]),
                "one file range"
            );
            assert!(records.len() <= max.max(batch_len));
            let data = records.into_bytes().await.unwrap();
            let headers: Vec<_> = batch::headers(&data).map(|(_, h)| h).collect();
            let whole: usize = headers.iter().map(|h| h.total_len()).sum();
            assert_eq!(whole, data.len(), "ends at a batch boundary");
            assert!(headers[0].base_offset <= offset && offset <= headers[0].last_offset());
        }
        // Far below the budget's index boundary the range still reaches it.
        let records = log.read_records(0, 5000, true).await.unwrap();
        assert!(records.len() > 5000 - 2 * 1024 - batch_len);
        // Without min_one, a first batch over the budget is not returned.
        assert!(log.read_records(0, 1, false).await.unwrap().is_empty());
        log.close().await.unwrap();

        let log = PartitionLog::open(
            &dir,
            LogConfig {
                cache_bytes: 1 << 20,
                ..config
            },
        )
        .await
        .unwrap();
        fill(&log, 3).await;
        let tail = log.read_records(200, 1 << 20, true).await.unwrap();
        let chunks = tail.into_chunks();
        assert_eq!(
            chunks.len(),
            6,
            "three cached batches (header, rest), not one copy"
        );
        assert!(chunks.iter().all(|c| matches!(c, Chunk::Memory(_))));
    });
}

#[test]
fn a_group_commit_larger_than_a_segment_spans_segments_named_by_their_first_offset() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        // Appended without waiting: all of them go out in one write.
        let appended: Vec<_> = (0..40)
            .map(|i| {
                log.append(client_batch(5, 1000 + i, 100).into(), 0)
                    .unwrap()
            })
            .collect();
        log.wait(appended.last().unwrap(), Durability::Synced)
            .await
            .unwrap();
        let segments = dir_files(&dir, "log");
        assert!(segments.len() > 3);
        for path in &segments {
            let data = std::fs::read(path).unwrap();
            let batches: usize = batch::headers(&data).map(|(_, h)| h.total_len()).sum();
            assert!(batches as u64 <= small_segments().segment_bytes);
            let (_, first) = batch::headers(&data).next().unwrap();
            let name: i64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(name, first.base_offset);
        }
        assert_eq!(read_all(&log).await, (0..200).collect::<Vec<_>>());
    });
}

#[test]
fn recovery_truncates_torn_and_corrupt_tails() {
    let (_tmp, dir) = crashed_partition(10); // 50 records
    let seg = dir_files(&dir, "log").pop().unwrap();
    // Flip a byte inside the 8th batch: recovery keeps the first 7 batches (35 records).
    let mut data = std::fs::read(&seg).unwrap();
    let positions: Vec<usize> = batch::headers(&data).map(|(p, _)| p).collect();
    assert_eq!(positions.len(), 10);
    data[positions[7] + 70] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, LogConfig::default()).await.unwrap();
        assert_eq!(log.end_offset(), 35);
        assert_eq!(read_all(&log).await, (0..35).collect::<Vec<_>>());
        // Appends continue right after the last good batch.
        let a = log.append(client_batch(5, 1, 100).into(), 0).unwrap();
        assert_eq!(a.base_offset, 35);
        log.wait(&a, Durability::Written).await.unwrap();
    });
    // Half-written last batch.
    let data = std::fs::read(&seg).unwrap();
    let positions: Vec<usize> = batch::headers(&data).map(|(p, _)| p).collect();
    let last = *positions.last().unwrap();
    std::fs::write(&seg, &data[..last + 30]).unwrap();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, LogConfig::default()).await.unwrap();
        assert_eq!(log.end_offset(), 35);
        assert_eq!(read_all(&log).await, (0..35).collect::<Vec<_>>());
    });
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        fill(&log, 40).await;
        log.close().await.unwrap();
    });
    let indexes = dir_files(&dir, "index");
    assert!(indexes.len() > 2);
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], b"garbage").unwrap();
    std::fs::write(dir_files(&dir, "timeindex")[2].clone(), [0xffu8; 24]).unwrap();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert_eq!(log.end_offset(), 200);
        assert_eq!(read_all(&log).await, (0..200).collect::<Vec<_>>());
        assert_eq!(
            log.find_timestamp(1000 + 77).await.unwrap(),
            Some((1077, 77))
        );
    });
}

#[test]
fn rejects_bad_batches_without_touching_the_log() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            max_message_bytes: 2000,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let mut bad = client_batch(3, 0, 10);
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(
            log.append(bad.clone().into(), 0),
            Err(LogError::Batch(_))
        ));
        assert!(matches!(
            log.append(client_batch(30, 0, 100).into(), 0),
            Err(LogError::Batch(_))
        ));
        assert_eq!(log.end_offset(), 0);
        let a = log.append(client_batch(3, 0, 10).into(), 0).unwrap();
        assert_eq!((a.base_offset, a.last_offset), (0, 2));
    });
}

#[test]
fn log_append_time_is_stamped() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            log_append_time: true,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let a = log.append(client_batch(3, 5, 10).into(), 777).unwrap();
        assert_eq!(a.log_append_time, 777);
        log.wait(&a, Durability::Written).await.unwrap();
        let data = log.read(0, 1 << 20, true).await.unwrap();
        let h = batch::validate(&data).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 777);
    });
}

#[test]
fn retention_by_bytes_and_time_deletes_whole_closed_segments() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            retention_ms: None,
            retention_bytes: Some(20_000),
            ..small_segments()
        };
        let log = PartitionLog::open(&dir, config.clone()).await.unwrap();
        fill(&log, 100).await; // ~60 KB in ~8 KB segments; timestamps 1000 + offset
        let before = dir_files(&dir, "log").len();
        let deleted = log.enforce_retention(0).await.unwrap();
        assert!(deleted > 0 && dir_files(&dir, "log").len() == before - deleted);
        let start = log.log_start_offset();
        assert!(start > 0 && start < 500);
        assert!(matches!(
            log.read(0, 100, true).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let remaining = read_all(&log).await;
        assert_eq!(remaining.first(), Some(&start));
        assert_eq!(remaining.last(), Some(&499));
        // By time: everything with timestamps below 1000 + 400 is older than 1 ms at now=1400.
        log.set_config(LogConfig {
            retention_ms: Some(std::time::Duration::from_millis(1)),
            retention_bytes: None,
            ..config.clone()
        });
        log.enforce_retention(1000 + 400).await.unwrap();
        let start = log.log_start_offset();
        assert!((300..=400).contains(&start), "start {start}");
        // When everything expired, the active segment is rolled and deleted too.
        log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert_eq!(log.log_start_offset(), 500);
        assert!(read_all(&log).await.is_empty());
        assert_eq!(
            log.append(client_batch(1, 1, 10).into(), 0)
                .unwrap()
                .base_offset,
            500
        );
    });
}

#[test]
fn delete_records_moves_the_start_and_survives_restart() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        fill(&log, 40).await;
        assert_eq!(log.delete_records(123).await.unwrap(), 123);
        assert!(matches!(
            log.delete_records(1000).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.delete_records(10).await.unwrap(),
            123,
            "never moves back"
        );
        let data = log.read(123, 100, true).await.unwrap();
        assert!(!data.is_empty());
        assert!(matches!(
            log.read(122, 100, true).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
    });
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        assert_eq!(log.log_start_offset(), 123);
        assert_eq!(log.delete_records(-1).await.unwrap(), 200);
        assert!(read_all(&log).await.is_empty());
    });
}

#[test]
fn flush_messages_syncs_without_acks_all() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            flush_messages: Some(10),
            flush_ms: Some(std::time::Duration::from_millis(0)),
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let a = log.append(client_batch(5, 0, 10).into(), 0).unwrap();
        log.wait(&a, Durability::Written).await.unwrap();
        assert_eq!(
            log.synced_offset(),
            0,
            "5 records < flush.messages: written, not synced"
        );
        // flush.ms = 0: the periodic check syncs at once.
        log.flush_if_due().await.unwrap();
        assert_eq!(log.synced_offset(), 5);
        let b = log.append(client_batch(12, 0, 10).into(), 0).unwrap();
        log.wait(&b, Durability::Written).await.unwrap();
        assert_eq!(
            log.synced_offset(),
            17,
            "12 unsynced records >= flush.messages: synced with the write"
        );
    });
}

#[test]
fn compaction_keeps_the_newest_record_per_key_and_survives_a_crash_mid_swap() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let config = LogConfig {
            compact_enabled: true,
            delete_enabled: false,
            cache_bytes: 1 << 20,
            ..small_segments()
        };
        let log = PartitionLog::open(&d, config).await.unwrap();
        fill(&log, 60).await; // every batch writes keys k0..k4 again
        let before = read_all(&log).await;
        // The clock is past every record (timestamps 1000 + offset), under delete.retention.ms.
        let now = 10_000;
        let removed = log.compact(now).await.unwrap();
        assert!(removed > 0);
        let after = read_all(&log).await;
        assert!(after.len() < before.len());
        assert!(
            after.windows(2).all(|w| w[0] < w[1]),
            "offsets still increasing"
        );
        assert_eq!(
            *after.last().unwrap(),
            299,
            "the active segment is untouched"
        );
        // In the closed segments, each key survives once: at most 5 records before the active one.
        let active_base = *dir_files(&d, "log")
            .last()
            .unwrap()
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<i64>()
            .as_ref()
            .unwrap();
        assert!(after.iter().filter(|&&o| o < active_base).count() <= 5);
        assert_eq!(log.compact(now).await.unwrap(), 0, "nothing new to compact");
        log.close().await.unwrap();
    });
    // A compaction interrupted before its swap leaves a .cleaned file: ignored and removed.
    std::fs::write(dir.join("00000000000000000000.cleaned"), b"partial").unwrap();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert!(!dir.join("00000000000000000000.cleaned").exists());
        let all = read_all(&log).await;
        assert_eq!(
            all.last(),
            Some(&299),
            "end {} start {} files {:?}",
            log.end_offset(),
            log.log_start_offset(),
            dir_files(&dir, "log")
        );
    });
}

#[test]
fn recovery_after_a_zeroed_tail_page() {
    let (_tmp, dir) = crashed_partition(20); // ~12 KB
    let seg = dir_files(&dir, "log").pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let headers: Vec<(usize, i64, usize)> = batch::headers(&data)
        .map(|(p, h)| (p, h.base_offset, h.total_len()))
        .collect();
    let end = headers.last().map(|&(p, _, l)| p + l).unwrap();
    // The page holding the end of the log was lost (power cut): it reads back as zeros.
    let page = (end - 1) / 4096 * 4096;
    data[page..end].fill(0);
    std::fs::write(&seg, &data).unwrap();
    // Recovery keeps every batch that ends before the zeroed page.
    let expected = headers
        .iter()
        .filter(|&&(p, _, l)| p + l <= page)
        .map(|&(_, base, _)| base + 5)
        .max()
        .unwrap_or(0);
    run(move || async move {
        let log = PartitionLog::open(&dir, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.end_offset(), expected);
        assert_eq!(read_all(&log).await, (0..expected).collect::<Vec<_>>());
    });
}

#[test]
fn concurrent_waits_share_writes_and_syncs() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        // Appends interleaved with waits of both kinds, all in flight at once, across segment
        // rolls: every wait succeeds, and a synced wait returns only once its batch is synced.
        let waits = (0..40).map(|i| {
            let log = log.clone();
            async move {
                let a = log.append(client_batch(3, i, 200).into(), 0).unwrap();
                glommio::yield_if_needed().await;
                let durability = if i % 3 == 0 {
                    Durability::Synced
                } else {
                    Durability::Written
                };
                log.wait(&a, durability).await.unwrap();
                if durability == Durability::Synced {
                    assert!(log.synced_offset() > a.last_offset);
                }
                a.base_offset
            }
        });
        let mut bases = futures::future::join_all(waits).await;
        bases.sort();
        assert_eq!(bases, (0..40).map(|i| i * 3).collect::<Vec<_>>());
        let last = log.append(client_batch(1, 0, 10).into(), 0).unwrap();
        log.wait(&last, Durability::Synced).await.unwrap();
        assert_eq!(log.synced_offset(), 121);
        assert_eq!(read_all(&log).await, (0..121).collect::<Vec<_>>());
        // As after a crash (no clean close): recovery finds every batch whole, in order.
        let reopened = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert_eq!(read_all(&reopened).await, (0..121).collect::<Vec<_>>());
    });
}

#[test]
fn partitions_sharing_one_write_slot_all_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    run(move || async move {
        let slots = crate::write_slots::WriteSlots::new(1);
        let mut logs = Vec::new();
        for p in 0..3 {
            let log = PartitionLog::open(&root.join(format!("t-{p}")), small_segments())
                .await
                .unwrap();
            log.share_write_slots(slots.clone());
            logs.push(log);
        }
        // Appends to all partitions at once: they take turns writing, and whatever arrives
        // while a partition waits for the slot goes out in its next write.
        let waits = (0..30).map(|i| {
            let log = logs[i % 3].clone();
            async move {
                let a = log.append(client_batch(2, 0, 300).into(), 0).unwrap();
                log.wait(&a, Durability::Written).await.unwrap();
            }
        });
        futures::future::join_all(waits).await;
        for log in &logs {
            assert_eq!(read_all(log).await, (0..20).collect::<Vec<_>>());
        }
    });
}

#[test]
fn segment_files_grow_in_doubling_steps_and_are_cut_to_size_when_sealed() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = uncached();
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let file_size = || std::fs::metadata(&dir_files(&dir, "log")[0]).unwrap().len();
        let mut sizes = vec![];
        // About 70 MiB in batches of about 500 KiB.
        for _ in 0..140 {
            let a = log.append(client_batch(500, 1000, 1000).into(), 0).unwrap();
            log.wait(&a, Durability::Written).await.unwrap();
            if sizes.last() != Some(&file_size()) {
                sizes.push(file_size());
            }
        }
        let kib = |n: u64| n << 10;
        assert_eq!(
            sizes,
            [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072].map(kib)
        );
        let logical: u64 = log.read(0, u32::MAX as usize, true).await.unwrap().len() as u64;
        log.close().await.unwrap();
        assert_eq!(file_size(), logical);
        let reopened = PartitionLog::open(&dir, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(read_all(&reopened).await.len(), 140 * 500);
    });
}

#[test]
fn segment_files_are_not_preallocated_past_the_segment_size() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            segment_bytes: (6 << 20) + 100,
            ..uncached()
        };
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let file_sizes = || -> Vec<u64> {
            dir_files(&dir, "log")
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .collect()
        };
        let mut seen = vec![];
        // About 10 MiB in batches of about 500 KiB: the first segment rolls past 6 MiB.
        for _ in 0..20 {
            let a = log.append(client_batch(500, 1000, 1000).into(), 0).unwrap();
            log.wait(&a, Durability::Written).await.unwrap();
            let sizes = file_sizes();
            if sizes.len() == 1 && seen.last() != Some(&sizes[0]) {
                seen.push(sizes[0]);
            }
        }
        let mib = |n: u64| n << 20;
        assert_eq!(seen, [512 << 10, mib(1), mib(2), mib(4), mib(6) + 4096]);
        assert_eq!(file_sizes().len(), 2);
        // A batch larger than a whole segment still gets the room it needs.
        log.set_config(LogConfig {
            segment_bytes: 100 << 10,
            ..uncached()
        });
        let a = log.append(client_batch(500, 1000, 1000).into(), 0).unwrap();
        log.wait(&a, Durability::Written).await.unwrap();
        assert_eq!(file_sizes()[2], 512 << 10);
    });
}

#[test]
fn a_write_sends_its_new_pages_at_once_and_the_page_it_shares_after_the_previous_write() {
    use crate::records::StoredBatch;
    use crate::segment::Segment;
    use bytes::{Bytes, BytesMut};
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        std::fs::create_dir_all(&dir).unwrap();
        crate::fs::probe_direct_io(&dir).await.unwrap();
        let segment = std::rc::Rc::new(Segment::create(&dir, 0).await.unwrap());
        let stored = |base: i64, n: usize| {
            let client = Bytes::from(client_batch(n, 0, 300));
            let mut head = BytesMut::from(&client[..batch::HEADER_LEN]);
            batch::set_base_offset(&mut head, base);
            StoredBatch::new(head.freeze(), client.slice(batch::HEADER_LEN..))
        };
        let bytes = |b: &StoredBatch| [&b.head()[..], &b.rest()[..]].concat();
        // The first ends inside the first page; the second starts there and fills two more.
        let (first, second) = (stored(0, 5), stored(5, 25));
        let expected = [bytes(&first), bytes(&second)].concat();
        assert!(first.len() < 4096 && expected.len() > 2 * 4096);
        let w1 = segment
            .prepare(std::slice::from_ref(&first), u64::MAX)
            .await;
        let w2 = segment
            .prepare(std::slice::from_ref(&second), u64::MAX)
            .await;
        let second_done = std::rc::Rc::new(std::cell::Cell::new(false));
        let task = glommio::spawn_local({
            let (segment, second_done) = (segment.clone(), second_done.clone());
            async move {
                segment.write(w2).await.unwrap();
                second_done.set(true);
            }
        });
        // While the first write is not even sent, the second's whole pages reach the file
        // and its write does not finish: its first page waits.
        let path = dir_files(&dir, "log")[0].clone();
        let on_disk = |from: usize, to: usize| {
            std::fs::read(&path)
                .unwrap()
                .get(from..to)
                .map(<[u8]>::to_vec)
        };
        let mut waited = 0;
        while on_disk(4096, expected.len()).as_deref() != Some(&expected[4096..]) {
            assert!(
                waited < 10_000,
                "the second write's new pages never reached the file"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            waited += 10;
        }
        assert!(
            !second_done.get(),
            "the second write finished before the first was sent"
        );
        assert_ne!(on_disk(0, 4096).as_deref(), Some(&expected[..4096]));
        segment.write(w1).await.unwrap();
        task.await;
        assert!(second_done.get());
        segment.commit(std::slice::from_ref(&first), 1024);
        segment.commit(std::slice::from_ref(&second), 1024);
        let data = segment.read_batches(0, 1 << 20).await.unwrap().unwrap();
        assert_eq!(&data[..], &expected[..]);
        assert_eq!(on_disk(0, expected.len()).unwrap(), expected);
    });
}

#[test]
fn a_failed_write_fails_the_writes_in_flight_after_it_and_none_of_them_comes_back() {
    use crate::segment::{Latch, WRITE_GATE};
    use std::rc::Rc;
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = uncached();
        let log = PartitionLog::open(&dir, config.clone()).await.unwrap();
        let slots = crate::write_slots::WriteSlots::new(100);
        log.share_write_slots(slots.clone());
        // Five writes of one batch each (they share pages), all in flight at once: the third
        // fails (after its data is written), so it and the two after it are rolled back.
        let gate = Rc::new(Latch::default());
        WRITE_GATE.with(|g| *g.borrow_mut() = Some((gate.clone(), std::cell::Cell::new(2))));
        let mut waits = Vec::new();
        for i in 0..5 {
            let a = log.append(client_batch(5, i, 300).into(), 0).unwrap();
            let log = log.clone();
            waits.push(glommio::spawn_local(async move {
                log.wait(&a, Durability::Written).await
            }));
            // Its own write: issued before the next batch is appended.
            while slots.available() != 100 - (i as u64 + 1) {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        gate.open();
        let mut results = Vec::new();
        for w in waits {
            results.push(w.await.is_ok());
        }
        assert_eq!(results, [true, true, false, false, false]);
        assert_eq!(log.end_offset(), 10);
        assert_eq!(read_all(&log).await, (0..10).collect::<Vec<_>>());
        // As after a crash now: the rolled-back batches do not come back.
        let reopened = PartitionLog::open(&dir, config.clone()).await.unwrap();
        assert_eq!(read_all(&reopened).await, (0..10).collect::<Vec<_>>());
        // Writing goes on where the stored data ends, offsets dense.
        WRITE_GATE.with(|g| *g.borrow_mut() = None);
        let a = log.append(client_batch(7, 100, 300).into(), 0).unwrap();
        assert_eq!(a.base_offset, 10);
        log.wait(&a, Durability::Synced).await.unwrap();
        assert_eq!(read_all(&log).await, (0..17).collect::<Vec<_>>());
        let reopened = PartitionLog::open(&dir, config).await.unwrap();
        assert_eq!(read_all(&reopened).await, (0..17).collect::<Vec<_>>());
    });
}

#[test]
fn a_roll_leaves_the_seal_to_the_background_and_a_crash_before_it_loses_nothing() {
    use crate::log::SEAL_GATE;
    use crate::segment::Latch;
    use futures::future::{select, Either};
    use std::rc::Rc;
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        // Every seal is held: the rolls, writes and syncs below must not wait for one (with
        // the seal inside the roll, the first roll would wait for ever).
        let gate = Rc::new(Latch::default());
        SEAL_GATE.with(|g| *g.borrow_mut() = Some(gate));
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        let filling = std::pin::pin!(fill(&log, 40));
        let stuck = std::pin::pin!(glommio::timer::sleep(std::time::Duration::from_secs(60)));
        if let Either::Right(_) = select(filling, stuck).await {
            panic!("a roll waited for the seal of the segment before");
        }
        assert_eq!(
            log.synced_offset(),
            200,
            "syncs cover the unsealed segments"
        );
        assert!(dir_files(&d, "log").len() > 3);
        assert!(dir_files(&d, "index").is_empty(), "no seal has run");
        // No clean close: as after a crash before any seal.
    });
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        assert_eq!(read_all(&log).await, (0..200).collect::<Vec<_>>());
        // The unsealed segments were recovered as torn tails are: each file ends where its
        // last whole batch does, with no preallocated space after it.
        for path in dir_files(&d, "log") {
            let data = std::fs::read(&path).unwrap();
            let batches: usize = batch::headers(&data).map(|(_, h)| h.total_len()).sum();
            assert_eq!(batches, data.len(), "{}", path.display());
        }
        fill(&log, 20).await;
        log.close().await.unwrap();
    });
    // Sealed now (the background seals, then the clean close): every segment has its indexes.
    assert_eq!(dir_files(&dir, "index").len(), dir_files(&dir, "log").len());
    assert_eq!(
        dir_files(&dir, "timeindex").len(),
        dir_files(&dir, "log").len()
    );
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        assert_eq!(read_all(&log).await, (0..300).collect::<Vec<_>>());
    });
}

#[test]
fn recovery_tells_a_torn_batch_from_preallocated_space() {
    use crate::segment::{Cut, OpenMode, Segment};
    // Never closed cleanly: the file ends in preallocated space.
    let (_tmp, dir) = crashed_partition(10);
    let reopen = |dir: std::path::PathBuf| {
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let (segment, cut) = Segment::open(&dir, 0, OpenMode::Recover, 4096)
                .await
                .unwrap();
            tx.send((segment.next_offset(), cut)).unwrap();
        });
        rx.recv().unwrap()
    };
    let seg = dir_files(&dir, "log").pop().unwrap();
    let written = std::fs::metadata(&seg).unwrap().len();
    let (next, cut) = reopen(dir.clone());
    assert_eq!(next, 50);
    let data = std::fs::read(&seg).unwrap();
    assert_eq!(
        cut,
        Cut {
            bytes: written - data.len() as u64,
            data: false
        }
    );
    assert!(cut.bytes > 0);
    // A corrupt last batch: cut with the data it held.
    let last = batch::headers(&data).map(|(p, _)| p).last().unwrap();
    let mut damaged = data.clone();
    damaged[last + 70] ^= 0xff;
    std::fs::write(&seg, &damaged).unwrap();
    let (next, cut) = reopen(dir.clone());
    assert_eq!(next, 45);
    assert_eq!(
        cut,
        Cut {
            bytes: (data.len() - last) as u64,
            data: true
        }
    );
}

/// An idempotent producer's batch of `n` records: producer `pid`, epoch 0, first sequence `seq`.
fn idempotent_batch(pid: i64, seq: i32, n: usize) -> Vec<u8> {
    let records: Vec<_> = (0..n)
        .map(|i| {
            let mut r = batch::plain_record(
                i as i64,
                1000,
                Some(format!("k{i}").into_bytes().into()),
                Some(vec![b'x'; 100].into()),
            );
            r.producer_id = pid;
            r.producer_epoch = 0;
            r
        })
        .collect();
    let mut data = batch::encode_plain(&records, Compression::None)
        .unwrap()
        .to_vec();
    batch::set_base_sequence(&mut data, seq);
    data
}

#[test]
fn a_retried_batch_is_recognised_after_a_crash_even_when_it_lies_in_an_older_segment() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        let mut last = None;
        for i in 0..4 {
            let a = log.append(idempotent_batch(7, i * 5, 5).into(), 0).unwrap();
            log.wait(&a, Durability::Synced).await.unwrap();
            last = Some(a);
        }
        let last = last.unwrap();
        // Other traffic rolls the log past producer 7's last batch, twice.
        fill(&log, 40).await;
        assert!(dir_files(&d, "log").len() >= 3, "the log rolled");
        // Let the background seals and snapshot writes finish; then the process dies.
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!dir_files(&d, "snapshot").is_empty());
        assert!(
            dir_files(&d, "snapshot").len() <= 2,
            "only the newest snapshots are kept"
        );
        drop(log);
        let log = PartitionLog::open(&d, small_segments()).await.unwrap();
        let end = log.end_offset();
        let retry = log.append(idempotent_batch(7, 15, 5).into(), 0).unwrap();
        assert_eq!(
            (retry.base_offset, retry.last_offset),
            (last.base_offset, last.last_offset),
            "the retry is answered with its first offsets, not written again"
        );
        assert_eq!(log.end_offset(), end);
        // And the producer's next batch goes on from there.
        let next = log.append(idempotent_batch(7, 20, 5).into(), 0).unwrap();
        assert_eq!(next.base_offset, end);
    });
}

/// Appends `batches` batches of 5 records with keys never used before (nothing to compact).
async fn fill_unique(log: &PartitionLog, batches: usize) {
    for _ in 0..batches {
        let next = log.end_offset();
        let records: Vec<_> = (0..5)
            .map(|i| {
                let key = Some(format!("u{}", next + i).into_bytes().into());
                batch::plain_record(i, 1000 + next + i, key, Some(vec![b'x'; 100].into()))
            })
            .collect();
        let data = batch::encode_plain(&records, Compression::None).unwrap();
        let a = log.append(data, 0).unwrap();
        log.wait(&a, Durability::Synced).await.unwrap();
    }
}

#[test]
fn compaction_follows_the_lags_and_the_dirty_ratio() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    run(move || async move {
        let base = LogConfig {
            compact_enabled: true,
            delete_enabled: false,
            ..small_segments()
        };
        let (late, later) = (10_000, 2_000_000);
        // min.compaction.lag.ms: segments whose newest record is too young wait.
        let young = LogConfig {
            min_compaction_lag: std::time::Duration::from_millis(1_000_000),
            ..base.clone()
        };
        let log = PartitionLog::open(&d.join("lag"), young).await.unwrap();
        fill(&log, 60).await; // keys k0..k4 again and again; timestamps 1000 + offset
        assert_eq!(log.compact(late).await.unwrap(), 0, "too young");
        assert!(log.compact(later).await.unwrap() > 0, "old enough");

        // min.cleanable.dirty.ratio: a large clean part (unique keys, compacted once)...
        let log = PartitionLog::open(&d.join("ratio"), base.clone())
            .await
            .unwrap();
        fill_unique(&log, 60).await;
        assert_eq!(
            log.compact(late).await.unwrap(),
            0,
            "unique keys: nothing removed"
        );
        // ...then a third as much dirty data with repeated keys, pushed into closed segments.
        fill(&log, 10).await;
        fill_unique(&log, 20).await;
        let picky = LogConfig {
            min_cleanable_dirty_ratio: 0.9,
            ..base.clone()
        };
        log.set_config(picky.clone());
        assert_eq!(log.compact(late).await.unwrap(), 0, "not dirty enough");
        // max.compaction.lag.ms: a dirty record that old is compacted whatever the ratio.
        log.set_config(LogConfig {
            max_compaction_lag: std::time::Duration::from_millis(1_000),
            ..picky
        });
        assert!(log.compact(later).await.unwrap() > 0, "overdue");
        // And with a fresh dirty part, a lower ratio compacts it.
        fill(&log, 10).await;
        fill_unique(&log, 20).await;
        log.set_config(LogConfig {
            min_cleanable_dirty_ratio: 0.1,
            ..base
        });
        assert!(log.compact(late).await.unwrap() > 0, "dirty enough at 0.1");
    });
}

/// The batches of `log` from offset 0 to its end (past the high watermark), as stored.
async fn stored_batches(log: &PartitionLog) -> Vec<bytes::Bytes> {
    let end = log.end_offset();
    let mut next = log.log_start_offset();
    let mut out = Vec::new();
    while next < end {
        let data = log
            .read_upto(next, usize::MAX, true, end)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        assert!(!data.is_empty(), "a read below the end returns a batch");
        for (pos, h) in batch::headers(&data) {
            out.push(data.slice(pos..pos + h.total_len()));
            next = h.last_offset() + 1;
        }
    }
    out
}

#[test]
fn a_leader_stamps_its_epoch_and_a_follower_takes_its_batches_at_their_offsets() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let leader = PartitionLog::open(&dir.join("leader"), small_segments())
            .await
            .unwrap();
        leader.set_high_watermark(0);
        leader.set_leader_epoch(3);
        fill(&leader, 3).await;
        leader.set_leader_epoch(5);
        fill(&leader, 2).await;
        let batches = stored_batches(&leader).await;
        let epochs: Vec<i32> = batches
            .iter()
            .map(|b| batch::BatchHeader::parse(b).unwrap().partition_leader_epoch)
            .collect();
        assert_eq!(epochs, [3, 3, 3, 5, 5]);

        let follower = PartitionLog::open(&dir.join("follower"), small_segments())
            .await
            .unwrap();
        follower.set_high_watermark(0);
        let a = follower.append_replica(batches[0].clone()).unwrap();
        assert_eq!((a.base_offset, a.last_offset), (0, 4));
        // Not at the log end: refused, nothing changes.
        assert!(matches!(
            follower.append_replica(batches[0].clone()),
            Err(LogError::NotAtEnd { offset: 0, end: 5 })
        ));
        assert!(matches!(
            follower.append_replica(batches[2].clone()),
            Err(LogError::NotAtEnd { offset: 10, end: 5 })
        ));
        let mut corrupt = batches[1].to_vec();
        *corrupt.last_mut().unwrap() ^= 1;
        assert!(matches!(
            follower.append_replica(corrupt.into()),
            Err(LogError::Batch(_))
        ));
        let two: Vec<u8> = [&batches[1][..], &batches[2][..]].concat();
        assert!(matches!(
            follower.append_replica(two.into()),
            Err(LogError::BatchCount(2))
        ));
        for b in &batches[1..] {
            let a = follower.append_replica(b.clone()).unwrap();
            follower.wait(&a, Durability::Synced).await.unwrap();
        }
        assert_eq!(stored_batches(&follower).await, batches);
        // After a crash the follower holds the same bytes.
        let reopened = PartitionLog::open(&dir.join("follower"), small_segments())
            .await
            .unwrap();
        assert_eq!(stored_batches(&reopened).await, batches);
    });
}

#[test]
fn consumers_read_below_the_high_watermark_only() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        // One replica: the high watermark is what is written.
        let single = PartitionLog::open(&dir.join("single"), LogConfig::default())
            .await
            .unwrap();
        let a = single.append(client_batch(5, 0, 10).into(), 0).unwrap();
        assert_eq!((single.end_offset(), single.high_watermark()), (5, 0));
        assert!(single.read(0, 1 << 20, true).await.unwrap().is_empty());
        let advanced = single.listen();
        single.wait(&a, Durability::Written).await.unwrap();
        advanced.await;
        assert_eq!(single.high_watermark(), 5);
        assert_eq!(read_all(&single).await, (0..5).collect::<Vec<_>>());

        // Replicated: replication moves it, whatever is written or synced.
        let log = PartitionLog::open(&dir.join("replicated"), small_segments())
            .await
            .unwrap();
        log.set_high_watermark(0);
        fill(&log, 30).await;
        assert_eq!(log.high_watermark(), 0);
        assert!(read_all(&log).await.is_empty());
        assert_eq!(stored_batches(&log).await.len(), 30);
        // Inside a closed segment, then in the cache.
        log.set_high_watermark(35);
        assert_eq!(read_all(&log).await, (0..35).collect::<Vec<_>>());
        let advanced = log.listen();
        log.set_high_watermark(145);
        advanced.await;
        assert_eq!(read_all(&log).await, (0..145).collect::<Vec<_>>());
        assert_eq!(log.find_timestamp(1145).await.unwrap(), None);
        assert_eq!(log.find_timestamp(1144).await.unwrap(), Some((1144, 144)));
        // DeleteRecords cannot pass it.
        assert!(log.delete_records(146).await.is_err());
        assert_eq!(log.delete_records(-1).await.unwrap(), 145);
    });
}

#[test]
fn a_truncation_cuts_the_tail_in_memory_at_once_and_in_the_files_before_the_next_write() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        log.set_high_watermark(0);
        fill(&log, 40).await;
        let segments_before = dir_files(&dir, "log").len();
        assert!(segments_before > 3);
        // The background seals and roll snapshots finish.
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        let snapshot_offset = |p: &std::path::PathBuf| -> i64 {
            p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
        };
        assert!(dir_files(&dir, "snapshot")
            .iter()
            .any(|p| snapshot_offset(p) > 60));
        log.set_high_watermark(50);
        // Not below the high watermark, and only at the log's batch boundaries.
        assert!(log.truncate(45).is_err());
        log.truncate(60).unwrap();
        assert_eq!(log.end_offset(), 60);
        assert_eq!(stored_batches(&log).await.len(), 12);
        // New batches go at the cut; the files are cut before they are written.
        log.set_leader_epoch(1);
        fill(&log, 2).await;
        assert_eq!(log.end_offset(), 70);
        // Roll snapshots past the cut went with it: a later recovery cannot load one.
        assert!(dir_files(&dir, "snapshot")
            .iter()
            .all(|p| snapshot_offset(p) <= 60));
        let batches = stored_batches(&log).await;
        let epochs: Vec<i32> = batches
            .iter()
            .map(|b| batch::BatchHeader::parse(b).unwrap().partition_leader_epoch)
            .collect();
        assert_eq!(epochs, [vec![0; 12], vec![1; 2]].concat());
        assert!(dir_files(&dir, "log").len() < segments_before);
        // As after a crash: the cut holds.
        let reopened = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert_eq!(stored_batches(&reopened).await, batches);
        // A reset drops everything: the log restarts, empty, further on.
        log.reset(500);
        assert_eq!((log.log_start_offset(), log.end_offset()), (500, 500));
        let b = client_batch(5, 0, 10);
        let mut replicated = b.clone();
        batch::set_base_offset(&mut replicated, 500);
        let a = log.append_replica(replicated.into()).unwrap();
        log.wait(&a, Durability::Synced).await.unwrap();
        let reopened = PartitionLog::open(&dir, small_segments()).await.unwrap();
        assert_eq!(reopened.log_start_offset(), 500);
        assert_eq!(stored_batches(&reopened).await.len(), 1);
        assert_eq!(dir_files(&dir, "log").len(), 1);
    });
}

#[test]
fn a_truncation_while_a_write_is_in_flight_fails_its_waiters_and_keeps_offsets_dense() {
    use crate::segment::{Latch, WRITE_GATE};
    use std::rc::Rc;
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, uncached()).await.unwrap();
        log.set_high_watermark(0);
        fill(&log, 2).await;
        // Three batches in one write, held in flight.
        let gate = Rc::new(Latch::default());
        WRITE_GATE.with(|g| *g.borrow_mut() = Some((gate.clone(), std::cell::Cell::new(99))));
        let appended: Vec<_> = (0..3)
            .map(|i| log.append(client_batch(5, i, 50).into(), 0).unwrap())
            .collect();
        let waits: Vec<_> = appended
            .iter()
            .map(|&a| {
                let log = log.clone();
                glommio::spawn_local(async move { log.wait(&a, Durability::Synced).await })
            })
            .collect();
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        // The follower learns its tail diverged: the last two batches go.
        log.truncate(15).unwrap();
        gate.open();
        let mut results = Vec::new();
        for w in waits {
            results.push(w.await.is_ok());
        }
        assert_eq!(results, [true, false, false]);
        WRITE_GATE.with(|g| *g.borrow_mut() = None);
        let a = log.append(client_batch(2, 9, 50).into(), 0).unwrap();
        assert_eq!(a.base_offset, 15);
        log.wait(&a, Durability::Synced).await.unwrap();
        assert_eq!(log.synced_offset(), 17);
        let reopened = PartitionLog::open(&dir, uncached()).await.unwrap();
        reopened.set_high_watermark(17);
        assert_eq!(read_all(&reopened).await, (0..17).collect::<Vec<_>>());
    });
}

#[test]
fn a_failed_write_fences_a_replicated_leader_until_its_next_epoch() {
    use crate::segment::{Latch, WRITE_GATE};
    use std::rc::Rc;
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, uncached()).await.unwrap();
        log.set_high_watermark(0);
        log.set_leader_epoch(1);
        fill(&log, 1).await;
        let gate = Rc::new(Latch::default());
        WRITE_GATE.with(|g| *g.borrow_mut() = Some((gate.clone(), std::cell::Cell::new(0))));
        gate.open();
        let a = log.append(client_batch(5, 0, 50).into(), 0).unwrap();
        assert!(log.wait(&a, Durability::Written).await.is_err());
        WRITE_GATE.with(|g| *g.borrow_mut() = None);
        // Offsets 5.. may be on followers: not reissued in this epoch.
        assert!(log.is_fenced());
        assert!(matches!(
            log.append(client_batch(5, 0, 50).into(), 0),
            Err(LogError::Fenced)
        ));
        log.set_leader_epoch(2);
        let a = log.append(client_batch(5, 0, 50).into(), 0).unwrap();
        log.wait(&a, Durability::Synced).await.unwrap();
        assert_eq!(a.base_offset, 5);
    });
}

#[test]
fn readers_hear_when_a_write_makes_an_earlier_commit_visible() {
    use futures::FutureExt;
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, uncached()).await.unwrap();
        log.set_high_watermark(0);
        let a = log.append(client_batch(5, 0, 50).into(), 0).unwrap();
        // Followers stored the batch first: the commit index passes it before it is written
        // here, and readers see only what is written.
        log.set_high_watermark(5);
        let listener = log.listen();
        log.wait(&a, Durability::Written).await.unwrap();
        assert_eq!(log.high_watermark(), 5);
        assert!(
            listener.now_or_never().is_some(),
            "a reader waiting for the high watermark was not told it moved"
        );
    });
}

#[test]
fn compaction_within_a_small_key_map_takes_rounds_and_ends_as_one_would() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = |map_bytes| LogConfig {
            compact_enabled: true,
            delete_enabled: false,
            min_cleanable_dirty_ratio: 0.0,
            compaction_map_bytes: map_bytes,
            ..small_segments()
        };
        // The same data in two logs: keys k0..k4 over and over, and unique keys between.
        let small = PartitionLog::open(&dir.join("small"), config(1))
            .await
            .unwrap();
        let large = PartitionLog::open(&dir.join("large"), config(64 << 20))
            .await
            .unwrap();
        for log in [&small, &large] {
            for _ in 0..4 {
                fill(log, 10).await;
                fill_unique(log, 10).await;
            }
        }
        let now = 10_000;
        assert!(large.compact(now).await.unwrap() > 0);
        assert_eq!(
            large.compact(now).await.unwrap(),
            0,
            "all done in one round"
        );
        // One dirty segment per round: several rounds, each removing something at first.
        let mut rounds = 0;
        while small.compact(now).await.unwrap() > 0 {
            rounds += 1;
            assert!(rounds < 100);
        }
        assert!(rounds > 1, "{rounds} rounds");
        for _ in 0..20 {
            small.compact(now).await.unwrap();
        }
        assert_eq!(read_all(&small).await, read_all(&large).await);
    });
}

/// A transactional producer's batch: producer `pid`, epoch 0, first sequence `seq`, `n`
/// records.
fn txn_batch(pid: i64, seq: i32, n: usize) -> Vec<u8> {
    let mut data = idempotent_batch(pid, seq, n);
    // Attributes: transactional. The CRC covers them.
    data[22] |= 0x10;
    let crc = batch::compute_crc(&data);
    data[17..21].copy_from_slice(&crc.to_be_bytes());
    data
}

/// What the log holds, as the transaction model sees it.
#[derive(Clone, Copy, Debug)]
enum Event {
    Data {
        pid: i64,
        base: i64,
        last: i64,
        seq: i32,
    },
    Plain {
        base: i64,
    },
    Marker {
        pid: i64,
        offset: i64,
        commit: bool,
    },
}

/// The model: transactions, the stable offset and the aborted ones, computed from scratch from
/// the events in the log and the high watermark.
fn model(events: &[Event], hw: i64) -> (i64, Vec<(i64, i64, i64)>) {
    use std::collections::BTreeMap;
    let mut open: BTreeMap<i64, i64> = BTreeMap::new();
    let mut unstable = hw;
    let mut aborted = Vec::new();
    for e in events {
        match *e {
            Event::Data { pid, base, .. } => {
                open.entry(pid).or_insert(base);
            }
            Event::Plain { .. } => {}
            Event::Marker {
                pid,
                offset,
                commit,
            } => {
                let first = open.remove(&pid).unwrap_or(offset);
                if offset >= hw {
                    unstable = unstable.min(first);
                }
                if !commit {
                    aborted.push((pid, first, offset));
                }
            }
        }
    }
    let lso = open.values().copied().chain([unstable]).min().unwrap();
    (lso, aborted)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Transactions of several producers interleaved with plain batches, rolls, restarts (clean
/// and crashed) and, on a replicated log, high watermark moves and cuts: after each step the
/// log's last stable offset and aborted transactions match the model's.
fn transactions_match_the_model(seed: u64, replicated: bool) {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut log = PartitionLog::open(&dir, small_segments()).await.unwrap();
        let mut events: Vec<Event> = Vec::new();
        let mut hw = 0;
        let mut rolled = false;
        if replicated {
            log.set_high_watermark(0);
        }
        for step in 0..120 {
            let end = log.end_offset();
            let pid = 1 + rng.next(3) as i64;
            let choice = rng.next(100);
            let next_seq = |events: &[Event]| {
                events
                    .iter()
                    .rev()
                    .find_map(|e| match *e {
                        Event::Data {
                            pid: p,
                            seq,
                            base,
                            last,
                        } if p == pid => Some(seq + (last - base) as i32 + 1),
                        _ => None,
                    })
                    .unwrap_or(0)
            };
            let appended = if choice < 45 {
                let n = 1 + rng.next(4) as usize;
                let seq = next_seq(&events);
                let a = log.append(txn_batch(pid, seq, n).into(), 0).unwrap();
                assert_eq!(a.base_offset, end, "seed {seed} step {step}");
                events.push(Event::Data {
                    pid,
                    base: a.base_offset,
                    last: a.last_offset,
                    seq,
                });
                Some(a)
            } else if choice < 60 {
                let a = log.append(client_batch(3, 0, 50).into(), 0).unwrap();
                events.push(Event::Plain {
                    base: a.base_offset,
                });
                Some(a)
            } else if choice < 85 {
                let commit = rng.next(2) == 0;
                let a = if replicated {
                    let data = log.prepare_marker(&marker(pid, 0, commit), 0, 0).unwrap();
                    log.append_replica(data).unwrap()
                } else {
                    log.append_marker(&marker(pid, 0, commit), 0).unwrap()
                };
                assert_eq!(a.base_offset, end);
                events.push(Event::Marker {
                    pid,
                    offset: a.base_offset,
                    commit,
                });
                Some(a)
            } else if choice < 92 {
                // Restart: clean or crashed (everything written and synced first).
                if rng.next(2) == 0 {
                    log.close().await.unwrap();
                } else {
                    log.sync_to(log.end_offset()).await.unwrap();
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                }
                drop(log);
                log = PartitionLog::open(&dir, small_segments()).await.unwrap();
                assert_eq!(log.end_offset(), end, "seed {seed} step {step}");
                if replicated {
                    log.set_high_watermark(hw);
                }
                None
            } else if replicated && choice < 96 {
                // A cut at a batch boundary not below the high watermark.
                let boundaries: Vec<i64> = events
                    .iter()
                    .map(|e| match *e {
                        Event::Data { base, .. } | Event::Plain { base } => base,
                        Event::Marker { offset, .. } => offset,
                    })
                    .filter(|&b| b >= hw)
                    .collect();
                if let Some(&cut) =
                    boundaries.get(rng.next(boundaries.len().max(1) as u64) as usize)
                {
                    log.truncate(cut).unwrap();
                    events.retain(|e| match *e {
                        Event::Data { base, .. } | Event::Plain { base } => base < cut,
                        Event::Marker { offset, .. } => offset < cut,
                    });
                }
                // The files are cut before the next write (a crash before it brings the cut
                // tail back, which Raft cuts again).
                let a = log.append(client_batch(3, 0, 50).into(), 0).unwrap();
                events.push(Event::Plain {
                    base: a.base_offset,
                });
                Some(a)
            } else {
                if replicated {
                    hw = hw + rng.next((end - hw + 1) as u64) as i64;
                    log.set_high_watermark(hw);
                }
                None
            };
            if let Some(a) = appended {
                log.wait(&a, Durability::Written).await.unwrap();
            }
            let hw_now = if replicated { hw } else { log.end_offset() };
            assert_eq!(log.high_watermark(), hw_now, "seed {seed} step {step}");
            let (lso, aborted) = model(&events, hw_now);
            assert_eq!(log.last_stable_offset(), lso, "seed {seed} step {step}");
            let from = rng.next(log.end_offset() as u64 + 1) as i64;
            let upto = from + rng.next(40) as i64;
            let want: Vec<(i64, i64, i64)> = aborted
                .iter()
                .copied()
                .filter(|&(_, first, last)| last >= from && first < upto)
                .collect();
            let got: Vec<(i64, i64, i64)> = log
                .aborted_transactions(from, upto)
                .iter()
                .map(|t| (t.producer_id, t.first_offset, t.last_offset))
                .collect();
            assert_eq!(got, want, "seed {seed} step {step} [{from}, {upto})");
            rolled |= dir_files(&dir, "log").len() > 1;
        }
        assert!(rolled, "the log rolled (seed {seed})");
    });
}

#[test]
fn transactions_on_a_single_replica_match_the_model() {
    for seed in 0..12 {
        transactions_match_the_model(seed, false);
    }
}

#[test]
fn transactions_on_a_replicated_log_match_the_model() {
    for seed in 0..12 {
        transactions_match_the_model(seed, true);
    }
}

#[test]
fn clients_may_not_write_markers() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let log = PartitionLog::open(&dir, LogConfig::default())
            .await
            .unwrap();
        let forged = marker(1, 0, true).encode(0).freeze();
        assert!(matches!(
            log.append(forged, 0),
            Err(LogError::Batch(batch::BatchError::BadRecords(_)))
        ));
        // A zombie's marker (an older epoch than the producer's) is refused.
        let mut newer = txn_batch(1, 0, 1);
        newer[51..53].copy_from_slice(&3i16.to_be_bytes());
        let crc = batch::compute_crc(&newer);
        newer[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append(newer.into(), 0).unwrap();
        assert!(matches!(
            log.append_marker(&marker(1, 2, false), 0),
            Err(LogError::Producer(_))
        ));
        assert_eq!(log.open_transactions(), [(1, 0)]);
        log.append_marker(&marker(1, 3, false), 0).unwrap();
        assert!(log.open_transactions().is_empty());
    });
}

#[test]
fn compaction_drops_aborted_records_and_stays_below_the_last_stable_offset() {
    let (_tmp, dir) = partition_dir();
    run(move || async move {
        let config = LogConfig {
            compact_enabled: true,
            delete_enabled: false,
            min_cleanable_dirty_ratio: 0.0,
            ..small_segments()
        };
        let log = PartitionLog::open(&dir, config).await.unwrap();
        let now = 100_000;
        let plain = log.append(client_batch(5, 1000, 100).into(), 0).unwrap(); // k0..k4 at 0..4
        log.wait(&plain, Durability::Synced).await.unwrap();
        log.append(txn_batch(7, 0, 5).into(), 0).unwrap(); // k0..k4 at 5..9
        let abort = log.append_marker(&marker(7, 0, false), 0).unwrap(); // 10
        log.wait(&abort, Durability::Synced).await.unwrap();
        fill_unique(&log, 40).await;
        log.compact(now).await.unwrap();
        let offsets = read_all(&log).await;
        // The aborted records are gone and did not shadow the committed ones; the marker stays.
        assert!((0..5).all(|o| offsets.contains(&o)), "{offsets:?}");
        assert!((5..10).all(|o| !offsets.contains(&o)), "{offsets:?}");
        assert!(offsets.contains(&10));

        // An open transaction writes k0..k4, then a plain batch does, further on.
        let open = log.append(txn_batch(8, 0, 5).into(), 0).unwrap();
        fill_unique(&log, 40).await;
        let again = log.append(client_batch(5, 1000, 100).into(), 0).unwrap();
        log.wait(&again, Durability::Synced).await.unwrap();
        fill_unique(&log, 40).await;
        assert_eq!(log.last_stable_offset(), open.base_offset);
        log.compact(now).await.unwrap();
        let offsets = read_all(&log).await;
        assert!(
            (0..5).all(|o| offsets.contains(&o)),
            "nothing at or past the stable offset shadows older records"
        );
        // Once committed (and the log rolled past it), compaction goes on.
        let commit = log.append_marker(&marker(8, 0, true), 0).unwrap();
        log.wait(&commit, Durability::Synced).await.unwrap();
        fill_unique(&log, 40).await;
        log.compact(now).await.unwrap();
        let offsets = read_all(&log).await;
        assert!((0..5).all(|o| !offsets.contains(&o)), "{offsets:?}");
        assert!((open.base_offset..=open.last_offset).all(|o| !offsets.contains(&o)));
        assert!((again.base_offset..=again.last_offset).all(|o| offsets.contains(&o)));
    });
}

/// The abort markers' offsets in the log's aborted-transaction index.
fn abort_markers(log: &PartitionLog) -> Vec<i64> {
    let hw = log.high_watermark();
    log.aborted_transactions(0, hw)
        .iter()
        .map(|t| t.last_offset)
        .collect()
}

#[test]
fn compaction_removes_markers_once_their_transactions_have_no_records_left() {
    let (_tmp, dir) = partition_dir();
    let d = dir.clone();
    let config = LogConfig {
        compact_enabled: true,
        delete_enabled: false,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: std::time::Duration::from_secs(1),
        ..small_segments()
    };
    let now = 10_000; // Markers written at 0 are past the 1 s horizon; at 9,500 not yet.
    let c = config.clone();
    let markers = run_with(move || async move {
        let log = PartitionLog::open(&d, c).await.unwrap();
        log.append(txn_batch(7, 0, 5).into(), 0).unwrap(); // k0..k4 at 0..4, aborted
        let abort = log.append_marker(&marker(7, 0, false), 0).unwrap(); // 5
        log.append(txn_batch(7, 5, 5).into(), 0).unwrap(); // k0..k4 at 6..10, committed
        let commit = log.append_marker(&marker(7, 0, true), 0).unwrap(); // 11
        log.append(txn_batch(8, 0, 5).into(), 0).unwrap(); // k0..k4 at 12..16, aborted late
        let recent = log.append_marker(&marker(8, 0, false), 9_500).unwrap(); // 17
        let shadow = log.append(client_batch(5, 1000, 100).into(), 0).unwrap(); // k0..k4
        log.wait(&shadow, Durability::Synced).await.unwrap();
        fill_unique(&log, 40).await;
        let hw = log.high_watermark();
        assert_eq!(log.aborted_transactions(0, hw).len(), 2);

        // The first round removes the records; the markers stay while it saw them.
        log.compact(now).await.unwrap();
        let offsets = read_all(&log).await;
        assert!((0..5)
            .chain(6..11)
            .chain(12..17)
            .all(|o| !offsets.contains(&o)));
        for m in [&abort, &commit, &recent] {
            assert!(offsets.contains(&m.base_offset), "{offsets:?}");
        }
        // The next finds their transactions empty: the old markers go, the recent one stays.
        fill_unique(&log, 40).await;
        log.compact(now).await.unwrap();
        let offsets = read_all(&log).await;
        assert!(!offsets.contains(&abort.base_offset), "{offsets:?}");
        assert!(!offsets.contains(&commit.base_offset), "{offsets:?}");
        assert!(offsets.contains(&recent.base_offset), "{offsets:?}");
        assert!((shadow.base_offset..=shadow.last_offset).all(|o| offsets.contains(&o)));
        assert_eq!(
            abort_markers(&log),
            [recent.base_offset],
            "the removed abort leaves the index"
        );
        log.close().await.unwrap();
        (abort.base_offset, recent.base_offset)
    });
    // The segment's index file says the same after a restart.
    run(move || async move {
        let log = PartitionLog::open(&dir, config).await.unwrap();
        assert_eq!(abort_markers(&log), [markers.1]);
        assert!(!read_all(&log).await.contains(&markers.0));
    });
}
