//! `tern topic list|describe|create|delete|alter-config`: topic administration over the Kafka
//! protocol, like `kafka-topics.sh` or `rpk topic`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, IncrementalAlterConfigsRequest, MetadataRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use std::collections::BTreeMap;

use super::client::Brokers;
use super::{check, emit, print_json, table};

#[derive(Args)]
pub struct TopicArgs {
    /// Brokers to talk to (comma-separated; the first reachable one is used).
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// List topics with their partition count and replication factor.
    List,
    /// Show a topic's partitions: leader, leader epoch, replicas, in-sync replicas, log start
    /// and high watermark.
    Describe { topic: String },
    /// Create a topic.
    Create {
        topic: String,
        /// Partitions [default: the broker's num.partitions].
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        /// Replicas per partition [default: the broker's default].
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// A topic config, `name=value` (repeatable).
        #[arg(long, short = 'c', value_parser = key_value)]
        config: Vec<(String, String)>,
    },
    /// Delete a topic and its data.
    Delete { topic: String },
    /// Change a topic's configs.
    AlterConfig {
        topic: String,
        /// Set a config, `name=value` (repeatable).
        #[arg(long, value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Return a config to its default (repeatable).
        #[arg(long)]
        delete: Vec<String>,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// Like `check`, with the broker's message when it gave one.
fn check_with_message(code: i16, message: Option<&str>, what: &str) -> Result<()> {
    if code != 0 {
        let message = message.map_or(String::new(), |m| format!(": {m}"));
        bail!("{what}: {}{message}", super::error_text(code));
    }
    Ok(())
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

#[derive(Serialize)]
struct TopicRow {
    topic: String,
    partitions: usize,
    replication_factor: usize,
    internal: bool,
}

#[derive(Serialize)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline: Vec<i32>,
    log_start: Option<i64>,
    high_watermark: Option<i64>,
}

fn list(brokers: &mut Brokers) -> Result<Vec<TopicRow>> {
    let meta = brokers.metadata(None)?;
    let mut rows: Vec<TopicRow> = meta
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .map(|t| TopicRow {
            topic: t.name.as_ref().map_or(String::new(), |n| n.0.to_string()),
            partitions: t.partitions.len(),
            replication_factor: t.partitions.first().map_or(0, |p| p.replica_nodes.len()),
            internal: t.is_internal,
        })
        .collect();
    rows.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(rows)
}

/// ListOffsets at `timestamp` for `partitions` of `topic`, asked of `leader`: the partitions
/// that answered.
fn offsets_at(
    brokers: &mut Brokers,
    leader: i32,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<BTreeMap<i32, i64>> {
    let wanted = [(topic.to_string(), partitions.to_vec())].into();
    Ok(brokers
        .offsets_at(leader, &wanted, timestamp)?
        .into_iter()
        .filter_map(|((_, p), offset)| Some((p, offset.ok()?)))
        .collect())
}

/// A topic's partitions. Leaders, epochs and in-sync replicas come from each partition's
/// leader (the ISR is its knowledge), offsets too.
fn describe(brokers: &mut Brokers, topic: &str) -> Result<Vec<PartitionRow>> {
    let meta = brokers.metadata(Some(&[topic.to_string()]))?;
    let t = meta.topics.first().context("empty Metadata response")?;
    check(t.error_code, &format!("describe {topic}"))?;
    let mut rows: Vec<PartitionRow> = t
        .partitions
        .iter()
        .map(|p| PartitionRow {
            partition: p.partition_index,
            leader: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            offline: p.offline_replicas.iter().map(|b| b.0).collect(),
            log_start: None,
            high_watermark: None,
        })
        .collect();
    rows.sort_by_key(|r| r.partition);
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.leader >= 0) {
        by_leader.entry(r.leader).or_default().push(r.partition);
    }
    for (leader, partitions) in by_leader {
        let Ok(client) = brokers.node(leader) else {
            continue; // unreachable: its partitions show no offsets
        };
        let from_leader = client.send(
            MetadataRequest::default()
                .with_allow_auto_topic_creation(false)
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name(topic)))
                ])),
        )?;
        let led: BTreeMap<i32, _> = from_leader
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| (p.partition_index, p))
            .collect();
        let starts = offsets_at(brokers, leader, topic, &partitions, -2)?;
        let ends = offsets_at(brokers, leader, topic, &partitions, -1)?;
        for r in rows
            .iter_mut()
            .filter(|r| partitions.contains(&r.partition))
        {
            if let Some(p) = led.get(&r.partition).filter(|p| p.leader_id.0 == leader) {
                r.isr = p.isr_nodes.iter().map(|b| b.0).collect();
                r.leader_epoch = p.leader_epoch;
            }
            r.log_start = starts.get(&r.partition).copied();
            r.high_watermark = ends.get(&r.partition).copied();
        }
    }
    Ok(rows)
}

fn nodes(ns: &[i32]) -> String {
    if ns.is_empty() {
        return "-".into();
    }
    ns.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run(args: TopicArgs) -> Result<()> {
    let mut brokers = Brokers::connect(&args.brokers)?;
    let json = args.json;
    match args.command {
        TopicCommand::List => {
            let rows = list(&mut brokers)?;
            if json {
                return print_json(&rows);
            }
            emit(&table(
                &["TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "INTERNAL"],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.topic.clone(),
                            r.partitions.to_string(),
                            r.replication_factor.to_string(),
                            r.internal.to_string(),
                        ]
                    })
                    .collect(),
            ))
        }
        TopicCommand::Describe { topic } => {
            let rows = describe(&mut brokers, &topic)?;
            if json {
                return print_json(&rows);
            }
            let opt = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
            emit(&table(
                &[
                    "PARTITION",
                    "LEADER",
                    "EPOCH",
                    "REPLICAS",
                    "ISR",
                    "OFFLINE",
                    "LOG-START",
                    "HIGH-WATERMARK",
                ],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.partition.to_string(),
                            if r.leader < 0 {
                                "-".into()
                            } else {
                                r.leader.to_string()
                            },
                            r.leader_epoch.to_string(),
                            nodes(&r.replicas),
                            nodes(&r.isr),
                            nodes(&r.offline),
                            opt(r.log_start),
                            opt(r.high_watermark),
                        ]
                    })
                    .collect(),
            ))
        }
        TopicCommand::Create {
            topic,
            partitions,
            replication_factor,
            config,
        } => {
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(name(&topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(
                        config
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    )]);
            let resp = brokers.controller()?.send(req)?;
            let r = resp.topics.first().context("empty CreateTopics response")?;
            check_with_message(
                r.error_code,
                r.error_message.as_deref(),
                &format!("create {topic}"),
            )?;
            if json {
                return print_json(&serde_json::json!({ "created": topic }));
            }
            emit(&format!("created topic {topic}"))
        }
        TopicCommand::Delete { topic } => {
            let client = brokers.controller()?;
            // v6 names topics in `topics` (by name or id), earlier versions in `topic_names`.
            let req = match client.version::<DeleteTopicsRequest>()? {
                v if v >= 6 => DeleteTopicsRequest::default().with_topics(vec![
                    DeleteTopicState::default().with_name(Some(name(&topic))),
                ]),
                _ => DeleteTopicsRequest::default().with_topic_names(vec![name(&topic)]),
            }
            .with_timeout_ms(30_000);
            let resp = client.send(req)?;
            let r = resp
                .responses
                .first()
                .context("empty DeleteTopics response")?;
            check(r.error_code, &format!("delete {topic}"))?;
            if json {
                return print_json(&serde_json::json!({ "deleted": topic }));
            }
            emit(&format!("deleted topic {topic}"))
        }
        TopicCommand::AlterConfig { topic, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --set name=value or --delete name");
            }
            const SET: i8 = 0;
            const DELETE: i8 = 1;
            const TOPIC: i8 = 2;
            let configs = set
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone()), SET))
                .chain(delete.iter().map(|k| (k.clone(), None, DELETE)))
                .map(|(k, v, op)| {
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k))
                        .with_value(v.map(StrBytes::from_string))
                        .with_config_operation(op)
                })
                .collect();
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_string(topic.clone()))
                    .with_configs(configs),
            ]);
            let resp = brokers.controller()?.send(req)?;
            let r = resp
                .responses
                .first()
                .context("empty IncrementalAlterConfigs response")?;
            check_with_message(
                r.error_code,
                r.error_message.as_deref(),
                &format!("alter {topic}"),
            )?;
            if json {
                return print_json(&serde_json::json!({ "altered": topic }));
            }
            emit(&format!("changed the configs of {topic}"))
        }
    }
}
