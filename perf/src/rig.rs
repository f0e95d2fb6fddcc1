//! Workloads shared by `headcount-perf` (`hotpath`, `reducer`) and the criterion benches
//! (`perf/benches/hotpath.rs`, `perf/benches/reducer.rs`), so that both measure exactly the same
//! loops.
//!
//! - [`Hotpath`]: an engine with `topics` interned topics, and the baselines a user would
//!   otherwise write (one shared `AtomicI64`, `Mutex<HashMap<String, i64>>`,
//!   `DashMap<String, i64>`) holding the same names. Each thread visits the topics in its own
//!   random order ([`crate::rng::shuffled`]).
//! - [`Team`]: worker threads that start each measured run together on a barrier and time
//!   themselves; a run's time is the slowest thread's.
//! - [`ReducerRig`]: an engine that never ticks by itself, with every topic joined once, whose
//!   ticks are run with [`headcount::Engine::sync`] after changing a chosen number of topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use headcount::{Engine, Presence, Shard, Topic};

use crate::rng::shuffled;

/// The name of topic `i` in every workload.
pub fn topic_name(i: usize) -> String {
    format!("room:{i}")
}

/// Runs `f` and returns how long it took.
#[inline]
pub fn timed(f: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

/// Called with `true` just before and `false` just after a worker's measured loop (outside the
/// timed region); the perf binary uses it to count allocations. [`no_hook`] does nothing.
pub type Hook = fn(bool);

/// A [`Hook`] that does nothing.
pub fn no_hook(_: bool) {}

/// The calling thread's CPU time, if the binary installed a clock (`headcount-perf` does, with
/// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`); used to tell how much of a measurement a worker
/// thread actually spent on a CPU.
pub static CPU_CLOCK: OnceLock<fn() -> Duration> = OnceLock::new();

/// What one [`Team::run_detailed`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// The slowest thread's own measurement.
    pub time: Duration,
    /// The smallest fraction of its run that a thread spent on a CPU (`None` without a
    /// [`CPU_CLOCK`]). Well below 1 means the machine was oversubscribed during the run.
    pub oncpu: Option<f64>,
}

/// A worker: given an iteration count, runs that many iterations and returns the time it
/// measured itself.
pub type Worker = Box<dyn FnMut(u64) -> Duration>;

/// `n` persistent worker threads. Thread `i` builds its worker with `make(i)` on itself (so a
/// [`Shard`] it claims there binds to it). [`Team::run`] hands every thread the same iteration
/// count; they start together on a barrier, and the run takes as long as the slowest thread.
pub struct Team {
    go: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<(Duration, Option<f64>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Team {
    /// Starts `n` threads; thread `i` builds its worker with `make(i)`. Returns when every
    /// worker is built.
    pub fn new<F>(n: usize, make: F) -> Team
    where
        F: Fn(usize) -> Worker + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let barrier = Arc::new(Barrier::new(n));
        let (done_tx, done) = mpsc::channel();
        let mut go = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut ready = Vec::with_capacity(n);
        for i in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<u64>();
            let (ready_tx, ready_rx) = mpsc::channel::<()>();
            let (make, barrier, done_tx) = (make.clone(), barrier.clone(), done_tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("perf-worker-{i}"))
                .spawn(move || {
                    let mut w = make(i);
                    drop(make);
                    let _ = ready_tx.send(());
                    let clock = CPU_CLOCK.get().copied();
                    while let Ok(iters) = go_rx.recv() {
                        barrier.wait();
                        let (c0, t0) = (clock.map(|f| f()), Instant::now());
                        let d = w(iters);
                        let (c1, wall) = (clock.map(|f| f()), t0.elapsed());
                        let oncpu = c0
                            .zip(c1)
                            .map(|(c0, c1)| (c1 - c0).as_secs_f64() / wall.as_secs_f64().max(1e-9));
                        if done_tx.send((d, oncpu)).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawn a worker thread");
            go.push(go_tx);
            threads.push(t);
            ready.push(ready_rx);
        }
        for r in ready {
            r.recv()
                .expect("a worker thread failed to start (panicked in its setup)");
        }
        Team { go, done, threads }
    }

    /// Runs `iters` iterations on every thread at once; returns the slowest thread's time.
    pub fn run(&self, iters: u64) -> Duration {
        self.run_detailed(iters).time
    }

    /// [`Team::run`], also telling how much of the run the threads spent on a CPU.
    pub fn run_detailed(&self, iters: u64) -> Run {
        for g in &self.go {
            g.send(iters).expect("worker thread alive");
        }
        let mut run = Run {
            time: Duration::ZERO,
            oncpu: None,
        };
        for _ in 0..self.go.len() {
            let (d, oncpu) = self.done.recv().expect("worker thread result");
            run.time = run.time.max(d);
            run.oncpu = match (run.oncpu, oncpu) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        run
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.go.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The dirty-ring size the hot-path workloads use by default: room for every topic twice (one
/// epoch's first changes, plus the next epoch's made before the reducer drains the ring), so
/// that no ring overflows even when every topic changes every tick.
pub fn default_ring(topics: usize) -> usize {
    (2 * topics).next_power_of_two().max(1 << 14)
}

/// The engine configuration of every hot-path workload ([`Hotpath`], `headcount-perf async`):
/// `shards` shards, ticking every `tick`, room for `topics` topics, and a dirty ring of `ring`
/// entries per shard (`None`: [`default_ring`]). Returned unstarted, so a caller can add options
/// (`claim_on_join`) before [`headcount::Builder::start`].
pub fn hot_engine(
    topics: usize,
    shards: usize,
    tick: Duration,
    ring: Option<usize>,
) -> headcount::Builder {
    Engine::builder()
        .shards(shards)
        .tick(tick)
        .max_topics((topics + 2).next_power_of_two().max(1 << 10))
        .ring_capacity(ring.unwrap_or_else(|| default_ring(topics)))
}

/// `orders` visiting orders of `topics` topics (`topic_name(0..topics)`, interned in `engine`),
/// each shuffled from its own seed (`seed + i`), as [`Hotpath`] gives its threads.
pub fn topic_orders(engine: &Engine, topics: usize, orders: usize, seed: u64) -> Vec<Arc<[Topic]>> {
    let by_id: Vec<Topic> = (0..topics).map(|i| engine.topic(&topic_name(i))).collect();
    (0..orders)
        .map(|t| {
            shuffled(topics, seed.wrapping_add(t as u64))
                .iter()
                .map(|&i| by_id[i as usize])
                .collect()
        })
        .collect()
}

/// Topics joined and left in a hot-path measurement, with the baselines holding the same names.
pub struct Hotpath {
    /// The engine whose topics are joined and left.
    pub engine: Engine,
    /// Per thread: the topics' handles, in that thread's random order.
    handles: Vec<Arc<[Topic]>>,
    /// Per thread: the topics' names, in the same order as `handles`.
    keys: Vec<Arc<[&'static str]>>,
    atomic: Arc<AtomicI64>,
    mutex: Arc<Mutex<HashMap<String, i64>>>,
    dash: Arc<DashMap<String, i64>>,
}

impl Hotpath {
    /// An engine with `shards` shards and `topics` interned topics, ticking every `tick`, with a
    /// dirty ring of `ring` entries per shard (`None`: [`default_ring`]); `orders` random
    /// visiting orders (one per thread).
    pub fn new(
        topics: usize,
        shards: usize,
        orders: usize,
        tick: Duration,
        ring: Option<usize>,
    ) -> Hotpath {
        Hotpath::with_seed(topics, shards, orders, tick, ring, 0x5eed)
    }

    /// [`Hotpath::new`] with the visiting orders drawn from `seed` (thread `t`'s order from
    /// `seed + t`; [`Hotpath::new`] uses `0x5eed`).
    pub fn with_seed(
        topics: usize,
        shards: usize,
        orders: usize,
        tick: Duration,
        ring: Option<usize>,
        seed: u64,
    ) -> Hotpath {
        let engine = hot_engine(topics, shards, tick, ring)
            .start()
            .expect("start the engine");
        // Leaked once per setup: `&'static str` keys are what a caller that already holds the
        // name would pass, and they let the worker threads share them without copies.
        let names: Vec<&'static str> = (0..topics)
            .map(|i| &*Box::leak(topic_name(i).into_boxed_str()))
            .collect();
        let by_id: Vec<Topic> = names.iter().map(|n| engine.topic(n)).collect();
        let mut handles = Vec::with_capacity(orders);
        let mut keys = Vec::with_capacity(orders);
        for t in 0..orders {
            let order = shuffled(topics, seed.wrapping_add(t as u64));
            handles.push(
                order
                    .iter()
                    .map(|&i| by_id[i as usize])
                    .collect::<Arc<[Topic]>>(),
            );
            keys.push(
                order
                    .iter()
                    .map(|&i| names[i as usize])
                    .collect::<Arc<[&'static str]>>(),
            );
        }
        let mutex = names
            .iter()
            .map(|n| (n.to_string(), 0))
            .collect::<HashMap<_, _>>();
        let dash = names
            .iter()
            .map(|n| (n.to_string(), 0))
            .collect::<DashMap<_, _>>();
        Hotpath {
            engine,
            handles,
            keys,
            atomic: Arc::new(AtomicI64::new(0)),
            mutex: Arc::new(Mutex::new(mutex)),
            dash: Arc::new(dash),
        }
    }

    /// headcount: per iteration, `shard.join(topic)` through a pre-resolved handle, then drop
    /// the presence (2 ops). Each thread claims its own shard.
    pub fn headcount(&self, threads: usize, hook: Hook) -> Team {
        let engine = self.engine.clone();
        let handles = self.handles.clone();
        Team::new(threads, move |i| {
            let mut shard = engine.shard().expect("a free shard per worker thread");
            let ts = handles[i].clone();
            let mut pos = 0;
            Box::new(move |pairs| {
                hook(true);
                let d = timed(|| {
                    for _ in 0..pairs {
                        let t = ts[pos];
                        pos += 1;
                        if pos == ts.len() {
                            pos = 0;
                        }
                        drop(shard.join(t));
                    }
                });
                hook(false);
                d
            })
        })
    }

    /// Baseline: one shared `AtomicI64`, `fetch_add(1)` then `fetch_sub(1)` (2 ops).
    pub fn atomic(&self, threads: usize) -> Team {
        let a = self.atomic.clone();
        Team::new(threads, move |_| {
            let a = a.clone();
            Box::new(move |pairs| {
                timed(|| {
                    for _ in 0..pairs {
                        a.fetch_add(1, Ordering::Relaxed);
                        a.fetch_sub(1, Ordering::Relaxed);
                    }
                })
            })
        })
    }

    /// Baseline: `Mutex<HashMap<String, i64>>`, increment then decrement by name (2 ops, each
    /// taking the lock).
    pub fn mutex(&self, threads: usize) -> Team {
        let (m, keys) = (self.mutex.clone(), self.keys.clone());
        Team::new(threads, move |i| {
            let (m, ks) = (m.clone(), keys[i].clone());
            let mut pos = 0;
            Box::new(move |pairs| {
                timed(|| {
                    for _ in 0..pairs {
                        let k = ks[pos];
                        pos += 1;
                        if pos == ks.len() {
                            pos = 0;
                        }
                        *m.lock().unwrap().get_mut(k).unwrap() += 1;
                        *m.lock().unwrap().get_mut(k).unwrap() -= 1;
                    }
                })
            })
        })
    }

    /// Baseline: `DashMap<String, i64>`, increment then decrement by name (2 ops).
    pub fn dashmap(&self, threads: usize) -> Team {
        let (d, keys) = (self.dash.clone(), self.keys.clone());
        Team::new(threads, move |i| {
            let (d, ks) = (d.clone(), keys[i].clone());
            let mut pos = 0;
            Box::new(move |pairs| {
                timed(|| {
                    for _ in 0..pairs {
                        let k = ks[pos];
                        pos += 1;
                        if pos == ks.len() {
                            pos = 0;
                        }
                        *d.get_mut(k).unwrap() += 1;
                        *d.get_mut(k).unwrap() -= 1;
                    }
                })
            })
        })
    }

    /// headcount by name, one thread: per iteration, `shard.join_by_name(name)` of an existing
    /// topic (1 op). Only the joins are timed: presences are kept in batches of 256 and dropped
    /// outside the timed region.
    pub fn headcount_by_name(&self) -> Team {
        let engine = self.engine.clone();
        let keys = self.keys[0].clone();
        Team::new(1, move |_| {
            let mut shard = engine.shard().expect("a free shard");
            let ks = keys.clone();
            let mut pos = 0;
            let mut batch: Vec<Presence> = Vec::with_capacity(256);
            Box::new(move |ops| {
                let mut total = Duration::ZERO;
                let mut left = ops;
                while left > 0 {
                    let n = left.min(256);
                    total += timed(|| {
                        for _ in 0..n {
                            let k = ks[pos];
                            pos += 1;
                            if pos == ks.len() {
                                pos = 0;
                            }
                            batch.push(shard.join_by_name(k));
                        }
                    });
                    batch.clear();
                    left -= n;
                }
                total
            })
        })
    }

    /// Baseline by name, one thread: lock the `Mutex<HashMap>`, look the name up, increment
    /// (1 op).
    pub fn mutex_by_name(&self) -> Team {
        let (m, ks) = (self.mutex.clone(), self.keys[0].clone());
        Team::new(1, move |_| {
            let (m, ks) = (m.clone(), ks.clone());
            let mut pos = 0;
            Box::new(move |ops| {
                timed(|| {
                    for _ in 0..ops {
                        let k = ks[pos];
                        pos += 1;
                        if pos == ks.len() {
                            pos = 0;
                        }
                        *m.lock().unwrap().get_mut(k).unwrap() += 1;
                    }
                })
            })
        })
    }

    /// Baseline by name, one thread: `DashMap::get_mut(name)`, increment (1 op).
    pub fn dashmap_by_name(&self) -> Team {
        let (d, ks) = (self.dash.clone(), self.keys[0].clone());
        Team::new(1, move |_| {
            let (d, ks) = (d.clone(), ks.clone());
            let mut pos = 0;
            Box::new(move |ops| {
                timed(|| {
                    for _ in 0..ops {
                        let k = ks[pos];
                        pos += 1;
                        if pos == ks.len() {
                            pos = 0;
                        }
                        *d.get_mut(k).unwrap() += 1;
                    }
                })
            })
        })
    }
}

/// An engine whose reducer ticks only on [`Engine::sync`], with `topics` topics each joined once
/// (kept, so no topic is ever zero or retired), and every shard claimed by the calling thread.
pub struct ReducerRig {
    /// The engine whose ticks are measured.
    pub engine: Engine,
    shards: Vec<Shard>,
    topics: Vec<Topic>,
    /// Per topic: the extra presence that the last change to it added, if any.
    extra: Vec<Option<Presence>>,
    /// The order in which topics are changed (random), and where the next change starts.
    order: Vec<u32>,
    cursor: usize,
    /// A topic each shard joins and leaves once between measurements (see `settle`).
    beat: Topic,
    _base: Vec<Presence>,
}

impl ReducerRig {
    /// An engine with `shards` shards, all claimed by the calling thread, and `topics` topics
    /// joined once each; two ticks have run.
    pub fn new(topics: usize, shards: usize) -> ReducerRig {
        let engine = Engine::builder()
            .shards(shards)
            .tick(Duration::from_secs(3600))
            .retire_after(Duration::from_secs(3600))
            .max_topics((topics + 2).next_power_of_two().max(1 << 21))
            .ring_capacity(topics.next_power_of_two().max(1 << 14))
            .start()
            .expect("start the engine");
        let mut claimed: Vec<Shard> = (0..shards)
            .map(|_| engine.shard().expect("a free shard"))
            .collect();
        let handles: Vec<Topic> = (0..topics).map(|i| engine.topic(&topic_name(i))).collect();
        let base = handles
            .iter()
            .enumerate()
            .map(|(i, &t)| claimed[i % shards].join(t))
            .collect();
        let beat = engine.topic("perf:beat");
        engine.sync();
        engine.sync();
        ReducerRig {
            engine,
            shards: claimed,
            extra: (0..topics).map(|_| None).collect(),
            order: shuffled(topics, 0xbeef),
            cursor: 0,
            topics: handles,
            beat,
            _base: base,
        }
    }

    /// Brings every shard's dirty bookkeeping to a steady state: each shard makes one change
    /// (join and leave `beat`) in the current epoch, which publishes that it has moved past the
    /// earlier epochs, then a tick runs. Afterwards the reducer watches only `beat`, as on any
    /// busy server, instead of whatever the previous measurement touched.
    fn settle(&mut self) {
        for s in &mut self.shards {
            drop(s.join(self.beat));
        }
        self.engine.sync();
    }

    /// Changes `n` distinct topics by one each (a join, or the leave of the previous
    /// measurement's join), spread evenly over the shards, then runs one tick and returns how
    /// long the engine says it took (`stats().last_tick`).
    pub fn tick_after_changing(&mut self, n: usize) -> Duration {
        self.settle();
        self.change(n);
        self.engine.sync();
        self.engine.stats().last_tick
    }

    /// Changes `n` topics as in [`ReducerRig::tick_after_changing`] and runs a tick, then runs
    /// another tick with no change at all in between and returns that second tick's duration:
    /// the cost of a tick while shards are idle after a burst.
    pub fn idle_tick_after(&mut self, n: usize) -> Duration {
        self.settle();
        self.change(n);
        self.engine.sync();
        self.engine.sync();
        self.engine.stats().last_tick
    }

    fn change(&mut self, n: usize) {
        let shards = self.shards.len();
        for k in 0..n.min(self.order.len()) {
            let idx = self.order[self.cursor] as usize;
            self.cursor += 1;
            if self.cursor == self.order.len() {
                self.cursor = 0;
            }
            match self.extra[idx].take() {
                Some(p) => drop(p),
                None => self.extra[idx] = Some(self.shards[k % shards].join(self.topics[idx])),
            }
        }
    }
}
