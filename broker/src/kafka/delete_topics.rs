//! DeleteTopics: by name (v1-v5) or by name or id (v6+), carried out by the controller.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::rc::Rc;
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::controller::{self, ControllerCall};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: DeleteTopicsRequest, version: i16) -> ResponseKind {
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::new();
    for (name, id) in targets {
        let name = name.or_else(|| {
            shard
                .meta
                .snapshot()
                .topic_by_id(id)
                .map(|(n, _)| n.clone())
        });
        let result = match name.clone() {
            Some(name) => {
                controller::call(shard, |answer| ControllerCall::DeleteTopic { name, answer }).await
            }
            None => Err(controller::ApiError::new(
                ResponseError::UnknownTopicId,
                format!("no topic with id {id}"),
            )),
        };
        let mut r = DeletableTopicResult::default()
            .with_name(name.as_deref().map(topic_name))
            .with_topic_id(id);
        match result {
            Ok(topic_id) => r = r.with_topic_id(topic_id),
            Err(e) => {
                r = r
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(&e.message)))
            }
        }
        responses.push(r);
    }
    ResponseKind::DeleteTopics(DeleteTopicsResponse::default().with_responses(responses))
}
