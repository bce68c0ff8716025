//! AlterConfigs (replace a resource's configs) and IncrementalAlterConfigs (set, delete,
//! append, subtract single configs), for topics and for dynamic broker configs (a BROKER
//! resource named "" for the cluster-wide defaults, or a node id). Changes apply without a
//! restart.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::str_bytes;
use crate::controller::{self, ApiError, ControllerCall};
use crate::shard::Shard;
use crate::topic_config::{self, ConfigDef, ConfigType};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// Validates and (unless `validate_only`) stores a resource's new explicit configs.
async fn apply(
    shard: &Rc<Shard>,
    resource_type: i8,
    name: &str,
    configs: Result<BTreeMap<String, String>, ApiError>,
    validate_only: bool,
) -> Result<(), ApiError> {
    check_resource(shard, resource_type, name)?;
    let configs = configs?;
    for (k, v) in &configs {
        let checked = match resource_type {
            RESOURCE_TOPIC => topic_config::validate(k, v),
            _ => topic_config::validate_broker(k, v),
        };
        checked.map_err(|m| ApiError::new(ResponseError::InvalidConfig, m))?;
    }
    if validate_only {
        return Ok(());
    }
    let name = name.to_string();
    let broker = resource_type != RESOURCE_TOPIC;
    controller::call(shard, |answer| ControllerCall::SetConfigs {
        broker,
        name,
        configs,
        answer,
    })
    .await
}

/// The resource exists and its configs can be changed.
fn check_resource(shard: &Shard, resource_type: i8, name: &str) -> Result<(), ApiError> {
    let meta = shard.meta.snapshot();
    match resource_type {
        // As Kafka: a topic that does not exist is reported before anything about its configs.
        RESOURCE_TOPIC if !meta.topics.contains_key(name) => Err(ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )),
        RESOURCE_TOPIC => Ok(()),
        RESOURCE_BROKER if name.is_empty() => Ok(()),
        RESOURCE_BROKER => {
            let known = name
                .parse::<i32>()
                .is_ok_and(|id| id == shard.config.node_id || meta.nodes.contains_key(&id));
            match known {
                true => Ok(()),
                false => Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("no broker {name:?} in this cluster"),
                )),
            }
        }
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("configs of resource type {other} cannot be changed"),
        )),
    }
}

/// The explicit configs a resource has now.
fn current(shard: &Shard, resource_type: i8, name: &str) -> BTreeMap<String, String> {
    let meta = shard.meta.snapshot();
    let configs = match resource_type {
        RESOURCE_TOPIC => meta.topics.get(name).map(|t| &t.configs),
        _ => meta.broker_configs.get(name),
    };
    configs.cloned().unwrap_or_default()
}

pub async fn handle_alter(shard: &Rc<Shard>, req: AlterConfigsRequest) -> ResponseKind {
    let mut responses = Vec::new();
    for r in &req.resources {
        let configs = Ok(r
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect());
        let result = apply(
            shard,
            r.resource_type,
            r.resource_name.as_str(),
            configs,
            req.validate_only,
        )
        .await;
        let mut resp = AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        if let Err(e) = result {
            resp = resp
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(&e.message)));
        }
        responses.push(resp);
    }
    ResponseKind::AlterConfigs(AlterConfigsResponse::default().with_responses(responses))
}

/// Applies incremental operations to a resource's explicit configs; `def` knows its configs.
fn incremental(
    mut configs: BTreeMap<String, String>,
    ops: &[(String, i8, Option<String>)],
    def: fn(&str) -> Option<&'static ConfigDef>,
) -> Result<BTreeMap<String, String>, ApiError> {
    for (name, op, value) in ops {
        let def = def(name).ok_or_else(|| {
            ApiError::new(
                ResponseError::InvalidConfig,
                format!("unknown config {name}"),
            )
        })?;
        let list = |s: &str| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        match *op {
            SET => {
                let v = value.clone().ok_or_else(|| {
                    ApiError::new(
                        ResponseError::InvalidConfig,
                        format!("{name}: SET needs a value"),
                    )
                })?;
                configs.insert(name.clone(), v);
            }
            DELETE => {
                configs.remove(name);
            }
            APPEND | SUBTRACT if def.kind == ConfigType::List => {
                let mut items = list(configs.get(name).map_or(def.default, |v| v));
                for item in list(value.as_deref().unwrap_or("")) {
                    if *op == APPEND && !items.contains(&item) {
                        items.push(item);
                    } else if *op == SUBTRACT {
                        items.retain(|i| *i != item);
                    }
                }
                configs.insert(name.clone(), items.join(","));
            }
            APPEND | SUBTRACT => {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("{name} is not a list"),
                ))
            }
            other => {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("unknown config operation {other}"),
                ))
            }
        }
    }
    Ok(configs)
}

pub async fn handle_incremental(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> ResponseKind {
    let mut responses = Vec::new();
    for r in &req.resources {
        let name = r.resource_name.as_str();
        let ops: Vec<(String, i8, Option<String>)> = r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let def = match r.resource_type {
            RESOURCE_BROKER => topic_config::broker_def,
            _ => topic_config::def,
        };
        let configs = check_resource(shard, r.resource_type, name)
            .and_then(|()| incremental(current(shard, r.resource_type, name), &ops, def));
        let result = apply(shard, r.resource_type, name, configs, req.validate_only).await;
        let mut resp = IncrementalResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        if let Err(e) = result {
            resp = resp
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(&e.message)));
        }
        responses.push(resp);
    }
    ResponseKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_operations() {
        let mut current = BTreeMap::new();
        current.insert("retention.ms".to_string(), "1000".to_string());
        let ops = vec![
            ("retention.ms".to_string(), DELETE, None),
            ("segment.bytes".to_string(), SET, Some("2048".to_string())),
            (
                "cleanup.policy".to_string(),
                APPEND,
                Some("compact".to_string()),
            ),
        ];
        let out = incremental(current, &ops, topic_config::def).unwrap();
        assert_eq!(out.get("retention.ms"), None);
        assert_eq!(out["segment.bytes"], "2048");
        assert_eq!(out["cleanup.policy"], "delete,compact");
        let out = incremental(
            out,
            &[(
                "cleanup.policy".to_string(),
                SUBTRACT,
                Some("delete".to_string()),
            )],
            topic_config::def,
        )
        .unwrap();
        assert_eq!(out["cleanup.policy"], "compact");
        assert!(incremental(
            BTreeMap::new(),
            &[("segment.bytes".to_string(), APPEND, Some("1".into()))],
            topic_config::def,
        )
        .is_err());
        assert!(incremental(
            BTreeMap::new(),
            &[("bogus".to_string(), SET, Some("1".into()))],
            topic_config::def,
        )
        .is_err());
        // Broker configs: their own names; a list takes its topic config's default first.
        let out = incremental(
            BTreeMap::new(),
            &[(
                "log.cleanup.policy".to_string(),
                APPEND,
                Some("compact".into()),
            )],
            topic_config::broker_def,
        )
        .unwrap();
        assert_eq!(out["log.cleanup.policy"], "delete,compact");
        assert!(incremental(
            BTreeMap::new(),
            &[("retention.ms".to_string(), SET, Some("1".into()))],
            topic_config::broker_def,
        )
        .is_err());
    }
}
