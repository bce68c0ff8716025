//! The internal RPC between Tern nodes (the `--rpc-listen` listener): framing and messages.
//!
//! A frame is `length: u32` (of what follows), `kind: u8`, `meta_len: u32`, the meta (an `rkyv`
//! archive, validated and read in place), then the record-batch data the meta refers to by
//! position. Batches never pass through the archive: a sender writes them after the meta as the
//! `Bytes` it holds, and a receiver hands Raft slices of the frame it read (no copy, no work per
//! record).
//!
//! A connection starts with a [`Hello`] from the side that opened it; the acceptor checks the
//! cluster and both node ids before it reads anything else.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use tern_raft as raft;
use thiserror::Error;

use crate::batch::{BatchHeader, HEADER_LEN};

/// Bumped when the frame or its messages change incompatibly.
pub const VERSION: u16 = 4;
/// Largest frame accepted: a replication round is bounded by Raft's append window (a few MiB),
/// and one batch by `message.max.bytes`.
pub const MAX_FRAME: usize = 256 << 20;
/// Largest meta accepted (the archive, without batch data).
pub const MAX_META: usize = 16 << 20;
/// Bytes of `kind` and `meta_len` after the length.
const FRAME_HEAD: usize = 5;

const KIND_HELLO: u8 = 1;
const KIND_ENVELOPE: u8 = 2;
const KIND_NODE: u8 = 3;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RpcError {
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("frame too short: {0} bytes")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("meta of {meta} bytes does not fit in a frame of {frame}")]
    BadMetaLength { meta: usize, frame: usize },
    #[error("malformed meta: {0}")]
    BadMeta(String),
    #[error("batch data [{at}, +{len}) is outside the frame's {data} data bytes")]
    DataOutOfRange { at: u64, len: u32, data: usize },
    #[error("entry [{base}, {last}] of term {term} does not match its batch: {why}")]
    BadEntry {
        base: u64,
        last: u64,
        term: u64,
        why: &'static str,
    },
    #[error("entries are not dense after offset {0}")]
    NotDense(u64),
}

/// The first frame on a connection: who is calling whom, in which cluster, and where the
/// caller serves Kafka clients (so the controller can register it).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    pub version: u16,
    pub cluster: String,
    pub from: u64,
    pub to: u64,
    /// The caller's advertised Kafka listener, `host:port`.
    pub kafka: String,
    /// The caller's rack (`client.rack` matching, KIP-392); empty when it has none.
    pub rack: String,
    /// The caller's advertised internal RPC listener, `host:port` (so nodes that are not in
    /// the controller quorum can be reached once registered).
    pub rpc: String,
}

/// A message between nodes' brokers (not Raft's): what each node leads, and the controller's
/// requests to partition leaders.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeMessage {
    /// Groups the sender leads, with their state (those that changed, and every few seconds
    /// all of them).
    Leaders { groups: Vec<Leadership> },
    /// Controller to a group's leader: hand leadership to `to` (ElectLeaders).
    TransferLeader { group: u64, to: u64 },
    /// Follower to its group's leader: its replica's log start offset, after it followed the
    /// leader's (DeleteRecords, retention).
    LogStart { group: u64, start: i64 },
    /// Transaction coordinator to a partition leader: write producer `producer_id`'s commit
    /// or abort marker to these partitions, committed through their Raft groups. Answered
    /// with [`NodeMessage::MarkersWritten`].
    WriteMarkers {
        call: Call,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        /// The coordinator's epoch: the leader epoch of its `__transaction_state` partition.
        coordinator_epoch: i32,
        partitions: Vec<(String, i32)>,
    },
    /// Each partition's Kafka error code (0: written).
    MarkersWritten {
        call: Call,
        results: Vec<(String, i32, i16)>,
    },
    /// Partition leader to a transaction coordinator (KIP-890's verification): is this
    /// producer the id's current one, with its transaction open and the partition in it?
    /// Answered with [`NodeMessage::TxnVerified`].
    VerifyTxn {
        call: Call,
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        topic: String,
        partition: i32,
    },
    /// The Kafka error code of the verification (0: verified).
    TxnVerified { call: Call, error: i16 },
    /// A node to the controller: a block of producer ids for the node to hand out (KRaft's
    /// AllocateProducerIds). Answered with [`NodeMessage::ProducerIds`].
    AllocateProducerIds { call: Call },
    /// The block, committed to the metadata log: ids `first..first + count`; or a Kafka error
    /// code.
    ProducerIds {
        call: Call,
        first: i64,
        count: i32,
        error: i16,
    },
}

/// A request between nodes that expects an answer: the answer carries the same call, so it
/// reaches the caller's shard and waiting request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Call {
    pub id: u64,
    /// The calling shard of the calling node.
    pub shard: u32,
}

/// A group as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Leadership {
    pub group: u64,
    pub term: u64,
    /// The replicas in sync (Kafka's ISR), the leader among them.
    pub isr: Vec<u64>,
    /// The group's configuration in effect (committed or not).
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The leader's log start offset: followers move theirs up to it (as Kafka's followers
    /// take the leader's from fetch answers), so records deleted stay deleted after failover.
    pub log_start: i64,
}

/// The frame of a [`NodeMessage`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeFrame {
    pub from: u64,
    pub to: u64,
    pub message: NodeMessage,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Envelope(raft::Envelope),
    Node(NodeFrame),
}

// The wire shape of Raft's messages. Batch data is a position in the frame's data section.

#[derive(rkyv::Archive, rkyv::Serialize)]
struct WireEnvelope {
    from: u64,
    to: u64,
    messages: Vec<WireMessage>,
    /// (group, term, commit, round)
    heartbeats: Vec<(u64, u64, u64, u64)>,
    /// (group, term, match_end, durable, round)
    acks: Vec<(u64, u64, u64, u64, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct WireMessage {
    group: u64,
    from: u64,
    to: u64,
    term: u64,
    body: WireBody,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct WireMembership {
    voters: Vec<u64>,
    learners: Vec<u64>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct WireReject {
    prev_end: u64,
    hint_end: u64,
    hint_term: u64,
    hint_term_start: u64,
    log_start: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
enum WirePayload {
    /// `len` bytes at `at` in the data section.
    Data {
        at: u64,
        len: u32,
    },
    LeaderChange(u64),
    Membership(WireMembership),
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct WireEntry {
    base: u64,
    last: u64,
    term: u64,
    payload: WirePayload,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
enum WireBody {
    PreVote {
        end: u64,
        last_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    Vote {
        end: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_end: u64,
        prev_term: u64,
        entries: Vec<WireEntry>,
        commit: u64,
    },
    Heartbeat {
        commit: u64,
        round: u64,
    },
    AppendResponse {
        match_end: u64,
        durable: u64,
        reject: Option<WireReject>,
        heartbeat: Option<u64>,
    },
    TimeoutNow,
    InstallStart {
        start: u64,
        start_term: u64,
        membership: WireMembership,
    },
}

/// A frame ready to send: `head` (length, kind, meta) then `data`, in order. The batches in
/// `data` are the `Bytes` the log holds, not copies.
#[derive(Debug, Default)]
pub struct Encoded {
    pub head: Vec<u8>,
    pub data: Vec<Bytes>,
}

impl Encoded {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame in one buffer (tests, and small frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(&self.head);
        for d in &self.data {
            out.put_slice(d);
        }
        out.freeze()
    }
}

fn frame(kind: u8, meta: &[u8], data: Vec<Bytes>) -> Encoded {
    let data_len: usize = data.iter().map(Bytes::len).sum();
    let length = FRAME_HEAD + meta.len() + data_len;
    let mut head = Vec::with_capacity(4 + FRAME_HEAD + meta.len());
    head.put_u32(length as u32);
    head.put_u8(kind);
    head.put_u32(meta.len() as u32);
    head.put_slice(meta);
    Encoded { head, data }
}

pub fn encode_hello(hello: &Hello) -> Encoded {
    let meta = rkyv::to_bytes::<rancor::Error>(hello).expect("a hello always serializes");
    frame(KIND_HELLO, &meta, Vec::new())
}

pub fn encode_node(message: &NodeFrame) -> Encoded {
    let meta = rkyv::to_bytes::<rancor::Error>(message).expect("a node message always serializes");
    frame(KIND_NODE, &meta, Vec::new())
}

fn wire_membership(m: &raft::Membership) -> WireMembership {
    WireMembership {
        voters: m.voters.iter().copied().collect(),
        learners: m.learners.iter().copied().collect(),
    }
}

fn wire_body(body: &raft::Body, data: &mut Vec<Bytes>, at: &mut u64) -> WireBody {
    use raft::Body as B;
    match body {
        B::PreVote { end, last_term } => WireBody::PreVote {
            end: *end,
            last_term: *last_term,
        },
        B::PreVoteResponse { granted } => WireBody::PreVoteResponse { granted: *granted },
        B::Vote {
            end,
            last_term,
            transfer,
        } => WireBody::Vote {
            end: *end,
            last_term: *last_term,
            transfer: *transfer,
        },
        B::VoteResponse { granted } => WireBody::VoteResponse { granted: *granted },
        B::Append {
            prev_end,
            prev_term,
            entries,
            commit,
        } => WireBody::Append {
            prev_end: *prev_end,
            prev_term: *prev_term,
            commit: *commit,
            entries: entries
                .iter()
                .map(|e| WireEntry {
                    base: e.base,
                    last: e.last,
                    term: e.term,
                    payload: match &e.payload {
                        raft::Payload::Data(b) => {
                            let p = WirePayload::Data {
                                at: *at,
                                len: b.len() as u32,
                            };
                            *at += b.len() as u64;
                            data.push(b.clone());
                            p
                        }
                        raft::Payload::LeaderChange(n) => WirePayload::LeaderChange(*n),
                        raft::Payload::Membership(m) => WirePayload::Membership(wire_membership(m)),
                    },
                })
                .collect(),
        },
        B::Heartbeat { commit, round } => WireBody::Heartbeat {
            commit: *commit,
            round: *round,
        },
        B::AppendResponse {
            match_end,
            durable,
            reject,
            heartbeat,
        } => WireBody::AppendResponse {
            match_end: *match_end,
            durable: *durable,
            heartbeat: *heartbeat,
            reject: reject.as_ref().map(|r| WireReject {
                prev_end: r.prev_end,
                hint_end: r.hint_end,
                hint_term: r.hint_term,
                hint_term_start: r.hint_term_start,
                log_start: r.log_start,
            }),
        },
        B::TimeoutNow => WireBody::TimeoutNow,
        B::InstallStart {
            start,
            start_term,
            membership,
        } => WireBody::InstallStart {
            start: *start,
            start_term: *start_term,
            membership: wire_membership(membership),
        },
    }
}

/// Encodes one node's envelope for another: its messages' batch data goes after the meta as
/// the same `Bytes`.
pub fn encode_envelope(env: &raft::Envelope) -> Encoded {
    let mut data = Vec::new();
    let mut at = 0u64;
    let wire = WireEnvelope {
        from: env.from,
        to: env.to,
        messages: env
            .messages
            .iter()
            .map(|(group, m)| WireMessage {
                group: *group,
                from: m.from,
                to: m.to,
                term: m.term,
                body: wire_body(&m.body, &mut data, &mut at),
            })
            .collect(),
        heartbeats: env
            .heartbeats
            .iter()
            .map(|h| (h.group, h.term, h.commit, h.round))
            .collect(),
        acks: env
            .acks
            .iter()
            .map(|a| (a.group, a.term, a.match_end, a.durable, a.round))
            .collect(),
    };
    let meta = rkyv::to_bytes::<rancor::Error>(&wire).expect("an envelope always serializes");
    frame(KIND_ENVELOPE, &meta, data)
}

/// Meta bytes a piece of a split envelope stays under (far below [`MAX_META`]).
const SPLIT_META: usize = 1 << 20;

/// A generous estimate of the meta bytes a message takes on the wire.
fn message_meta(m: &raft::Message) -> usize {
    let members = |ms: &raft::Membership| 16 * (ms.voters.len() + ms.learners.len());
    96 + match &m.body {
        raft::Body::Append { entries, .. } => entries
            .iter()
            .map(|e| match &e.payload {
                raft::Payload::Membership(ms) => 64 + members(ms),
                _ => 64,
            })
            .sum(),
        raft::Body::InstallStart { membership, .. } => members(membership),
        _ => 0,
    }
}

/// Splits an envelope whose meta would be large (a node pair sharing thousands of groups that
/// elect or catch up at once) into pieces that each stay far below [`MAX_META`], in the order
/// the receiver steps them: messages, then heartbeats, then acks. `None` for an envelope that
/// fits as it is (the common case: nothing is copied).
pub fn split_envelope(env: &raft::Envelope) -> Option<Vec<raft::Envelope>> {
    const HEARTBEAT: usize = 40;
    const ACK: usize = 48;
    let total = env
        .messages
        .iter()
        .map(|(_, m)| message_meta(m))
        .sum::<usize>()
        + HEARTBEAT * env.heartbeats.len()
        + ACK * env.acks.len();
    if total <= SPLIT_META {
        return None;
    }
    let empty = || raft::Envelope {
        from: env.from,
        to: env.to,
        messages: Vec::new(),
        heartbeats: Vec::new(),
        acks: Vec::new(),
    };
    let mut pieces = Vec::new();
    let mut piece = empty();
    let mut size = 0;
    let mut room = |cost: usize, piece: &mut raft::Envelope, size: &mut usize| {
        if *size + cost > SPLIT_META && !piece.is_empty() {
            pieces.push(std::mem::replace(piece, empty()));
            *size = 0;
        }
        *size += cost;
    };
    for (group, m) in &env.messages {
        room(message_meta(m), &mut piece, &mut size);
        piece.messages.push((*group, m.clone()));
    }
    for h in &env.heartbeats {
        room(HEARTBEAT, &mut piece, &mut size);
        piece.heartbeats.push(h.clone());
    }
    for a in &env.acks {
        room(ACK, &mut piece, &mut size);
        piece.acks.push(a.clone());
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    Some(pieces)
}

/// The length of the frame whose 4-byte prefix is `prefix` (what follows it), checked
/// against [`MAX_FRAME`] before anything is allocated for it.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, RpcError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(RpcError::TooLarge(len));
    }
    if len < FRAME_HEAD {
        return Err(RpcError::Short(len));
    }
    Ok(len)
}

/// Decodes a frame (the bytes after its length prefix). Batch data is handed out as slices of
/// `frame`. Everything is checked before use: the archive's structure, data positions, and
/// that each entry's batch header says the entry's offsets and term, so a malformed or hostile
/// frame is refused here and never reaches Raft or the log.
pub fn decode(mut frame: Bytes) -> Result<Frame, RpcError> {
    if frame.len() > MAX_FRAME {
        return Err(RpcError::TooLarge(frame.len()));
    }
    if frame.len() < FRAME_HEAD {
        return Err(RpcError::Short(frame.len()));
    }
    let kind = frame.get_u8();
    let meta_len = frame.get_u32() as usize;
    if meta_len > frame.len() || meta_len > MAX_META {
        return Err(RpcError::BadMetaLength {
            meta: meta_len,
            frame: frame.len() + FRAME_HEAD,
        });
    }
    // rkyv reads archives in place from aligned memory: the meta (small) is copied to align
    // it; batch data is not.
    let mut meta = AlignedVec::<16>::with_capacity(meta_len);
    meta.extend_from_slice(&frame[..meta_len]);
    let data = frame.slice(meta_len..);
    let bad = |e: rancor::Error| RpcError::BadMeta(e.to_string());
    match kind {
        KIND_HELLO => {
            let hello = rkyv::from_bytes::<Hello, rancor::Error>(&meta).map_err(bad)?;
            Ok(Frame::Hello(hello))
        }
        KIND_ENVELOPE => {
            let wire = rkyv::access::<ArchivedWireEnvelope, rancor::Error>(&meta).map_err(bad)?;
            Ok(Frame::Envelope(envelope(wire, &data)?))
        }
        KIND_NODE => {
            let message = rkyv::from_bytes::<NodeFrame, rancor::Error>(&meta).map_err(bad)?;
            Ok(Frame::Node(message))
        }
        other => Err(RpcError::UnknownKind(other)),
    }
}

fn membership(m: &ArchivedWireMembership) -> raft::Membership {
    raft::Membership {
        voters: m.voters.iter().map(|v| v.to_native()).collect(),
        learners: m.learners.iter().map(|v| v.to_native()).collect(),
    }
}

fn envelope(w: &ArchivedWireEnvelope, data: &Bytes) -> Result<raft::Envelope, RpcError> {
    let mut messages = Vec::with_capacity(w.messages.len());
    for m in w.messages.iter() {
        let message = raft::Message {
            from: m.from.to_native(),
            to: m.to.to_native(),
            term: m.term.to_native(),
            body: body(&m.body, data)?,
        };
        messages.push((m.group.to_native(), message));
    }
    Ok(raft::Envelope {
        from: w.from.to_native(),
        to: w.to.to_native(),
        messages,
        heartbeats: w
            .heartbeats
            .iter()
            .map(|h| raft::HeartbeatItem {
                group: h.0.to_native(),
                term: h.1.to_native(),
                commit: h.2.to_native(),
                round: h.3.to_native(),
            })
            .collect(),
        acks: w
            .acks
            .iter()
            .map(|a| raft::HeartbeatAck {
                group: a.0.to_native(),
                term: a.1.to_native(),
                match_end: a.2.to_native(),
                durable: a.3.to_native(),
                round: a.4.to_native(),
            })
            .collect(),
    })
}

fn body(b: &ArchivedWireBody, data: &Bytes) -> Result<raft::Body, RpcError> {
    use raft::Body as B;
    Ok(match b {
        ArchivedWireBody::PreVote { end, last_term } => B::PreVote {
            end: end.to_native(),
            last_term: last_term.to_native(),
        },
        ArchivedWireBody::PreVoteResponse { granted } => B::PreVoteResponse { granted: *granted },
        ArchivedWireBody::Vote {
            end,
            last_term,
            transfer,
        } => B::Vote {
            end: end.to_native(),
            last_term: last_term.to_native(),
            transfer: *transfer,
        },
        ArchivedWireBody::VoteResponse { granted } => B::VoteResponse { granted: *granted },
        ArchivedWireBody::Append {
            prev_end,
            prev_term,
            entries,
            commit,
        } => {
            let prev_end = prev_end.to_native();
            let mut out = Vec::with_capacity(entries.len());
            let mut next = prev_end;
            for e in entries.iter() {
                let entry = entry(e, data)?;
                if entry.base != next {
                    return Err(RpcError::NotDense(next));
                }
                next = entry.end();
                out.push(entry);
            }
            B::Append {
                prev_end,
                prev_term: prev_term.to_native(),
                entries: out,
                commit: commit.to_native(),
            }
        }
        ArchivedWireBody::Heartbeat { commit, round } => B::Heartbeat {
            commit: commit.to_native(),
            round: round.to_native(),
        },
        ArchivedWireBody::AppendResponse {
            match_end,
            durable,
            reject,
            heartbeat,
        } => B::AppendResponse {
            match_end: match_end.to_native(),
            durable: durable.to_native(),
            heartbeat: heartbeat.as_ref().map(|r| r.to_native()),
            reject: reject.as_ref().map(|r| raft::Reject {
                prev_end: r.prev_end.to_native(),
                hint_end: r.hint_end.to_native(),
                hint_term: r.hint_term.to_native(),
                hint_term_start: r.hint_term_start.to_native(),
                log_start: r.log_start.to_native(),
            }),
        },
        ArchivedWireBody::TimeoutNow => B::TimeoutNow,
        ArchivedWireBody::InstallStart {
            start,
            start_term,
            membership: m,
        } => B::InstallStart {
            start: start.to_native(),
            start_term: start_term.to_native(),
            membership: membership(m),
        },
    })
}

fn entry(e: &ArchivedWireEntry, data: &Bytes) -> Result<raft::Entry, RpcError> {
    let (base, last, term) = (e.base.to_native(), e.last.to_native(), e.term.to_native());
    let bad = |why| RpcError::BadEntry {
        base,
        last,
        term,
        why,
    };
    if last < base || last > i64::MAX as u64 || term > i32::MAX as u64 {
        return Err(bad("offsets or term out of range"));
    }
    let payload = match &e.payload {
        ArchivedWirePayload::Data { at, len } => {
            let (at, len) = (at.to_native(), len.to_native());
            let end = at.checked_add(u64::from(len));
            if end.is_none_or(|end| end > data.len() as u64) {
                return Err(RpcError::DataOutOfRange {
                    at,
                    len,
                    data: data.len(),
                });
            }
            let batch = data.slice(at as usize..(at + u64::from(len)) as usize);
            // The batch header must say what the entry says: the log stores the batch as it
            // is, and Raft reasons about the entry.
            let h = BatchHeader::parse(&batch).map_err(|_| bad("not a record batch"))?;
            if batch.len() < HEADER_LEN || h.total_len() != batch.len() {
                return Err(bad("batch length"));
            }
            if h.base_offset != base as i64 || h.last_offset() != last as i64 {
                return Err(bad("batch offsets"));
            }
            if h.partition_leader_epoch != term as i32 {
                return Err(bad("batch leader epoch"));
            }
            raft::Payload::Data(batch)
        }
        ArchivedWirePayload::LeaderChange(n) => raft::Payload::LeaderChange(n.to_native()),
        ArchivedWirePayload::Membership(m) => raft::Payload::Membership(membership(m)),
    };
    if !matches!(payload, raft::Payload::Data(_)) && base != last {
        return Err(bad("a control entry takes one offset"));
    }
    Ok(raft::Entry {
        base,
        last,
        term,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_plain, plain_record, set_base_offset, set_leader_epoch};
    use kafka_protocol::records::Compression;

    fn batch(base: i64, n: usize, epoch: i32) -> Bytes {
        let records: Vec<_> = (0..n)
            .map(|i| plain_record(i as i64, 1000, None, Some(vec![b'v'; 10].into())))
            .collect();
        let mut b = encode_plain(&records, Compression::None).unwrap().to_vec();
        set_base_offset(&mut b, base);
        set_leader_epoch(&mut b, epoch);
        b.into()
    }

    fn append(entries: Vec<raft::Entry>) -> raft::Envelope {
        raft::Envelope {
            from: 1,
            to: 2,
            messages: vec![(
                7,
                raft::Message {
                    from: 1,
                    to: 2,
                    term: 3,
                    body: raft::Body::Append {
                        prev_end: 10,
                        prev_term: 2,
                        entries,
                        commit: 9,
                    },
                },
            )],
            heartbeats: vec![raft::HeartbeatItem {
                group: 8,
                term: 3,
                commit: 100,
                round: 12,
            }],
            acks: vec![raft::HeartbeatAck {
                group: 9,
                term: 4,
                match_end: 50,
                durable: 40,
                round: 11,
            }],
        }
    }

    fn data_entry(base: u64, n: u64, term: u64) -> raft::Entry {
        raft::Entry {
            base,
            last: base + n - 1,
            term,
            payload: raft::Payload::Data(batch(base as i64, n as usize, term as i32)),
        }
    }

    fn round_trip(env: &raft::Envelope) -> Result<Frame, RpcError> {
        let wire = encode_envelope(env).to_bytes();
        let len = frame_length(wire[..4].try_into().unwrap())?;
        assert_eq!(len, wire.len() - 4);
        decode(wire.slice(4..))
    }

    #[test]
    fn envelopes_round_trip_with_batches_as_slices_of_the_frame() {
        let env = append(vec![
            data_entry(10, 3, 3),
            raft::Entry {
                base: 13,
                last: 13,
                term: 3,
                payload: raft::Payload::LeaderChange(1),
            },
            raft::Entry {
                base: 14,
                last: 14,
                term: 3,
                payload: raft::Payload::Membership(raft::Membership::new([1, 2, 3])),
            },
            data_entry(15, 5, 3),
        ]);
        let encoded = encode_envelope(&env);
        assert_eq!(encoded.data.len(), 2, "batches travel beside the meta");
        assert_eq!(round_trip(&env).unwrap(), Frame::Envelope(env));
        let hello = Hello {
            version: VERSION,
            cluster: "c1".into(),
            from: 3,
            to: 1,
            kafka: "127.0.0.1:9092".into(),
            rack: String::new(),
            rpc: "127.0.0.1:9192".into(),
        };
        let wire = encode_hello(&hello).to_bytes();
        assert_eq!(decode(wire.slice(4..)).unwrap(), Frame::Hello(hello));
        for message in [
            NodeMessage::Leaders {
                groups: vec![Leadership {
                    group: 7,
                    term: 3,
                    isr: vec![1, 2],
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    log_start: 120,
                }],
            },
            NodeMessage::TransferLeader { group: 7, to: 2 },
            NodeMessage::LogStart {
                group: 7,
                start: 120,
            },
            NodeMessage::WriteMarkers {
                call: Call { id: 9, shard: 1 },
                producer_id: 4000,
                producer_epoch: 3,
                commit: true,
                coordinator_epoch: 2,
                partitions: vec![("orders".into(), 0), ("__consumer_offsets".into(), 17)],
            },
            NodeMessage::MarkersWritten {
                call: Call { id: 9, shard: 1 },
                results: vec![("orders".into(), 0, 0), ("gone".into(), 2, 3)],
            },
            NodeMessage::VerifyTxn {
                call: Call { id: 10, shard: 0 },
                transactional_id: "tx-1".into(),
                producer_id: 4000,
                producer_epoch: 3,
                topic: "orders".into(),
                partition: 0,
            },
            NodeMessage::TxnVerified {
                call: Call { id: 10, shard: 0 },
                error: 48,
            },
            NodeMessage::AllocateProducerIds {
                call: Call { id: 11, shard: 0 },
            },
            NodeMessage::ProducerIds {
                call: Call { id: 11, shard: 0 },
                first: 5000,
                count: 1000,
                error: 0,
            },
        ] {
            let node = NodeFrame {
                from: 1,
                to: 2,
                message,
            };
            let wire = encode_node(&node).to_bytes();
            assert_eq!(decode(wire.slice(4..)).unwrap(), Frame::Node(node));
        }
    }

    #[test]
    fn a_large_envelope_is_split_in_order_into_frames_that_fit() {
        let mut env = raft::Envelope {
            from: 1,
            to: 2,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            acks: Vec::new(),
        };
        for group in 0..40_000u64 {
            env.messages.push((
                group,
                raft::Message {
                    from: 1,
                    to: 2,
                    term: 3,
                    body: raft::Body::Vote {
                        end: 10,
                        last_term: 2,
                        transfer: false,
                    },
                },
            ));
            env.heartbeats.push(raft::HeartbeatItem {
                group,
                term: 3,
                commit: 9,
                round: 1,
            });
        }
        let pieces = split_envelope(&env).unwrap();
        assert!(pieces.len() > 2, "{} pieces", pieces.len());
        let mut joined = raft::Envelope {
            from: 1,
            to: 2,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            acks: Vec::new(),
        };
        for p in &pieces {
            let encoded = encode_envelope(p);
            assert!(
                encoded.head.len() < MAX_META / 4,
                "{} bytes",
                encoded.head.len()
            );
            assert_eq!(round_trip(p).unwrap(), Frame::Envelope(p.clone()));
            joined.messages.extend(p.messages.iter().cloned());
            joined.heartbeats.extend(p.heartbeats.iter().cloned());
        }
        assert_eq!(joined, env);
        assert_eq!(split_envelope(&pieces[0]), None);
    }

    #[test]
    fn every_message_kind_round_trips() {
        use raft::Body as B;
        let bodies = [
            B::PreVote {
                end: 5,
                last_term: 2,
            },
            B::PreVoteResponse { granted: true },
            B::Vote {
                end: 5,
                last_term: 2,
                transfer: true,
            },
            B::VoteResponse { granted: false },
            B::Heartbeat {
                commit: 3,
                round: 7,
            },
            B::AppendResponse {
                match_end: 4,
                durable: 4,
                heartbeat: Some(7),
                reject: None,
            },
            B::AppendResponse {
                match_end: 4,
                durable: 3,
                heartbeat: None,
                reject: Some(raft::Reject {
                    prev_end: 9,
                    hint_end: 8,
                    hint_term: 1,
                    hint_term_start: 2,
                    log_start: 0,
                }),
            },
            B::TimeoutNow,
            B::InstallStart {
                start: 100,
                start_term: 4,
                membership: raft::Membership {
                    voters: [1, 2].into(),
                    learners: [5].into(),
                },
            },
        ];
        let env = raft::Envelope {
            from: 2,
            to: 1,
            messages: bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| {
                    (
                        i as u64,
                        raft::Message {
                            from: 2,
                            to: 1,
                            term: 6,
                            body,
                        },
                    )
                })
                .collect(),
            heartbeats: Vec::new(),
            acks: Vec::new(),
        };
        assert_eq!(round_trip(&env).unwrap(), Frame::Envelope(env));
    }

    #[test]
    fn entries_that_disagree_with_their_batches_are_refused() {
        let mut wrong_epoch = data_entry(10, 3, 3);
        wrong_epoch.term = 2;
        let mut wrong_last = data_entry(10, 3, 3);
        wrong_last.last = 13;
        let gap = vec![data_entry(10, 3, 3), data_entry(14, 1, 3)];
        let not_after_prev = vec![data_entry(11, 3, 3)];
        for entries in [vec![wrong_epoch], vec![wrong_last], gap, not_after_prev] {
            assert!(round_trip(&append(entries)).is_err());
        }
        let mut wide_control = data_entry(10, 3, 3);
        wide_control.payload = raft::Payload::LeaderChange(1);
        assert!(round_trip(&append(vec![wide_control])).is_err());
    }

    #[test]
    fn malformed_frames_are_refused_not_trusted() {
        assert_eq!(
            frame_length((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(RpcError::TooLarge(MAX_FRAME + 1))
        );
        assert!(frame_length(2u32.to_be_bytes()).is_err());
        let good = encode_envelope(&append(vec![data_entry(10, 3, 3)])).to_bytes();
        let body = good.slice(4..);
        assert!(matches!(decode(body.slice(..3)), Err(RpcError::Short(3))));
        let mut kind = body.to_vec();
        kind[0] = 9;
        assert_eq!(decode(kind.into()), Err(RpcError::UnknownKind(9)));
        let mut meta_len = body.to_vec();
        meta_len[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(meta_len.into()),
            Err(RpcError::BadMetaLength { .. })
        ));
        // Cut short: the data a batch points at is missing.
        assert!(matches!(
            decode(body.slice(..body.len() - 1)),
            Err(RpcError::DataOutOfRange { .. })
        ));
        // Every single-byte change of the meta is refused or decodes to something checked.
        let meta_end = FRAME_HEAD + u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        for i in FRAME_HEAD..meta_end {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = body.to_vec();
                damaged[i] ^= flip;
                let _ = decode(damaged.into());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(data.into());
        }
    }
}
