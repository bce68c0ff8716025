//! The KIP-848 consumer group protocol (`group.protocol=consumer`): members heartbeat, the
//! coordinator computes the target assignment with a server-side assignor (`uniform` or
//! `range`) and reconciles each member towards it. A partition is given to a member only once
//! no other member owns it, so no partition is ever owned by two members at once.
//! State machine only: no I/O, callers pass `now`.

use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::records::{ConsumerRecord, IdAssignment, StoredConsumerMember, StoredMemberAssignment};

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// The epoch of a static member that left for now and may come back (KIP-848).
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// A topic regex subscription (KIP-848): RE2 syntax, matched against whole topic names,
/// resolved by the coordinator against the topics that exist (internal ones excepted). As in
/// Kafka, a new regex is resolved after the heartbeat that brought it (by the coordinator's
/// next tick), so that heartbeat is answered with the topics named literally and the matching
/// ones follow with a new group epoch.
#[derive(Debug, Clone)]
pub struct TopicRegex {
    pub source: String,
    matcher: regex::Regex,
    /// Not resolved yet: it matches nothing.
    pending: bool,
}

impl TopicRegex {
    pub fn new(source: &str) -> Result<TopicRegex, regex::Error> {
        let matcher = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()?;
        Ok(TopicRegex {
            source: source.to_string(),
            matcher,
            pending: true,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        !self.pending && self.matcher.is_match(topic)
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    /// Topics subscribed by name, and by regex.
    pub subscribed: Vec<String>,
    pub regex: Option<TopicRegex>,
    /// What the member owns: what it was last given, minus what it reported released.
    pub owned: Assignment,
    pub session_timeout: Duration,
    pub last_heartbeat: Instant,
}

impl Member {
    /// Whether the member subscribes to `topic`, by name or regex.
    pub fn subscribes(&self, topic: &str) -> bool {
        self.subscribed.iter().any(|t| t == topic)
            || self.regex.as_ref().is_some_and(|r| r.matches(topic))
    }
}

/// A ConsumerGroupHeartbeat as the coordinator sees it.
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub subscribed: Option<Vec<String>>,
    /// None: unchanged; an empty string: no regex any more.
    pub regex: Option<String>,
    pub assignor: Option<String>,
    /// Partitions the member says it owns (None: unchanged).
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatResult {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    /// The member's new assignment, or None when it has not changed.
    pub assignment: Option<Assignment>,
}

impl HeartbeatResult {
    fn unknown_member(member_id: &str) -> HeartbeatResult {
        HeartbeatResult::error(ResponseError::UnknownMemberId, member_id, "unknown member")
    }

    fn error(e: ResponseError, member_id: &str, message: &str) -> HeartbeatResult {
        HeartbeatResult {
            error: e.code(),
            message: Some(message.to_string()),
            member_id: member_id.to_string(),
            member_epoch: -1,
            assignment: None,
        }
    }
}

/// One consumer-protocol group. Exists on the group's coordinator shard.
#[derive(Debug)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<String, Assignment>,
    /// Topic -> partition count the target was computed with.
    topics_seen: BTreeMap<String, i32>,
    /// The group's records as last written to `__consumer_offsets`, by key: what
    /// [`ConsumerGroup::changes`] compares with.
    stored: BTreeMap<(i16, String), ConsumerRecord>,
}

fn total(a: &Assignment) -> usize {
    a.values().map(|p| p.len()).sum()
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    a.iter()
        .map(|(t, ps)| {
            (
                t.clone(),
                ps.iter()
                    .filter(|p| !b.get(t).is_some_and(|q| q.contains(p)))
                    .copied()
                    .collect::<BTreeSet<i32>>(),
            )
        })
        .filter(|(_, ps)| !ps.is_empty())
        .collect()
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    a.iter()
        .map(|(t, ps)| {
            (
                t.clone(),
                ps.iter()
                    .filter(|p| b.get(t).is_some_and(|q| q.contains(p)))
                    .copied()
                    .collect::<BTreeSet<i32>>(),
            )
        })
        .filter(|(_, ps)| !ps.is_empty())
        .collect()
}

impl Default for ConsumerGroup {
    fn default() -> ConsumerGroup {
        ConsumerGroup {
            group_epoch: 0,
            assignment_epoch: 0,
            assignor: ASSIGNORS[0].to_string(),
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            topics_seen: BTreeMap::new(),
            stored: BTreeMap::new(),
        }
    }
}

fn to_ids(a: &Assignment, topic_id: &dyn Fn(&str) -> Option<Uuid>) -> IdAssignment {
    a.iter()
        .filter_map(|(t, ps)| Some((topic_id(t)?, ps.iter().copied().collect())))
        .collect()
}

fn to_names(a: &IdAssignment, topic_name: &dyn Fn(Uuid) -> Option<String>) -> Assignment {
    a.iter()
        .filter_map(|(id, ps)| Some((topic_name(*id)?, ps.iter().copied().collect())))
        .collect()
}

impl ConsumerGroup {
    /// Kafka's state names for consumer groups.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch && m.epoch != STATIC_LEAVE_EPOCH)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Handles a heartbeat. `topics` gives the partition count of every existing topic.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &BTreeMap<String, i32>,
        session_timeout: Duration,
        now: Instant,
    ) -> HeartbeatResult {
        if let Some(a) = &hb.assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return HeartbeatResult::error(
                    ResponseError::UnsupportedAssignor,
                    &hb.member_id,
                    "assignors: uniform, range",
                );
            }
        }
        let regex = match hb.regex.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(source) => match TopicRegex::new(source) {
                Ok(r) => Some(Some(r)),
                Err(e) => {
                    return HeartbeatResult::error(
                        ResponseError::InvalidRegularExpression,
                        &hb.member_id,
                        &format!("subscribed topic regex: {e}"),
                    )
                }
            },
        };
        if hb.member_epoch < 0 {
            // -1: leaving. -2: a static member leaving for now (a restart): it keeps its
            // registration and partitions until its session runs out, so its next incarnation
            // takes them over without a rebalance (KIP-848); without an instance id it leaves.
            let for_now = hb.member_epoch == STATIC_LEAVE_EPOCH && hb.instance_id.is_some();
            let id = match &hb.instance_id {
                Some(instance) => self
                    .members
                    .values()
                    .find(|m| m.instance_id.as_deref() == Some(instance.as_str()))
                    .map(|m| m.id.clone()),
                None => Some(hb.member_id.clone()),
            };
            if let Some(id) = id {
                if for_now {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.epoch = STATIC_LEAVE_EPOCH;
                    }
                } else if self.members.remove(&id).is_some() {
                    self.bump(topics);
                }
            }
            return HeartbeatResult {
                error: 0,
                message: None,
                member_id: hb.member_id,
                member_epoch: hb.member_epoch,
                assignment: None,
            };
        }
        let mut changed = false;
        let member_id = if hb.member_epoch == 0 {
            if hb.subscribed.is_none() && regex.is_none() {
                return HeartbeatResult::error(
                    ResponseError::InvalidRequest,
                    &hb.member_id,
                    "a joining member must give its subscription",
                );
            }
            let subscribed = hb.subscribed.clone().unwrap_or_default();
            let id = if hb.member_id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                hb.member_id.clone()
            };
            // A static member coming back replaces its previous incarnation once that one has
            // left for now (epoch -2); while it is active, the newcomer is refused (KIP-848).
            let holder = hb.instance_id.as_ref().and_then(|i| {
                self.members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(i))
            });
            if let Some(h) = holder {
                if h.epoch != STATIC_LEAVE_EPOCH && h.id != id {
                    return HeartbeatResult::error(
                        ResponseError::UnreleasedInstanceId,
                        &hb.member_id,
                        "this group.instance.id is held by an active member",
                    );
                }
            }
            let previous = holder.map(|m| m.id.clone());
            let owned = match previous.and_then(|p| self.members.remove(&p)) {
                Some(old) => {
                    if let Some(t) = self.target.remove(&old.id) {
                        self.target.insert(id.clone(), t);
                    }
                    old.owned
                }
                None => {
                    changed = true;
                    Assignment::new()
                }
            };
            self.members.insert(
                id.clone(),
                Member {
                    id: id.clone(),
                    instance_id: hb.instance_id.clone(),
                    rack_id: hb.rack_id.clone(),
                    client_id: hb.client_id.clone(),
                    client_host: hb.client_host.clone(),
                    epoch: 0,
                    subscribed,
                    regex: regex.clone().flatten(),
                    owned,
                    session_timeout,
                    last_heartbeat: now,
                },
            );
            id
        } else {
            let Some(member) = self.members.get_mut(&hb.member_id) else {
                return HeartbeatResult::unknown_member(&hb.member_id);
            };
            if hb.member_epoch != member.epoch {
                return HeartbeatResult::error(
                    ResponseError::FencedMemberEpoch,
                    &hb.member_id,
                    "stale member epoch: rejoin",
                );
            }
            if let Some(subscribed) = &hb.subscribed {
                if *subscribed != member.subscribed {
                    member.subscribed = subscribed.clone();
                    changed = true;
                }
            }
            if let Some(regex) = regex {
                let source = |r: &Option<TopicRegex>| r.as_ref().map(|r| r.source.clone());
                if source(&regex) != source(&member.regex) {
                    member.regex = regex;
                    changed = true;
                }
            }
            hb.member_id.clone()
        };
        let Some(member) = self.members.get_mut(&member_id) else {
            // Inserted or looked up just above; answered as unknown rather than trusted.
            return HeartbeatResult::unknown_member(&member_id);
        };
        member.last_heartbeat = now;
        if let Some(owned) = hb.owned {
            // The member only ever releases partitions on its own; keep what it reports.
            member.owned = intersect(&member.owned, &owned);
        }
        if let Some(a) = hb.assignor {
            if a != self.assignor {
                self.assignor = a;
                changed = true;
            }
        }
        if changed || self.topics_changed(topics) {
            self.bump(topics);
        }
        self.reconcile(&member_id)
    }

    /// The existing topics some member subscribes to, with their partition counts.
    fn wanted_topics(&self, topics: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        let by_name: BTreeSet<&String> =
            self.members.values().flat_map(|m| &m.subscribed).collect();
        let regexes: Vec<&TopicRegex> = self
            .members
            .values()
            .filter_map(|m| m.regex.as_ref())
            .collect();
        topics
            .iter()
            .filter(|(t, _)| by_name.contains(t) || regexes.iter().any(|r| r.matches(t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }

    /// Whether a subscribed topic appeared, grew or went away since the target was computed.
    fn topics_changed(&self, topics: &BTreeMap<String, i32>) -> bool {
        self.wanted_topics(topics) != self.topics_seen
    }

    /// Moves the group to a new epoch and recomputes the target assignment.
    fn bump(&mut self, topics: &BTreeMap<String, i32>) {
        self.group_epoch += 1;
        self.topics_seen = self.wanted_topics(topics);
        self.target = if self.assignor == "range" {
            self.assign_range()
        } else {
            self.assign_uniform()
        };
        self.assignment_epoch = self.group_epoch;
    }

    /// An empty assignment for every member.
    fn empty_target(&self) -> BTreeMap<String, Assignment> {
        self.members
            .keys()
            .map(|m| (m.clone(), Assignment::new()))
            .collect()
    }

    /// Members subscribed to `topic`, in id order.
    fn subscribers(&self, topic: &str) -> Vec<&String> {
        self.members
            .values()
            .filter(|m| m.subscribes(topic))
            .map(|m| &m.id)
            .collect()
    }

    /// `range`: per topic, contiguous ranges of partitions to the subscribed members in order.
    fn assign_range(&self) -> BTreeMap<String, Assignment> {
        let mut target = self.empty_target();
        for (topic, &count) in &self.topics_seen {
            let members = self.subscribers(topic);
            if members.is_empty() {
                continue;
            }
            let (per, extra) = (
                count as usize / members.len(),
                count as usize % members.len(),
            );
            let mut next = 0;
            for (i, m) in members.iter().enumerate() {
                let n = per + usize::from(i < extra);
                let parts: BTreeSet<i32> = (next..next + n).map(|p| p as i32).collect();
                next += n;
                if !parts.is_empty() {
                    target
                        .get_mut(*m)
                        .expect("member")
                        .insert(topic.clone(), parts);
                }
            }
        }
        target
    }

    /// `uniform`: balanced by partition count, keeping partitions where they are when it can.
    fn assign_uniform(&self) -> BTreeMap<String, Assignment> {
        let mut target = self.empty_target();
        for (topic, &count) in &self.topics_seen {
            let members = self.subscribers(topic);
            if members.is_empty() {
                continue;
            }
            let quota = (count as usize).div_ceil(members.len());
            let mut unassigned = Vec::new();
            for p in 0..count {
                let keeper = members.iter().find(|m| {
                    self.target
                        .get(**m)
                        .and_then(|a| a.get(topic))
                        .is_some_and(|ps| ps.contains(&p))
                });
                match keeper {
                    Some(m) if target[*m].get(topic).map_or(0, |s| s.len()) < quota => {
                        target
                            .get_mut(*m)
                            .expect("member")
                            .entry(topic.clone())
                            .or_default()
                            .insert(p);
                    }
                    _ => unassigned.push(p),
                }
            }
            for p in unassigned {
                let m = members
                    .iter()
                    .min_by_key(|m| {
                        (
                            total(&target[**m]),
                            target[**m].get(topic).map_or(0, |s| s.len()),
                        )
                    })
                    .expect("members");
                target
                    .get_mut(*m)
                    .expect("member")
                    .entry(topic.clone())
                    .or_default()
                    .insert(p);
            }
        }
        target
    }

    /// Moves a member towards its target: first it must release what it should not own; then
    /// it gets the target partitions no other member still owns.
    fn reconcile(&mut self, member_id: &str) -> HeartbeatResult {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let Some(member) = self.members.get(member_id) else {
            return HeartbeatResult::unknown_member(member_id);
        };
        let owned = member.owned.clone();
        let revoke = minus(&owned, &target);
        let (assignment, epoch) = if !revoke.is_empty() {
            (intersect(&owned, &target), member.epoch)
        } else {
            let others: Assignment = self.members.values().filter(|m| m.id != member_id).fold(
                Assignment::new(),
                |mut acc, m| {
                    for (t, ps) in &m.owned {
                        acc.entry(t.clone()).or_default().extend(ps);
                    }
                    acc
                },
            );
            let free = minus(&target, &others);
            (free, self.assignment_epoch)
        };
        let Some(member) = self.members.get_mut(member_id) else {
            return HeartbeatResult::unknown_member(member_id);
        };
        let changed = assignment != member.owned || epoch != member.epoch;
        if revoke.is_empty() {
            member.owned = assignment.clone();
        }
        member.epoch = epoch;
        HeartbeatResult {
            error: 0,
            message: None,
            member_id: member_id.to_string(),
            member_epoch: epoch,
            assignment: changed.then_some(assignment),
        }
    }

    /// Drops members whose session ran out. Returns whether any did.
    /// Drops members whose session ran out and resolves new regex subscriptions. Returns
    /// whether the group changed.
    pub fn tick(&mut self, topics: &BTreeMap<String, i32>, now: Instant) -> bool {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now >= m.last_heartbeat + m.session_timeout)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        let mut resolved = false;
        for r in self.members.values_mut().filter_map(|m| m.regex.as_mut()) {
            resolved |= std::mem::replace(&mut r.pending, false);
        }
        let changed = !expired.is_empty() || resolved;
        if changed {
            self.bump(topics);
        }
        changed
    }

    /// The group as records (Kafka's KIP-848 formats), by key: its epoch, each member's
    /// registration, the target assignment and each member's current assignment. A group that
    /// never had a member has none.
    fn image(
        &self,
        topic_id: &dyn Fn(&str) -> Option<Uuid>,
    ) -> BTreeMap<(i16, String), ConsumerRecord> {
        let mut records = vec![
            ConsumerRecord::GroupEpoch(Some(self.group_epoch)),
            ConsumerRecord::TargetEpoch(Some(self.assignment_epoch)),
        ];
        if self.group_epoch == 0 && self.members.is_empty() {
            records.clear();
        }
        for m in self.members.values() {
            records.push(ConsumerRecord::Member(
                m.id.clone(),
                Some(StoredConsumerMember {
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed: m.subscribed.clone(),
                    regex: m.regex.as_ref().map(|r| r.source.clone()),
                    rebalance_timeout_ms: -1,
                    assignor: Some(self.assignor.clone()),
                }),
            ));
            let target = self.target.get(&m.id).cloned().unwrap_or_default();
            records.push(ConsumerRecord::Target(
                m.id.clone(),
                Some(to_ids(&target, topic_id)),
            ));
            let pending = minus(&m.owned, &target);
            let state = if !pending.is_empty() {
                1
            } else if m.epoch >= 0 && m.epoch < self.assignment_epoch {
                2
            } else {
                0
            };
            records.push(ConsumerRecord::Assignment(
                m.id.clone(),
                Some(StoredMemberAssignment {
                    epoch: m.epoch,
                    previous_epoch: m.epoch,
                    state,
                    assigned: to_ids(&intersect(&m.owned, &target), topic_id),
                    pending_revocation: to_ids(&pending, topic_id),
                }),
            ));
        }
        records.into_iter().map(|r| (r.key(), r)).collect()
    }

    /// The records to write so that `__consumer_offsets` holds the group as it is now: those
    /// that changed since the last call, and tombstones for members gone (members' records
    /// before their tombstones, as Kafka writes them). Counts them as written.
    pub fn changes(&mut self, topic_id: &dyn Fn(&str) -> Option<Uuid>) -> Vec<ConsumerRecord> {
        let image = self.image(topic_id);
        let mut out: Vec<ConsumerRecord> = image
            .iter()
            .filter(|(k, r)| self.stored.get(*k) != Some(*r))
            .map(|(_, r)| r.clone())
            .collect();
        out.extend(
            self.stored
                .iter()
                .rev()
                .filter(|(k, _)| !image.contains_key(*k))
                .map(|(_, r)| r.tombstone()),
        );
        self.stored = image;
        out
    }

    /// Records from [`ConsumerGroup::changes`] that could not be written: written again with
    /// the next changes. (A lost tombstone leaves a member that, read back, expires.)
    pub fn unstored(&mut self, records: &[ConsumerRecord]) {
        for r in records {
            self.stored.remove(&r.key());
        }
    }

    /// Tombstones for every record the group has in `__consumer_offsets` (DeleteGroups).
    pub fn tombstones(&self) -> Vec<ConsumerRecord> {
        self.stored.values().rev().map(|r| r.tombstone()).collect()
    }

    /// Reads one record back (a coordinator loading its partition). Members restored are
    /// given a new session from `now`.
    pub fn restore(
        &mut self,
        record: ConsumerRecord,
        topic_name: &dyn Fn(Uuid) -> Option<String>,
        session_timeout: Duration,
        now: Instant,
    ) {
        let key = record.key();
        match &record {
            ConsumerRecord::GroupEpoch(e) => self.group_epoch = e.unwrap_or(0),
            ConsumerRecord::TargetEpoch(e) => self.assignment_epoch = e.unwrap_or(0),
            ConsumerRecord::Member(id, None) => {
                self.members.remove(id);
                self.target.remove(id);
            }
            ConsumerRecord::Member(id, Some(m)) => {
                if let Some(a) = m
                    .assignor
                    .as_ref()
                    .filter(|a| ASSIGNORS.contains(&a.as_str()))
                {
                    self.assignor = a.clone();
                }
                let previous = self.members.remove(id);
                self.members.insert(
                    id.clone(),
                    Member {
                        id: id.clone(),
                        instance_id: m.instance_id.clone(),
                        rack_id: m.rack_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        epoch: previous.as_ref().map_or(0, |p| p.epoch),
                        subscribed: m.subscribed.clone(),
                        // Written by this coordinator, so it compiled and was resolved (if
                        // not, it is dropped).
                        regex: m.regex.as_deref().and_then(|r| {
                            let mut regex = TopicRegex::new(r).ok()?;
                            regex.pending = false;
                            Some(regex)
                        }),
                        owned: previous.map(|p| p.owned).unwrap_or_default(),
                        session_timeout,
                        last_heartbeat: now,
                    },
                );
            }
            ConsumerRecord::Target(id, a) => match a {
                Some(a) => {
                    self.target.insert(id.clone(), to_names(a, topic_name));
                }
                None => {
                    self.target.remove(id);
                }
            },
            ConsumerRecord::Assignment(id, a) => {
                if let (Some(m), Some(a)) = (self.members.get_mut(id), a) {
                    m.epoch = a.epoch;
                    m.owned = to_names(&a.assigned, topic_name);
                    for (t, ps) in to_names(&a.pending_revocation, topic_name) {
                        m.owned.entry(t).or_default().extend(ps);
                    }
                }
            }
        }
        if record.is_tombstone() {
            self.stored.remove(&key);
        } else {
            self.stored.insert(key, record);
        }
    }

    /// Read back as deleted: nothing stored and no member.
    pub fn is_deleted(&self) -> bool {
        self.stored.is_empty() && self.members.is_empty()
    }

    /// After loading: the target stands as computed for the topics as they are now.
    pub fn restored(&mut self, topics: &BTreeMap<String, i32>) {
        self.topics_seen = self.wanted_topics(topics);
    }

    /// Whether `member_id` at `epoch` may commit offsets.
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), ResponseError> {
        match self.members.get(member_id) {
            None => Err(ResponseError::UnknownMemberId),
            Some(m) if epoch > m.epoch || epoch < 0 => Err(ResponseError::StaleMemberEpoch),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, epoch: i32, topics: Option<&[&str]>, owned: Option<Assignment>) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            instance_id: None,
            rack_id: None,
            subscribed: topics.map(|t| t.iter().map(|s| s.to_string()).collect()),
            regex: None,
            assignor: None,
            owned,
            client_id: "c".into(),
            client_host: "/h".into(),
        }
    }

    fn parts(a: &Assignment) -> usize {
        total(a)
    }

    #[test]
    fn members_never_share_a_partition_while_rebalancing() {
        let topics: BTreeMap<String, i32> = [("t".to_string(), 6)].into();
        let now = Instant::now();
        let s = Duration::from_secs(45);
        let mut g = ConsumerGroup::default();
        let a = g.heartbeat(hb("", 0, Some(&["t"]), None), &topics, s, now);
        assert_eq!(a.error, 0);
        assert_eq!(parts(a.assignment.as_ref().unwrap()), 6);
        let a_id = a.member_id.clone();
        // b joins: a must first give up three partitions before b gets them.
        let b = g.heartbeat(hb("", 0, Some(&["t"]), None), &topics, s, now);
        let b_id = b.member_id.clone();
        assert_eq!(
            b.assignment.as_ref().map_or(0, parts),
            0,
            "nothing is free yet"
        );
        let a2 = g.heartbeat(hb(&a_id, a.member_epoch, None, None), &topics, s, now);
        let kept = a2.assignment.clone().expect("a is told to shrink");
        assert_eq!(parts(&kept), 3);
        assert_eq!(
            a2.member_epoch, a.member_epoch,
            "epoch moves only after revocation"
        );
        // a confirms it released them; now it moves to the new epoch and b gets the rest.
        let a3 = g.heartbeat(
            hb(&a_id, a2.member_epoch, None, Some(kept.clone())),
            &topics,
            s,
            now,
        );
        assert_eq!(a3.member_epoch, g.assignment_epoch);
        let b2 = g.heartbeat(hb(&b_id, b.member_epoch, None, None), &topics, s, now);
        let got = b2.assignment.expect("b gets the freed partitions");
        assert_eq!(parts(&got), 3);
        assert!(intersect(&got, &kept).is_empty());
        assert_eq!(g.state(), "Stable");
        // A stale epoch is fenced; a leave hands a's partitions to b.
        assert_eq!(
            g.heartbeat(hb(&a_id, 1000, None, None), &topics, s, now)
                .error,
            ResponseError::FencedMemberEpoch.code()
        );
        g.heartbeat(hb(&a_id, -1, None, None), &topics, s, now);
        let b3 = g.heartbeat(hb(&b_id, b2.member_epoch, None, None), &topics, s, now);
        assert_eq!(parts(&b3.assignment.unwrap()), 6);
    }

    #[test]
    fn regex_subscriptions_match_whole_names_and_follow_new_topics() {
        let mut topics: BTreeMap<String, i32> =
            [("orders-eu".to_string(), 2), ("orders".to_string(), 3)].into();
        let (s, now) = (Duration::from_secs(45), Instant::now());
        let mut g = ConsumerGroup::default();
        let mut join = hb("", 0, None, None);
        join.regex = Some("orders-.*".into());
        let a0 = g.heartbeat(join, &topics, s, now);
        assert_eq!(a0.error, 0);
        assert_eq!(
            a0.assignment.map(|a| parts(&a)),
            Some(0),
            "resolved after the heartbeat"
        );
        assert!(g.tick(&topics, now), "the coordinator resolves it");
        let a = g.heartbeat(
            hb(&a0.member_id, a0.member_epoch, None, None),
            &topics,
            s,
            now,
        );
        let got = a.assignment.unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["orders-eu"],
            "whole names only"
        );
        assert_eq!(parts(&got), 2);
        // A matching topic appears: the next heartbeat brings its partitions.
        topics.insert("orders-us".into(), 4);
        let a2 = g.heartbeat(
            hb(&a.member_id, a.member_epoch, None, None),
            &topics,
            s,
            now,
        );
        assert!(a2.member_epoch > a.member_epoch);
        assert_eq!(parts(&a2.assignment.unwrap()), 6);
        // An empty regex drops it; a bad one is refused.
        let mut clear = hb(&a.member_id, a2.member_epoch, None, None);
        clear.regex = Some(String::new());
        let a3 = g.heartbeat(clear, &topics, s, now);
        assert_eq!(a3.assignment.map(|a| parts(&a)), Some(0));
        let mut bad = hb("", 0, None, None);
        bad.regex = Some("orders-(".into());
        assert_eq!(
            g.heartbeat(bad, &topics, s, now).error,
            ResponseError::InvalidRegularExpression.code()
        );
    }

    #[test]
    fn records_bring_a_group_back_as_it_was() {
        let topics: BTreeMap<String, i32> = [("t".to_string(), 6), ("u".to_string(), 2)].into();
        let ids: BTreeMap<String, Uuid> =
            topics.keys().map(|t| (t.clone(), Uuid::new_v4())).collect();
        let id_of = |t: &str| ids.get(t).copied();
        let name_of = |id: Uuid| ids.iter().find(|(_, i)| **i == id).map(|(t, _)| t.clone());
        let (s, now) = (Duration::from_secs(45), Instant::now());
        let mut g = ConsumerGroup::default();
        let mut log: Vec<ConsumerRecord> = Vec::new();
        let a = g.heartbeat(hb("", 0, Some(&["t"]), None), &topics, s, now);
        log.extend(g.changes(&id_of));
        let mut join = hb("", 0, Some(&[]), None);
        join.regex = Some("u|t".into());
        let b = g.heartbeat(join, &topics, s, now);
        log.extend(g.changes(&id_of));
        // a is told to give up partitions: mid-reconciliation, with partitions pending.
        g.heartbeat(
            hb(&a.member_id, a.member_epoch, None, None),
            &topics,
            s,
            now,
        );
        log.extend(g.changes(&id_of));
        assert!(g.changes(&id_of).is_empty(), "nothing changed since");

        let mut back = ConsumerGroup::default();
        for r in log.clone() {
            back.restore(r, &name_of, s, now);
        }
        back.restored(&topics);
        assert_eq!(
            (
                back.group_epoch,
                back.assignment_epoch,
                &back.target,
                &back.assignor
            ),
            (g.group_epoch, g.assignment_epoch, &g.target, &g.assignor)
        );
        let view = |g: &ConsumerGroup| -> Vec<String> {
            g.members
                .values()
                .map(|m| {
                    let regex = m.regex.as_ref().map(|r| r.source.clone());
                    format!(
                        "{} {} {:?} {:?} {regex:?}",
                        m.id, m.epoch, m.owned, m.subscribed
                    )
                })
                .collect()
        };
        assert_eq!(view(&back), view(&g));
        assert!(back.changes(&id_of).is_empty(), "read back as written");
        // b carries on with the coordinator that read the group back: no rejoin.
        let b2 = back.heartbeat(
            hb(&b.member_id, b.member_epoch, None, None),
            &topics,
            s,
            now,
        );
        assert_eq!(b2.error, 0);
        // a leaves: its records are tombstoned, current assignment first.
        back.heartbeat(hb(&a.member_id, -1, None, None), &topics, s, now);
        let left = back.changes(&id_of);
        log.extend(left.clone());
        let gone: Vec<(i16, bool)> = left
            .iter()
            .filter(|r| r.member() == Some(a.member_id.as_str()))
            .map(|r| (r.key().0, r.is_tombstone()))
            .collect();
        assert_eq!(gone, [(8, true), (7, true), (5, true)]);
        // Deleted: everything tombstoned, and a group read back from that is gone.
        back.heartbeat(hb(&b.member_id, -1, None, None), &topics, s, now);
        log.extend(back.changes(&id_of));
        log.extend(back.tombstones());
        let mut again = ConsumerGroup::default();
        for r in log {
            again.restore(r, &name_of, s, now);
        }
        assert!(again.is_deleted());
    }

    #[test]
    fn range_assignor_and_session_expiry() {
        let topics: BTreeMap<String, i32> = [("t".to_string(), 5)].into();
        let now = Instant::now();
        let s = Duration::from_secs(10);
        let mut g = ConsumerGroup::default();
        let mut first = hb("", 0, Some(&["t"]), None);
        first.assignor = Some("range".into());
        let a = g.heartbeat(first, &topics, s, now);
        let b = g.heartbeat(hb("", 0, Some(&["t"]), None), &topics, s, now);
        assert_eq!(g.assignor, "range");
        let mut sizes: Vec<usize> = g.target.values().map(parts).collect();
        sizes.sort();
        assert_eq!(sizes, vec![2, 3]);
        // Ranges are contiguous: the first member in id order has 0..3.
        let first_id = g.members.keys().next().unwrap().clone();
        assert_eq!(g.target[&first_id]["t"], (0..3).collect::<BTreeSet<i32>>());
        let _ = (a, b);
        assert!(g.tick(&topics, now + Duration::from_secs(11)));
        assert!(g.members.is_empty());
        assert_eq!(g.state(), "Empty");
        let mut bad = hb("", 0, Some(&["t"]), None);
        bad.assignor = Some("sticky".into());
        assert_eq!(
            g.heartbeat(bad, &topics, s, now).error,
            ResponseError::UnsupportedAssignor.code()
        );
    }

    #[test]
    fn a_static_instance_id_is_held_until_its_member_leaves_for_now() {
        let topics: BTreeMap<String, i32> = [("t".to_string(), 4)].into();
        let s = Duration::from_secs(30);
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let join = |g: &mut ConsumerGroup, id: &str| {
            let mut h = hb(id, 0, Some(&["t"]), None);
            h.instance_id = Some("i".into());
            g.heartbeat(h, &topics, s, now)
        };
        let a = join(&mut g, "a");
        assert_eq!((a.error, a.assignment.as_ref().map(parts)), (0, Some(4)));
        // Another member with the same instance id is refused while a is active.
        let b = join(&mut g, "b");
        assert_eq!(b.error, ResponseError::UnreleasedInstanceId.code());
        assert!(g.members.contains_key("a"));
        // a leaves for now (-2): it keeps its partitions, and b takes them over at once.
        let mut leave = hb("a", STATIC_LEAVE_EPOCH, None, None);
        leave.instance_id = Some("i".into());
        assert_eq!(g.heartbeat(leave, &topics, s, now).error, 0);
        assert_eq!(g.state(), "Stable");
        let epoch = g.group_epoch;
        let b = join(&mut g, "b");
        assert_eq!(b.error, 0);
        assert_eq!(b.assignment.as_ref().map(parts), Some(4));
        assert!(!g.members.contains_key("a"));
        assert_eq!(
            g.group_epoch, epoch,
            "no rebalance for a static member's restart"
        );
    }

    mod interleavings {
        //! Random interleavings of consumer-group requests from many members: the coordinator
        //! must never panic and never let two members own the same partition.
        use super::*;
        use proptest::prelude::*;

        const MEMBERS: usize = 5;
        const TOPICS: [&str; 2] = ["a", "b"];

        #[derive(Debug, Clone)]
        enum Op {
            /// A member joins (epoch 0), maybe as a static member, subscribing to a subset.
            Join {
                slot: usize,
                instance: bool,
                topics: u8,
            },
            /// A heartbeat with the epoch it knows shifted by `skew` and a claimed ownership.
            Beat {
                slot: usize,
                skew: i32,
                claim: Option<Vec<(usize, i32)>>,
                topics: Option<u8>,
            },
            /// A leave (-1) or a static leave (-2).
            Leave { slot: usize, epoch: i32 },
            /// Time passes (sessions may expire).
            Tick { secs: u64 },
            /// A topic grows.
            Grow { topic: usize, by: i32 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                1 => (0..MEMBERS, any::<bool>(), 0u8..8).prop_map(|(slot, instance, topics)| Op::Join {
                    slot,
                    instance,
                    topics
                }),
                4 => (
                    0..MEMBERS,
                    prop_oneof![Just(0), Just(0), Just(0), -2i32..3],
                    proptest::option::of(proptest::collection::vec((0..2usize, 0..8i32), 0..6)),
                    proptest::option::weighted(0.1, 0u8..4),
                )
                    .prop_map(|(slot, skew, claim, topics)| Op::Beat { slot, skew, claim, topics }),
                1 => (0..MEMBERS, -2i32..0).prop_map(|(slot, epoch)| Op::Leave { slot, epoch }),
                1 => (0u64..20).prop_map(|secs| Op::Tick { secs }),
                1 => (0..2usize, 1i32..3).prop_map(|(topic, by)| Op::Grow { topic, by }),
            ]
        }

        fn subscription(mask: u8) -> Vec<String> {
            TOPICS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| t.to_string())
                .collect()
        }

        fn no_partition_owned_twice(g: &ConsumerGroup) -> Result<(), String> {
            let mut seen: BTreeMap<(String, i32), String> = BTreeMap::new();
            for m in g.members.values() {
                for (t, ps) in &m.owned {
                    for p in ps {
                        if let Some(other) = seen.insert((t.clone(), *p), m.id.clone()) {
                            return Err(format!("{t}-{p} owned by {other} and {}", m.id));
                        }
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn never_panics_and_never_assigns_a_partition_twice(
                ops in proptest::collection::vec(op(), 1..120),
                assignor in 0..2usize,
            ) {
                let mut g = ConsumerGroup::default();
                let mut topics: BTreeMap<String, i32> =
                    TOPICS.iter().map(|t| (t.to_string(), 4)).collect();
                // What each client slot knows: its member id and epoch.
                let mut clients: Vec<(String, i32)> = vec![(String::new(), 0); MEMBERS];
                let start = Instant::now();
                let mut now = start;
                let session = Duration::from_secs(30);
                let id_of = |t: &str| TOPICS.iter().position(|x| *x == t).map(|i| Uuid::from_u128(i as u128 + 1));
                let name_of = |id: Uuid| TOPICS.get((id.as_u128() as usize).wrapping_sub(1)).map(|t| t.to_string());
                let mut log: Vec<ConsumerRecord> = Vec::new();
                for op in ops {
                    let beat = |slot: usize, id: String, epoch: i32| Heartbeat {
                        member_id: id,
                        member_epoch: epoch,
                        instance_id: Some(format!("i{slot}")),
                        rack_id: None,
                        subscribed: None,
                        regex: None,
                        assignor: Some(ASSIGNORS[assignor].to_string()),
                        owned: None,
                        client_id: "c".into(),
                        client_host: "h".into(),
                    };
                    let result = match op {
                        Op::Join { slot, instance, topics: mask } => {
                            let mut hb = beat(slot, clients[slot].0.clone(), 0);
                            if !instance {
                                hb.instance_id = None;
                            }
                            hb.subscribed = Some(subscription(mask));
                            if mask & 4 != 0 {
                                // Bit 2: the second topic by regex as well.
                                hb.regex = Some(format!("{}|none-.*", TOPICS[1]));
                            }
                            Some((slot, g.heartbeat(hb, &topics, session, now)))
                        }
                        Op::Beat { slot, skew, claim, topics: mask } => {
                            let (id, epoch) = clients[slot].clone();
                            let mut hb = beat(slot, id, (epoch + skew).max(0));
                            hb.subscribed = mask.map(subscription);
                            hb.owned = claim.map(|c| {
                                let mut a = Assignment::new();
                                for (t, p) in c {
                                    a.entry(TOPICS[t].to_string()).or_default().insert(p);
                                }
                                a
                            });
                            Some((slot, g.heartbeat(hb, &topics, session, now)))
                        }
                        Op::Leave { slot, epoch } => {
                            let hb = beat(slot, clients[slot].0.clone(), epoch);
                            g.heartbeat(hb, &topics, session, now);
                            clients[slot] = (String::new(), 0);
                            None
                        }
                        Op::Tick { secs } => {
                            now += Duration::from_secs(secs);
                            g.tick(&topics, now);
                            None
                        }
                        Op::Grow { topic, by } => {
                            *topics.get_mut(TOPICS[topic]).expect("known topic") += by;
                            None
                        }
                    };
                    if let Some((slot, r)) = result {
                        if r.error == 0 {
                            clients[slot] = (r.member_id.clone(), r.member_epoch);
                        }
                    }
                    prop_assert!(no_partition_owned_twice(&g).is_ok(), "{:?}", no_partition_owned_twice(&g));
                    log.extend(g.changes(&id_of));
                }
                // The records written along the way bring the group back as it is.
                let mut back = ConsumerGroup::default();
                for r in log {
                    back.restore(r, &name_of, session, now);
                }
                let view = |g: &ConsumerGroup| {
                    let members: Vec<_> = g
                        .members
                        .values()
                        .map(|m| (m.id.clone(), m.epoch, m.owned.clone(), m.subscribed.clone()))
                        .collect();
                    (g.group_epoch, g.assignment_epoch, g.target.clone(), members)
                };
                prop_assert_eq!(view(&back), view(&g));
            }
        }
    }
}
