//! One load scenario against one target ([`run_target`]): start the servers, open every
//! connection, churn at `--rate` (or climb a ladder of rates until one is not sustained), check
//! that the counts are exact, and report — the common core of `load`, `baseline-redis` and
//! `overhead`. Also the flags and settings those subcommands and `soak` share.

use std::time::Duration;

use clap::Args as ClapArgs;
use serde_json::{Value, json};

use super::harness::{Harness, PER_CLIENT_PROC, Step, Workload};
use super::servers::{Servers, Target};
use crate::proc::raise_nofile;

// The flags `load`, `baseline-redis`, `overhead` and `soak` share (no doc comment: clap would
// take it for the subcommand's help).
#[derive(ClapArgs, Clone)]
pub struct LoadArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// `headcount serve` processes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Worker threads per node.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Client connections (simulated users), spread over the nodes.
    #[arg(long, default_value_t = 120_000)]
    connections: usize,
    /// Topics (Zipf-distributed popularity).
    #[arg(long, default_value_t = 10_000)]
    topics: usize,
    /// Joins per second (as many leaves); without it, climb a ladder of rates until p99 > 10 ms.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of churn (per step of the ladder).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Client processes (at least one per 15,000 connections).
    #[arg(long = "clients", default_value_t = 1)]
    threads: usize,
    /// The servers' tick.
    #[arg(long, default_value = "100ms")]
    tick: String,
}

impl LoadArgs {
    /// The settings these flags stand for (counts at least 1).
    pub fn opts(&self) -> LoadOpts {
        LoadOpts {
            nodes: self.nodes.max(1),
            workers: self.workers.max(1),
            connections: self.connections.max(1),
            topics: self.topics.max(1),
            rate: self.rate.filter(|r| *r > 0.0),
            duration: Duration::from_secs_f64(self.duration.max(0.1)),
            threads: self.threads.max(1),
            tick: self.tick.clone(),
            quiet: false,
        }
    }
}

/// Settings shared by the subcommands.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    pub nodes: usize,
    pub workers: usize,
    pub connections: usize,
    pub topics: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub threads: usize,
    pub tick: String,
    pub quiet: bool,
}

impl LoadOpts {
    /// The workload these settings describe (seeded with a fixed seed).
    pub fn workload(&self) -> Workload {
        Workload {
            connections: self.connections,
            topics: self.topics,
            threads: self.threads,
            seed: 0x5eed,
        }
    }
    /// Prints a progress line on standard error, unless quiet.
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", s.as_ref());
        }
    }
}

/// Rates tried when searching for the maximum sustained churn (joins per second).
const LADDER: [f64; 12] = [
    5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0, 60_000.0, 75_000.0, 90_000.0,
    110_000.0, 130_000.0, 160_000.0,
];

/// Runs the workload against one target: open, then either churn at `rate` or climb the
/// ladder until a step is not sustained; then check exactness.
pub fn run_target(o: &LoadOpts, target: Target, counting: bool) -> Result<Value, String> {
    let nofile = raise_nofile(PER_CLIENT_PROC as u64 + 1000)?;
    let per_server = match target {
        Target::Headcount => o.connections.div_ceil(o.nodes),
        _ => o.connections,
    };
    if per_server + 200 > nofile as usize {
        return Err(format!(
            "each server process would hold {per_server} connections, but the open-file limit \
             here is {nofile} (the hard limit; raising it needs CAP_SYS_RESOURCE): use more \
             --nodes or fewer --connections"
        ));
    }
    let servers = match target {
        Target::Headcount => Servers::headcount(o.nodes, o.workers, &o.tick, counting)?,
        t => Servers::redis(t, o.connections + 1000)?,
    };
    o.say(format!(
        "{}: opening {} connections to {} server(s)…",
        target.name(),
        o.connections,
        servers.addrs.len()
    ));
    let mut harness = Harness::open(servers, o.workload())?;
    o.say(format!(
        "{}: {} connections open in {:.1}s ({} errors); {} presences",
        target.name(),
        o.connections,
        harness.setup_secs,
        harness.setup_errors,
        harness.ledger.iter().sum::<i64>()
    ));
    let mut steps = Vec::new();
    let mut best: Option<Step> = None;
    match o.rate {
        Some(r) => {
            let s = harness.churn(r, o.duration)?;
            o.say(format!("{}: {}", target.name(), s.json()));
            best = Some(s.clone());
            steps.push(s);
        }
        None => {
            for &r in &LADDER {
                let mut s = harness.churn(r, o.duration)?;
                o.say(format!("{}: {}", target.name(), s.json()));
                if !s.sustained() && s.errors == 0 {
                    // One retry at the same rate: a noisy neighbour should not end the climb.
                    steps.push(s);
                    s = harness.churn(r, o.duration)?;
                    o.say(format!("{} (retry): {}", target.name(), s.json()));
                }
                let ok = s.sustained();
                steps.push(s.clone());
                if !ok {
                    break;
                }
                best = Some(s);
            }
        }
    }
    let exact_ms = if counting {
        harness.wait_exact(Duration::from_secs(10))?
    } else {
        None
    };
    let rss_each = harness.servers.rss_each();
    let rss: u64 = rss_each.iter().sum();
    let last = steps.last().cloned();
    let shown = best.clone().or(last).ok_or("no churn step ran")?;
    let errors = harness.setup_errors + steps.iter().map(|s| s.errors).sum::<u64>();
    let mut v = json!({
        "target": target.name(),
        "servers": harness.servers.addrs.len(),
        "connections": o.connections,
        "topics": o.topics,
        "presences": harness.ledger.iter().sum::<i64>(),
        "setup_s": (harness.setup_secs * 10.0).round() / 10.0,
        "exact": exact_ms.is_some(),
        "time_to_exact_ms": exact_ms.map(|m| (m * 10.0).round() / 10.0),
        "errors": errors,
        "rss_bytes": rss,
        "rss_bytes_per_node": rss_each,
        "max_sustained_joins_per_s": best.as_ref().map_or(0.0, |b| b.joins_per_s.round()),
        "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
    });
    if let (Some(m), Value::Object(shown)) = (v.as_object_mut(), shown.json()) {
        for (k, x) in shown {
            m.entry(k).or_insert(x);
        }
    }
    Ok(v)
}
