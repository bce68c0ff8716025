//! `tern group list|describe|delete|reset-offsets`: consumer group administration over the
//! Kafka protocol, like `kafka-consumer-groups.sh` or `rpk group`. As a Kafka client does, it
//! asks a group's coordinator about the group, partition leaders about offsets, and every node
//! for the groups it coordinates.

use anyhow::{bail, Context, Result};
use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use serde::Serialize;
use std::collections::BTreeMap;

use super::client::{Brokers, Client, CoordinatorKind};
use super::{check, emit, print_json, table};

#[derive(Args)]
pub struct GroupArgs {
    /// A broker to talk to.
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state and protocol type.
    List,
    /// Show a group: state, protocol, members and their assignments, and per partition the
    /// committed offset, log end offset and lag.
    Describe { group: String },
    /// Delete a group that has no active members, with its committed offsets.
    Delete { group: String },
    /// Set a group's committed offsets for a topic. Refused while the group has members.
    ResetOffsets(ResetArgs),
}

#[derive(Args)]
struct ResetArgs {
    group: String,
    #[arg(long)]
    topic: String,
    #[arg(long, group = "target")]
    to_earliest: bool,
    #[arg(long, group = "target")]
    to_latest: bool,
    /// RFC 3339 time, e.g. 2026-11-22T10:00:00Z: the first offset at or after it.
    #[arg(long, group = "target")]
    to_datetime: Option<String>,
    #[arg(long, group = "target")]
    to_offset: Option<i64>,
}

/// Partitions by topic in a consumer-protocol assignment.
fn decode_assignment(mut bytes: bytes::Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut out = BTreeMap::new();
    if bytes.remaining() < 2 {
        return out;
    }
    let version = bytes.get_i16();
    if let Ok(a) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)) {
        for tp in a.assigned_partitions {
            out.entry(tp.topic.0.to_string())
                .or_insert_with(Vec::new)
                .extend(tp.partitions);
        }
    }
    out
}

#[derive(Serialize)]
struct GroupRow {
    group: String,
    state: String,
    protocol_type: String,
}

#[derive(Serialize)]
struct MemberRow {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    host: String,
    assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Serialize)]
struct OffsetRow {
    topic: String,
    partition: i32,
    committed: i64,
    log_end: i64,
    lag: Option<i64>,
    member: Option<String>,
}

#[derive(Serialize)]
struct Description {
    group: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberRow>,
    offsets: Vec<OffsetRow>,
}

/// Every node's groups (each node lists those it coordinates).
fn list(brokers: &mut Brokers) -> Result<Vec<GroupRow>> {
    let mut rows = BTreeMap::new();
    let nodes: Vec<i32> = brokers.nodes.keys().copied().collect();
    for node in nodes {
        let resp = brokers.node(node)?.send(ListGroupsRequest::default())?;
        check(resp.error_code, &format!("list groups on node {node}"))?;
        for g in resp.groups {
            let row = GroupRow {
                group: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            };
            rows.insert(row.group.clone(), row);
        }
    }
    Ok(rows.into_values().collect())
}

/// The node coordinating `group`.
fn coordinator<'a>(brokers: &'a mut Brokers, group: &str) -> Result<&'a mut Client> {
    brokers.coordinator(group, CoordinatorKind::Group)
}

/// Partition leaders of `topics`: (topic, partition) -> node.
fn leaders(brokers: &mut Brokers, topics: &[String]) -> Result<BTreeMap<(String, i32), i32>> {
    let meta = brokers.metadata(Some(topics))?;
    let mut out = BTreeMap::new();
    for t in meta.topics {
        let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
        check(t.error_code, &format!("topic {name}"))?;
        for p in t.partitions {
            out.insert((name.clone(), p.partition_index), p.leader_id.0);
        }
    }
    Ok(out)
}

/// Committed offsets of a group: (topic, partition) -> offset.
fn committed(client: &mut Client, group: &str) -> Result<BTreeMap<(String, i32), i64>> {
    let id = GroupId(StrBytes::from_string(group.to_string()));
    let req = if client.version::<OffsetFetchRequest>()? >= 8 {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(id)
            .with_topics(None)])
    } else {
        OffsetFetchRequest::default()
            .with_group_id(id)
            .with_topics(None)
    };
    let resp = client.send(req)?;
    let mut out = BTreeMap::new();
    check(resp.error_code, "fetch offsets")?;
    for g in resp.groups {
        check(g.error_code, "fetch offsets")?;
        for t in g.topics {
            for p in t.partitions {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    for t in resp.topics {
        for p in t.partitions {
            out.insert(
                (t.name.0.to_string(), p.partition_index),
                p.committed_offset,
            );
        }
    }
    Ok(out)
}

/// ListOffsets for every partition of `topics` at `timestamp` (-1 latest, -2 earliest), asked
/// of each partition's leader.
fn list_offsets(
    brokers: &mut Brokers,
    topics: &BTreeMap<String, Vec<i32>>,
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>> {
    let names: Vec<String> = topics.keys().cloned().collect();
    let leaders = if names.is_empty() {
        BTreeMap::new()
    } else {
        leaders(brokers, &names)?
    };
    let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for (t, ps) in topics {
        for &p in ps {
            match leaders.get(&(t.clone(), p)) {
                Some(&leader) if leader >= 0 => by_leader
                    .entry(leader)
                    .or_default()
                    .entry(t.clone())
                    .or_default()
                    .push(p),
                _ => bail!("{t}-{p} has no leader right now; try again"),
            }
        }
    }
    let mut out = BTreeMap::new();
    for (leader, led) in by_leader {
        for ((t, p), offset) in brokers.offsets_at(leader, &led, timestamp)? {
            let offset = match offset {
                Ok(offset) => offset,
                Err(code) => {
                    check(code, &format!("list offsets of {t}-{p}"))?;
                    continue;
                }
            };
            out.insert((t, p), offset);
        }
    }
    Ok(out)
}

fn describe(brokers: &mut Brokers, group: &str) -> Result<Description> {
    let client = coordinator(brokers, group)?;
    let resp = client.send(
        DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]),
    )?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .context("empty DescribeGroups response")?;
    if g.error_code == ResponseError::GroupIdNotFound.code() || g.group_state.as_str() == "Dead" {
        bail!("group {group} does not exist");
    }
    check(g.error_code, "describe group")?;
    let members: Vec<MemberRow> = g
        .members
        .iter()
        .map(|m| MemberRow {
            member_id: m.member_id.to_string(),
            instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assignment: decode_assignment(m.member_assignment.clone()),
        })
        .collect();
    let committed = committed(client, group)?;
    let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in committed.keys() {
        partitions.entry(t.clone()).or_default().push(*p);
    }
    for m in &members {
        for (t, ps) in &m.assignment {
            partitions.entry(t.clone()).or_default().extend(ps);
        }
    }
    for ps in partitions.values_mut() {
        ps.sort();
        ps.dedup();
    }
    let ends = list_offsets(brokers, &partitions, -1)?;
    let owner = |t: &str, p: i32| {
        members
            .iter()
            .find(|m| m.assignment.get(t).is_some_and(|ps| ps.contains(&p)))
            .map(|m| m.member_id.clone())
    };
    let offsets = partitions
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |&p| (t.clone(), p)))
        .map(|(t, p)| {
            let committed = committed.get(&(t.clone(), p)).copied().unwrap_or(-1);
            let log_end = ends.get(&(t.clone(), p)).copied().unwrap_or(-1);
            OffsetRow {
                member: owner(&t, p),
                lag: (committed >= 0).then(|| (log_end - committed).max(0)),
                topic: t,
                partition: p,
                committed,
                log_end,
            }
        })
        .collect();
    Ok(Description {
        group: group.to_string(),
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
        offsets,
    })
}

fn reset(brokers: &mut Brokers, args: &ResetArgs) -> Result<Vec<OffsetRow>> {
    let d = describe(brokers, &args.group).or_else(|_| {
        // A group with no state at all can still be given offsets.
        Ok::<_, anyhow::Error>(Description {
            group: args.group.clone(),
            state: "Empty".into(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
            offsets: Vec::new(),
        })
    })?;
    if !d.members.is_empty() {
        bail!(
            "group {} has {} active members: stop them before resetting offsets",
            args.group,
            d.members.len()
        );
    }
    let partitions: Vec<i32> = leaders(brokers, std::slice::from_ref(&args.topic))?
        .into_keys()
        .map(|(_, p)| p)
        .collect();
    let wanted: BTreeMap<String, Vec<i32>> = [(args.topic.clone(), partitions)].into();
    let ends = list_offsets(brokers, &wanted, -1)?;
    let targets: BTreeMap<(String, i32), i64> = if args.to_earliest {
        list_offsets(brokers, &wanted, -2)?
    } else if args.to_latest {
        ends.clone()
    } else if let Some(when) = &args.to_datetime {
        let ts = humantime::parse_rfc3339_weak(when)
            .with_context(|| {
                format!("--to-datetime {when}: expected RFC 3339, like 2026-11-22T10:00:00Z")
            })?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let found = list_offsets(brokers, &wanted, ts)?;
        // No record at or after the time: the end of the partition.
        found
            .into_iter()
            .map(|(k, v)| (k.clone(), if v < 0 { ends[&k] } else { v }))
            .collect()
    } else if let Some(offset) = args.to_offset {
        let starts = list_offsets(brokers, &wanted, -2)?;
        starts
            .into_iter()
            .map(|(k, start)| (k.clone(), offset.clamp(start, ends[&k])))
            .collect()
    } else {
        bail!("say where to: --to-earliest, --to-latest, --to-datetime or --to-offset");
    };
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(args.group.clone())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
            .with_partitions(
                targets
                    .iter()
                    .map(|((_, p), &o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(o)
                    })
                    .collect(),
            )]);
    let resp = coordinator(brokers, &args.group)?.send(req)?;
    for t in &resp.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("commit {}-{}", t.name.0, p.partition_index),
            )?;
        }
    }
    Ok(targets
        .into_iter()
        .map(|((topic, partition), committed)| {
            let log_end = ends[&(topic.clone(), partition)];
            OffsetRow {
                topic,
                partition,
                committed,
                log_end,
                lag: Some((log_end - committed).max(0)),
                member: None,
            }
        })
        .collect())
}

fn offsets_table(rows: &[OffsetRow]) -> String {
    table(
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LOG-END",
            "LAG",
            "MEMBER",
        ],
        rows.iter()
            .map(|o| {
                vec![
                    o.topic.clone(),
                    o.partition.to_string(),
                    if o.committed < 0 {
                        "-".into()
                    } else {
                        o.committed.to_string()
                    },
                    o.log_end.to_string(),
                    o.lag.map_or("-".into(), |l| l.to_string()),
                    o.member.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}

pub fn run(args: GroupArgs) -> Result<()> {
    let mut brokers = Brokers::connect(&args.brokers)?;
    let json = args.json;
    match &args.command {
        GroupCommand::List => {
            let rows = list(&mut brokers)?;
            if json {
                return print_json(&rows);
            }
            emit(&table(
                &["GROUP", "STATE", "PROTOCOL-TYPE"],
                rows.iter()
                    .map(|r| vec![r.group.clone(), r.state.clone(), r.protocol_type.clone()])
                    .collect(),
            ))?;
        }
        GroupCommand::Describe { group } => {
            let d = describe(&mut brokers, group)?;
            if json {
                return print_json(&d);
            }
            emit(&format!("GROUP          {}\nSTATE          {}\nPROTOCOL-TYPE  {}\nPROTOCOL       {}\nMEMBERS        {}\n", d.group, d.state, d.protocol_type, d.protocol, d.members.len()))?;
            if !d.members.is_empty() {
                let rows = d
                    .members
                    .iter()
                    .map(|m| {
                        let assignment = m
                            .assignment
                            .iter()
                            .map(|(t, ps)| format!("{t}: {ps:?}"))
                            .collect::<Vec<_>>()
                            .join("; ");
                        vec![
                            m.member_id.clone(),
                            m.instance_id.clone().unwrap_or_else(|| "-".into()),
                            m.client_id.clone(),
                            m.host.clone(),
                            assignment,
                        ]
                    })
                    .collect();
                emit(&format!(
                    "{}\n",
                    table(
                        &[
                            "MEMBER-ID",
                            "INSTANCE-ID",
                            "CLIENT-ID",
                            "HOST",
                            "ASSIGNMENT"
                        ],
                        rows
                    )
                ))?;
            }
            emit(&offsets_table(&d.offsets))?;
        }
        GroupCommand::Delete { group } => {
            let resp = coordinator(&mut brokers, group)?.send(
                DeleteGroupsRequest::default()
                    .with_groups_names(vec![GroupId(StrBytes::from_string(group.clone()))]),
            )?;
            for r in resp.results {
                check(r.error_code, &format!("delete group {}", r.group_id.0))?;
            }
            if json {
                return print_json(&serde_json::json!({ "deleted": group }));
            }
            emit(&format!("deleted group {group}"))?;
        }
        GroupCommand::ResetOffsets(reset_args) => {
            let rows = reset(&mut brokers, reset_args)?;
            if json {
                return print_json(&rows);
            }
            emit(&offsets_table(&rows))?;
        }
    }
    Ok(())
}
