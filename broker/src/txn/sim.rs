//! A seeded simulation of the transaction coordinator's rules (`machine.rs`): two instances of
//! one transactional id (the older becomes a zombie), a coordinator that crashes at any write
//! (its memory then rebuilt from its stored states), marker writes that fail, a clock that
//! runs transactions past their timeout, and partitions that keep producer epochs and open
//! transactions as the storage does. The driver here takes the steps `txn/mod.rs` takes, in
//! the same order. After every step the invariants are checked:
//!
//! - one outcome: a transaction is committed on every partition or aborted on every one;
//! - acknowledged means done: an end the client was told of has that outcome, and no
//!   partition still holds the transaction open;
//! - no hanging transaction: a transaction open on a partition is one the coordinator's
//!   stored state still means to end (its producer, Ongoing or prepared, the partition in it);
//! - fencing: a partition accepts a transaction's records only at the coordinator's current
//!   epoch;
//! - memory follows the log: the coordinator's state in memory is its last stored one.
//!
//! A failing seed replays exactly: `TERN_TXN_SIM_SEED=<seed> cargo test -p tern-broker txn::sim`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::machine::{self, EndStep, InitStep, Mutation, TickStep, TxnMeta, MUTATION};
use kafka_protocol::ResponseError;
use tern_protocol::txn_records::TxnStatus;

const PARTITIONS: [(&str, i32); 3] = [("a", 0), ("a", 1), ("b", 0)];
const TIMEOUT_MS: i32 = 1_000;
const EXPIRATION_MS: i64 = 60_000;
const STEPS: usize = 400;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A partition as the storage keeps it for transactions.
#[derive(Default)]
struct Partition {
    /// Each producer's newest epoch: older markers and records are refused.
    epochs: HashMap<i64, i16>,
    /// Each producer's open transaction (the simulation's number for it).
    open: HashMap<i64, u64>,
    /// How each transaction ended here: committed or not.
    ended: HashMap<u64, bool>,
}

/// One client instance of the transactional id.
#[derive(Default, Clone)]
struct Instance {
    producer: Option<(i64, i16)>,
    /// Its open transaction's number, and the partitions it added.
    txn: Option<u64>,
    added: BTreeSet<(String, i32)>,
    /// An end it asked for and was not answered: it asks again, the same (as clients retry
    /// commit_transaction), and does nothing else meanwhile.
    ending: Option<bool>,
}

/// A write the coordinator did not finish: it crashed.
struct Crashed;

struct World {
    rng: Rng,
    now: i64,
    /// The coordinator's stored states of the id, oldest first, and its memory.
    log: Vec<Option<TxnMeta>>,
    memory: Option<TxnMeta>,
    next_producer_id: i64,
    partitions: BTreeMap<(String, i32), Partition>,
    instances: [Instance; 2],
    next_txn: u64,
    /// Ends the clients were told of: transaction → committed.
    acknowledged: HashMap<u64, bool>,
    violations: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: Rng(seed),
            now: 1_000_000,
            log: Vec::new(),
            memory: None,
            next_producer_id: 1000,
            partitions: PARTITIONS
                .iter()
                .map(|&(t, p)| ((t.to_string(), p), Partition::default()))
                .collect(),
            instances: Default::default(),
            next_txn: 0,
            acknowledged: HashMap::new(),
            violations: Vec::new(),
        }
    }

    fn stored(&self) -> Option<&TxnMeta> {
        self.log.last().and_then(Option::as_ref)
    }

    /// The coordinator restarts: its memory is what it stored.
    fn crash(&mut self) {
        self.memory = self.stored().cloned();
    }

    /// Stores `meta` (appended to the log first, then taken in memory), unless the
    /// coordinator crashes before or after the append.
    fn store(&mut self, meta: Option<TxnMeta>) -> Result<(), Crashed> {
        if self.rng.chance(3) {
            self.crash();
            return Err(Crashed);
        }
        self.log.push(meta.clone());
        if self.rng.chance(3) {
            self.crash();
            return Err(Crashed);
        }
        self.memory = meta;
        Ok(())
    }

    /// Writes the marker of `prepared` to each of its partitions (one may fail, the
    /// coordinator may crash between them); completes it once all are written.
    fn complete(&mut self, prepared: TxnMeta) -> Result<Result<TxnMeta, i16>, Crashed> {
        let commit = machine::commits(&prepared);
        let mut failed = false;
        for tp in &prepared.partitions {
            if self.rng.chance(3) {
                self.crash();
                return Err(Crashed);
            }
            if self.rng.chance(10) {
                failed = true; // the partition's leader moved: written later
                continue;
            }
            let Some(partition) = self.partitions.get_mut(tp) else {
                continue;
            };
            let pid = prepared.producer_id;
            let newest = partition.epochs.get(&pid).copied().unwrap_or(-1);
            if prepared.producer_epoch < newest {
                continue; // a newer epoch wrote there: settled, as the driver counts it
            }
            partition.epochs.insert(pid, prepared.producer_epoch);
            if let Some(txn) = partition.open.remove(&pid) {
                partition.ended.insert(txn, commit);
            }
        }
        if failed {
            return Ok(Err(ResponseError::NotLeaderOrFollower.code()));
        }
        let done = machine::complete(prepared, self.now);
        self.store(Some(done.clone()))?;
        Ok(Ok(done))
    }

    /// Prepare, markers, complete; a failed marker leaves it prepared (CONCURRENT_TRANSACTIONS).
    fn end(&mut self, meta: TxnMeta, commit: bool) -> Result<Result<TxnMeta, i16>, Crashed> {
        let prepared = machine::prepare(meta, commit, self.now);
        self.store(Some(prepared.clone()))?;
        Ok(self
            .complete(prepared)?
            .map_err(|_| ResponseError::ConcurrentTransactions.code()))
    }

    fn init(&mut self, expected: Option<(i64, i16)>) -> Result<Result<(i64, i16), i16>, Crashed> {
        let (mut expected, mut new_id) = (expected, None);
        loop {
            let current = self.memory.clone();
            let step = match machine::init_step(
                current.as_ref(),
                expected.take(),
                new_id,
                TIMEOUT_MS,
                self.now,
            ) {
                Ok(step) => step,
                Err(code) => return Ok(Err(code)),
            };
            match step {
                InitStep::NewProducerId => {
                    new_id = Some(self.next_producer_id);
                    self.next_producer_id += 1;
                }
                InitStep::Complete(prepared) => {
                    if let Err(code) = self.complete(prepared)? {
                        return Ok(Err(code));
                    }
                }
                InitStep::Abort(fenced) => {
                    if let Err(code) = self.end(fenced, false)? {
                        return Ok(Err(code));
                    }
                }
                InitStep::Store(meta) => {
                    let answer = (meta.producer_id, meta.producer_epoch);
                    self.store(Some(meta))?;
                    return Ok(Ok(answer));
                }
            }
        }
    }

    fn tick(&mut self) -> Result<(), Crashed> {
        let Some(current) = self.memory.clone() else {
            return Ok(());
        };
        match machine::tick_step(&current, self.now, EXPIRATION_MS) {
            None => {}
            Some(TickStep::Complete) => {
                let _ = self.complete(current)?;
            }
            Some(TickStep::Abort(fenced)) => {
                let _ = self.end(fenced, false)?;
            }
            Some(TickStep::Forget) => self.store(None)?,
        }
        Ok(())
    }

    /// One client action, fault or tick.
    fn step(&mut self) {
        let i = self.rng.below(2) as usize;
        let tp = PARTITIONS[self.rng.below(PARTITIONS.len() as u64) as usize];
        let tp = (tp.0.to_string(), tp.1);
        match self.rng.below(100) {
            0..=9 => {
                let expected = self.instances[i].producer.filter(|_| self.rng.chance(30));
                if let Ok(Ok(producer)) = self.init(expected) {
                    self.instances[i] = Instance {
                        producer: Some(producer),
                        ..Default::default()
                    }
                }
            }
            10..=34 => {
                let Some((pid, epoch)) = self.instances[i].producer else {
                    return;
                };
                if self.instances[i].ending.is_some() {
                    return;
                }
                let current = self.memory.clone();
                let added =
                    machine::add_partitions(current.as_ref(), pid, epoch, [tp.clone()], self.now);
                let stored = match added {
                    Ok(Some(next)) => self.store(Some(next)).map(|_| true),
                    Ok(None) => Ok(true),
                    Err(_) => Ok(false),
                };
                if let Ok(true) = stored {
                    let instance = &mut self.instances[i];
                    if instance.txn.is_none() {
                        instance.txn = Some(self.next_txn);
                        self.next_txn += 1;
                    }
                    instance.added.insert(tp);
                }
            }
            35..=64 => self.produce(i, tp),
            65..=79 => {
                let (Some((pid, epoch)), Some(txn)) =
                    (self.instances[i].producer, self.instances[i].txn)
                else {
                    return;
                };
                let commit = match self.instances[i].ending {
                    Some(commit) => commit,
                    None => self.rng.chance(70),
                };
                self.instances[i].ending = Some(commit);
                let current = self.memory.clone();
                let result = match machine::end_step(current.as_ref(), pid, epoch, commit) {
                    Err(code) => Ok(Err(code)),
                    Ok(EndStep::Done) => Ok(Ok(())),
                    Ok(EndStep::End(meta)) => self.end(meta, commit).map(|r| r.map(|_| ())),
                };
                match result {
                    Ok(Ok(())) => {
                        self.acknowledged.insert(txn, commit);
                        self.instances[i].txn = None;
                        self.instances[i].added.clear();
                        self.instances[i].ending = None;
                    }
                    Ok(Err(code)) if code == ResponseError::ConcurrentTransactions.code() => {}
                    Ok(Err(_)) => self.instances[i] = Instance::default(), // fenced: start over
                    Err(Crashed) => {}
                }
            }
            80..=94 => {
                self.now += self.rng.below(TIMEOUT_MS as u64) as i64;
                let _ = self.tick();
            }
            _ => self.crash(),
        }
    }

    /// A transactional record of instance `i` to `tp`, if the coordinator verifies it.
    fn produce(&mut self, i: usize, tp: (String, i32)) {
        let instance = &self.instances[i];
        let (Some((pid, epoch)), Some(txn)) = (instance.producer, instance.txn) else {
            return;
        };
        if instance.ending.is_some() {
            return;
        }
        if machine::verify(self.memory.as_ref(), pid, epoch, &tp.0, tp.1).is_err() {
            return;
        }
        let stored_epoch = self.stored().map(|m| (m.producer_id, m.producer_epoch));
        if stored_epoch != Some((pid, epoch)) {
            self.violations.push(format!(
                "fencing: a record of producer {pid} epoch {epoch} accepted while the \
                 coordinator's is {stored_epoch:?}"
            ));
        }
        let Some(partition) = self.partitions.get_mut(&tp) else {
            return;
        };
        if epoch < partition.epochs.get(&pid).copied().unwrap_or(-1) {
            return; // the storage refuses an older epoch
        }
        partition.epochs.insert(pid, epoch);
        let open = *partition.open.entry(pid).or_insert(txn);
        if open != txn {
            self.violations.push(format!(
                "transaction {txn}'s record joined transaction {open}, still open on {tp:?}"
            ));
        }
    }

    fn check(&mut self) {
        if self.memory.as_ref() != self.stored() {
            self.violations.push(format!(
                "memory {:?} is not the stored state {:?}",
                self.memory,
                self.stored()
            ));
        }
        let mut outcomes: HashMap<u64, bool> = HashMap::new();
        for (tp, partition) in &self.partitions {
            for (&txn, &commit) in &partition.ended {
                if *outcomes.entry(txn).or_insert(commit) != commit {
                    self.violations.push(format!(
                        "transaction {txn} committed on one partition, aborted on another"
                    ));
                }
                if self.acknowledged.get(&txn).is_some_and(|&c| c != commit) {
                    self.violations.push(format!(
                        "transaction {txn} acknowledged, ended otherwise on {tp:?}"
                    ));
                }
            }
            for (&pid, &txn) in &partition.open {
                if self.acknowledged.contains_key(&txn) {
                    self.violations.push(format!(
                        "transaction {txn} acknowledged, still open on {tp:?}"
                    ));
                }
                let meant = self.stored().is_some_and(|m| {
                    m.producer_id == pid
                        && (m.status == TxnStatus::Ongoing || m.completing())
                        && m.partitions.contains(tp)
                });
                if !meant {
                    self.violations.push(format!(
                        "transaction {txn} hangs on {tp:?}: the coordinator's state is {:?}",
                        self.stored()
                    ));
                }
            }
        }
    }
}

/// Runs one seed: the violations found, with the step each was found at.
fn run(seed: u64) -> Vec<String> {
    let mut world = World::new(seed);
    for step in 0..STEPS {
        world.step();
        world.check();
        if !world.violations.is_empty() {
            return world
                .violations
                .iter()
                .map(|v| format!("seed {seed} step {step}: {v}"))
                .collect();
        }
    }
    Vec::new()
}

fn seeds() -> Vec<u64> {
    match std::env::var("TERN_TXN_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("TERN_TXN_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TERN_TXN_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
            (0..n).collect()
        }
    }
}

#[test]
fn the_coordinators_rules_keep_their_invariants() {
    MUTATION.with(|m| m.set(None));
    let mut ended = 0;
    for seed in seeds() {
        let violations = run(seed);
        assert!(
            violations.is_empty(),
            "{}\nreplay: TERN_TXN_SIM_SEED={seed} cargo test -p tern-broker txn::sim",
            violations.join("\n")
        );
        ended += 1;
    }
    assert!(ended > 0);
}

#[test]
fn a_seed_replays_exactly() {
    let trace = |seed| {
        let mut world = World::new(seed);
        for _ in 0..STEPS {
            world.step();
        }
        (world.log, world.acknowledged.len(), world.next_txn)
    };
    assert_eq!(trace(7), trace(7));
}

#[test]
fn the_simulation_ends_transactions_every_way() {
    // The runs reach what the invariants are about: commits, aborts, timeouts, fencing.
    let (mut commits, mut aborts, mut epochs) = (0, 0, 0);
    for seed in 0..50 {
        let mut world = World::new(seed);
        for _ in 0..STEPS {
            world.step();
        }
        commits += world.acknowledged.values().filter(|&&c| c).count();
        aborts += world
            .partitions
            .values()
            .flat_map(|p| p.ended.values())
            .filter(|&&c| !c)
            .count();
        epochs += world
            .log
            .iter()
            .flatten()
            .map(|m| m.producer_epoch)
            .max()
            .unwrap_or(0) as usize;
    }
    assert!(
        commits > 50 && aborts > 50 && epochs > 50,
        "{commits} {aborts} {epochs}"
    );
}

#[test]
fn mutations_are_caught() {
    for m in [
        Mutation::VerifyIgnoresEpoch,
        Mutation::InitLeavesOpenTransaction,
        Mutation::CompleteBeforeMarkers,
    ] {
        MUTATION.with(|c| c.set(Some(m)));
        let caught = (0..500).find_map(|seed| run(seed).into_iter().next());
        MUTATION.with(|c| c.set(None));
        match caught {
            Some(v) => eprintln!("txn mutation {m:?}: caught at {v}"),
            None => panic!("mutation {m:?} was not caught in 500 seeds"),
        }
    }
}
