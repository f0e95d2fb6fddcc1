//! `headcount-perf async`: headcount from async Rust (tasks on a multi-threaded tokio runtime)
//! beside the thread-per-core figure, measured in the same run (issue 11).
//!
//! The cases, `N` = `--threads`, `T` = `--tasks` (default 64 per worker thread):
//!
//! - `thread_per_core`: `N` OS threads (not pinned, as in `hotpath`), each with its own
//!   [`headcount::Shard`] (`engine.shard()`), joining a topic and dropping the presence at once,
//!   over the topics in a random order ([`Hotpath::headcount`], `hotpath`'s own loop). ns per
//!   pair = the slowest thread's time / its pairs.
//! - `thread_engine_join`: the same through `Engine::join`, each thread bound with
//!   `engine.bind_thread()` (what `bind_runtime` does in `on_thread_start`): the path the tasks
//!   take, without a runtime. `engine_join_vs_shard` = its ns / `thread_per_core`'s.
//! - `yield_only`: the bound runtime, the same tasks and loop without the join and the drop:
//!   the cost of the yield and the task switch, to be taken off the async figures.
//! - `async`: an engine with `.shards(N)` and a runtime built with
//!   `engine.bind_runtime(Builder::new_multi_thread().worker_threads(N))`: every worker owns a
//!   shard from its start. `T` tasks each loop: `engine.join(topic)`, `yield_now().await`, drop
//!   the presence. The yield puts the task back in the run queue, so the other tasks run between
//!   its join and its leave, and a task that another worker steals meanwhile leaves there.
//! - `plain`: the same, but the runtime is built without hooks (`Builder::new_multi_thread()`
//!   only) and the engine claims a shard for a worker on its first join (`claim_on_join(true)`,
//!   the default): what a user gets without `bind_runtime`.
//! - `shared_path`: the plain runtime with `.claim_on_join(false)`: no worker ever has a shard,
//!   so every join and leave goes through the shared core (atomic compare-and-swap): what the
//!   shards save.
//!
//! For the async cases, **ns per join+leave pair per worker thread = wall time × N / pairs**
//! (all tasks' pairs together): what a pair costs one worker, comparable with the
//! thread-per-core figure. `*_overhead_ns` = the case's median − `yield_only_ns`'s median (what
//! the join and the leave add to a task that yields anyway); `*_vs_tpc` = that overhead /
//! `thread_per_core_ns`. `*_shared_share` = joins and leaves counted in
//! `engine.stats().shared_ops` during the measured repetitions / (2 × their pairs).
//! `*_migrated_share` = the share of pairs whose presence was dropped on another thread than the
//! one it joined on (told apart by the address of a thread-local, which is what
//! `thread::current().id()` would tell, without its `Arc` clone).
//!
//! Every runtime runs a short warm-up first, so that each worker has started (`bind_runtime`
//! binds in `on_thread_start`), run tasks, and (plain) claimed its shard; `free_shards` after it
//! is reported (0: every worker holds one). Repetitions of the cases are interleaved (rep 1 of
//! each, in the order above, then rep 2, ...) and the median is reported, with every
//! repetition's figure in `samples_ns`; a repetition whose threads were on a CPU for less than
//! `--min-oncpu` of it is run again (up to `--retries` times). For the async cases, on-CPU is
//! the process's CPU time / (wall × N), and tokio's own metrics tell how the run went:
//! `busy_min` (per repetition, the least busy worker's busy time / wall: the rest of its
//! on-CPU time went to looking for work) and `parks` (how often workers went idle, each time
//! running the park and unpark hooks). At the end every engine runs a tick and must count 0
//! (`exact`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use headcount::{Engine, Topic};
use headcount_perf::rig::{Hotpath, Team, hot_engine, no_hook, timed, topic_orders};
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

use crate::report::{machine, median, round};
use rig::{Case, Rig, runtime};

mod rig;

// `async`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs, Clone, Debug)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads: the OS threads of the thread-per-core case, the workers of each runtime,
    /// and every engine's shards.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Tasks in all, spread over the workers by the runtime (default: 64 per worker thread).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Ops per worker thread per repetition, in every case (a join and its leave are 2 ops).
    /// Default: calibrated per case so that each repetition takes about --rep-ms.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Topics, visited in a random order (one order per worker thread; task k walks order
    /// k mod threads, from its own offset).
    #[arg(long, default_value_t = 1000)]
    pub topics: usize,
    /// Seed of the topic orders.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Repetitions per case (the median is reported).
    #[arg(long, default_value_t = 11)]
    pub reps: usize,
    /// Target duration of one repetition of one case, when --ops is not given.
    #[arg(long, default_value_t = 200)]
    pub rep_ms: u64,
    /// A repetition whose threads spent less than this share of it on a CPU was disturbed: it is
    /// run again (up to --retries times; the last try is kept). 0 disables.
    #[arg(long, default_value_t = 0.9)]
    pub min_oncpu: f64,
    /// Extra tries per repetition for --min-oncpu.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// The engines' reducer tick, in milliseconds (the library's default is 100).
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
}

/// Measures every case; the JSON object `run` prints.
pub fn measure(a: &Args) -> Value {
    let started = Instant::now();
    let n = a.threads.max(1);
    let tasks = a.tasks.unwrap_or(64 * n).max(1);
    let topics = a.topics.max(1);
    let tick = Duration::from_millis(a.tick_ms.max(1));

    // Thread-per-core: hotpath's rig and loop, one thread per shard.
    let hp = Hotpath::with_seed(topics, n, n, tick, None, a.seed);
    let team = hp.headcount(n, no_hook);

    // The async engines: the same configuration as hotpath's.
    let engine = |claim: bool| {
        hot_engine(topics, n, tick, None)
            .claim_on_join(claim)
            .start()
            .expect("start the engine")
    };
    let orders = |e: &Engine| -> Arc<[Arc<[Topic]>]> { topic_orders(e, topics, n, a.seed).into() };
    let bound = engine(true);
    let bound_rt = runtime(n, Some(&bound));
    let plain = engine(true);
    let plain_rt = runtime(n, None);
    let shared = engine(false);
    // Thread-per-core through `Engine::join`: each thread binds its implicit shard
    // (`bind_thread`, what `bind_runtime` does in `on_thread_start`), then joins and drops at
    // once, as in `thread_per_core`.
    let implicit = engine(false);
    let implicit_team = {
        let (e, os) = (implicit.clone(), orders(&implicit));
        Team::new(n, move |i| {
            e.bind_thread().expect("a free shard per thread");
            let (e, ts) = (e.clone(), os[i % os.len()].clone());
            let mut pos = 0;
            Box::new(move |pairs| {
                timed(|| {
                    for _ in 0..pairs {
                        let t = ts[pos];
                        pos += 1;
                        if pos == ts.len() {
                            pos = 0;
                        }
                        drop(e.join(t));
                    }
                })
            })
        })
    };
    let tokio_rig = |rt: &Arc<Runtime>, e: &Engine, join| Rig::Tokio {
        rt: rt.clone(),
        engine: e.clone(),
        orders: orders(e),
        join,
    };
    // yield_only runs right before the cases it is taken off, in every repetition.
    let rigs = [
        (
            "thread_per_core",
            "thread per core (Shard per OS thread)",
            Rig::Threads {
                engine: hp.engine.clone(),
                team,
            },
        ),
        (
            "thread_engine_join",
            "thread per core, Engine::join (bind_thread)",
            Rig::Threads {
                engine: implicit.clone(),
                team: implicit_team,
            },
        ),
        (
            "yield_only",
            "tokio, bind_runtime, yield only",
            tokio_rig(&bound_rt, &bound, false),
        ),
        (
            "async",
            "tokio, bind_runtime",
            tokio_rig(&bound_rt, &bound, true),
        ),
        (
            "plain",
            "tokio, plain (claim on first join)",
            tokio_rig(&plain_rt, &plain, true),
        ),
        (
            "shared_path",
            "tokio, plain, no shard (shared core)",
            tokio_rig(&plain_rt, &shared, true),
        ),
    ];
    let mut cases: Vec<Case> = rigs
        .into_iter()
        .map(|(key, label, rig)| {
            // Warm up: every worker starts, runs tasks and (plain) claims its shard.
            rig.run(n, tasks, 20_000);
            let free_after_warmup = rig.engine().stats().free_shards;
            Case {
                key,
                label,
                rig,
                free_after_warmup,
                pairs_per_worker: 0,
                samples: Vec::new(),
                discarded: 0,
            }
        })
        .collect();
    let setup = started.elapsed();

    // Pairs per repetition: fixed by --ops, or calibrated to about --rep-ms each.
    for c in &mut cases {
        c.pairs_per_worker = match a.ops {
            Some(ops) => (ops / 2).max(1),
            None => {
                let cal = 100_000;
                let ns = c.rig.run(n, tasks, cal).ns;
                let want = a.rep_ms as f64 * 1e6 / ns.max(0.1);
                (want as u64).clamp(10_000, 200_000_000)
            }
        };
    }

    // Measured repetitions, interleaved.
    for _ in 0..a.reps.max(1) {
        for c in &mut cases {
            let mut tries = 0;
            let s = loop {
                let s = c.rig.run(n, tasks, c.pairs_per_worker);
                let disturbed = s.oncpu.is_some_and(|f| f < a.min_oncpu);
                if !disturbed || tries == a.retries {
                    break s;
                }
                tries += 1;
                c.discarded += 1;
            };
            c.samples.push(s);
        }
    }

    // Every presence left: each engine must count 0 after a tick.
    let mut exact = true;
    let mut stale_joins = 0;
    for c in &cases {
        let e = c.rig.engine();
        e.sync();
        exact &= e.total() == 0;
        stale_joins += e.stats().stale_joins;
    }

    let ns = |key: &str| {
        cases.iter().find(|c| c.key == key).map_or(f64::NAN, |c| {
            median(&c.samples.iter().map(|s| s.ns).collect::<Vec<_>>())
        })
    };
    let tpc = ns("thread_per_core");
    let yield_ns = ns("yield_only");
    let mut out = Map::new();
    out.insert("threads".into(), json!(n));
    out.insert("tasks".into(), json!(tasks));
    out.insert("topics".into(), json!(topics));
    out.insert("seed".into(), json!(a.seed));
    out.insert("reps".into(), json!(a.reps.max(1)));
    out.insert("tick_ms".into(), json!(tick.as_millis() as u64));
    for c in &cases {
        let k = c.key;
        let v = ns(k);
        out.insert(format!("{k}_ns"), json!(round(v, 3)));
        let threads_case = matches!(c.rig, Rig::Threads { .. });
        if !threads_case && c.key != "yield_only" {
            out.insert(format!("{k}_overhead_ns"), json!(round(v - yield_ns, 3)));
            out.insert(format!("{k}_vs_tpc"), json!(round((v - yield_ns) / tpc, 3)));
        }
        let pairs: u64 = c.samples.iter().map(|s| s.pairs).sum();
        let shared: u64 = c.samples.iter().map(|s| s.shared_ops).sum();
        let migrated: u64 = c.samples.iter().map(|s| s.migrated).sum();
        if c.key != "yield_only" {
            out.insert(
                format!("{k}_shared_share"),
                json!(round(shared as f64 / (2 * pairs.max(1)) as f64, 6)),
            );
        }
        if !threads_case {
            out.insert(
                format!("{k}_migrated_share"),
                json!(round(migrated as f64 / pairs.max(1) as f64, 6)),
            );
        }
    }
    out.insert(
        "engine_join_vs_shard".into(),
        json!(round(ns("thread_engine_join") / tpc, 3)),
    );
    let per_case = |f: &dyn Fn(&Case) -> Value| -> Value {
        Value::Object(cases.iter().map(|c| (c.key.to_string(), f(c))).collect())
    };
    out.insert(
        "pairs_per_rep".into(),
        per_case(&|c| json!(c.samples.first().map_or(0, |s| s.pairs))),
    );
    out.insert(
        "shared_ops".into(),
        per_case(&|c| json!(c.samples.iter().map(|s| s.shared_ops).sum::<u64>())),
    );
    out.insert(
        "oncpu".into(),
        per_case(&|c| {
            let v: Vec<f64> = c.samples.iter().filter_map(|s| s.oncpu).collect();
            if v.is_empty() {
                Value::Null
            } else {
                json!(round(median(&v), 3))
            }
        }),
    );
    out.insert("cases".into(), per_case(&|c| json!(c.label)));
    // Every repetition's ns per pair, in order (the spread behind the medians).
    out.insert(
        "samples_ns".into(),
        per_case(&|c| json!(c.samples.iter().map(|s| round(s.ns, 2)).collect::<Vec<_>>())),
    );
    out.insert(
        "busy_min".into(),
        per_case(&|c| {
            json!(
                c.samples
                    .iter()
                    .map(|s| s.busy_min.map(|b| round(b, 3)))
                    .collect::<Vec<_>>()
            )
        }),
    );
    out.insert(
        "parks".into(),
        per_case(&|c| json!(c.samples.iter().map(|s| s.parks).sum::<u64>())),
    );
    out.insert("discarded_reps".into(), per_case(&|c| json!(c.discarded)));
    out.insert(
        "free_shards_after_warmup".into(),
        per_case(&|c| json!(c.free_after_warmup)),
    );
    out.insert("exact".into(), json!(exact));
    out.insert("stale_joins".into(), json!(stale_joins));
    out.insert("min_oncpu".into(), json!(a.min_oncpu));
    out.insert(
        "formula".into(),
        json!(
            "ns per join+leave pair per worker thread: async cases wall × threads / pairs; \
             thread_per_core the slowest thread's time / its pairs. X_overhead_ns = X_ns − \
             yield_only_ns; X_vs_tpc = X_overhead_ns / thread_per_core_ns; X_shared_share = \
             Δshared_ops / (2 × pairs); X_migrated_share = pairs dropped on another thread than \
             they joined on / pairs"
        ),
    );
    out.insert("machine".into(), machine());
    out.insert("setup_s".into(), json!(round(setup.as_secs_f64(), 2)));
    out.insert(
        "elapsed_s".into(),
        json!(round(started.elapsed().as_secs_f64(), 2)),
    );
    // The runtimes go down here, outside any async context.
    drop(cases);
    Value::Object(out)
}

/// Measures and prints.
pub fn run(a: &Args) {
    let v = measure(a);
    if a.json {
        println!("{v}");
        return;
    }
    println!(
        "async: {} topics, {} worker threads, {} tasks, median of {} reps",
        v["topics"], v["threads"], v["tasks"], v["reps"]
    );
    println!(
        "{:<18} {:>10} {:>13} {:>10} {:>10} {:>8}",
        "case", "ns/pair", "overhead ns", "vs tpc", "shared", "migrated"
    );
    for k in [
        "thread_per_core",
        "thread_engine_join",
        "yield_only",
        "async",
        "plain",
        "shared_path",
    ] {
        let get = |s: &str| {
            v.get(format!("{k}{s}"))
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |f| format!("{f:.2}"))
        };
        let pct = |s: &str| {
            v.get(format!("{k}{s}"))
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |f| format!("{:.2}%", 100.0 * f))
        };
        println!(
            "{:<18} {:>10} {:>13} {:>10} {:>10} {:>8}",
            k,
            get("_ns"),
            get("_overhead_ns"),
            get("_vs_tpc"),
            pct("_shared_share"),
            pct("_migrated_share"),
        );
    }
    println!("({})", v["formula"].as_str().unwrap_or_default());
    for k in [
        "cases",
        "samples_ns",
        "busy_min",
        "parks",
        "pairs_per_rep",
        "oncpu",
        "discarded_reps",
        "free_shards_after_warmup",
        "engine_join_vs_shard",
        "exact",
        "stale_joins",
        "elapsed_s",
    ] {
        println!("{k:<26} {}", v[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_case_is_exact_and_binds_every_worker() {
        let a = Args {
            json: true,
            threads: 2,
            tasks: Some(16),
            ops: Some(20_000),
            topics: 100,
            seed: 1,
            reps: 1,
            rep_ms: 10,
            min_oncpu: 0.0,
            retries: 0,
            tick_ms: 100,
        };
        let v = measure(&a);
        for k in [
            "thread_per_core_ns",
            "thread_engine_join_ns",
            "engine_join_vs_shard",
            "async_ns",
            "yield_only_ns",
            "async_overhead_ns",
            "async_vs_tpc",
            "async_shared_share",
            "async_migrated_share",
            "plain_ns",
            "plain_shared_share",
            "shared_path_shared_share",
        ] {
            assert!(v[k].is_number(), "missing {k}: {v}");
        }
        assert_eq!(v["exact"], true, "{v}");
        assert_eq!(v["stale_joins"], 0, "{v}");
        // Every bound worker owns a shard from its start: nothing goes through the shared core.
        assert_eq!(v["free_shards_after_warmup"]["async"], 0, "{v}");
        assert_eq!(v["async_shared_share"], 0.0, "{v}");
        assert_eq!(v["thread_per_core_shared_share"], 0.0, "{v}");
        assert_eq!(v["thread_engine_join_shared_share"], 0.0, "{v}");
        // No shard at all: every join and leave on the shared core.
        assert_eq!(v["shared_path_shared_share"], 1.0, "{v}");
    }
}
