//! InitProducerId for idempotent producers (enable.idempotence). Transactions are not
//! implemented yet: a transactional id gets UNSUPPORTED_VERSION.

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use crate::controller::{self, CONTROLLER_SHARD};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> ResponseKind {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        return ResponseKind::InitProducerId(
            response.with_error_code(ResponseError::UnsupportedVersion.code()),
        );
    }
    // A producer re-initialising after an error (KIP-360) keeps its id with the next epoch.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return ResponseKind::InitProducerId(
            response
                .with_producer_id(req.producer_id)
                .with_producer_epoch(req.producer_epoch + 1),
        );
    }
    let allocated = shard
        .run_on(CONTROLLER_SHARD, |s| async move {
            controller::allocate_producer_id(&s).await
        })
        .await;
    ResponseKind::InitProducerId(match allocated {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => response.with_error_code(e.code),
    })
}
