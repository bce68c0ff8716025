//! DescribeConfigs for topics (their effective configs) and for this broker (read-only).

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use super::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use super::str_bytes;
use crate::shard::Shard;
use crate::topic_config::{self, TOPIC_CONFIGS};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_STATIC_BROKER: i8 = 4;

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
                    Some(topic) => result.with_configs(
                        TOPIC_CONFIGS
                            .iter()
                            .filter(|d| wanted(&r.configuration_keys, d.name))
                            .map(|d| {
                                let source = if topic.configs.contains_key(d.name) {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                };
                                let value = topic_config::value(&topic.configs, d.name).to_string();
                                entry(d.name, value, source, false, d.kind as i8, d.doc, version)
                            })
                            .collect(),
                    ),
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "topic {name} does not exist"
                        )))),
                },
                RESOURCE_BROKER if name.is_empty() || name == cfg.node_id.to_string() => {
                    let broker = [
                        ("broker.id", cfg.node_id.to_string(), 3, "This node's id."),
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
                    result.with_configs(
                        broker
                            .into_iter()
                            .filter(|(n, ..)| wanted(&r.configuration_keys, n))
                            .map(|(n, v, kind, doc)| {
                                entry(n, v, SOURCE_STATIC_BROKER, true, kind, doc, version)
                            })
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
