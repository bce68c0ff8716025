//! The simulation runs: many seeds in `cargo test`, a soak on demand, a replay of one seed, the
//! seeds that once failed, and the mutations the checker must catch.
#![cfg(test)]

use std::io::Write;

use super::{run, Options, Outcome};
use crate::group::Mutation;

/// Seeds that once found a bug; each must stay clean.
/// - 1010943, 1019933: a follower whose log start was past the leader's reset its log on an
///   InstallStart and lost committed, synced entries.
/// - 3014476, 3036132: a replica that lost its data voted again before it held entries a
///   leader had committed counting its acknowledgements from before the loss.
/// - 3008853, 3051336: a replica refused votes while its own (older) configuration made it a
///   learner, so a newer configuration that counted it as a voter could elect nobody.
const REGRESSION_SEEDS: &[u64] = &[1010943, 1019933, 3014476, 3036132, 3008853, 3051336];

#[derive(Default)]
struct Totals {
    seeds: u64,
    steps: u64,
    commits: u64,
    failures: Vec<(u64, String)>,
}

/// Runs seeds `first..` on both cores until `min_seeds` seeds and `min_steps` steps are done.
fn run_seeds(first: u64, min_seeds: u64, min_steps: u64) -> Totals {
    const THREADS: u64 = 2;
    const BATCH: u64 = 200;
    let mut totals = Totals::default();
    let mut next = first;
    while totals.seeds < min_seeds || totals.steps < min_steps {
        let batch: Vec<Vec<(u64, Outcome)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    s.spawn(move || {
                        (next + t..next + BATCH)
                            .step_by(THREADS as usize)
                            .map(|seed| (seed, run(seed, Options::for_seed(seed))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("simulation thread"))
                .collect()
        });
        next += BATCH;
        for (seed, o) in batch.into_iter().flatten() {
            totals.seeds += 1;
            totals.steps += o.steps;
            totals.commits += o.commits;
            if let Some(v) = o.violation {
                totals.failures.push((seed, v));
            }
        }
    }
    totals
}

fn report(t: &Totals) {
    // Written to stderr directly, so that the line shows even when cargo test captures output.
    let _ = writeln!(
        std::io::stderr(),
        "raft simulation: {} seeds, {} steps, {} commits, {} violations",
        t.seeds,
        t.steps,
        t.commits,
        t.failures.len()
    );
    for (seed, v) in t.failures.iter().take(10) {
        let _ = writeln!(
            std::io::stderr(),
            "  seed {seed}: {v}\n  replay: TERN_RAFT_SEED={seed} cargo test -p tern-raft --release sim::tests::replay -- --nocapture"
        );
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn simulation() {
    let totals = run_seeds(0, 1_000, 1_000_000);
    report(&totals);
    assert!(totals.commits > 0, "the simulation committed nothing");
    assert!(
        totals.failures.is_empty(),
        "safety or liveness violations (seeds above)"
    );
}

/// `TERN_RAFT_SEEDS=N [TERN_RAFT_FIRST_SEED=S] cargo test -p tern-raft --release soak -- --ignored`
#[test]
#[ignore = "long: a soak over as many seeds as TERN_RAFT_SEEDS asks"]
fn soak() {
    let first = env_u64("TERN_RAFT_FIRST_SEED").unwrap_or(1_000_000);
    let seeds = env_u64("TERN_RAFT_SEEDS").unwrap_or(100_000);
    let totals = run_seeds(first, seeds, 0);
    report(&totals);
    assert!(
        totals.failures.is_empty(),
        "safety or liveness violations (seeds above)"
    );
}

/// `TERN_RAFT_SEED=S cargo test -p tern-raft --release sim::tests::replay -- --nocapture`
/// replays one seed with every step traced; without the variable it does nothing.
#[test]
fn replay() {
    let Some(seed) = env_u64("TERN_RAFT_SEED") else {
        return;
    };
    let mut opts = Options::for_seed(seed);
    opts.trace = true;
    let o = run(seed, opts);
    eprintln!(
        "seed {seed}: {} steps, {} commits, {:?}",
        o.steps, o.commits, o.violation
    );
    assert!(o.violation.is_none());
}

#[test]
fn regression_seeds() {
    for &seed in REGRESSION_SEEDS {
        let o = run(seed, Options::for_seed(seed));
        assert!(o.violation.is_none(), "seed {seed}: {:?}", o.violation);
    }
}

#[test]
fn same_seed_same_run() {
    for seed in [1, 77, 4242] {
        let a = run(seed, Options::for_seed(seed));
        let b = run(seed, Options::for_seed(seed));
        assert_eq!(
            (a.steps, a.commits, a.violation),
            (b.steps, b.commits, b.violation)
        );
    }
}

/// Each deliberate bug must make the checker report a violation within a bounded number of
/// seeds: a checker that never fails proves nothing.
#[test]
fn mutations_are_caught() {
    const SEEDS: u64 = 1_000;
    for m in [
        Mutation::CommitWithoutMajority,
        Mutation::DoubleVote,
        Mutation::SkipLogMatching,
        Mutation::CountUnsyncedAsDurable,
        Mutation::VoteAfterDataLoss,
        Mutation::ConfirmWithoutHeartbeats,
    ] {
        let caught: Vec<(u64, String)> = (0..SEEDS)
            .filter_map(|seed| {
                let mut opts = Options::for_seed(seed);
                opts.mutation = Some(m);
                run(seed, opts).violation.map(|v| (seed, v))
            })
            .collect();
        let Some((seed, v)) = caught.first() else {
            panic!("mutation {m:?} was not caught in {SEEDS} seeds");
        };
        let _ = writeln!(
            std::io::stderr(),
            "raft mutation {m:?}: caught by {} of {SEEDS} seeds, first {seed}: {v}",
            caught.len()
        );
    }
}
