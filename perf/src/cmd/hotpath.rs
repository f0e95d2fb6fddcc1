//! `headcount-perf hotpath`: join + leave through a pre-resolved topic, and join by name,
//! against the baselines a user would otherwise write (a shared `AtomicI64`,
//! `Mutex<HashMap<String, i64>>`, `DashMap<String, i64>`), on the workloads of
//! [`headcount_perf::rig::Hotpath`].
//!
//! Every figure is the median of several repetitions, and the repetitions of the different
//! implementations are interleaved, so that a noisy neighbour disturbs them all alike. The
//! one-thread headcount loop also counts its allocations (`allocs_per_op`).

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use headcount_perf::counting::{self, count_allocs};
use headcount_perf::rig::{Hotpath, Team, default_ring, no_hook};
use serde_json::{Map, Value, json};

use crate::report::{median, round};

// `hotpath`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
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

/// One implementation measured: its team, and what its repetitions measured.
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

pub fn run(a: &Args) {
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
        json!(a.ring.unwrap_or_else(|| default_ring(a.topics))),
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
