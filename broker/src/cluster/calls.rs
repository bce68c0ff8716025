//! Requests to another node that wait for its answer: a transaction coordinator's markers to
//! partition leaders, and a partition leader's verification of a transactional produce with
//! the coordinator. Both ride the node messages of the internal RPC; the answer names the
//! call, which says the calling shard, so shard 0 (which receives every message) hands it on.
//!
//! Node messages are not resent: a request or answer lost with its connection, or dropped by
//! a full queue, ends in a timeout, and the caller retries as its client would.

use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;
use tern_protocol::rpc::{Call, NodeMessage};
use tern_raft::NodeId;

use super::Replicas;

/// How long a call waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A shard's calls waiting for answers.
#[derive(Default)]
pub struct Calls {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<NodeMessage>>>,
}

/// Forgets a call when its caller stops waiting (answered, timed out, or dropped).
struct Waiting<'a> {
    calls: &'a Calls,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.calls.waiting.borrow_mut().remove(&self.id);
    }
}

impl Calls {
    /// Hands the answer to the call waiting for it; an answer nobody waits for (it came too
    /// late) is dropped.
    pub fn answer(&self, call: Call, message: NodeMessage) {
        if let Some(waiting) = self.waiting.borrow_mut().remove(&call.id) {
            let _ = waiting.send(message);
        }
    }
}

impl Replicas {
    /// Sends node `to` the request `request` builds for its call from shard `shard`, and
    /// waits for the answer: REQUEST_TIMED_OUT when none comes in time (or the node cannot be
    /// reached).
    pub async fn call(
        &self,
        shard: usize,
        to: NodeId,
        request: impl FnOnce(Call) -> NodeMessage,
    ) -> Result<NodeMessage, i16> {
        let id = self.calls.next.get();
        self.calls.next.set(id + 1);
        let call = Call {
            id,
            shard: shard as u32,
        };
        let (tx, rx) = oneshot::channel();
        self.calls.waiting.borrow_mut().insert(id, tx);
        let _waiting = Waiting {
            calls: &self.calls,
            id,
        };
        let timed_out = ResponseError::RequestTimedOut.code();
        if let Err(e) = self.transport.send_message(to, request(call)) {
            tracing::debug!(node = to, error = ?e, "a call to a node was not sent");
            return Err(timed_out);
        }
        match crate::rpc::with_timeout(CALL_TIMEOUT, rx).await {
            Some(Ok(answer)) => Ok(answer),
            _ => Err(timed_out),
        }
    }
}
