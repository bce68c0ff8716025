//! WriteTxnMarkers: commit or abort markers, as an operator aborting a hanging transaction
//! (`kafka-transactions.sh abort`, `tern txn abort`) sends them. In a cluster each partition's
//! marker is written through its leader, here or on the node leading it.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{ResponseKind, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use std::collections::BTreeMap;
use std::rc::Rc;
use tern_protocol::markers::Marker;

use super::topic_name;
use crate::shard::Shard;
use crate::txn;

pub async fn handle(shard: &Rc<Shard>, req: WriteTxnMarkersRequest) -> ResponseKind {
    let mut markers = Vec::new();
    for m in req.markers {
        let partitions: Vec<(String, i32)> = m
            .topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(|&p| (t.name.0.to_string(), p))
            })
            .collect();
        let marker = Marker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let results = txn::write_markers_to(shard, marker, partitions).await;
        let mut by_topic: BTreeMap<String, Vec<WritableTxnMarkerPartitionResult>> = BTreeMap::new();
        for ((topic, p), result) in results {
            by_topic.entry(topic).or_default().push(
                WritableTxnMarkerPartitionResult::default()
                    .with_partition_index(p)
                    .with_error_code(result.err().unwrap_or(0)),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(
                    by_topic
                        .into_iter()
                        .map(|(t, partitions)| {
                            WritableTxnMarkerTopicResult::default()
                                .with_name(topic_name(&t))
                                .with_partitions(partitions)
                        })
                        .collect(),
                ),
        );
    }
    ResponseKind::WriteTxnMarkers(WriteTxnMarkersResponse::default().with_markers(markers))
}
