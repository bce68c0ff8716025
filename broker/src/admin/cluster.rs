//! `tern cluster info`: the nodes (alive or fenced), the controller, and partitions that are
//! under-replicated (fewer in-sync replicas than replicas) or offline (no leader), over the
//! Kafka protocol.

use anyhow::Result;
use clap::{Args, Subcommand};
use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest};
use serde::Serialize;

use super::client::Brokers;
use super::{check, emit, print_json, table};

#[derive(Args)]
pub struct ClusterArgs {
    /// Brokers to talk to (comma-separated; the first reachable one is used).
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes, controller, under-replicated and offline partitions.
    Info,
}

#[derive(Serialize)]
struct NodeRow {
    node: i32,
    address: String,
    rack: Option<String>,
    controller: bool,
    /// The controller has not heard from it within the session timeout.
    fenced: bool,
    /// Answered this command (a node that did not may be down or cut off).
    reachable: bool,
}

#[derive(Serialize)]
struct Info {
    cluster_id: String,
    controller: i32,
    nodes: Vec<NodeRow>,
    partitions: usize,
    /// `topic-partition` of each partition with fewer in-sync replicas than replicas.
    under_replicated: Vec<String>,
    /// `topic-partition` of each partition without a leader.
    offline: Vec<String>,
}

fn info(brokers: &mut Brokers) -> Result<Info> {
    let described = brokers
        .bootstrap()
        .send(DescribeClusterRequest::default().with_include_fenced_brokers(true))?;
    check(described.error_code, "describe cluster")?;
    let controller = described.controller_id.0;
    let mut nodes: Vec<NodeRow> = described
        .brokers
        .iter()
        .map(|b| NodeRow {
            node: b.broker_id.0,
            address: format!("{}:{}", b.host, b.port),
            rack: b.rack.as_ref().map(|r| r.to_string()),
            controller: b.broker_id.0 == controller,
            fenced: b.is_fenced,
            reachable: false,
        })
        .collect();
    // Each node reports the partitions it leads (the ISR is the leader's knowledge).
    let mut partitions = 0;
    let mut under_replicated = Vec::new();
    let mut offline = Vec::new();
    let all = MetadataRequest::default().with_topics(None);
    let meta = brokers.bootstrap().send(all.clone())?;
    for t in &meta.topics {
        for p in &t.partitions {
            partitions += 1;
            if p.leader_id.0 < 0 {
                let topic = t.name.as_ref().map_or(String::new(), |n| n.0.to_string());
                offline.push(format!("{topic}-{}", p.partition_index));
            }
        }
    }
    for node in nodes.iter_mut() {
        let Ok(client) = brokers.node(node.node) else {
            continue;
        };
        let Ok(meta) = client.send(all.clone()) else {
            continue;
        };
        node.reachable = true;
        for t in &meta.topics {
            let topic = t.name.as_ref().map_or(String::new(), |n| n.0.to_string());
            for p in t.partitions.iter().filter(|p| p.leader_id.0 == node.node) {
                if p.isr_nodes.len() < p.replica_nodes.len() {
                    under_replicated.push(format!("{topic}-{}", p.partition_index));
                }
            }
        }
    }
    under_replicated.sort();
    offline.sort();
    Ok(Info {
        cluster_id: described.cluster_id.to_string(),
        controller,
        nodes,
        partitions,
        under_replicated,
        offline,
    })
}

pub fn run(args: ClusterArgs) -> Result<()> {
    let mut brokers = Brokers::connect(&args.brokers)?;
    match args.command {
        ClusterCommand::Info => {
            let info = info(&mut brokers)?;
            if args.json {
                return print_json(&info);
            }
            emit(&format!(
                "CLUSTER           {}\nCONTROLLER        {}\nPARTITIONS        {}\nUNDER-REPLICATED  {}\nOFFLINE           {}\n",
                info.cluster_id,
                info.controller,
                info.partitions,
                if info.under_replicated.is_empty() { "-".into() } else { info.under_replicated.join(" ") },
                if info.offline.is_empty() { "-".into() } else { info.offline.join(" ") },
            ))?;
            emit(&table(
                &[
                    "NODE",
                    "ADDRESS",
                    "RACK",
                    "CONTROLLER",
                    "FENCED",
                    "REACHABLE",
                ],
                info.nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.node.to_string(),
                            n.address.clone(),
                            n.rack.clone().unwrap_or_else(|| "-".into()),
                            n.controller.to_string(),
                            n.fenced.to_string(),
                            n.reachable.to_string(),
                        ]
                    })
                    .collect(),
            ))
        }
    }
}
