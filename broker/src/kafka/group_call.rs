//! The calls a request's handler sends to the shard coordinating its consumer group (or, for
//! ListGroups, to every shard). Each kind's arguments are its handler module's `Call`, its
//! answer that module's `Answer`; the coordinator runs `Call::run` and sends the answer back.

use futures::channel::oneshot;
use std::rc::Rc;

use crate::shard::{Shard, ShardCall};

macro_rules! group_calls {
    ($($(#[$doc:meta])* $kind:ident => $module:ident,)*) => {
        /// A call to a consumer group's coordinator shard.
        pub enum GroupCall {
            $($(#[$doc])* $kind(super::$module::Call, oneshot::Sender<super::$module::Answer>),)*
        }

        impl GroupCall {
            /// Runs the call on the coordinator shard and sends its answer.
            pub async fn run(self, shard: Rc<Shard>) {
                match self {
                    $(GroupCall::$kind(call, answer) => {
                        let _ = answer.send(call.run(shard).await);
                    })*
                }
            }
        }
    };
}

group_calls! {
    Join => join_group,
    Sync => sync_group,
    Heartbeat => heartbeat,
    Leave => leave_group,
    OffsetCommit => offset_commit,
    TxnOffsetCommit => txn_offset_commit,
    OffsetFetch => offset_fetch,
    OffsetDelete => offset_delete,
    DeleteGroup => delete_groups,
    Describe => describe_groups,
    /// The groups a shard coordinates (asked of every shard).
    List => list_groups,
    /// KIP-848.
    ConsumerHeartbeat => consumer_group_heartbeat,
    ConsumerDescribe => consumer_group_describe,
}

impl Shard {
    /// Sends a group call (made with the sender of its answer) to shard `target` (run
    /// inline if that is this shard) and returns its answer.
    pub async fn call_group<T>(
        self: &Rc<Self>,
        target: usize,
        call: impl FnOnce(oneshot::Sender<T>) -> GroupCall,
    ) -> T {
        self.call(target, |answer| ShardCall::Group(Box::new(call(answer))))
            .await
    }
}
