//! The Raft paper's rules (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", §5.1-§5.4), one test per rule, named by section, plus the extensions this crate
//! adds (pre-vote, check-quorum, durability, transfer, membership, log start). Each drives real
//! groups over an in-memory log with instant persistence and delivery.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::{
    Body, Config, Group, HardState, Log, MemLog, Membership, MembershipChange, Message, NodeId,
    Offset, Payload, ProposeError, Role,
};

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c
}

/// Replicas of one group with instant disks and a network that delivers everything at once,
/// except to or from the nodes cut off.
struct Net {
    nodes: BTreeMap<NodeId, Group<MemLog>>,
    cut: BTreeSet<NodeId>,
    /// Whether syncs complete as soon as they are asked for.
    auto_sync: bool,
    /// Syncs asked for and not done (without `auto_sync`).
    pending_sync: BTreeMap<NodeId, crate::SyncToken>,
}

impl Net {
    fn new(n: u64) -> Self {
        let members = Membership::new(1..=n);
        let nodes = (1..=n)
            .map(|id| (id, Group::new(config(id), MemLog::new(), members.clone())))
            .collect();
        Net {
            nodes,
            cut: BTreeSet::new(),
            auto_sync: true,
            pending_sync: BTreeMap::new(),
        }
    }

    fn n(&self, id: NodeId) -> &Group<MemLog> {
        &self.nodes[&id]
    }

    fn g(&mut self, id: NodeId) -> &mut Group<MemLog> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Everything the replicas want to send now (persisting and syncing as asked).
    fn flush(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        for (&id, g) in self.nodes.iter_mut() {
            while g.has_ready() {
                let r = g.ready();
                out.extend(r.messages);
                match r.sync {
                    Some(token) if self.auto_sync => g.synced(token),
                    Some(token) => {
                        self.pending_sync.insert(id, token);
                    }
                    None => {}
                }
            }
        }
        out
    }

    /// Completes node `id`'s pending sync.
    fn sync(&mut self, id: NodeId) {
        if let Some(token) = self.pending_sync.remove(&id) {
            self.g(id).synced(token);
        }
    }

    fn deliver(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                continue;
            }
            if let Some(g) = self.nodes.get_mut(&m.to) {
                g.step(m);
            }
        }
    }

    /// Delivers until nobody has anything more to say.
    fn stabilize(&mut self) {
        loop {
            let msgs = self.flush();
            if msgs.is_empty() {
                return;
            }
            self.deliver(msgs);
        }
    }

    /// Makes `id` campaign now (as a leader transfer does) and deliver the election.
    fn elect(&mut self, id: NodeId) {
        self.g(id).campaign_now();
        self.stabilize();
        assert_eq!(self.g(id).role(), Role::Leader, "node {id} should have won");
    }

    fn propose(&mut self, id: NodeId, data: &'static [u8]) -> (Offset, Offset) {
        let r = self
            .g(id)
            .propose(Bytes::from_static(data), 1)
            .expect("leader takes proposals");
        self.stabilize();
        r
    }

    fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            for g in self.nodes.values_mut() {
                g.tick();
            }
            self.stabilize();
        }
    }
}

fn data(e: &crate::Entry) -> Option<&[u8]> {
    match &e.payload {
        Payload::Data(b) => Some(b),
        _ => None,
    }
}

fn msg(from: NodeId, to: NodeId, term: u64, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

// ---- §5.1 terms ---------------------------------------------------------------------------

#[test]
fn s5_1_a_replica_seeing_a_newer_term_adopts_it_and_follows() {
    let mut net = Net::new(3);
    net.elect(1);
    for id in [1, 2] {
        let g = net.g(id);
        g.step(msg(
            3,
            id,
            7,
            Body::Heartbeat {
                commit: 0,
                round: 1,
            },
        ));
        assert_eq!(
            (g.term(), g.role(), g.leader()),
            (7, Role::Follower, Some(3))
        );
        assert_eq!(g.vote(), None, "a new term starts without a vote");
    }
}

#[test]
fn s5_1_a_message_of_an_older_term_is_refused_and_told_the_newer_term() {
    let mut net = Net::new(3);
    net.elect(1);
    net.elect(2); // term 2
    let g = net.g(3);
    let before = g.log().end();
    g.step(msg(
        1,
        3,
        1,
        Body::Append {
            prev_end: 0,
            prev_term: 0,
            entries: vec![],
            commit: 0,
        },
    ));
    assert_eq!(g.log().end(), before);
    let out = g.ready().messages;
    assert!(matches!(
        out.as_slice(),
        [Message {
            to: 1,
            term: 2,
            body: Body::AppendResponse { .. },
            ..
        }]
    ));
}

// ---- §5.2 leader election -----------------------------------------------------------------

#[test]
fn s5_2_replicas_start_as_followers() {
    let mut net = Net::new(3);
    assert!(net
        .nodes
        .values()
        .all(|g| g.role() == Role::Follower && g.term() == 0));
    assert!(net.flush().is_empty());
}

#[test]
fn s5_2_a_leader_sends_heartbeats() {
    let mut net = Net::new(3);
    net.elect(1);
    net.g(1).tick();
    let beats: Vec<NodeId> = net
        .flush()
        .into_iter()
        .filter(|m| matches!(m.body, Body::Heartbeat { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(beats, vec![2, 3]);
}

#[test]
fn s5_2_a_follower_without_a_leader_campaigns_after_its_timeout() {
    let mut net = Net::new(3);
    let g = net.g(1);
    for _ in 0..19 {
        g.tick();
    }
    // The timeout is drawn from [10, 20): by 19 ticks the pre-vote has gone out, with no term
    // change (pre-vote), then the real vote after a majority granted it.
    assert_eq!(g.role(), Role::PreCandidate);
    assert_eq!(g.term(), 0);
    net.stabilize();
    assert_eq!((net.g(1).role(), net.g(1).term()), (Role::Leader, 1));
    assert_eq!(net.g(2).vote(), Some(1));
}

#[test]
fn s5_2_a_candidate_wins_with_a_majority_and_loses_without() {
    /// (voters, granted by others, rejected by others) -> the role it ends in, if decided.
    type Case = (u64, &'static [NodeId], &'static [NodeId], Option<Role>);
    let cases: &[Case] = &[
        (3, &[2], &[], Some(Role::Leader)),
        (3, &[], &[2, 3], Some(Role::Follower)),
        (5, &[2], &[], None),
        (5, &[2, 3], &[], Some(Role::Leader)),
        (5, &[], &[2, 3, 4], Some(Role::Follower)),
        (5, &[2], &[3, 4], None),
    ];
    for &(n, yes, no, outcome) in cases {
        let mut net = Net::new(n);
        let g = net.g(1);
        g.step(msg(2, 1, 0, Body::TimeoutNow)); // skips the pre-vote
        assert_eq!((g.role(), g.term()), (Role::Candidate, 1));
        for &v in yes {
            g.step(msg(v, 1, 1, Body::VoteResponse { granted: true }));
        }
        for &v in no {
            g.step(msg(v, 1, 1, Body::VoteResponse { granted: false }));
        }
        let expected = outcome.unwrap_or(Role::Candidate);
        assert_eq!(g.role(), expected, "{n} voters, yes {yes:?}, no {no:?}");
    }
}

#[test]
fn s5_2_each_replica_votes_once_per_term() {
    let mut net = Net::new(3);
    let g = net.g(3);
    let vote = |from| {
        msg(
            from,
            3,
            1,
            Body::Vote {
                end: 0,
                last_term: 0,
                transfer: false,
            },
        )
    };
    g.step(vote(1));
    g.step(vote(2));
    g.step(vote(1)); // the same candidate again: granted again (a retry)
    let granted: Vec<(NodeId, bool)> = g
        .ready()
        .messages
        .into_iter()
        .filter_map(|m| match m.body {
            Body::VoteResponse { granted } => Some((m.to, granted)),
            _ => None,
        })
        .collect();
    assert_eq!(granted, vec![(1, true), (2, false), (1, true)]);
    assert_eq!(
        g.hard_state(),
        HardState {
            term: 1,
            vote: Some(1),
            lost_data: false
        }
    );
}

#[test]
fn s5_2_a_candidate_follows_a_leader_of_its_term() {
    let mut net = Net::new(3);
    let g = net.g(2);
    g.step(msg(3, 2, 0, Body::TimeoutNow));
    assert_eq!((g.role(), g.term()), (Role::Candidate, 1));
    g.step(msg(
        1,
        2,
        1,
        Body::Heartbeat {
            commit: 0,
            round: 1,
        },
    ));
    assert_eq!((g.role(), g.leader()), (Role::Follower, Some(1)));
}

#[test]
fn s5_2_election_timeouts_are_randomized() {
    let timeouts: BTreeSet<u32> = (1..=20)
        .map(|id| {
            let mut g = Group::new(config(id), MemLog::new(), Membership::new([id, 100]));
            (1..=40)
                .find(|_| {
                    g.tick();
                    g.role() != Role::Follower
                })
                .expect("campaigns within 2 timeouts")
        })
        .collect();
    assert!(timeouts.len() > 3, "timeouts drawn: {timeouts:?}");
    assert!(
        timeouts.iter().all(|&t| (10..20).contains(&t)),
        "{timeouts:?}"
    );
}

// ---- §5.3 log replication -----------------------------------------------------------------

#[test]
fn s5_3_the_leader_appends_and_replicates_proposals() {
    let mut net = Net::new(3);
    net.elect(1);
    let (base, last) = net.propose(1, b"hello");
    assert_eq!(
        (base, last),
        (1, 1),
        "offset 0 is the leader's first entry of its term"
    );
    assert_eq!(net.g(1).commit(), 2);
    for id in 1..=3 {
        let g = net.g(id);
        assert_eq!(
            g.log()
                .entries()
                .iter()
                .filter_map(data)
                .collect::<Vec<_>>(),
            vec![b"hello"]
        );
        assert_eq!(g.log().entries()[1].term, 1);
    }
}

#[test]
fn s5_3_the_leader_commits_once_a_majority_has_the_entry() {
    // (voters, followers that answer) -> committed?
    for (n, answering, committed) in [
        (1, vec![], true),
        (3, vec![], false),
        (3, vec![2], true),
        (5, vec![2], false),
        (5, vec![2, 3], true),
    ] {
        let mut net = Net::new(n);
        net.elect(1);
        net.cut = (2..=n).filter(|id| !answering.contains(id)).collect();
        let (_, last) = net.propose(1, b"x");
        assert_eq!(
            net.g(1).commit() > last,
            committed,
            "{n} voters, {answering:?} answering"
        );
    }
}

#[test]
fn s5_3_followers_commit_what_the_leader_committed() {
    let mut net = Net::new(3);
    net.elect(1);
    let (_, last) = net.propose(1, b"x");
    assert!(net.g(1).commit() > last);
    // Followers learn the new commit index with the next append or heartbeat.
    net.tick_all(1);
    assert!(net.g(2).commit() > last && net.g(3).commit() > last);
}

#[test]
fn s5_3_a_follower_refuses_entries_whose_previous_entry_differs() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a"); // log: [0] term 1 leader change, [1] term 1 "a"
    let g = net.g(2);
    let entry = |base, term| crate::Entry {
        base,
        last: base,
        term,
        payload: Payload::Data(Bytes::from_static(b"z")),
    };
    // prev (2, term 1) matches; prev (2, term 3) does not; prev 5 is past the log end.
    for (prev_end, prev_term, accepted) in [(2, 1, true), (2, 3, false), (5, 1, false)] {
        // A fresh follower that took the leader's log.
        let mut fresh = Group::new(config(2), MemLog::new(), Membership::new(1..=3));
        fresh.step(msg(
            1,
            2,
            1,
            Body::Append {
                prev_end: 0,
                prev_term: 0,
                entries: g.log().entries().to_vec(),
                commit: 0,
            },
        ));
        let _ = fresh.ready();
        fresh.step(msg(
            1,
            2,
            1,
            Body::Append {
                prev_end,
                prev_term,
                entries: vec![entry(prev_end, 1)],
                commit: 0,
            },
        ));
        let out = fresh.ready().messages;
        let reject = matches!(
            out.as_slice(),
            [Message {
                body: Body::AppendResponse {
                    reject: Some(_),
                    ..
                },
                ..
            }]
        );
        assert_eq!(!reject, accepted, "prev ({prev_end}, {prev_term})");
        assert_eq!(fresh.log().end(), if accepted { 3 } else { 2 });
    }
}

#[test]
fn s5_3_a_follower_replaces_a_conflicting_suffix_with_the_leaders() {
    let mut g = Group::new(config(2), MemLog::new(), Membership::new(1..=3));
    let e = |base, term, d: &'static [u8]| crate::Entry {
        base,
        last: base,
        term,
        payload: Payload::Data(Bytes::from_static(d)),
    };
    g.step(msg(
        1,
        2,
        1,
        Body::Append {
            prev_end: 0,
            prev_term: 0,
            entries: vec![e(0, 1, b"a"), e(1, 1, b"b"), e(2, 1, b"c")],
            commit: 1,
        },
    ));
    // Term 2's leader agrees up to offset 1 and has other entries after.
    g.step(msg(
        3,
        2,
        2,
        Body::Append {
            prev_end: 1,
            prev_term: 1,
            entries: vec![e(1, 1, b"b"), e(2, 2, b"C"), e(3, 2, b"D")],
            commit: 1,
        },
    ));
    let log: Vec<_> = g.log().entries().iter().filter_map(data).collect();
    assert_eq!(log, vec![b"a" as &[u8], b"b", b"C", b"D"]);
    assert_eq!(g.epochs().epochs(), &[(1, 0), (2, 2)]);
}

#[test]
fn s5_3_the_leader_brings_every_follower_log_in_line() {
    // Figure 7's spirit: followers missing entries, with extra uncommitted entries of old terms,
    // or both, all end with the leader's log.
    let mut net = Net::new(5);
    net.elect(1);
    net.propose(1, b"a");
    net.cut = BTreeSet::from([3]);
    net.propose(1, b"b"); // node 3 misses it
                          // Node 2 wins term 2 (votes from 1, 4, 5), then is cut off before its entries go out.
    net.g(2).campaign_now();
    let votes = net.flush();
    net.deliver(votes);
    let answers: Vec<Message> = net.flush().into_iter().filter(|m| m.to == 2).collect();
    net.deliver(answers);
    assert_eq!(net.g(2).role(), Role::Leader);
    net.cut = BTreeSet::from([1, 3, 4, 5]);
    net.g(2).propose(Bytes::from_static(b"stale"), 3).unwrap();
    net.stabilize();
    // Node 4 wins term 3 without node 2, and once the network heals everyone ends with its log.
    net.cut = BTreeSet::from([2]);
    net.elect(4);
    assert_eq!(net.g(4).term(), 3);
    net.cut.clear();
    net.propose(4, b"c");
    net.tick_all(2);
    let leader: Vec<_> = net.g(4).log().entries().to_vec();
    for id in 1..=5 {
        assert_eq!(net.g(id).log().entries(), leader.as_slice(), "node {id}");
        assert_eq!(net.g(id).commit(), net.g(4).log().end(), "node {id}");
    }
    let datas: Vec<_> = leader.iter().filter_map(data).collect();
    assert_eq!(datas, vec![b"a" as &[u8], b"b", b"c"]);
}

// ---- §5.4 safety --------------------------------------------------------------------------

#[test]
fn s5_4_1_a_voter_refuses_a_candidate_whose_log_is_behind() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a"); // everyone: last term 1, end 2
                          // (candidate's last term, end) -> granted?
    for (last_term, end, granted) in [
        (1, 1, false),
        (1, 2, true),
        (1, 3, true),
        (0, 9, false),
        (2, 1, true),
    ] {
        let mut voter = Group::new(config(3), MemLog::new(), Membership::new(1..=3));
        let entries = net.g(3).log().entries().to_vec();
        voter.step(msg(
            1,
            3,
            1,
            Body::Append {
                prev_end: 0,
                prev_term: 0,
                entries,
                commit: 0,
            },
        ));
        let _ = voter.ready();
        voter.step(msg(
            1,
            3,
            1,
            Body::Heartbeat {
                commit: 0,
                round: 1,
            },
        )); // knows term 1's leader
        for _ in 0..10 {
            voter.tick(); // and its lease ran out
        }
        let _ = voter.ready();
        voter.step(msg(
            2,
            3,
            5,
            Body::Vote {
                end,
                last_term,
                transfer: false,
            },
        ));
        let out = voter.ready().messages;
        let got = out
            .iter()
            .any(|m| matches!(m.body, Body::VoteResponse { granted: true }));
        assert_eq!(got, granted, "candidate ({last_term}, {end})");
    }
}

#[test]
fn s5_4_2_a_leader_does_not_commit_an_older_terms_entry_by_counting_replicas() {
    // Figure 8: an entry of term 1 on a majority is committed only together with an entry of
    // the leader's own term.
    let mut g = Group::new(config(1), MemLog::new(), Membership::new(1..=3));
    let e = |base, term| crate::Entry {
        base,
        last: base,
        term,
        payload: Payload::Data(Bytes::from_static(b"x")),
    };
    g.step(msg(
        2,
        1,
        1,
        Body::Append {
            prev_end: 0,
            prev_term: 0,
            entries: vec![e(0, 1), e(1, 1)],
            commit: 0,
        },
    ));
    let r = g.ready();
    g.synced(r.sync.unwrap());
    g.step(msg(2, 1, 1, Body::TimeoutNow)); // campaign in term 2
    g.step(msg(3, 1, 2, Body::VoteResponse { granted: true }));
    assert_eq!(g.role(), Role::Leader);
    let r = g.ready();
    g.synced(r.sync.unwrap());
    // Node 3 acknowledges the term-1 entries only: a majority holds them, yet nothing commits.
    g.step(msg(
        3,
        1,
        2,
        Body::AppendResponse {
            match_end: 2,
            durable: 2,
            reject: None,
            heartbeat: None,
        },
    ));
    assert_eq!(g.commit(), 0);
    // Once it holds the term-2 entry too, everything up to it commits.
    g.step(msg(
        3,
        1,
        2,
        Body::AppendResponse {
            match_end: 3,
            durable: 3,
            reject: None,
            heartbeat: None,
        },
    ));
    assert_eq!(g.commit(), 3);
}

// ---- beyond the paper ---------------------------------------------------------------------

#[test]
fn durability_only_synced_copies_count_toward_commit() {
    let mut net = Net::new(3);
    net.elect(1);
    net.auto_sync = false;
    let (_, last) = net.g(1).propose(Bytes::from_static(b"x"), 1).unwrap();
    net.stabilize();
    assert!(
        net.g(1).commit() <= last,
        "nobody synced: nothing new commits"
    );
    // One follower syncs: with the leader unsynced, one of three is not a majority.
    net.sync(2);
    net.stabilize();
    assert!(net.g(1).commit() <= last);
    // The other follower syncs too; the leader still has not: two of three is a majority.
    net.sync(3);
    net.stabilize();
    assert!(net.g(1).commit() > last);
}

#[test]
fn check_quorum_a_leader_cut_off_from_the_majority_steps_down() {
    let mut net = Net::new(3);
    net.elect(1);
    net.cut = BTreeSet::from([2, 3]);
    net.tick_all(20);
    assert_eq!(net.g(1).role(), Role::Follower);
    assert!(matches!(
        net.g(1).propose(Bytes::from_static(b"x"), 1),
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn leadership_check_needs_heartbeats_answered_after_it_and_a_commit_of_the_term() {
    let mut net = Net::new(3);
    net.elect(1);
    net.g(1).broadcast_heartbeat();
    net.stabilize();
    let check = net.g(1).leadership_check().expect("leader");
    // Answers to heartbeats sent before the check do not count.
    assert!(!net.g(1).leadership_confirmed(check));
    net.g(1).broadcast_heartbeat();
    net.stabilize();
    assert!(net.g(1).leadership_confirmed(check));

    // Cut off from the majority (before check-quorum notices), no check is confirmed.
    net.cut = BTreeSet::from([2, 3]);
    let check = net.g(1).leadership_check().expect("still leader");
    net.tick_all(5);
    assert_eq!(net.g(1).role(), Role::Leader);
    assert!(!net.g(1).leadership_confirmed(check));

    // A newly elected leader whose first entry is not committed yet is not confirmed either,
    // however many heartbeats are answered: an older leader's entry it lacks may still commit.
    net.cut.clear();
    net.tick_all(25); // 1 steps down; someone leads again
    let leader = (1..=3)
        .find(|&i| net.n(i).role() == Role::Leader)
        .expect("a leader");
    net.auto_sync = false;
    let other = (1..=3).find(|&i| i != leader).unwrap();
    net.g(other).campaign_now();
    net.stabilize(); // elected, but no one syncs its first entry
    assert_eq!(net.n(other).role(), Role::Leader);
    let check = net.g(other).leadership_check().expect("leader");
    net.g(other).broadcast_heartbeat();
    net.stabilize();
    assert!(!net.g(other).leadership_confirmed(check));
    for id in 1..=3 {
        net.sync(id);
    }
    net.g(other).broadcast_heartbeat();
    net.stabilize();
    assert!(net.g(other).leadership_confirmed(check));
    // A check from an earlier term never holds.
    let stale = crate::LeadershipCheck {
        term: check.term - 1,
        ..check
    };
    assert!(!net.g(other).leadership_confirmed(stale));
}

#[test]
fn pre_vote_a_rejoining_replica_does_not_depose_a_working_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    net.cut = BTreeSet::from([3]);
    net.tick_all(60); // node 3 campaigns alone: pre-votes only, no term change
    assert_eq!(net.g(3).term(), 1);
    net.cut.clear();
    net.tick_all(3);
    assert_eq!((net.g(1).role(), net.g(1).term()), (Role::Leader, 1));
    assert_eq!(net.g(3).leader(), Some(1));
}

#[test]
fn transfer_hands_leadership_to_an_up_to_date_voter() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a");
    net.g(1).transfer_leader(3).unwrap();
    assert_eq!(
        net.g(1).propose(Bytes::from_static(b"b"), 1),
        Err(ProposeError::TransferInProgress)
    );
    net.stabilize();
    assert_eq!((net.g(3).role(), net.g(3).term()), (Role::Leader, 2));
    assert_eq!(net.g(1).leader(), Some(3));
}

#[test]
fn membership_a_learner_catches_up_then_votes() {
    let mut net = Net::new(3);
    net.g(1).step(msg(1, 1, 0, Body::TimeoutNow)); // ignored: from itself
    let members = Membership::new(1..=3);
    net.nodes
        .insert(4, Group::new(config(4), MemLog::new(), members));
    net.elect(1);
    net.propose(1, b"a");
    assert_eq!(
        net.g(1).propose_membership(MembershipChange::Promote(4)),
        Err(ProposeError::InvalidChange)
    );
    net.g(1)
        .propose_membership(MembershipChange::AddLearner(4))
        .unwrap();
    assert_eq!(
        net.g(1).propose_membership(MembershipChange::Remove(2)),
        Err(ProposeError::ChangeInProgress),
        "one change at a time"
    );
    net.stabilize();
    net.tick_all(2);
    assert_eq!(
        net.n(4).log().entries(),
        net.n(1).log().entries(),
        "the learner has the log"
    );
    assert!(!net.g(1).membership().is_voter(4));
    net.g(1)
        .propose_membership(MembershipChange::Promote(4))
        .unwrap();
    net.stabilize();
    assert!(net.g(4).membership().is_voter(4));
    assert_eq!(net.g(1).membership().quorum(), 3);
    // With 2 and 3 gone, 1 and 4 cannot commit alone (3 of 4 are needed).
    net.cut = BTreeSet::from([2, 3]);
    let (_, last) = net.g(1).propose(Bytes::from_static(b"b"), 1).unwrap();
    net.stabilize();
    assert!(net.g(1).commit() <= last);
    assert_eq!(
        net.g(1).propose_membership(MembershipChange::Remove(1)),
        Err(ProposeError::InvalidChange)
    );
}

#[test]
fn log_start_a_follower_behind_it_restarts_at_the_leaders_log_start() {
    let mut net = Net::new(3);
    net.elect(1);
    net.cut = BTreeSet::from([3]);
    for _ in 0..5 {
        net.propose(1, b"x");
    }
    let start = net.g(1).commit();
    net.g(1).log_mut().trim_front(start);
    net.g(1).log_start_advanced();
    net.cut.clear();
    net.propose(1, b"y");
    net.tick_all(2);
    let g3 = net.g(3);
    assert_eq!(g3.log().start(), start);
    assert_eq!(g3.log().end(), net.g(1).log().end());
    assert_eq!(net.g(3).commit(), net.g(1).commit());
}

#[test]
fn restart_keeps_term_vote_and_log() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a");
    let g = net.nodes.remove(&2).unwrap();
    let (hs, meta, commit) = (g.hard_state(), g.meta(), g.durable_commit());
    let log = g.into_log();
    let end = log.end();
    let g = Group::restore(config(2), log, hs, meta, commit);
    assert_eq!(
        (g.term(), g.vote(), g.log().end(), g.commit()),
        (1, Some(1), end, commit)
    );
    net.nodes.insert(2, g);
    net.propose(1, b"b");
    net.tick_all(2);
    assert_eq!(net.n(2).log().entries(), net.n(1).log().entries());
}

#[test]
fn data_loss_a_replica_without_its_data_does_not_vote_until_it_caught_up() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a");
    net.propose(1, b"b");
    // Node 3 comes back with an empty disk.
    net.nodes.remove(&3);
    let g = Group::new_after_data_loss(config(3), MemLog::new(), Membership::new(1..=3));
    net.nodes.insert(3, g);
    assert!(net.g(3).hard_state().lost_data);
    // Node 2, whose log lacks the committed entries, asks for votes: node 3 must refuse.
    let mut lagging = Group::new(config(2), MemLog::new(), Membership::new(1..=3));
    lagging.campaign_now();
    for m in lagging.ready().messages.into_iter().filter(|m| m.to == 3) {
        net.g(3).step(m);
    }
    let out = net.g(3).ready().messages;
    assert!(out
        .iter()
        .all(|m| !matches!(m.body, Body::VoteResponse { granted: true })));
    for _ in 0..40 {
        net.g(3).tick();
    }
    assert_eq!(
        net.g(3).role(),
        Role::Follower,
        "it does not campaign either"
    );
    let _ = net.g(3).ready();
    // On first hearing from the leader it moves a term past it, so that leader (which may count
    // what node 3 acknowledged before the loss) steps down.
    net.tick_all(1);
    assert_eq!(net.g(3).term(), 2);
    assert_ne!(net.g(1).role(), Role::Leader);
    // Nodes 1 and 2 elect a leader of a later term; once node 3 holds a commit of that term,
    // it has everything committed before and votes again.
    net.elect(1);
    net.tick_all(2);
    assert_eq!(net.n(3).log().entries(), net.n(1).log().entries());
    assert!(!net.g(3).hard_state().lost_data);
}
