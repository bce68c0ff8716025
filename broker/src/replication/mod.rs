//! The replication driver: joins a node's Raft groups (one per replicated partition) to their
//! storage logs and to the internal RPC.
//!
//! One task takes the groups' output in rounds: it persists the groups' hard state and meta
//! (one node-wide file, replaced atomically and synced), **then** sends the round's envelopes, then sets high watermarks and
//! starts the log syncs Raft asked for (each reports back with `synced`, and concurrent syncs
//! of a log share one fdatasync). A ticker and the transport's inbound envelopes feed it.
//! Producers waiting for acks=all are answered when the commit index passes their batch and the
//! batch there is still theirs (same term at that offset).
//!
//! Exists on every shard of a cluster node, for the partitions that shard owns. The node's Raft
//! state file is written by shard 0's driver: the others send it their groups' state and wait
//! for the write before they send anything (see [`StateHome`]).

pub mod log;
pub mod state;

use bytes::Bytes;
use event_listener::Event;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tern_protocol::markers::Marker;
use tern_raft::{
    Config, Envelope, Group, GroupId, Membership, MembershipChange, MultiRaft, MultiReady, NodeId,
    Offset, ProposeError, Role, RoleChange, Term,
};
use tern_storage::{Appended, LogError, PartitionLog, Prepared};
use thiserror::Error;

use crate::rpc::Transport;
use log::ReplicaLog;
use state::Persisted;

/// Raft timing: ticks of `tick`; elections after 10-20 ticks without a leader, heartbeats
/// every 2.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

#[derive(Debug, Error)]
pub enum ReplicateError {
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("no such replicated partition")]
    UnknownGroup,
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("leadership changed before the batch committed; it may be lost")]
    LeadershipLost,
}

/// A batch a leader proposed: its offsets, the term it was proposed in, and its local append
/// (acks=1 waits for that to be written).
#[derive(Debug)]
pub struct Proposed {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The term of the batch's entry: this leader's, or for a retried batch found in the log,
    /// the one it was proposed in.
    pub term: Term,
    pub log_append_time: i64,
    /// `None` for a retried batch found in the log.
    pub appended: Option<Appended>,
}

struct Waiter {
    last: Offset,
    term: Term,
    done: oneshot::Sender<Result<(), ReplicateError>>,
}

/// What the driver keeps per group besides Raft's state.
struct Host {
    log: Rc<PartitionLog>,
    persisted: Persisted,
    role: RoleChange,
    waiters: Vec<Waiter>,
    loading: bool,
    /// Leader: when each follower last held everything committed (for the ISR).
    caught_up: BTreeMap<NodeId, Instant>,
}

/// Where a driver's Raft state is made durable.
pub enum StateHome {
    /// The node's state file (shard 0's driver): its own groups' state, and what the other
    /// shards' drivers send it.
    File(PathBuf),
    /// Another driver writes the file: changed states (`None`: forgotten) go there, and the
    /// future completes once they are durable.
    Remote(StateSender),
}

pub type StateSender =
    Box<dyn Fn(Vec<(GroupId, Option<Persisted>)>) -> LocalBoxFuture<'static, std::io::Result<()>>>;

/// A shard's replicated partitions.
/// How often dropped messages for groups a driver does not host are logged, at most.
const UNKNOWN_GROUP_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Replicator {
    node: NodeId,
    timing: Timing,
    multi: RefCell<MultiRaft<ReplicaLog>>,
    hosts: RefCell<BTreeMap<GroupId, Host>>,
    transport: Rc<Transport>,
    misses: log::Misses,
    work: Event,
    /// Takes no input and sends nothing: a node cut off (tests).
    paused: Cell<bool>,
    /// Told of every change of a group's role, term or known leader.
    role_listener: RefCell<Option<RoleListener>>,
    /// When each node was last heard from (any envelope: heartbeat answers come at least
    /// every heartbeat interval from a live follower).
    heard: RefCell<BTreeMap<NodeId, Instant>>,
    /// Messages for groups this driver does not host (dropped) as last logged, and when.
    unknown_logged: Cell<(u64, Option<Instant>)>,
    /// The node's Raft state file (`None`: another shard's driver writes it, through
    /// `send_state`), and the state of every group it holds but this driver does not host:
    /// read at start for groups not added yet, or sent by other shards (kept in every write
    /// until they are added or removed).
    state_path: Option<PathBuf>,
    send_state: Option<StateSender>,
    stored: RefCell<BTreeMap<GroupId, Persisted>>,
    /// One writer of the state file at a time.
    state_lock: glommio::sync::Semaphore,
}

/// Told of a group's new role, term or leader (after the change is persisted).
pub type RoleListener = Box<dyn Fn(GroupId, RoleChange)>;

impl Replicator {
    /// Starts the driver: its ticker and its round loop. Envelopes come in through
    /// [`Self::deliver`]. With `StateHome::File(dir)` the node's Raft state is kept in `dir`.
    pub async fn start(
        transport: Rc<Transport>,
        timing: Timing,
        home: StateHome,
    ) -> anyhow::Result<Rc<Replicator>> {
        let (state_path, send_state) = match home {
            StateHome::File(dir) => (Some(state::path(&dir)), None),
            StateHome::Remote(sender) => (None, Some(sender)),
        };
        let stored = match &state_path {
            None => BTreeMap::new(),
            Some(path) => match tern_storage::fs::read_file(path).await? {
                None => BTreeMap::new(),
                Some(data) => state::decode_node(&data)
                    .ok_or_else(|| anyhow::anyhow!("damaged Raft state in {}", path.display()))?,
            },
        };
        let node = transport.node_id();
        let r = Rc::new(Replicator {
            node,
            timing,
            multi: RefCell::new(MultiRaft::new(node, timing.heartbeat_ticks)),
            hosts: RefCell::new(BTreeMap::new()),
            transport,
            misses: Default::default(),
            work: Event::new(),
            paused: Cell::new(false),
            role_listener: RefCell::new(None),
            heard: RefCell::new(BTreeMap::new()),
            unknown_logged: Cell::new((0, None)),
            state_path,
            send_state,
            stored: RefCell::new(stored),
            state_lock: glommio::sync::Semaphore::new(1),
        });
        let me = r.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(me.timing.tick).await;
                if !me.paused.get() {
                    me.multi.borrow_mut().tick();
                    me.work.notify(1);
                }
            }
        })
        .detach();
        glommio::spawn_local(r.clone().rounds()).detach();
        Ok(r)
    }

    /// Takes an envelope from another node (the part of it for this shard's groups).
    pub fn deliver(&self, envelope: Envelope) {
        if self.paused.get() {
            return; // lost, as on a cut link
        }
        let from = envelope.from;
        self.heard.borrow_mut().insert(from, Instant::now());
        let dropped = {
            let mut multi = self.multi.borrow_mut();
            multi.step(envelope);
            multi.unknown_group_messages()
        };
        self.work.notify(1);
        // A group removed here, or not opened yet, while its peers still talk to it: said
        // once in a while, not per message.
        let (logged, at) = self.unknown_logged.get();
        if dropped > logged && at.is_none_or(|t| t.elapsed() >= UNKNOWN_GROUP_LOG_EVERY) {
            let count = dropped - logged;
            tracing::info!(
                from,
                count,
                "dropped messages for Raft groups not hosted here"
            );
            self.unknown_logged.set((dropped, Some(Instant::now())));
        }
    }

    /// Makes the state of `groups` durable: in the node's file, or through the driver that
    /// writes it.
    async fn write_state(&self, groups: &[GroupId]) -> std::io::Result<()> {
        let Some(send) = &self.send_state else {
            return self.write_state_file().await;
        };
        let states = {
            let hosts = self.hosts.borrow();
            groups
                .iter()
                .map(|g| (*g, hosts.get(g).map(|h| h.persisted.clone())))
                .collect()
        };
        send(states).await
    }

    /// The node's file: the state of another shard's groups changed (`None`: forgotten).
    pub async fn store_for_shard(
        &self,
        states: Vec<(GroupId, Option<Persisted>)>,
    ) -> std::io::Result<()> {
        {
            let mut stored = self.stored.borrow_mut();
            for (group, state) in states {
                match state {
                    Some(p) => stored.insert(group, p),
                    None => stored.remove(&group),
                };
            }
        }
        self.write_state_file().await
    }

    /// The node's file: the stored state of a group another shard is about to host.
    pub fn stored_state(&self, group: GroupId) -> Option<Persisted> {
        self.stored.borrow().get(&group).cloned()
    }

    /// Writes every group's state to the node's file (atomically, synced).
    async fn write_state_file(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_path else {
            return Err(std::io::Error::other(
                "this shard does not write the Raft state file",
            ));
        };
        let _permit = self
            .state_lock
            .acquire_permit(1)
            .await
            .map_err(|_| std::io::Error::other("the Raft state file is closed"))?;
        let data = {
            let hosts = self.hosts.borrow();
            let stored = self.stored.borrow();
            let added = hosts.iter().map(|(g, h)| (*g, &h.persisted));
            let pending = stored.iter().filter(|(g, _)| !hosts.contains_key(g));
            state::encode_node(added.chain(pending.map(|(g, p)| (*g, p))))
        };
        tern_storage::fs::write_file_atomic(path, &data).await
    }

    #[cfg(test)]
    /// Cuts the node off (`true`: what arrives is lost, its clock stands still, it sends
    /// nothing) or reconnects it (tests).
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        self.work.notify(usize::MAX);
    }

    fn config(&self, group: GroupId) -> Config {
        let mut cfg = Config::new(self.node);
        cfg.election_ticks = self.timing.election_ticks;
        cfg.heartbeat_ticks = self.timing.heartbeat_ticks;
        cfg.coalesced_heartbeats = true;
        cfg.seed = self.node.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ group;
        cfg
    }

    /// Starts replicating `log` (in `dir`) as group `group`: from its persisted Raft state if
    /// it has one (`handed` by the driver that writes the node's file, or in this one's), else
    /// as a new replica with `membership`.
    pub async fn add_group(
        &self,
        group: GroupId,
        log: Rc<PartitionLog>,
        membership: Membership,
        handed: Option<Persisted>,
    ) -> anyhow::Result<()> {
        let dir = log.dir().to_path_buf();
        let kept = handed.or_else(|| self.stored.borrow_mut().remove(&group));
        let stored = match kept {
            Some(p) => Some(p),
            // Written by an earlier version, beside the partition's log.
            None => tern_storage::fs::read_file(&state::path(&dir))
                .await?
                .map(|d| {
                    Persisted::from_bytes(&d)
                        .ok_or_else(|| anyhow::anyhow!("damaged Raft state in {}", dir.display()))
                })
                .transpose()?,
        };
        let cfg = self.config(group);
        let replica = ReplicaLog::new(log.clone(), group, self.misses.clone());
        let g = match &stored {
            Some(p) => Group::restore(cfg, replica, p.hard_state, p.meta.clone(), p.commit),
            None => Group::new(cfg, replica, membership),
        };
        log.set_high_watermark(g.commit() as i64);
        let persisted = stored.unwrap_or_else(|| Persisted {
            hard_state: Default::default(),
            meta: g.meta(),
            commit: g.commit(),
        });
        let role = RoleChange {
            role: g.role(),
            term: g.term(),
            leader: g.leader(),
        };
        self.hosts.borrow_mut().insert(
            group,
            Host {
                log,
                persisted,
                role,
                waiters: Vec::new(),
                loading: false,
                caught_up: BTreeMap::new(),
            },
        );
        self.multi.borrow_mut().add_group(group, g);
        self.work.notify(1);
        Ok(())
    }

    pub fn on_role_change(&self, listener: RoleListener) {
        *self.role_listener.borrow_mut() = Some(listener);
    }

    /// Stops replicating group `group` (the partition left this node) and forgets its state,
    /// stored before this returns (the caller deletes the partition's files after). Its waiters
    /// fail.
    pub async fn remove_group(&self, group: GroupId) -> std::io::Result<()> {
        self.multi.borrow_mut().remove_group(group);
        self.stored.borrow_mut().remove(&group);
        let removed = self.hosts.borrow_mut().remove(&group);
        if let Some(host) = removed {
            for w in host.waiters {
                let _ = w.done.send(Err(ReplicateError::UnknownGroup));
            }
        }
        self.write_state(&[group]).await
    }

    /// Whether this node leads `group`, has committed an entry of its own term and its log's
    /// high watermark shows it (so reading the log up to the high watermark reads everything
    /// committed before it was elected).
    pub fn commit_in_term(&self, group: GroupId) -> bool {
        let multi = self.multi.borrow();
        let Some(g) = multi.group(group) else {
            return false;
        };
        let Some(&(term, start)) = g.epochs().epochs().last() else {
            return false;
        };
        // The storage log's high watermark follows Raft's commit at the driver's next round:
        // until it passes too, a reader of the log up to it would miss committed entries.
        let applied = self
            .hosts
            .borrow()
            .get(&group)
            .is_some_and(|h| h.log.high_watermark() as u64 > start);
        g.role() == Role::Leader && term == g.term() && g.commit() > start && applied
    }

    /// Leader: the replicas in sync (Kafka's ISR): itself, and each follower heard from within
    /// `lag` (replica.lag.time.max.ms) that holds everything committed, or did within `lag`.
    /// `None` elsewhere.
    pub fn in_sync(&self, group: GroupId, lag: Duration) -> Option<Vec<NodeId>> {
        let multi = self.multi.borrow();
        let g = multi.group(group)?;
        if g.role() != Role::Leader {
            return None;
        }
        let hosts = self.hosts.borrow();
        let caught_up = &hosts.get(&group)?.caught_up;
        let heard = self.heard.borrow();
        let mut isr = vec![self.node];
        for member in g.membership().members().filter(|&m| m != self.node) {
            let alive = heard.get(&member).is_some_and(|t| t.elapsed() <= lag);
            let now_in = g.progress(member).is_some_and(|p| p.matched >= g.commit());
            let lately = caught_up.get(&member).is_some_and(|t| t.elapsed() <= lag);
            if alive && (now_in || lately) {
                isr.push(member);
            }
        }
        isr.sort_unstable();
        Some(isr)
    }

    /// Leader: notes which followers hold everything committed now.
    fn note_caught_up(&self, group: GroupId) {
        let multi = self.multi.borrow();
        let Some(g) = multi.group(group).filter(|g| g.role() == Role::Leader) else {
            return;
        };
        let mut hosts = self.hosts.borrow_mut();
        let Some(host) = hosts.get_mut(&group) else {
            return;
        };
        let now = Instant::now();
        for member in g.membership().members() {
            if g.progress(member).is_some_and(|p| p.matched >= g.commit()) {
                host.caught_up.insert(member, now);
            }
        }
    }

    /// The largest epoch not above `term` in this replica's log, and where it ends (Kafka's
    /// OffsetForLeaderEpoch; the last epoch ends at the log end).
    pub fn epoch_end(&self, group: GroupId, term: Term) -> Option<(Term, Offset)> {
        let multi = self.multi.borrow();
        let g = multi.group(group)?;
        Some(g.epochs().end_for(term, tern_raft::Log::end(g.log())))
    }

    /// Leader: proposes one configuration change of `group`.
    pub fn propose_membership(
        &self,
        group: GroupId,
        change: MembershipChange,
    ) -> Result<Offset, ProposeError> {
        self.change(group, |g| g.propose_membership(change))
            .unwrap_or(Err(ProposeError::NotLeader { leader: None }))
    }

    /// Runs `f` on `group` (a change the host makes directly), then wakes the round loop.
    fn change<T>(&self, group: GroupId, f: impl FnOnce(&mut Group<ReplicaLog>) -> T) -> Option<T> {
        let out = self.multi.borrow_mut().group_mut(group).map(f);
        self.work.notify(1);
        out
    }

    /// Leader: hands leadership of `group` to `to` once it holds the whole log.
    pub fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), ProposeError> {
        self.change(group, |g| g.transfer_leader(to))
            .unwrap_or(Err(ProposeError::NotLeader { leader: None }))
    }

    /// Asks for an election now if `group` has no leader this replica knows (see
    /// [`Group::campaign`]).
    pub fn campaign(&self, group: GroupId) {
        self.change(group, |g| g.campaign());
    }

    /// The configuration of `group` in effect on this replica (committed or not).
    pub fn membership(&self, group: GroupId) -> Option<Membership> {
        let multi = self.multi.borrow();
        Some(multi.group(group)?.membership().clone())
    }

    /// The host moved `group`'s log start up (below its commit index).
    pub fn log_start_advanced(&self, group: GroupId) {
        self.change(group, |g| g.log_start_advanced());
    }

    /// The committed configuration of `group` on this replica.
    pub fn committed_membership(&self, group: GroupId) -> Option<Membership> {
        let multi = self.multi.borrow();
        Some(multi.group(group)?.committed_membership().clone())
    }

    /// When node `node` was last heard from (any Raft envelope).
    pub fn heard_from(&self, node: NodeId) -> Option<Instant> {
        self.heard.borrow().get(&node).copied()
    }

    /// The group's role, term and leader as this node knows them.
    pub fn role(&self, group: GroupId) -> Option<RoleChange> {
        self.hosts.borrow().get(&group).map(|h| h.role)
    }

    /// The leader's side of a produce: validates and proposes `records`. Wait for the outcome
    /// with [`Self::committed`] (acks=all) or on the local write (acks=1).
    pub fn propose(
        &self,
        group: GroupId,
        records: Bytes,
        now_ms: i64,
    ) -> Result<Proposed, ReplicateError> {
        let mut multi = self.multi.borrow_mut();
        let g = multi.group_mut(group).ok_or(ReplicateError::UnknownGroup)?;
        if g.role() != Role::Leader {
            return Err(ReplicateError::NotLeader { leader: g.leader() });
        }
        let term = g.term();
        let log = g.log().storage().clone();
        let prepared = log.prepare_leader_batch(records, now_ms, term as i32)?;
        let (data, records, log_append_time) = match prepared {
            Prepared::Duplicate {
                base_offset,
                last_offset,
            } => {
                // Its answer waits for the commit of that entry, in that term: if another
                // leader's log replaces it, the retry fails rather than being told of offsets
                // that now hold something else.
                return Ok(Proposed {
                    base_offset,
                    last_offset,
                    term: g.epochs().term_before(last_offset as Offset + 1),
                    log_append_time: -1,
                    appended: None,
                });
            }
            Prepared::Batch {
                data,
                records,
                log_append_time,
            } => (data, records, log_append_time),
        };
        self.propose_prepared(multi, group, data, records, log_append_time)
    }

    /// The leader's side of a transaction marker (WriteTxnMarkers): proposes `marker`'s
    /// control batch. A marker of an older producer epoch than the log knows is refused.
    pub fn propose_marker(
        &self,
        group: GroupId,
        marker: &Marker,
        now_ms: i64,
    ) -> Result<Proposed, ReplicateError> {
        let mut multi = self.multi.borrow_mut();
        let g = multi.group_mut(group).ok_or(ReplicateError::UnknownGroup)?;
        if g.role() != Role::Leader {
            return Err(ReplicateError::NotLeader { leader: g.leader() });
        }
        let data = g
            .log()
            .storage()
            .prepare_marker(marker, now_ms, g.term() as i32)?;
        self.propose_prepared(multi, group, data, 1, -1)
    }

    /// Proposes a batch prepared at the log end of `group`, which this node leads.
    fn propose_prepared(
        &self,
        mut multi: std::cell::RefMut<'_, MultiRaft<ReplicaLog>>,
        group: GroupId,
        data: Bytes,
        records: u64,
        log_append_time: i64,
    ) -> Result<Proposed, ReplicateError> {
        let g = multi.group_mut(group).ok_or(ReplicateError::UnknownGroup)?;
        let term = g.term();
        let (base, last) = g.propose(data, records).map_err(|e| match e {
            ProposeError::NotLeader { leader } => ReplicateError::NotLeader { leader },
            _ => ReplicateError::NotLeader { leader: None },
        })?;
        let appended = g.log_mut().take_last_appended();
        drop(multi);
        self.work.notify(1);
        Ok(Proposed {
            base_offset: base as i64,
            last_offset: last as i64,
            term,
            log_append_time,
            appended,
        })
    }

    /// Waits until the batch ending at `last_offset`, proposed in `term`, is committed; fails
    /// if another entry took its place.
    pub async fn committed(
        &self,
        group: GroupId,
        last_offset: i64,
        term: Term,
    ) -> Result<(), ReplicateError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut hosts = self.hosts.borrow_mut();
            let host = hosts.get_mut(&group).ok_or(ReplicateError::UnknownGroup)?;
            host.waiters.push(Waiter {
                last: last_offset as Offset,
                term,
                done: tx,
            });
        }
        // Committed already?
        self.resolve_waiters(group);
        rx.await.unwrap_or(Err(ReplicateError::LeadershipLost))
    }

    fn resolve_waiters(&self, group: GroupId) {
        let multi = self.multi.borrow();
        let Some(g) = multi.group(group) else {
            return;
        };
        let mut hosts = self.hosts.borrow_mut();
        let Some(host) = hosts.get_mut(&group) else {
            return;
        };
        let commit = g.commit();
        let epochs = g.epochs();
        for w in std::mem::take(&mut host.waiters) {
            if w.last >= commit {
                host.waiters.push(w);
                continue;
            }
            // Log matching: the same term at the same offset is the same batch.
            let ours = epochs.term_before(w.last + 1) == w.term;
            let outcome = match ours {
                true => Ok(()),
                false => Err(ReplicateError::LeadershipLost),
            };
            let _ = w.done.send(outcome);
        }
    }

    async fn rounds(self: Rc<Self>) {
        loop {
            let listener = self.work.listen();
            if !self.paused.get() {
                self.load_missed();
            }
            if self.paused.get() || !self.multi.borrow().has_ready() {
                listener.await;
                continue;
            }
            let ready = self.multi.borrow_mut().ready();
            self.round(ready).await;
        }
    }

    async fn round(self: &Rc<Self>, ready: MultiReady) {
        // 1. Persist, before anything of this round is sent.
        let mut changed = Vec::new();
        {
            let mut hosts = self.hosts.borrow_mut();
            let multi = self.multi.borrow();
            for (gid, r) in &ready.groups {
                let Some(host) = hosts.get_mut(gid) else {
                    continue;
                };
                if r.hard_state.is_none() && r.meta.is_none() {
                    continue;
                }
                if let Some(hs) = r.hard_state {
                    host.persisted.hard_state = hs;
                }
                if let Some(meta) = &r.meta {
                    host.persisted.meta = meta.clone();
                }
                if let Some(g) = multi.group(*gid) {
                    host.persisted.commit = g.durable_commit();
                }
                changed.push(*gid);
            }
        }
        let written = match changed.is_empty() {
            false => self.write_state(&changed).await,
            true => Ok(()),
        };
        if let Err(error) = written {
            // Nothing of this round may be sent: Raft resends once state is stored again.
            tracing::error!(%error, "persisting Raft state failed; this round's messages are dropped");
            return;
        }
        // 2. Send.
        for envelope in &ready.envelopes {
            let _ = self.transport.send(envelope);
        }
        // 3. Roles, high watermarks, syncs.
        for (gid, r) in ready.groups {
            let log = match self.hosts.borrow_mut().get_mut(&gid) {
                Some(host) => {
                    if let Some(role) = r.role {
                        host.role = role;
                    }
                    host.log.clone()
                }
                None => continue,
            };
            if let (Some(role), Some(listener)) = (r.role, &*self.role_listener.borrow()) {
                listener(gid, role);
            }
            if let Some(commit) = r.commit {
                log.set_high_watermark(commit as i64);
                self.resolve_waiters(gid);
            }
            self.note_caught_up(gid);
            if let Some(token) = r.sync {
                let me = self.clone();
                let log = log.clone();
                glommio::spawn_local(async move {
                    match log.sync_to(token.end as i64).await {
                        Ok(()) => me.multi.borrow_mut().synced(gid, token),
                        // A truncation meanwhile: Raft ignores the token anyway.
                        Err(LogError::WriteFailed) if !log.is_fenced() => {}
                        Err(error) => {
                            tracing::error!(dir = %log.dir().display(), %error, "replica log write failed; rebuilding its group from storage");
                            me.rebuild(gid);
                        }
                    }
                    me.work.notify(1);
                })
                .detach();
            }
            let broken = self
                .multi
                .borrow()
                .group(gid)
                .is_some_and(|g| g.log().is_broken());
            if broken {
                self.rebuild(gid);
            }
        }
    }

    /// After the storage lost appends Raft counts on (a failed write): the group restarts from
    /// what is stored, as after a crash, which Raft is proven to handle. Waiters stay: the
    /// commit index decides them.
    fn rebuild(&self, gid: GroupId) {
        let mut multi = self.multi.borrow_mut();
        let Some(old) = multi.remove_group(gid) else {
            return;
        };
        let Some(host) = self
            .hosts
            .borrow()
            .get(&gid)
            .map(|h| (h.log.clone(), h.persisted.clone()))
        else {
            return;
        };
        let (log, persisted) = host;
        drop(old);
        // Restarted from what is stored: the rolled-back batches are forgotten by Raft too.
        log.unfence();
        let g = Group::restore(
            self.config(gid),
            ReplicaLog::new(log, gid, self.misses.clone()),
            persisted.hard_state,
            persisted.meta,
            persisted.commit,
        );
        multi.add_group(gid, g);
        self.work.notify(1);
    }

    /// Followers behind the cache: load their batches from the files for Raft's next reads.
    fn load_missed(self: &Rc<Self>) {
        let misses = std::mem::take(&mut *self.misses.borrow_mut());
        for (gid, from) in misses {
            self.load(gid, from);
        }
    }

    fn load(self: &Rc<Self>, gid: GroupId, from: Offset) {
        let log = {
            let mut hosts = self.hosts.borrow_mut();
            let Some(host) = hosts.get_mut(&gid) else {
                return;
            };
            if host.loading {
                return;
            }
            host.loading = true;
            host.log.clone()
        };
        let me = self.clone();
        glommio::spawn_local(async move {
            let entries = ReplicaLog::load(&log, from).await;
            if let Some(g) = me.multi.borrow_mut().group_mut(gid) {
                g.log_mut().add_loaded(entries);
            }
            if let Some(host) = me.hosts.borrow_mut().get_mut(&gid) {
                host.loading = false;
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests;
