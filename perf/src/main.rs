//! `headcount-perf`: headcount's perf harness. Measures, in one process and side by side, the hot
//! path against the baselines a user would otherwise write, and the reducer's tick.
//!
//! ```text
//! headcount-perf hotpath [--json] [--topics N] [--threads N] [--ops N]
//! headcount-perf reducer [--json] [--topics N] [--ticks N]
//! ```
//!
//! Every figure is the median of several repetitions, and the repetitions of the different
//! implementations are interleaved, so that a noisy neighbour disturbs them all alike.

mod cluster;
mod conns;
mod load;
mod proc;
mod resp;

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use headcount_perf::counting::{self, Counting, count_allocs};
use headcount_perf::rig::{self, Hotpath, ReducerRig, Team, no_hook};
use serde_json::{Map, Value, json};

/// Counts the allocations of the threads that ask (`hotpath`'s `allocs_per_op`).
#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Parser)]
#[command(name = "headcount-perf", version, about = "headcount's perf harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join + leave through a pre-resolved topic, and by name, against a shared AtomicI64,
    /// Mutex<HashMap<String, i64>> and DashMap<String, i64>.
    Hotpath(HotpathArgs),
    /// Reducer tick time with 0 %, 1 % and 100 % of the topics changed, at 2 and 16 shards.
    Reducer(ReducerArgs),
    /// A simulated cluster (seeded, simulated time) after a burst of joins: ticks and
    /// milliseconds until every node is exact, and bytes per node per tick.
    Converge(ConvergeArgs),
    /// The datagram format: bytes per changed topic, heartbeat size, encode and decode speed.
    Wire(WireArgs),
    /// Memory per client connection of `headcount serve` (idle, and holding one presence),
    /// beside redis-server (idle, and after one INCR) when installed.
    Conns(ConnsArgs),
    /// The seed's scenario: N `headcount serve` nodes, C client connections holding 1–3
    /// presences in Zipf topics, churn (reconnects, JOIN/LEAVE) at --rate joins/s (or a search
    /// for the highest rate with p99 ≤ 10 ms), then every node's counts checked.
    Load(LoadArgs),
    /// The same workload against headcount, redis-server with INCR/DECR, and redis-server with
    /// a set per topic; ratios of the sustained churn.
    BaselineRedis(BaselineArgs),
    /// CPU per op of `serve` counting vs `serve --no-count` (same commands, nothing counted).
    Overhead(OverheadArgs),
    /// Load at a moderate rate for a long time: RSS over time, exact at the end.
    Soak(SoakArgs),
    /// (Internal) one client process of the load harness; driven over stdin/stdout.
    #[command(hide = true)]
    LoadClient(LoadClientArgs),
}

#[derive(Args)]
struct LoadClientArgs {
    #[arg(long)]
    id: usize,
    #[arg(long)]
    procs: usize,
    #[arg(long)]
    target: String,
    #[arg(long)]
    servers: String,
    #[arg(long)]
    topics: usize,
    #[arg(long)]
    conns: usize,
    #[arg(long)]
    seed: u64,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
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
    duration: f64,
    /// Client processes (at least one per 15,000 connections).
    #[arg(long = "clients", default_value_t = 1)]
    threads: usize,
    /// The servers' tick.
    #[arg(long, default_value = "100ms")]
    tick: String,
}

impl LoadArgs {
    fn opts(&self) -> load::LoadOpts {
        load::LoadOpts {
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

#[derive(Args)]
struct BaselineArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Write the p99-vs-churn plot here (SVG).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct OverheadArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Counting/not-counting pairs to run (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Args)]
struct SoakArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Write the RSS-over-time plot here (SVG).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ConnsArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Client connections to open (mind `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

#[derive(Args)]
struct ConvergeArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Probability that a datagram is lost, per receiver (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Seeds to run (the worst and the median are reported).
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// Topics in the burst (long-tailed).
    #[arg(long, default_value_t = 2000)]
    topics: u64,
    /// Joins in the burst, spread over the nodes.
    #[arg(long, default_value_t = 100_000)]
    joins: u64,
}

#[derive(Args)]
struct WireArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn print(json: bool, v: &serde_json::Value) {
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

#[derive(Args)]
struct HotpathArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Topics, visited in a random order (a different one per thread).
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    /// Threads of the multi-threaded runs (each with its own shard).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Ops per thread per repetition, for every implementation (a join and a leave are 2 ops).
    /// Default: calibrated so that each repetition takes about --rep-ms.
    #[arg(long)]
    ops: Option<u64>,
    /// Repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Target duration of one repetition of one implementation, when --ops is not given.
    #[arg(long, default_value_t = 100)]
    rep_ms: u64,
    /// A repetition whose threads spent less than this share of it on a CPU was disturbed by
    /// other processes: it is discarded and run again (up to --retries times; the last try is
    /// kept). Not applied to the mutex at several threads, whose threads sleep on the lock.
    /// 0 disables.
    #[arg(long, default_value_t = 0.9)]
    min_oncpu: f64,
    /// Extra tries per repetition for --min-oncpu.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// The engine's reducer tick, in milliseconds (the library's default is 100).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Dirty-ring entries per shard (default: twice the topic count, rounded up to a power of two,
    /// at least the library's default of 16,384, so that no ring overflows).
    #[arg(long)]
    ring: Option<usize>,
}

#[derive(Args)]
struct ReducerArgs {
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

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, through the cpu-time crate).
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn main() {
    #[cfg(unix)]
    let _ = rig::CPU_CLOCK.set(thread_cpu_time);
    match Cli::parse().cmd {
        Cmd::Hotpath(a) => hotpath(&a),
        Cmd::Reducer(a) => reducer(&a),
        Cmd::Converge(a) => {
            if !(0.0..1.0).contains(&a.loss) || a.nodes < 2 || a.nodes > 4096 {
                eprintln!(
                    "headcount-perf converge: --loss must be in [0, 1) and --nodes in 2..=4096"
                );
                std::process::exit(2);
            }
            print(
                a.json,
                &cluster::converge(a.nodes, a.loss, a.seeds.max(1), a.topics, a.joins),
            )
        }
        Cmd::Wire(a) => print(a.json, &cluster::wire()),
        Cmd::Load(a) => done(a.json, load::load(&a.opts())),
        Cmd::LoadClient(a) => {
            if let Err(e) = load::client_main(
                a.id, a.procs, &a.target, &a.servers, a.topics, a.conns, a.seed,
            ) {
                eprintln!("headcount-perf load-client: {e}");
                std::process::exit(1);
            }
        }
        Cmd::BaselineRedis(a) => done(
            a.load.json,
            load::baseline(&a.load.opts(), a.plot.as_deref()),
        ),
        Cmd::Overhead(a) => done(a.load.json, load::overhead(&a.load.opts(), a.rounds)),
        Cmd::Soak(a) => {
            let mut o = a.load.opts();
            if a.load.duration == 10.0 {
                o.duration = Duration::from_secs(600);
            }
            done(a.load.json, load::soak(&o, a.plot.as_deref()))
        }
        Cmd::Conns(a) => match conns::run(a.connections.max(1), a.json) {
            Ok(v) => print(a.json, &v),
            Err(e) => {
                eprintln!("headcount-perf conns: {e}");
                std::process::exit(1);
            }
        },
    }
}

/// Prints a harness result, or its error (exit status 1).
fn done(json: bool, r: Result<serde_json::Value, String>) {
    match r {
        Ok(v) => print(json, &v),
        Err(e) => {
            eprintln!("headcount-perf: {e}");
            std::process::exit(1);
        }
    }
}

/// The median of `v` (the mean of the two middle values for an even length; 0 when empty).
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// `1000` → `1k`, `1000000` → `1m`, anything else as is.
fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// hotpath

struct Case {
    /// The JSON key of its median.
    key: String,
    label: String,
    make: Box<dyn Fn(&Hotpath) -> Team>,
    /// Ops per iteration of its worker: 2 for a join + leave pair, 1 for a join by name.
    ops_per_iter: u64,
    /// Iterations per thread per repetition.
    iters: u64,
    /// ns per op (per thread), one per repetition.
    samples: Vec<f64>,
    /// Per repetition: the smallest fraction of the run a worker thread spent on a CPU.
    oncpu: Vec<f64>,
    /// Per repetition: ns per op times that fraction (the CPU time an op took while running).
    cpu_ns: Vec<f64>,
    /// Repetitions discarded as disturbed (see --min-oncpu).
    discarded: u32,
}

fn hotpath(a: &HotpathArgs) {
    let started = Instant::now();
    let n = a.threads.max(1);
    let tick = Duration::from_millis(a.tick_ms.max(1));
    let hp = Hotpath::new(a.topics, n, n, tick, a.ring);
    let setup = started.elapsed();

    let case =
        |key: String, label: String, ops_per_iter, make: Box<dyn Fn(&Hotpath) -> Team>| Case {
            key,
            label,
            make,
            ops_per_iter,
            iters: 0,
            samples: Vec::new(),
            oncpu: Vec::new(),
            cpu_ns: Vec::new(),
            discarded: 0,
        };
    let mut cases = vec![
        case(
            "headcount_ns_1t".into(),
            "headcount join+leave, 1 thread".into(),
            2,
            Box::new(|h| h.headcount(1, count_allocs)),
        ),
        case(
            format!("headcount_ns_{n}t"),
            format!("headcount join+leave, {n} threads"),
            2,
            Box::new(move |h| h.headcount(n, no_hook)),
        ),
        case(
            format!("atomic_ns_{n}t"),
            format!("shared AtomicI64, {n} threads"),
            2,
            Box::new(move |h| h.atomic(n)),
        ),
        case(
            format!("mutex_ns_{n}t"),
            format!("Mutex<HashMap>, {n} threads"),
            2,
            Box::new(move |h| h.mutex(n)),
        ),
        case(
            format!("dashmap_ns_{n}t"),
            format!("DashMap, {n} threads"),
            2,
            Box::new(move |h| h.dashmap(n)),
        ),
        case(
            "join_by_name_ns".into(),
            "headcount join_by_name, 1 thread".into(),
            1,
            Box::new(|h| h.headcount_by_name()),
        ),
        case(
            "mutex_by_name_ns".into(),
            "Mutex<HashMap> by name, 1 thread".into(),
            1,
            Box::new(|h| h.mutex_by_name()),
        ),
        case(
            "dashmap_by_name_ns".into(),
            "DashMap by name, 1 thread".into(),
            1,
            Box::new(|h| h.dashmap_by_name()),
        ),
    ];

    // Iterations per repetition: fixed by --ops, or calibrated to about --rep-ms each.
    for c in &mut cases {
        c.iters = match a.ops {
            Some(ops) => (ops / c.ops_per_iter).max(1),
            None => {
                let team = (c.make)(&hp);
                team.run(20_000);
                let cal = 200_000;
                let ns_per_iter = team.run(cal).as_nanos() as f64 / cal as f64;
                let want = a.rep_ms as f64 * 1e6 / ns_per_iter.max(0.1);
                (want as u64).clamp(100_000, 200_000_000)
            }
        };
    }

    // Measured repetitions, interleaved: rep 1 of every case, then rep 2, ...
    let (mut allocs, mut alloc_ops) = (0u64, 0u64);
    for _ in 0..a.reps.max(1) {
        for c in &mut cases {
            let team = (c.make)(&hp);
            team.run((c.iters / 10).clamp(1, 100_000)); // warm: bind the shard, fault pages in
            let sleeps = n > 1 && c.key.starts_with("mutex_ns_");
            let mut tries = 0;
            let (run, before) = loop {
                let before = counting::allocs();
                let run = team.run_detailed(c.iters);
                let disturbed = run.oncpu.is_some_and(|f| f < a.min_oncpu);
                if !disturbed || sleeps || tries == a.retries {
                    break (run, before);
                }
                tries += 1;
                c.discarded += 1;
            };
            let d = run.time;
            c.oncpu.extend(run.oncpu);
            let ns = d.as_nanos() as f64 / (c.iters * c.ops_per_iter) as f64;
            c.cpu_ns.extend(run.oncpu.map(|f| ns * f.min(1.0)));
            if c.key == "headcount_ns_1t" {
                allocs += counting::allocs() - before;
                alloc_ops += c.iters * c.ops_per_iter;
            }
            c.samples
                .push(d.as_nanos() as f64 / (c.iters * c.ops_per_iter) as f64);
        }
    }

    let med = |key: &str| {
        cases
            .iter()
            .find(|c| c.key == key)
            .map_or(f64::NAN, |c| median(&c.samples))
    };
    let hc1 = med("headcount_ns_1t");
    let hcn = med(&format!("headcount_ns_{n}t"));
    let mut out = Map::new();
    out.insert("topics".into(), json!(a.topics));
    out.insert("threads".into(), json!(n));
    for c in &cases {
        out.insert(c.key.clone(), json!(round(median(&c.samples), 3)));
    }
    out.insert(
        format!("scaling_{n}t"),
        json!(round(n as f64 * hc1 / hcn, 3)),
    );
    for base in ["atomic", "dashmap", "mutex"] {
        out.insert(
            format!("vs_{base}_{n}t"),
            json!(round(med(&format!("{base}_ns_{n}t")) / hcn, 2)),
        );
    }
    out.insert(
        "allocs_per_op".into(),
        json!(allocs as f64 / alloc_ops.max(1) as f64),
    );
    out.insert("reps".into(), json!(a.reps.max(1)));
    out.insert("tick_ms".into(), json!(tick.as_millis() as u64));
    out.insert(
        "ring_capacity".into(),
        json!(a.ring.unwrap_or_else(|| rig::default_ring(a.topics))),
    );
    // One object per figure, keyed by case (cases without data left out).
    let per_case = |f: &dyn Fn(&Case) -> Option<Value>| -> Value {
        Value::Object(
            cases
                .iter()
                .filter_map(|c| Some((c.key.clone(), f(c)?)))
                .collect(),
        )
    };
    let median_of = |v: &[f64]| (!v.is_empty()).then(|| json!(round(median(v), 3)));
    out.insert(
        "ops_per_rep".into(),
        per_case(&|c| Some(json!(c.iters * c.ops_per_iter))),
    );
    // How much of each run its threads were on a CPU (median over reps; 1 = undisturbed).
    out.insert("oncpu".into(), per_case(&|c| median_of(&c.oncpu)));
    // ns per op scaled by that share: what an op costs while its thread runs. Meaningful for
    // headcount on an oversubscribed machine; not for the contended baselines, whose cost depends
    // on the other thread running at the same time.
    out.insert("cpu_ns".into(), per_case(&|c| median_of(&c.cpu_ns)));
    out.insert(
        "discarded_reps".into(),
        per_case(&|c| Some(json!(c.discarded))),
    );
    out.insert("min_oncpu".into(), json!(a.min_oncpu));
    let stats = hp.engine.stats();
    out.insert("engine_rescans".into(), json!(stats.rescans));
    out.insert("engine_shared_ops".into(), json!(stats.shared_ops));
    out.insert("setup_s".into(), json!(round(setup.as_secs_f64(), 2)));
    out.insert(
        "elapsed_s".into(),
        json!(round(started.elapsed().as_secs_f64(), 2)),
    );

    if a.json {
        println!("{}", Value::Object(out));
        return;
    }
    println!(
        "hotpath: {} topics (random order), {n} threads, median of {} reps",
        a.topics,
        a.reps.max(1)
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>12} {:>7} {:>8}",
        "", "ns/op", "min", "max", "ops/rep", "on-cpu", "cpu-ns"
    );
    for c in &cases {
        let min = c.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = c.samples.iter().copied().fold(0.0, f64::max);
        let (oncpu, cpu_ns) = if c.oncpu.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}%", 100.0 * median(&c.oncpu)),
                format!("{:.2}", median(&c.cpu_ns)),
            )
        };
        println!(
            "{:<36} {:>10.2} {:>10.2} {:>10.2} {:>12} {:>7} {:>8}",
            c.label,
            median(&c.samples),
            min,
            max,
            c.iters * c.ops_per_iter,
            oncpu,
            cpu_ns
        );
    }
    println!(
        "(ns per op per thread; a join + its leave is 2 ops; on-cpu: the share of the run its"
    );
    println!(" threads spent on a CPU, median over reps: well below 100% means a disturbed run;");
    println!(" cpu-ns: ns/op x on-cpu, the cost of an op while its thread runs; reps below");
    println!(
        " {:.0}% on-cpu were rerun, discarded: {})",
        100.0 * a.min_oncpu,
        out["discarded_reps"]
    );
    for k in [
        format!("scaling_{n}t"),
        format!("vs_atomic_{n}t"),
        format!("vs_dashmap_{n}t"),
        format!("vs_mutex_{n}t"),
        "allocs_per_op".to_string(),
        "engine_rescans".to_string(),
        "engine_shared_ops".to_string(),
        "elapsed_s".to_string(),
    ] {
        println!("{k:<36} {}", out[&k]);
    }
}

// ---------------------------------------------------------------------------------------------
// reducer

fn reducer(a: &ReducerArgs) {
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
