//! The rigs of `headcount-perf async`: what a case runs on, and one repetition of it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headcount::{Engine, Topic};
use headcount_perf::rig::Team;
use tokio::runtime::Runtime;

/// What one repetition measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    /// ns per join+leave pair per worker thread.
    pub(super) ns: f64,
    /// The share of the run the worker threads spent on a CPU (thread-per-core: the least of
    /// its threads; async: the process's CPU time / (wall × N)).
    pub(super) oncpu: Option<f64>,
    /// Pairs, all threads or tasks together.
    pub(super) pairs: u64,
    /// `engine.stats().shared_ops` after − before.
    pub(super) shared_ops: u64,
    /// Pairs whose presence was dropped on another thread than the one it joined on.
    pub(super) migrated: u64,
    /// Async: the least busy worker's busy time (tokio's `worker_total_busy_duration`) / wall.
    pub(super) busy_min: Option<f64>,
    /// Async: times the workers parked (tokio's `worker_park_count`; each runs the park and
    /// unpark hooks).
    pub(super) parks: u64,
}

/// What a case runs on.
pub(super) enum Rig {
    /// OS threads with a shard each, kept for the whole run.
    Threads { engine: Engine, team: Team },
    /// A runtime and an engine; `join: false` runs the loop without the join and the drop.
    Tokio {
        rt: Arc<Runtime>,
        engine: Engine,
        orders: Arc<[Arc<[Topic]>]>,
        join: bool,
    },
}

/// One case: its rig, its repetitions' size and samples.
pub(super) struct Case {
    /// The prefix of its JSON keys.
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    pub(super) rig: Rig,
    /// Free shards of its engine once it was warmed up.
    pub(super) free_after_warmup: usize,
    pub(super) pairs_per_worker: u64,
    pub(super) samples: Vec<Sample>,
    pub(super) discarded: u32,
}

thread_local! {
    static MARK: u8 = const { 0 };
}

/// Tells live threads apart: the address of a thread-local of the calling thread.
#[inline]
pub(super) fn thread_mark() -> usize {
    MARK.with(|m| std::ptr::from_ref(m).addr())
}

/// The process's CPU time, where the platform has a clock for it.
pub(super) fn process_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        cpu_time::ProcessTime::try_now()
            .ok()
            .map(|t| t.as_duration())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// A task of the async cases: `pairs` times, take the next topic, join it (with an engine),
/// yield, leave. Without an engine (`yield_only`) the same loop without the join and the leave.
/// Returns how many of its iterations resumed on another thread than they started on.
pub(super) async fn join_yield_leave(
    engine: Option<Engine>,
    ts: Arc<[Topic]>,
    mut pos: usize,
    pairs: u64,
) -> u64 {
    let mut migrated = 0;
    for _ in 0..pairs {
        let t = ts[pos];
        pos += 1;
        if pos == ts.len() {
            pos = 0;
        }
        let at = thread_mark();
        let p = engine.as_ref().map(|e| e.join(t));
        black_box(t);
        tokio::task::yield_now().await;
        migrated += u64::from(thread_mark() != at);
        drop(p);
    }
    migrated
}

impl Rig {
    pub(super) fn engine(&self) -> &Engine {
        match self {
            Rig::Threads { engine, .. } => engine,
            Rig::Tokio { engine, .. } => engine,
        }
    }

    /// One repetition: `pairs_per_worker` pairs per worker thread (async: spread evenly over
    /// the tasks, rounded up).
    pub(super) fn run(&self, threads: usize, tasks: usize, pairs_per_worker: u64) -> Sample {
        let before = self.engine().stats().shared_ops;
        match self {
            Rig::Threads { engine, team } => {
                let r = team.run_detailed(pairs_per_worker);
                Sample {
                    ns: r.time.as_nanos() as f64 / pairs_per_worker as f64,
                    oncpu: r.oncpu,
                    pairs: pairs_per_worker * threads as u64,
                    shared_ops: engine.stats().shared_ops - before,
                    migrated: 0,
                    busy_min: None,
                    parks: 0,
                }
            }
            Rig::Tokio {
                rt,
                engine,
                orders,
                join,
            } => {
                let per_task = (pairs_per_worker * threads as u64)
                    .div_ceil(tasks as u64)
                    .max(1);
                let len = orders[0].len();
                let m = rt.metrics();
                let workers = m.num_workers();
                let busy0: Vec<Duration> = (0..workers)
                    .map(|w| m.worker_total_busy_duration(w))
                    .collect();
                let parks0: u64 = (0..workers).map(|w| m.worker_park_count(w)).sum();
                let cpu0 = process_cpu();
                let t0 = Instant::now();
                let handles: Vec<_> = (0..tasks)
                    .map(|k| {
                        let ts = orders[k % orders.len()].clone();
                        // Tasks that share an order start apart in it.
                        let pos = (k / orders.len()) * len / tasks.div_ceil(orders.len()).max(1);
                        let e = join.then(|| engine.clone());
                        rt.spawn(join_yield_leave(e, ts, pos % len, per_task))
                    })
                    .collect();
                let migrated = rt.block_on(async {
                    let mut m = 0;
                    for h in handles {
                        m += h.await.expect("a measured task panicked");
                    }
                    m
                });
                let wall = t0.elapsed();
                let cpu = process_cpu().zip(cpu0).map(|(c1, c0)| c1 - c0);
                let pairs = per_task * tasks as u64;
                let busy_min = (0..workers)
                    .map(|w| (m.worker_total_busy_duration(w) - busy0[w]).as_secs_f64())
                    .fold(f64::INFINITY, f64::min)
                    / wall.as_secs_f64().max(1e-9);
                let parks = (0..workers).map(|w| m.worker_park_count(w)).sum::<u64>() - parks0;
                Sample {
                    busy_min: Some(busy_min),
                    parks,
                    ns: wall.as_nanos() as f64 * threads as f64 / pairs as f64,
                    oncpu: cpu
                        .map(|c| c.as_secs_f64() / (wall.as_secs_f64() * threads as f64).max(1e-9)),
                    pairs,
                    shared_ops: engine.stats().shared_ops - before,
                    migrated,
                }
            }
        }
    }
}

/// A runtime of `threads` workers, bound to `engine` (`bind_runtime`) or plain.
pub(super) fn runtime(threads: usize, bind: Option<&Engine>) -> Arc<Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(threads).thread_name("perf-tokio");
    if let Some(e) = bind {
        e.bind_runtime(&mut b);
    }
    Arc::new(b.build().expect("build a tokio runtime"))
}
