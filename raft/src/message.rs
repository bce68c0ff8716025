use crate::{Entry, Membership, NodeId, Offset, Term};

/// A message between two replicas of one group. `term` is the sender's term, except for a
/// pre-vote, which carries the term the sender would campaign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Would you vote for me in `term`? Nobody's term changes (Raft dissertation §9.6).
    PreVote {
        end: Offset,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `transfer`: the leader asked for this election, so voters that still hear from it vote.
    Vote {
        end: Offset,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// Entries follow the entry that ends at `prev_end` and was written in `prev_term`.
    Append {
        prev_end: Offset,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Offset,
    },
    /// `round`: the leader's count of heartbeats sent in this term, echoed in the answer.
    Heartbeat {
        commit: Offset,
        round: u64,
    },
    /// The answer to an append or a heartbeat, or a follower's notice that it synced more.
    /// `match_end`: the follower's log matches the leader's up to here (0 when unknown).
    /// `durable`: and is synced up to here; only this counts toward commit.
    /// `heartbeat`: the round of the heartbeat this answers (`None`: an append's answer).
    AppendResponse {
        match_end: Offset,
        durable: Offset,
        reject: Option<Reject>,
        heartbeat: Option<u64>,
    },
    /// Leader transfer: start an election now.
    TimeoutNow,
    /// The follower is behind the leader's log start: drop its log and restart it empty at
    /// `start`, whose previous entry was written in `start_term`, with `membership` in effect.
    InstallStart {
        start: Offset,
        start_term: Term,
        membership: Membership,
    },
}

/// Why an append was refused, with what the leader needs to find where the logs diverge in one
/// round trip per term rather than one per entry (the epoch-based search Kafka followers use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The `prev_end` of the refused append (to tell stale refusals).
    pub prev_end: Offset,
    /// min(prev_end, the follower's log end).
    pub hint_end: Offset,
    /// The follower's term for the entry before `hint_end`.
    pub hint_term: Term,
    /// Where the follower's epoch `hint_term` starts (its log start if unknown).
    pub hint_term_start: Offset,
    /// The follower's log start: everything before it is committed.
    pub log_start: Offset,
}
