//! `headcount-perf failover`: a zoned simulated cluster (`Sim::zoned`) whose first zone's
//! speaker crashes (or stops, with `--graceful`) after a burst: how long until every view is
//! exact, how long the other zones miss the zone, and whether any node ever counts more than
//! the cluster did before (the zone counted twice: the successor's table beside the dead
//! speaker's). Simulated time, seeded.

use std::time::Duration;

use clap::Args as ClapArgs;
use headcount::cluster::sim::{Faults, Sim, topic_hash};
use serde_json::{Value, json};

use crate::report::{median, print};

/// The tick every simulated node runs.
const TICK: Duration = Duration::from_millis(100);
/// How often the views are checked (simulated).
const STEP: Duration = Duration::from_millis(10);
/// A seed not exact this long after the crash counts as this long (and in `not_exact`).
const LIMIT: Duration = Duration::from_secs(10);

// `failover`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 48)]
    nodes: usize,
    /// Zones they are grouped in.
    #[arg(long, default_value_t = 6)]
    zones: usize,
    /// Probability that a datagram is lost, per receiver (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seeds to run (the worst and the median are reported).
    #[arg(long, default_value_t = 12)]
    seeds: u64,
    /// Topics in the burst before the crash.
    #[arg(long, default_value_t = 2_000)]
    topics: u64,
    /// Joins in the burst.
    #[arg(long, default_value_t = 100_000)]
    joins: u64,
    /// The speaker stops gracefully (a goodbye) instead of crashing.
    #[arg(long)]
    graceful: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Checks the flags, runs [`failover`] and prints its figures.
pub fn run(a: &Args) {
    if !(0.0..1.0).contains(&a.loss) || a.zones < 2 || a.zones * 2 > a.nodes || a.nodes > 4096 {
        eprintln!(
            "headcount-perf failover: --loss must be in [0, 1), --zones at least 2, and \
             --nodes at most 4096 and at least two a zone"
        );
        std::process::exit(2);
    }
    print(
        a.json,
        &failover(
            a.nodes,
            a.zones,
            a.loss,
            a.seeds.max(1),
            (a.topics, a.joins),
            a.graceful,
        ),
    )
}

/// One seed: milliseconds to exact, the longest a node of another zone counted less than the
/// truth, and the most any node counted above what the cluster counted before the speaker
/// went (each summed over the burst's topics).
fn run_seed(
    nodes: usize,
    zones: usize,
    loss: f64,
    seed: u64,
    (topics, joins): (u64, u64),
    graceful: bool,
) -> (Option<u64>, u64, u64) {
    let mut s = Sim::zoned(nodes, zones, seed, TICK, |_| {});
    s.faults = Faults {
        loss,
        delay: Duration::from_millis(1),
        ..Faults::default()
    };
    s.run_for(TICK * 13);
    s.burst(seed, joins, topics);
    // Formed and exact (a seed that is not within the limit is reported as such below).
    let _ = s.ticks_to_exact(100);
    let hashes: Vec<u64> = (0..topics).map(topic_hash).collect();
    let sum = |s: &Sim, i: usize| hashes.iter().map(|&h| s.view(i, h)).sum::<u64>();
    let before: u64 = hashes.iter().map(|&h| s.truth(h)).sum();
    let speaker = (0..s.len()).find(|&i| s.zone(i) == Some(1) && s.speaks(i));
    let Some(speaker) = speaker else {
        return (None, 0, 0);
    };
    if graceful {
        s.stop(speaker);
    } else {
        s.crash(speaker);
    }
    let truth: u64 = hashes.iter().map(|&h| s.truth(h)).sum();
    let mut under = vec![0u64; s.len()];
    let mut over = 0u64;
    let mut t = Duration::ZERO;
    let exact = loop {
        if s.exact() {
            break Some(t.as_millis() as u64);
        }
        if t >= LIMIT {
            break None;
        }
        for i in (0..s.len()).filter(|&i| i != speaker) {
            let v = sum(&s, i);
            over = over.max(v.saturating_sub(before));
            if s.zone(i) != Some(1) && v < truth {
                under[i] += STEP.as_millis() as u64;
            }
        }
        s.run_for(STEP);
        t += STEP;
    };
    (exact, under.into_iter().max().unwrap_or(0), over)
}

/// Runs `seeds` seeds of `nodes` nodes in `zones` zones (tick 100 ms, one-way delay 1 ms,
/// `loss`), a burst of `joins` joins over `topics` topics, then zone 1's speaker crashes (or
/// stops: `graceful`) and the views are checked every 10 ms (simulated) until exact.
///
/// - `ms_to_exact`: from the crash until every running node's view of every topic is exact,
///   worst over seeds (`_median` too); not within 10 s: 10 s, and counted in `not_exact`.
/// - `gap_ms`: the longest time one node of another zone counted less than the truth (summed
///   over the topics), worst over seeds: the zone missing while its successor takes over.
/// - `overcount`, `seeds_overcounting`: the most any node counted above what the cluster
///   counted before the crash, worst over seeds, and in how many seeds it happened (the
///   zone counted twice).
pub fn failover(
    nodes: usize,
    zones: usize,
    loss: f64,
    seeds: u64,
    burst: (u64, u64),
    graceful: bool,
) -> Value {
    let mut ms = Vec::new();
    let (mut gap, mut over, mut overcounting, mut not_exact) = (0u64, 0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let (m, g, o) = run_seed(nodes, zones, loss, seed, burst, graceful);
        ms.push(m.unwrap_or_else(|| {
            not_exact += 1;
            LIMIT.as_millis() as u64
        }) as f64);
        gap = gap.max(g);
        over = over.max(o);
        overcounting += u64::from(o > 0);
    }
    json!({
        "nodes": nodes,
        "zones": zones,
        "loss": loss,
        "seeds": seeds,
        "topics": burst.0,
        "joins": burst.1,
        "graceful": graceful,
        "ms_to_exact": ms.iter().copied().fold(0.0, f64::max) as u64,
        "ms_to_exact_median": median(&ms),
        "not_exact": not_exact,
        "gap_ms": gap,
        "overcount": over,
        "seeds_overcounting": overcounting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash takes about `dead_after` (3 s) to leave every view; a goodbye, a few ticks; in
    /// neither does any node count the zone twice.
    #[test]
    fn failover_reports_sane_figures() {
        let crash = failover(12, 3, 0.0, 2, (200, 3_000), false);
        let stop = failover(12, 3, 0.0, 2, (200, 3_000), true);
        for v in [&crash, &stop] {
            assert_eq!(v["not_exact"], 0, "{v}");
            assert_eq!(v["seeds_overcounting"], 0, "{v}");
            assert!(v["gap_ms"].as_u64().unwrap() > 0, "{v}");
        }
        let ms = |v: &Value| v["ms_to_exact"].as_u64().unwrap();
        assert!((2_900..=4_000).contains(&ms(&crash)), "{crash}");
        assert!(ms(&stop) <= 600, "{stop}");
    }
}
