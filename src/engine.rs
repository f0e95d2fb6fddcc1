//! [`Engine`]: the builder, the engine thread's lifecycle, and the read-side API.

use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::reducer::Reducer;
use crate::shard::{Hot, HotBox, Presence, Shard, ShardPool};
use crate::sync::Ordering;
use crate::topic::{Topic, Topics};
use crate::view::{ChangeFeed, Feed, TickChanges, View};

/// Configures and starts an [`Engine`]. Every option has a default; see each method.
#[derive(Debug, Clone)]
pub struct Builder {
    shards: Option<usize>,
    tick: Duration,
    max_topics: usize,
    retire_after: Duration,
    ring_capacity: usize,
    feed_capacity: usize,
    hash_key: u128,
    pin: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            shards: None,
            tick: Duration::from_millis(100),
            max_topics: 1 << 20,
            retire_after: Duration::from_secs(30),
            ring_capacity: 1 << 14,
            feed_capacity: 64,
            hash_key: 0,
            pin: false,
        }
    }
}

/// The number of CPUs this process may run on (at least 1).
pub fn cpus() -> usize {
    #[cfg(feature = "affinity")]
    if let Some(ids) = core_affinity::get_core_ids()
        && !ids.is_empty()
    {
        return ids.len();
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn bad(option: &'static str, value: impl std::fmt::Debug, reason: &str) -> Error {
    Error::Config {
        option,
        value: format!("{value:?}"),
        reason: reason.to_string(),
    }
}

impl Builder {
    /// How many shards workers can claim (default: one per CPU). Use one per thread that joins
    /// and leaves; more shards cost reducer time per changed topic and memory per topic.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// The reducer period (default 100 ms): counts are at most about one tick old.
    pub fn tick(mut self, d: Duration) -> Self {
        self.tick = d;
        self
    }

    /// The topic table's capacity (default 2^20). Each shard reserves 8 bytes per topic of
    /// address space; only pages that topics touch become resident.
    pub fn max_topics(mut self, n: usize) -> Self {
        self.max_topics = n;
        self
    }

    /// How long a topic's count must stay zero before it is retired and its id reused
    /// (default 30 s). Handles to a retired topic go stale.
    pub fn retire_after(mut self, d: Duration) -> Self {
        self.retire_after = d;
        self
    }

    /// Entries in each shard's dirty ring (default 16,384). A shard that changes more distinct
    /// topics than this in one tick makes the reducer rescan all topics once.
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = n;
        self
    }

    /// Ticks of changes kept for slow [`ChangeFeed`] readers (default 64).
    pub fn feed_capacity(mut self, n: usize) -> Self {
        self.feed_capacity = n;
        self
    }

    /// The 128-bit key of the topics' wire hash (default 0). Every node of a cluster must use
    /// the same key.
    pub fn hash_key(mut self, key: u128) -> Self {
        self.hash_key = key;
        self
    }

    /// Pin the engine thread to the last CPU (default off; needs the `affinity` feature).
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }

    fn validate(&self) -> Result<usize, Error> {
        let shards = self.shards.unwrap_or_else(cpus);
        if !(1..=4096).contains(&shards) {
            return Err(bad("shards", shards, "must be between 1 and 4096"));
        }
        if self.tick < Duration::from_millis(1) || self.tick > Duration::from_secs(3600) {
            return Err(bad("tick", self.tick, "must be between 1ms and 1h"));
        }
        if !(2..=(1 << 31)).contains(&self.max_topics) {
            return Err(bad(
                "max_topics",
                self.max_topics,
                "must be between 2 and 2^31",
            ));
        }
        if !(2..=(1 << 26)).contains(&self.ring_capacity) {
            return Err(bad(
                "ring_capacity",
                self.ring_capacity,
                "must be between 2 and 2^26",
            ));
        }
        if !(1..=1 << 20).contains(&self.feed_capacity) {
            return Err(bad(
                "feed_capacity",
                self.feed_capacity,
                "must be between 1 and 2^20",
            ));
        }
        if self.pin && !cfg!(feature = "affinity") {
            return Err(bad("pin", self.pin, "needs headcount's `affinity` feature"));
        }
        Ok(shards)
    }

    /// Starts the engine thread.
    pub fn start(self) -> Result<Engine, Error> {
        let shards = self.validate()?;
        let hot = HotBox::new(Hot::new(shards, self.max_topics, self.ring_capacity));
        let topics = Topics::new(self.max_topics, self.hash_key);
        let pool = Arc::new(ShardPool::new(hot, shards, topics));
        let inner = Arc::new(Inner {
            pool,
            view: View::new(self.max_topics),
            feed: Feed::new(self.feed_capacity),
            stats: RawStats::default(),
            shards,
            tick: self.tick,
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let inner = inner.clone();
            let cfg = self.clone();
            std::thread::Builder::new()
                .name("headcount-engine".into())
                .spawn(move || run(inner, cfg, rx))
                .map_err(Error::Spawn)?
        };
        Ok(Engine {
            h: Arc::new(Handle {
                inner,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

pub(crate) struct Inner {
    pub(crate) pool: Arc<ShardPool>,
    pub(crate) view: View,
    pub(crate) feed: Arc<Feed>,
    stats: RawStats,
    shards: usize,
    tick: Duration,
}

#[derive(Default)]
struct RawStats {
    ticks: StdAtomicU64,
    last_tick_ns: StdAtomicU64,
    max_tick_ns: StdAtomicU64,
    changed: StdAtomicU64,
    retired: StdAtomicU64,
    revived: StdAtomicU64,
    retiring: StdAtomicU64,
    rescans: StdAtomicU64,
    watching: StdAtomicU64,
    stopped: AtomicBool,
}

/// Engine counters, read with [`Engine::stats`].
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct Stats {
    /// Reducer ticks run.
    pub ticks: u64,
    /// How long the last tick took.
    pub last_tick: Duration,
    /// The longest tick so far.
    pub max_tick: Duration,
    /// Topic count changes published, over all ticks.
    pub changes: u64,
    /// Topics retired (ids freed for reuse).
    pub retired: u64,
    /// Retirements called off because the topic was used again.
    pub revived: u64,
    /// Topics between the two phases of retirement now.
    pub retiring: u64,
    /// Full rescans after a shard's dirty ring overflowed.
    pub rescans: u64,
    /// Topics interned now (the overflow topic included).
    pub topics: usize,
    /// One past the highest topic id ever used: the part of the table in use.
    pub topic_high_water: u32,
    /// The topic table's capacity.
    pub topic_capacity: usize,
    /// Joins through a stale handle (counted nothing).
    pub stale_joins: u64,
    /// Joins and leaves that went through the shared (slower) core.
    pub shared_ops: u64,
    /// Shards not claimed now.
    pub free_shards: usize,
}

enum Cmd {
    Sync(mpsc::SyncSender<()>),
}

struct Handle {
    inner: Arc<Inner>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    fn stop(&self) {
        // Dropping the sender ends the engine loop.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(inner: Arc<Inner>, cfg: Builder, rx: mpsc::Receiver<Cmd>) {
    #[cfg(feature = "affinity")]
    if cfg.pin
        && let Some(last) = core_affinity::get_core_ids().and_then(|v| v.last().copied())
    {
        core_affinity::set_for_current(last);
    }
    let pool = &inner.pool;
    let mut reducer = Reducer::new(&pool.hot, cfg.retire_after);
    let mut next = Instant::now() + cfg.tick;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Cmd::Sync(done)) => {
                tick(&inner, &mut reducer);
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                tick(&inner, &mut reducer);
                next += cfg.tick;
                let now = Instant::now();
                if next < now {
                    next = now + cfg.tick;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    inner.stats.stopped.store(true, StdOrdering::Release);
    inner.feed.close();
}

fn tick(inner: &Inner, r: &mut Reducer) {
    let start = Instant::now();
    let pool = &inner.pool;
    let rep = r.tick(&pool.hot, &pool.topics, start);
    for c in &r.changes {
        inner.view.set(c.id, c.count, c.count);
    }
    inner.view.total_local.store(r.total, Ordering::Relaxed);
    inner.view.total_cluster.store(r.total, Ordering::Relaxed);
    if !r.changes.is_empty() && inner.feed.has_readers() {
        let changes = r
            .changes
            .iter()
            .filter_map(|c| pool.topics.name(c.id).map(|n| (n.name, c.count)))
            .collect();
        inner.feed.publish(TickChanges {
            tick: r.tick_number(),
            changes,
        });
    }
    let s = &inner.stats;
    let ns = start.elapsed().as_nanos() as u64;
    s.last_tick_ns.store(ns, StdOrdering::Relaxed);
    s.max_tick_ns.fetch_max(ns, StdOrdering::Relaxed);
    s.changed
        .fetch_add(rep.changed as u64, StdOrdering::Relaxed);
    s.retired.fetch_add(rep.freed as u64, StdOrdering::Relaxed);
    s.revived
        .fetch_add(rep.revived as u64, StdOrdering::Relaxed);
    s.retiring.store(rep.retiring as u64, StdOrdering::Relaxed);
    s.rescans.store(r.rescans(), StdOrdering::Relaxed);
    s.watching.store(r.watching() as u64, StdOrdering::Relaxed);
    // Last, with release: `sync()` callers and `stats()` readers see the tick's effects.
    s.ticks.fetch_add(1, StdOrdering::Release);
}

/// A running headcount engine: the shards workers count through, the reducer thread, and the
/// read side. Cheap to clone (all clones share one engine); dropping the last clone, or calling
/// [`Engine::shutdown`], stops and joins the engine thread.
#[derive(Clone)]
pub struct Engine {
    h: Arc<Handle>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.h.inner.shards)
            .field("tick", &self.h.inner.tick)
            .finish()
    }
}

impl Engine {
    /// A builder with every option at its default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn inner(&self) -> &Inner {
        &self.h.inner
    }

    /// The handle for `name`, interning it on first use (later calls: a lock-free read).
    ///
    /// When the topic table is full this returns [`Topic::OVERFLOW`], whose joins are counted
    /// under the name `"(overflow)"`; [`Engine::try_topic`] returns the error instead.
    pub fn topic(&self, name: &str) -> Topic {
        let p = &self.inner().pool;
        p.topics.resolve(name, &p.hot)
    }

    /// The handle for `name`, interning it on first use, or [`Error::TopicsFull`].
    pub fn try_topic(&self, name: &str) -> Result<Topic, Error> {
        let p = &self.inner().pool;
        match p.topics.lookup(name) {
            Some(t) => Ok(t),
            None => p.topics.intern(name, &p.hot),
        }
    }

    /// The handle for `name` if it is interned now (never interns).
    pub fn lookup(&self, name: &str) -> Option<Topic> {
        self.inner().pool.topics.lookup(name)
    }

    /// The name and 64-bit wire hash of `topic` (see [`crate::wire_hash`]); `None` if stale.
    pub fn describe(&self, topic: Topic) -> Option<(std::sync::Arc<str>, u64)> {
        if !self.live(topic) {
            return None;
        }
        self.inner()
            .pool
            .topics
            .name(topic.id())
            .map(|n| (n.name, n.hash))
    }

    /// Claims a free shard, or [`Error::NoFreeShard`] when all are claimed.
    pub fn shard(&self) -> Result<Shard, Error> {
        Shard::claim(&self.inner().pool, self.inner().shards)
    }

    /// Joins `topic` through a shard claimed for the calling thread on its first join (kept until
    /// the thread exits), or through the shared core when no shard is free. For code that does
    /// not manage workers; a worker that holds a [`Shard`] should use [`Shard::join`].
    pub fn join(&self, topic: Topic) -> Presence {
        Presence::join_here(&self.inner().pool, topic)
    }

    /// Gives back the shard [`Engine::join`] claimed for the calling thread, if any (it is
    /// given back anyway when the thread exits). Call it from a thread that will not join for a
    /// while: a claimed shard that stays idle holds up the reuse of retired topic ids. Presences
    /// it made stay valid and count exactly.
    pub fn release_thread(&self) {
        self.inner().pool.release_thread();
    }

    /// [`Engine::join`] by name.
    pub fn join_by_name(&self, name: &str) -> Presence {
        self.join(self.topic(name))
    }

    /// Runs a reducer tick now and waits for it. Everything that happened before this call (on
    /// this thread, or on threads that synchronized with it) is in the counts afterwards.
    /// Returns at once if the engine was shut down.
    pub fn sync(&self) {
        let tx = self.h.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(Cmd::Sync(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    fn live(&self, topic: Topic) -> bool {
        let gens = &self.inner().pool.hot.gens;
        gens.get(topic.id() as usize)
            .is_some_and(|g| g.load(Ordering::Relaxed) == topic.generation())
    }

    /// The cluster-wide count of `topic` as of the last tick (0 for a stale handle).
    pub fn count(&self, topic: Topic) -> u64 {
        if !self.live(topic) {
            return 0;
        }
        self.inner().view.cluster[topic.id() as usize].load(Ordering::Relaxed)
    }

    /// This node's count of `topic` as of the last tick (0 for a stale handle).
    pub fn local_count(&self, topic: Topic) -> u64 {
        if !self.live(topic) {
            return 0;
        }
        self.inner().view.local[topic.id() as usize].load(Ordering::Relaxed)
    }

    /// The cluster-wide count of the topic called `name` (0 if no such topic).
    pub fn count_by_name(&self, name: &str) -> u64 {
        self.lookup(name).map_or(0, |t| self.count(t))
    }

    /// The cluster-wide total over all topics, as of the last tick.
    pub fn total(&self) -> u64 {
        self.inner().view.total_cluster.load(Ordering::Relaxed)
    }

    /// This node's total over all topics, as of the last tick.
    pub fn local_total(&self) -> u64 {
        self.inner().view.total_local.load(Ordering::Relaxed)
    }

    /// The `k` topics with the largest counts, largest first, ties by name. Scans the topic
    /// table: O(topics in use), for dashboards, not per request.
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        if k == 0 {
            return Vec::new();
        }
        let inner = self.inner();
        let hw = inner.pool.topics.high_water() as usize;
        let counts = &inner.view.cluster[..hw];
        // Pass one: the k-th largest count.
        let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
        for c in counts {
            let c = c.load(Ordering::Relaxed);
            if c != 0 {
                heap.push(std::cmp::Reverse(c));
                if heap.len() > k {
                    heap.pop();
                }
            }
        }
        let cut = if heap.len() < k {
            1
        } else {
            heap.peek().map_or(1, |r| r.0)
        };
        // Pass two: everything at or above it, by name among equals.
        let mut out: Vec<(String, u64)> = counts
            .iter()
            .enumerate()
            .filter_map(|(id, c)| {
                let c = c.load(Ordering::Relaxed);
                (c >= cut).then_some((id as u32, c))
            })
            .filter_map(|(id, c)| inner.pool.topics.name(id).map(|n| (n.name.to_string(), c)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// A reader of the per-tick change feed, starting with the next tick.
    pub fn changes(&self) -> ChangeFeed {
        self.inner().feed.subscribe()
    }

    /// Engine counters.
    pub fn stats(&self) -> Stats {
        let inner = self.inner();
        let s = &inner.stats;
        let hot = &inner.pool.hot;
        let topics = &inner.pool.topics;
        Stats {
            ticks: s.ticks.load(StdOrdering::Acquire),
            last_tick: Duration::from_nanos(s.last_tick_ns.load(StdOrdering::Relaxed)),
            max_tick: Duration::from_nanos(s.max_tick_ns.load(StdOrdering::Relaxed)),
            changes: s.changed.load(StdOrdering::Relaxed),
            retired: s.retired.load(StdOrdering::Relaxed),
            revived: s.revived.load(StdOrdering::Relaxed),
            retiring: s.retiring.load(StdOrdering::Relaxed),
            rescans: s.rescans.load(StdOrdering::Relaxed),
            topics: topics.len(),
            topic_high_water: topics.high_water(),
            topic_capacity: topics.capacity(),
            stale_joins: hot.stale_joins.load(Ordering::Relaxed),
            shared_ops: hot.shared.ops.load(Ordering::Relaxed),
            free_shards: inner.pool.free_shards(),
        }
    }

    /// How many shards the engine has.
    pub fn shards(&self) -> usize {
        self.inner().shards
    }

    /// The reducer period.
    pub fn tick_interval(&self) -> Duration {
        self.inner().tick
    }

    /// Whether the engine thread has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner().stats.stopped.load(StdOrdering::Acquire)
    }

    /// Stops the engine thread and waits for it (idempotent). Counts stay readable at their
    /// last values; shards and presences stay usable but nothing is summed any more.
    pub fn shutdown(&self) {
        self.h.stop();
    }
}
