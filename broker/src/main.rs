//! `tern`: a Kafka-compatible event streaming broker.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

mod admin;
mod buffers;
mod cluster;
mod config;
mod controller;
mod cpus;
mod group;
mod internal;
mod kafka;
mod mesh;
mod metadata;
mod replication;
mod rpc;
mod send;
mod server;
mod shard;
mod topic_config;
mod txn;

use config::BrokerConfig;
use metadata::MetaStore;
use shard::{ShardMessage, ShardSeed};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: a Kafka-compatible event streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Start(Box<StartArgs>),
    /// Administer consumer groups: list, describe, delete, reset offsets.
    Group(admin::group::GroupArgs),
    /// Administer topics: list, describe, create, delete, alter configs.
    Topic(admin::topic::TopicArgs),
    /// See the cluster: nodes, controller, under-replicated and offline partitions.
    Cluster(admin::cluster::ClusterArgs),
    /// Administer transactions: list, describe, show producers, abort a hanging one.
    Txn(admin::txn::TxnArgs),
}

#[derive(Args)]
struct StartArgs {
    /// Directory for partition logs and cluster metadata (created if missing).
    #[arg(long, default_value = "./tern-data")]
    data_dir: PathBuf,
    /// Kafka listener address. Every shard accepts connections on it (SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: String,
    /// Address given to clients in Metadata responses [default: the --listen address].
    #[arg(long)]
    advertised: Option<String>,
    /// Number of shards: one pinned thread per CPU, taken from the usable CPUs in order
    /// [default: all usable CPUs, or all of --numa-node's].
    #[arg(long)]
    cores: Option<usize>,
    /// Run shards only on this NUMA node's CPUs (production pinning).
    #[arg(long)]
    numa_node: Option<usize>,
    /// This node's broker id.
    #[arg(long, default_value_t = 0)]
    node_id: i32,
    /// Cluster mode: the controller quorum's voters, `ID@HOST:PORT,...` (their RPC listeners;
    /// KRaft's controller.quorum.voters). A node not named in it joins as a broker only.
    /// Without it, the node is a single-node cluster.
    #[arg(long, requires = "rpc_listen")]
    controller_quorum: Option<String>,
    /// Cluster mode: this node's internal listener, for replication and controller traffic.
    #[arg(long, requires = "controller_quorum")]
    rpc_listen: Option<String>,
    /// Cluster mode: the RPC address other nodes use to reach this one, when it differs from
    /// --rpc-listen (NAT, or a wildcard listen address) [default: the --rpc-listen address].
    #[arg(long, requires = "rpc_listen")]
    rpc_advertised: Option<String>,
    /// Cluster mode: how often each leader hands partitions back to their preferred (first)
    /// replica when that one is in sync (auto.leader.rebalance.enable with
    /// leader.imbalance.check.interval.seconds); 0 turns it off.
    #[arg(long, default_value_t = 300_000)]
    leader_imbalance_check_interval_ms: u64,
    /// Cluster mode: a node the controller has not heard from for this long is fenced
    /// (broker.session.timeout.ms): new replicas avoid it and its replicas show as offline.
    #[arg(long, default_value_t = 9_000)]
    broker_session_timeout_ms: u64,
    /// This node's rack (broker.rack), shown in Metadata; consumers with the same
    /// `client.rack` read from this node's in-sync replicas (KIP-392).
    #[arg(long)]
    rack: Option<String>,
    /// Cluster mode: a follower that has not caught up for this long leaves the ISR
    /// (replica.lag.time.max.ms).
    #[arg(long, default_value_t = 30_000)]
    replica_lag_time_max_ms: u64,
    /// Create unknown topics on Metadata and Produce requests (auto.create.topics.enable).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics, and of CreateTopics asking for the default (num.partitions).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    default_partitions: i32,
    /// Largest request frame accepted; larger ones close the connection (socket.request.max.bytes).
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Memory budget of the node, shared equally by its shards: half for each shard's batch
    /// cache, half for requests in flight (reading stops, as backpressure, when it is used).
    #[arg(long, default_value = "2G", value_parser = config::parse_size)]
    memory: usize,
    /// Most bytes of recently written batches kept in memory per partition for tail consumers.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    cache_bytes_per_partition: usize,
    /// Partitions of __consumer_offsets, created on first start (offsets.topic.num.partitions).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i32).range(1..=1000))]
    offsets_partitions: i32,
    /// Partitions of __transaction_state, created on first start
    /// (transaction.state.log.num.partitions; 50 as in Kafka).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=1000))]
    transaction_partitions: i32,
    /// How long a group forming from empty waits for more members before its first
    /// rebalance completes (group.initial.rebalance.delay.ms).
    #[arg(long, default_value_t = 3000)]
    group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a group member may ask for (group.min.session.timeout.ms).
    #[arg(long, default_value_t = 6000)]
    group_min_session_timeout_ms: u64,
    /// Largest session timeout a group member may ask for (group.max.session.timeout.ms).
    #[arg(long, default_value_t = 1_800_000)]
    group_max_session_timeout_ms: u64,
    /// Session timeout of consumer-protocol (KIP-848) group members
    /// (group.consumer.session.timeout.ms).
    #[arg(long, default_value_t = 45_000)]
    group_consumer_session_timeout_ms: u64,
    /// Heartbeat interval given to consumer-protocol group members
    /// (group.consumer.heartbeat.interval.ms).
    #[arg(long, default_value_t = 5_000)]
    group_consumer_heartbeat_interval_ms: u64,
    /// How often retention.ms / retention.bytes are applied (log.retention.check.interval.ms).
    #[arg(long, default_value_t = 30_000)]
    retention_check_interval_ms: u64,
    /// Idempotent producers not heard from for this long are forgotten, and a retry of their
    /// old batches taken as new (producer.id.expiration.ms).
    #[arg(long, default_value_t = 86_400_000)]
    producer_id_expiration_ms: u64,
    /// The longest transaction.timeout.ms a transactional producer may ask for
    /// (transaction.max.timeout.ms); longer: INVALID_TRANSACTION_TIMEOUT.
    #[arg(long, default_value_t = 900_000, value_parser = clap::value_parser!(i32).range(1..))]
    transaction_max_timeout_ms: i32,
    /// A transactional id with no transaction open, unused for this long, is forgotten
    /// (transactional.id.expiration.ms).
    #[arg(long, default_value_t = 604_800_000, value_parser = clap::value_parser!(u64).range(1..))]
    transactional_id_expiration_ms: u64,
    /// How long an idle shard keeps polling for work before it sleeps, in microseconds
    /// (0: sleep at once). Waking a sleeping thread costs far more than polling for a moment,
    /// most of all in virtual machines, so many small requests go faster with polling; the
    /// price is CPU time, taken from kernel threads that share the shard's core.
    #[arg(long, default_value_t = 0)]
    idle_poll_us: u64,
    /// Segment writes each shard runs at once, shared by its partitions. When all are busy,
    /// appends gather into larger writes: fewer device requests for the same bytes.
    // Not 4: with pipelined writes, a shard's busy partitions then queued for slots behind
    // each other's second write in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    write_slots: u64,
}

/// Every partition holds files open (segment, indexes), so a node with thousands of them needs
/// more descriptors than the usual default soft limit: raise it to the hard limit, as Kafka's
/// and Redpanda's packaging do.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-parameter; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let old = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::info!(
                    from = old,
                    to = limit.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    }
}

pub(crate) fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

/// Where log lines go: stderr, but a line that cannot be written (stderr redirected to a file
/// on a full disk) is dropped. tracing reports a failed write with `eprintln!`, which panics
/// when stderr fails too, and that took down the shard that logged.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LossyStderr)
        .init();
    match Cli::parse().command {
        Command::Start(args) => start(*args),
        Command::Group(args) => admin_command(admin::group::run(args)),
        Command::Topic(args) => admin_command(admin::topic::run(args)),
        Command::Cluster(args) => admin_command(admin::cluster::run(args)),
        Command::Txn(args) => admin_command(admin::txn::run(args)),
    }
}

/// An admin command's outcome: errors as one line and exit status 1.
fn admin_command(result: Result<()>) -> Result<()> {
    result.or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    })
}

fn start(args: StartArgs) -> Result<()> {
    let listen = resolve(&args.listen)?;
    let advertised = args
        .advertised
        .clone()
        .unwrap_or_else(|| args.listen.clone());
    let (host, port) = advertised
        .rsplit_once(':')
        .with_context(|| format!("--advertised {advertised} must be HOST:PORT"))?;
    let cpus = cpus::select(args.cores, args.numa_node)?;
    let config = Arc::new(BrokerConfig {
        node_id: args.node_id,
        // Absolute: glommio opens relative paths against an invalid directory descriptor
        // (EBADF), which broke the default `./tern-data`.
        data_dir: std::path::absolute(&args.data_dir)
            .with_context(|| format!("data dir {}", args.data_dir.display()))?,
        listen,
        advertised_host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
        advertised_port: port
            .parse()
            .with_context(|| format!("port of {advertised}"))?,
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.default_partitions,
        max_request_bytes: args.max_request_bytes,
        cache_bytes_per_partition: args.cache_bytes_per_partition,
        memory_per_shard: args.memory / cpus.len(),
        group: group::state::GroupConfig {
            min_session_timeout: std::time::Duration::from_millis(
                args.group_min_session_timeout_ms,
            ),
            max_session_timeout: std::time::Duration::from_millis(
                args.group_max_session_timeout_ms,
            ),
            initial_rebalance_delay: std::time::Duration::from_millis(
                args.group_initial_rebalance_delay_ms,
            ),
            consumer_session_timeout: std::time::Duration::from_millis(
                args.group_consumer_session_timeout_ms,
            ),
            consumer_heartbeat_interval: std::time::Duration::from_millis(
                args.group_consumer_heartbeat_interval_ms,
            ),
        },
        offsets_partitions: args.offsets_partitions,
        transaction_partitions: args.transaction_partitions,
        retention_check_interval: std::time::Duration::from_millis(
            args.retention_check_interval_ms,
        ),
        producer_id_expiration: std::time::Duration::from_millis(args.producer_id_expiration_ms),
        transaction_max_timeout_ms: args.transaction_max_timeout_ms,
        transactional_id_expiration: std::time::Duration::from_millis(
            args.transactional_id_expiration_ms,
        ),
        write_slots: args.write_slots as usize,
        cluster: match (&args.controller_quorum, &args.rpc_listen) {
            (Some(quorum), Some(rpc)) => Some(cluster::ClusterConfig {
                node_id: u64::try_from(args.node_id).context("--node-id must not be negative")?,
                rpc_listen: resolve(rpc)?,
                rpc_advertised: resolve(args.rpc_advertised.as_deref().unwrap_or(rpc))?,
                session_timeout: std::time::Duration::from_millis(args.broker_session_timeout_ms),
                leader_rebalance: (args.leader_imbalance_check_interval_ms > 0).then(|| {
                    std::time::Duration::from_millis(args.leader_imbalance_check_interval_ms)
                }),
                quorum: cluster::ClusterConfig::parse_quorum(quorum)?,
                rack: args.rack.clone(),
                replica_lag: std::time::Duration::from_millis(args.replica_lag_time_max_ms),
            }),
            _ => None,
        },
    });
    let idle_poll = std::time::Duration::from_micros(args.idle_poll_us);
    // Installed before any shard starts, so a signal is never missed.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("install signal handlers")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let _data_lock = lock_data_dir(&config.data_dir)?;
    raise_open_files_limit();
    let meta = Arc::new(MetaStore::load(&config.data_dir, cpus.len())?);
    if let Some(cluster) = &config.cluster {
        // The metadata log is the cluster's metadata: a single node's topics move into it
        // (cluster/migrate.rs), which takes a quorum of this node alone.
        let alone = cluster.quorum.len() == 1 && cluster.quorum.contains_key(&cluster.node_id);
        let topics = meta.set_aside_single_node();
        anyhow::ensure!(
            topics == 0 || alone,
            "data dir {} holds a single node's {topics} topics: to move them into a cluster, start \
             this node first as a quorum of itself alone (--controller-quorum {}@<its RPC \
             address>), then add nodes and reassign the partitions",
            config.data_dir.display(),
            cluster.node_id
        );
    } else {
        meta.ensure_internal_topic(
            group::OFFSETS_TOPIC,
            config.offsets_partitions,
            &[
                ("cleanup.policy", "compact"),
                ("segment.bytes", "104857600"),
            ],
            cpus.len(),
        )?;
        meta.ensure_internal_topic(
            txn::TXN_TOPIC,
            config.transaction_partitions,
            &[
                ("cleanup.policy", "compact"),
                ("segment.bytes", "104857600"),
            ],
            cpus.len(),
        )?;
    }

    let meshes = mesh::mesh::<ShardMessage>(cpus.len(), mesh::QUEUE_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let mut executors = Vec::new();
    let mut stops = Vec::new();
    for (id, (cpu, mesh)) in cpus.iter().copied().zip(meshes).enumerate() {
        let (stop_tx, stop) = futures::channel::oneshot::channel();
        stops.push(stop_tx);
        let seed = ShardSeed {
            id,
            config: config.clone(),
            meta: meta.clone(),
            mesh,
            stop,
        };
        let ready = ready_tx.clone();
        let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("shard-{id}"));
        if idle_poll > std::time::Duration::ZERO {
            builder = builder.spin_before_park(idle_poll);
        }
        let executor = builder
            .spawn(move || async move {
                let started = async {
                    let shard = seed.start().await?;
                    let listener = server::bind(&shard)?;
                    Ok::<_, anyhow::Error>((shard, listener))
                }
                .await;
                match started {
                    Ok((shard, listener)) => {
                        let _ = ready.send(Ok(()));
                        server::accept_loop(shard, listener).await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("start shard {id} on CPU {cpu}: {e}"))?;
        executors.push(executor);
    }
    drop(ready_tx);
    for _ in 0..cpus.len() {
        ready_rx.recv().context("a shard exited during startup")??;
    }
    tracing::info!(
        listen = %config.listen,
        advertised = %advertised,
        shards = cpus.len(),
        cpus = ?cpus,
        memory_per_shard = config.memory_per_shard,
        data_dir = %config.data_dir.display(),
        "tern ready"
    );

    signals.forever().next();
    tracing::info!("shutting down: closing partitions");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for stop in stops {
        let _ = stop.send(done_tx.clone());
    }
    for _ in 0..cpus.len() {
        let _ = done_rx.recv();
    }
    tracing::info!("stopped");
    std::process::exit(0);
}

/// Holds an exclusive lock on the data directory for the life of the process, so two brokers
/// never share one.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "data dir {} is in use by another tern process",
            dir.display()
        );
    }
    Ok(file)
}
