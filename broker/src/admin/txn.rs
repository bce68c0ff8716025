//! `tern txn list|describe|producers|abort`: transaction administration over the Kafka
//! protocol, like `kafka-transactions.sh`. Transactions are listed by every node (each knows
//! the ids it coordinates), described by their coordinator; producers and their open
//! transactions come from partition leaders, which also take an operator's abort marker.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, ListTransactionsRequest, ProducerId,
    TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use std::collections::BTreeMap;

use super::client::{Brokers, CoordinatorKind};
use super::{check, emit, print_json, table};
use crate::kafka::topic_name;

#[derive(Args)]
pub struct TxnArgs {
    /// A broker to talk to.
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TxnCommand,
}

#[derive(Subcommand)]
enum TxnCommand {
    /// List transactional ids with their producer id and state.
    List,
    /// Show a transactional id: state, producer id and epoch, timeout, start time and the
    /// partitions of its open transaction.
    Describe { transactional_id: String },
    /// Show the producers a partition's leader remembers, with each open transaction's first
    /// offset (a hanging transaction keeps the last stable offset there).
    Producers {
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: i32,
    },
    /// Abort a producer's open transaction on one partition (a hanging transaction whose
    /// coordinator no longer knows it), as `kafka-transactions.sh abort` does.
    Abort {
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        producer_id: i64,
        #[arg(long)]
        producer_epoch: i16,
    },
}

#[derive(Serialize)]
struct TxnRow {
    transactional_id: String,
    producer_id: i64,
    state: String,
}

#[derive(Serialize)]
struct Description {
    transactional_id: String,
    state: String,
    producer_id: i64,
    producer_epoch: i16,
    timeout_ms: i32,
    start_time_ms: i64,
    partitions: BTreeMap<String, Vec<i32>>,
}

#[derive(Serialize)]
struct ProducerRow {
    producer_id: i64,
    producer_epoch: i32,
    last_sequence: i32,
    last_timestamp: i64,
    /// First offset of its open transaction, if any.
    txn_start_offset: Option<i64>,
}

fn list(brokers: &mut Brokers) -> Result<Vec<TxnRow>> {
    let mut rows = BTreeMap::new();
    let nodes: Vec<i32> = brokers.nodes.keys().copied().collect();
    for node in nodes {
        let resp = brokers
            .node(node)?
            .send(ListTransactionsRequest::default().with_duration_filter(-1))?;
        check(
            resp.error_code,
            &format!("list transactions on node {node}"),
        )?;
        for t in resp.transaction_states {
            let row = TxnRow {
                transactional_id: t.transactional_id.0.to_string(),
                producer_id: t.producer_id.0,
                state: t.transaction_state.to_string(),
            };
            rows.insert(row.transactional_id.clone(), row);
        }
    }
    Ok(rows.into_values().collect())
}

fn describe(brokers: &mut Brokers, id: &str) -> Result<Description> {
    let client = brokers.coordinator(id, CoordinatorKind::Transaction)?;
    let resp = client.send(
        DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.to_string()))]),
    )?;
    let Some(t) = resp.transaction_states.into_iter().next() else {
        bail!("no answer for transactional id {id}");
    };
    check(t.error_code, &format!("describe transactional id {id}"))?;
    Ok(Description {
        transactional_id: id.to_string(),
        state: t.transaction_state.to_string(),
        producer_id: t.producer_id.0,
        producer_epoch: t.producer_epoch,
        timeout_ms: t.transaction_timeout_ms,
        start_time_ms: t.transaction_start_time_ms,
        partitions: t
            .topics
            .into_iter()
            .map(|d| (d.topic.0.to_string(), d.partitions))
            .collect(),
    })
}

/// The leader of `topic`-`partition`, as the bootstrap broker's Metadata names it.
fn leader(brokers: &mut Brokers, topic: &str, partition: i32) -> Result<i32> {
    let meta = brokers.metadata(Some(&[topic.to_string()]))?;
    for t in meta.topics {
        check(t.error_code, &format!("topic {topic}"))?;
        if let Some(p) = t.partitions.iter().find(|p| p.partition_index == partition) {
            check(p.error_code, &format!("{topic}-{partition}"))?;
            return Ok(p.leader_id.0);
        }
    }
    bail!("{topic}-{partition} does not exist")
}

fn producers(brokers: &mut Brokers, topic: &str, partition: i32) -> Result<Vec<ProducerRow>> {
    let leader = leader(brokers, topic, partition)?;
    let resp = brokers
        .node(leader)?
        .send(DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(vec![partition]),
        ]))?;
    let mut rows = Vec::new();
    for t in resp.topics {
        for p in t.partitions {
            check(
                p.error_code,
                &format!("describe producers of {topic}-{partition}"),
            )?;
            rows.extend(p.active_producers.into_iter().map(|s| ProducerRow {
                producer_id: s.producer_id.0,
                producer_epoch: s.producer_epoch,
                last_sequence: s.last_sequence,
                last_timestamp: s.last_timestamp,
                txn_start_offset:
                    (s.current_txn_start_offset >= 0).then_some(s.current_txn_start_offset),
            }));
        }
    }
    Ok(rows)
}

fn abort(
    brokers: &mut Brokers,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<()> {
    let leader = leader(brokers, topic, partition)?;
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_transaction_result(false)
        .with_coordinator_epoch(-1)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(vec![partition])]);
    let resp = brokers
        .node(leader)?
        .send(WriteTxnMarkersRequest::default().with_markers(vec![marker]))?;
    for m in resp.markers {
        for t in m.topics {
            for p in t.partitions {
                check(p.error_code, &format!("abort on {topic}-{partition}"))?;
            }
        }
    }
    Ok(())
}

pub fn run(args: TxnArgs) -> Result<()> {
    let mut brokers = Brokers::connect(&args.brokers)?;
    let json = args.json;
    match &args.command {
        TxnCommand::List => {
            let rows = list(&mut brokers)?;
            if json {
                return print_json(&rows);
            }
            emit(&table(
                &["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.transactional_id.clone(),
                            r.producer_id.to_string(),
                            r.state.clone(),
                        ]
                    })
                    .collect(),
            ))
        }
        TxnCommand::Describe { transactional_id } => {
            let d = describe(&mut brokers, transactional_id)?;
            if json {
                return print_json(&d);
            }
            let partitions: Vec<String> = d
                .partitions
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}-{p}")))
                .collect();
            emit(&format!(
                "TRANSACTIONAL-ID  {}\nSTATE             {}\nPRODUCER-ID       {}\nPRODUCER-EPOCH    {}\nTIMEOUT-MS        {}\nSTART-TIME-MS     {}\nPARTITIONS        {}",
                d.transactional_id,
                d.state,
                d.producer_id,
                d.producer_epoch,
                d.timeout_ms,
                d.start_time_ms,
                partitions.join(", ")
            ))
        }
        TxnCommand::Producers { topic, partition } => {
            let rows = producers(&mut brokers, topic, *partition)?;
            if json {
                return print_json(&rows);
            }
            emit(&table(
                &[
                    "PRODUCER-ID",
                    "EPOCH",
                    "LAST-SEQUENCE",
                    "LAST-TIMESTAMP",
                    "TXN-START-OFFSET",
                ],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.producer_id.to_string(),
                            r.producer_epoch.to_string(),
                            r.last_sequence.to_string(),
                            r.last_timestamp.to_string(),
                            r.txn_start_offset.map_or("-".into(), |o| o.to_string()),
                        ]
                    })
                    .collect(),
            ))
        }
        TxnCommand::Abort {
            topic,
            partition,
            producer_id,
            producer_epoch,
        } => {
            abort(
                &mut brokers,
                topic,
                *partition,
                *producer_id,
                *producer_epoch,
            )?;
            if json {
                return print_json(&serde_json::json!({"aborted": true}));
            }
            emit(&format!(
                "aborted the open transaction of producer {producer_id} on {topic}-{partition}"
            ))
        }
    }
}
