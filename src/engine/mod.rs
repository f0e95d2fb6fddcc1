//! The engine: the [`Engine`] handle and its read API (this file), the
//! [`Builder`](crate::Builder) and every default (`builder.rs`), the engine thread (`driver.rs`:
//! the only user of mio), the sockets (`net.rs`), the application's transport (`channel.rs`),
//! the one the driver sees of the two (`link.rs`) and the counters (`stats.rs`).
//!
//! The arrows point one way: `builder` uses `driver`, `link`, `net`, `channel`, `stats` and this
//! file; `driver` uses `link`, `stats` and this file; `link` uses `net` and `channel`; this file
//! uses `stats`; `net`, `channel` and `stats` use none of them. All of them use `crate::core`
//! and `crate::cluster`, which know nothing of the engine.

pub(crate) mod builder;
pub(crate) mod channel;
pub(crate) mod cpu;
pub(crate) mod dns;
pub(crate) mod driver;
pub(crate) mod link;
pub(crate) mod members;
pub(crate) mod net;
#[cfg(feature = "tokio")]
mod runtime;
pub(crate) mod stats;

use std::net::SocketAddr;
use std::sync::atomic::Ordering as StdOrdering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cluster::protocol::NodeInfo;
use crate::core::shard::{Presence, Shard, ShardPool, try_by_name};
use crate::core::sync::Ordering;
use crate::core::topic::Topic;
use crate::core::view::{ChangeFeed, Feed, View};
use crate::engine::stats::{ClusterStats, ClusterView, RawStats, Stats};
use crate::error::Error;

/// What the engine thread and every handle share.
pub(crate) struct Inner {
    pub(crate) pool: Arc<ShardPool>,
    pub(crate) view: View,
    pub(crate) feed: Arc<Feed>,
    pub(crate) stats: RawStats,
    pub(crate) shards: usize,
    pub(crate) tick: Duration,
    /// This node's id and the address peers see it at, when in a cluster.
    pub(crate) node: Option<(u64, Option<SocketAddr>)>,
    /// Published by the engine thread each tick.
    pub(crate) cluster_view: Mutex<ClusterView>,
    /// [`Engine::top`]'s list, computed at most once per tick.
    pub(crate) top: Mutex<TopCache>,
}

#[derive(Default)]
pub(crate) struct TopCache {
    valid: bool,
    tick: u64,
    k: usize,
    list: Vec<(Arc<str>, u64)>,
}

/// What a handle asks of the engine thread.
pub(crate) enum Cmd {
    /// Run a tick now, then answer.
    Sync(mpsc::SyncSender<()>),
}

struct Handle {
    inner: Arc<Inner>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    waker: Arc<mio::Waker>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    fn stop(&self) {
        // Dropping the sender ends the engine loop (after a goodbye to the cluster).
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.waker.wake();
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
    /// Wraps a started engine thread (see `driver::spawn`).
    pub(crate) fn started(
        inner: Arc<Inner>,
        tx: mpsc::Sender<Cmd>,
        waker: Arc<mio::Waker>,
        thread: JoinHandle<()>,
    ) -> Engine {
        Engine {
            h: Arc::new(Handle {
                inner,
                tx: Mutex::new(Some(tx)),
                waker,
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    // `Engine::builder` is in `builder.rs`, with the options.

    fn inner(&self) -> &Inner {
        &self.h.inner
    }

    /// The handle for `name`, interning it on first use (later calls: a lock-free read).
    ///
    /// Names are at most [`crate::MAX_NAME_LEN`] (255) bytes, the longest the cluster wire can
    /// name on peers. For a longer name, or a new name when the topic table is full, this returns
    /// [`Topic::OVERFLOW`], whose joins are counted under the name `"(overflow)"` (on peers
    /// too), and adds one to [`Stats::long_names`] or [`Stats::full_table`];
    /// [`Engine::try_topic`] returns [`Error::NameTooLong`] or [`Error::TopicsFull`] instead.
    pub fn topic(&self, name: &str) -> Topic {
        let p = &self.inner().pool;
        p.topics.resolve(name, &p.hot)
    }

    /// The handle for `name`, interning it on first use; [`Error::NameTooLong`] for a name over
    /// [`crate::MAX_NAME_LEN`] bytes, [`Error::TopicsFull`] when the table has no free id.
    pub fn try_topic(&self, name: &str) -> Result<Topic, Error> {
        let p = &self.inner().pool;
        match p.topics.lookup(name) {
            Some(t) => Ok(t),
            None => p.topics.intern(name, &p.hot),
        }
    }

    /// The handle for `name` if it is interned now (never interns; `None` for a name over
    /// [`crate::MAX_NAME_LEN`] bytes, which is never interned).
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

    /// Joins `topic` through the calling thread's shard: the one [`Engine::bind_thread`] claimed,
    /// or one claimed on its first join (unless [`crate::Builder::claim_on_join`] is off), kept until
    /// the thread exits or calls [`Engine::release_thread`]; through the shared core when the
    /// thread has none. The presence may be dropped on any thread: it leaves through that
    /// thread's shard if it has one. For code that does not manage workers (async tasks, thread
    /// pools); a worker that holds a [`Shard`] should use [`Shard::join`].
    ///
    /// A stale handle (its topic was retired) counts nothing: the presence is inert
    /// ([`Presence::is_counted`] is false) and [`Stats::stale_joins`] goes up by one.
    /// [`Engine::try_join`] returns [`Error::StaleTopic`] instead.
    #[inline]
    pub fn join(&self, topic: Topic) -> Presence {
        Presence::join_here(&self.inner().pool, topic)
    }

    /// [`Engine::join`], or [`Error::StaleTopic`] when the handle's topic was retired (look the
    /// name up again with [`Engine::topic`], or use [`Engine::try_join_by_name`]).
    pub fn try_join(&self, topic: Topic) -> Result<Presence, Error> {
        self.inner().pool.join_here(topic)
    }

    /// Gives back the shard [`Engine::join`] or [`Engine::bind_thread`] claimed for the calling
    /// thread, if any (it is given back anyway when the thread exits). Call it from a thread that
    /// will not join for a while, or that should not keep a shard at all (a thread that joined
    /// once, during start-up): a claimed shard that stays idle holds up the reuse of retired
    /// topic ids, and a shard held by one thread is not available to another. Presences the
    /// thread made stay valid and count exactly.
    pub fn release_thread(&self) {
        self.inner().pool.release_thread();
    }

    /// Claims a shard for the calling thread now, the one [`Engine::join`] then joins through
    /// and presences dropped on this thread leave through; returns its index, or the index of
    /// the one the thread has already. [`Error::NoFreeShard`] when every shard is claimed (the
    /// thread's joins and leaves then go through the shared core: exact, slower).
    ///
    /// For runtimes whose worker threads should each own a shard: call it when a worker starts
    /// (tokio: `on_thread_start`, which `Engine::bind_runtime` sets up), and
    /// [`Engine::release_thread`] when it stops.
    pub fn bind_thread(&self) -> Result<usize, Error> {
        let inner = self.inner();
        inner.pool.bind_thread(inner.shards)
    }

    /// Tells the engine the calling thread is about to go idle (see [`Shard::park`]): call it
    /// before a worker thread blocks (tokio: `on_thread_park`). Does nothing on a thread
    /// without a shard.
    pub fn park_thread(&self) {
        self.inner().pool.park_thread();
    }

    /// [`Engine::join`] by name: [`Engine::topic`], then the join.
    ///
    /// Never fails: a name over [`crate::MAX_NAME_LEN`] bytes, or a new name when the table is
    /// full, is counted in [`Topic::OVERFLOW`] (see [`Engine::topic`]) and adds one to
    /// [`Stats::long_names`] or [`Stats::full_table`]. [`Engine::try_join_by_name`] returns
    /// those as errors instead.
    pub fn join_by_name(&self, name: &str) -> Presence {
        self.join(self.topic(name))
    }

    /// [`Engine::join`] by name; [`Error::NameTooLong`] for a name over [`crate::MAX_NAME_LEN`]
    /// bytes, [`Error::TopicsFull`] when the table has no free id. A topic retired between the
    /// lookup and the join is looked up again.
    pub fn try_join_by_name(&self, name: &str) -> Result<Presence, Error> {
        let pool = &self.inner().pool;
        try_by_name(pool, name, |t| pool.join_here(t))
    }

    /// Runs a reducer tick now and waits for it. Everything that happened before this call (on
    /// this thread, or on threads that synchronized with it) is in the counts afterwards.
    /// Returns at once if the engine was shut down.
    pub fn sync(&self) {
        let tx = self.h.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(Cmd::Sync(done_tx)).is_ok() && self.h.waker.wake().is_ok() {
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
        self.inner()
            .view
            .cluster(topic.id())
            .load(Ordering::Relaxed)
    }

    /// This node's count of `topic` as of the last tick (0 for a stale handle).
    pub fn local_count(&self, topic: Topic) -> u64 {
        if !self.live(topic) {
            return 0;
        }
        self.inner().view.local(topic.id()).load(Ordering::Relaxed)
    }

    /// The cluster-wide count of the topic called `name` (0 if no such topic; always 0 for a
    /// name over [`crate::MAX_NAME_LEN`] bytes, whose joins count in [`Topic::OVERFLOW`]).
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

    /// The `k` topics with the largest counts, largest first, ties by name.
    ///
    /// Computed at most once per tick (and again only for a larger `k`): later calls in the same
    /// tick copy the cached list. Computing it scans the count of every topic in use and keeps a
    /// heap of `k`: O(topics + m log k), where only the m topics that could enter the top `k` are
    /// named (topics tied at the cut included), never sorted all together.
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        if k == 0 {
            return Vec::new();
        }
        let inner = self.inner();
        let tick = inner.stats.ticks.load(StdOrdering::Acquire);
        let mut cache = inner.top.lock().unwrap_or_else(|e| e.into_inner());
        if !(cache.tick == tick && cache.valid && (cache.k >= k || cache.list.len() < cache.k)) {
            cache.list = self.compute_top(k);
            cache.k = k;
            cache.tick = tick;
            cache.valid = true;
        }
        cache
            .list
            .iter()
            .take(k)
            .map(|(n, c)| (n.to_string(), *c))
            .collect()
    }

    fn compute_top(&self, k: usize) -> Vec<(Arc<str>, u64)> {
        use std::cmp::{Ordering as Cmp, Reverse};
        use std::collections::BinaryHeap;
        /// Ordered so that the heap's greatest is the worst kept: the smallest count, then the
        /// greatest name.
        struct Kept(u64, Arc<str>);
        impl Kept {
            fn key(&self) -> (Reverse<u64>, &str) {
                (Reverse(self.0), &self.1)
            }
        }
        impl PartialEq for Kept {
            fn eq(&self, o: &Self) -> bool {
                self.key() == o.key()
            }
        }
        impl Eq for Kept {}
        impl PartialOrd for Kept {
            fn partial_cmp(&self, o: &Self) -> Option<Cmp> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Kept {
            fn cmp(&self, o: &Self) -> Cmp {
                self.key().cmp(&o.key())
            }
        }
        let inner = self.inner();
        let topics = &inner.pool.topics;
        let hw = topics.high_water();
        let mut heap: BinaryHeap<Kept> = BinaryHeap::with_capacity(k.min(1 << 16) + 1);
        for id in 0..hw {
            let c = inner.view.cluster(id).load(Ordering::Relaxed);
            if c == 0 {
                continue;
            }
            if heap.len() >= k
                && let Some(worst) = heap.peek()
                && c < worst.0
            {
                continue; // cannot enter: not even named
            }
            let Some(n) = topics.name(id) else { continue };
            let cand = Kept(c, n.name);
            if heap.len() < k {
                heap.push(cand);
            } else if heap.peek().is_some_and(|worst| cand < *worst) {
                heap.pop();
                heap.push(cand);
            }
        }
        let mut out: Vec<(Arc<str>, u64)> = heap.into_iter().map(|e| (e.1, e.0)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// A reader of the per-tick change feed, starting with the next tick.
    pub fn changes(&self) -> ChangeFeed {
        self.inner().feed.subscribe()
    }

    /// Engine counters.
    pub fn stats(&self) -> Stats {
        let inner = self.inner();
        inner.stats.read(&inner.pool)
    }

    /// What the engine thread last published about the cluster (`None` without a cluster).
    fn cluster_view(&self) -> Option<std::sync::MutexGuard<'_, ClusterView>> {
        let inner = self.inner();
        inner.node?;
        Some(inner.cluster_view.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The cluster's other nodes: live peers and recently dead ones (empty without a cluster).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.cluster_view()
            .map_or_else(Vec::new, |v| v.nodes.clone())
    }

    /// Cluster counters (`None` without a cluster).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster_view().map(|v| v.cluster_stats())
    }

    /// The last error resolving a [`Builder::peers_dns`](crate::Builder::peers_dns) name, if
    /// a resolution failed since the engine started (the last known addresses were kept).
    pub fn dns_error(&self) -> Option<String> {
        self.cluster_view()?.discovery.last_error.clone()
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> Option<u64> {
        self.inner().node.map(|n| n.0)
    }

    /// The address peers see this node at (`None` without a cluster, and over a
    /// [`ChannelTransport`](crate::ChannelTransport), where each peer names this node its own
    /// way).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner().node.and_then(|n| n.1)
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
