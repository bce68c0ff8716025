//! Incremental fetch sessions (KIP-227). A consumer that asks for one (epoch 0) gets a session
//! id; its later fetches (epoch 1, 2, ...) name only the partitions whose fetch position or
//! limits changed, and those to forget, and the response carries only the partitions with
//! records, an error, or a new high watermark, stable offset or log start. A consumer of many
//! quiet partitions then sends and receives a few bytes per fetch instead of all of them.
//!
//! Sessions live on the shard whose connection created them (an id names its shard: id mod the
//! shard count), so a fetch arriving on another shard finds none and is answered
//! FETCH_SESSION_ID_NOT_FOUND, after which the client starts a new one. At most
//! `MAX_SESSIONS` per shard; the least recently used goes first.

use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;
use uuid::Uuid;

/// Sessions a shard keeps (Kafka's max.incremental.fetch.session.cache.slots is per broker).
const MAX_SESSIONS: usize = 1000;
/// Epoch values with a meaning of their own.
const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;

/// What a partition's client was told besides records: (high watermark, last stable offset,
/// log start).
pub type Offsets = (i64, i64, i64);

/// What an incremental response told one partition of its session.
pub struct Told {
    pub topic: String,
    pub partition: i32,
    /// `None`: the partition was left out.
    pub sent: Option<Offsets>,
    pub records: bool,
}

/// A partition as the session remembers it: what the client asked last, and what it was last
/// told.
#[derive(Clone, Debug)]
pub struct SessionPart {
    pub topic: String,
    pub id: Uuid,
    pub partition: i32,
    pub fetch_offset: i64,
    pub current_leader_epoch: i32,
    pub max_bytes: i32,
    /// What it was last told; `None`: nothing yet.
    pub sent: Option<Offsets>,
}

struct Session {
    next_epoch: i32,
    /// In fetch order; partitions that returned records move to the end (so each gets its
    /// turn at the front of a response's budget).
    parts: Vec<SessionPart>,
    used: Instant,
}

/// The fetch sessions of one shard.
pub struct FetchSessions {
    shard: usize,
    shards: usize,
    sessions: RefCell<HashMap<i32, Session>>,
    counter: Cell<u32>,
}

/// What a Fetch does about sessions.
pub enum Plan {
    /// A full fetch of the request's partitions; with `Some`, a new session starts with them
    /// under that id (sent back to the client).
    Full(Option<i32>),
    /// A fetch in session `id`: these partitions, in this order, answered incrementally.
    Incremental { id: i32, parts: Vec<SessionPart> },
    /// Answered with this top-level error and nothing else.
    Refused(ResponseError),
}

impl FetchSessions {
    pub fn new(shard: usize, shards: usize) -> FetchSessions {
        FetchSessions {
            shard,
            shards: shards.max(1),
            sessions: RefCell::new(HashMap::new()),
            counter: Cell::new(0),
        }
    }

    /// Decides how a Fetch (v7+, from a consumer) uses sessions, and applies its changes to
    /// its session. `name_of` gives a topic's name from the request's topic (id on v13+).
    pub fn plan(
        &self,
        req: &FetchRequest,
        version: i16,
        name_of: impl Fn(&kafka_protocol::messages::TopicName, Uuid) -> Option<String>,
    ) -> Plan {
        let (id, epoch) = (req.session_id, req.session_epoch);
        if version < 7 || req.replica_id.0 >= 0 || req.replica_state.replica_id.0 >= 0 {
            return Plan::Full(None);
        }
        match epoch {
            FINAL_EPOCH => {
                self.sessions.borrow_mut().remove(&id);
                Plan::Full(None)
            }
            INITIAL_EPOCH => {
                self.sessions.borrow_mut().remove(&id);
                Plan::Full(Some(self.new_id()))
            }
            _ => {
                let mut sessions = self.sessions.borrow_mut();
                let Some(session) = sessions.get_mut(&id) else {
                    return Plan::Refused(ResponseError::FetchSessionIdNotFound);
                };
                if session.next_epoch != epoch {
                    return Plan::Refused(ResponseError::InvalidFetchSessionEpoch);
                }
                for t in &req.forgotten_topics_data {
                    let Some(name) = name_of(&t.topic, t.topic_id) else {
                        continue;
                    };
                    session
                        .parts
                        .retain(|p| p.topic != name || !t.partitions.contains(&p.partition));
                }
                let mut at: HashMap<(String, i32), usize> = session
                    .parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ((p.topic.clone(), p.partition), i))
                    .collect();
                for t in &req.topics {
                    let name = name_of(&t.topic, t.topic_id).unwrap_or_default();
                    for p in &t.partitions {
                        let update = SessionPart {
                            topic: name.clone(),
                            id: t.topic_id,
                            partition: p.partition,
                            fetch_offset: p.fetch_offset,
                            current_leader_epoch: p.current_leader_epoch,
                            max_bytes: p.partition_max_bytes,
                            sent: None,
                        };
                        match at.get(&(name.clone(), p.partition)) {
                            Some(&i) => {
                                let sent = session.parts[i].sent;
                                session.parts[i] = SessionPart { sent, ..update };
                            }
                            None => {
                                at.insert((name.clone(), p.partition), session.parts.len());
                                session.parts.push(update);
                            }
                        }
                    }
                }
                session.next_epoch = next_epoch(epoch);
                session.used = Instant::now();
                Plan::Incremental {
                    id,
                    parts: session.parts.clone(),
                }
            }
        }
    }

    /// After a full fetch that asked for a session: it starts with these partitions as sent.
    pub fn start(&self, id: i32, parts: Vec<SessionPart>) {
        let mut sessions = self.sessions.borrow_mut();
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.used).map(|(&k, _)| k) {
                sessions.remove(&oldest);
            }
        }
        let session = Session {
            next_epoch: next_epoch(INITIAL_EPOCH),
            parts,
            used: Instant::now(),
        };
        sessions.insert(id, session);
    }

    /// After an incremental fetch: what each partition was told (`None`: not sent this time),
    /// and the partitions that returned records move to the end.
    pub fn answered(&self, id: i32, told: &[Told]) {
        let mut sessions = self.sessions.borrow_mut();
        let Some(session) = sessions.get_mut(&id) else {
            return;
        };
        let told: HashMap<(&str, i32), &Told> = told
            .iter()
            .map(|t| ((t.topic.as_str(), t.partition), t))
            .collect();
        let (mut quiet, mut fed) = (Vec::new(), Vec::new());
        for mut part in std::mem::take(&mut session.parts) {
            match told.get(&(part.topic.as_str(), part.partition)) {
                Some(t) => {
                    if t.sent.is_some() {
                        part.sent = t.sent;
                    }
                    if t.records {
                        fed.push(part);
                    } else {
                        quiet.push(part);
                    }
                }
                None => quiet.push(part),
            }
        }
        quiet.extend(fed);
        session.parts = quiet;
    }

    /// A new session id of this shard (never 0, the "no session" id).
    fn new_id(&self) -> i32 {
        loop {
            let n = self.counter.get().wrapping_add(1);
            self.counter.set(n);
            let random = (rand_u32() ^ n) as usize % (i32::MAX as usize / self.shards);
            let id = (random * self.shards + self.shard) as i32;
            if id != 0 && !self.sessions.borrow().contains_key(&id) {
                return id;
            }
        }
    }
}

/// The epoch after `epoch` (1 after the largest, as Kafka wraps).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

fn rand_u32() -> u32 {
    let bytes = Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn request(id: i32, epoch: i32, parts: &[(i32, i64)], forget: &[i32]) -> FetchRequest {
        let topic = TopicName(StrBytes::from_static_str("t"));
        let mut req = FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_replica_id((-1).into());
        req.replica_state.replica_id = (-1).into();
        if !parts.is_empty() {
            req.topics = vec![FetchTopic::default()
                .with_topic(topic.clone())
                .with_partitions(
                    parts
                        .iter()
                        .map(|&(p, offset)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1000)
                        })
                        .collect(),
                )];
        }
        if !forget.is_empty() {
            req.forgotten_topics_data = vec![ForgottenTopic::default()
                .with_topic(topic)
                .with_partitions(forget.to_vec())];
        }
        req
    }

    fn name(t: &TopicName, _: Uuid) -> Option<String> {
        Some(t.0.to_string())
    }

    fn part(p: i32, offset: i64) -> SessionPart {
        SessionPart {
            topic: "t".into(),
            id: Uuid::nil(),
            partition: p,
            fetch_offset: offset,
            current_leader_epoch: -1,
            max_bytes: 1000,
            sent: Some((10, 10, 0)),
        }
    }

    #[test]
    fn a_session_follows_the_changes_its_fetches_name() {
        let sessions = FetchSessions::new(1, 4);
        let Plan::Full(Some(id)) = sessions.plan(&request(0, 0, &[(0, 0), (1, 0)], &[]), 12, name)
        else {
            panic!("epoch 0 starts a session");
        };
        assert_eq!(id % 4, 1, "a session id names its shard");
        sessions.start(id, vec![part(0, 0), part(1, 0), part(2, 0)]);

        // Epoch 1 moves partition 1 on, adds 3 and forgets 0.
        let plan = sessions.plan(&request(id, 1, &[(1, 5), (3, 0)], &[0]), 12, name);
        let Plan::Incremental { parts, .. } = plan else {
            panic!("epoch 1 is incremental");
        };
        let got: Vec<(i32, i64, bool)> = parts
            .iter()
            .map(|p| (p.partition, p.fetch_offset, p.sent.is_some()))
            .collect();
        assert_eq!(got, vec![(1, 5, true), (2, 0, true), (3, 0, false)]);

        // Partition 1 had records: it goes last; 3 was told its offsets.
        let told = |partition, sent, records| Told {
            topic: "t".into(),
            partition,
            sent,
            records,
        };
        let told = vec![
            told(1, Some((20, 20, 0)), true),
            told(2, None, false),
            told(3, Some((7, 7, 0)), false),
        ];
        sessions.answered(id, &told);
        let Plan::Incremental { parts, .. } = sessions.plan(&request(id, 2, &[], &[]), 12, name)
        else {
            panic!("epoch 2 is incremental");
        };
        let got: Vec<(i32, Option<Offsets>)> =
            parts.iter().map(|p| (p.partition, p.sent)).collect();
        assert_eq!(
            got,
            vec![
                (2, Some((10, 10, 0))),
                (3, Some((7, 7, 0))),
                (1, Some((20, 20, 0)))
            ]
        );
    }

    #[test]
    fn unknown_sessions_and_wrong_epochs_are_refused() {
        let sessions = FetchSessions::new(0, 1);
        let refused = |plan: Plan| match plan {
            Plan::Refused(e) => e,
            _ => panic!("not refused"),
        };
        let unknown = sessions.plan(&request(77, 1, &[], &[]), 12, name);
        assert_eq!(refused(unknown), ResponseError::FetchSessionIdNotFound);
        let Plan::Full(Some(id)) = sessions.plan(&request(0, 0, &[(0, 0)], &[]), 7, name) else {
            panic!("epoch 0 starts a session");
        };
        sessions.start(id, vec![part(0, 0)]);
        let stale = sessions.plan(&request(id, 2, &[], &[]), 12, name);
        assert_eq!(refused(stale), ResponseError::InvalidFetchSessionEpoch);
        assert!(matches!(
            sessions.plan(&request(id, 1, &[], &[]), 12, name),
            Plan::Incremental { .. }
        ));
        // The final epoch closes it: a sessionless full fetch.
        assert!(matches!(
            sessions.plan(&request(id, -1, &[(0, 0)], &[]), 12, name),
            Plan::Full(None)
        ));
        let closed = sessions.plan(&request(id, 2, &[], &[]), 12, name);
        assert_eq!(refused(closed), ResponseError::FetchSessionIdNotFound);
        // Before v7, and from a follower, there are no sessions.
        assert!(matches!(
            sessions.plan(&request(0, 0, &[(0, 0)], &[]), 6, name),
            Plan::Full(None)
        ));
    }
}
