//! InitProducerId: a producer id for an idempotent producer (from the controller), or for a
//! transactional one from its transaction coordinator (which fences older instances).

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::rc::Rc;

use crate::controller::{self, ControllerCall};
use crate::shard::Shard;
use crate::txn::{self, TxnOp};

pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> ResponseKind {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let answer = |r: Result<(i64, i16), i16>| {
        ResponseKind::InitProducerId(match r {
            Ok((id, epoch)) => response
                .clone()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
            Err(code) => response.clone().with_error_code(code),
        })
    };
    let expected = (req.producer_id.0 >= 0 && req.producer_epoch >= 0)
        .then_some((req.producer_id.0, req.producer_epoch));
    if let Some(id) = &req.transactional_id {
        let id = id.0.to_string();
        if id.is_empty() {
            return answer(Err(ResponseError::InvalidRequest.code()));
        }
        let timeout = req.transaction_timeout_ms;
        if timeout <= 0 || timeout > shard.config.transaction_max_timeout_ms {
            return answer(Err(ResponseError::InvalidTransactionTimeout.code()));
        }
        let init = txn::on_coordinator(shard, &id, |answer| TxnOp::Init {
            timeout_ms: timeout,
            expected,
            answer,
        });
        return answer(init.await);
    }
    // A producer re-initialising after an error (KIP-360) keeps its id with the next epoch.
    if let Some((id, epoch)) = expected.filter(|&(_, e)| e < i16::MAX - 1) {
        return answer(Ok((id, epoch + 1)));
    }
    let allocated = controller::call(shard, |answer| ControllerCall::AllocateProducerId {
        answer,
    })
    .await;
    answer(allocated.map(|id| (id, 0)).map_err(|e| e.code))
}
