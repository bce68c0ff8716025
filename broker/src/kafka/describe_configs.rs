//! DescribeConfigs for topics (their effective configs, with where each value comes from) and
//! for brokers: a node's static settings and its dynamic broker configs, or (resource name
//! "") the cluster-wide dynamic defaults.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::str_bytes;
use crate::metadata::ConfigSource;
use crate::shard::Shard;
use crate::topic_config::{self, BROKER_ONLY_CONFIGS, BROKER_TOPIC_DEFAULTS, TOPIC_CONFIGS};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn entry(
    name: &str,
    value: String,
    source: i8,
    read_only: bool,
    kind: i8,
    doc: &str,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(&value)))
        .with_read_only(read_only)
        .with_config_source(source);
    if version >= 3 {
        e = e
            .with_config_type(kind)
            .with_documentation(Some(str_bytes(doc)));
    }
    e
}

fn wanted(keys: &Option<Vec<kafka_protocol::protocol::StrBytes>>, name: &str) -> bool {
    keys.as_ref()
        .is_none_or(|k| k.iter().any(|k| k.as_str() == name))
}

pub fn handle(shard: &Rc<Shard>, req: DescribeConfigsRequest, version: i16) -> ResponseKind {
    let meta = shard.meta.snapshot();
    let cfg = &shard.config;
    let results = req
        .resources
        .iter()
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let name = r.resource_name.as_str();
            match r.resource_type {
                RESOURCE_TOPIC => match meta.topics.get(name) {
                    Some(topic) => {
                        let set = meta.topic_configs_with_source(&topic.configs, cfg.node_id);
                        result.with_configs(
                            TOPIC_CONFIGS
                                .iter()
                                .filter(|d| wanted(&r.configuration_keys, d.name))
                                .map(|d| {
                                    let (value, source) = set
                                        .get(d.name)
                                        .cloned()
                                        .unwrap_or((d.default.to_string(), ConfigSource::Default));
                                    let kind = d.kind as i8;
                                    entry(d.name, value, source as i8, false, kind, d.doc, version)
                                })
                                .collect(),
                        )
                    }
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "topic {name} does not exist"
                        )))),
                },
                RESOURCE_BROKER if name.is_empty() => {
                    // The cluster-wide dynamic defaults: only those set.
                    let set = meta.broker_configs.get("").cloned().unwrap_or_default();
                    result.with_configs(
                        set.iter()
                            .filter(|(n, _)| wanted(&r.configuration_keys, n))
                            .filter_map(|(n, v)| {
                                let d = topic_config::broker_def(n)?;
                                let source = ConfigSource::DynamicDefaultBroker as i8;
                                let (kind, doc) = (d.kind as i8, d.doc);
                                Some(entry(n, v.clone(), source, false, kind, doc, version))
                            })
                            .collect(),
                    )
                }
                RESOURCE_BROKER
                    if name
                        .parse::<i32>()
                        .is_ok_and(|id| id == cfg.node_id || meta.nodes.contains_key(&id)) =>
                {
                    let node: i32 = name.parse().unwrap_or(cfg.node_id);
                    let dynamic = meta.broker_configs_of(node);
                    let dynamic_entries = BROKER_TOPIC_DEFAULTS
                        .iter()
                        .map(|(b, _)| *b)
                        .chain(BROKER_ONLY_CONFIGS.iter().map(|d| d.name))
                        .filter(|n| wanted(&r.configuration_keys, n))
                        .filter_map(|n| {
                            let d = topic_config::broker_def(n)?;
                            let (value, source) = dynamic
                                .get(n)
                                .map(|(v, s)| (v.to_string(), *s))
                                .unwrap_or((d.default.to_string(), ConfigSource::Default));
                            let (kind, doc) = (d.kind as i8, d.doc);
                            Some(entry(n, value, source as i8, false, kind, doc, version))
                        });
                    let broker = [
                        ("broker.id", node.to_string(), 3, "The node's id."),
                        (
                            "auto.create.topics.enable",
                            cfg.auto_create_topics.to_string(),
                            1,
                            "Create unknown topics on metadata and produce requests.",
                        ),
                        (
                            "num.partitions",
                            cfg.default_partitions.to_string(),
                            3,
                            "Partitions of auto-created topics.",
                        ),
                        (
                            "socket.request.max.bytes",
                            cfg.max_request_bytes.to_string(),
                            3,
                            "Largest request accepted.",
                        ),
                    ];
                    let source = ConfigSource::StaticBroker as i8;
                    result.with_configs(
                        broker
                            .into_iter()
                            .filter(|(n, ..)| wanted(&r.configuration_keys, n))
                            .map(|(n, v, kind, doc)| entry(n, v, source, true, kind, doc, version))
                            .chain(dynamic_entries)
                            .collect(),
                    )
                }
                _ => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "resource type {} / {name} is not supported",
                        r.resource_type
                    )))),
            }
        })
        .collect();
    ResponseKind::DescribeConfigs(DescribeConfigsResponse::default().with_results(results))
}
