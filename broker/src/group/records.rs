//! The records groups keep in `__consumer_offsets`, in Kafka's own key/value formats, so the
//! topic reads the same as Kafka's: offset commits (key v1, value v3) and group metadata
//! (key v2, value v3). A record with no value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;

use super::state::StoredMember;

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

fn need(buf: &Bytes, n: usize) -> Option<()> {
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

fn get_str(buf: &mut Bytes) -> Option<String> {
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
        for r in records {
            let (k, v) = r.encode();
            assert_eq!(GroupRecord::decode(k, v), Some(r));
        }
        assert_eq!(GroupRecord::decode(Bytes::from_static(&[0, 9]), None), None);
        assert_eq!(
            GroupRecord::decode(Bytes::from_static(&[0, 1, 0, 5]), None),
            None
        );
    }
}
