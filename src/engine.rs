//! [`Engine`]: the builder, the engine thread's lifecycle, and the read-side API.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::protocol::{self, Event, NodeInfo, ProtoStats, Protocol, defaults};
use crate::cluster::wire::{MIN_BUDGET, Seal};
use crate::error::Error;
use crate::net::{Net, Transport};
use crate::reducer::{Reducer, TickReport};
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
    cluster: ClusterOptions,
}

/// The cluster half of the builder's options.
#[derive(Debug, Clone)]
struct ClusterOptions {
    transport: Option<Transport>,
    name: String,
    key: Vec<u8>,
    key_file: Option<PathBuf>,
    insecure: bool,
    node: Option<u64>,
    dead_after: Option<Duration>,
    budget: usize,
    refresh_cycle: u32,
    max_clock_skew: Duration,
    max_repair_rate: u64,
    max_tick_datagrams: usize,
    max_remote_topics: usize,
    observer: bool,
    /// A multicast option given without multicast: `(option, value)`.
    bad: Option<(&'static str, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            transport: None,
            name: "headcount".into(),
            key: Vec::new(),
            key_file: None,
            insecure: false,
            node: None,
            dead_after: None,
            budget: defaults::BUDGET,
            refresh_cycle: defaults::REFRESH_CYCLE,
            max_clock_skew: defaults::MAX_CLOCK_SKEW,
            max_repair_rate: defaults::MAX_REPAIR_RATE,
            max_tick_datagrams: defaults::MAX_TICK_DATAGRAMS,
            max_remote_topics: defaults::MAX_REMOTE_TOPICS,
            observer: false,
            bad: None,
        }
    }
}

/// The default multicast group: `headcount serve` and `demo` use it on loopback.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 70, 77), 7380);

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
            cluster: ClusterOptions::default(),
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

    /// Joins a cluster over UDP multicast to `group` (an IPv4 multicast address and port), on
    /// the loopback interface unless [`Builder::interface`] says otherwise. Every node of the
    /// cluster counts every node's users.
    pub fn multicast(mut self, group: SocketAddrV4) -> Self {
        self.cluster.transport = Some(Transport::Multicast {
            group,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            loopback: true,
        });
        self
    }

    fn with_multicast(
        mut self,
        option: &'static str,
        value: String,
        f: impl FnOnce(&mut Ipv4Addr, &mut u32, &mut bool),
    ) -> Self {
        match self.cluster.transport.as_mut() {
            Some(Transport::Multicast {
                interface,
                ttl,
                loopback,
                ..
            }) => f(interface, ttl, loopback),
            _ => self.cluster.bad = Some((option, value)),
        }
        self
    }

    /// The interface address to join the multicast group on and send from (default 127.0.0.1).
    /// Without a cluster key, only a loopback interface is accepted unless [`Builder::insecure`].
    pub fn interface(self, addr: Ipv4Addr) -> Self {
        self.with_multicast("interface", addr.to_string(), |i, _, _| *i = addr)
    }

    /// Multicast TTL (default 1: the local subnet).
    pub fn multicast_ttl(self, ttl: u32) -> Self {
        self.with_multicast("multicast_ttl", ttl.to_string(), |_, t, _| *t = ttl)
    }

    /// Multicast loopback (default on; needed for several nodes on one host).
    pub fn multicast_loopback(self, on: bool) -> Self {
        self.with_multicast("multicast_loopback", on.to_string(), |_, _, l| *l = on)
    }

    /// Joins a cluster over UDP unicast instead: bind `bind`, send to every address in `peers`
    /// (for networks without multicast, like most clouds).
    pub fn unicast(
        mut self,
        bind: SocketAddr,
        peers: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        self.cluster.transport = Some(Transport::Unicast {
            bind,
            peers: peers.into_iter().collect(),
        });
        self
    }

    /// The cluster's name (default `"headcount"`): nodes of other clusters are ignored.
    pub fn cluster_name(mut self, name: &str) -> Self {
        self.cluster.name = name.to_string();
        self
    }

    /// The cluster key: every datagram carries a MAC with it, and topic wire hashes are keyed
    /// with it. Every node needs the same key.
    pub fn cluster_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.cluster.key = key.as_ref().to_vec();
        self
    }

    /// Reads the cluster key from a file (its whole contents).
    pub fn cluster_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cluster.key_file = Some(path.into());
        self
    }

    /// Allows a non-loopback cluster without a key (anyone on the network can then forge counts).
    pub fn insecure(mut self, on: bool) -> Self {
        self.cluster.insecure = on;
        self
    }

    /// This node's id (default: random per start). Give a node the same id across restarts
    /// (see [`Builder::node_name`]): a restarted node then replaces its old incarnation's counts
    /// at once on every peer. With a new id each start, the old process's counts stay on its
    /// peers until `dead_after`, so a crash-and-restart is counted twice for that long. Two
    /// running nodes must never share an id (each refuses the other's datagrams, counted as
    /// [`crate::Reject::NodeId`]).
    pub fn node_id(mut self, id: u64) -> Self {
        self.cluster.node = Some(id);
        self
    }

    /// This node's id derived from a stable name, such as the host name and the server's listen
    /// address: `node_id(headcount::node_id_for(name))`.
    pub fn node_name(self, name: &str) -> Self {
        self.node_id(node_id_for(name))
    }

    /// How far a peer's clock may be from this node's (default 30 s). Datagrams are stamped
    /// with the sender's clock; one sealed further away is refused (counted as
    /// [`crate::Reject::Clock`]), which is what makes a captured datagram useless to replay
    /// after that long. Keep the cluster's clocks in sync (NTP) well within it.
    pub fn max_clock_skew(mut self, d: Duration) -> Self {
        self.cluster.max_clock_skew = d;
        self
    }

    /// Bytes per second this node spends answering peers' resync requests, over all of them
    /// (default 12.5 MB/s, a tenth of a 1 Gbit/s link). Requests past it are refused (counted as
    /// [`crate::Reject::Budget`]) and asked again later.
    pub fn max_repair_rate(mut self, bytes_per_second: u64) -> Self {
        self.cluster.max_repair_rate = bytes_per_second;
        self
    }

    /// Most topics tracked over all peers' tables together (default 2^24): with
    /// [`Builder::max_topics`] per peer, this bounds the memory peers can make this node use
    /// (about 30 bytes per peer entry, plus about 100 per distinct topic).
    pub fn max_remote_topics(mut self, n: usize) -> Self {
        self.cluster.max_remote_topics = n;
        self
    }

    /// Most delta and names datagrams one tick sends (default 512, about 700 kB); a burst of
    /// changes beyond that goes out over the next ticks.
    pub fn max_tick_datagrams(mut self, n: usize) -> Self {
        self.cluster.max_tick_datagrams = n;
        self
    }

    /// A peer not heard from for this long is dropped with its counts (default: 3 s or 30 ticks,
    /// whichever is longer; at least 3 of the peer's own ticks).
    pub fn dead_after(mut self, d: Duration) -> Self {
        self.cluster.dead_after = Some(d);
        self
    }

    /// The largest datagram payload (default 1400 bytes; raise it for jumbo frames).
    pub fn payload_budget(mut self, bytes: usize) -> Self {
        self.cluster.budget = bytes;
        self
    }

    /// Ticks over which the rotating refresh resends the whole table (default 10).
    pub fn refresh_cycle(mut self, ticks: u32) -> Self {
        self.cluster.refresh_cycle = ticks;
        self
    }

    /// Joins the cluster as a passive observer: counts nothing of its own and never appears in
    /// other nodes' views (for `headcount watch`).
    pub fn observer(mut self, on: bool) -> Self {
        self.cluster.observer = on;
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
        let c = &self.cluster;
        if let Some((option, value)) = &c.bad {
            return Err(Error::Config {
                option,
                value: value.clone(),
                reason: "applies to multicast: call multicast(group) first".into(),
            });
        }
        if !(MIN_BUDGET..=65_000).contains(&c.budget) {
            return Err(bad(
                "payload_budget",
                c.budget,
                &format!("must be between {MIN_BUDGET} and 65000 bytes"),
            ));
        }
        if !(1..=100_000).contains(&c.refresh_cycle) {
            return Err(bad(
                "refresh_cycle",
                c.refresh_cycle,
                "must be between 1 and 100000 ticks",
            ));
        }
        if let Some(d) = c.dead_after
            && d < self.tick * 2
        {
            return Err(bad("dead_after", d, "must be at least two ticks"));
        }
        if c.max_clock_skew < Duration::from_millis(100)
            || c.max_clock_skew > Duration::from_secs(3600)
        {
            return Err(bad(
                "max_clock_skew",
                c.max_clock_skew,
                "must be between 100ms and 1h",
            ));
        }
        if c.max_repair_rate < 64 * 1024 {
            return Err(bad(
                "max_repair_rate",
                c.max_repair_rate,
                "must be at least 65536 bytes per second",
            ));
        }
        if c.max_remote_topics < 1 {
            return Err(bad(
                "max_remote_topics",
                c.max_remote_topics,
                "must be at least 1",
            ));
        }
        if !(1..=1 << 20).contains(&c.max_tick_datagrams) {
            return Err(bad(
                "max_tick_datagrams",
                c.max_tick_datagrams,
                "must be between 1 and 2^20",
            ));
        }
        if let Some(t) = &c.transport {
            t.validate()?;
        }
        Ok(shards)
    }

    /// The cluster key material: the key file's contents, or the key given.
    fn key(&self) -> Result<Vec<u8>, Error> {
        let c = &self.cluster;
        let key = match &c.key_file {
            Some(p) => std::fs::read(p).map_err(|e| Error::Config {
                option: "cluster_key_file",
                value: p.display().to_string(),
                reason: format!("cannot read it: {e}"),
            })?,
            None => c.key.clone(),
        };
        if c.key_file.is_some() && key.is_empty() {
            let p = c
                .key_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::Config {
                option: "cluster_key_file",
                value: p,
                reason: "the file is empty".into(),
            });
        }
        if let Some(t) = &c.transport
            && key.is_empty()
            && !t.is_loopback()
            && !c.insecure
        {
            return Err(Error::Config {
                option: "cluster_key",
                value: "(none)".into(),
                reason: format!(
                    "refusing to run the cluster on a non-loopback network ({t:?}) without a key: \
                     set cluster_key / cluster_key_file, or insecure(true) to accept forged counts"
                ),
            });
        }
        Ok(key)
    }

    /// Starts the engine thread (and opens the cluster's sockets, if configured).
    pub fn start(self) -> Result<Engine, Error> {
        let shards = self.validate()?;
        let key = self.key()?;
        let hash_key = if self.cluster.transport.is_some() {
            Seal::topic_hash_key(&self.cluster.name, &key)
        } else {
            self.hash_key
        };
        let cluster = match &self.cluster.transport {
            Some(t) => {
                let net = Net::open(t)?;
                let node = self.cluster.node.unwrap_or_else(random_u64);
                let incarnation = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                let mut pc = protocol::Config::new(node, incarnation, self.tick);
                if let Some(d) = self.cluster.dead_after {
                    pc.dead_after = d;
                }
                pc.budget = self.cluster.budget;
                pc.refresh_cycle = self.cluster.refresh_cycle;
                pc.max_clock_skew = self.cluster.max_clock_skew;
                pc.max_repair_rate = self.cluster.max_repair_rate;
                pc.max_tick_datagrams = self.cluster.max_tick_datagrams;
                pc.max_remote_topics = self.cluster.max_remote_topics;
                pc.max_topics_per_peer = self.max_topics;
                pc.observer = self.cluster.observer;
                let proto = Protocol::new(pc, Seal::new(&self.cluster.name, &key));
                Some(ClusterNode {
                    proto,
                    net,
                    by_hash: HashMap::default(),
                    handoff: VecDeque::new(),
                    queued: vec![false; self.max_topics],
                })
            }
            None => None,
        };
        let hot = HotBox::new(Hot::new(shards, self.max_topics, self.ring_capacity));
        let topics = Topics::new(self.max_topics, hash_key);
        let pool = Arc::new(ShardPool::new(hot, shards, topics));
        let inner = Arc::new(Inner {
            pool,
            view: View::new(self.max_topics),
            feed: Feed::new(self.feed_capacity),
            stats: RawStats::default(),
            shards,
            tick: self.tick,
            node: cluster
                .as_ref()
                .map(|c| (c.proto.config().node, c.net.local_addr())),
            cluster_view: Mutex::new(ClusterView::default()),
            top: Mutex::new(TopCache::default()),
        });
        let poll = mio::Poll::new().map_err(Error::Spawn)?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).map_err(Error::Spawn)?);
        let mut cluster = cluster;
        if let Some(c) = cluster.as_mut() {
            c.net
                .register(poll.registry(), GROUP, SOCK)
                .map_err(Error::Spawn)?;
        }
        let (tx, rx) = mpsc::channel();
        let thread = {
            let inner = inner.clone();
            let cfg = self.clone();
            std::thread::Builder::new()
                .name("headcount-engine".into())
                .spawn(move || run(inner, cfg, rx, poll, cluster))
                .map_err(Error::Spawn)?
        };
        Ok(Engine {
            h: Arc::new(Handle {
                inner,
                tx: Mutex::new(Some(tx)),
                waker,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

/// Work a tick always does, however long it takes: changes handed to the cluster protocol, and
/// names learned from peers interned. Past it, a tick stops at its work budget (a quarter of the
/// tick for each) and the rest waits for the next tick, so that a burst of a million new topics
/// never makes one tick take seconds (and peers never take a busy node for a dead one).
const MIN_WORK_PER_TICK: usize = 4096;

const WAKER: mio::Token = mio::Token(0);
const GROUP: mio::Token = mio::Token(1);
const SOCK: mio::Token = mio::Token(2);

/// The node id [`Builder::node_name`] derives from `name` (never 0; the same on every build).
pub fn node_id_for(name: &str) -> u64 {
    let h = blake3::Hasher::new_derive_key("headcount 2026 node id v1")
        .update(name.as_bytes())
        .finalize();
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default()) | 1
}

/// A random 64-bit number (node ids), from the OS-seeded hasher keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// The cluster side of the engine thread.
struct ClusterNode {
    proto: Protocol,
    net: Net,
    /// Topic wire hash → local id, for every id in use.
    /// (Keys are keyed SipHash outputs already: a fast hasher is enough.)
    by_hash: HashMap<u64, u32, foldhash::fast::FixedState>,
    /// Ids whose local count changed and was not handed to the protocol yet, oldest first
    /// (each once: `queued`).
    handoff: VecDeque<u32>,
    queued: Vec<bool>,
}

/// What the engine thread publishes about the cluster each tick.
#[derive(Default)]
struct ClusterView {
    nodes: Vec<NodeInfo>,
    stats: ProtoStats,
    /// Changes waiting to be handed to the protocol.
    handoff: u64,
    send_errors: u64,
    recv_errors: u64,
}

/// Cluster counters, read with [`Engine::cluster_stats`].
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
}

pub(crate) struct Inner {
    pub(crate) pool: Arc<ShardPool>,
    pub(crate) view: View,
    pub(crate) feed: Arc<Feed>,
    stats: RawStats,
    shards: usize,
    tick: Duration,
    /// This node's id and the address peers see it at, when in a cluster.
    node: Option<(u64, Option<SocketAddr>)>,
    cluster_view: Mutex<ClusterView>,
    /// [`Engine::top`]'s list, computed at most once per tick.
    top: Mutex<TopCache>,
}

#[derive(Default)]
struct TopCache {
    valid: bool,
    tick: u64,
    k: usize,
    list: Vec<(Arc<str>, u64)>,
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
    tick_total_ns: StdAtomicU64,
    /// Ticks by duration: one counter per bound of [`TICK_BUCKETS`], then one for longer ticks.
    tick_hist: [StdAtomicU64; TICK_BUCKETS.len() + 1],
    stopped: AtomicBool,
}

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
    /// Time spent in ticks, over all ticks.
    pub tick_time: Duration,
    /// Ticks by duration (not cumulative): `tick_histogram[i]` counts the ticks that took at most
    /// `TICK_BUCKETS[i]` (and more than the bound before it); the last counts the longer ones.
    pub tick_histogram: [u64; TICK_BUCKETS.len() + 1],
}

enum Cmd {
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

fn run(
    inner: Arc<Inner>,
    cfg: Builder,
    rx: mpsc::Receiver<Cmd>,
    mut poll: mio::Poll,
    cluster: Option<ClusterNode>,
) {
    #[cfg(feature = "affinity")]
    if cfg.pin
        && let Some(last) = core_affinity::get_core_ids().and_then(|v| v.last().copied())
    {
        core_affinity::set_for_current(last);
    }
    let mut node = Node {
        reducer: Reducer::new(&inner.pool.hot, cfg.retire_after),
        id_hash: vec![0; cfg.max_topics],
        dirty: Vec::new(),
        cluster,
        inner,
    };
    let mut events = mio::Events::with_capacity(16);
    // Datagrams may be waiting that the last receive left (it stops at a deadline).
    let mut more = false;
    // Jitter the first tick, so that a fleet started together does not tick in lock-step.
    let mut next = Instant::now()
        + cfg
            .tick
            .mul_f64(0.5 + (random_u64() % 1000) as f64 / 2000.0);
    loop {
        let now = Instant::now();
        let mut deadline = next;
        if let Some(w) = node.cluster.as_ref().and_then(|c| c.proto.poll_timeout()) {
            deadline = deadline.min(w);
        }
        let wait = if more {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(now)
        };
        let _ = poll.poll(&mut events, Some(wait));
        let mut syncs = Vec::new();
        let mut stop = false;
        loop {
            match rx.try_recv() {
                Ok(Cmd::Sync(done)) => syncs.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            }
        }
        // Receiving goes on until the next tick is due, for at most half a tick, and for at
        // least an eighth of one even when a tick is overdue (a node busy sending must still
        // hear its peers: their heartbeats wait behind its own looped-back datagrams).
        let start = Instant::now();
        more = !node.receive(next.max(start + cfg.tick / 8).min(start + cfg.tick / 2));
        let now = Instant::now();
        if !syncs.is_empty() || now >= next {
            node.tick(now, !syncs.is_empty());
            if now >= next {
                next += cfg.tick;
                if next < now {
                    next = now + cfg.tick;
                }
            }
        }
        if let Some(c) = node.cluster.as_mut() {
            c.proto.handle_timeout(now);
        }
        node.flush();
        for d in syncs {
            let _ = d.send(());
        }
        if stop {
            if let Some(c) = node.cluster.as_mut() {
                c.proto.goodbye(Instant::now());
            }
            node.flush();
            break;
        }
    }
    node.inner.stats.stopped.store(true, StdOrdering::Release);
    node.inner.feed.close();
}

/// The engine thread's state.
struct Node {
    inner: Arc<Inner>,
    reducer: Reducer,
    cluster: Option<ClusterNode>,
    /// Per id: its wire hash (0 when unused).
    id_hash: Vec<u64>,
    /// Scratch: ids whose cluster count may have changed this tick.
    dirty: Vec<u32>,
}

impl Node {
    /// Handles the datagrams waiting, until `deadline` at most; false if some may be left.
    fn receive(&mut self, deadline: Instant) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return true;
        };
        let proto = &mut c.proto;
        let mut now = Instant::now();
        let mut n = 0u32;
        c.net.recv_all(deadline, |from, bytes| {
            n += 1;
            if n.is_multiple_of(64) {
                now = Instant::now();
            }
            proto.handle_datagram(now, from, bytes);
        })
    }

    fn flush(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            while let Some(t) = c.proto.poll_transmit() {
                c.net.send(&t);
            }
        }
    }

    fn remote(&self, id: u32) -> u64 {
        match &self.cluster {
            Some(c) => c.proto.remote(self.id_hash[id as usize]),
            None => 0,
        }
    }

    /// One tick; `full`: an explicit `sync` (re-read everything that may have changed).
    fn tick(&mut self, now: Instant, full: bool) {
        let start = Instant::now();
        let inner = self.inner.clone();
        let pool = &inner.pool;
        let work_budget = inner.tick / 4;
        let mut rep: TickReport = self.reducer.sum(&pool.hot, &pool.topics, now, full);
        // Ids whose cluster count may have changed for another reason than a local change:
        // new ids, and topics whose peers' counts changed.
        self.dirty.clear();
        for &id in &self.reducer.new_ids {
            if let Some(n) = pool.topics.name(id) {
                self.id_hash[id as usize] = n.hash;
                if let Some(c) = self.cluster.as_mut() {
                    c.by_hash.insert(n.hash, id);
                }
            }
            self.dirty.push(id);
        }
        let mut feed = Vec::new();
        let want_feed = inner.feed.has_readers();
        let publish = |id: u32, count: u64, feed: &mut Vec<(Arc<str>, u64)>| {
            // Only this thread writes the view: a plain load and store, no locked instruction.
            let slot = inner.view.cluster(id);
            if slot.load(Ordering::Relaxed) != count {
                slot.store(count, Ordering::Relaxed);
                if want_feed && let Some(n) = pool.topics.name(id) {
                    feed.push((n.name, count));
                }
            }
        };
        if let Some(c) = self.cluster.as_mut() {
            for ch in &self.reducer.changes {
                inner.view.local(ch.id).store(ch.count, Ordering::Relaxed);
                if !std::mem::replace(&mut c.queued[ch.id as usize], true) {
                    c.handoff.push_back(ch.id);
                }
                self.dirty.push(ch.id);
            }
            // Hand the changed counts to the protocol within the tick's work budget (a burst of a
            // million new topics takes a few ticks, and every tick stays short). Each id's hash
            // and count are read now, so a queued id always hands over its latest count.
            let mut n = 0usize;
            while let Some(&id) = c.handoff.front() {
                if n.is_multiple_of(256) && n >= MIN_WORK_PER_TICK && start.elapsed() > work_budget
                {
                    break;
                }
                n += 1;
                c.handoff.pop_front();
                c.queued[id as usize] = false;
                let mut hash = self.id_hash[id as usize];
                if hash == 0
                    && let Some(n) = pool.topics.name(id)
                {
                    // Interned after this tick listed the new ids, and joined before the
                    // rings were drained: its hash is learned here (the next tick lists it).
                    hash = n.hash;
                    self.id_hash[id as usize] = hash;
                    c.by_hash.insert(hash, id);
                }
                if hash == 0 {
                    continue; // freed since it was queued, and not reused yet
                }
                let count = self.reducer.local(id).min(u64::from(u32::MAX)) as u32;
                // The protocol keeps names it was told: look one up only for a topic it lacks.
                let name = match (count, c.proto.name(hash)) {
                    (0, _) | (_, Some(_)) => None,
                    _ => pool.topics.name(id),
                };
                c.proto
                    .set_local(hash, count, name.as_ref().map(|n| &n.name));
            }
            c.proto.handle_tick(now);
            // The peer sums that changed (the protocol reports all of them first), then topics
            // only peers have: intern their names so they can be counted and listed here.
            let mut n = 0usize;
            loop {
                if n.is_multiple_of(256)
                    && n >= MIN_WORK_PER_TICK
                    && start.elapsed() > work_budget * 2
                {
                    break;
                }
                let (h, name) = match c.proto.poll_event() {
                    Some(Event::RemoteChanged { hash, .. }) => {
                        if let Some(&id) = c.by_hash.get(&hash) {
                            self.dirty.push(id);
                        }
                        continue;
                    }
                    Some(Event::NameLearned { hash, name }) => (hash, name),
                    None => break,
                };
                n += 1;
                if c.by_hash.contains_key(&h) {
                    continue;
                }
                if let Ok(t) = pool.topics.intern(&name, &pool.hot)
                    && pool.topics.name(t.id()).is_some_and(|n| n.hash == h)
                {
                    self.id_hash[t.id() as usize] = h;
                    c.by_hash.insert(h, t.id());
                    self.dirty.push(t.id());
                }
            }
        } else {
            // One pass over the changes: without peers the cluster count is the local count.
            for k in 0..self.reducer.changes.len() {
                let ch = self.reducer.changes[k];
                inner.view.local(ch.id).store(ch.count, Ordering::Relaxed);
                publish(ch.id, ch.count, &mut feed);
                self.reducer.set_cluster(ch.id, ch.count, now);
            }
        }
        // Everything else (usually few ids; an id listed twice is harmless: this is idempotent).
        for i in 0..self.dirty.len() {
            let id = self.dirty[i];
            let count = self.reducer.local(id) + self.remote(id);
            publish(id, count, &mut feed);
            self.reducer.set_cluster(id, count, now);
        }
        let remote_total = self.cluster.as_ref().map_or(0, |c| c.proto.remote_total());
        inner
            .view
            .total_local
            .store(self.reducer.total, Ordering::Relaxed);
        inner
            .view
            .total_cluster
            .store(self.reducer.total + remote_total, Ordering::Relaxed);
        if !feed.is_empty() {
            inner.feed.publish(TickChanges {
                tick: self.reducer.tick_number(),
                changes: feed,
            });
        }

        let id_hash = &self.id_hash;
        let cluster = &self.cluster;
        let remote = |id: u32| {
            cluster
                .as_ref()
                .map_or(0, |c| c.proto.remote(id_hash[id as usize]))
        };
        self.reducer
            .retire(&pool.hot, &pool.topics, now, remote, &mut rep);
        for &id in &self.reducer.freed {
            let h = std::mem::take(&mut self.id_hash[id as usize]);
            if let Some(c) = self.cluster.as_mut() {
                c.by_hash.remove(&h);
                // A count still waiting to be handed over belongs to the old topic: hand it over
                // now (it is zero: only topics at zero are freed), before the id is reused.
                if c.queued[id as usize] && h != 0 {
                    c.proto.set_local(h, 0, None);
                }
            }
            inner.view.set(id, 0, 0);
        }
        if let Some(c) = self.cluster.as_ref() {
            let mut v = inner.cluster_view.lock().unwrap_or_else(|e| e.into_inner());
            v.nodes = c.proto.nodes(now);
            v.stats = c.proto.stats();
            v.handoff = c.handoff.len() as u64;
            v.send_errors = c.net.send_errors;
            v.recv_errors = c.net.recv_errors;
        }

        let s = &inner.stats;
        let ns = start.elapsed().as_nanos() as u64;
        s.last_tick_ns.store(ns, StdOrdering::Relaxed);
        s.max_tick_ns.fetch_max(ns, StdOrdering::Relaxed);
        s.tick_total_ns.fetch_add(ns, StdOrdering::Relaxed);
        let bucket = TICK_BUCKETS.partition_point(|b| b.as_nanos() < u128::from(ns));
        s.tick_hist[bucket].fetch_add(1, StdOrdering::Relaxed);
        s.changed
            .fetch_add(rep.changed as u64, StdOrdering::Relaxed);
        s.retired.fetch_add(rep.freed as u64, StdOrdering::Relaxed);
        s.revived
            .fetch_add(rep.revived as u64, StdOrdering::Relaxed);
        s.retiring.store(rep.retiring as u64, StdOrdering::Relaxed);
        s.rescans
            .store(self.reducer.rescans(), StdOrdering::Relaxed);
        s.watching
            .store(self.reducer.watching() as u64, StdOrdering::Relaxed);
        // Last, with release: `sync()` callers and `stats()` readers see the tick's effects.
        s.ticks.fetch_add(1, StdOrdering::Release);
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
            tick_time: Duration::from_nanos(s.tick_total_ns.load(StdOrdering::Relaxed)),
            tick_histogram: std::array::from_fn(|i| s.tick_hist[i].load(StdOrdering::Relaxed)),
        }
    }

    /// The cluster's other nodes: live peers and recently dead ones (empty without a cluster).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.inner()
            .cluster_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .nodes
            .clone()
    }

    /// Cluster counters (`None` without a cluster).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.inner().node?;
        let v = self
            .inner()
            .cluster_view
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(ClusterStats {
            protocol: v.stats,
            peers_alive: v.nodes.iter().filter(|n| n.alive).count(),
            peers_converged: v.nodes.iter().filter(|n| n.alive && n.converged).count(),
            peers_over_cap: v.nodes.iter().filter(|n| n.alive && n.over_cap).count(),
            backlog: v.stats.backlog + v.handoff,
            send_errors: v.send_errors,
            recv_errors: v.recv_errors,
        })
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> Option<u64> {
        self.inner().node.map(|n| n.0)
    }

    /// The address peers see this node at.
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
