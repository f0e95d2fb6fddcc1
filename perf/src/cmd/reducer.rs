//! `headcount-perf reducer`: the reducer's tick time with 0 %, 1 % and 100 % of the topics
//! changed (and an idle tick after a burst), at 2 and 16 shards, on
//! [`headcount_perf::rig::ReducerRig`]. Each figure is the median of `--ticks` ticks, as the
//! engine measures them (`stats().last_tick`).

use std::time::Instant;

use clap::Args as ClapArgs;
use headcount_perf::rig::ReducerRig;
use serde_json::{Map, Value, json};

use crate::report::{median, round};

// `reducer`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Topics, each joined once before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    topics: usize,
    /// Measured ticks per figure (the median is reported).
    #[arg(long, default_value_t = 9)]
    ticks: usize,
    /// Shard counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 16])]
    shards: Vec<usize>,
    /// Only these cases (comma-separated: 0pct, 1pct, 100pct, idle_after_1pct,
    /// idle_after_100pct); default all. Handy under a profiler.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
}

pub fn run(a: &Args) {
    let started = Instant::now();
    let t = short(a.topics);
    // (name, topics changed, then measure an idle tick instead)
    let cases: Vec<(&str, usize, bool)> = [
        ("0pct", 0, false),
        ("1pct", a.topics / 100, false),
        ("100pct", a.topics, false),
        ("idle_after_1pct", a.topics / 100, true),
        ("idle_after_100pct", a.topics, true),
    ]
    .into_iter()
    .filter(|(name, _, _)| a.cases.is_empty() || a.cases.iter().any(|c| c == name))
    .collect();
    let mut out = Map::new();
    out.insert("topics".into(), json!(a.topics));
    out.insert("ticks".into(), json!(a.ticks.max(1)));
    let mut table = Vec::new();
    for &shards in &a.shards {
        let suffix = if shards == 2 {
            String::new()
        } else {
            format!("_{shards}s")
        };
        let mut rig = ReducerRig::new(a.topics, shards);
        // Each case in its own block (two unmeasured ticks, then the measured ones), like the
        // criterion bench: interleaving would leave every table cache-warm from the 100 % ticks
        // and flatter the 1 % tick.
        let mut samples = vec![Vec::new(); cases.len()];
        for (i, &(_, changed, idle)) in cases.iter().enumerate() {
            for n in 0..a.ticks.max(1) + 2 {
                let d = if idle {
                    rig.idle_tick_after(changed)
                } else {
                    rig.tick_after_changing(changed)
                };
                if n >= 2 {
                    samples[i].push(d.as_nanos() as f64 / 1e3);
                }
            }
        }
        for (i, &(name, changed, _)) in cases.iter().enumerate() {
            let key = format!("tick_us_{t}_{name}{suffix}");
            let m = median(&samples[i]);
            let min = samples[i].iter().copied().fold(f64::INFINITY, f64::min);
            let max = samples[i].iter().copied().fold(0.0, f64::max);
            table.push((key.clone(), shards, changed, m, min, max));
            out.insert(key, json!(round(m, 1)));
        }
        out.insert(
            format!("rescans{suffix}"),
            json!(rig.engine.stats().rescans),
        );
    }
    out.insert(
        "elapsed_s".into(),
        json!(round(started.elapsed().as_secs_f64(), 2)),
    );
    if a.json {
        println!("{}", Value::Object(out));
        return;
    }
    println!(
        "reducer tick, {} topics, median of {} ticks (engine stats().last_tick)",
        a.topics,
        a.ticks.max(1)
    );
    println!(
        "{:<34} {:>6} {:>9} {:>11} {:>11} {:>11}",
        "", "shards", "changed", "median µs", "min", "max"
    );
    for (key, shards, changed, m, min, max) in table {
        println!("{key:<34} {shards:>6} {changed:>9} {m:>11.1} {min:>11.1} {max:>11.1}");
    }
    println!("elapsed_s {}", out["elapsed_s"]);
}

/// `1000` → `1k`, `1000000` → `1m`, anything else as is.
fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}
