//! Log start offsets follow the leader's.
//!
//! DeleteRecords and retention move a leader's log start offset. Its reports to every node
//! (`cluster/leaders.rs`) carry it, and each follower moves its own up to it, never past its
//! own high watermark, then tells the leader where its log now starts. DeleteRecords answers
//! once every in-sync replica starts there (Kafka's low watermark), so records deleted stay
//! deleted when another replica takes over. Raft is told of every move, so it folds the epochs
//! and configurations before the new start.

use kafka_protocol::ResponseError;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::rpc::{Leadership, NodeMessage};
use tern_raft::{GroupId, NodeId};
use tern_storage::PartitionLog;

use super::leaders::REPORT_INTERVAL;
use super::Replicas;
use crate::shard::Shard;

/// Log starts as a shard knows them, for the groups it hosts.
#[derive(Default)]
pub(super) struct LogStarts {
    /// Leader: where each follower said its replica starts.
    replicas: HashMap<GroupId, HashMap<NodeId, i64>>,
    /// Follower: the leader it last told its start to, and that start.
    told: HashMap<GroupId, (NodeId, i64)>,
    /// The log start Raft was last told of.
    raft: HashMap<GroupId, i64>,
}

impl LogStarts {
    /// The node no longer holds `group`.
    pub(super) fn forget(&mut self, group: GroupId) {
        self.replicas.remove(&group);
        self.told.remove(&group);
        self.raft.remove(&group);
    }
}

impl Replicas {
    /// The log of a partition this shard holds.
    pub(super) fn hosted_log(&self, shard: &Shard, group: GroupId) -> Option<Rc<PartitionLog>> {
        let (topic, p) = self.hosted.borrow().get(&group).cloned()?;
        shard.partition(&topic, p)
    }

    /// Tells Raft that `group`'s log start moved to `start`, if it did.
    fn tell_raft(&self, group: GroupId, start: i64) {
        let before = self.starts.borrow_mut().raft.insert(group, start);
        if before.unwrap_or(0) < start {
            self.replicator.log_start_advanced(group);
        }
    }

    /// Tells Raft of the log starts retention moved.
    pub(super) fn note_log_starts(&self, shard: &Shard) {
        let groups: Vec<GroupId> = self.hosted.borrow().keys().copied().collect();
        for group in groups {
            if let Some(log) = self.hosted_log(shard, group) {
                self.tell_raft(group, log.log_start_offset());
            }
        }
    }

    /// Follower: moves each replica's log start up to its leader's, and tells the leader.
    pub(super) async fn follow_log_starts(
        &self,
        shard: &Shard,
        leader: NodeId,
        groups: &[Leadership],
    ) {
        for l in groups {
            if l.log_start <= 0 {
                continue;
            }
            let told = self.starts.borrow().told.get(&l.group).copied();
            if told.is_some_and(|(n, start)| n == leader && start >= l.log_start) {
                continue;
            }
            if self.leads(l.group) {
                continue;
            }
            let Some(log) = self.hosted_log(shard, l.group) else {
                continue;
            };
            let target = l.log_start.min(log.high_watermark());
            if target > log.log_start_offset() {
                if let Err(e) = log.delete_records(target).await {
                    tracing::error!(group = l.group, error = %e, "follow the leader's log start");
                    continue;
                }
            }
            let start = log.log_start_offset();
            self.tell_raft(l.group, start);
            let message = NodeMessage::LogStart {
                group: l.group,
                start,
            };
            // Lost (a full queue): the leader's next full report asks again.
            if self.transport.send_message(leader, message).is_ok() {
                self.starts
                    .borrow_mut()
                    .told
                    .insert(l.group, (leader, start));
            }
        }
    }

    /// Leader: a follower said where its replica of `group` starts.
    pub(super) fn replica_log_start(&self, group: GroupId, from: NodeId, start: i64) {
        self.starts
            .borrow_mut()
            .replicas
            .entry(group)
            .or_default()
            .insert(from, start);
    }

    /// Leader, after DeleteRecords moved its log start to `start`: waits until every in-sync
    /// replica starts there too, and returns the lowest start among them (Kafka's low
    /// watermark).
    pub async fn replicate_log_start(
        &self,
        shard: &Shard,
        group: GroupId,
        start: i64,
        timeout: Duration,
    ) -> Result<i64, ResponseError> {
        self.tell_raft(group, start);
        let me = self.config.node_id;
        let deadline = Instant::now() + timeout;
        let mut asked: Option<Instant> = None;
        loop {
            if !self.leads(group) {
                return Err(ResponseError::NotLeaderOrFollower);
            }
            let isr = self
                .replicator
                .in_sync(group, self.config.replica_lag)
                .unwrap_or_default();
            let low = {
                let starts = self.starts.borrow();
                let of = |n: &NodeId| match *n == me {
                    true => start,
                    false => starts
                        .replicas
                        .get(&group)
                        .and_then(|r| r.get(n).copied())
                        .unwrap_or(-1),
                };
                isr.iter().map(of).min().unwrap_or(start)
            };
            if low >= start {
                return Ok(low);
            }
            if Instant::now() >= deadline {
                return Err(ResponseError::RequestTimedOut);
            }
            // Ask the laggards now rather than at the next report, and again while they lag.
            if asked.is_none_or(|t| t.elapsed() >= REPORT_INTERVAL) {
                asked = Some(Instant::now());
                let meta = shard.meta.snapshot();
                if let Some(l) = self.leadership(shard, &meta, group) {
                    for &n in isr.iter().filter(|&&n| n != me) {
                        let groups = vec![l.clone()];
                        let _ = self
                            .transport
                            .send_message(n, NodeMessage::Leaders { groups });
                    }
                }
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}
