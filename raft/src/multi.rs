//! Many groups on one node: one tick drives them all, and everything they send to the same node
//! in one round travels as one [`Envelope`]. Heartbeats are not sent per group: once per interval
//! the node sends each peer one envelope with a [`HeartbeatItem`] per group it leads there, and
//! the answers ride back in the peer's next interval envelope. An idle group costs no timer and
//! no message of its own, only its items in those envelopes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::{
    Body, Group, GroupId, Log, Message, NodeId, Offset, ProposeError, Ready, Role, SyncToken, Term,
};

/// A leader's heartbeat for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatItem {
    pub group: GroupId,
    pub term: Term,
    pub commit: Offset,
    pub round: u64,
}

/// A follower's answer to a heartbeat for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAck {
    pub group: GroupId,
    pub term: Term,
    pub match_end: Offset,
    pub durable: Offset,
    /// The round of the heartbeat answered.
    pub round: u64,
}

/// Everything one node sends another in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<(GroupId, Message)>,
    pub heartbeats: Vec<HeartbeatItem>,
    pub acks: Vec<HeartbeatAck>,
}

impl Envelope {
    fn new(from: NodeId, to: NodeId) -> Self {
        Envelope {
            from,
            to,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            acks: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.heartbeats.is_empty() && self.acks.is_empty()
    }
}

/// What the host must do after inputs to a [`MultiRaft`]: each group's `Ready` (its messages
/// moved into `envelopes`), persisted before the envelopes are sent.
#[derive(Debug, Default)]
pub struct MultiReady {
    pub groups: Vec<(GroupId, Ready)>,
    pub envelopes: Vec<Envelope>,
}

/// The groups of one node (on one shard: a shard owns its partitions' groups).
pub struct MultiRaft<L: Log> {
    id: NodeId,
    heartbeat_ticks: u32,
    heartbeat_elapsed: u32,
    /// Set at an interval's tick: the next `ready` sends the heartbeat answers held back.
    flush_acks: bool,
    groups: BTreeMap<GroupId, Group<L>>,
    /// Groups touched since the last `ready`.
    dirty: BTreeSet<GroupId>,
    outbox: BTreeMap<NodeId, Envelope>,
    /// Heartbeat answers waiting for the next interval's envelope.
    held_acks: BTreeMap<NodeId, Vec<HeartbeatAck>>,
    unknown_group_messages: u64,
}

impl<L: Log> MultiRaft<L> {
    pub fn new(id: NodeId, heartbeat_ticks: u32) -> Self {
        MultiRaft {
            id,
            heartbeat_ticks: heartbeat_ticks.max(1),
            heartbeat_elapsed: 0,
            flush_acks: false,
            groups: BTreeMap::new(),
            dirty: BTreeSet::new(),
            outbox: BTreeMap::new(),
            held_acks: BTreeMap::new(),
            unknown_group_messages: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Adds a group; its config must have `coalesced_heartbeats` set and this node's id.
    pub fn add_group(&mut self, id: GroupId, group: Group<L>) {
        debug_assert_eq!(group.id(), self.id);
        self.dirty.insert(id);
        self.groups.insert(id, group);
    }

    pub fn remove_group(&mut self, id: GroupId) -> Option<Group<L>> {
        self.dirty.remove(&id);
        self.groups.remove(&id)
    }

    pub fn group(&self, id: GroupId) -> Option<&Group<L>> {
        self.groups.get(&id)
    }

    /// A group to change directly (the host's log changes, leadership transfer, ...).
    pub fn group_mut(&mut self, id: GroupId) -> Option<&mut Group<L>> {
        let g = self.groups.get_mut(&id)?;
        self.dirty.insert(id);
        Some(g)
    }

    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &Group<L>)> {
        self.groups.iter().map(|(&id, g)| (id, g))
    }

    /// Envelope items that named a group this node does not have (dropped).
    pub fn unknown_group_messages(&self) -> u64 {
        self.unknown_group_messages
    }

    pub fn propose(
        &mut self,
        group: GroupId,
        data: Bytes,
        records: u64,
    ) -> Result<(Offset, Offset), ProposeError> {
        match self.group_mut(group) {
            Some(g) => g.propose(data, records),
            None => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    pub fn synced(&mut self, group: GroupId, token: SyncToken) {
        if let Some(g) = self.group_mut(group) {
            g.synced(token);
        }
    }

    /// One tick for every group; at each heartbeat interval, heartbeats for every group led here.
    pub fn tick(&mut self) {
        self.heartbeat_elapsed += 1;
        let beat = self.heartbeat_elapsed >= self.heartbeat_ticks;
        if beat {
            self.heartbeat_elapsed = 0;
            self.flush_acks = true;
        }
        for (&id, g) in self.groups.iter_mut() {
            g.tick();
            if beat && g.role() == Role::Leader {
                g.broadcast_heartbeat();
            }
            if g.has_ready() {
                self.dirty.insert(id);
            }
        }
    }

    /// An envelope from another node.
    pub fn step(&mut self, env: Envelope) {
        if env.to != self.id || env.from == self.id {
            return;
        }
        let (from, to) = (env.from, env.to);
        for (gid, m) in env.messages {
            self.step_group(gid, m);
        }
        for hb in env.heartbeats {
            let body = Body::Heartbeat {
                commit: hb.commit,
                round: hb.round,
            };
            self.step_group(
                hb.group,
                Message {
                    from,
                    to,
                    term: hb.term,
                    body,
                },
            );
        }
        for a in env.acks {
            let body = Body::AppendResponse {
                match_end: a.match_end,
                durable: a.durable,
                reject: None,
                heartbeat: Some(a.round),
            };
            self.step_group(
                a.group,
                Message {
                    from,
                    to,
                    term: a.term,
                    body,
                },
            );
        }
    }

    fn step_group(&mut self, gid: GroupId, m: Message) {
        match self.groups.get_mut(&gid) {
            Some(g) => {
                g.step(m);
                self.dirty.insert(gid);
            }
            None => self.unknown_group_messages += 1,
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.dirty.is_empty()
            || self.outbox.values().any(|e| !e.is_empty())
            || (self.flush_acks && !self.held_acks.is_empty())
    }

    /// Each touched group's `Ready`, and one envelope per destination node.
    pub fn ready(&mut self) -> MultiReady {
        let mut out = MultiReady::default();
        for gid in std::mem::take(&mut self.dirty) {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let mut ready = g.ready();
            for m in ready.messages.drain(..) {
                let to = m.to;
                match m.body {
                    Body::Heartbeat { commit, round } => self
                        .outbox
                        .entry(to)
                        .or_insert_with(|| Envelope::new(self.id, to))
                        .heartbeats
                        .push(HeartbeatItem {
                            group: gid,
                            term: m.term,
                            commit,
                            round,
                        }),
                    Body::AppendResponse {
                        match_end,
                        durable,
                        reject: None,
                        heartbeat: Some(round),
                    } => self.held_acks.entry(to).or_default().push(HeartbeatAck {
                        group: gid,
                        term: m.term,
                        match_end,
                        durable,
                        round,
                    }),
                    _ => self
                        .outbox
                        .entry(to)
                        .or_insert_with(|| Envelope::new(self.id, to))
                        .messages
                        .push((gid, m)),
                }
            }
            if !ready.is_empty() {
                out.groups.push((gid, ready));
            }
        }
        if std::mem::take(&mut self.flush_acks) {
            for (to, acks) in std::mem::take(&mut self.held_acks) {
                self.outbox
                    .entry(to)
                    .or_insert_with(|| Envelope::new(self.id, to))
                    .acks = acks;
            }
        }
        out.envelopes = std::mem::take(&mut self.outbox)
            .into_values()
            .filter(|e| !e.is_empty())
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use super::*;
    use crate::{Config, MemLog, Membership};

    /// Delivers everything the nodes send (syncing at once) until they are quiet; returns the
    /// envelopes sent per (from, to) and the heartbeat items they carried.
    fn settle(nodes: &mut [MultiRaft<MemLog>]) -> (BTreeMap<(NodeId, NodeId), u64>, u64) {
        let mut envelopes = BTreeMap::new();
        let mut items = 0;
        loop {
            let mut sent = Vec::new();
            for n in nodes.iter_mut() {
                while n.has_ready() {
                    let r = n.ready();
                    for (gid, ready) in r.groups {
                        if let Some(token) = ready.sync {
                            n.synced(gid, token);
                        }
                    }
                    sent.extend(r.envelopes);
                }
            }
            if sent.is_empty() {
                return (envelopes, items);
            }
            for env in sent {
                *envelopes.entry((env.from, env.to)).or_insert(0) += 1;
                items += env.heartbeats.len() as u64;
                let to = env.to as usize - 1;
                nodes[to].step(env);
            }
        }
    }

    #[test]
    fn ten_thousand_idle_groups_send_one_envelope_per_node_pair_per_interval() {
        const GROUPS: u64 = 10_000;
        const HEARTBEAT_TICKS: u32 = 2;
        let mut nodes: Vec<MultiRaft<MemLog>> = (1..=3)
            .map(|id| {
                let mut m = MultiRaft::new(id, HEARTBEAT_TICKS);
                for gid in 0..GROUPS {
                    let mut cfg = Config::new(id);
                    cfg.coalesced_heartbeats = true;
                    cfg.seed = id << 32 | gid;
                    m.add_group(gid, Group::new(cfg, MemLog::new(), Membership::new(1..=3)));
                }
                m
            })
            .collect();
        // Leadership spread evenly: group g is led by node g % 3 + 1.
        for gid in 0..GROUPS {
            nodes[(gid % 3) as usize]
                .group_mut(gid)
                .unwrap()
                .campaign_now();
        }
        settle(&mut nodes);
        let tick_interval = |nodes: &mut [MultiRaft<MemLog>]| {
            let mut total = (BTreeMap::new(), 0);
            for _ in 0..HEARTBEAT_TICKS {
                for n in nodes.iter_mut() {
                    n.tick();
                }
                let (envelopes, items) = settle(nodes);
                for (pair, count) in envelopes {
                    *total.0.entry(pair).or_insert(0) += count;
                }
                total.1 += items;
            }
            total
        };
        for _ in 0..3 {
            tick_interval(&mut nodes); // commit indexes reach the followers
        }
        for (gid, g) in nodes[0].groups() {
            assert_eq!(g.leader(), Some(gid % 3 + 1), "group {gid} kept its leader");
        }
        const INTERVALS: u64 = 5;
        let mut per_pair: BTreeMap<(NodeId, NodeId), u64> = BTreeMap::new();
        let mut items = 0;
        for _ in 0..INTERVALS {
            let (envelopes, n) = tick_interval(&mut nodes);
            for (pair, count) in envelopes {
                *per_pair.entry(pair).or_insert(0) += count;
            }
            items += n;
        }
        assert_eq!(
            per_pair.len(),
            6,
            "every ordered node pair exchanges heartbeats: {per_pair:?}"
        );
        for (pair, count) in &per_pair {
            assert_eq!(
                *count, INTERVALS,
                "envelopes {pair:?} over {INTERVALS} intervals"
            );
        }
        // Each group's leader sends each of its two followers one item per interval.
        assert_eq!(items, GROUPS * 2 * INTERVALS);
        for (gid, g) in nodes[0].groups() {
            assert_eq!(g.leader(), Some(gid % 3 + 1), "group {gid} kept its leader");
        }
        let _ = writeln!(
            std::io::stderr(),
            "multi-raft: {GROUPS} idle groups x 3 nodes: 1 envelope per ordered node pair per \
             heartbeat interval, {} heartbeat items each; {} bytes per group replica (+ its \
             followers' progress on a leader)",
            GROUPS * 2 / 6,
            std::mem::size_of::<Group<MemLog>>()
        );
    }
}
