//! The cluster protocol as a sans-IO state machine: no sockets, no clock reads.
//!
//! Feed it the local table's changes ([`Protocol::set_local`]), ticks ([`Protocol::on_tick`])
//! and received datagrams ([`Protocol::on_datagram`]), all with the time passed in; take the
//! datagrams to send from [`Protocol::poll_transmit`] and the changed peer sums from
//! [`Protocol::take_remote_changes`]. `net.rs` runs it over real sockets; the simulation tests
//! and `headcount-perf converge` run hundreds of them over a simulated network.
//!
//! # Admission: what each datagram must meet
//!
//! Every rule below is checked before a datagram changes anything; a datagram that fails one is
//! dropped whole and counted by [`Reject`] reason. The tests in `tests/replay.rs` capture every
//! kind from a real node and replay it (live sender, dead sender, restarted sender, foreign
//! source address) against these rules.
//!
//! 1. **Rate**: at most [`Config::max_rate`] datagrams a second from one source address.
//! 2. **Seal**: length, magic, version, the keyed MAC over the whole datagram, the cluster id,
//!    the kind, and a body that matches its count. Without the key nothing else is reachable.
//! 3. **Clock**: the sender's `time` is within [`Config::max_clock_skew`] of this node's clock.
//!    A captured datagram is therefore useless to a replayer after that window, whatever else
//!    this node remembers or forgot; a node whose clock is off by more is refused, loudly
//!    (`Reject::Clock`), never silently miscounted.
//! 4. **Identity**: a datagram with this node's own id is its own echo (multicast loops back) if
//!    it carries this incarnation; a newer incarnation, or an older one sent after this process
//!    started, is another process using the same id (`Reject::NodeId`: misconfiguration).
//! 5. **Incarnation**: an incarnation older than the one known (or tombstoned) for that node is
//!    refused; a newer one replaces the node's whole state at once (a restart). The incarnation a
//!    node said goodbye with, or was replaced in, never comes back.
//! 6. **Freshness**: per node and incarnation, group datagrams (delta, refresh, heartbeat, names,
//!    goodbye) need a sequence number above the last one seen; replies (resync reply, names in
//!    reply) one at least as high (they carry the sender's current number). A node dropped for
//!    silence is kept as a tombstone (incarnation, last sequence number, last `time`, when it
//!    was last heard) for longer than the clock window: it comes back only with a higher
//!    sequence number *and* a `time` that moved on by as much as this node's clock did since it
//!    was last heard (minus half of `dead_after`) — a healed partition, never a replay of what a
//!    dead node sent before it died.
//! 7. **Caps**: at most [`Config::max_peers`] peers and [`Config::max_observers`] observers,
//!    [`Config::max_topics_per_peer`] topics per peer and [`Config::max_remote_topics`] over all
//!    peers. A peer over a cap is flagged ([`NodeInfo::over_cap`]) and asked for its table with
//!    exponential backoff, not in a loop.
//! 8. **Resync requests** are answered only when they come from a live peer or observer, from
//!    the address its group datagrams come from, for its current incarnation, with a request
//!    number it has not used (`Reject::NotPeer`, `Reject::Stale`); at most once per
//!    [`Config::resync_interval`] per requester (`Reject::Rate`); and only while the node's repair
//!    budget ([`Config::max_repair_rate`] bytes a second over all requesters) is not spent
//!    (`Reject::Budget`). Replies (the table, the names) go to that requester only. So no
//!    unauthenticated, replayed or spoofed input makes this node send anything to an address
//!    that has not proven it is a live member: an outsider's amplification factor is zero.
//!
//! # Work per tick
//!
//! A tick sends at most [`Config::max_tick_datagrams`] delta and names datagrams (plus its share
//! of the rotating refresh); changes beyond that wait, deduplicated, for the next tick. The last
//! datagram of a tick carries [`FLAG_END`] (the digest is final) only once nothing waits, so
//! peers never mistake a backlog for divergence. A burst of a million new topics therefore takes
//! a few ticks to send instead of one tick of seconds, and heartbeats keep flowing meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Maps with a fixed hasher: iteration order depends only on what was inserted, so a seeded
/// simulation replays exactly. (Keys are node ids and keyed topic hashes: not attacker-chosen.)
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

use super::wire::{
    self, Body, Encoder, FLAG_END, FLAG_NAMES, FLAG_OBSERVER, FLAG_REPLY, FLAG_STATE, Kind, Reject,
    Seal, Stamp,
};

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Every peer: the multicast group, or each configured unicast peer.
    Group,
    /// One address (resync requests and replies).
    To(SocketAddr),
}

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where.
    pub dest: Dest,
    /// The sealed datagram.
    pub bytes: Vec<u8>,
}

/// The wall clock as the protocol sees it: the Unix time read once, advanced by the monotonic
/// `now` every call passes in (so it never jumps while the process runs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// A monotonic instant…
    pub base: Instant,
    /// …and the Unix time at that instant, in milliseconds.
    pub unix_ms: u64,
}

impl Clock {
    /// The system clock, read now.
    pub fn system() -> Clock {
        Clock {
            base: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// The Unix time at `now`, in milliseconds.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.base) {
            Some(d) => self.unix_ms.saturating_add(d.as_millis() as u64),
            None => self
                .unix_ms
                .saturating_sub(self.base.duration_since(now).as_millis() as u64),
        }
    }
}

/// Protocol settings. See [`crate::Builder`] for the user-facing options.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub node: u64,
    /// This node's incarnation (boot epoch).
    pub incarnation: u64,
    /// This node's tick.
    pub tick: Duration,
    /// A peer not heard from for this long (or 3 of its own ticks, if longer) is dropped.
    pub dead_after: Duration,
    /// Largest datagram.
    pub budget: usize,
    /// Ticks over which the rotating refresh covers the whole table.
    pub refresh_cycle: u32,
    /// Most peers tracked.
    pub max_peers: usize,
    /// Most observers tracked (they never count; they may ask for resyncs).
    pub max_observers: usize,
    /// Most topics tracked per peer.
    pub max_topics_per_peer: usize,
    /// Most topics tracked over all peers together.
    pub max_remote_topics: usize,
    /// Most datagrams accepted per second from one source address.
    pub max_rate: u32,
    /// Least time between two resync requests to the same peer, and between two replies to the
    /// same requester.
    pub resync_interval: Duration,
    /// Bytes per second this node spends answering resync requests, over all requesters.
    pub max_repair_rate: u64,
    /// Most delta and names datagrams one tick sends; the rest waits for the next tick.
    pub max_tick_datagrams: usize,
    /// How far a datagram's `time` may be from this node's clock.
    pub max_clock_skew: Duration,
    /// This node's wall clock.
    pub clock: Clock,
    /// A passive observer: counts nothing, never counted or listed by peers.
    pub observer: bool,
}

/// Defaults of the cluster settings that the engine's builder also documents.
pub mod defaults {
    use std::time::Duration;

    /// Largest datagram (fits a 1500-byte MTU with IP and UDP headers).
    pub const BUDGET: usize = 1400;
    /// Ticks per full rotating refresh.
    pub const REFRESH_CYCLE: u32 = 10;
    /// Allowed distance between a sender's clock and the receiver's.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
    /// Resync replies per second, in bytes: a tenth of a 1 Gbit/s link.
    pub const MAX_REPAIR_RATE: u64 = 12_500_000;
    /// Topics tracked over all peers' tables together.
    pub const MAX_REMOTE_TOPICS: usize = 1 << 24;
    /// Delta and names datagrams per tick (about 700 kB: what a receiver's socket buffer takes
    /// while it is busy, many times over).
    pub const MAX_TICK_DATAGRAMS: usize = 512;

    /// `dead_after` for a tick: 3 s or 30 ticks, whichever is longer.
    pub fn dead_after(tick: Duration) -> Duration {
        (tick * 30).max(Duration::from_secs(3))
    }
}

impl Config {
    /// Defaults for a node with tick `tick`, on the system clock.
    pub fn new(node: u64, incarnation: u64, tick: Duration) -> Config {
        Config {
            node,
            incarnation,
            tick,
            dead_after: defaults::dead_after(tick),
            budget: defaults::BUDGET,
            refresh_cycle: defaults::REFRESH_CYCLE,
            max_peers: 1024,
            max_observers: 64,
            max_topics_per_peer: 1 << 21,
            max_remote_topics: defaults::MAX_REMOTE_TOPICS,
            max_rate: 20_000,
            resync_interval: (tick / 4).max(Duration::from_millis(5)),
            max_repair_rate: defaults::MAX_REPAIR_RATE,
            max_tick_datagrams: defaults::MAX_TICK_DATAGRAMS,
            max_clock_skew: defaults::MAX_CLOCK_SKEW,
            clock: Clock::system(),
            observer: false,
        }
    }

    /// How long a dropped node's tombstone is kept: past the clock window, so that when it is
    /// forgotten every datagram the node sent before is already refused by the clock rule.
    fn tomb_ttl(&self) -> Duration {
        (self.dead_after * 10).max(self.max_clock_skew + self.dead_after * 2)
    }
}

/// The order-independent digest term of one `(hash, count)` entry (splitmix64 finalizer).
#[inline]
pub fn mix(hash: u64, count: u32) -> u64 {
    let mut z = hash ^ u64::from(count).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A table of absolute counts by topic hash with its running digest.
#[derive(Debug, Default, Clone)]
struct Table {
    map: BTreeMap<u64, u32>,
    digest: u64,
    /// The sum of the counts (kept as the table changes: a peer's total is read every tick).
    sum: u64,
}

impl Table {
    /// Sets `hash` to `count` (0 removes); returns the old count.
    fn set(&mut self, hash: u64, count: u32) -> u32 {
        let old = if count == 0 {
            self.map.remove(&hash)
        } else {
            self.map.insert(hash, count)
        };
        let old = old.unwrap_or(0);
        if old != 0 {
            self.digest = self.digest.wrapping_sub(mix(hash, old));
        }
        if count != 0 {
            self.digest = self.digest.wrapping_add(mix(hash, count));
        }
        self.sum = self.sum - u64::from(old) + u64::from(count);
        old
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug)]
struct Peer {
    /// Where its datagrams come from: pinned for the incarnation (see [`Peer::heard_from`]).
    addr: SocketAddr,
    /// Fresh datagrams heard from `addr` (saturating), and when the last one was.
    addr_seen: u32,
    addr_heard: Instant,
    incarnation: u64,
    last_seq: u64,
    last_heard: Instant,
    tick: Duration,
    table: Table,
    /// The digest and size the peer last declared final (a [`FLAG_END`] datagram).
    declared: Option<(u64, u32)>,
    received: u64,
    lost: u64,
    rejected: u64,
    /// When this node last asked it for a resync.
    last_request: Option<Instant>,
    /// A passive observer: no table, never counted or listed.
    observer: bool,
    /// The latest `time` it sent.
    time: u64,
    /// The highest request number accepted from it.
    requests_seen: u64,
    /// When this node last sent it its table, and its names, in answer to a request (each
    /// at most once per resync interval: a names request does not hold up a table request).
    last_reply: [Option<Instant>; 2],
    /// Its table went over a cap here: what this node counts of it is incomplete.
    over_cap: bool,
    /// While over a cap: the wait before asking it for its table again (doubles each time).
    backoff: Duration,
}

impl Peer {
    /// Notes a fresh, authentic datagram of this peer from `from`. The address stays pinned:
    /// a copy of a fresh datagram that reaches this node first from elsewhere (a replay racing
    /// the original, an interception) must not redirect what this node sends to the peer. Only
    /// when the pinned address has been silent for `quiet` does the address move (a real
    /// change of address within one incarnation, such as a NAT rebinding).
    fn heard_from(&mut self, from: SocketAddr, now: Instant, quiet: Duration) {
        if from == self.addr {
            self.addr_seen = self.addr_seen.saturating_add(1);
            self.addr_heard = now;
        } else if now.saturating_duration_since(self.addr_heard) > quiet {
            self.addr = from;
            self.addr_seen = 1;
            self.addr_heard = now;
        }
    }

    /// Whether this node may send to the peer's address: it has heard the peer there at least
    /// [`SETTLED`] times (a single replayed or intercepted datagram does not make an address).
    fn settled(&self) -> bool {
        self.addr_seen >= SETTLED
    }

    fn converged(&self) -> bool {
        self.observer || self.declared == Some((self.table.digest, self.table.len() as u32))
    }
    fn total(&self) -> u64 {
        self.table.sum
    }
}

/// What is remembered of a dropped node.
#[derive(Debug, Clone, Copy)]
struct Tomb {
    incarnation: u64,
    /// Its address: a revived node is pinned there again.
    addr: SocketAddr,
    /// This incarnation never comes back (it said goodbye, or a newer one replaced it).
    barred: bool,
    last_seq: u64,
    requests_seen: u64,
    /// The last `time` it sent, and when it was last heard here.
    time: u64,
    heard: Instant,
    until: Instant,
}

/// A peer as [`crate::Engine::nodes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Node id.
    pub node: u64,
    /// Where its datagrams come from.
    pub addr: SocketAddr,
    /// Its incarnation.
    pub incarnation: u64,
    /// Time since it was last heard from.
    pub last_heard: Duration,
    /// False for a peer that was recently declared dead (its counts are gone).
    pub alive: bool,
    /// This node's copy of the peer's table matches the digest the peer declared.
    pub converged: bool,
    /// Its table is over this node's caps (`max_topics`): what this node counts of it is
    /// incomplete, and its total here is too low.
    pub over_cap: bool,
    /// Topics in its table.
    pub topics: usize,
    /// Sum of its counts.
    pub total: u64,
    /// Datagrams accepted from it.
    pub received: u64,
    /// Datagrams it sent that never arrived (sequence gaps).
    pub lost: u64,
    /// Datagrams from it that were rejected.
    pub rejected: u64,
}

/// Protocol counters.
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct ProtoStats {
    /// Datagrams produced.
    pub sent: u64,
    /// Bytes produced.
    pub bytes_sent: u64,
    /// Datagrams accepted.
    pub received: u64,
    /// Datagrams rejected, per [`Reject`] (indexed as [`Reject::ALL`]).
    pub rejected: [u64; Reject::COUNT],
    /// Resync requests sent.
    pub resync_requests: u64,
    /// Resync requests answered.
    pub resync_replies: u64,
    /// Bytes sent answering resync requests.
    pub repair_bytes: u64,
    /// Peers dropped as dead.
    pub peers_died: u64,
    /// Live observers.
    pub observers: u64,
    /// Changed topics waiting for a later tick (the per-tick datagram budget was spent).
    pub backlog: u64,
}

impl ProtoStats {
    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Rejections for one reason.
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r.index()]
    }
}

/// What [`Protocol::on_datagram`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Our own (multicast loops back): ignored.
    Own,
    /// Dropped.
    Rejected(Reject),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Fresh datagrams a peer must have sent from its address before this node sends it requests or
/// answers its requests there.
const SETTLED: u32 = 2;
/// Most names kept for topics with no count yet.
const PENDING_NAMES: usize = 1 << 16;
/// The longest wait before asking a peer that is over a cap for its table again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A datagram planned for this tick: kind, refresh range, entries.
type Planned = (Kind, Option<(u64, u64)>, Vec<(u64, u32)>);

/// The cluster protocol state machine of one node.
pub struct Protocol {
    cfg: Config,
    seal: Seal,
    enc: Encoder,
    seq: u64,
    table: Table,
    /// Hashes whose count changed and was not sent yet, oldest first (each once: `queued`).
    changed: VecDeque<u64>,
    queued: HashSet<u64>,
    names: HashMap<u64, Arc<str>>,
    /// Hashes whose names go out with their next delta.
    new_names: HashSet<u64>,
    cursor: u64,
    refresh_credit: f64,
    peers: HashMap<u64, Peer>,
    /// Peers that are observers (counted apart from `max_peers`).
    observers: usize,
    dead: HashMap<u64, (NodeInfo, Instant)>,
    /// Hashes some peer counts whose names this node does not know.
    unnamed: HashSet<u64>,
    /// Names received before any count of their topic.
    pending_names: HashMap<u64, Arc<str>>,
    tombs: HashMap<u64, Tomb>,
    remote: HashMap<u64, u64>,
    remote_total: u64,
    /// Topics over all peers' tables.
    remote_topics: usize,
    remote_changed: HashSet<u64>,
    learned: VecDeque<(u64, Arc<str>)>,
    out: VecDeque<Transmit>,
    rates: HashMap<SocketAddr, Bucket>,
    /// The repair budget: bytes that may still be sent in resync replies (negative: a debt).
    repair: Bucket,
    /// This node's resync requests so far (their request numbers).
    requests: u64,
    names_asked: Option<Instant>,
    /// Topics that became unnamed since names were last asked for.
    newly_unnamed: usize,
    /// When a rate-limited resync request becomes due.
    wake: Option<Instant>,
    stats: ProtoStats,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("node", &self.cfg.node)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Protocol {
    /// A node's protocol state.
    pub fn new(cfg: Config, seal: Seal) -> Protocol {
        let tick_ms = cfg.tick.as_millis().min(u128::from(u32::MAX)) as u32;
        let enc = Encoder::new(
            seal.cluster(),
            cfg.node,
            cfg.incarnation,
            tick_ms,
            cfg.budget,
        );
        let repair = Bucket {
            tokens: cfg.max_repair_rate as f64,
            at: cfg.clock.base,
        };
        Protocol {
            cfg,
            seal,
            enc,
            seq: 0,
            table: Table::default(),
            changed: VecDeque::new(),
            queued: HashSet::default(),
            names: HashMap::default(),
            new_names: HashSet::default(),
            cursor: 0,
            refresh_credit: 0.0,
            peers: HashMap::default(),
            observers: 0,
            dead: HashMap::default(),
            unnamed: HashSet::default(),
            pending_names: HashMap::default(),
            tombs: HashMap::default(),
            remote: HashMap::default(),
            remote_total: 0,
            remote_topics: 0,
            remote_changed: HashSet::default(),
            learned: VecDeque::new(),
            out: VecDeque::new(),
            rates: HashMap::default(),
            repair,
            requests: 0,
            names_asked: None,
            newly_unnamed: 0,
            wake: None,
            stats: ProtoStats::default(),
        }
    }

    /// This node's settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Sets this node's count for a topic (0 removes it), with its name when known.
    pub fn set_local(&mut self, hash: u64, count: u32, name: Option<&Arc<str>>) {
        let old = self.table.set(hash, count);
        if old != count && self.queued.insert(hash) {
            self.changed.push_back(hash);
        }
        if let Some(n) = name {
            self.names.entry(hash).or_insert_with(|| n.clone());
        }
        if count == 0 {
            // Nobody counts it here any more: keep its name only while a peer counts it (the
            // engine gives it again if it comes back), so names cannot pile up with churn.
            self.new_names.remove(&hash);
            if !self.remote.contains_key(&hash) {
                self.names.remove(&hash);
            }
        } else if old == 0 && self.names.contains_key(&hash) {
            // A topic (re)appearing here: announce its name with its count.
            self.new_names.insert(hash);
        }
    }

    /// The digest of this node's table.
    pub fn digest(&self) -> u64 {
        self.table.digest
    }

    /// The sum of every live peer's count for `hash`.
    pub fn remote(&self, hash: u64) -> u64 {
        self.remote.get(&hash).copied().unwrap_or(0)
    }

    /// The sum of every live peer's counts.
    pub fn remote_total(&self) -> u64 {
        self.remote_total
    }

    /// Calls `f(hash, peer sum)` for every hash whose peer sum changed since the last call.
    pub fn take_remote_changes(&mut self, mut f: impl FnMut(u64, u64)) {
        for h in self.remote_changed.drain() {
            f(h, self.remote.get(&h).copied().unwrap_or(0));
        }
    }

    /// Up to `max` names learned from peers since the last call, oldest first (the rest wait
    /// for the next call).
    pub fn take_learned_names(&mut self, max: usize) -> Vec<(u64, Arc<str>)> {
        let n = max.min(self.learned.len());
        self.learned.drain(..n).collect()
    }

    /// The name of `hash`, if known.
    pub fn name(&self, hash: u64) -> Option<&Arc<str>> {
        self.names.get(&hash)
    }

    /// When [`Protocol::handle_timeout`] should next be called (a rate-limited resync request
    /// becomes due), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wake
    }

    /// Sends the resync requests that became due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.wake.is_some_and(|w| w <= now) {
            self.wake = None;
            self.request_where_needed(now);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> ProtoStats {
        let mut s = self.stats;
        s.observers = self.observers as u64;
        s.backlog = self.changed.len() as u64;
        s
    }

    /// Live peers and recently dead ones (observers are not listed).
    pub fn nodes(&self, now: Instant) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.observer)
            .map(|(&node, p)| NodeInfo {
                node,
                addr: p.addr,
                incarnation: p.incarnation,
                last_heard: now.saturating_duration_since(p.last_heard),
                alive: true,
                converged: p.converged(),
                over_cap: p.over_cap,
                topics: p.table.len(),
                total: p.total(),
                received: p.received,
                lost: p.lost,
                rejected: p.rejected,
            })
            .collect();
        v.extend(self.dead.values().map(|(d, at)| NodeInfo {
            last_heard: d.last_heard + now.saturating_duration_since(*at),
            ..d.clone()
        }));
        v.sort_by_key(|n| (!n.alive, n.node));
        v
    }

    /// Whether every live peer's copy is converged.
    pub fn converged(&self) -> bool {
        self.peers.values().all(Peer::converged)
    }

    fn push(&mut self, dest: Dest, bytes: Vec<u8>) {
        self.stats.sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push_back(Transmit { dest, bytes });
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn topics(&self) -> u32 {
        self.table.len().min(u32::MAX as usize) as u32
    }

    /// The header fields of a datagram sent now with sequence number `seq`.
    fn stamp(&self, now: Instant, seq: u64) -> Stamp {
        Stamp {
            seq,
            digest: self.table.digest,
            topics: self.topics(),
            time: self.cfg.clock.unix_ms(now),
        }
    }

    /// Names datagrams for those of `hashes` whose names this node knows. To the group, each
    /// with a sequence number of its own; or, in reply to a request (`to`), unicast with the
    /// current sequence number and [`FLAG_REPLY`]. Returns how many datagrams it queued.
    fn send_names(&mut self, now: Instant, hashes: &[u64], to: Option<SocketAddr>) -> usize {
        let list: Vec<(u64, Arc<str>)> = hashes
            .iter()
            .filter_map(|h| self.names.get(h).map(|n| (*h, n.clone())))
            .collect();
        if list.is_empty() {
            return 0;
        }
        let st = self.stamp(now, self.seq);
        let mut seq = self.seq;
        let reply = to.is_some();
        let mut next = || {
            if !reply {
                seq += 1;
            }
            seq
        };
        let flags = if reply { FLAG_REPLY } else { 0 };
        let dgs = self.enc.names(
            &self.seal,
            flags,
            &mut next,
            &st,
            list.iter().map(|(h, n)| (*h, &**n)),
        );
        self.seq = seq;
        let n = dgs.len();
        let dest = to.map_or(Dest::Group, Dest::To);
        for d in dgs {
            self.push(dest, d);
        }
        n
    }

    /// One tick: queues this tick's datagrams (names and deltas of what changed, within the
    /// per-tick budget; refresh slices; or a heartbeat) and drops dead peers. The last datagram
    /// is flagged [`FLAG_END`] when no change waits for a later tick.
    pub fn on_tick(&mut self, now: Instant) {
        self.expire(now);
        if self.cfg.observer {
            // Observers count nothing; a heartbeat makes them known, so their requests are
            // answered.
            self.changed.clear();
            self.queued.clear();
            self.new_names.clear();
            let seq = self.next_seq();
            let d = self.enc.bare(
                &self.seal,
                Kind::Heartbeat,
                FLAG_END | FLAG_OBSERVER,
                &self.stamp(now, seq),
            );
            self.push(Dest::Group, d);
            self.request_where_needed(now);
            return;
        }
        let first = self.out.len();
        let mut budget = self.cfg.max_tick_datagrams.max(1);

        // What changed, oldest first: each topic's name (when new here), then its count.
        let per = self.enc.entries_per_datagram(Kind::Delta);
        let room = self.enc.budget() - wire::HEADER_LEN - wire::TAG_LEN;
        while budget > 0 && !self.changed.is_empty() {
            let n = per.min(self.changed.len());
            // The names this chunk announces must fit the budget with its delta (the first
            // chunk of a tick always goes, so a tick always makes progress).
            let name_bytes: usize = self
                .changed
                .range(..n)
                .filter(|h| self.new_names.contains(h))
                .filter_map(|h| self.names.get(h))
                .map(|name| 9 + name.len())
                .sum();
            if name_bytes.div_ceil(room) + 1 > budget && budget < self.cfg.max_tick_datagrams {
                break;
            }
            let hashes: Vec<u64> = self.changed.drain(..n).collect();
            let mut announce = Vec::new();
            let mut entries = Vec::with_capacity(n);
            for h in hashes {
                self.queued.remove(&h);
                let c = self.table.map.get(&h).copied().unwrap_or(0);
                if self.new_names.remove(&h) && c != 0 {
                    announce.push(h);
                }
                entries.push((h, c));
            }
            budget = budget.saturating_sub(self.send_names(now, &announce, None));
            let seq = self.next_seq();
            let d = self.enc.entries(
                &self.seal,
                Kind::Delta,
                0,
                &self.stamp(now, seq),
                None,
                &entries,
            );
            self.push(Dest::Group, d);
            budget = budget.saturating_sub(1);
        }

        // The rotating refresh: the whole table every `refresh_cycle` ticks. Not while changes
        // wait: a slice would list topics whose names peers have not been sent yet, and the
        // backlog carries their counts anyway.
        let mut batch: Vec<Planned> = Vec::new();
        let per_r = self.enc.entries_per_datagram(Kind::Refresh);
        let dgrams = self.table.len().div_ceil(per_r).max(1) as f64;
        if self.changed.is_empty() {
            self.refresh_credit += dgrams / f64::from(self.cfg.refresh_cycle.max(1));
        }
        while self.refresh_credit >= 1.0 {
            self.refresh_credit -= 1.0;
            let (lo, hi, e) = self.slice(self.cursor, per_r);
            self.cursor = hi.wrapping_add(1);
            batch.push((Kind::Refresh, Some((lo, hi)), e));
        }
        for (kind, range, e) in batch {
            let seq = self.next_seq();
            let d = self
                .enc
                .entries(&self.seal, kind, 0, &self.stamp(now, seq), range, &e);
            self.push(Dest::Group, d);
        }

        if self.out.len() == first {
            let seq = self.next_seq();
            let flags = if self.changed.is_empty() { FLAG_END } else { 0 };
            let d = self
                .enc
                .bare(&self.seal, Kind::Heartbeat, flags, &self.stamp(now, seq));
            self.push(Dest::Group, d);
        } else if self.changed.is_empty() {
            // The tick's last datagram says the digest is final. (All of them are ours and
            // sealed just now: set the flag and seal again.)
            if let Some(last) = self.out.back_mut() {
                set_end(&self.seal, &mut last.bytes);
            }
        }
        self.request_where_needed(now);
    }

    /// The slice of the local table starting at `lo`: up to `n` entries and the range they
    /// cover (to the end of the hash space if the table ends first).
    fn slice(&self, lo: u64, n: usize) -> (u64, u64, Vec<(u64, u32)>) {
        let e: Vec<(u64, u32)> = self
            .table
            .map
            .range(lo..)
            .take(n + 1)
            .map(|(h, c)| (*h, *c))
            .collect();
        if e.len() > n {
            // Stop just before the first entry that did not fit.
            let hi = e[n].0 - 1;
            (lo, hi, e[..n].to_vec())
        } else {
            (lo, u64::MAX, e)
        }
    }

    fn expire(&mut self, now: Instant) {
        let dead: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.last_heard) > self.cfg.dead_after.max(p.tick * 3)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in dead {
            if self.peers.get(&n).is_some_and(|p| !p.observer) {
                self.stats.peers_died += 1;
            }
            self.drop_peer(n, now, false);
        }
        self.tombs.retain(|_, t| t.until > now);
        // Tombstones are made only by authenticated datagrams of peers that were admitted, so
        // this bound is rarely reached; past it the oldest go first.
        let cap = self.cfg.max_peers + self.cfg.max_observers;
        if self.tombs.len() > cap {
            let mut by_age: Vec<(Instant, u64)> =
                self.tombs.iter().map(|(n, t)| (t.until, *n)).collect();
            by_age.sort_unstable();
            for (_, n) in by_age.iter().take(self.tombs.len() - cap) {
                self.tombs.remove(n);
            }
        }
        let tombs = &self.tombs;
        self.dead.retain(|n, _| tombs.contains_key(n));
        if self.rates.len() > 4 * self.cfg.max_peers {
            self.rates.clear();
        }
    }

    /// Removes a peer and its counts, keeping a tombstone. `barred`: its incarnation never comes
    /// back (it said goodbye, or a newer incarnation replaced it).
    fn drop_peer(&mut self, node: u64, now: Instant, barred: bool) {
        let Some(p) = self.peers.remove(&node) else {
            return;
        };
        if p.observer {
            self.observers -= 1;
        }
        self.remote_topics -= p.table.len();
        for (&h, &c) in &p.table.map {
            self.sub_remote(h, c);
        }
        if !p.observer {
            let info = NodeInfo {
                node,
                addr: p.addr,
                incarnation: p.incarnation,
                last_heard: now.saturating_duration_since(p.last_heard),
                alive: false,
                converged: false,
                over_cap: false,
                topics: 0,
                total: 0,
                received: p.received,
                lost: p.lost,
                rejected: p.rejected,
            };
            self.dead.insert(node, (info, now));
        }
        self.tombs.insert(
            node,
            Tomb {
                incarnation: p.incarnation,
                addr: p.addr,
                barred,
                last_seq: p.last_seq,
                requests_seen: p.requests_seen,
                time: p.time,
                heard: p.last_heard,
                until: now + self.cfg.tomb_ttl(),
            },
        );
    }

    fn sub_remote(&mut self, h: u64, c: u32) {
        if c == 0 {
            return;
        }
        if let Some(s) = self.remote.get_mut(&h) {
            *s -= u64::from(c);
            self.remote_total -= u64::from(c);
            if *s == 0 {
                self.remote.remove(&h);
                self.unnamed.remove(&h);
                if !self.table.map.contains_key(&h) {
                    self.names.remove(&h);
                }
            }
        }
        self.remote_changed.insert(h);
    }

    fn add_remote(&mut self, h: u64, c: u32) {
        if c == 0 {
            return;
        }
        let s = self.remote.entry(h).or_insert(0);
        if *s == 0 && !self.names.contains_key(&h) {
            match self.pending_names.remove(&h) {
                Some(n) => {
                    self.names.insert(h, n.clone());
                    self.learned.push_back((h, n));
                }
                None => {
                    if self.unnamed.insert(h) {
                        self.newly_unnamed += 1;
                    }
                }
            }
        }
        *s += u64::from(c);
        self.remote_total += u64::from(c);
        self.remote_changed.insert(h);
    }

    /// Sets peer `node`'s count of `h`.
    fn peer_set(&mut self, node: u64, h: u64, c: u32) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let before = p.table.len();
        let old = p.table.set(h, c);
        let after = p.table.len();
        self.remote_topics = self.remote_topics + after - before;
        if old != c {
            self.sub_remote(h, old);
            self.add_remote(h, c);
        }
    }

    /// Asks for a resync every peer whose copy does not match what it declared, and, when some
    /// counted topic has no name here, every peer for its names: soon (one resync interval)
    /// for topics that became unnamed since the last ask, rarely for the same ones again. A peer
    /// over a cap is asked with exponential backoff (its table cannot converge here).
    fn request_where_needed(&mut self, now: Instant) {
        let every = self.cfg.resync_interval;
        let names_every = (every * 20).max(Duration::from_secs(5));
        let since = |t: Instant| now.saturating_duration_since(t);
        let ask_names = !self.unnamed.is_empty()
            && self.names_asked.is_none_or(|t| {
                since(t) >= names_every || (self.newly_unnamed > 0 && since(t) >= every)
            });
        let mut wake: Option<Instant> = None;
        if ask_names {
            self.names_asked = Some(now);
            self.newly_unnamed = 0;
        } else if self.unnamed.is_empty() {
            self.newly_unnamed = 0;
        } else if self.newly_unnamed > 0
            && let Some(t) = self.names_asked
        {
            // Come back when the new names may be asked for (in the future: had that time
            // passed, they would have been asked for just now).
            wake = Some(t + every);
        }
        let want: Vec<(u64, SocketAddr, u64, bool)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.observer && p.settled())
            .filter_map(|(&n, p)| {
                let behind = p.declared.is_some() && !p.converged();
                let wait = if p.over_cap { p.backoff } else { every };
                let due = p.last_request.is_none_or(|t| since(t) >= wait);
                if behind && !due {
                    let at = p.last_request.map_or(now, |t| t + wait);
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                let state = behind && due;
                (ask_names || state).then_some((n, p.addr, p.incarnation, state))
            })
            .collect();
        // A request or its reply may be lost: look again after one interval.
        if want.iter().any(|w| w.3) {
            let at = now + every;
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        self.wake = wake;
        for (node, addr, inc, state) in want {
            if state && let Some(p) = self.peers.get_mut(&node) {
                p.last_request = Some(now);
                if p.over_cap {
                    p.backoff = (p.backoff * 2).clamp(every, MAX_BACKOFF);
                }
            }
            self.stats.resync_requests += 1;
            self.requests += 1;
            let flags = if ask_names { FLAG_NAMES } else { 0 } | if state { FLAG_STATE } else { 0 };
            let d = self.enc.request(
                &self.seal,
                flags,
                &self.stamp(now, self.seq),
                node,
                inc,
                self.requests,
            );
            self.push(Dest::To(addr), d);
        }
    }

    fn rate_ok(&mut self, from: SocketAddr, now: Instant) -> bool {
        let max = f64::from(self.cfg.max_rate);
        let b = self.rates.entry(from).or_insert(Bucket {
            tokens: max,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * max).min(max);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn reject(&mut self, r: Reject, node: Option<u64>) -> Outcome {
        self.stats.rejected[r.index()] += 1;
        if let Some(p) = node.and_then(|n| self.peers.get_mut(&n)) {
            p.rejected += 1;
        }
        Outcome::Rejected(r)
    }

    /// Handles one received datagram: admission (see the module docs), then its effect.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Outcome {
        if !self.rate_ok(from, now) {
            return self.reject(Reject::Rate, None);
        }
        let d = match self.seal.open(bytes) {
            Ok(d) => d,
            Err(r) => return self.reject(r, None),
        };
        let h = d.header;
        let (node, inc, time) = (h.node.get(), h.incarnation.get(), h.time.get());
        if node == self.cfg.node {
            return match inc.cmp(&self.cfg.incarnation) {
                std::cmp::Ordering::Equal => Outcome::Own,
                // Another process with this id: a newer one, or an older one still sending
                // after this one started. (Before that: its leftovers, or a replay.)
                std::cmp::Ordering::Greater => self.reject(Reject::NodeId, None),
                std::cmp::Ordering::Less if time >= self.cfg.clock.unix_ms => {
                    self.reject(Reject::NodeId, None)
                }
                std::cmp::Ordering::Less => self.reject(Reject::Incarnation, None),
            };
        }
        let here = self.cfg.clock.unix_ms(now);
        if here.abs_diff(time) > self.cfg.max_clock_skew.as_millis() as u64 {
            return self.reject(Reject::Clock, Some(node));
        }
        if let Body::Target {
            node: target,
            incarnation: target_inc,
            request,
        } = d.body
        {
            return self.on_request(now, from, &d, target, target_inc, request);
        }
        if let Err(r) = self.admit(now, from, &d) {
            return self.reject(r, Some(node));
        }
        self.apply(now, from, d)
    }

    /// Rules 5 to 7 for a datagram that is not a request: on success the sender is a peer (new,
    /// revived from its tombstone, or replacing an older incarnation) and the datagram may be
    /// applied whole.
    fn admit(&mut self, now: Instant, from: SocketAddr, d: &wire::Datagram) -> Result<(), Reject> {
        let h = d.header;
        let (node, inc, seq, time) = (h.node.get(), h.incarnation.get(), h.seq.get(), h.time.get());
        let reply = d.kind == Kind::ResyncReply
            || (d.kind == Kind::Names && h.flags.get() & FLAG_REPLY != 0);
        let observer = d.kind == Kind::Heartbeat && h.flags.get() & FLAG_OBSERVER != 0;
        let mut revived = None;
        if let Some(t) = self.tombs.get(&node).copied() {
            if inc < t.incarnation || (inc == t.incarnation && t.barred) {
                return Err(Reject::Incarnation);
            }
            if inc == t.incarnation {
                // Dropped for silence: back only if this was sent after the drop, by the
                // sender's clock as far as ours moved since we last heard it.
                let moved = now.saturating_duration_since(t.heard).as_millis() as u64;
                let slack = (self.cfg.dead_after / 2).as_millis() as u64;
                if seq <= t.last_seq || time.saturating_add(slack) < t.time.saturating_add(moved) {
                    return Err(Reject::Stale);
                }
                revived = Some(t);
            }
        }
        match self.peers.get(&node) {
            Some(p) if inc < p.incarnation => return Err(Reject::Incarnation),
            Some(p) if inc > p.incarnation => {
                // A restart: the old process's counts go, whole, and its incarnation is barred.
                self.drop_peer(node, now, true);
                self.dead.remove(&node);
            }
            Some(p) => {
                let fresh = if reply {
                    seq >= p.last_seq
                } else {
                    seq > p.last_seq
                };
                if !fresh {
                    return Err(Reject::Stale);
                }
                if p.observer != observer && d.kind != Kind::Goodbye {
                    return Err(Reject::Malformed);
                }
                return self.check_caps(node, d);
            }
            None => {}
        }
        // A node this one does not know (any more): a tombstone of an older incarnation is
        // superseded; one of this incarnation was checked above.
        if let Some(t) = self.tombs.get(&node)
            && (revived.is_some() || inc > t.incarnation)
        {
            self.tombs.remove(&node);
            self.dead.remove(&node);
        }
        if d.kind == Kind::Goodbye {
            return Ok(());
        }
        if observer {
            if self.observers >= self.cfg.max_observers {
                return Err(Reject::TooManyPeers);
            }
        } else if self.peers.len() - self.observers >= self.cfg.max_peers {
            return Err(Reject::TooManyPeers);
        }
        let (last_seq, requests_seen) = match revived {
            Some(t) => (t.last_seq, t.requests_seen),
            None if reply => (seq, 0),
            None => (seq.saturating_sub(1), 0),
        };
        self.peers.insert(
            node,
            Peer {
                addr: revived.map_or(from, |t| t.addr),
                addr_seen: 0,
                addr_heard: now,
                incarnation: inc,
                last_seq,
                last_heard: now,
                tick: Duration::from_millis(u64::from(h.tick_ms.get())),
                table: Table::default(),
                declared: None,
                received: 0,
                lost: 0,
                rejected: 0,
                last_request: None,
                observer,
                time,
                requests_seen,
                last_reply: [None, None],
                over_cap: false,
                backoff: Duration::ZERO,
            },
        );
        if observer {
            self.observers += 1;
        }
        self.check_caps(node, d)
    }

    /// Caps before any change: a datagram is applied whole or not at all. Counts only when the
    /// datagram could reach a cap.
    fn check_caps(&mut self, node: u64, d: &wire::Datagram) -> Result<(), Reject> {
        let (cap, global) = (self.cfg.max_topics_per_peer, self.cfg.max_remote_topics);
        let Some(p) = self.peers.get(&node) else {
            return Ok(());
        };
        let over = match &d.body {
            Body::Entries(e) | Body::Range(_, _, e)
                if p.table.len() + e.len() > cap || self.remote_topics + e.len() > global =>
            {
                let new = e
                    .iter()
                    .filter(|e| e.count.get() != 0 && !p.table.map.contains_key(&e.hash.get()))
                    .count();
                p.table.len() + new > cap || self.remote_topics + new > global
            }
            _ => false,
        };
        if over {
            let p = self.peers.get_mut(&node).expect("checked above");
            if !p.over_cap {
                p.over_cap = true;
                p.backoff = self.cfg.resync_interval;
            }
            return Err(Reject::TooManyTopics);
        }
        Ok(())
    }

    /// Applies an admitted datagram.
    fn apply(&mut self, now: Instant, from: SocketAddr, d: wire::Datagram) -> Outcome {
        let h = d.header;
        let (node, seq, time) = (h.node.get(), h.seq.get(), h.time.get());
        self.stats.received += 1;
        if d.kind == Kind::Goodbye {
            if self.peers.contains_key(&node) {
                self.drop_peer(node, now, true);
            } else {
                self.tombs.insert(
                    node,
                    Tomb {
                        incarnation: h.incarnation.get(),
                        addr: from,
                        barred: true,
                        last_seq: seq,
                        requests_seen: 0,
                        time,
                        heard: now,
                        until: now + self.cfg.tomb_ttl(),
                    },
                );
            }
            return Outcome::Applied;
        }
        let reply = d.kind == Kind::ResyncReply || h.flags.get() & FLAG_REPLY != 0;
        let declared = (h.digest.get(), h.topics.get());
        let end = h.flags.get() & FLAG_END != 0;
        {
            let p = self.peers.get_mut(&node).expect("admitted");
            if !reply && seq > p.last_seq.saturating_add(1) {
                p.lost += seq - p.last_seq - 1;
            }
            p.last_seq = p.last_seq.max(seq);
            p.last_heard = now;
            p.heard_from(from, now, self.cfg.dead_after / 2);
            p.time = p.time.max(time);
            p.tick = Duration::from_millis(u64::from(h.tick_ms.get()));
            p.received += 1;
            if p.observer {
                return Outcome::Applied;
            }
        }
        match d.body {
            Body::Entries(e) => {
                for e in e {
                    self.peer_set(node, e.hash.get(), e.count.get());
                }
            }
            Body::Range(lo, hi, e) => {
                let listed: HashSet<u64> = e.iter().map(|e| e.hash.get()).collect();
                let gone: Vec<u64> = self.peers[&node]
                    .table
                    .map
                    .range(lo..=hi)
                    .filter(|(h, _)| !listed.contains(h))
                    .map(|(h, _)| *h)
                    .collect();
                for h in gone {
                    self.peer_set(node, h, 0);
                }
                for e in e {
                    self.peer_set(node, e.hash.get(), e.count.get());
                }
            }
            Body::Names(names) => {
                for (h, n) in names {
                    // Names of topics not counted yet (the counts may be in flight) wait in a
                    // bounded side table, so that names alone cannot grow memory.
                    if !self.remote.contains_key(&h) && !self.table.map.contains_key(&h) {
                        if self.pending_names.len() >= PENDING_NAMES {
                            self.pending_names.clear();
                        }
                        self.pending_names.insert(h, n.into());
                        continue;
                    }
                    if let std::collections::hash_map::Entry::Vacant(v) = self.names.entry(h) {
                        let n: Arc<str> = n.into();
                        v.insert(n.clone());
                        self.unnamed.remove(&h);
                        self.learned.push_back((h, n));
                    }
                }
            }
            Body::Empty | Body::Target { .. } => {}
        }
        if end || d.kind == Kind::Heartbeat {
            let p = self.peers.get_mut(&node).expect("admitted");
            if end {
                p.declared = Some(declared);
            }
            if p.converged() {
                p.over_cap = false;
                p.backoff = Duration::ZERO;
            } else if end {
                self.request_where_needed(now);
            }
        }
        Outcome::Applied
    }

    /// Rule 8: a resync request is answered only for a live member at its own address, once per
    /// request number, within the per-requester interval and the repair budget.
    fn on_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: &wire::Datagram,
        target: u64,
        target_inc: u64,
        request: u64,
    ) -> Outcome {
        let h = d.header;
        let requester = h.node.get();
        if target != self.cfg.node || self.cfg.observer {
            return self.reject(Reject::NotPeer, None);
        }
        if target_inc != self.cfg.incarnation {
            return self.reject(Reject::Incarnation, None);
        }
        let every = self.cfg.resync_interval;
        let Some(p) = self.peers.get_mut(&requester) else {
            return self.reject(Reject::NotPeer, None);
        };
        if p.incarnation != h.incarnation.get() || p.addr != from || !p.settled() {
            return self.reject(Reject::NotPeer, Some(requester));
        }
        if request <= p.requests_seen {
            return self.reject(Reject::Stale, Some(requester));
        }
        p.requests_seen = request;
        let f = h.flags.get();
        let due =
            |i: usize| p.last_reply[i].is_none_or(|t| now.saturating_duration_since(t) >= every);
        let state = f & FLAG_STATE != 0 && due(0);
        let names = f & FLAG_NAMES != 0 && due(1);
        if !state && !names {
            return self.reject(Reject::Rate, Some(requester));
        }
        if !self.repair_ok(now) {
            return self.reject(Reject::Budget, Some(requester));
        }
        if let Some(p) = self.peers.get_mut(&requester) {
            if state {
                p.last_reply[0] = Some(now);
            }
            if names {
                p.last_reply[1] = Some(now);
            }
        }
        self.stats.received += 1;
        self.serve_resync(now, from, names, state);
        Outcome::Applied
    }

    /// Whether the repair budget has anything left (it may then go into debt by one reply).
    fn repair_ok(&mut self, now: Instant) -> bool {
        let rate = self.cfg.max_repair_rate as f64;
        let b = &mut self.repair;
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(rate);
        b.at = now;
        b.tokens > 0.0
    }

    /// Sends the whole table and/or the names, as asked, to `to` only.
    fn serve_resync(&mut self, now: Instant, to: SocketAddr, names: bool, state: bool) {
        let before = (self.out.len(), self.stats.bytes_sent);
        self.stats.resync_replies += 1;
        if state {
            let per = self.enc.entries_per_datagram(Kind::ResyncReply);
            let st = self.stamp(now, self.seq);
            let mut lo = 0u64;
            loop {
                let (l, hi, e) = self.slice(lo, per);
                let last = hi == u64::MAX;
                let flags = if last { FLAG_END } else { 0 };
                let d =
                    self.enc
                        .entries(&self.seal, Kind::ResyncReply, flags, &st, Some((l, hi)), &e);
                self.push(Dest::To(to), d);
                if last {
                    break;
                }
                lo = hi + 1;
            }
        }
        if names {
            let hashes: Vec<u64> = self.table.map.keys().copied().collect();
            self.send_names(now, &hashes, Some(to));
        }
        debug_assert!(self.out.len() >= before.0);
        let bytes = self.stats.bytes_sent - before.1;
        self.stats.repair_bytes += bytes;
        self.repair.tokens -= bytes as f64;
    }

    /// Queues a goodbye: peers drop this node's counts at once.
    pub fn goodbye(&mut self, now: Instant) {
        let seq = self.next_seq();
        let d = self
            .enc
            .bare(&self.seal, Kind::Goodbye, FLAG_END, &self.stamp(now, seq));
        self.push(Dest::Group, d);
    }
}

/// Sets [`FLAG_END`] on a datagram this node sealed, and seals it again.
fn set_end(seal: &Seal, bytes: &mut Vec<u8>) {
    use zerocopy::FromBytes;
    let body = bytes.len() - wire::TAG_LEN;
    bytes.truncate(body);
    if let Ok((h, _)) = wire::Header::mut_from_prefix(&mut bytes[..]) {
        h.flags.set(h.flags.get() | FLAG_END);
    }
    seal.seal(bytes);
}

/// Exposed so the wire module's constants are reachable from the protocol's users.
pub use wire::MIN_BUDGET;

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proto(node: u64, budget: usize) -> Protocol {
        let mut c = Config::new(node, 1, Duration::from_millis(100));
        c.budget = budget;
        c.refresh_cycle = 1;
        Protocol::new(c, Seal::new("p", b"k"))
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], i))
    }

    /// Everything `p` queued.
    fn drain(p: &mut Protocol) -> Vec<Transmit> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    /// Delivers everything `from` queued (group datagrams, and unicast ones addressed to `to_addr`)
    /// to `to`, as sent from `from_addr`; returns the outcomes.
    fn deliver(
        from: &mut Protocol,
        from_addr: SocketAddr,
        to: &mut Protocol,
        to_addr: SocketAddr,
        now: Instant,
    ) -> Vec<Outcome> {
        drain(from)
            .into_iter()
            .filter(|t| t.dest == Dest::Group || t.dest == Dest::To(to_addr))
            .map(|t| to.on_datagram(now, from_addr, &t.bytes))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The running sum and digest always equal what the table holds.
        #[test]
        fn table_sum_and_digest_follow_the_map(
            ops in proptest::collection::vec((0u64..50, 0u32..5), 0..400),
        ) {
            let mut t = Table::default();
            for (h, c) in ops {
                t.set(h, c);
                let sum: u64 = t.map.values().map(|&c| u64::from(c)).sum();
                let digest = t.map.iter().fold(0u64, |d, (&h, &c)| d.wrapping_add(mix(h, c)));
                prop_assert_eq!(t.sum, sum);
                prop_assert_eq!(t.digest, digest);
            }
        }

        /// Whatever the table, the names and the budget, no datagram exceeds the budget, and a
        /// peer that hears everything ends up with an exact, converged copy.
        #[test]
        fn datagrams_fit_the_budget_and_replicate(
            budget in wire::MIN_BUDGET..3000usize,
            table in proptest::collection::vec((any::<u64>(), 0..5u32, "[a-z]{0,300}"), 0..400),
        ) {
            let now = Instant::now();
            let mut a = proto(1, budget);
            let mut b = proto(2, budget);
            for (h, c, n) in &table {
                let n: Arc<str> = n.as_str().into();
                a.set_local(*h, *c, Some(&n));
            }
            let from_a: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let from_b: SocketAddr = "127.0.0.1:2".parse().unwrap();
            for round in 0..4 {
                let t = now + Duration::from_millis(100 * round);
                a.on_tick(t);
                b.on_tick(t);
                while let Some(x) = a.poll_transmit() {
                    prop_assert!(x.bytes.len() <= budget, "{} > {}", x.bytes.len(), budget);
                    prop_assert!(matches!(b.on_datagram(t, from_a, &x.bytes), Outcome::Applied));
                }
                while let Some(x) = b.poll_transmit() {
                    prop_assert!(x.bytes.len() <= budget);
                    a.on_datagram(t, from_b, &x.bytes);
                }
            }
            let mut truth: HashMap<u64, u32> = HashMap::default();
            for (h, c, _) in &table {
                truth.insert(*h, *c);
            }
            for (h, c) in truth {
                prop_assert_eq!(b.remote(h), u64::from(c));
            }
            prop_assert!(b.converged());
        }
    }

    #[test]
    fn replays_and_old_incarnations_are_rejected() {
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut a = proto(1, 1400);
        let mut b = proto(2, 1400);
        a.set_local(5, 3, None);
        a.on_tick(now);
        let d = a.poll_transmit().unwrap();
        assert_eq!(b.on_datagram(now, from, &d.bytes), Outcome::Applied);
        assert_eq!(
            b.on_datagram(now, from, &d.bytes),
            Outcome::Rejected(Reject::Stale)
        );
        assert_eq!(b.remote(5), 3);
        // A restart: the new incarnation replaces the old state; the old one is barred.
        let mut c = Config::new(1, 2, Duration::from_millis(100));
        c.refresh_cycle = 1;
        let mut a2 = Protocol::new(c, Seal::new("p", b"k"));
        a2.set_local(6, 1, None);
        a2.on_tick(now);
        while let Some(x) = a2.poll_transmit() {
            b.on_datagram(now, from, &x.bytes);
        }
        assert_eq!((b.remote(5), b.remote(6)), (0, 1));
        a.set_local(5, 4, None);
        a.on_tick(now);
        let old = a.poll_transmit().unwrap();
        assert_eq!(
            b.on_datagram(now, from, &old.bytes),
            Outcome::Rejected(Reject::Incarnation)
        );
        assert_eq!(b.stats().rejected[Reject::Stale.index()], 1);
        assert_eq!(b.nodes(now).len(), 1);
    }

    #[test]
    fn the_largest_sequence_number_does_not_overflow() {
        // Found by the fuzzer: a datagram with seq u64::MAX, then a resync reply with the same.
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let seal = Seal::new("p", b"k");
        let enc = Encoder::new(seal.cluster(), 7, 1, 100, 1400);
        let mut b = proto(2, 1400);
        let st = Stamp {
            seq: u64::MAX,
            time: b.config().clock.unix_ms(now),
            ..Stamp::default()
        };
        let hb = enc.bare(&seal, Kind::Heartbeat, FLAG_END, &st);
        assert_eq!(b.on_datagram(now, from, &hb), Outcome::Applied);
        let r = enc.entries(
            &seal,
            Kind::ResyncReply,
            FLAG_END,
            &st,
            Some((0, u64::MAX)),
            &[],
        );
        assert_eq!(b.on_datagram(now, from, &r), Outcome::Applied);
        assert_eq!(
            b.on_datagram(now, from, &hb),
            Outcome::Rejected(Reject::Stale)
        );
    }

    #[test]
    fn caps_on_peers_and_topics_per_peer() {
        let now = Instant::now();
        let mut c = Config::new(100, 1, Duration::from_millis(100));
        c.max_peers = 2;
        c.max_topics_per_peer = 3;
        let mut b = Protocol::new(c, Seal::new("p", b"k"));
        let mut senders: Vec<Protocol> = (1..=3).map(|n| proto(n, 1400)).collect();
        for (i, a) in senders.iter_mut().enumerate() {
            for h in 0..3 {
                a.set_local(h, 1, None);
            }
            a.on_tick(now);
            let d = a.poll_transmit().unwrap();
            let from: SocketAddr = format!("127.0.0.1:{}", i + 1).parse().unwrap();
            let want = if i < 2 {
                Outcome::Applied
            } else {
                Outcome::Rejected(Reject::TooManyPeers)
            };
            assert_eq!(b.on_datagram(now, from, &d.bytes), want, "sender {i}");
            while a.poll_transmit().is_some() {}
        }
        assert_eq!(b.remote(0), 2);
        // Sender 0 adds a fourth topic: over its cap, so the datagram is dropped whole.
        let a = &mut senders[0];
        a.set_local(3, 1, None);
        a.set_local(0, 5, None);
        a.on_tick(now);
        let d = a.poll_transmit().unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            b.on_datagram(now, from, &d.bytes),
            Outcome::Rejected(Reject::TooManyTopics)
        );
        assert_eq!((b.remote(0), b.remote(3)), (2, 0), "nothing of it applied");
    }

    #[test]
    fn a_flood_from_one_source_is_rate_limited() {
        let now = Instant::now();
        let mut b = proto(2, 1400);
        let junk = [0u8; 100];
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut rate = 0;
        for _ in 0..50_000 {
            if b.on_datagram(now, from, &junk) == Outcome::Rejected(Reject::Rate) {
                rate += 1;
            }
        }
        assert_eq!(rate, 50_000 - 20_000);
        assert_eq!(b.stats().rejected_total(), 50_000);
    }

    /// Defect: a node dropped for silence came back, counts and all, when one of its captured
    /// datagrams was replayed (its tombstone barred only `incarnation - 1`, and a re-created peer
    /// started at `last_seq = seq - 1`).
    #[test]
    fn a_dropped_node_is_never_revived_by_a_replay() {
        let t0 = Instant::now();
        let (a_addr, b_addr) = (addr(1), addr(2));
        let mut a = proto(1, 1400);
        let mut b = proto(2, 1400);
        for h in 0..500u64 {
            a.set_local(h, 1, None);
        }
        // Two seconds of normal traffic; every datagram a sends is captured.
        let mut captured = Vec::new();
        let mut now = t0;
        for _ in 0..20 {
            a.on_tick(now);
            b.on_tick(now);
            for t in drain(&mut a) {
                captured.push(t.bytes.clone());
                if t.dest == Dest::Group || t.dest == Dest::To(b_addr) {
                    b.on_datagram(now, a_addr, &t.bytes);
                }
            }
            deliver(&mut b, b_addr, &mut a, a_addr, now);
            now += Duration::from_millis(100);
        }
        assert_eq!(b.remote_total(), 500);
        // `a` dies (no goodbye). Some of its last datagrams never reached `b`: those are the
        // dangerous ones (their sequence numbers are new to `b`).
        for _ in 0..3 {
            a.on_tick(now);
            captured.extend(drain(&mut a).into_iter().map(|t| t.bytes));
            now += Duration::from_millis(100);
        }
        let dead_after = b.config().dead_after;
        now += dead_after;
        b.on_tick(now);
        assert_eq!(b.remote_total(), 0, "dropped after dead_after");
        // Replays, one every 100 ms for 60 s: while the tombstone is kept, and after.
        let ttl = b.config().tomb_ttl();
        let mut applied = 0;
        let mut i = 0;
        while now < t0 + ttl + Duration::from_secs(60) {
            now += Duration::from_millis(100);
            b.on_tick(now);
            let d = &captured[i % captured.len()];
            i += 1;
            if b.on_datagram(now, a_addr, d) == Outcome::Applied {
                applied += 1;
            }
            assert_eq!(b.remote_total(), 0, "replay {i} brought counts back");
        }
        assert_eq!(applied, 0);
        let s = b.stats();
        assert!(
            s.rejected(Reject::Stale) > 0 && s.rejected(Reject::Clock) > 0,
            "{s:?}"
        );
        assert!(b.nodes(now).iter().all(|n| !n.alive));
    }

    /// A node dropped for silence that really is alive (a healed partition) comes back: its
    /// clock moved on as much as ours.
    #[test]
    fn a_healed_partition_comes_back() {
        let t0 = Instant::now();
        let (a_addr, b_addr) = (addr(1), addr(2));
        let mut a = proto(1, 1400);
        let mut b = proto(2, 1400);
        a.set_local(7, 3, None);
        let mut now = t0;
        for round in 0..80 {
            a.on_tick(now);
            b.on_tick(now);
            let cut = (10..50).contains(&round);
            if cut {
                drain(&mut a);
                drain(&mut b);
            } else {
                deliver(&mut a, a_addr, &mut b, b_addr, now);
                deliver(&mut b, b_addr, &mut a, a_addr, now);
            }
            if round == 45 {
                assert_eq!(b.remote(7), 0, "dropped during the partition");
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(b.remote(7), 3, "back after the partition healed");
        assert!(b.converged());
    }

    /// Defect: one captured 88-byte resync request, re-sent from foreign addresses, brought back
    /// the whole table to each (and all the names, multicast). Requests are answered only for a
    /// live peer, at its own address, once per request number.
    #[test]
    fn resync_requests_are_answered_only_for_live_peers_at_their_address() {
        let now = Instant::now();
        let (a_addr, b_addr) = (addr(1), addr(2));
        let mut a = proto(1, 1400);
        let mut b = proto(2, 1400);
        for h in 0..10_000u64 {
            a.set_local(h, 1, Some(&Arc::from(format!("topic:{h}"))));
        }
        a.on_tick(now);
        for t in [now, now + Duration::from_millis(10)] {
            b.on_tick(t);
            deliver(&mut b, b_addr, &mut a, a_addr, t); // a knows b at its address now
        }
        drain(&mut a);
        // b asks a for its table (as after a lost datagram).
        b.on_datagram(now, a_addr, &{
            let mut x = proto(1, 1400);
            x.on_tick(now);
            drain(&mut x).pop().unwrap().bytes
        });
        let mut req = None;
        let later = now + Duration::from_millis(50);
        b.set_local(99, 1, None);
        for i in 0..3 {
            let t = later + Duration::from_millis(30 * i);
            b.requests += 1;
            let d = b.enc.request(
                &b.seal,
                FLAG_STATE | FLAG_NAMES,
                &b.stamp(t, b.seq),
                1,
                1,
                b.requests,
            );
            req.get_or_insert(d);
        }
        let req = req.unwrap();
        assert_eq!(a.on_datagram(later, b_addr, &req), Outcome::Applied);
        let reply: usize = drain(&mut a)
            .iter()
            .inspect(|t| assert_eq!(t.dest, Dest::To(b_addr), "replies go to the requester only"))
            .map(|t| t.bytes.len())
            .sum();
        assert!(reply > 100_000, "the table and its names: {reply} bytes");
        // The same request again, from b's address: a request number already used.
        let t = later + Duration::from_secs(1);
        assert_eq!(
            a.on_datagram(t, b_addr, &req),
            Outcome::Rejected(Reject::Stale)
        );
        // From 20 foreign addresses: nothing sent anywhere.
        for i in 0..20u16 {
            assert_eq!(
                a.on_datagram(t, addr(1000 + i), &req),
                Outcome::Rejected(Reject::NotPeer)
            );
        }
        assert!(
            drain(&mut a).is_empty(),
            "no reply to a replayed or spoofed request"
        );
        // After b is dropped, its own address gets nothing either.
        let gone = t + a.config().dead_after * 2;
        a.on_tick(gone);
        drain(&mut a);
        let mut fresh = req.clone();
        let n = fresh.len() - wire::TAG_LEN;
        fresh.truncate(n);
        fresh[wire::HEADER_LEN + 16..wire::HEADER_LEN + 24].copy_from_slice(&1000u64.to_be_bytes());
        b.seal.seal(&mut fresh);
        assert_eq!(
            a.on_datagram(gone, b_addr, &fresh),
            Outcome::Rejected(Reject::NotPeer)
        );
        assert!(drain(&mut a).is_empty());
    }

    /// The repair budget holds over all requesters: many live peers asking at once get at most
    /// about a second's budget (plus one reply) at once.
    #[test]
    fn the_repair_budget_bounds_replies_over_all_requesters() {
        let now = Instant::now();
        let mut c = Config::new(1, 1, Duration::from_millis(100));
        c.max_repair_rate = 200_000;
        let mut a = Protocol::new(c, Seal::new("p", b"k"));
        for h in 0..10_000u64 {
            a.set_local(h, 1, None);
        }
        a.on_tick(now);
        drain(&mut a);
        let mut peers: Vec<Protocol> = (2..12).map(|n| proto(n, 1400)).collect();
        for (i, p) in peers.iter_mut().enumerate() {
            for _ in 0..2 {
                p.on_tick(now);
                deliver(p, addr(100 + i as u16), &mut a, addr(1), now);
            }
        }
        drain(&mut a);
        let mut sent = 0usize;
        let mut refused = 0;
        for (i, p) in peers.iter_mut().enumerate() {
            let d = p
                .enc
                .request(&p.seal, FLAG_STATE, &p.stamp(now, p.seq), 1, 1, 1);
            match a.on_datagram(now, addr(100 + i as u16), &d) {
                Outcome::Applied => {}
                Outcome::Rejected(Reject::Budget) => refused += 1,
                o => panic!("{o:?}"),
            }
            sent += drain(&mut a).iter().map(|t| t.bytes.len()).sum::<usize>();
        }
        // 10,000 topics are about 130 kB: the first reply fits the 200 kB budget, the second
        // spends the rest (a reply may overdraw once), the others wait.
        assert!(refused >= 8, "refused {refused}");
        assert!(sent < 300_000, "{sent} bytes");
        assert_eq!(a.stats().rejected(Reject::Budget), refused);
    }

    /// A burst of changes larger than a tick's budget goes out over several ticks; peers see no
    /// final digest (and ask for nothing) until all of it went out, then converge.
    #[test]
    fn a_burst_is_spread_over_ticks_and_converges_without_resyncs() {
        let t0 = Instant::now();
        let mut c = Config::new(1, 1, Duration::from_millis(100));
        c.max_tick_datagrams = 50;
        let mut a = Protocol::new(c, Seal::new("p", b"k"));
        let mut b = proto(2, 1400);
        for h in 0..20_000u64 {
            a.set_local(h, 2, Some(&Arc::from(format!("t{h}"))));
        }
        let mut now = t0;
        let mut ticks = 0;
        loop {
            a.on_tick(now);
            b.on_tick(now);
            let out = drain(&mut a);
            let deltas = out
                .iter()
                .filter(|t| t.dest == Dest::Group)
                .filter(|t| {
                    a.seal
                        .open(&t.bytes)
                        .is_ok_and(|d| matches!(d.kind, Kind::Delta | Kind::Names))
                })
                .count();
            assert!(
                deltas <= 50,
                "tick {ticks}: {deltas} delta and names datagrams"
            );
            let ends = out
                .iter()
                .filter(|t| {
                    a.seal
                        .open(&t.bytes)
                        .is_ok_and(|d| d.header.flags.get() & FLAG_END != 0)
                })
                .count();
            assert_eq!(ends, usize::from(a.stats().backlog == 0), "tick {ticks}");
            for t in out {
                assert_eq!(b.on_datagram(now, addr(1), &t.bytes), Outcome::Applied);
            }
            deliver(&mut b, addr(2), &mut a, addr(1), now);
            ticks += 1;
            now += Duration::from_millis(100);
            if a.stats().backlog == 0 {
                break;
            }
        }
        assert!(ticks >= 5, "spread over {ticks} ticks");
        a.on_tick(now);
        deliver(&mut a, addr(1), &mut b, addr(2), now);
        assert_eq!(b.remote_total(), 40_000);
        assert!(b.converged());
        assert_eq!(b.stats().resync_requests, 0, "a backlog is not divergence");
        assert_eq!(b.take_learned_names(usize::MAX).len(), 20_000);
    }

    /// Another process with this node's id, or a peer whose clock is far off, is refused and
    /// counted, never merged.
    #[test]
    fn node_id_conflicts_and_clock_skew_are_refused() {
        let now = Instant::now();
        let mut a = proto(1, 1400);
        let mut twin = Protocol::new(
            Config::new(1, 2, Duration::from_millis(100)),
            Seal::new("p", b"k"),
        );
        twin.set_local(5, 1, None);
        twin.on_tick(now);
        for t in drain(&mut twin) {
            assert_eq!(
                a.on_datagram(now, addr(9), &t.bytes),
                Outcome::Rejected(Reject::NodeId)
            );
        }
        let mut c = Config::new(3, 1, Duration::from_millis(100));
        c.clock.unix_ms += 120_000; // two minutes ahead
        let mut skewed = Protocol::new(c, Seal::new("p", b"k"));
        skewed.set_local(6, 1, None);
        skewed.on_tick(now);
        for t in drain(&mut skewed) {
            assert_eq!(
                a.on_datagram(now, addr(3), &t.bytes),
                Outcome::Rejected(Reject::Clock)
            );
        }
        assert_eq!((a.remote(5), a.remote(6)), (0, 0));
    }

    /// A peer whose table is over this node's cap is flagged, and asked for its table with
    /// exponential backoff instead of every resync interval forever.
    #[test]
    fn a_peer_over_the_cap_is_flagged_and_asked_with_backoff() {
        let t0 = Instant::now();
        let mut c = Config::new(2, 1, Duration::from_millis(100));
        c.max_topics_per_peer = 1000;
        let mut b = Protocol::new(c, Seal::new("p", b"k"));
        let mut a = proto(1, 1400);
        for h in 0..5000u64 {
            a.set_local(h, 1, None);
        }
        let mut now = t0;
        for _ in 0..600 {
            a.on_tick(now);
            b.on_tick(now);
            deliver(&mut a, addr(1), &mut b, addr(2), now);
            deliver(&mut b, addr(2), &mut a, addr(1), now);
            now += Duration::from_millis(100);
        }
        let n = b.nodes(now);
        assert!(n[0].over_cap && !n[0].converged, "{n:?}");
        assert!(b.stats().rejected(Reject::TooManyTopics) > 0);
        // 60 s at a 25 ms resync interval: 2,400 requests without backoff.
        let asked = b.stats().resync_requests;
        assert!(asked <= 20, "{asked} resync requests in 60 s");
    }

    /// Found by the fuzzer: a copy of a fresh datagram that reached a node first from another
    /// address (a replay racing the original, an interception) moved the peer there, and the
    /// node then sent its requests, and answered requests with its whole table, to that address.
    /// A peer's address is pinned for its incarnation, and only a settled address is sent to.
    #[test]
    fn a_copy_from_another_address_does_not_move_a_peer() {
        let t0 = Instant::now();
        let (a_addr, b_addr, evil) = (addr(1), addr(2), addr(666));
        let mut a = proto(1, 1400);
        let mut b = proto(2, 1400);
        for h in 0..2000u64 {
            a.set_local(h, 1, None);
        }
        let mut now = t0;
        // First contact: b's first datagram arrives from the attacker's address first.
        b.on_tick(now);
        let first = drain(&mut b);
        for t in &first {
            assert_eq!(a.on_datagram(now, evil, &t.bytes), Outcome::Applied);
            assert_eq!(
                a.on_datagram(now, b_addr, &t.bytes),
                Outcome::Rejected(Reject::Stale)
            );
        }
        // The attacker also delivers a fresh request of b's before b's own copy arrives.
        b.requests += 1;
        let req = b.enc.request(
            &b.seal,
            FLAG_STATE | FLAG_NAMES,
            &b.stamp(now, b.seq),
            1,
            1,
            b.requests,
        );
        assert_eq!(
            a.on_datagram(now, evil, &req),
            Outcome::Rejected(Reject::NotPeer)
        );
        // Then b is heard normally, and every datagram a sends to b goes to b.
        for _ in 0..20 {
            now += Duration::from_millis(100);
            a.on_tick(now);
            b.on_tick(now);
            for t in drain(&mut a) {
                assert_ne!(t.dest, Dest::To(evil), "a sent to the attacker's address");
                if t.dest == Dest::Group || t.dest == Dest::To(b_addr) {
                    b.on_datagram(now, a_addr, &t.bytes);
                }
            }
            deliver(&mut b, b_addr, &mut a, a_addr, now);
        }
        assert_eq!(
            a.nodes(now)[0].addr,
            b_addr,
            "moved to b's real address once evil was silent"
        );
        assert_eq!(b.remote_total(), 2000);
        assert!(b.converged());
    }
}
