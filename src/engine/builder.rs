//! The [`Builder`]: every option of an engine, its default (written once, in [`defaults`]), its
//! validation, and [`Builder::start`], which builds the core and the cluster node and hands them
//! to the engine thread (`driver.rs`).

use super::cpu::cpus;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::protocol::{self, Protocol};
use crate::cluster::wire::{MIN_BUDGET, Seal};
use crate::core::hot::{Hot, HotBox};
use crate::core::shard::ShardPool;
use crate::core::topic::Topics;
use crate::core::view::{Feed, View};
use crate::engine::channel::ChannelTransport;
use crate::engine::driver::{self, Settings};
use crate::engine::link::Link;
use crate::engine::net::{Discovery, Transport};
use crate::engine::stats::{ClusterView, RawStats};
use crate::engine::{Engine, Inner, TopCache};
use crate::error::Error;

mod channel;
mod cluster;
pub mod defaults;
mod transport;

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
    claim_on_join: bool,
    cluster: ClusterOptions,
}

/// The cluster half of the builder's options.
#[derive(Debug, Clone)]
struct ClusterOptions {
    transport: Option<Transport>,
    /// The application's transport instead ([`Builder::channel`], in `builder/channel.rs`).
    channel: Option<ChannelTransport>,
    name: String,
    key: Vec<u8>,
    key_file: Option<PathBuf>,
    insecure: bool,
    node: Option<u64>,
    dead_after: Option<Duration>,
    budget: usize,
    refresh_cycle: u32,
    idle_refresh: u32,
    max_clock_skew: Duration,
    max_repair_rate: u64,
    repair_burst: usize,
    max_tick_datagrams: usize,
    max_remote_topics: usize,
    relay_fanout: usize,
    parity: bool,
    observer: bool,
    /// `name:port`s resolved for peers (unicast).
    dns: Vec<String>,
    dns_interval: Duration,
    /// A multicast option given without multicast: `(option, value)`.
    bad: Option<(&'static str, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            transport: None,
            channel: None,
            name: defaults::CLUSTER_NAME.into(),
            key: Vec::new(),
            key_file: None,
            insecure: false,
            node: None,
            dead_after: None,
            budget: defaults::PAYLOAD_BUDGET,
            refresh_cycle: defaults::REFRESH_CYCLE,
            idle_refresh: defaults::IDLE_REFRESH,
            max_clock_skew: defaults::MAX_CLOCK_SKEW,
            max_repair_rate: defaults::MAX_REPAIR_RATE,
            repair_burst: defaults::REPAIR_BURST,
            max_tick_datagrams: defaults::MAX_TICK_DATAGRAMS,
            max_remote_topics: defaults::MAX_REMOTE_TOPICS,
            relay_fanout: defaults::RELAY_FANOUT,
            parity: true,
            observer: false,
            dns: Vec::new(),
            dns_interval: defaults::DNS_INTERVAL,
            bad: None,
        }
    }
}

/// The default multicast group: `headcount serve` and `demo` use it on loopback.
pub const DEFAULT_GROUP: SocketAddrV4 = defaults::GROUP;

impl Default for Builder {
    fn default() -> Self {
        Builder {
            shards: None,
            tick: defaults::TICK,
            max_topics: defaults::MAX_TOPICS,
            retire_after: defaults::RETIRE_AFTER,
            ring_capacity: defaults::RING_CAPACITY,
            feed_capacity: defaults::FEED_CAPACITY,
            hash_key: defaults::HASH_KEY,
            pin: false,
            claim_on_join: defaults::CLAIM_ON_JOIN,
            cluster: ClusterOptions::default(),
        }
    }
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

    /// Whether [`Engine::join`] claims a free shard for a thread on its first join (default
    /// true). Turn it off when the threads that count are bound explicitly, with
    /// [`Engine::bind_thread`] (for example from a tokio runtime's `on_thread_start`, see
    /// `Engine::bind_runtime`): then a stray thread (a `#[tokio::main]` thread, a
    /// `spawn_blocking` thread) never takes a shard a worker needs, and its joins go through the
    /// shared core. See the crate docs, "Using headcount from async Rust".
    pub fn claim_on_join(mut self, yes: bool) -> Self {
        self.claim_on_join = yes;
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

    /// Ticks of changes kept for slow [`ChangeFeed`](crate::ChangeFeed) readers (default 64).
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

    /// Pin the engine thread to the last CPU this process may run on (default off; needs the
    /// `affinity` feature). Workers pinned with [`pin_worker`](crate::pin_worker) keep off it.
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
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
        if c.relay_fanout == 1 || c.relay_fanout > 255 {
            return Err(bad(
                "relay_fanout",
                c.relay_fanout,
                "must be 0 (no relaying) or between 2 and 255",
            ));
        }
        if c.max_repair_rate < 64 * 1024 {
            return Err(bad(
                "max_repair_rate",
                c.max_repair_rate,
                "must be at least 65536 bytes per second",
            ));
        }
        if c.repair_burst < c.budget || c.repair_burst > 64 << 20 {
            return Err(bad(
                "repair_burst",
                c.repair_burst,
                "must be between the payload budget and 64 MiB",
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
        self.validate_channel()?;
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
        self.require_channel_key(&key)?;
        Ok(key)
    }

    /// Starts the engine thread (and opens the cluster's sockets, if configured).
    pub fn start(self) -> Result<Engine, Error> {
        let shards = self.validate()?;
        let key = self.key()?;
        let hash_key = if self.in_cluster() {
            Seal::topic_hash_key(&self.cluster.name, &key)
        } else {
            self.hash_key
        };
        let cluster = self
            .open_link(&key)?
            .map(|link| self.cluster_node(link, &key));
        let hot = HotBox::new(Hot::new(shards, self.max_topics, self.ring_capacity));
        let topics = Topics::new(self.max_topics, hash_key, crate::MAX_NAME_LEN);
        let pool = Arc::new(ShardPool::new(hot, shards, topics, self.claim_on_join));
        let inner = Arc::new(Inner {
            pool,
            view: View::new(self.max_topics),
            feed: Feed::new(self.feed_capacity),
            stats: RawStats::default(),
            shards,
            tick: self.tick,
            node: cluster
                .as_ref()
                .map(|(proto, net)| (proto.config().node, net.local_addr())),
            cluster_view: Mutex::new(ClusterView::default()),
            top: Mutex::new(TopCache::default()),
        });
        // Jitter the first tick, so that a fleet started together does not tick in lock-step.
        let first_tick = self
            .tick
            .mul_f64(0.5 + (random_u64() % 1000) as f64 / 2000.0);
        let settings = Settings {
            tick: self.tick,
            first_tick,
            retire_after: self.retire_after,
            max_topics: self.max_topics,
            pin: self.pin,
        };
        driver::spawn(inner, settings, cluster)
    }

    /// How a UDP transport finds and learns peers: DNS names, and learning with a key.
    pub(super) fn discovery(&self, t: &Transport, key: &[u8]) -> Result<Discovery, Error> {
        if self.cluster.dns_interval.is_zero() {
            return Err(bad(
                "dns_interval",
                self.cluster.dns_interval,
                "must be more than zero",
            ));
        }
        for name in &self.cluster.dns {
            crate::engine::dns::validate(name)?;
        }
        // Learning peers (from their datagrams, and from gossip) needs the key: without one,
        // anyone could make this node send to any address.
        let learn = matches!(t, Transport::Unicast { .. }) && !key.is_empty();
        Ok(Discovery {
            dns: self.cluster.dns.clone(),
            dns_interval: self.cluster.dns_interval,
            learn,
            dead_after: self
                .cluster
                .dead_after
                .unwrap_or_else(|| defaults::dead_after(self.tick)),
        })
    }

    /// Sets up the cluster's protocol, to run over `link`.
    fn cluster_node(&self, link: Link, key: &[u8]) -> (Protocol, Link) {
        let learn = link.learns();
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
        pc.idle_refresh = self.cluster.idle_refresh;
        pc.max_clock_skew = self.cluster.max_clock_skew;
        pc.max_repair_rate = self.cluster.max_repair_rate;
        pc.repair_burst = self.cluster.repair_burst;
        pc.max_tick_datagrams = self.cluster.max_tick_datagrams;
        pc.max_remote_topics = self.cluster.max_remote_topics;
        pc.max_topics_per_peer = self.max_topics;
        pc.observer = self.cluster.observer;
        pc.gossip_members = learn;
        // Relaying sends to peers' learned addresses: only where this node learns them (unicast
        // with a key).
        pc.relay_fanout = if learn { self.cluster.relay_fanout } else { 0 };
        pc.parity = self.cluster.parity;
        // Secret: peers cannot aim the topic hashes they send at one slot of this node's tables.
        pc.table_seed = random_u64();
        let proto = Protocol::new(pc, Seal::new(&self.cluster.name, key));
        (proto, link)
    }
}

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

impl Engine {
    /// A builder with every option at its default.
    pub fn builder() -> Builder {
        Builder::default()
    }
}
