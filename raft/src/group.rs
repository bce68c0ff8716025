//! One Raft group (one partition's replica on this node) as a state machine: `step`, `tick`,
//! `propose`, `synced` change it; `ready` hands the host what to persist and send.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use crate::message::Reject;
use crate::progress::{Progress, ProgressState};
use crate::rng::Rng;
use crate::{
    Body, Entry, EpochTable, Log, Membership, MembershipChange, MembershipLog, Message, NodeId,
    Offset, Payload, Term,
};

/// How a group behaves; the same on every replica except `id` and `seed`.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The least ticks without a leader before a follower campaigns; the real timeout is drawn
    /// from `[election_ticks, 2 * election_ticks)` each time. A leader checks that a majority
    /// answered it once per `election_ticks` (check-quorum) and steps down if not.
    pub election_ticks: u32,
    /// Ticks between heartbeats (ignored when `coalesced_heartbeats`).
    pub heartbeat_ticks: u32,
    /// Most entry bytes in one append (at least one entry is always sent).
    pub max_append_bytes: usize,
    /// Appends in flight to one follower, by count and by bytes.
    pub max_inflight_batches: usize,
    pub max_inflight_bytes: usize,
    /// Heartbeats are sent by [`crate::MultiRaft`] for all groups at once, not by the group.
    pub coalesced_heartbeats: bool,
    /// Seeds the randomized election timeout.
    pub seed: u64,
    /// A deliberate bug, for proving that the simulator's checker catches it.
    #[cfg(test)]
    pub(crate) mutation: Option<Mutation>,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_append_bytes: 1 << 20,
            max_inflight_batches: 16,
            max_inflight_bytes: 8 << 20,
            coalesced_heartbeats: false,
            seed: id,
            #[cfg(test)]
            mutation: None,
        }
    }
}

/// Bugs the simulator must catch (set only in test builds).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// The leader commits what any one voter has, not what a majority has.
    CommitWithoutMajority,
    /// A voter grants its vote again in a term it already voted in.
    DoubleVote,
    /// A follower appends without checking the entry before them, and keeps entries of its own
    /// where the leader's overlap them.
    SkipLogMatching,
    /// A follower reports appended-but-unsynced entries as durable.
    CountUnsyncedAsDurable,
    /// A leadership check holds without heartbeats answered after it began.
    ConfirmWithoutHeartbeats,
    /// A replica that lost its data votes before it has the committed entries again.
    VoteAfterDataLoss,
}

/// What must be on disk before any message of the same `Ready` is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    /// The replica lost its data (a new disk) and has not caught up: it may acknowledge
    /// entries but must not vote or campaign, since its empty log could elect a leader that
    /// lacks entries it acknowledged before.
    pub lost_data: bool,
}

/// The log's small companions, persisted with the hard state before the log entries of the same
/// `Ready` are made durable: the epoch table and the configurations in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub epochs: EpochTable,
    pub membership: MembershipLog,
}

/// Asks the host to make the log durable up to `end`; given back to [`Group::synced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub end: Offset,
    /// Bumped by every truncation, so a sync that began before one is not trusted after it.
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// A leader's check that it still leads, from [`Group::leadership_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeadershipCheck {
    pub term: Term,
    /// Heartbeats the leader had sent in `term` when the check began.
    pub round: u64,
}

/// What the host must do after an input, in this order: persist `hard_state` and `meta`
/// (atomically, synced), send `messages`, and arrange a sync of the log for `sync`.
/// `commit` is the new high watermark; `role` a change of role, term or known leader.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub meta: Option<Meta>,
    pub messages: Vec<Message>,
    pub sync: Option<SyncToken>,
    pub commit: Option<Offset>,
    pub role: Option<RoleChange>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.meta.is_none()
            && self.messages.is_empty()
            && self.sync.is_none()
            && self.commit.is_none()
            && self.role.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this replica knows of.
    NotLeader { leader: Option<NodeId> },
    /// Leadership is being handed over: proposals wait for the new leader.
    TransferInProgress,
    /// The previous configuration change, or this leader's first entry, is not committed yet.
    ChangeInProgress,
    /// A learner is promoted only once it has everything committed.
    NotCaughtUp,
    /// The change does not fit the configuration (unknown node, removing the leader, ...).
    InvalidChange,
    /// A data entry covers at least one record.
    Empty,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader (node {l} is)")
            }
            ProposeError::NotLeader { leader: None } => write!(f, "not the leader (none known)"),
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress"),
            ProposeError::ChangeInProgress => write!(f, "a configuration change is in progress"),
            ProposeError::NotCaughtUp => write!(f, "the learner has not caught up"),
            ProposeError::InvalidChange => write!(f, "invalid configuration change"),
            ProposeError::Empty => write!(f, "an entry covers at least one record"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// One replica of one Raft group: exists on the shard that owns the partition replica.
pub struct Group<L: Log> {
    cfg: Config,
    log: L,
    term: Term,
    vote: Option<NodeId>,
    lost_data: bool,
    /// After a data loss: the term this replica moved to on first hearing from a leader. Its
    /// vote returns with a commit of an entry of this term or later.
    lost_data_fence: Option<Term>,
    role: Role,
    leader: Option<NodeId>,
    epochs: EpochTable,
    membership: MembershipLog,
    /// The commit index (Kafka's high watermark): offsets below it are committed.
    commit: Offset,
    /// Follower: the highest commit index heard from this term's leader.
    leader_commit: Offset,
    /// Follower: the log matches this term's leader up to here (at least the commit index:
    /// the committed prefix is in every later leader's log).
    leader_match_end: Offset,
    /// The log is durable up to here.
    synced: Offset,
    generation: u64,
    sync_requested: Option<SyncToken>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// Leader: heartbeats broadcast in this term (leadership checks count answers by it).
    heartbeat_round: u64,
    election_timeout: u32,
    votes: BTreeMap<NodeId, bool>,
    /// Leader: one per other member.
    progress: BTreeMap<NodeId, Progress>,
    /// The other members, to walk without allocating.
    peers: Vec<NodeId>,
    /// Leader: the transfer target and ticks since it began.
    transfer: Option<(NodeId, u32)>,
    rng: Rng,
    out: Vec<Message>,
    hard_state_dirty: bool,
    meta_dirty: bool,
    commit_dirty: bool,
    role_dirty: bool,
}

impl<L: Log> Group<L> {
    /// A new replica with an empty log and `membership` in effect.
    pub fn new(cfg: Config, log: L, membership: Membership) -> Self {
        let meta = Meta {
            epochs: EpochTable::new(),
            membership: MembershipLog::new(membership),
        };
        let start = log.start();
        Self::build(cfg, log, HardState::default(), meta, start)
    }

    /// A replica that lost its data (the host found its log and state gone while it is still a
    /// member). It starts empty, neither votes nor campaigns, and on first hearing from a leader
    /// moves one term past it, so that leader (which may count acknowledgements this replica
    /// made before the loss) steps down. It votes again once it holds, synced, a commit index
    /// covering an entry of that later term, and so everything committed before.
    pub fn new_after_data_loss(cfg: Config, log: L, membership: Membership) -> Self {
        let mut g = Self::new(cfg, log, membership);
        g.lost_data = true;
        g.hard_state_dirty = true;
        g
    }

    /// A replica restarted from what it persisted. The log is what survived (all of it durable);
    /// the epochs and configurations past its end are dropped. `commit` is a high watermark the
    /// host checkpointed (at most [`Group::durable_commit`] when written).
    pub fn restore(cfg: Config, log: L, hard_state: HardState, meta: Meta, commit: Offset) -> Self {
        let end = log.end();
        let mut meta = meta;
        let trimmed = meta.epochs.truncate(end) | meta.membership.truncate(end);
        let mut g = Self::build(cfg, log, hard_state, meta, commit.min(end));
        g.meta_dirty = trimmed;
        g
    }

    fn build(cfg: Config, log: L, hs: HardState, meta: Meta, commit: Offset) -> Self {
        let rng = Rng::new(cfg.seed);
        let mut g = Group {
            commit: commit.max(log.start()),
            synced: log.end(),
            log,
            term: hs.term,
            vote: hs.vote,
            lost_data: hs.lost_data,
            lost_data_fence: None,
            role: Role::Follower,
            leader: None,
            epochs: meta.epochs,
            membership: meta.membership,
            leader_commit: 0,
            leader_match_end: 0,
            generation: 0,
            sync_requested: None,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            heartbeat_round: 0,
            election_timeout: cfg.election_ticks,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            peers: Vec::new(),
            transfer: None,
            rng,
            cfg,
            out: Vec::new(),
            hard_state_dirty: false,
            meta_dirty: false,
            commit_dirty: false,
            role_dirty: false,
        };
        g.leader_match_end = g.commit;
        g.reset_election_timer();
        g.membership_changed();
        g
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// The high watermark: offsets below it are committed.
    pub fn commit(&self) -> Offset {
        self.commit
    }
    /// The log is durable up to here.
    pub fn synced_end(&self) -> Offset {
        self.synced
    }
    /// The high watermark as far as this replica's own disk holds it: what to checkpoint.
    pub fn durable_commit(&self) -> Offset {
        self.commit.min(self.synced)
    }
    pub fn log(&self) -> &L {
        &self.log
    }
    /// The log, for the host's own changes that Raft allows: moving the log start up to the
    /// commit index (then call [`Group::log_start_advanced`]).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }
    /// The log, given back when the replica is dropped (the host's crash or removal path).
    pub fn into_log(self) -> L {
        self.log
    }
    pub fn epochs(&self) -> &EpochTable {
        &self.epochs
    }
    /// The configuration in effect (the newest in the log).
    pub fn membership(&self) -> &Membership {
        self.membership.current()
    }

    /// The configuration of the committed log (what a change waits for before it counts).
    pub fn committed_membership(&self) -> &Membership {
        self.membership.at(self.commit)
    }
    /// Leader: what it knows of a follower.
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            lost_data: self.lost_data,
        }
    }
    pub fn meta(&self) -> Meta {
        Meta {
            epochs: self.epochs.clone(),
            membership: self.membership.clone(),
        }
    }

    /// Starts an election now, as a leader transfer does: no pre-vote, and voters that still
    /// hear from a leader vote anyway (tests).
    #[cfg(test)]
    pub(crate) fn campaign_now(&mut self) {
        self.become_candidate(true);
    }

    /// Starts a pre-vote now instead of at the election timeout, if this replica may campaign
    /// and knows no leader (the host's hint that this replica should lead, e.g. the preferred
    /// replica of a new partition). As safe as any election: the pre-vote fails while a leader
    /// is heard from.
    pub fn campaign(&mut self) {
        if self.role == Role::Follower && self.leader.is_none() && self.may_campaign() {
            self.become_pre_candidate();
        }
    }

    #[cfg(test)]
    fn mutated(&self, m: Mutation) -> bool {
        self.cfg.mutation == Some(m)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn mutated(&self, _: Mutation) -> bool {
        false
    }

    // ---- inputs -------------------------------------------------------------------------

    /// One tick of the host's clock.
    pub fn tick(&mut self) {
        if let Some((_, elapsed)) = &mut self.transfer {
            *elapsed += 1;
            if *elapsed >= self.cfg.election_ticks {
                self.transfer = None;
            }
        }
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            if self.election_elapsed >= self.cfg.election_ticks {
                self.election_elapsed = 0;
                if !self.quorum_active() {
                    // Check-quorum: cut off from a majority, stop acting as leader.
                    self.become_follower(self.term, None);
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
            if !self.cfg.coalesced_heartbeats {
                self.heartbeat_elapsed += 1;
                if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
                    self.heartbeat_elapsed = 0;
                    self.broadcast_heartbeat();
                }
            }
        } else if self.election_elapsed >= self.election_timeout && self.may_campaign() {
            self.become_pre_candidate();
        }
    }

    /// Leader: appends a data entry covering `records` offsets. Returns its `(base, last)`
    /// offsets; it is committed once [`Group::commit`] passes `last`, unless this replica loses
    /// leadership first (then it may or may not be).
    pub fn propose(&mut self, data: Bytes, records: u64) -> Result<(Offset, Offset), ProposeError> {
        self.check_can_propose()?;
        if records == 0 {
            return Err(ProposeError::Empty);
        }
        let range = self.append_local(Payload::Data(data), records);
        self.broadcast_append();
        Ok(range)
    }

    /// Leader: proposes a configuration change; returns the offset of its entry.
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<Offset, ProposeError> {
        self.check_can_propose()?;
        let pending = self
            .membership
            .last_change()
            .is_some_and(|o| o >= self.commit);
        if pending || self.epochs.term_before(self.commit) != self.term {
            return Err(ProposeError::ChangeInProgress);
        }
        let mut m = self.membership.current().clone();
        match change {
            MembershipChange::AddLearner(x) => {
                if m.is_member(x) {
                    return Err(ProposeError::InvalidChange);
                }
                m.learners.insert(x);
            }
            MembershipChange::Promote(x) => {
                if !m.learners.contains(&x) {
                    return Err(ProposeError::InvalidChange);
                }
                if self
                    .progress
                    .get(&x)
                    .is_none_or(|p| p.matched < self.commit)
                {
                    return Err(ProposeError::NotCaughtUp);
                }
                m.learners.remove(&x);
                m.voters.insert(x);
            }
            MembershipChange::Remove(x) => {
                if x == self.cfg.id || !m.is_member(x) {
                    return Err(ProposeError::InvalidChange);
                }
                m.learners.remove(&x);
                m.voters.remove(&x);
            }
        }
        let (base, _) = self.append_local(Payload::Membership(m), 1);
        self.broadcast_append();
        Ok(base)
    }

    /// Leader: hands leadership to `target` once it has the whole log durably. Proposals are
    /// refused meanwhile; the transfer is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.check_can_propose()?;
        if target == self.cfg.id || !self.membership.current().is_voter(target) {
            return Err(ProposeError::InvalidChange);
        }
        self.transfer = Some((target, 0));
        self.maybe_send_timeout_now(target);
        self.send_append(target);
        Ok(())
    }

    /// The host made the log durable up to `token.end`.
    pub fn synced(&mut self, token: SyncToken) {
        if token.generation != self.generation {
            return; // the log was truncated since: a later sync covers what is there now
        }
        let end = token.end.min(self.log.end());
        if end <= self.synced {
            return;
        }
        self.synced = end;
        if self.role == Role::Leader {
            self.maybe_commit();
        } else {
            self.update_follower_commit();
            if let Some(leader) = self.leader {
                self.respond_progress(leader, None);
            }
        }
    }

    /// The host moved the log start up (retention, DeleteRecords); it must not pass the commit
    /// index. Folds the epochs and configurations before it.
    pub fn log_start_advanced(&mut self) {
        let start = self.log.start();
        debug_assert!(start <= self.commit, "log start past the high watermark");
        if self.epochs.trim_front(start) | self.membership.trim_front(start) {
            self.meta_dirty = true;
        }
        if start > self.commit {
            self.commit = start;
            self.commit_dirty = true;
        }
    }

    /// A message from another replica of this group.
    pub fn step(&mut self, m: Message) {
        if m.to != self.cfg.id || m.from == self.cfg.id {
            return;
        }
        let from_leader = matches!(
            m.body,
            Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallStart { .. }
        );
        if self.lost_data && self.lost_data_fence.is_none() && from_leader {
            // First word from a leader since the data was lost. That leader may still count this
            // replica's acknowledgements from before the loss: move past its term so it steps
            // down; leaders of the new term start without them.
            let fence = self.term.max(m.term) + 1;
            self.lost_data_fence = Some(fence);
            self.become_follower(fence, None);
        }
        if m.term > self.term {
            match &m.body {
                // Pre-votes change nobody's term; a granted one carries the term asked for.
                Body::PreVote { .. } | Body::PreVoteResponse { granted: true } => {}
                Body::Vote { transfer, .. } => {
                    if !transfer && self.in_lease() {
                        // A leader is alive: this candidate was cut off, do not let it depose it.
                        return;
                    }
                    self.become_follower(m.term, None);
                }
                Body::Append { .. }
                | Body::Heartbeat { .. }
                | Body::InstallStart { .. }
                | Body::TimeoutNow => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                // Tell a stale leader (or pre-candidate) the newer term so it steps down.
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallStart { .. } => {
                    self.send(m.from, self.progress_body(Some(0), None))
                }
                Body::PreVote { .. } => self.send(m.from, Body::PreVoteResponse { granted: false }),
                _ => {}
            }
            return;
        }
        match m.body {
            Body::PreVote { end, last_term } => {
                let granted = m.term > self.term
                    && !self.in_lease()
                    && self.may_vote()
                    && self.up_to_date(end, last_term);
                let term = if granted { m.term } else { self.term };
                self.send_with_term(m.from, term, Body::PreVoteResponse { granted });
            }
            Body::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate {
                    if granted && m.term == self.term + 1 {
                        self.votes.insert(m.from, true);
                    } else if !granted && m.term == self.term {
                        self.votes.insert(m.from, false);
                    }
                    match self.poll() {
                        Some(true) => self.become_candidate(false),
                        Some(false) => self.become_follower(self.term, None),
                        None => {}
                    }
                }
            }
            Body::Vote { end, last_term, .. } => self.handle_vote(m.from, end, last_term),
            Body::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.votes.insert(m.from, granted);
                    match self.poll() {
                        Some(true) => self.become_leader(),
                        Some(false) => self.become_follower(self.term, None),
                        None => {}
                    }
                }
            }
            Body::Append {
                prev_end,
                prev_term,
                entries,
                commit,
            } => {
                if self.follow(m.from) {
                    self.handle_append(m.from, prev_end, prev_term, entries, commit);
                }
            }
            Body::Heartbeat { commit, round } => {
                if self.follow(m.from) {
                    self.leader_commit = self.leader_commit.max(commit);
                    self.update_follower_commit();
                    self.respond_progress(m.from, Some(round));
                }
            }
            Body::InstallStart {
                start,
                start_term,
                membership,
            } => {
                if self.follow(m.from) {
                    self.handle_install_start(m.from, start, start_term, membership);
                }
            }
            Body::TimeoutNow => {
                if self.role != Role::Leader && self.may_campaign() {
                    self.become_candidate(true);
                }
            }
            Body::AppendResponse {
                match_end,
                durable,
                reject,
                heartbeat,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, match_end, durable, reject, heartbeat);
                }
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.hard_state_dirty
            || self.meta_dirty
            || self.commit_dirty
            || self.role_dirty
            || self.needs_sync()
    }

    fn needs_sync(&self) -> bool {
        self.log.end() > self.synced
            && self
                .sync_requested
                .is_none_or(|t| t.generation != self.generation || t.end < self.log.end())
    }

    pub fn ready(&mut self) -> Ready {
        let sync = if self.needs_sync() {
            let token = SyncToken {
                end: self.log.end(),
                generation: self.generation,
            };
            self.sync_requested = Some(token);
            Some(token)
        } else {
            None
        };
        Ready {
            hard_state: std::mem::take(&mut self.hard_state_dirty).then(|| self.hard_state()),
            meta: std::mem::take(&mut self.meta_dirty).then(|| self.meta()),
            messages: std::mem::take(&mut self.out),
            sync,
            commit: std::mem::take(&mut self.commit_dirty).then_some(self.commit),
            role: std::mem::take(&mut self.role_dirty).then_some(RoleChange {
                role: self.role,
                term: self.term,
                leader: self.leader,
            }),
        }
    }

    // ---- roles --------------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let e = self.cfg.election_ticks.max(1);
        self.election_timeout = e + self.rng.below(u64::from(e)) as u32;
    }

    fn set_role(&mut self, role: Role, leader: Option<NodeId>) {
        if self.role != role || self.leader != leader {
            self.role_dirty = true;
        }
        self.role = role;
        self.leader = leader;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hard_state_dirty = true;
            self.role_dirty = true;
            // The committed prefix is in the new leader's log too (leader completeness).
            self.leader_match_end = self.commit;
            self.leader_commit = 0;
        }
        self.set_role(Role::Follower, leader);
        self.progress.clear();
        self.transfer = None;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn become_pre_candidate(&mut self) {
        self.set_role(Role::PreCandidate, None);
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
        if self.poll() == Some(true) {
            return self.become_candidate(false);
        }
        let (end, last_term) = (self.log.end(), self.epochs.term_before(self.log.end()));
        self.ask_voters(self.term + 1, Body::PreVote { end, last_term });
    }

    /// Sends a (pre-)vote request for `term` to every other voter.
    fn ask_voters(&mut self, term: Term, request: Body) {
        for i in 0..self.peers.len() {
            let to = self.peers[i];
            if self.membership.current().is_voter(to) {
                self.send_with_term(to, term, request.clone());
            }
        }
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.term += 1;
        self.vote = Some(self.cfg.id);
        self.hard_state_dirty = true;
        self.role_dirty = true;
        self.leader_match_end = self.commit;
        self.leader_commit = 0;
        self.set_role(Role::Candidate, None);
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
        if self.poll() == Some(true) {
            return self.become_leader();
        }
        let (end, last_term) = (self.log.end(), self.epochs.term_before(self.log.end()));
        self.ask_voters(
            self.term,
            Body::Vote {
                end,
                last_term,
                transfer,
            },
        );
    }

    fn become_leader(&mut self) {
        self.set_role(Role::Leader, Some(self.cfg.id));
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.heartbeat_round = 0;
        self.transfer = None;
        self.progress.clear();
        self.membership_changed();
        for pr in self.progress.values_mut() {
            pr.recent_active = true; // a full election timeout before the first quorum check
        }
        // The term's first entry: it lets earlier terms' entries commit (§5.4.2) and marks the
        // epoch start in the log (KRaft's LeaderChange control record).
        self.append_local(Payload::LeaderChange(self.cfg.id), 1);
        self.broadcast_append();
    }

    /// Follows `from`, the leader of this term, before taking its append or heartbeat.
    fn follow(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            return false; // one leader per term: cannot happen
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        true
    }

    /// Whether this replica may grant votes: any replica that has its data. Its own
    /// configuration does not matter (it may not have the newest yet); candidates count only the
    /// votes of their configuration's voters.
    fn may_vote(&self) -> bool {
        !self.lost_data || self.mutated(Mutation::VoteAfterDataLoss)
    }

    /// Whether this replica may stand for election: a voter that may vote.
    fn may_campaign(&self) -> bool {
        self.membership.current().is_voter(self.cfg.id) && self.may_vote()
    }

    /// Whether this replica still hears from a leader, so votes for others are refused.
    fn in_lease(&self) -> bool {
        self.role == Role::Leader
            || (self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks)
    }

    fn quorum_active(&self) -> bool {
        let m = self.membership.current();
        let active = m
            .voters
            .iter()
            .filter(|&&v| {
                v == self.cfg.id || self.progress.get(&v).is_some_and(|p| p.recent_active)
            })
            .count();
        active >= m.quorum()
    }

    /// `Some(true)` with a majority of voters granting, `Some(false)` once that cannot happen.
    fn poll(&self) -> Option<bool> {
        let m = self.membership.current();
        let (mut yes, mut no) = (0, 0);
        for v in &m.voters {
            match self.votes.get(v) {
                Some(true) => yes += 1,
                Some(false) => no += 1,
                None => {}
            }
        }
        if yes >= m.quorum() {
            Some(true)
        } else if no > m.voters.len() - m.quorum() {
            Some(false)
        } else {
            None
        }
    }

    /// §5.4.1: the candidate's log is at least as up to date as ours.
    fn up_to_date(&self, end: Offset, last_term: Term) -> bool {
        let my_term = self.epochs.term_before(self.log.end());
        last_term > my_term || (last_term == my_term && end >= self.log.end())
    }

    fn handle_vote(&mut self, from: NodeId, end: Offset, last_term: Term) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (self.mutated(Mutation::DoubleVote) && self.role != Role::Leader);
        let granted = can_vote && self.may_vote() && self.up_to_date(end, last_term);
        if granted {
            self.vote = Some(from);
            self.hard_state_dirty = true;
            self.reset_election_timer();
        }
        self.send(from, Body::VoteResponse { granted });
    }

    // ---- the log ------------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn append_local(&mut self, payload: Payload, records: u64) -> (Offset, Offset) {
        let base = self.log.end();
        let last = base + records - 1;
        self.store(Entry {
            base,
            last,
            term: self.term,
            payload,
        });
        (base, last)
    }

    /// Appends an entry at the log end (leader or follower).
    fn store(&mut self, e: Entry) {
        debug_assert_eq!(e.base, self.log.end(), "offsets are dense");
        debug_assert!(
            e.term >= self.epochs.last_term(),
            "terms never go back in a log"
        );
        if self.epochs.observe(e.term, e.base) {
            self.meta_dirty = true;
        }
        let config = match &e.payload {
            Payload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        let base = e.base;
        self.log.append(e);
        if let Some(m) = config {
            self.membership.push(base, m);
            self.meta_dirty = true;
            self.membership_changed();
        }
    }

    fn truncate_log(&mut self, end: Offset) {
        debug_assert!(end >= self.commit, "truncating committed entries");
        self.log.truncate(end);
        self.meta_dirty |= self.epochs.truncate(end);
        if self.membership.truncate(end) {
            self.meta_dirty = true;
            self.membership_changed();
        }
        self.synced = self.synced.min(end);
        self.leader_match_end = self.leader_match_end.min(end);
        self.generation += 1;
        self.sync_requested = None;
    }

    /// Keeps `peers` and (on a leader) `progress` in step with the configuration in effect.
    fn membership_changed(&mut self) {
        let m = self.membership.current();
        self.peers.clear();
        self.peers.extend(m.members().filter(|&n| n != self.cfg.id));
        if self.role == Role::Leader {
            let end = self.log.end();
            self.progress.retain(|id, _| m.is_member(*id));
            for &p in &self.peers {
                self.progress.entry(p).or_insert_with(|| Progress::new(end));
            }
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_end: Offset,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Offset,
    ) {
        let start = self.log.start();
        if prev_end > self.log.end() {
            return self.reject(from, prev_end, self.log.end());
        }
        // Log matching (§5.3): the entry before these must be the leader's. Everything before
        // the log start is committed, so it matches.
        if prev_end > start
            && self.epochs.term_before(prev_end) != prev_term
            && !self.mutated(Mutation::SkipLogMatching)
        {
            return self.reject(from, prev_end, prev_end);
        }
        let mut match_end = prev_end.max(start);
        for e in entries {
            if e.end() <= start {
                continue; // before the log start: committed, so the same
            }
            let end = self.log.end();
            if e.base < end {
                let same_term = self.epochs.term_before(e.end()) == e.term;
                if e.end() <= end && (same_term || self.mutated(Mutation::SkipLogMatching)) {
                    match_end = e.end(); // already here (same offsets and term: same batch)
                    continue;
                }
                if e.base < self.commit {
                    break; // would remove committed entries: Raft rules this out
                }
                self.truncate_log(e.base);
            }
            if e.base != self.log.end() {
                break;
            }
            match_end = e.end();
            self.store(e);
        }
        self.leader_match_end = self.leader_match_end.max(match_end.min(self.log.end()));
        self.leader_commit = self.leader_commit.max(commit);
        self.update_follower_commit();
        self.respond_progress(from, None);
    }

    fn reject(&mut self, from: NodeId, prev_end: Offset, hint_end: Offset) {
        let log_start = self.log.start();
        let reject = Reject {
            prev_end,
            hint_end,
            hint_term: self.epochs.term_before(hint_end),
            hint_term_start: self
                .epochs
                .start_of_epoch_before(hint_end)
                .unwrap_or(log_start),
            log_start,
        };
        self.send(from, self.progress_body(None, Some(reject)));
    }

    fn handle_install_start(
        &mut self,
        from: NodeId,
        start: Offset,
        start_term: Term,
        membership: Membership,
    ) {
        // Our committed prefix is in every later leader's log: if it reaches `start`, we
        // have what the leader asks for (perhaps trimmed further), and must keep it.
        let have = self.commit >= start
            || (self.log.start() <= start
                && self.log.end() >= start
                && (start == self.log.start() || self.epochs.term_before(start) == start_term));
        if !have {
            self.log.reset(start);
            self.epochs.reset(start_term);
            self.membership.reset(membership);
            self.membership_changed();
            self.meta_dirty = true;
            self.synced = start;
            self.generation += 1;
            self.sync_requested = None;
        }
        self.leader_match_end = self.leader_match_end.max(start);
        if start > self.commit {
            self.commit = start; // the log start is never above the high watermark
            self.commit_dirty = true;
        }
        self.respond_progress(from, None);
    }

    /// Follower: what this replica has of the leader's log durably.
    fn durable_match(&self) -> Offset {
        if self.mutated(Mutation::CountUnsyncedAsDurable) {
            return self.leader_match_end;
        }
        self.synced.min(self.leader_match_end)
    }

    /// A follower's high watermark: what the leader says is committed, of what this replica
    /// knows matches the leader and holds durably (so a restart never lowers it).
    fn update_follower_commit(&mut self) {
        let c = self
            .leader_commit
            .min(self.leader_match_end)
            .min(self.synced);
        if c > self.commit {
            self.commit = c;
            self.commit_dirty = true;
        }
        // A commit index covering an entry of the fence term or later covers every entry that
        // a leader may have committed counting acknowledgements from before the loss.
        let fence = self.lost_data_fence;
        if self.lost_data && fence.is_some_and(|f| self.epochs.term_before(self.commit) >= f) {
            self.lost_data = false;
            self.hard_state_dirty = true;
        }
    }

    fn progress_body(&self, heartbeat: Option<u64>, reject: Option<Reject>) -> Body {
        Body::AppendResponse {
            match_end: self.leader_match_end,
            durable: self.durable_match(),
            reject,
            heartbeat,
        }
    }

    fn respond_progress(&mut self, to: NodeId, heartbeat: Option<u64>) {
        self.send(to, self.progress_body(heartbeat, None));
    }

    // ---- leader -------------------------------------------------------------------------

    fn handle_append_response(
        &mut self,
        from: NodeId,
        match_end: Offset,
        durable: Offset,
        reject: Option<Reject>,
        heartbeat: Option<u64>,
    ) {
        let end = self.log.end();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if let Some(round) = heartbeat {
            pr.heartbeat_round = pr.heartbeat_round.max(round);
        }
        if let Some(r) = reject {
            let stale = match pr.state {
                ProgressState::Probe => r.prev_end != pr.next,
                ProgressState::Replicate => r.prev_end < pr.matched,
            };
            if stale {
                return;
            }
            if r.hint_end < pr.matched {
                // Its log ends below what it acknowledged: it lost its data. Counting less
                // toward commit is always safe.
                pr.matched = r.hint_end;
            }
            // Where the logs diverge, by epochs (Kafka's OffsetForLeaderEpoch): the follower's
            // entries of an epoch we also have match ours up to where either copy ends; an epoch
            // we lack diverges at its start.
            let (epoch, epoch_end) = self.epochs.end_for(r.hint_term, end);
            let next = if epoch == r.hint_term {
                r.hint_end.min(epoch_end)
            } else {
                epoch_end.min(r.hint_term_start)
            };
            let known = match_end.min(r.hint_end).max(pr.matched);
            let next = next.max(r.log_start.min(r.hint_end)).max(known).min(end);
            pr.become_probe(next);
            self.send_append(from);
            return;
        }
        pr.match_end = match_end;
        pr.matched = pr.matched.max(durable.min(end));
        pr.acked(match_end);
        match pr.state {
            ProgressState::Probe => {
                if heartbeat.is_some() {
                    pr.probe_sent = false; // the probe or its answer may be lost: send again
                } else if match_end >= pr.next && match_end > 0 {
                    pr.become_replicate(match_end);
                }
            }
            ProgressState::Replicate => {
                if heartbeat.is_some() {
                    // Behind with nothing in flight (it restarted), or no progress over a whole
                    // heartbeat interval (an append was lost): find where it is again.
                    let stalled = !pr.has_inflight() || match_end <= pr.last_heartbeat_match;
                    if match_end < pr.next && stalled {
                        let next = match_end.max(pr.matched);
                        pr.become_probe(next);
                    }
                    pr.last_heartbeat_match = match_end;
                }
            }
        }
        self.maybe_commit();
        self.maybe_send_timeout_now(from);
        self.send_append(from);
    }

    fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some((target, _)) = self.transfer else {
            return;
        };
        if target == from
            && self
                .progress
                .get(&target)
                .is_some_and(|p| p.matched >= self.log.end())
        {
            self.send(target, Body::TimeoutNow);
        }
    }

    /// §5.3/§5.4.2: commit what a majority of voters hold durably, once it includes an entry of
    /// this term.
    fn maybe_commit(&mut self) {
        let m = self.membership.current();
        let own = self.synced.min(self.log.end());
        let durable = |v: NodeId| {
            if v == self.cfg.id {
                own
            } else {
                self.progress.get(&v).map_or(0, |p| p.matched)
            }
        };
        let needed = if self.mutated(Mutation::CommitWithoutMajority) {
            1
        } else {
            m.quorum()
        };
        // The highest offset that `needed` voters hold durably, without allocating: it runs on
        // every acknowledgement, and a group has a handful of voters.
        let c = m
            .voters
            .iter()
            .map(|&v| durable(v))
            .filter(|&a| m.voters.iter().filter(|&&w| durable(w) >= a).count() >= needed)
            .max()
            .unwrap_or(0);
        if c > self.commit && self.epochs.term_before(c) == self.term {
            debug_assert!(c <= self.log.end());
            self.commit = c;
            self.commit_dirty = true;
        }
    }

    /// Sends `to` what it lacks: pipelined up to the window when replicating, one append when
    /// probing, or an `InstallStart` when it needs entries the log no longer has.
    fn send_append(&mut self, to: NodeId) {
        loop {
            let Some(pr) = self.progress.get_mut(&to) else {
                return;
            };
            if pr.is_paused(self.cfg.max_inflight_batches, self.cfg.max_inflight_bytes) {
                return;
            }
            let (start, end) = (self.log.start(), self.log.end());
            if pr.next < start {
                pr.become_probe(pr.next);
                pr.probe_sent = true;
                let body = Body::InstallStart {
                    start,
                    start_term: self.epochs.term_before(start),
                    membership: self.membership.at(start).clone(),
                };
                return self.send(to, body);
            }
            if pr.state == ProgressState::Replicate && pr.next >= end {
                return;
            }
            let prev_end = pr.next;
            let prev_term = self.epochs.term_before(prev_end);
            let entries = if prev_end < end {
                self.log.read(prev_end, self.cfg.max_append_bytes)
            } else {
                Vec::new()
            };
            let last_end = entries.last().map_or(prev_end, Entry::end);
            if pr.state == ProgressState::Replicate && last_end == prev_end {
                return; // `next` is not a boundary of ours: wait for the follower to answer
            }
            pr.sent(last_end, entries.iter().map(Entry::bytes).sum());
            let probing = pr.state == ProgressState::Probe;
            self.send(
                to,
                Body::Append {
                    prev_end,
                    prev_term,
                    entries,
                    commit: self.commit,
                },
            );
            if probing {
                return;
            }
        }
    }

    fn broadcast_append(&mut self) {
        for i in 0..self.peers.len() {
            self.send_append(self.peers[i]);
        }
    }

    /// Leader: a heartbeat (with the commit index) to every other member.
    pub fn broadcast_heartbeat(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.heartbeat_round += 1;
        for i in 0..self.peers.len() {
            self.send(
                self.peers[i],
                Body::Heartbeat {
                    commit: self.commit,
                    round: self.heartbeat_round,
                },
            );
        }
    }

    /// Leader: starts a leadership check (the host's ReadIndex, Raft dissertation §6.4): pass
    /// what this returns to [`Group::leadership_confirmed`]. Answers to heartbeats sent from now
    /// on count toward it.
    pub fn leadership_check(&self) -> Option<LeadershipCheck> {
        (self.role == Role::Leader).then_some(LeadershipCheck {
            term: self.term,
            round: self.heartbeat_round,
        })
    }

    /// Whether this replica is still the leader of the check's term and a majority of voters
    /// answered a heartbeat sent after the check began (so no later term had a leader then),
    /// with an entry of this term committed (so this leader's log holds every entry that will
    /// ever commit below its log end at check time: entries it lacks there never will).
    pub fn leadership_confirmed(&self, check: LeadershipCheck) -> bool {
        if self.role != Role::Leader || self.term != check.term {
            return false;
        }
        let term_committed = self.epochs.term_before(self.commit) == self.term;
        let m = self.membership.current();
        let answered = m
            .voters
            .iter()
            .filter(|&&v| {
                v == self.cfg.id
                    || self
                        .progress
                        .get(&v)
                        .is_some_and(|p| p.heartbeat_round > check.round)
                    || self.mutated(Mutation::ConfirmWithoutHeartbeats)
            })
            .count();
        term_committed && answered >= m.quorum()
    }

    fn send(&mut self, to: NodeId, body: Body) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: Body) {
        self.out.push(Message {
            from: self.cfg.id,
            to,
            term,
            body,
        });
    }
}
