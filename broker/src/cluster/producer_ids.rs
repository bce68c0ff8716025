//! Producer ids on a node of a cluster: handed out from a block the controller committed to
//! the metadata log (KRaft's AllocateProducerIds), so no id is given twice across nodes,
//! restarts or controller changes. A node's unused ids are lost when it stops, as in Kafka.

use kafka_protocol::ResponseError;
use std::cell::Cell;
use std::rc::Rc;
use tern_protocol::rpc::NodeMessage;

use crate::controller::{self, ApiError, PRODUCER_ID_BLOCK};
use crate::shard::Shard;

/// The block a node hands ids out of (on its controller shard).
pub struct ProducerIds {
    next: Cell<i64>,
    end: Cell<i64>,
    /// One block request at a time.
    fetching: glommio::sync::Semaphore,
}

impl Default for ProducerIds {
    fn default() -> Self {
        ProducerIds {
            next: Cell::new(0),
            end: Cell::new(0),
            fetching: glommio::sync::Semaphore::new(1),
        }
    }
}

impl ProducerIds {
    /// The next id, asking the controller for a new block when this one is used up. While no
    /// block can be had (no controller, or it cannot commit), COORDINATOR_LOAD_IN_PROGRESS,
    /// which clients retry, as Kafka answers.
    pub async fn next(&self, shard: &Rc<Shard>) -> Result<i64, ApiError> {
        let _one = self
            .fetching
            .acquire_permit(1)
            .await
            .map_err(|_| ApiError::new(ResponseError::UnknownServerError, "shutting down"))?;
        if self.next.get() >= self.end.get() {
            let (first, count) = block(shard).await.map_err(|e| {
                tracing::debug!(error = %e.message, "no producer id block");
                ApiError::new(
                    ResponseError::CoordinatorLoadInProgress,
                    format!("no producer ids to hand out yet: {}", e.message),
                )
            })?;
            debug_assert!(first >= self.end.get(), "blocks only move up");
            self.next.set(first);
            self.end.set(first + count);
        }
        let id = self.next.get();
        self.next.set(id + 1);
        Ok(id)
    }
}

/// A new block (first id, count), from the controller: this node, or a call to it.
async fn block(shard: &Rc<Shard>) -> Result<(i64, i64), ApiError> {
    let cluster = shard.cluster().ok_or_else(|| {
        ApiError::new(ResponseError::UnknownServerError, "not a node of a cluster")
    })?;
    if cluster.is_controller() {
        let first = controller::allocate_producer_id_block(shard).await?;
        return Ok((first, i64::from(PRODUCER_ID_BLOCK)));
    }
    let controller = crate::kafka::nodes::controller(shard);
    let replicas = shard
        .replicas()
        .filter(|_| controller >= 0)
        .ok_or_else(|| ApiError::new(ResponseError::NotController, "no controller is known"))?;
    let answer = replicas
        .call(shard.id, controller as u64, |call| {
            NodeMessage::AllocateProducerIds { call }
        })
        .await
        .map_err(|code| ApiError::new(error(code), "the controller did not answer"))?;
    match answer {
        NodeMessage::ProducerIds {
            first,
            count,
            error: 0,
            ..
        } if count > 0 => Ok((first, i64::from(count))),
        NodeMessage::ProducerIds { error: code, .. } => Err(ApiError::new(
            error(code),
            "the controller gave no producer ids",
        )),
        _ => Err(ApiError::new(
            ResponseError::UnknownServerError,
            "an unexpected answer",
        )),
    }
}

fn error(code: i16) -> ResponseError {
    ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError)
}
