//! The classic consumer group protocol as a state machine: joins, syncs, heartbeats, leaves,
//! session expiry and rebalances. No I/O and no clock of its own: callers pass `now`, and
//! delayed answers (JoinGroup, SyncGroup) go out through the oneshot senders they handed in.

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::records::StoredMember;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka uses in ListGroups / DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's (id, instance id, metadata), for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader already has an assignment (static member rejoin): it need not compute one.
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(e: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: e.code(),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// What a SyncGroup waits for: `(error, assignment)`.
pub type SyncResult = (i16, Bytes);

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// The metadata this member sent for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A JoinGroup as the coordinator sees it.
pub struct Join {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member is first given an id and asked to join again with it.
    pub require_known_member_id: bool,
}

/// One consumer group. Exists on the shard that owns the group's `__consumer_offsets`
/// partition (the group's coordinator).
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED that have not joined yet.
    pending: BTreeMap<String, Instant>,
    /// When the running rebalance gives up on members that have not rejoined.
    rebalance_deadline: Option<Instant>,
    /// A group rebalancing from empty waits this long for more members first.
    initial_delay_until: Option<Instant>,
    next_member: u64,
}

/// Group tuning shared by every group of a node.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    pub initial_rebalance_delay: Duration,
    /// Consumer-protocol groups (KIP-848): the session and heartbeat interval the broker sets.
    pub consumer_session_timeout: Duration,
    pub consumer_heartbeat_interval: Duration,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            next_member: 0,
        }
    }

    /// Restores a group from its stored metadata: members keep their assignments and get a
    /// fresh session, so they carry on without a rebalance after a coordinator restart.
    pub fn restore(
        id: &str,
        generation: i32,
        protocol_type: Option<String>,
        protocol: Option<String>,
        leader: Option<String>,
        members: Vec<StoredMember>,
        now: Instant,
    ) -> Group {
        let mut group = Group::new(id);
        group.generation = generation;
        group.protocol_type = protocol_type;
        group.protocol = protocol.clone();
        group.leader = leader;
        for m in members {
            let protocols = vec![(protocol.clone().unwrap_or_default(), m.subscription)];
            group.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocols,
                    assignment: m.assignment,
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        format!("{client_id}-{}-{}", self.generation, uuid::Uuid::new_v4())
    }

    fn static_member(&self, instance_id: &str) -> Option<&String> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
            .map(|m| &m.id)
    }

    /// Checks that `member_id` (with `instance_id`) is a current member.
    pub fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            match self.static_member(instance) {
                Some(id) if id != member_id => return Err(ResponseError::FencedInstanceId),
                Some(_) => return Ok(()),
                None => return Err(ResponseError::UnknownMemberId),
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    /// Handles a JoinGroup. The answer comes through `reply`, at once or when the rebalance
    /// completes.
    pub fn join(
        &mut self,
        join: Join,
        config: &GroupConfig,
        now: Instant,
        reply: oneshot::Sender<JoinResult>,
    ) {
        let fail = |reply: oneshot::Sender<JoinResult>, e: ResponseError, id: &str| {
            let _ = reply.send(JoinResult::error(e, id));
        };
        if self.state == GroupState::Dead {
            return fail(
                reply,
                ResponseError::CoordinatorNotAvailable,
                &join.member_id,
            );
        }
        if join.session_timeout < config.min_session_timeout
            || join.session_timeout > config.max_session_timeout
        {
            return fail(reply, ResponseError::InvalidSessionTimeout, &join.member_id);
        }
        let supported = |p: &str| join.protocols.iter().any(|(n, _)| n == p);
        if !self.members.is_empty()
            && (self.protocol_type.as_deref() != Some(join.protocol_type.as_str())
                || !self.candidate_protocols().iter().any(|p| supported(p)))
        {
            return fail(
                reply,
                ResponseError::InconsistentGroupProtocol,
                &join.member_id,
            );
        }
        let mut member_id = join.member_id.clone();
        if let Some(instance) = join.instance_id.clone() {
            if let Some(existing) = self.static_member(&instance).cloned() {
                if !member_id.is_empty() && member_id != existing {
                    return fail(reply, ResponseError::FencedInstanceId, &member_id);
                }
                // A static member coming back: it takes over its old entry under a new id.
                let new_id = if member_id.is_empty() {
                    self.new_member_id(&join.client_id)
                } else {
                    existing.clone()
                };
                let Some(mut member) = self.members.remove(&existing) else {
                    return fail(reply, ResponseError::UnknownMemberId, &existing);
                };
                if let Some(w) = member.join_waiter.take() {
                    let _ = w.send(JoinResult::error(
                        ResponseError::FencedInstanceId,
                        &existing,
                    ));
                }
                if let Some(w) = member.sync_waiter.take() {
                    let _ = w.send((ResponseError::FencedInstanceId.code(), Bytes::new()));
                }
                let unchanged = member.protocols == join.protocols;
                member.id = new_id.clone();
                member.protocols = join.protocols;
                member.session_timeout = join.session_timeout;
                member.rebalance_timeout = join.rebalance_timeout;
                member.last_heartbeat = now;
                if self.leader.as_deref() == Some(existing.as_str()) {
                    self.leader = Some(new_id.clone());
                }
                if self.state == GroupState::Stable && unchanged {
                    // Same subscription: no rebalance, the member gets its assignment back.
                    let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                    self.members.insert(new_id.clone(), member);
                    let _ = reply.send(self.join_result(&new_id, is_leader, is_leader));
                    return;
                }
                member.join_waiter = Some(reply);
                self.members.insert(new_id, member);
                self.prepare_rebalance(config, now);
                self.maybe_complete_join(now);
                return;
            }
            if member_id.is_empty() {
                member_id = self.new_member_id(&join.client_id);
            }
        } else if member_id.is_empty() {
            let id = self.new_member_id(&join.client_id);
            if join.require_known_member_id {
                self.pending.insert(id.clone(), now + join.session_timeout);
                let mut result = JoinResult::error(ResponseError::MemberIdRequired, &id);
                result.generation = -1;
                let _ = reply.send(result);
                return;
            }
            member_id = id;
        } else if !self.members.contains_key(&member_id)
            && self.pending.remove(&member_id).is_none()
        {
            return fail(reply, ResponseError::UnknownMemberId, &member_id);
        }
        self.pending.remove(&member_id);
        match self.members.get_mut(&member_id) {
            Some(member) => {
                // A known member rejoining. A follower in Stable with the same protocols is
                // answered at once (it missed the previous answer); otherwise a rebalance
                // starts. The leader's rejoin always starts one, as in Kafka: it is how the
                // leader reports what its metadata cannot show, such as a topic that grew.
                let unchanged = member.protocols == join.protocols;
                member.last_heartbeat = now;
                member.session_timeout = join.session_timeout;
                member.rebalance_timeout = join.rebalance_timeout;
                let is_leader = self.leader.as_deref() == Some(member_id.as_str());
                if unchanged && self.state == GroupState::Stable && !is_leader {
                    let _ = reply.send(self.join_result(&member_id, false, false));
                    return;
                }
                member.protocols = join.protocols;
                member.join_waiter = Some(reply);
            }
            None => {
                self.members.insert(
                    member_id.clone(),
                    Member {
                        id: member_id.clone(),
                        instance_id: join.instance_id,
                        client_id: join.client_id,
                        client_host: join.client_host,
                        session_timeout: join.session_timeout,
                        rebalance_timeout: join.rebalance_timeout,
                        protocols: join.protocols,
                        assignment: Bytes::new(),
                        last_heartbeat: now,
                        join_waiter: Some(reply),
                        sync_waiter: None,
                    },
                );
                if self.members.len() == 1 {
                    self.protocol_type = Some(join.protocol_type);
                }
            }
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(config, now);
        }
        self.maybe_complete_join(now);
    }

    /// Protocols every current member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    /// Each member votes for its most preferred candidate; the most votes wins.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(c.as_str()).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .cloned()
    }

    fn prepare_rebalance(&mut self, config: &GroupConfig, now: Instant) {
        // Members waiting for a sync answer from the previous round must rejoin.
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send((ResponseError::RebalanceInProgress.code(), Bytes::new()));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.initial_delay_until = (self.state == GroupState::Empty)
            .then(|| now + config.initial_rebalance_delay.min(timeout));
        self.rebalance_deadline = Some(now + timeout);
        self.state = GroupState::PreparingRebalance;
    }

    /// Completes the running rebalance if every member has rejoined (after any initial
    /// delay), or if its deadline passed (dropping members that did not rejoin).
    pub fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let delayed = self.initial_delay_until.is_some_and(|t| now < t);
        let expired = self.rebalance_deadline.is_some_and(|t| now >= t);
        if !(expired || (all_joined && !delayed)) {
            return;
        }
        if expired {
            self.members.retain(|_, m| m.join_waiter.is_some());
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let result = self.join_result(&id, is_leader, false);
            if let Some(member) = self.members.get_mut(&id) {
                member.last_heartbeat = now;
                if let Some(w) = member.join_waiter.take() {
                    let _ = w.send(result);
                }
            }
        }
    }

    fn join_result(
        &self,
        member_id: &str,
        with_members: bool,
        skip_assignment: bool,
    ) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.members
                    .values()
                    .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment,
        }
    }

    /// Handles a SyncGroup. Returns true when the leader's assignment completed the
    /// rebalance (the group's metadata should be stored).
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        reply: oneshot::Sender<SyncResult>,
    ) -> bool {
        if let Err(e) = self.check_member(member_id, instance_id) {
            let _ = reply.send((e.code(), Bytes::new()));
            return false;
        }
        if generation != self.generation {
            let _ = reply.send((ResponseError::IllegalGeneration.code(), Bytes::new()));
            return false;
        }
        match self.state {
            GroupState::PreparingRebalance => {
                let _ = reply.send((ResponseError::RebalanceInProgress.code(), Bytes::new()));
                false
            }
            GroupState::Stable => {
                let answer = match self.members.get(member_id) {
                    Some(m) => (0, m.assignment.clone()),
                    None => (ResponseError::UnknownMemberId.code(), Bytes::new()),
                };
                let _ = reply.send(answer);
                false
            }
            GroupState::CompletingRebalance => {
                let Some(member) = self.members.get_mut(member_id) else {
                    let _ = reply.send((ResponseError::UnknownMemberId.code(), Bytes::new()));
                    return false;
                };
                member.last_heartbeat = now;
                member.sync_waiter = Some(reply);
                if self.leader.as_deref() != Some(member_id) {
                    return false;
                }
                let mut assignments: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = assignments.remove(&m.id).unwrap_or_default();
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send((0, m.assignment.clone()));
                    }
                }
                self.state = GroupState::Stable;
                true
            }
            GroupState::Empty | GroupState::Dead => {
                let _ = reply.send((ResponseError::UnknownMemberId.code(), Bytes::new()));
                false
            }
        }
    }

    /// Handles a Heartbeat; returns its error code (0: carry on).
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Err(e) = self.check_member(member_id, instance_id) {
            return e.code();
        }
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        member.last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => ResponseError::RebalanceInProgress.code(),
            _ => 0,
        }
    }

    /// Removes members (LeaveGroup, session expiry) and rebalances the rest. Returns whether
    /// the group's stored metadata changed.
    pub fn remove_members(&mut self, ids: &[String], config: &GroupConfig, now: Instant) -> bool {
        let mut removed = false;
        for id in ids {
            if let Some(mut m) = self.members.remove(id) {
                removed = true;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId, id));
                }
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send((ResponseError::UnknownMemberId.code(), Bytes::new()));
                }
            }
        }
        if !removed {
            return false;
        }
        if self.members.is_empty() && self.state != GroupState::PreparingRebalance {
            self.generation += 1;
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
        } else if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(config, now);
        }
        self.maybe_complete_join(now);
        true
    }

    /// Drops members whose session ran out and completes due rebalances. Returns true when the
    /// group's stored metadata changed.
    pub fn tick(&mut self, config: &GroupConfig, now: Instant) -> bool {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && now >= m.last_heartbeat + m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        let changed = self.remove_members(&expired, config, now);
        let before = self.generation;
        self.maybe_complete_join(now);
        changed || self.generation != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: GroupConfig = GroupConfig {
        min_session_timeout: Duration::from_secs(1),
        max_session_timeout: Duration::from_secs(100),
        initial_rebalance_delay: Duration::from_secs(3),
        consumer_session_timeout: Duration::from_secs(45),
        consumer_heartbeat_interval: Duration::from_secs(5),
    };

    fn join(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> Join {
        Join {
            member_id: member_id.into(),
            instance_id: instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            require_known_member_id: true,
        }
    }

    /// Sends a join and returns the receiver for its answer.
    fn send_join(g: &mut Group, j: Join, now: Instant) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        g.join(j, &CONFIG, now, tx);
        rx
    }

    fn answered<T>(rx: &mut oneshot::Receiver<T>) -> Option<T> {
        rx.try_recv().expect("sender alive or answered")
    }

    /// Joins a new member through the MEMBER_ID_REQUIRED round trip; returns its id and the
    /// pending answer to its second join.
    fn new_member(
        g: &mut Group,
        now: Instant,
        protocols: &[&str],
    ) -> (String, oneshot::Receiver<JoinResult>) {
        let mut first = send_join(g, join("", None, protocols), now);
        let r = answered(&mut first).expect("answered at once");
        assert_eq!(r.error, ResponseError::MemberIdRequired.code());
        let rx = send_join(g, join(&r.member_id, None, protocols), now);
        (r.member_id, rx)
    }

    #[test]
    fn first_rebalance_waits_for_the_initial_delay_then_elects_a_leader() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (a, mut ra) = new_member(&mut g, t0, &["range", "roundrobin"]);
        let (b, mut rb) = new_member(
            &mut g,
            t0 + Duration::from_secs(1),
            &["roundrobin", "range"],
        );
        assert_eq!(g.state, GroupState::PreparingRebalance);
        g.tick(&CONFIG, t0 + Duration::from_secs(2));
        assert!(
            answered(&mut ra).is_none(),
            "still inside the initial delay"
        );
        g.tick(&CONFIG, t0 + Duration::from_secs(3));
        let (ja, jb) = (answered(&mut ra).unwrap(), answered(&mut rb).unwrap());
        assert_eq!((ja.error, jb.error), (0, 0));
        assert_eq!(ja.generation, 1);
        assert_eq!(ja.leader, jb.leader);
        let (leader, follower) = if ja.leader == a { (ja, jb) } else { (jb, ja) };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        assert!(["range", "roundrobin"].contains(&leader.protocol.as_deref().unwrap()));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        // Followers wait in SyncGroup until the leader sends the assignment.
        let follower_id = if leader.member_id == a {
            b.clone()
        } else {
            a.clone()
        };
        let (ftx, mut frx) = oneshot::channel();
        assert!(!g.sync(&follower_id, None, 1, vec![], t0, ftx));
        assert!(answered(&mut frx).is_none());
        let (ltx, mut lrx) = oneshot::channel();
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        assert!(g.sync(&leader.member_id, None, 1, assignments, t0, ltx));
        assert_eq!(g.state, GroupState::Stable);
        let mine = |id: &str| {
            if id == a {
                Bytes::from_static(b"A")
            } else {
                Bytes::from_static(b"B")
            }
        };
        assert_eq!(answered(&mut frx).unwrap(), (0, mine(&follower_id)));
        assert_eq!(answered(&mut lrx).unwrap(), (0, mine(&leader.member_id)));
    }

    #[test]
    fn the_leader_rejoining_a_stable_group_starts_a_rebalance_and_a_follower_does_not() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (a, mut ra) = new_member(&mut g, t0, &["range"]);
        let (b, mut rb) = new_member(&mut g, t0, &["range"]);
        g.tick(&CONFIG, t0 + Duration::from_secs(3));
        let (ja, _) = (answered(&mut ra).unwrap(), answered(&mut rb).unwrap());
        let (leader, follower) = if ja.leader == a { (a, b) } else { (b, a) };
        let (tx, _rx) = oneshot::channel();
        assert!(g.sync(&leader, None, 1, vec![], t0, tx));
        assert_eq!(g.state, GroupState::Stable);
        // A follower that missed its answer gets the current generation back at once.
        let mut again = send_join(&mut g, join(&follower, None, &["range"]), t0);
        let r = answered(&mut again).expect("answered at once");
        assert_eq!((r.error, r.generation), (0, 1));
        assert_eq!(g.state, GroupState::Stable);
        // The leader rejoining (its metadata saw a topic grow) opens a new generation.
        let mut led = send_join(&mut g, join(&leader, None, &["range"]), t0);
        assert!(answered(&mut led).is_none(), "waits for the other member");
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&follower, None, 1, t0),
            ResponseError::RebalanceInProgress.code()
        );
        let mut f = send_join(&mut g, join(&follower, None, &["range"]), t0);
        let (rl, rf) = (answered(&mut led).unwrap(), answered(&mut f).unwrap());
        assert_eq!((rl.error, rl.generation, rf.generation), (0, 2, 2));
    }

    #[test]
    fn heartbeats_report_errors_and_sessions_expire() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (a, _ra) = new_member(&mut g, t0, &["range"]);
        let (b, _rb) = new_member(&mut g, t0, &["range"]);
        g.tick(&CONFIG, t0 + Duration::from_secs(3));
        let (tx, _rx) = oneshot::channel();
        let leader = g.leader.clone().unwrap();
        g.sync(&leader, None, 1, vec![], t0, tx);
        assert_eq!(
            g.heartbeat("nobody", None, 1, t0),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            g.heartbeat(&a, None, 0, t0),
            ResponseError::IllegalGeneration.code()
        );
        let t1 = t0 + Duration::from_secs(8);
        assert_eq!(g.heartbeat(&a, None, 1, t1), 0);
        // b never heartbeats: its 10 s session runs out and a must rejoin.
        assert!(g.tick(&CONFIG, t0 + Duration::from_secs(14)));
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&a, None, 1, t1),
            ResponseError::RebalanceInProgress.code()
        );
        let mut again = send_join(&mut g, join(&a, None, &["range"]), t1);
        let r = answered(&mut again).expect("the only member rejoined: no initial delay");
        assert_eq!(
            (r.error, r.generation, r.leader.as_str()),
            (0, 2, a.as_str())
        );
    }

    #[test]
    fn leaving_members_trigger_a_rebalance_and_an_empty_group() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (a, _ra) = new_member(&mut g, t0, &["range"]);
        g.tick(&CONFIG, t0 + Duration::from_secs(3));
        assert!(g.remove_members(std::slice::from_ref(&a), &CONFIG, t0));
        assert_eq!(g.state, GroupState::Empty);
        assert!(!g.remove_members(&[a], &CONFIG, t0));
    }

    #[test]
    fn inconsistent_protocols_and_bad_session_timeouts_are_refused() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (_a, _ra) = new_member(&mut g, t0, &["range"]);
        let mut r = send_join(&mut g, join("", None, &["sticky"]), t0);
        let r = answered(&mut r).unwrap();
        assert_eq!(r.error, ResponseError::InconsistentGroupProtocol.code());
        let mut bad = join("", None, &["range"]);
        bad.session_timeout = Duration::from_millis(10);
        let mut r = send_join(&mut g, bad, t0);
        assert_eq!(
            answered(&mut r).unwrap().error,
            ResponseError::InvalidSessionTimeout.code()
        );
    }

    #[test]
    fn static_member_rejoins_without_rebalance_and_fences_its_old_id() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let mut ra = send_join(&mut g, join("", Some("i-a"), &["range"]), t0);
        let mut rb = send_join(&mut g, join("", Some("i-b"), &["range"]), t0);
        g.tick(&CONFIG, t0 + Duration::from_secs(3));
        let (ja, jb) = (answered(&mut ra).unwrap(), answered(&mut rb).unwrap());
        let leader = ja.leader.clone();
        let (tx, _rx) = oneshot::channel();
        let assignments = vec![
            (ja.member_id.clone(), Bytes::from_static(b"A")),
            (jb.member_id.clone(), Bytes::from_static(b"B")),
        ];
        g.sync(&leader, None, 1, assignments, t0, tx);
        assert_eq!(g.state, GroupState::Stable);
        // b restarts: same instance id, no member id.
        let mut rb2 = send_join(&mut g, join("", Some("i-b"), &["range"]), t0);
        let jb2 = answered(&mut rb2).expect("answered at once, no rebalance");
        assert_eq!((jb2.error, jb2.generation), (0, 1));
        assert_ne!(jb2.member_id, jb.member_id);
        assert_eq!(g.state, GroupState::Stable);
        let (tx, mut rx) = oneshot::channel();
        g.sync(&jb2.member_id, Some("i-b"), 1, vec![], t0, tx);
        assert_eq!(answered(&mut rx).unwrap(), (0, Bytes::from_static(b"B")));
        assert_eq!(
            g.heartbeat(&jb.member_id, Some("i-b"), 1, t0),
            ResponseError::FencedInstanceId.code()
        );
    }

    mod interleavings {
        //! Random interleavings of classic-group requests (joins with and without member ids,
        //! static members, syncs, heartbeats, leaves, stale generations, session expiry): the
        //! coordinator must never panic, and every answer it gives is one Kafka defines.
        use super::*;
        use proptest::prelude::*;

        const SLOTS: usize = 4;

        #[derive(Debug, Clone)]
        enum Op {
            Join {
                slot: usize,
                instance: bool,
                protocol: bool,
            },
            Sync {
                slot: usize,
                skew: i32,
                assign: bool,
            },
            Beat {
                slot: usize,
                skew: i32,
            },
            Leave {
                slot: usize,
            },
            Tick {
                secs: u64,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..SLOTS, any::<bool>(), any::<bool>()).prop_map(|(slot, instance, protocol)| {
                    Op::Join {
                        slot,
                        instance,
                        protocol,
                    }
                }),
                (0..SLOTS, -1i32..2, any::<bool>()).prop_map(|(slot, skew, assign)| Op::Sync {
                    slot,
                    skew,
                    assign
                }),
                (0..SLOTS, -1i32..2).prop_map(|(slot, skew)| Op::Beat { slot, skew }),
                (0..SLOTS).prop_map(|slot| Op::Leave { slot }),
                (0u64..15).prop_map(|secs| Op::Tick { secs }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn never_panics(ops in proptest::collection::vec(op(), 1..100)) {
                let mut g = Group::new("g");
                let start = Instant::now();
                let mut now = start;
                // What each client slot knows: member id, generation, instance id.
                let mut clients: Vec<(String, i32, Option<String>)> =
                    (0..SLOTS).map(|_| (String::new(), -1, None)).collect();
                let mut waiting: Vec<(usize, oneshot::Receiver<JoinResult>)> = Vec::new();
                let mut issued = std::collections::BTreeSet::new();
                for op in ops {
                    match op {
                        Op::Join { slot, instance, protocol } => {
                            let instance = instance.then(|| format!("i{slot}"));
                            clients[slot].2 = instance.clone();
                            let p = if protocol { "range" } else { "roundrobin" };
                            let rx = send_join(
                                &mut g,
                                join(&clients[slot].0, instance.as_deref(), &[p]),
                                now,
                            );
                            waiting.push((slot, rx));
                        }
                        Op::Sync { slot, skew, assign } => {
                            let (id, generation, instance) = clients[slot].clone();
                            let assignments = if assign {
                                clients.iter().map(|c| (c.0.clone(), Bytes::from_static(b"x"))).collect()
                            } else {
                                vec![]
                            };
                            let (tx, _rx) = oneshot::channel();
                            g.sync(&id, instance.as_deref(), generation + skew, assignments, now, tx);
                        }
                        Op::Beat { slot, skew } => {
                            let (id, generation, instance) = clients[slot].clone();
                            g.heartbeat(&id, instance.as_deref(), generation + skew, now);
                        }
                        Op::Leave { slot } => {
                            let id = clients[slot].0.clone();
                            g.remove_members(&[id], &CONFIG, now);
                            clients[slot] = (String::new(), -1, None);
                        }
                        Op::Tick { secs } => {
                            now += Duration::from_secs(secs);
                            g.tick(&CONFIG, now);
                        }
                    }
                    // Joins answered meanwhile tell their clients who they are.
                    waiting.retain_mut(|(slot, rx)| match rx.try_recv() {
                        Ok(Some(r)) => {
                            if !r.member_id.is_empty() {
                                issued.insert(r.member_id.clone());
                                clients[*slot].0 = r.member_id.clone();
                            }
                            if r.error == 0 {
                                clients[*slot].1 = r.generation;
                            }
                            false
                        }
                        Ok(None) => true,
                        Err(_) => false,
                    });
                    // A client may leave a member behind (a static instance it stopped
                    // naming, a dynamic id it lost): that member lives on until its session
                    // or the rebalance expires it. But an instance id is held by one member
                    // at most, and a dynamic member is one some client was told of.
                    let mut instances: Vec<&str> =
                        g.members.values().filter_map(|m| m.instance_id.as_deref()).collect();
                    let statics = instances.len();
                    instances.sort_unstable();
                    instances.dedup();
                    prop_assert_eq!(instances.len(), statics, "an instance id held twice");
                    for m in g.members.values().filter(|m| m.instance_id.is_none()) {
                        prop_assert!(issued.contains(&m.id), "member {} nobody knows", m.id);
                    }
                }
                // With the clients gone silent, sessions and rebalances run out: nothing stays.
                for _ in 0..4 {
                    now += Duration::from_secs(200);
                    g.tick(&CONFIG, now);
                }
                prop_assert!(g.members.is_empty(), "members outlived their sessions");
            }
        }
    }
}
