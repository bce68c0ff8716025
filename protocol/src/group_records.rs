//! The records groups keep in `__consumer_offsets`, in Kafka's own key/value formats, so the
//! topic reads the same as Kafka's: offset commits (key v1, value v3), classic group metadata
//! (key v2, value v3) and the KIP-848 consumer group records (keys 3, 5, 6, 7 and 8: group
//! epoch, member, target assignment epoch, member target, member's current assignment; values
//! v0, flexible). A record with no value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use uuid::Uuid;

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// Group metadata as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub timestamp: i64,
    pub members: Vec<StoredMember>,
}

/// A member as stored in the group's metadata record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: Duration,
    pub session_timeout: Duration,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Partitions by topic id, as the KIP-848 records hold assignments.
pub type IdAssignment = Vec<(Uuid, Vec<i32>)>;

/// A KIP-848 member's registration (ConsumerGroupMemberMetadataValue).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConsumerMember {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: Vec<String>,
    pub regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub assignor: Option<String>,
}

/// A KIP-848 member's current assignment (ConsumerGroupCurrentMemberAssignmentValue).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMemberAssignment {
    pub epoch: i32,
    pub previous_epoch: i32,
    /// Kafka's MemberState: 0 stable, 1 unrevoked partitions, 2 unreleased partitions.
    pub state: i8,
    pub assigned: IdAssignment,
    pub pending_revocation: IdAssignment,
}

/// One KIP-848 consumer group record (None values: tombstones).
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerRecord {
    GroupEpoch(Option<i32>),
    Member(String, Option<StoredConsumerMember>),
    TargetEpoch(Option<i32>),
    Target(String, Option<IdAssignment>),
    Assignment(String, Option<StoredMemberAssignment>),
}

impl ConsumerRecord {
    /// The record's key type (Kafka's record type, written as the key's version).
    fn key_type(&self) -> i16 {
        match self {
            ConsumerRecord::GroupEpoch(_) => 3,
            ConsumerRecord::Member(..) => 5,
            ConsumerRecord::TargetEpoch(_) => 6,
            ConsumerRecord::Target(..) => 7,
            ConsumerRecord::Assignment(..) => 8,
        }
    }

    /// The member the record is about, if any.
    pub fn member(&self) -> Option<&str> {
        match self {
            ConsumerRecord::Member(m, _)
            | ConsumerRecord::Target(m, _)
            | ConsumerRecord::Assignment(m, _) => Some(m),
            _ => None,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        match self {
            ConsumerRecord::GroupEpoch(v) | ConsumerRecord::TargetEpoch(v) => v.is_none(),
            ConsumerRecord::Member(_, v) => v.is_none(),
            ConsumerRecord::Target(_, v) => v.is_none(),
            ConsumerRecord::Assignment(_, v) => v.is_none(),
        }
    }

    /// The same record's tombstone.
    pub fn tombstone(&self) -> ConsumerRecord {
        match self {
            ConsumerRecord::GroupEpoch(_) => ConsumerRecord::GroupEpoch(None),
            ConsumerRecord::Member(m, _) => ConsumerRecord::Member(m.clone(), None),
            ConsumerRecord::TargetEpoch(_) => ConsumerRecord::TargetEpoch(None),
            ConsumerRecord::Target(m, _) => ConsumerRecord::Target(m.clone(), None),
            ConsumerRecord::Assignment(m, _) => ConsumerRecord::Assignment(m.clone(), None),
        }
    }

    /// Which record this is: (key type, member). Records with the same key replace each other.
    pub fn key(&self) -> (i16, String) {
        (
            self.key_type(),
            self.member().unwrap_or_default().to_string(),
        )
    }

    fn encode_value(&self) -> Option<Bytes> {
        let mut v = BytesMut::new();
        v.put_i16(0);
        match self {
            ConsumerRecord::GroupEpoch(e) | ConsumerRecord::TargetEpoch(e) => v.put_i32((*e)?),
            ConsumerRecord::Member(_, m) => {
                let m = m.as_ref()?;
                put_compact_opt_str(&mut v, m.instance_id.as_deref());
                put_compact_opt_str(&mut v, m.rack_id.as_deref());
                put_compact_opt_str(&mut v, Some(&m.client_id));
                put_compact_opt_str(&mut v, Some(&m.client_host));
                put_uvarint(&mut v, m.subscribed.len() as u64 + 1);
                for t in &m.subscribed {
                    put_compact_opt_str(&mut v, Some(t));
                }
                put_compact_opt_str(&mut v, m.regex.as_deref());
                v.put_i32(m.rebalance_timeout_ms);
                put_compact_opt_str(&mut v, m.assignor.as_deref());
            }
            ConsumerRecord::Target(_, a) => put_id_assignment(&mut v, a.as_ref()?),
            ConsumerRecord::Assignment(_, a) => {
                let a = a.as_ref()?;
                v.put_i32(a.epoch);
                v.put_i32(a.previous_epoch);
                v.put_i8(a.state);
                put_id_assignment(&mut v, &a.assigned);
                put_id_assignment(&mut v, &a.pending_revocation);
            }
        }
        v.put_u8(0); // no tagged fields
        Some(v.freeze())
    }

    fn decode(key_type: i16, member: Option<String>, value: Option<Bytes>) -> Option<Self> {
        let Some(mut v) = value else {
            return match (key_type, member) {
                (3, None) => Some(ConsumerRecord::GroupEpoch(None)),
                (6, None) => Some(ConsumerRecord::TargetEpoch(None)),
                (5, Some(m)) => Some(ConsumerRecord::Member(m, None)),
                (7, Some(m)) => Some(ConsumerRecord::Target(m, None)),
                (8, Some(m)) => Some(ConsumerRecord::Assignment(m, None)),
                _ => None,
            };
        };
        need(&v, 2)?;
        if v.get_i16() != 0 {
            return None;
        }
        let record = match (key_type, member) {
            (3, None) | (6, None) => {
                need(&v, 4)?;
                let epoch = Some(v.get_i32());
                if key_type == 3 {
                    ConsumerRecord::GroupEpoch(epoch)
                } else {
                    ConsumerRecord::TargetEpoch(epoch)
                }
            }
            (5, Some(member)) => {
                let instance_id = get_compact_opt_str(&mut v)?;
                let rack_id = get_compact_opt_str(&mut v)?;
                let client_id = get_compact_opt_str(&mut v)?.unwrap_or_default();
                let client_host = get_compact_opt_str(&mut v)?.unwrap_or_default();
                let count = get_array_len(&mut v)?;
                let mut subscribed = Vec::new();
                for _ in 0..count {
                    subscribed.push(get_compact_opt_str(&mut v)?.unwrap_or_default());
                }
                let regex = get_compact_opt_str(&mut v)?;
                need(&v, 4)?;
                let rebalance_timeout_ms = v.get_i32();
                let assignor = get_compact_opt_str(&mut v)?;
                ConsumerRecord::Member(
                    member,
                    Some(StoredConsumerMember {
                        instance_id,
                        rack_id,
                        client_id,
                        client_host,
                        subscribed,
                        regex,
                        rebalance_timeout_ms,
                        assignor,
                    }),
                )
            }
            (7, Some(member)) => ConsumerRecord::Target(member, Some(get_id_assignment(&mut v)?)),
            (8, Some(member)) => {
                need(&v, 9)?;
                let (epoch, previous_epoch, state) = (v.get_i32(), v.get_i32(), v.get_i8());
                ConsumerRecord::Assignment(
                    member,
                    Some(StoredMemberAssignment {
                        epoch,
                        previous_epoch,
                        state,
                        assigned: get_id_assignment(&mut v)?,
                        pending_revocation: get_id_assignment(&mut v)?,
                    }),
                )
            }
            _ => return None,
        };
        skip_tagged_fields(&mut v)?;
        Some(record)
    }
}

fn put_uvarint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn get_uvarint(buf: &mut Bytes) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        need(buf, 1)?;
        let b = buf.get_u8();
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A compact (nullable) string: length + 1 as an unsigned varint, 0 for null.
fn put_compact_opt_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        None => put_uvarint(buf, 0),
        Some(s) => {
            put_uvarint(buf, s.len() as u64 + 1);
            buf.put_slice(s.as_bytes());
        }
    }
}

fn get_compact_opt_str(buf: &mut Bytes) -> Option<Option<String>> {
    let len = get_uvarint(buf)?;
    if len == 0 {
        return Some(None);
    }
    let len = usize::try_from(len - 1).ok()?;
    need(buf, len)?;
    let s = buf.split_to(len);
    Some(Some(String::from_utf8(s.to_vec()).ok()?))
}

/// A compact array's length (not null: a null array reads as empty); bounded by the bytes
/// left, so a hostile count allocates nothing.
fn get_array_len(buf: &mut Bytes) -> Option<usize> {
    let n = usize::try_from(get_uvarint(buf)?).ok()?.saturating_sub(1);
    (n <= buf.remaining()).then_some(n)
}

fn skip_tagged_fields(buf: &mut Bytes) -> Option<()> {
    for _ in 0..get_uvarint(buf)? {
        get_uvarint(buf)?;
        let size = usize::try_from(get_uvarint(buf)?).ok()?;
        need(buf, size)?;
        buf.advance(size);
    }
    Some(())
}

fn put_id_assignment(buf: &mut BytesMut, a: &IdAssignment) {
    put_uvarint(buf, a.len() as u64 + 1);
    for (id, partitions) in a {
        buf.put_slice(id.as_bytes());
        put_uvarint(buf, partitions.len() as u64 + 1);
        for p in partitions {
            buf.put_i32(*p);
        }
        buf.put_u8(0); // no tagged fields
    }
}

fn get_id_assignment(buf: &mut Bytes) -> Option<IdAssignment> {
    let count = get_array_len(buf)?;
    let mut a = Vec::with_capacity(count);
    for _ in 0..count {
        need(buf, 16)?;
        let id = Uuid::from_slice(&buf.split_to(16)).ok()?;
        let n = get_array_len(buf)?;
        need(buf, n * 4)?;
        let partitions = (0..n).map(|_| buf.get_i32()).collect();
        skip_tagged_fields(buf)?;
        a.push((id, partitions));
    }
    Some(a)
}

/// What a record of `__consumer_offsets` says.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<Committed>,
    },
    Group {
        group: String,
        value: Option<StoredGroup>,
    },
    Consumer {
        group: String,
        record: ConsumerRecord,
    },
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len() as i16);
    buf.put_slice(s.as_bytes());
}

fn put_opt_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

pub(crate) fn need(buf: &Bytes, n: usize) -> Option<()> {
    (buf.remaining() >= n).then_some(())
}

fn get_opt_str(buf: &mut Bytes) -> Option<Option<String>> {
    need(buf, 2)?;
    let len = buf.get_i16();
    if len < 0 {
        return Some(None);
    }
    need(buf, len as usize)?;
    let s = buf.split_to(len as usize);
    Some(Some(String::from_utf8(s.to_vec()).ok()?))
}

pub(crate) fn get_str(buf: &mut Bytes) -> Option<String> {
    get_opt_str(buf)?
}

fn get_bytes(buf: &mut Bytes) -> Option<Bytes> {
    need(buf, 4)?;
    let len = buf.get_i32();
    if len < 0 {
        return Some(Bytes::new());
    }
    need(buf, len as usize)?;
    Some(buf.split_to(len as usize))
}

impl GroupRecord {
    /// The record's key and value (None: tombstone).
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let mut key = BytesMut::new();
        match self {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                key.put_i16(1);
                put_str(&mut key, group);
                put_str(&mut key, topic);
                key.put_i32(*partition);
                let value = value.as_ref().map(|c| {
                    let mut v = BytesMut::new();
                    v.put_i16(3);
                    v.put_i64(c.offset);
                    v.put_i32(c.leader_epoch);
                    put_str(&mut v, &c.metadata);
                    v.put_i64(c.commit_timestamp);
                    v.freeze()
                });
                (key.freeze(), value)
            }
            GroupRecord::Group { group, value } => {
                key.put_i16(2);
                put_str(&mut key, group);
                let value = value.as_ref().map(|g| {
                    let mut v = BytesMut::new();
                    v.put_i16(3);
                    put_str(&mut v, &g.protocol_type);
                    v.put_i32(g.generation);
                    put_opt_str(&mut v, g.protocol.as_deref());
                    put_opt_str(&mut v, g.leader.as_deref());
                    v.put_i64(g.timestamp);
                    v.put_i32(g.members.len() as i32);
                    for m in &g.members {
                        put_str(&mut v, &m.id);
                        put_opt_str(&mut v, m.instance_id.as_deref());
                        put_str(&mut v, &m.client_id);
                        put_str(&mut v, &m.client_host);
                        v.put_i32(m.rebalance_timeout.as_millis() as i32);
                        v.put_i32(m.session_timeout.as_millis() as i32);
                        put_bytes(&mut v, &m.subscription);
                        put_bytes(&mut v, &m.assignment);
                    }
                    v.freeze()
                });
                (key.freeze(), value)
            }
            GroupRecord::Consumer { group, record } => {
                key.put_i16(record.key_type());
                put_str(&mut key, group);
                if let Some(member) = record.member() {
                    put_str(&mut key, member);
                }
                (key.freeze(), record.encode_value())
            }
        }
    }

    /// Parses a record; `None` for keys or values this version does not know.
    pub fn decode(mut key: Bytes, value: Option<Bytes>) -> Option<GroupRecord> {
        need(&key, 2)?;
        match key.get_i16() {
            0 | 1 => {
                let group = get_str(&mut key)?;
                let topic = get_str(&mut key)?;
                need(&key, 4)?;
                let partition = key.get_i32();
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        need(&v, 2)?;
                        let version = v.get_i16();
                        need(&v, 8)?;
                        let offset = v.get_i64();
                        let leader_epoch = if version >= 3 {
                            need(&v, 4)?;
                            v.get_i32()
                        } else {
                            -1
                        };
                        let metadata = get_str(&mut v)?;
                        need(&v, 8)?;
                        let commit_timestamp = v.get_i64();
                        Some(Committed {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp,
                        })
                    }
                };
                Some(GroupRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = get_str(&mut key)?;
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        need(&v, 2)?;
                        if v.get_i16() != 3 {
                            return None;
                        }
                        let protocol_type = get_str(&mut v)?;
                        need(&v, 4)?;
                        let generation = v.get_i32();
                        let protocol = get_opt_str(&mut v)?;
                        let leader = get_opt_str(&mut v)?;
                        need(&v, 12)?;
                        let timestamp = v.get_i64();
                        let count = v.get_i32().max(0);
                        let mut members = Vec::new();
                        for _ in 0..count {
                            let id = get_str(&mut v)?;
                            let instance_id = get_opt_str(&mut v)?;
                            let client_id = get_str(&mut v)?;
                            let client_host = get_str(&mut v)?;
                            need(&v, 8)?;
                            let rebalance_timeout =
                                Duration::from_millis(v.get_i32().max(0) as u64);
                            let session_timeout = Duration::from_millis(v.get_i32().max(0) as u64);
                            members.push(StoredMember {
                                id,
                                instance_id,
                                client_id,
                                client_host,
                                rebalance_timeout,
                                session_timeout,
                                subscription: get_bytes(&mut v)?,
                                assignment: get_bytes(&mut v)?,
                            });
                        }
                        Some(StoredGroup {
                            protocol_type,
                            generation,
                            protocol,
                            leader,
                            timestamp,
                            members,
                        })
                    }
                };
                Some(GroupRecord::Group { group, value })
            }
            key_type @ (3 | 5 | 6 | 7 | 8) => {
                let group = get_str(&mut key)?;
                let member = match key_type {
                    5 | 7 | 8 => Some(get_str(&mut key)?),
                    _ => None,
                };
                let record = ConsumerRecord::decode(key_type, member, value)?;
                Some(GroupRecord::Consumer { group, record })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            GroupRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(Committed {
                    offset: 42,
                    leader_epoch: 1,
                    metadata: "meta".into(),
                    commit_timestamp: 99,
                }),
            },
            GroupRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: None,
            },
            GroupRecord::Group {
                group: "g".into(),
                value: Some(StoredGroup {
                    protocol_type: "consumer".into(),
                    generation: 7,
                    protocol: Some("range".into()),
                    leader: Some("m1".into()),
                    timestamp: 5,
                    members: vec![StoredMember {
                        id: "m1".into(),
                        instance_id: Some("i1".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout: Duration::from_secs(300),
                        session_timeout: Duration::from_secs(45),
                        subscription: Bytes::from_static(b"sub"),
                        assignment: Bytes::from_static(b"asg"),
                    }],
                }),
            },
            GroupRecord::Group {
                group: "g".into(),
                value: None,
            },
        ];
        let topic = Uuid::from_u128(0x1234);
        let consumer = [
            ConsumerRecord::GroupEpoch(Some(4)),
            ConsumerRecord::GroupEpoch(None),
            ConsumerRecord::Member(
                "m".into(),
                Some(StoredConsumerMember {
                    instance_id: None,
                    rack_id: Some("r".into()),
                    client_id: "c".into(),
                    client_host: "/h".into(),
                    subscribed: vec!["a".into(), "b".into()],
                    regex: Some("x-.*".into()),
                    rebalance_timeout_ms: -1,
                    assignor: Some("uniform".into()),
                }),
            ),
            ConsumerRecord::Member("m".into(), None),
            ConsumerRecord::TargetEpoch(Some(4)),
            ConsumerRecord::Target("m".into(), Some(vec![(topic, vec![0, 2])])),
            ConsumerRecord::Target("m".into(), None),
            ConsumerRecord::Assignment(
                "m".into(),
                Some(StoredMemberAssignment {
                    epoch: 4,
                    previous_epoch: 3,
                    state: 1,
                    assigned: vec![(topic, vec![0])],
                    pending_revocation: vec![(topic, vec![1])],
                }),
            ),
            ConsumerRecord::Assignment("m".into(), None),
        ]
        .map(|record| GroupRecord::Consumer {
            group: "g".into(),
            record,
        });
        for r in records.into_iter().chain(consumer) {
            let (k, v) = r.encode();
            assert_eq!(GroupRecord::decode(k, v), Some(r));
        }
        // A hostile array count allocates nothing and reads as malformed.
        let mut key = BytesMut::new();
        key.put_i16(7);
        put_str(&mut key, "g");
        put_str(&mut key, "m");
        let value = Bytes::from_static(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(GroupRecord::decode(key.freeze(), Some(value)), None);
        assert_eq!(GroupRecord::decode(Bytes::from_static(&[0, 9]), None), None);
        assert_eq!(
            GroupRecord::decode(Bytes::from_static(&[0, 1, 0, 5]), None),
            None
        );
    }
}
