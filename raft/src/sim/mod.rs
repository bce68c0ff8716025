//! Deterministic simulation: N nodes × M groups driven from one seed through a network that
//! drops, duplicates, delays, reorders and cuts (also one way), disks that lose or tear unsynced
//! appends in a crash, crashes and restarts, clock skew, proposals, configuration changes,
//! leadership transfers and retention. After every step a checker tests Raft's safety
//! properties; after the fault phase everything heals and each group must commit again.
//!
//! A failing run names its seed; `TERN_RAFT_SEED=<seed>` replays it step by step (see
//! ARCHITECTURE.md).

mod log;
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;

use self::log::{data_id, mix, Committed, CommittedChain, SimLog};
use crate::group::Mutation;
use crate::rng::Rng;
use crate::{
    Config, Envelope, Group, GroupId, HardState, LeadershipCheck, Log, Membership,
    MembershipChange, MembershipLog, Meta, MultiRaft, NodeId, Offset, Role, SyncToken, Term,
};

const HEARTBEAT_TICKS: u32 = 2;

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub nodes: usize,
    pub groups: usize,
    pub fault_steps: u64,
    /// The most steps after healing for every group to commit a new proposal.
    pub liveness_steps: u64,
    pub mutation: Option<Mutation>,
    pub trace: bool,
}

impl Options {
    /// The shape of a run, drawn from its seed: 3 or 5 nodes, 1 to 3 groups.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = Rng::new(mix(seed, 0x0971));
        Options {
            nodes: if rng.below(3) == 0 { 5 } else { 3 },
            groups: 1 + rng.below(3) as usize,
            fault_steps: 700,
            liveness_steps: 6000,
            mutation: None,
            trace: false,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub steps: u64,
    /// Data entries committed (counted once per group).
    pub commits: u64,
    pub violation: Option<String>,
}

/// What a node has on disk for one replica, besides its log.
struct Stored {
    hard_state: HardState,
    meta: Meta,
    /// The checkpointed high watermark.
    commit: Offset,
    /// The log while the node is down (inside its group while it is up).
    log: Option<SimLog>,
}

/// What the checker saw of one replica last step.
#[derive(Clone, Copy, Default)]
struct Seen {
    term: Term,
    vote: Option<NodeId>,
    commit: Offset,
}

struct Node {
    id: NodeId,
    raft: Option<MultiRaft<SimLog>>,
    stored: BTreeMap<GroupId, Stored>,
    pending_sync: BTreeMap<GroupId, SyncToken>,
    /// Clock skew: the node's clock advances on 1 in `tick_period` of its tick events.
    tick_period: u64,
    /// Stopped (SIGSTOP) until this step: it neither ticks, syncs nor takes messages, which
    /// wait for it; on waking it acts on what it knew, then catches up.
    paused_until: u64,
    seen: BTreeMap<GroupId, Seen>,
}

/// The checker's record of one group across all replicas.
struct GroupCheck {
    initial: Membership,
    committed: Committed,
    /// Log matching: (entry end, term) → hash of the log up to that entry, on any replica.
    chain: HashMap<(Offset, Term), u64>,
    /// Election safety: term → its one leader.
    leaders: HashMap<Term, NodeId>,
    /// How far each term's leader took the committed prefix (leader completeness).
    committed_by_term: BTreeMap<Term, Offset>,
    /// Data id → the offsets the leader assigned when it took the proposal.
    proposals: HashMap<u64, (Offset, Offset)>,
    committed_ids: HashSet<u64>,
    /// Logs lost with a disk (node, what it held synced). A leader may count an acknowledgement
    /// made before the loss, as if the disk failed just after the commit.
    lost_logs: Vec<(NodeId, SimLog)>,
    /// Proposals made after healing, and whether one of them committed.
    healed_proposals: HashSet<u64>,
    healed_commit: bool,
    /// Leadership checks begun and not yet confirmed or abandoned.
    checks: Vec<PendingCheck>,
}

/// A leader's leadership check, with what the checker knew when it began.
struct PendingCheck {
    node: NodeId,
    check: LeadershipCheck,
    /// The newest term that had a leader when the check began.
    newest_led_term: Term,
}

pub(crate) struct Sim {
    opts: Options,
    seed: u64,
    rng: Rng,
    nodes: Vec<Node>,
    groups: Vec<GroupCheck>,
    /// Envelopes in flight, each with the step it arrives at (or later, when others are due).
    network: Vec<(u64, Envelope)>,
    /// The most steps a message takes, drawn per seed; 1 in 100 takes 20 times longer.
    max_delay: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    drop_pct: u64,
    dup_pct: u64,
    next_data: u64,
    step: u64,
    commits: u64,
    healed: bool,
}

/// Runs one seed. A panic (a `debug_assert!` of an invariant) counts as a violation too.
pub(crate) fn run(seed: u64, opts: Options) -> Outcome {
    let result = std::panic::catch_unwind(move || {
        let mut sim = Sim::new(seed, opts);
        let violation = sim.run().err();
        Outcome {
            steps: sim.step,
            commits: sim.commits,
            violation,
        }
    });
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome {
            violation: Some(format!("panicked: {what}")),
            ..Outcome::default()
        }
    })
}

impl Sim {
    fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = (1..=opts.nodes as NodeId)
            .map(|id| Node {
                id,
                raft: Some(MultiRaft::new(id, HEARTBEAT_TICKS)),
                stored: BTreeMap::new(),
                pending_sync: BTreeMap::new(),
                tick_period: 1 + rng.below(3),
                paused_until: 0,
                seen: BTreeMap::new(),
            })
            .collect();
        let drop_pct = [0, 2, 10, 25][rng.below(4) as usize];
        let dup_pct = [0, 3, 10][rng.below(3) as usize];
        let max_delay = [2, 8, 30][rng.below(3) as usize];
        let mut sim = Sim {
            opts,
            seed,
            rng,
            nodes,
            groups: Vec::new(),
            network: Vec::new(),
            max_delay,
            blocked: BTreeSet::new(),
            drop_pct,
            dup_pct,
            next_data: 1,
            step: 0,
            commits: 0,
            healed: false,
        };
        for gid in 0..sim.opts.groups as GroupId {
            let mut ids: Vec<NodeId> = (1..=sim.opts.nodes as NodeId).collect();
            // Three voters (of five nodes, a random three, leaving spares to add), or all.
            while ids.len() > 3 && sim.rng.below(4) != 0 {
                ids.remove(sim.rng.below(ids.len() as u64) as usize);
            }
            let initial = Membership::new(ids.iter().copied());
            sim.groups.push(GroupCheck {
                initial,
                committed: Rc::new(RefCell::new(CommittedChain::new())),
                chain: HashMap::new(),
                leaders: HashMap::new(),
                committed_by_term: BTreeMap::new(),
                proposals: HashMap::new(),
                committed_ids: HashSet::new(),
                lost_logs: Vec::new(),
                healed_proposals: HashSet::new(),
                healed_commit: false,
                checks: Vec::new(),
            });
            for id in ids {
                sim.create_replica(id, gid);
            }
        }
        sim
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("[{} seed {}] {}", self.step, self.seed, what());
        }
    }

    fn config(&self, node: NodeId, gid: GroupId) -> Config {
        let mut c = Config::new(node);
        c.election_ticks = 10;
        c.max_append_bytes = 64;
        c.max_inflight_batches = 4;
        c.max_inflight_bytes = 256;
        c.coalesced_heartbeats = true;
        c.seed = mix(self.seed, node * 1_000 + gid);
        c.mutation = self.opts.mutation;
        c
    }

    /// A new, empty replica of `gid` on `node` (a founding member, or a learner being added).
    fn create_replica(&mut self, node: NodeId, gid: GroupId) {
        let n = &self.nodes[node as usize - 1];
        if n.stored.contains_key(&gid) {
            return;
        }
        let check = &self.groups[gid as usize];
        let log = SimLog::new(check.committed.clone());
        let initial = check.initial.clone();
        let meta = Meta {
            epochs: Default::default(),
            membership: MembershipLog::new(initial.clone()),
        };
        let cfg = self.config(node, gid);
        let n = &mut self.nodes[node as usize - 1];
        let mut stored = Stored {
            hard_state: HardState::default(),
            meta,
            commit: 0,
            log: None,
        };
        match &mut n.raft {
            Some(raft) => raft.add_group(gid, Group::new(cfg, log, initial)),
            None => stored.log = Some(log),
        }
        n.stored.insert(gid, stored);
    }

    fn run(&mut self) -> Result<(), String> {
        while self.step < self.opts.fault_steps {
            self.step += 1;
            self.random_step(true);
            self.check()?;
        }
        self.heal();
        self.check()?;
        let deadline = self.step + self.opts.liveness_steps;
        while self.step < deadline {
            self.step += 1;
            self.random_step(false);
            self.check()?;
            if self.groups.iter().all(|g| g.healed_commit) {
                break;
            }
        }
        if let Some(gid) = self.groups.iter().position(|g| !g.healed_commit) {
            self.trace(|| self.dump(gid as GroupId));
            return Err(format!(
                "liveness: group {gid} committed no new proposal within {} steps after healing",
                self.opts.liveness_steps
            ));
        }
        if self.commits == 0 {
            return Err("the run committed nothing".into());
        }
        Ok(())
    }

    fn random_step(&mut self, faults: bool) {
        self.wake();
        if self.network.iter().any(|(due, _)| *due <= self.step) && self.rng.chance(80) {
            return self.deliver();
        }
        let r = self.rng.below(100);
        if faults && r < 12 {
            self.fault();
        } else if r < 55 {
            self.tick();
        } else if r < 78 {
            self.sync();
        } else if r < 84 {
            self.begin_leadership_check();
        } else {
            self.propose();
        }
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].raft.is_some())
            .collect()
    }

    /// Nodes up and not paused.
    fn running_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].raft.is_some() && !self.is_paused(i))
            .collect()
    }

    fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused_until > self.step
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> Option<T> {
        (!xs.is_empty()).then(|| xs[self.rng.below(xs.len() as u64) as usize])
    }

    /// Hands a node's outputs to its disk and the network, until it has none.
    fn process(&mut self, i: usize) {
        loop {
            let node = &mut self.nodes[i];
            let Some(raft) = node.raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                return;
            }
            let ready = raft.ready();
            for (gid, r) in ready.groups {
                let stored = node
                    .stored
                    .get_mut(&gid)
                    .expect("every group has its stored state");
                if let Some(hs) = r.hard_state {
                    stored.hard_state = hs;
                }
                if let Some(meta) = r.meta {
                    stored.meta = meta;
                }
                if let (Some(role), true) = (r.role, self.opts.trace) {
                    eprintln!(
                        "[{} seed {}] node {} group {gid}: {role:?}",
                        self.step,
                        self.seed,
                        i + 1
                    );
                }
                if let Some(token) = r.sync {
                    node.pending_sync.insert(gid, token);
                }
                if let Some(g) = raft.group(gid) {
                    stored.commit = stored.commit.max(g.durable_commit());
                }
            }
            for env in ready.envelopes {
                let mut delay = 1 + self.rng.below(self.max_delay);
                if self.rng.chance(1) {
                    delay *= 20;
                }
                self.network.push((self.step + delay, env));
            }
        }
    }

    /// Delivers one of the envelopes due, chosen at random (so they arrive reordered).
    fn deliver(&mut self) {
        let due: Vec<usize> = (0..self.network.len())
            .filter(|&i| self.network[i].0 <= self.step)
            .collect();
        let Some(i) = self.pick(&due) else { return };
        let (_, env) = self.network.swap_remove(i);
        let to = env.to as usize - 1;
        if self.is_paused(to) {
            return self.network.push((self.nodes[to].paused_until, env));
        }
        if self.blocked.contains(&(env.from, env.to)) || self.rng.chance(self.drop_pct) {
            return self.trace(|| format!("drop {}->{}", env.from, env.to));
        }
        if self.rng.chance(self.dup_pct) {
            let later = self.step + 1 + self.rng.below(self.max_delay * 4);
            self.network.push((later, env.clone()));
        }
        self.trace(|| format!("deliver {env:?}"));
        if let Some(raft) = self.nodes[to].raft.as_mut() {
            raft.step(env);
            self.process(to);
        }
    }

    fn tick(&mut self) {
        let Some(i) = self.pick(&self.running_nodes()) else {
            return;
        };
        if self.rng.below(self.nodes[i].tick_period) != 0 {
            return;
        }
        if let Some(raft) = self.nodes[i].raft.as_mut() {
            raft.tick();
        }
        self.process(i);
    }

    /// A node's fsync completes: everything written so far is durable.
    fn sync(&mut self) {
        let Some(i) = self.pick(&self.running_nodes()) else {
            return;
        };
        let node = &mut self.nodes[i];
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        for (gid, token) in std::mem::take(&mut node.pending_sync) {
            if let Some(g) = raft.group_mut(gid) {
                g.log_mut().sync_all();
            }
            raft.synced(gid, token);
        }
        self.trace(|| format!("sync node {}", i + 1));
        self.process(i);
    }

    /// Leaders of `gid` among the nodes running (more than one during a partition).
    fn leaders(&self, gid: GroupId) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.is_paused(i))
            .filter(|&i| {
                let g = self.nodes[i].raft.as_ref().and_then(|r| r.group(gid));
                g.is_some_and(|g| g.role() == Role::Leader)
            })
            .collect()
    }

    fn propose(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        let Some(i) = self.pick(&self.leaders(gid)) else {
            return;
        };
        let id = self.next_data;
        self.next_data += 1;
        let mut data = id.to_le_bytes().to_vec();
        data.resize(16, 0);
        let records = 1 + self.rng.below(4);
        let Some(raft) = self.nodes[i].raft.as_mut() else {
            return;
        };
        if let Ok(range) = raft.propose(gid, Bytes::from(data), records) {
            let check = &mut self.groups[gid as usize];
            check.proposals.insert(id, range);
            if self.healed {
                check.healed_proposals.insert(id);
            }
            self.trace(|| format!("propose {id} to group {gid} on node {}: {range:?}", i + 1));
        }
        self.process(i);
    }

    /// A node waking from a pause may serve a client before it hears what happened meanwhile:
    /// it begins a leadership check in each group it (still) leads.
    fn wake(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused_until != self.step {
                continue;
            }
            for gid in 0..self.groups.len() as GroupId {
                if self.leaders(gid).contains(&i) {
                    self.begin_check_at(i, gid);
                }
            }
        }
    }

    /// A leader begins a leadership check (as a broker does before refusing a producer's
    /// sequence): confirmed later, it says no later term had a leader when it began.
    fn begin_leadership_check(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        if let Some(i) = self.pick(&self.leaders(gid)) {
            self.begin_check_at(i, gid);
        }
    }

    fn begin_check_at(&mut self, i: usize, gid: GroupId) {
        let node = self.nodes[i].id;
        let Some(check) = self.nodes[i]
            .raft
            .as_ref()
            .and_then(|r| r.group(gid))
            .and_then(|g| g.leadership_check())
        else {
            return;
        };
        let group = &mut self.groups[gid as usize];
        let newest_led_term = group.leaders.keys().copied().max().unwrap_or(0);
        group.checks.push(PendingCheck {
            node,
            check,
            newest_led_term,
        });
        self.trace(|| format!("leadership check {check:?} of group {gid} on node {node}"));
    }

    /// Leadership checks confirmed since the last step must be true; the others wait while
    /// their replica still leads their term.
    fn check_leadership_checks(&mut self) -> Result<(), String> {
        for gid in 0..self.groups.len() {
            let checks = std::mem::take(&mut self.groups[gid].checks);
            for pending in checks {
                let g = self.nodes[pending.node as usize - 1]
                    .raft
                    .as_ref()
                    .and_then(|r| r.group(gid as GroupId));
                let Some(g) = g.filter(|g| g.term() == pending.check.term) else {
                    continue;
                };
                if !g.leadership_confirmed(pending.check) {
                    if g.role() == Role::Leader {
                        self.groups[gid].checks.push(pending);
                    }
                    continue;
                }
                if pending.newest_led_term > pending.check.term {
                    return Err(format!(
                        "step {}: group {gid}: node {} confirmed its leadership of term {}, but term {} had a leader before the check began",
                        self.step, pending.node, pending.check.term, pending.newest_led_term
                    ));
                }
            }
        }
        Ok(())
    }

    fn fault(&mut self) {
        match self.rng.below(10) {
            0 => self.crash(),
            9 => self.pause(),
            8 => self.lose_data(),
            1 => self.restart_one(),
            2 => {
                // A partition: the nodes split in two sides that cannot reach each other.
                let side: Vec<bool> = (0..self.nodes.len()).map(|_| self.rng.chance(50)).collect();
                for a in 0..self.nodes.len() {
                    for b in 0..self.nodes.len() {
                        if side[a] != side[b] {
                            self.blocked.insert((a as NodeId + 1, b as NodeId + 1));
                        }
                    }
                }
                self.trace(|| format!("partition {side:?}"));
            }
            3 => {
                let a = 1 + self.rng.below(self.nodes.len() as u64);
                let b = 1 + self.rng.below(self.nodes.len() as u64);
                self.blocked.insert((a, b));
                self.trace(|| format!("cut {a}->{b}"));
            }
            4 => {
                self.blocked.clear();
                self.trace(|| "heal the network".into());
            }
            5 => self.change_membership(),
            6 => self.transfer_leader(),
            _ => self.trim_log(),
        }
    }

    /// Stops a node for about an election timeout or longer, as SIGSTOP does. (A node ticks
    /// about once in 10 to 30 steps, and times out elections after 10 to 20 ticks.)
    /// Leaders are paused more often than not: a stale leader is what tests leadership checks.
    fn pause(&mut self) {
        if (0..self.nodes.len()).any(|i| self.is_paused(i)) {
            return; // one at a time
        }
        let leaders: Vec<usize> = (0..self.groups.len() as GroupId)
            .flat_map(|gid| self.leaders(gid))
            .collect();
        let pool = match leaders.is_empty() || self.rng.chance(30) {
            true => self.running_nodes(),
            false => leaders,
        };
        if let Some(i) = self.pick(&pool) {
            self.nodes[i].paused_until = self.step + 100 + self.rng.below(400);
            let until = self.nodes[i].paused_until;
            self.trace(|| format!("pause node {} until step {until}", i + 1));
        }
    }

    fn crash(&mut self) {
        if let Some(i) = self.pick(&self.up_nodes()) {
            self.crash_node(i);
        }
    }

    fn crash_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(mut raft) = node.raft.take() else {
            return;
        };
        for (gid, stored) in node.stored.iter_mut() {
            if let Some(g) = raft.remove_group(*gid) {
                let mut log = g.into_log();
                log.crash(&mut self.rng);
                stored.log = Some(log);
            }
        }
        node.pending_sync.clear();
        self.trace(|| format!("crash node {}", i + 1));
    }

    /// A node comes back with a new, empty disk for one group's replica (it is down meanwhile).
    /// At most one replica of a group is without its data at a time, and only in groups of three
    /// or more voters: beyond that the group cannot elect a leader safely, as in Kafka without
    /// unclean leader election.
    fn lose_data(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        let hosts: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].stored.contains_key(&gid))
            .collect();
        if hosts
            .iter()
            .any(|&i| self.nodes[i].stored[&gid].hard_state.lost_data)
        {
            return;
        }
        // Every replica's configuration (committed or not) must keep three voters.
        let voters = |i: usize| {
            let n = &self.nodes[i];
            match n.raft.as_ref().and_then(|r| r.group(gid)) {
                Some(g) => g.membership().voters.len(),
                None => n.stored[&gid].meta.membership.current().voters.len(),
            }
        };
        if hosts.iter().any(|&i| voters(i) < 3) {
            return;
        }
        let Some(i) = self.pick(&hosts) else { return };
        if self.nodes[i].raft.is_some() {
            self.crash_node(i);
        }
        let log = SimLog::new(self.groups[gid as usize].committed.clone());
        let initial = self.groups[gid as usize].initial.clone();
        let node = &mut self.nodes[i];
        let node_id = node.id;
        let old = node.stored.insert(
            gid,
            Stored {
                hard_state: HardState {
                    lost_data: true,
                    ..HardState::default()
                },
                meta: Meta {
                    epochs: Default::default(),
                    membership: MembershipLog::new(initial),
                },
                commit: 0,
                log: Some(log),
            },
        );
        node.seen.remove(&gid);
        if let Some(lost) = old.and_then(|s| s.log) {
            self.groups[gid as usize].lost_logs.push((node_id, lost));
        }
        self.trace(|| format!("node {} lost its data of group {gid}", i + 1));
    }

    fn restart_one(&mut self) {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].raft.is_none())
            .collect();
        if let Some(i) = self.pick(&down) {
            self.restart(i);
        }
    }

    fn restart(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let configs: Vec<(GroupId, Config)> = self.nodes[i]
            .stored
            .keys()
            .map(|&gid| (gid, self.config(id, gid)))
            .collect();
        let node = &mut self.nodes[i];
        let mut raft = MultiRaft::new(id, HEARTBEAT_TICKS);
        for (gid, cfg) in configs {
            let stored = node.stored.get_mut(&gid).expect("listed above");
            let log = stored.log.take().expect("a down node's logs are stored");
            let g = Group::restore(
                cfg,
                log,
                stored.hard_state,
                stored.meta.clone(),
                stored.commit,
            );
            let seen = node.seen.entry(gid).or_default();
            seen.commit = g.commit(); // a new lifetime; checked against the checkpoint below
            raft.add_group(gid, g);
        }
        node.raft = Some(raft);
        self.trace(|| format!("restart node {}", i + 1));
        self.process(i);
    }

    fn heal(&mut self) {
        for i in 0..self.nodes.len() {
            if self.is_paused(i) {
                self.nodes[i].paused_until = self.step + 1; // wakes next step
            }
            if self.nodes[i].raft.is_none() {
                self.restart(i);
            }
        }
        self.blocked.clear();
        self.drop_pct = 0;
        self.dup_pct = 0;
        self.healed = true;
        self.trace(|| "heal everything".into());
    }

    fn change_membership(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        let Some(li) = self.pick(&self.leaders(gid)) else {
            return;
        };
        let leader = li as NodeId + 1;
        let Some(m) = self.nodes[li]
            .raft
            .as_ref()
            .and_then(|r| r.group(gid))
            .map(|g| g.membership().clone())
        else {
            return;
        };
        let outsiders: Vec<NodeId> = (1..=self.nodes.len() as NodeId)
            .filter(|&n| !m.is_member(n))
            .collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        // Keep three voters while a replica is catching up after losing its data (see
        // `lose_data`), two otherwise.
        let catching_up = self
            .nodes
            .iter()
            .any(|n| n.stored.get(&gid).is_some_and(|s| s.hard_state.lost_data));
        let min_voters = if catching_up { 3 } else { 2 };
        let removable: Vec<NodeId> = m
            .members()
            .filter(|&n| n != leader && (m.learners.contains(&n) || m.voters.len() > min_voters))
            .collect();
        let change = match self.rng.below(3) {
            0 => self.pick(&outsiders).map(MembershipChange::AddLearner),
            1 => self.pick(&learners).map(MembershipChange::Promote),
            _ => self.pick(&removable).map(MembershipChange::Remove),
        };
        let Some(change) = change else { return };
        let result = self.nodes[li]
            .raft
            .as_mut()
            .and_then(|r| r.group_mut(gid))
            .map(|g| g.propose_membership(change));
        self.trace(|| format!("group {gid} on node {leader}: {change:?} -> {result:?}"));
        if let (Some(Ok(_)), MembershipChange::AddLearner(x)) = (result, change) {
            self.create_replica(x, gid);
        }
        self.process(li);
    }

    fn transfer_leader(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        let Some(li) = self.pick(&self.leaders(gid)) else {
            return;
        };
        let Some(g) = self.nodes[li].raft.as_mut().and_then(|r| r.group_mut(gid)) else {
            return;
        };
        let voters: Vec<NodeId> = g
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != g.id())
            .collect();
        let Some(&target) = voters.get(self.rng.below(voters.len().max(1) as u64) as usize) else {
            return;
        };
        let result = g.transfer_leader(target);
        self.trace(|| {
            format!(
                "group {gid}: transfer from {} to {target}: {result:?}",
                li + 1
            )
        });
        self.process(li);
    }

    /// Retention on one replica: the log start moves to a boundary at or below what it holds
    /// committed on disk.
    fn trim_log(&mut self) {
        let gid = self.rng.below(self.groups.len() as u64);
        let Some(i) = self.pick(&self.up_nodes()) else {
            return;
        };
        let pick = self.rng.next_u64();
        let Some(g) = self.nodes[i].raft.as_mut().and_then(|r| r.group_mut(gid)) else {
            return;
        };
        let limit = g.durable_commit();
        let ends: Vec<Offset> = g
            .log()
            .entries()
            .iter()
            .map(|e| e.end())
            .filter(|&e| e <= limit)
            .collect();
        if ends.is_empty() {
            return;
        }
        let start = ends[(pick % ends.len() as u64) as usize];
        g.log_mut().trim_front(start);
        g.log_start_advanced();
        self.trace(|| format!("group {gid} on node {}: log start -> {start}", i + 1));
        self.process(i);
    }

    /// Every replica of a group, for a trace.
    fn dump(&self, gid: GroupId) -> String {
        let mut out = format!("group {gid}:");
        for n in &self.nodes {
            let Some(g) = n.raft.as_ref().and_then(|r| r.group(gid)) else {
                continue;
            };
            out += &format!(
                "\n  node {}: {:?} term {} leader {:?} commit {} log [{}, {}) synced {} members {:?} epochs {:?}",
                n.id, g.role(), g.term(), g.leader(), g.commit(), g.log().start(), g.log().end(),
                g.synced_end(), g.membership(), g.epochs()
            );
            for p in g.membership().members() {
                if let Some(pr) = g.progress(p) {
                    out += &format!("\n    {p}: {pr:?}");
                }
            }
        }
        out
    }

    // ---- the checker --------------------------------------------------------------------

    fn check(&mut self) -> Result<(), String> {
        let mut extensions = Vec::new();
        let step = self.step;
        for node in self.nodes.iter_mut() {
            let Some(raft) = node.raft.as_ref() else {
                continue;
            };
            for (gid, g) in raft.groups() {
                let at = || format!("step {step}: group {gid}: node {}", node.id);
                let check = &mut self.groups[gid as usize];
                let seen = node.seen.entry(gid).or_default();
                let stored = &node.stored[&gid];

                // Term, vote and commit never go backwards on a replica.
                if g.term() < seen.term {
                    return Err(format!(
                        "{}: term went back from {} to {}",
                        at(),
                        seen.term,
                        g.term()
                    ));
                }
                if g.term() == seen.term && seen.vote.is_some() && g.vote() != seen.vote {
                    return Err(format!("{}: changed its vote in term {}", at(), g.term()));
                }
                if g.commit() < seen.commit {
                    return Err(format!(
                        "{}: commit went back from {} to {}",
                        at(),
                        seen.commit,
                        g.commit()
                    ));
                }
                if g.commit() < stored.commit.min(g.log().end()) {
                    return Err(format!(
                        "{}: commit {} below its checkpoint {}",
                        at(),
                        g.commit(),
                        stored.commit
                    ));
                }
                if stored.commit > g.log().end() {
                    return Err(format!(
                        "{}: lost synced entries: checkpoint {} past the log end {}",
                        at(),
                        stored.commit,
                        g.log().end()
                    ));
                }
                *seen = Seen {
                    term: g.term(),
                    vote: g.vote(),
                    commit: g.commit(),
                };

                // Offsets are dense, and log matching: one (end, term) is one log prefix.
                let log = g.log();
                if let Some(start) = log.bad_reset.take() {
                    return Err(format!(
                        "{}: log restarted at {start}, which was never committed",
                        at()
                    ));
                }
                let entries = log.entries();
                for i in log.checked.get()..entries.len() {
                    let e = &entries[i];
                    let expected = if i == 0 {
                        log.start()
                    } else {
                        entries[i - 1].end()
                    };
                    if e.base != expected || e.last < e.base {
                        return Err(format!(
                            "{}: entry {e:?} does not follow offset {expected}",
                            at()
                        ));
                    }
                    let h = log.hash(i);
                    if *check.chain.entry((e.end(), e.term)).or_insert(h) != h {
                        return Err(format!(
                            "{}: log matching: the entry ending at {} in term {} follows a different log than elsewhere",
                            at(), e.end(), e.term
                        ));
                    }
                }
                log.checked.set(entries.len());

                // Election safety.
                if g.role() == Role::Leader {
                    let first = *check.leaders.entry(g.term()).or_insert(node.id);
                    if first != node.id {
                        return Err(format!(
                            "{}: second leader of term {} (first: node {first})",
                            at(),
                            g.term()
                        ));
                    }
                    // Leader completeness: what earlier terms committed is in this leader's log.
                    let required = check
                        .committed_by_term
                        .range(..g.term())
                        .map(|(_, &e)| e)
                        .max();
                    if let Some(end) = required {
                        let committed = check.committed.borrow();
                        if end >= log.start()
                            && log.hash_at(end) != committed.hashes.get(&end).copied()
                        {
                            return Err(format!(
                                "{}: leader of term {} lacks entries committed up to {end}",
                                at(),
                                g.term()
                            ));
                        }
                    }
                }

                // State-machine safety: the committed prefix is the same on every replica.
                let c = g.commit();
                let Some(h) = log.hash_at(c) else {
                    return Err(format!(
                        "{}: commit {c} is not an entry end in [{}, {}]",
                        at(),
                        log.start(),
                        log.end()
                    ));
                };
                let committed = check.committed.borrow();
                if c <= committed.end {
                    if committed.hashes.get(&c) != Some(&h) {
                        return Err(format!(
                            "{}: committed prefix up to {c} differs from the one committed before",
                            at()
                        ));
                    }
                } else {
                    extensions.push((gid, node.id, c, g.role() == Role::Leader, g.term()));
                }
            }
        }
        for (gid, node, c, leader, term) in extensions {
            self.extend_committed(gid, node, c, leader, term)?;
        }
        self.check_leadership_checks()
    }

    /// A replica committed past what was seen committed: record the new entries, checking that
    /// they follow the committed prefix, are on a majority of synced logs, and are the
    /// proposals at the offsets the leader gave them, each once.
    fn extend_committed(
        &mut self,
        gid: GroupId,
        node: NodeId,
        c: Offset,
        leader: bool,
        term: Term,
    ) -> Result<(), String> {
        let at = format!("step {}: group {gid}: node {node}", self.step);
        let n = &self.nodes[node as usize - 1];
        let Some(g) = n.raft.as_ref().and_then(|r| r.group(gid)) else {
            return Ok(());
        };
        let log = g.log();
        let check = &mut self.groups[gid as usize];
        let mut committed = check.committed.borrow_mut();
        if c <= committed.end {
            return Ok(());
        }
        let old_end = committed.end;
        if old_end >= log.start() && log.hash_at(old_end) != committed.hashes.get(&old_end).copied()
        {
            return Err(format!(
                "{at}: commits {c} on a log that differs from the committed prefix up to {old_end}"
            ));
        }
        if leader {
            let voters = &g.membership().voters;
            let holding = voters
                .iter()
                .filter(|&&v| {
                    let vn = &self.nodes[v as usize - 1];
                    let vlog = vn
                        .raft
                        .as_ref()
                        .and_then(|r| r.group(gid))
                        .map(|g| g.log())
                        .or(vn.stored.get(&gid).and_then(|s| s.log.as_ref()));
                    let holds =
                        |l: &SimLog| l.start() > c || l.durable_hash_at(c) == log.hash_at(c);
                    vlog.is_some_and(holds)
                        || check.lost_logs.iter().any(|(n, l)| *n == v && holds(l))
                })
                .count();
            if holding < voters.len() / 2 + 1 {
                return Err(format!(
                    "{at}: committed up to {c} in term {term} with it synced on {holding} of {} voters",
                    voters.len()
                ));
            }
            let e = check.committed_by_term.entry(term).or_default();
            *e = (*e).max(c);
        }
        for (i, e) in log.entries().iter().enumerate() {
            if e.end() <= old_end || e.end() > c {
                continue;
            }
            committed.hashes.insert(e.end(), log.hash(i));
            if let Some(id) = data_id(e) {
                if !check.committed_ids.insert(id) {
                    return Err(format!("{at}: proposal {id} committed twice"));
                }
                if check.proposals.get(&id) != Some(&(e.base, e.last)) {
                    return Err(format!(
                        "{at}: proposal {id} committed at {}..={} but assigned {:?}",
                        e.base,
                        e.last,
                        check.proposals.get(&id)
                    ));
                }
                self.commits += 1;
                if check.healed_proposals.contains(&id) {
                    check.healed_commit = true;
                }
            }
        }
        committed.end = c;
        Ok(())
    }
}
