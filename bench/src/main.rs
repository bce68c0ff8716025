//! `tern-bench`: a Kafka load generator. Speaks the Kafka protocol itself and runs
//! thread-per-core on glommio, so it can load any Kafka-compatible broker without becoming
//! the bottleneck. Rate-limited runs are open-loop: a record's latency counts from when it was
//! due, so a stalled broker cannot hide its stalls.

mod batch;
mod client;
mod produce;
mod run;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Producers only.
    Produce,
    /// Consumers only (from earliest or from the tail).
    Consume,
    /// Producers and consumers together; end-to-end latency.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Payload {
    Random,
    Compressible,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    Earliest,
    Tail,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tern-bench",
    version,
    about = "Kafka load generator (thread-per-core, open-loop)"
)]
pub struct Args {
    /// Brokers to bootstrap from (HOST:PORT, comma-separated: the first that answers). Each
    /// partition's records go to, and are read from, its leader, as the cluster's metadata
    /// names it.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, value_enum, default_value = "produce")]
    pub workload: Workload,
    #[arg(long, default_value = "tern-bench")]
    pub topic: String,
    /// Partitions; the topic is created with this many if missing.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of the topic when it is created (-1: the broker's default).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub replication_factor: i16,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, value_enum, default_value = "random")]
    pub payload: Payload,
    /// Distinct keys (0: no keys).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Bytes of records per batch. Records fill one partition's batch, then the next (the
    /// sticky partitioner). As a Kafka client's sender does, a request carries at most one
    /// batch per partition: at full speed, one for every partition of the producer; at a
    /// fixed rate, every batch full (or lingered) when a request slot is free.
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    /// Longest a record waits for its batch to fill, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub acks: i16,
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Codec,
    /// Producers, each writing to every partition.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers, each reading its share of the partitions.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Connections of each producer and each consumer. A producer sends its requests over its
    /// connections in turn; a consumer splits its partitions among its connections. A broker
    /// with several shards spreads connections over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connections: u64,
    /// How long an idle load-generator thread keeps polling before it sleeps, in
    /// microseconds (0: sleep at once). A sleeping thread wakes tens to hundreds of
    /// microseconds late, most of all in virtual machines, and at a fixed rate that lateness
    /// is counted as produce latency; polling keeps it out of the figures, for a busy core.
    #[arg(long, default_value_t = 0)]
    pub idle_poll_us: u64,
    /// Produce requests in flight per producer connection.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub inflight: u64,
    /// Target rate in records/s over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Target rate in MB/s over all producers (overrides --rate).
    #[arg(long)]
    pub mb_rate: Option<f64>,
    /// Seconds before measuring starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Where consumers start [default: earliest for consume, tail for both].
    #[arg(long, value_enum)]
    pub start_at: Option<StartAt>,
    /// CPUs to run on, one thread each (e.g. 1 or 2,3); default: the first CPU this process
    /// may run on (so `taskset -c 1 tern-bench` runs on CPU 1).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Write a machine-readable summary to this file ("-": stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Consume-only runs stop when consumers have read this many records (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
}

impl Args {
    /// Records per second over all producers, if limited.
    pub fn records_per_sec(&self) -> Option<f64> {
        match (self.mb_rate, self.rate) {
            (Some(mb), _) => Some(mb * 1_000_000.0 / self.record_size.max(1) as f64),
            (None, 0) => None,
            (None, r) => Some(r as f64),
        }
    }
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup)
    }
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if !matches!(args.acks, -1..=1) {
        bail!("--acks must be 0, 1 or -1");
    }
    let allowed = allowed_cpus()?;
    if args.cpus.is_empty() {
        args.cpus = allowed[..1].to_vec();
    }
    // Each executor pins its thread: a CPU outside the mask would silently undo `taskset`.
    if let Some(cpu) = args.cpus.iter().find(|c| !allowed.contains(c)) {
        bail!("--cpus {cpu} is outside the CPUs this process may run on ({allowed:?})");
    }
    run::run(args)
}

/// CPUs this process may run on (its affinity mask).
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the zeroed cpu_set_t we pass with its exact size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        bail!("read CPU affinity: {}", std::io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("no CPU in this process's affinity mask");
    }
    Ok(cpus)
}
