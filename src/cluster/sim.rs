//! A deterministic, seeded simulation of a cluster: many [`Protocol`] nodes over a simulated
//! network with loss, duplication, reordering, delay and partitions, and (when set) limited
//! link capacity and socket buffers ([`Capacity`]). The simulation tests and
//! `headcount-perf converge` drive it; it is public so users can test their settings the same way.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

mod addr;
mod event;
mod lane;
mod link;
mod lost;
mod zone;
mod zones;

pub use addr::{addr, topic_hash};
use event::{Event, What};
pub use lane::TWO_THREADS_FROM;
pub use link::{Capacity, Faults, LinkStats};
pub use zone::{LISTENER_HEARTBEAT_EVERY, SPEAK_AFTER, TAKEOVER_TICKS};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
use std::time::{Duration, Instant};

use super::protocol::{Clock, Config, Protocol};

/// The Unix time (ms) at the start of every simulation: 2027-01-15.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;
use super::wire::Seal;

struct Node {
    proto: Option<Protocol>,
    local: HashMap<u64, u32>,
    /// The sum of `local`.
    local_total: u64,
    next_tick: Duration,
    /// When the protocol last asked to be woken (`poll_timeout`), as queued in `events`.
    wake: Option<Duration>,
    incarnation: u64,
    /// Partition group: nodes in different groups cannot reach each other.
    group: u32,
    /// When the uplink and the downlink are free again.
    tx_free: Duration,
    rx_free: Duration,
    /// The current tick window and the bytes handed to the socket in it.
    window: (u64, u64),
    link: LinkStats,
    /// The group its group datagrams go to (an index of `Sim::nets`).
    net: usize,
}

/// A simulated cluster.
pub struct Sim {
    base: Instant,
    now: Duration,
    rng: u64,
    tick: Duration,
    cfg: Box<dyn Fn(&mut Config)>,
    nodes: Vec<Node>,
    /// What happens next at each node (in a zoned simulation, at each node's two endpoints
    /// together): ticks, datagrams in flight, wakes (stale ticks and wakes are skipped when
    /// they come up: a node's `next_tick` and `wake` say which are current).
    queues: Vec<BinaryHeap<Reverse<Event>>>,
    /// When each queue's last event happened.
    clocks: Vec<Duration>,
    next_id: u64,
    /// Faults applied to deliveries from now on.
    pub faults: Faults,
    /// Every node's link capacity, from now on.
    pub capacity: Capacity,
    universe: BTreeSet<u64>,
    /// Each group's members (one group of every node, unless zoned).
    nets: Vec<Vec<usize>>,
    /// Zones, when the cluster has them ([`Sim::zoned`]).
    zones: Option<zones::Zones>,
    /// The incarnation the next restart takes: every restart's is above every earlier one's,
    /// of any node, as a process's start time would be.
    next_incarnation: u64,
    /// Bytes each node sent (one group datagram counts once); in a zoned simulation, each
    /// endpoint ([`Sim::endpoints`]).
    pub bytes_sent: Vec<u64>,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Every node's seal (one key): a datagram's tag is checked once for all its receivers.
    seal: Seal,
    /// Cores this simulation may borrow (`None`: it runs on the caller's thread alone). A
    /// window with many nodes' events takes one, if there is one, and shares its nodes with a
    /// second thread (see [`Sim::run_until`]); the run is the same either way. Shared by
    /// simulations run side by side: one that ends gives its core back for the others.
    pub spare_cores: Option<Arc<AtomicUsize>>,
    /// Called on the second thread of a window with `true` before it handles anything and
    /// `false` after (a measurement of the run's memory takes in that thread's share).
    pub on_helper_thread: Option<fn(bool)>,
    /// Sequenced group datagrams random loss took, by sender and receiver, once counted
    /// ([`Sim::count_lost_data`]).
    lost_data: Option<lost::LostData>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now)
            .finish()
    }
}

impl Sim {
    /// `n` nodes ticking every `tick` with staggered first ticks, seeded with `seed`; `cfg`
    /// adjusts each node's protocol settings.
    pub fn new(n: usize, seed: u64, tick: Duration, cfg: impl Fn(&mut Config) + 'static) -> Sim {
        Sim::build(n, None, seed, tick, Box::new(cfg))
    }

    /// `n` endpoints (nodes, or a zoned cluster's endpoints, as `zones` says).
    fn build(
        n: usize,
        zones: Option<zones::Zones>,
        seed: u64,
        tick: Duration,
        cfg: Box<dyn Fn(&mut Config)>,
    ) -> Sim {
        let nets = match &zones {
            Some(z) => z.nets(),
            None => vec![(0..n).collect()],
        };
        let mut s = Sim {
            base: Instant::now(),
            now: Duration::ZERO,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            tick,
            cfg,
            nodes: Vec::new(),
            queues: Vec::new(),
            clocks: Vec::new(),
            next_id: 0,
            faults: Faults::default(),
            capacity: Capacity::default(),
            universe: BTreeSet::new(),
            nets,
            zones,
            next_incarnation: 2,
            bytes_sent: vec![0; n],
            delivered: 0,
            seal: Seal::new("sim", b"sim key"),
            spare_cores: None,
            on_helper_thread: None,
            lost_data: None,
        };
        let units = s.zones.as_ref().map_or(n, |z| z.n);
        s.queues = (0..units).map(|_| BinaryHeap::new()).collect();
        s.clocks = vec![Duration::ZERO; units];
        for i in 0..n {
            let phase = Duration::from_nanos(s.rand() % tick.as_nanos().max(1) as u64);
            let mut node = Node {
                proto: None,
                local: HashMap::default(),
                local_total: 0,
                next_tick: phase,
                wake: None,
                incarnation: 1,
                group: 0,
                tx_free: Duration::ZERO,
                rx_free: Duration::ZERO,
                window: (0, 0),
                link: LinkStats::default(),
                net: s.zones.as_ref().map_or(0, |z| z.net(i)),
            };
            node.proto = Some(s.make(i, 1));
            s.nodes.push(node);
            s.queue(Event::tick(phase, i));
        }
        s
    }

    fn make(&self, i: usize, incarnation: u64) -> Protocol {
        let (node, zone) = self.identity(i);
        let mut c = Config::new(node, incarnation, self.tick);
        if zone != 0 {
            self.outer_config(&mut c, zone);
        }
        // Every node's clock agrees (a test may skew one in `cfg`).
        c.clock = Clock {
            base: self.base,
            unix_ms: SIM_EPOCH_MS,
        };
        (self.cfg)(&mut c);
        Protocol::new(c, self.seal.clone())
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rand() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// The simulated time elapsed.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// The tick every node runs.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// How many nodes (crashed ones included).
    pub fn len(&self) -> usize {
        self.zones.as_ref().map_or(self.nodes.len(), |z| z.len())
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What capacity cost node `i` so far (in a zoned simulation, endpoint `i`: see
    /// [`Sim::endpoints`]).
    pub fn link(&self, i: usize) -> LinkStats {
        self.nodes[i].link
    }

    /// Node `i`'s protocol, if it is running.
    pub fn node(&self, i: usize) -> Option<&Protocol> {
        self.nodes[i].proto.as_ref()
    }

    /// Sets node `i`'s own count of `hash`.
    pub fn set(&mut self, i: usize, hash: u64, count: u32) {
        self.universe.insert(hash);
        let n = &mut self.nodes[i];
        let old = if count == 0 {
            n.local.remove(&hash)
        } else {
            n.local.insert(hash, count)
        };
        n.local_total = n.local_total - u64::from(old.unwrap_or(0)) + u64::from(count);
        let name: std::sync::Arc<str> = format!("topic-{hash:x}").into();
        if let Some(p) = n.proto.as_mut() {
            p.set_local(hash, count, Some(&name));
        }
        self.zone_name(i, hash, &name);
        self.zone_publish(i, hash);
    }

    /// Adds `delta` to node `i`'s own count of `hash`.
    pub fn add(&mut self, i: usize, hash: u64, delta: i64) {
        let c = self.nodes[i].local.get(&hash).copied().unwrap_or(0);
        self.set(
            i,
            hash,
            (i64::from(c) + delta).clamp(0, i64::from(u32::MAX)) as u32,
        );
    }

    /// A burst of `joins` joins spread over the running nodes and `topics` topics, long-tailed
    /// (low topic numbers are hot; topic `t` has hash [`topic_hash`]`(t)`), from `seed`.
    pub fn burst(&mut self, seed: u64, joins: u64, topics: u64) {
        self.burst_on(seed, joins, topics, self.len());
    }

    /// [`Sim::burst`] on the first `senders` nodes only (a hot node: `1`).
    pub fn burst_on(&mut self, seed: u64, joins: u64, topics: u64, senders: usize) {
        let senders = senders.clamp(1, self.len().max(1)) as u64;
        let topics = topics.max(1);
        let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        for _ in 0..joins {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let node = (x % senders) as usize;
            if self.nodes[node].proto.is_none() {
                continue;
            }
            let t = (x >> 20) % topics;
            self.add(node, topic_hash(t * t / topics), 1);
        }
    }

    /// Counts, from now on (afresh), the bytes of each sender's deltas and names datagrams to
    /// the group that random loss takes from each receiver: see [`Sim::repair_floor`].
    pub fn count_lost_data(&mut self) {
        self.lost_data = Some(lost::LostData::new());
    }

    /// Since [`Sim::count_lost_data`] (`None` before it): the sum over senders of the most
    /// bytes of the sender's deltas and names any one receiver lost. Whatever repairs those
    /// losses sends at least this much: one receiver's losses take as many bytes to restore,
    /// and on multicast (not a unicast fan-out) one repair may serve every receiver at once.
    pub fn repair_floor(&self) -> Option<u64> {
        self.lost_data.as_ref().map(lost::LostData::floor)
    }

    /// Since [`Sim::count_lost_data`] (`None` before it): the repair symbols an ideal repair
    /// in rounds would have sent for the same losses, summed over senders. Each round a sender
    /// learns exactly what each receiver still lacks (free, lossless feedback) and sends as
    /// many symbols as the neediest lacks, any of which repairs any one loss; each symbol is
    /// lost at each receiver as [`Faults::loss`] says (drawn from `seed`, apart from the
    /// simulation's own draws). It grows with the receivers, as the worst of their losses does.
    pub fn ideal_repair_symbols(&self, seed: u64) -> Option<u64> {
        let loss = self.faults.loss.clamp(0.0, 0.99);
        self.lost_data.as_ref().map(|l| l.ideal_symbols(loss, seed))
    }

    /// What node `i` counts for `hash`: its own count plus its peers'.
    pub fn view(&self, i: usize, hash: u64) -> u64 {
        let n = &self.nodes[i];
        u64::from(n.local.get(&hash).copied().unwrap_or(0))
            + n.proto.as_ref().map_or(0, |p| p.remote(hash))
            + self.outer(i).map_or(0, |p| p.remote(hash))
    }

    /// The true count of `hash`: the sum over running nodes.
    pub fn truth(&self, hash: u64) -> u64 {
        self.nodes[..self.len()]
            .iter()
            .filter(|n| n.proto.is_some())
            .map(|n| u64::from(n.local.get(&hash).copied().unwrap_or(0)))
            .sum()
    }

    /// Whether every running node's view of every topic ever counted equals the truth. Stops
    /// at the first difference (the convergence loops call it often; most calls find one).
    pub fn exact(&self) -> bool {
        let running: Vec<usize> = (0..self.len())
            .filter(|&i| self.nodes[i].proto.is_some())
            .collect();
        // A node whose total differs is not exact: a check of N totals settles most calls
        // (a scan of every topic at every node takes seconds at 256 × 100k).
        let total: u64 = running.iter().map(|&i| self.nodes[i].local_total).sum();
        if running.iter().any(|&i| {
            let n = &self.nodes[i];
            n.local_total
                + n.proto.as_ref().map_or(0, Protocol::remote_total)
                + self.outer(i).map_or(0, Protocol::remote_total)
                != total
        }) {
            return false;
        }
        // The truth once, then node by node: a node's tables stay in cache over the topics
        // (topic by topic, every lookup was in another node's tables: 256 × 100k, 1.9 s a scan).
        let mut truth: HashMap<u64, u64> = HashMap::default();
        truth.reserve(self.universe.len());
        for &i in &running {
            for (&h, &c) in &self.nodes[i].local {
                *truth.entry(h).or_insert(0) += u64::from(c);
            }
        }
        let truth: Vec<(u64, u64)> = self
            .universe
            .iter()
            .map(|&h| (h, truth.get(&h).copied().unwrap_or(0)))
            .collect();
        running
            .iter()
            .all(|&i| truth.iter().all(|&(h, t)| self.view(i, h) == t))
    }

    /// `(node, hash, view, truth)` for every running node and topic that differ.
    pub fn mismatches(&self) -> Vec<(usize, u64, u64, u64)> {
        let mut out = Vec::new();
        for &h in &self.universe {
            let t = self.truth(h);
            for i in 0..self.len() {
                if self.nodes[i].proto.is_some() {
                    let v = self.view(i, h);
                    if v != t {
                        out.push((i, h, v, t));
                    }
                }
            }
        }
        out
    }

    /// Test hook, not for use outside tests: sets node `i`'s copy of node `peer`'s count of
    /// `hash` to `count`, without a trace (no sequence gap), as
    /// [`Protocol::corrupt_peer_entry_for_test`] does.
    #[doc(hidden)]
    pub fn corrupt_copy_for_test(&mut self, i: usize, peer: usize, hash: u64, count: u32) {
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.corrupt_peer_entry_for_test(peer as u64 + 1, hash, count);
        }
    }

    /// Node `i` stops silently (a crash, SIGKILL): no goodbye.
    pub fn crash(&mut self, i: usize) {
        for e in self.endpoints_of(i) {
            self.nodes[e].proto = None;
            self.nodes[e].local.clear();
            self.nodes[e].local_total = 0;
        }
        self.zone_reset(i);
    }

    /// Node `i` shuts down gracefully: it sends a goodbye, then stops.
    pub fn stop(&mut self, i: usize) {
        for e in self.endpoints_of(i) {
            if let Some(p) = self.nodes[e].proto.as_mut() {
                p.goodbye(self.base + self.now);
                self.with_lane(e, |lane, net| lane.flush(net));
                self.nodes[e].proto = None;
            }
            self.nodes[e].local.clear();
            self.nodes[e].local_total = 0;
        }
        self.zone_reset(i);
    }

    /// Node `i` starts again with a new incarnation (above every incarnation so far, of any
    /// node) and an empty table.
    pub fn restart(&mut self, i: usize) {
        for e in self.endpoints_of(i) {
            let inc = self.next_incarnation.max(self.nodes[e].incarnation + 1);
            self.next_incarnation = inc + 1;
            self.nodes[e].incarnation = inc;
            self.nodes[e].local.clear();
            self.nodes[e].local_total = 0;
            self.nodes[e].proto = Some(self.make(e, inc));
            self.nodes[e].next_tick = self.now;
            self.nodes[e].wake = None;
            self.queue(Event::tick(self.now, e));
        }
        self.zone_reset(i);
    }

    /// Splits the cluster: node `i` goes to group `groups[i]`.
    pub fn partition(&mut self, groups: &[u32]) {
        for (i, &g) in groups.iter().enumerate().take(self.len()) {
            for e in self.endpoints_of(i) {
                self.nodes[e].group = g;
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Queues node `i`'s wake if its protocol asks for a new one.
    fn rewake(&mut self, i: usize) {
        self.with_lane(i, |lane, net| lane.rewake(net));
    }

    /// Queues `ev` for its node.
    fn queue(&mut self, ev: Event) {
        let e = ev.endpoint();
        let u = self.zones.as_ref().map_or(e, |z| e % z.n);
        self.queues[u].push(Reverse(ev));
    }

    /// Runs until simulated time `until` (from the start).
    ///
    /// A window at a time, node by node: nothing a node sends reaches another before the
    /// network's delay, so within a window that long from the earliest event due, each node's
    /// events are its own, and a node can run all of its window before the next node runs its
    /// (without delay, a window is one instant). Each node still handles its events in time
    /// order, with everything it could have heard of by then; only the order between nodes
    /// within a window differs from one global time order, and with it the order the random
    /// faults are drawn in: a seed's run changes, not how runs fare (`converge` at 64 × 2k,
    /// 10 % loss, 16 seeds: the same worst and median times and bytes within a seed's spread).
    /// A node then takes a window's datagrams one after another with its tables still in cache,
    /// where each datagram went to every receiver in turn (64 × 100k at 1 %: 56–59 → 42 s a
    /// seed; 256 × 100k: 234 → 135 s, the same day). A zoned node's two endpoints share a
    /// queue: their glue acts on both at once.
    ///
    /// So a window's nodes may also run on two threads, when a core is lent
    /// ([`Sim::spare_cores`]): each node handles its window as before and records what it
    /// sends; the network's faults are then drawn for it in node order, as one thread draws
    /// them, and the run is the same (`converge` gives the same figures).
    pub fn run_until(&mut self, until: Duration) {
        // The nodes may have been changed from outside since the last run.
        for i in 0..self.nodes.len() {
            self.rewake(i);
        }
        let span = self.faults.delay.max(Duration::from_nanos(1));
        while let Some(start) = self
            .queues
            .iter()
            .filter_map(|q| q.peek().map(|Reverse(e)| e.at()))
            .min()
        {
            if start > until {
                break;
            }
            let end = (start + span).min(until + Duration::from_nanos(1));
            if self.window_on_two_threads(end) {
                continue;
            }
            for u in 0..self.queues.len() {
                while self.queues[u].peek().is_some_and(|Reverse(e)| e.at() < end) {
                    let Some(Reverse(ev)) = self.queues[u].pop() else {
                        break;
                    };
                    // A wake asked for a time already past runs now.
                    self.now = ev.at().max(self.clocks[u]);
                    self.clocks[u] = self.now;
                    self.handle(ev);
                }
            }
        }
        self.now = until;
    }

    /// Event `ev` came up, at `self.now`.
    fn handle(&mut self, ev: Event) {
        let e = ev.endpoint();
        if let What::Tick(i) = ev.what
            && !self.nodes[i].stale_tick(&ev)
        {
            self.zone_before_tick(i);
        }
        self.with_lane(e, |lane, net| lane.handle(net, ev));
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs tick by tick until [`Sim::exact`] holds (checked once per tick), for at most
    /// `max_ticks`; returns the ticks it took, or `None`.
    pub fn ticks_to_exact(&mut self, max_ticks: u32) -> Option<u32> {
        for k in 0..=max_ticks {
            if self.exact() {
                return Some(k);
            }
            self.run_for(self.tick);
        }
        None
    }
}
