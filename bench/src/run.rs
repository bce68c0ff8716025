//! Runs a workload: sets up the topic, starts producer and consumer tasks on one glommio
//! executor per CPU, prints progress each second, and reports throughput and latency.

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::{self, Pending};
use crate::client::{self, Reader, Writer};
use crate::produce;
use crate::{Args, Codec, Payload, StartAt, Workload};

/// Counters and histograms shared by every task of a run.
struct Stats {
    measuring: AtomicBool,
    stop: AtomicBool,
    produced: AtomicU64,
    produced_bytes: AtomicU64,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    errors: AtomicU64,
    /// When consumers reached --records (microseconds since the epoch; 0: not yet).
    finished_us: AtomicU64,
    /// Produce latency (due to acknowledged).
    produce_latency: Latency,
    /// End to end latency (record timestamp to consumed).
    e2e_latency: Latency,
}

/// A latency histogram (microseconds) kept per second: tasks record into the window, and
/// the progress line folds it into the run's total each second, so each value is recorded
/// once and a second's stalls show in that second's line.
struct Latency {
    window: Mutex<Histogram<u64>>,
    total: Mutex<Histogram<u64>>,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            window: Mutex::new(histogram()),
            total: Mutex::new(histogram()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.window.lock().expect("not poisoned")
    }

    /// Moves the window into the total; returns the window's p99 and max, if it has values.
    fn fold(&self) -> Option<(f64, f64)> {
        let mut window = self.window();
        let seen = (!window.is_empty()).then(|| {
            (
                window.value_at_quantile(0.99) as f64 / 1000.0,
                window.max() as f64 / 1000.0,
            )
        });
        self.total.lock().expect("not poisoned").add(&*window).ok();
        window.reset();
        seen
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn compression(c: Codec) -> Compression {
    match c {
        Codec::None => Compression::None,
        Codec::Gzip => Compression::Gzip,
        Codec::Snappy => Compression::Snappy,
        Codec::Lz4 => Compression::Lz4,
        Codec::Zstd => Compression::Zstd,
    }
}

/// Each partition's leader's address, creating the topic if it is missing. Waits (up to 30 s)
/// until every partition has a leader.
async fn setup(args: &Args) -> Result<Vec<String>> {
    let (mut w, mut r, bootstrap) = client::connect_bootstrap(&args.brokers).await?;
    // Never let the metadata lookup auto-create the topic with the broker's default size.
    let req = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(&args.topic)))
        ]));
    let mut created = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = client::call(&mut w, &mut r, &req, 9).await?;
        let brokers: HashMap<i32, String> = md
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        if let Some(t) = md.topics.iter().find(|t| t.error_code == 0) {
            let mut leaders = vec![None; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| leaders.get_mut(i))
                {
                    *slot = brokers.get(&p.leader_id.0).cloned();
                }
            }
            if !leaders.is_empty() && leaders.iter().all(Option::is_some) {
                return Ok(leaders.into_iter().flatten().collect());
            }
        } else if !created {
            // To the controller, as Kafka's admin clients send it.
            let controller = brokers.get(&md.controller_id.0).unwrap_or(&bootstrap);
            let (mut cw, mut cr) = client::connect(controller).await?;
            let create = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(&args.topic))
                    .with_num_partitions(args.partitions)
                    .with_replication_factor(args.replication_factor)]);
            let resp = client::call(&mut cw, &mut cr, &create, 5).await?;
            let code = resp.topics.first().map_or(0, |t| t.error_code);
            if code != 0 && code != 36 {
                bail!("create topic {}: error {code}", args.topic);
            }
            created = true;
        }
        if Instant::now() > deadline {
            bail!("topic {}: no leader for every partition", args.topic);
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
}

/// `partitions` grouped by their leader's address, in first-seen order.
fn by_leader(partitions: &[i32], leaders: &[String]) -> Vec<(String, Vec<i32>)> {
    let mut groups: Vec<(String, Vec<i32>)> = Vec::new();
    for &p in partitions {
        let leader = &leaders[p as usize];
        match groups.iter_mut().find(|(l, _)| l == leader) {
            Some((_, ps)) => ps.push(p),
            None => groups.push((leader.clone(), vec![p])),
        }
    }
    groups
}

/// What the reader of a producer connection needs to account for one produce request.
struct InFlight {
    first_due: Instant,
    interval: Duration,
    records: u64,
    bytes: u64,
    _permit: glommio::sync::StaticPermit,
}

/// Payload source: values are slices of one pre-generated buffer.
fn payload_pool(kind: Payload, record_size: usize) -> Bytes {
    let len = (record_size * 64).max(1 << 20);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|i| match kind {
            Payload::Random => {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }
            Payload::Compressible => b"tern-compressible-payload "[i % 26],
        })
        .collect::<Vec<u8>>()
        .into()
}

/// One of a producer's connections: requests go out on its writer, at most `--inflight` at a
/// time, and a task reads their answers (in order) and counts them.
struct ProduceConnection {
    writer: Writer,
    queue: Rc<RefCell<VecDeque<InFlight>>>,
    permits: Rc<Semaphore>,
    /// Cancelled when the connection is dropped.
    _reader: Option<glommio::Task<()>>,
}

impl ProduceConnection {
    async fn open(args: &Args, addr: &str, stats: &Arc<Stats>) -> Result<(ProduceConnection, i16)> {
        let (writer, mut r) = client::connect(addr).await?;
        let version = writer.version::<ProduceRequest>(*produce::VERSIONS.end())?;
        if !produce::VERSIONS.contains(&version) {
            bail!(
                "the broker's Produce versions and ours ({:?}) do not meet",
                produce::VERSIONS
            );
        }
        let queue: Rc<RefCell<VecDeque<InFlight>>> = Rc::new(RefCell::new(VecDeque::new()));
        let reader = (args.acks != 0).then(|| {
            let (queue, stats) = (queue.clone(), stats.clone());
            glommio::spawn_local(async move {
                while let Ok(resp) = r.recv::<ProduceRequest>(version).await {
                    let acked = Instant::now();
                    let Some(f) = queue.borrow_mut().pop_front() else {
                        break;
                    };
                    let failed = resp
                        .responses
                        .iter()
                        .flat_map(|t| &t.partition_responses)
                        .any(|p| p.error_code != 0);
                    if failed {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if stats.measuring.load(Ordering::Relaxed) {
                        stats.produced.fetch_add(f.records, Ordering::Relaxed);
                        stats.produced_bytes.fetch_add(f.bytes, Ordering::Relaxed);
                        let mut hist = stats.produce_latency.window();
                        for i in 0..f.records {
                            let due = f.first_due + f.interval.mul_f64(i as f64);
                            let _ = hist.record(
                                acked.saturating_duration_since(due).as_micros().max(1) as u64,
                            );
                        }
                    }
                }
            })
        });
        let connection = ProduceConnection {
            writer,
            queue,
            permits: Rc::new(Semaphore::new(args.inflight)),
            _reader: reader,
        };
        Ok((connection, version))
    }
}

/// A free request slot in one of the connections' windows: the first free one from `next`
/// on, else the next in turn once it frees one. Returns the window's index and the slot.
async fn request_slot(
    windows: &[Rc<Semaphore>],
    next: &mut usize,
) -> Result<(usize, glommio::sync::StaticPermit)> {
    let n = windows.len();
    let free = (0..n)
        .map(|k| (*next + k) % n)
        .find_map(|i| Some((i, windows[i].try_acquire_static_permit(1).ok()?)));
    let (i, permit) = match free {
        Some(found) => found,
        None => {
            let i = *next % n;
            let permit = windows[i]
                .acquire_static_permit(1)
                .await
                .map_err(|_| anyhow::anyhow!("permits closed"))?;
            (i, permit)
        }
    };
    *next = i + 1;
    Ok((i, permit))
}

async fn producer(
    args: Arc<Args>,
    stats: Arc<Stats>,
    addr: String,
    partitions: Vec<i32>,
    rate: Option<f64>,
    start: Instant,
    wall_start_ms: i64,
) -> Result<()> {
    let mut connections = Vec::new();
    let mut version = i16::MAX;
    for _ in 0..args.connections {
        let (connection, v) = ProduceConnection::open(&args, &addr, &stats).await?;
        // The same broker answers every connection; keep to one version regardless.
        version = version.min(v);
        connections.push(connection);
    }
    let windows: Vec<Rc<Semaphore>> = connections.iter().map(|c| c.permits.clone()).collect();
    let pool = payload_pool(args.payload, args.record_size);
    let keys: Vec<Vec<u8>> = (0..args.keys)
        .map(|k| format!("key-{k:08}").into_bytes())
        .collect();
    let per_batch = (args.batch_bytes / args.record_size.max(1)).max(1) as u64;
    // A request carries up to one batch per partition, like a Kafka client's; records fill one
    // partition's batch before the next (the sticky partitioner).
    let per_request = per_batch * partitions.len() as u64;
    let linger = Duration::from_millis(args.linger_ms);
    let codec = compression(args.compression);
    let mut seq: u64 = 0;
    let mut turn = 0usize;
    let mut next_connection = 0usize;
    while !stats.stop.load(Ordering::Relaxed) {
        // Which records this request carries, and when each was due. At a fixed rate, as a
        // Kafka client's sender does: a request goes once a batch is full (or its first record
        // has lingered) and a request slot is free, and it carries every batch full by then,
        // at most one per partition. A partial batch goes only when it has lingered.
        let mut slot = None;
        let (count, first_due, interval) = match rate {
            None => (per_request, Instant::now(), Duration::ZERO),
            Some(rate) => {
                let interval = Duration::from_secs_f64(1.0 / rate);
                let due = |n: u64| start + interval.mul_f64(n as f64);
                let first_due = due(seq);
                let send_at = due(seq + per_batch - 1).min(first_due + linger);
                let now = Instant::now();
                if send_at > now {
                    glommio::timer::sleep(send_at - now).await;
                }
                slot = Some(request_slot(&windows, &mut next_connection).await?);
                let due_by_now = ((Instant::now().saturating_duration_since(start)).as_secs_f64()
                    * rate) as u64
                    + 1;
                let due_count = due_by_now.saturating_sub(seq).clamp(1, per_request);
                let full = due_count / per_batch * per_batch;
                (if full > 0 { full } else { due_count }, first_due, interval)
            }
        };
        let mut batches = Vec::new();
        let mut from = 0;
        while from < count {
            let take = per_batch.min(count - from);
            let records: Vec<Pending> = (from..from + take)
                .map(|i| {
                    let n = seq + i;
                    let due_ms = wall_start_ms
                        + (first_due + interval.mul_f64(i as f64))
                            .saturating_duration_since(start)
                            .as_millis() as i64;
                    let at = (n as usize * 7919) % (pool.len() - args.record_size);
                    Pending {
                        key: (!keys.is_empty())
                            .then(|| keys[(n % keys.len() as u64) as usize].as_slice()),
                        value: &pool[at..at + args.record_size],
                        timestamp: due_ms,
                    }
                })
                .collect();
            batches.push((partitions[turn % partitions.len()], records));
            turn += 1;
            from += take;
        }
        let (index, permit) = match slot {
            Some(slot) => slot,
            None => request_slot(&windows, &mut next_connection).await?,
        };
        let connection = &mut connections[index];
        let size = count as usize * (args.record_size + 32) + batches.len() * 80 + 64;
        let request = |buf: &mut BytesMut| {
            produce::encode_body(
                buf,
                version,
                args.acks,
                30_000,
                &args.topic,
                &batches,
                codec,
            )
        };
        let bytes = count * args.record_size as u64;
        if args.acks == 0 {
            connection
                .writer
                .send_with::<ProduceRequest>(version, size, request)
                .await?;
            if stats.measuring.load(Ordering::Relaxed) {
                stats.produced.fetch_add(count, Ordering::Relaxed);
                stats.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            drop(permit);
        } else {
            connection.queue.borrow_mut().push_back(InFlight {
                first_due,
                interval,
                records: count,
                bytes,
                _permit: permit,
            });
            connection
                .writer
                .send_with::<ProduceRequest>(version, size, request)
                .await?;
        }
        seq += count;
    }
    // Let the in-flight requests finish; then the readers have nothing left to read.
    for window in &windows {
        let _ = window.acquire_permit(args.inflight).await;
    }
    drop(connections);
    Ok(())
}

async fn list_offsets(
    w: &mut Writer,
    r: &mut Reader,
    topic: &str,
    partitions: &[i32],
    at: i64,
) -> Result<BTreeMap<i32, i64>> {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(at)
                    })
                    .collect(),
            )]);
    let resp = client::call(w, r, &req, 7).await?;
    Ok(resp
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, p.offset))
        .collect())
}

async fn consumer(
    args: Arc<Args>,
    stats: Arc<Stats>,
    addr: String,
    partitions: Vec<i32>,
) -> Result<()> {
    let (mut w, mut r) = client::connect(&addr).await?;
    let start_at = args.start_at.unwrap_or(if args.workload == Workload::Both {
        StartAt::Tail
    } else {
        StartAt::Earliest
    });
    let at = if start_at == StartAt::Earliest {
        -2
    } else {
        -1
    };
    let mut offsets = list_offsets(&mut w, &mut r, &args.topic, &partitions, at).await?;
    let version = w.version::<FetchRequest>(12)?;
    let fetch = |offsets: &BTreeMap<i32, i64>| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(200)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&args.topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(offsets[&p])
                                .with_partition_max_bytes(8 << 20)
                        })
                        .collect(),
                )])
    };
    w.send(&fetch(&offsets), version).await?;
    while !stats.stop.load(Ordering::Relaxed) {
        let resp = r.recv::<FetchRequest>(version).await?;
        // The next fetch goes before this answer is counted, as a Kafka consumer fetches
        // ahead while the application reads: the broker is never left waiting for us.
        for p in resp.responses.iter().flat_map(|t| &t.partitions) {
            let next = p.records.as_ref().and_then(|data| {
                tern_protocol::batch::headers(data)
                    .map(|(_, h)| h.last_offset() + 1)
                    .max()
            });
            if let (0, Some(next)) = (p.error_code, next) {
                offsets.insert(p.partition_index, next);
            }
        }
        w.send(&fetch(&offsets), version).await?;
        let measuring = stats.measuring.load(Ordering::Relaxed);
        let now = wall_us();
        for p in resp.responses.iter().flat_map(|t| &t.partitions) {
            if p.error_code != 0 {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(data) = &p.records else { continue };
            if data.is_empty() {
                continue;
            }
            let mut hist = measuring.then(|| stats.e2e_latency.window());
            let n = batch::for_each_timestamp(data.clone(), |ts| {
                if let Some(hist) = hist.as_mut() {
                    let _ = hist.record(now.saturating_sub(ts as u64 * 1000).max(1));
                }
            })?;
            drop(hist);
            if measuring {
                stats.consumed.fetch_add(n as u64, Ordering::Relaxed);
                stats
                    .consumed_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        if args.records > 0 && stats.consumed.load(Ordering::Relaxed) >= args.records {
            let _ = stats.finished_us.compare_exchange(
                0,
                wall_us(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            stats.stop.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Deals `items` out to `hands` hands in turn; empty hands are left out.
fn deal(items: Vec<i32>, hands: usize) -> Vec<Vec<i32>> {
    let mut dealt = vec![Vec::new(); hands.clamp(1, items.len().max(1))];
    let n = dealt.len();
    for (i, item) in items.into_iter().enumerate() {
        dealt[i % n].push(item);
    }
    dealt.retain(|hand| !hand.is_empty());
    dealt
}

#[derive(Serialize)]
struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    p9999_ms: f64,
    max_ms: f64,
    count: u64,
}

fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    if h.is_empty() {
        return None;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Some(Percentiles {
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        p9999_ms: ms(0.9999),
        max_ms: h.max() as f64 / 1000.0,
        count: h.len(),
    })
}

#[derive(Serialize)]
struct Summary {
    workload: String,
    seconds: f64,
    produced_records_per_sec: f64,
    produced_mb_per_sec: f64,
    consumed_records_per_sec: f64,
    consumed_mb_per_sec: f64,
    errors: u64,
    produce_latency: Option<Percentiles>,
    end_to_end_latency: Option<Percentiles>,
}

pub fn run(args: Args) -> Result<()> {
    let args = Arc::new(args);
    let setup_args = args.clone();
    let leaders = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(args.cpus[0]))
        .spawn(move || async move { setup(&setup_args).await })
        .map_err(|e| anyhow::anyhow!("start executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("setup thread: {e:?}"))??;
    let leaders = Arc::new(leaders);
    let partitions = leaders.len() as i32;
    let stats = Arc::new(Stats {
        measuring: AtomicBool::new(args.warmup == 0),
        stop: AtomicBool::new(false),
        produced: AtomicU64::new(0),
        produced_bytes: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        consumed_bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        finished_us: AtomicU64::new(0),
        produce_latency: Latency::new(),
        e2e_latency: Latency::new(),
    });
    let producers = if args.workload == crate::Workload::Consume {
        0
    } else {
        args.producers.max(1)
    };
    let consumers = if args.workload == Workload::Produce {
        0
    } else {
        args.consumers.max(1)
    };
    let share = |n: usize, i: usize| -> Vec<i32> {
        let mine: Vec<i32> = (0..partitions)
            .filter(|p| *p as usize % n == i % n)
            .collect();
        if mine.is_empty() {
            vec![(i % partitions as usize) as i32]
        } else {
            mine
        }
    };
    let rate = args.records_per_sec().map(|r| r / producers.max(1) as f64);
    let start = Instant::now() + Duration::from_millis(200);
    let wall_start_ms = (wall_us() / 1000) as i64 + 200;
    let mut executors = Vec::new();
    for (e, &cpu) in args.cpus.iter().enumerate() {
        let n = args.cpus.len();
        let mine_p: Vec<usize> = (0..producers).filter(|i| i % n == e).collect();
        let mine_c: Vec<usize> = (0..consumers).filter(|i| i % n == e).collect();
        if mine_p.is_empty() && mine_c.is_empty() {
            continue;
        }
        let (args, stats, leaders) = (args.clone(), stats.clone(), leaders.clone());
        // Every producer writes to every partition (its own connection, as separate producer
        // processes would), starting at a different one; consumers split the partitions.
        let parts_p: Vec<Vec<i32>> = mine_p
            .iter()
            .map(|&i| {
                let mut all: Vec<i32> = (0..partitions).collect();
                all.rotate_left(i % partitions as usize);
                all
            })
            .collect();
        // A consumer reads its share over its connections, each fetching part of it.
        let parts_c: Vec<Vec<i32>> = mine_c
            .iter()
            .flat_map(|&i| deal(share(consumers, i), args.connections as usize))
            .collect();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("bench-{e}"))
            .spin_before_park(Duration::from_micros(args.idle_poll_us))
            .spawn(move || async move {
                // Each partition's records go to its leader: a producer or a consumer
                // connection runs one task per leader of its partitions (a producer's rate
                // shared among them by partition count).
                let mut tasks = Vec::new();
                for parts in parts_c {
                    for (addr, parts) in by_leader(&parts, &leaders) {
                        let task = consumer(args.clone(), stats.clone(), addr, parts);
                        tasks.push(glommio::spawn_local(task));
                    }
                }
                for parts in parts_p {
                    let all = parts.len() as f64;
                    for (addr, parts) in by_leader(&parts, &leaders) {
                        let rate = rate.map(|r| r * parts.len() as f64 / all);
                        tasks.push(glommio::spawn_local(producer(
                            args.clone(),
                            stats.clone(),
                            addr,
                            parts,
                            rate,
                            start,
                            wall_start_ms,
                        )));
                    }
                }
                let mut result = Ok(());
                for t in tasks {
                    if let Err(e) = t.await {
                        stats.stop.store(true, Ordering::Relaxed);
                        result = Err(e);
                    }
                }
                result
            })
            .map_err(|e| anyhow::anyhow!("start executor on CPU {cpu}: {e}"))?;
        executors.push(handle);
    }
    std::thread::sleep(args.warmup());
    stats.measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    let measure_start_us = wall_us();
    let mut last = (0u64, 0u64, 0u64, 0u64);
    let mut second = 0;
    while measure_start.elapsed() < args.duration() && !stats.stop.load(Ordering::Relaxed) {
        // Short sleeps, so a run that ends at --records is timed where it ended.
        std::thread::sleep(Duration::from_millis(10));
        if measure_start.elapsed() < Duration::from_secs(second + 1) {
            continue;
        }
        second += 1;
        let now = (
            stats.produced.load(Ordering::Relaxed),
            stats.produced_bytes.load(Ordering::Relaxed),
            stats.consumed.load(Ordering::Relaxed),
            stats.consumed_bytes.load(Ordering::Relaxed),
        );
        let latency = |l: &Latency| match l.fold() {
            Some((p99, max)) => format!(" (p99 {p99:.2} max {max:.2} ms)"),
            None => String::new(),
        };
        eprintln!(
            "[{second:>3}s] produced {:>9} rec/s {:>8.1} MB/s{} | consumed {:>9} rec/s {:>8.1} MB/s{} | errors {}",
            now.0 - last.0,
            (now.1 - last.1) as f64 / 1e6,
            latency(&stats.produce_latency),
            now.2 - last.2,
            (now.3 - last.3) as f64 / 1e6,
            latency(&stats.e2e_latency),
            stats.errors.load(Ordering::Relaxed)
        );
        last = now;
    }
    let seconds = match stats.finished_us.load(Ordering::Relaxed) {
        0 => measure_start.elapsed().as_secs_f64(),
        at => at.saturating_sub(measure_start_us).max(1) as f64 / 1e6,
    };
    stats.measuring.store(false, Ordering::Relaxed);
    stats.stop.store(true, Ordering::Relaxed);
    for e in executors {
        e.join()
            .map_err(|e| anyhow::anyhow!("bench thread: {e:?}"))?
            .context("bench task failed")?;
    }
    // What was recorded after the last progress line.
    stats.produce_latency.fold();
    stats.e2e_latency.fold();
    let summary = Summary {
        workload: format!("{:?}", args.workload).to_lowercase(),
        seconds,
        produced_records_per_sec: stats.produced.load(Ordering::Relaxed) as f64 / seconds,
        produced_mb_per_sec: stats.produced_bytes.load(Ordering::Relaxed) as f64 / seconds / 1e6,
        consumed_records_per_sec: stats.consumed.load(Ordering::Relaxed) as f64 / seconds,
        consumed_mb_per_sec: stats.consumed_bytes.load(Ordering::Relaxed) as f64 / seconds / 1e6,
        errors: stats.errors.load(Ordering::Relaxed),
        produce_latency: percentiles(&stats.produce_latency.total.lock().expect("not poisoned")),
        end_to_end_latency: percentiles(&stats.e2e_latency.total.lock().expect("not poisoned")),
    };
    print_summary(&summary);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary)?;
        if path == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json).with_context(|| format!("write {path}"))?;
        }
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    println!("workload {} over {:.1} s", s.workload, s.seconds);
    if s.produced_records_per_sec > 0.0 {
        println!(
            "  produced: {:.0} records/s, {:.1} MB/s",
            s.produced_records_per_sec, s.produced_mb_per_sec
        );
    }
    if s.consumed_records_per_sec > 0.0 {
        println!(
            "  consumed: {:.0} records/s, {:.1} MB/s",
            s.consumed_records_per_sec, s.consumed_mb_per_sec
        );
    }
    println!("  errors: {}", s.errors);
    for (name, p) in [
        ("produce latency", &s.produce_latency),
        ("end-to-end latency", &s.end_to_end_latency),
    ] {
        if let Some(p) = p {
            println!(
                "  {name} (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}  ({} records)",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.p9999_ms, p.max_ms, p.count
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_go_to_their_leaders() {
        let leaders: Vec<String> = ["a:1", "b:2", "a:1", "c:3"].map(String::from).to_vec();
        assert_eq!(
            by_leader(&[3, 0, 1, 2], &leaders),
            vec![
                ("c:3".to_string(), vec![3]),
                ("a:1".to_string(), vec![0, 2]),
                ("b:2".to_string(), vec![1]),
            ]
        );
    }

    #[test]
    fn partitions_are_dealt_to_connections_in_turn() {
        assert_eq!(
            deal(vec![0, 1, 2, 3, 4], 2),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
        assert_eq!(deal(vec![0, 1], 4), vec![vec![0], vec![1]]);
        assert_eq!(deal(vec![7], 1), vec![vec![7]]);
    }

    #[test]
    fn requests_take_the_first_free_window_in_turn() {
        glommio::LocalExecutor::default().run(async {
            let windows: Vec<Rc<Semaphore>> = (0..3).map(|_| Rc::new(Semaphore::new(1))).collect();
            let mut next = 0;
            let (a, slot_a) = request_slot(&windows, &mut next).await.unwrap();
            let (b, slot_b) = request_slot(&windows, &mut next).await.unwrap();
            assert_eq!((a, b), (0, 1));
            drop(slot_a);
            // Window 2 is next in turn and free.
            let (c, _slot_c) = request_slot(&windows, &mut next).await.unwrap();
            assert_eq!(c, 2);
            // Only window 0 is free now: taken though it is not next in turn.
            let (d, slot_d) = request_slot(&windows, &mut next).await.unwrap();
            assert_eq!(d, 0);
            // None free: waits for the next in turn (1), even when another frees first.
            let got = Rc::new(std::cell::Cell::new(None));
            let waiter = glommio::spawn_local({
                let got = got.clone();
                async move {
                    let mut next = next;
                    let (i, _slot) = request_slot(&windows, &mut next).await.unwrap();
                    got.set(Some(i));
                }
            });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            drop(slot_d);
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!(got.get(), None);
            drop(slot_b);
            waiter.await;
            assert_eq!(got.get(), Some(1));
        });
    }
}
