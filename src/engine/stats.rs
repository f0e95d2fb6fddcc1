//! The engine's counters: what the engine thread records each tick ([`RawStats`], plain relaxed
//! atomics it alone writes), what it publishes about the cluster ([`ClusterView`]), and the
//! snapshots [`Engine::stats`](crate::Engine::stats) and
//! [`Engine::cluster_stats`](crate::Engine::cluster_stats) hand out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::protocol::{NodeInfo, ProtoStats};
use crate::core::reducer::TickReport;
use crate::core::shard::ShardPool;

/// Upper bounds of the tick-duration histogram in [`Stats::tick_histogram`].
pub const TICK_BUCKETS: [Duration; 10] = [
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(100),
];

/// Engine counters, read with [`Engine::stats`](crate::Engine::stats).
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
    /// Joins through a stale handle (counted nothing): [`Engine::join`](crate::Engine::join)
    /// and [`Shard::join`](crate::Shard::join) on a retired topic's handle.
    pub stale_joins: u64,
    /// Names over [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes given to an infallible form
    /// ([`Engine::topic`](crate::Engine::topic), `join_by_name`): each was resolved to the
    /// overflow topic (and its joins counted there), one per call.
    pub long_names: u64,
    /// Names that found the topic table full in an infallible form
    /// ([`Engine::topic`](crate::Engine::topic), `join_by_name`): each was resolved to the
    /// overflow topic (and its joins counted there), one per call.
    pub full_table: u64,
    /// Joins and leaves that went through the shared (slower) core.
    pub shared_ops: u64,
    /// Shards not claimed now.
    pub free_shards: usize,
    /// Time spent in ticks, over all ticks.
    pub tick_time: Duration,
    /// Ticks by duration (not cumulative): `tick_histogram[i]` counts the ticks that took at most
    /// `TICK_BUCKETS[i]` (and more than the bound before it); the last counts the longer ones.
    pub tick_histogram: [u64; TICK_BUCKETS.len() + 1],
}

/// Cluster counters, read with [`Engine::cluster_stats`](crate::Engine::cluster_stats).
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ClusterStats {
    /// The protocol's counters (datagrams sent, received, rejected by reason, resyncs).
    pub protocol: ProtoStats,
    /// Live peers.
    pub peers_alive: usize,
    /// Live peers whose copy here matches what they declared.
    pub peers_converged: usize,
    /// Live peers whose table is over this node's caps (`max_topics`): counted incompletely.
    pub peers_over_cap: usize,
    /// Local count changes not sent to peers yet (a burst larger than a tick's budget).
    pub backlog: u64,
    /// Sends the OS refused.
    pub send_errors: u64,
    /// Receives the OS failed.
    pub recv_errors: u64,
    /// Unicast: addresses group datagrams go to that were given at start.
    pub members_configured: usize,
    /// Unicast: addresses resolved from DNS (`peers_dns`).
    pub members_dns: usize,
    /// Unicast: addresses learned from authenticated datagrams and membership gossip.
    pub members_learned: usize,
    /// Unicast: addresses dropped (learned, or gone from DNS, and silent for `dead_after`).
    pub members_dropped: u64,
    /// DNS resolutions that succeeded (`peers_dns`).
    pub dns_resolutions: u64,
    /// DNS resolutions that failed (the last known addresses were kept); the last error is
    /// [`crate::Engine::dns_error`].
    pub dns_failures: u64,
    /// Datagrams this node sent that a [`ChannelTransport`](crate::ChannelTransport) dropped
    /// because the application did not take them in time (its queue was full; the oldest go).
    /// Repaired like datagrams lost on the network. Always 0 over UDP.
    pub transport_dropped_out: u64,
    /// Datagrams the application delivered that a
    /// [`ChannelTransport`](crate::ChannelTransport) dropped because the engine's inbound queue
    /// was full (or they were over-long). Repaired like datagrams lost on the network. Always 0
    /// over UDP.
    pub transport_dropped_in: u64,
}

/// The engine thread's counters: written by it alone (relaxed), read by [`RawStats::read`].
#[derive(Default)]
pub(crate) struct RawStats {
    /// Ticks run; stored last in a tick, with release (see [`RawStats::record_tick`]).
    pub(crate) ticks: AtomicU64,
    last_tick_ns: AtomicU64,
    max_tick_ns: AtomicU64,
    changed: AtomicU64,
    retired: AtomicU64,
    revived: AtomicU64,
    retiring: AtomicU64,
    rescans: AtomicU64,
    watching: AtomicU64,
    tick_total_ns: AtomicU64,
    /// Ticks by duration: one counter per bound of [`TICK_BUCKETS`], then one for longer ticks.
    tick_hist: [AtomicU64; TICK_BUCKETS.len() + 1],
    /// Set (release) when the engine thread has stopped.
    pub(crate) stopped: AtomicBool,
}

impl RawStats {
    /// Records one tick that took `took`; `rescans` and `watching` are the reducer's gauges.
    pub(crate) fn record_tick(
        &self,
        took: Duration,
        rep: &TickReport,
        rescans: u64,
        watching: usize,
    ) {
        let ns = took.as_nanos() as u64;
        self.last_tick_ns.store(ns, Ordering::Relaxed);
        self.max_tick_ns.fetch_max(ns, Ordering::Relaxed);
        self.tick_total_ns.fetch_add(ns, Ordering::Relaxed);
        let bucket = TICK_BUCKETS.partition_point(|b| b.as_nanos() < u128::from(ns));
        self.tick_hist[bucket].fetch_add(1, Ordering::Relaxed);
        self.changed
            .fetch_add(rep.changed as u64, Ordering::Relaxed);
        self.retired.fetch_add(rep.freed as u64, Ordering::Relaxed);
        self.revived
            .fetch_add(rep.revived as u64, Ordering::Relaxed);
        self.retiring.store(rep.retiring as u64, Ordering::Relaxed);
        self.rescans.store(rescans, Ordering::Relaxed);
        self.watching.store(watching as u64, Ordering::Relaxed);
        // Last, with release: `sync()` callers and `stats()` readers see the tick's effects.
        self.ticks.fetch_add(1, Ordering::Release);
    }

    /// A snapshot of the counters, with the pool's gauges.
    pub(crate) fn read(&self, pool: &ShardPool) -> Stats {
        let hot = &pool.hot;
        let topics = &pool.topics;
        Stats {
            ticks: self.ticks.load(Ordering::Acquire),
            last_tick: Duration::from_nanos(self.last_tick_ns.load(Ordering::Relaxed)),
            max_tick: Duration::from_nanos(self.max_tick_ns.load(Ordering::Relaxed)),
            changes: self.changed.load(Ordering::Relaxed),
            retired: self.retired.load(Ordering::Relaxed),
            revived: self.revived.load(Ordering::Relaxed),
            retiring: self.retiring.load(Ordering::Relaxed),
            rescans: self.rescans.load(Ordering::Relaxed),
            topics: topics.len(),
            topic_high_water: topics.high_water(),
            topic_capacity: topics.capacity(),
            stale_joins: hot.stale_joins.load(Ordering::Relaxed),
            long_names: topics.long_names.load(Ordering::Relaxed),
            full_table: topics.full.load(Ordering::Relaxed),
            shared_ops: hot.shared.ops.load(Ordering::Relaxed),
            free_shards: pool.free_shards(),
            tick_time: Duration::from_nanos(self.tick_total_ns.load(Ordering::Relaxed)),
            tick_histogram: std::array::from_fn(|i| self.tick_hist[i].load(Ordering::Relaxed)),
        }
    }
}

/// What the engine thread publishes about the cluster each tick.
#[derive(Default)]
pub(crate) struct ClusterView {
    pub(crate) nodes: Vec<NodeInfo>,
    pub(crate) stats: ProtoStats,
    /// Changes waiting to be handed to the protocol.
    pub(crate) handoff: u64,
    pub(crate) send_errors: u64,
    pub(crate) recv_errors: u64,
    pub(crate) discovery: crate::engine::members::DiscoveryStats,
    /// Unicast destinations: configured, resolved, learned.
    pub(crate) members: (usize, usize, usize),
    pub(crate) transport_dropped_out: u64,
    pub(crate) transport_dropped_in: u64,
}

impl ClusterView {
    pub(crate) fn cluster_stats(&self) -> ClusterStats {
        ClusterStats {
            protocol: self.stats,
            peers_alive: self.nodes.iter().filter(|n| n.alive).count(),
            peers_converged: self.nodes.iter().filter(|n| n.alive && n.converged).count(),
            peers_over_cap: self.nodes.iter().filter(|n| n.alive && n.over_cap).count(),
            backlog: self.stats.backlog + self.handoff,
            send_errors: self.send_errors,
            recv_errors: self.recv_errors,
            members_configured: self.members.0,
            members_dns: self.members.1,
            members_learned: self.members.2,
            members_dropped: self.discovery.dropped,
            dns_resolutions: self.discovery.resolutions,
            dns_failures: self.discovery.failures,
            transport_dropped_out: self.transport_dropped_out,
            transport_dropped_in: self.transport_dropped_in,
        }
    }
}
