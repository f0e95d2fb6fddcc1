//! The cluster protocol as a sans-IO state machine: no sockets, no clock reads.
//!
//! Feed it the local table's changes ([`Protocol::set_local`]), ticks ([`Protocol::on_tick`])
//! and received datagrams ([`Protocol::on_datagram`]), all with the time passed in; take the
//! datagrams to send from [`Protocol::poll_transmit`] and the changed peer sums from
//! [`Protocol::take_remote_changes`]. `net.rs` runs it over real sockets; the simulation tests
//! and `headcount-perf converge` run hundreds of them over a simulated network.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Maps with a fixed hasher: iteration order depends only on what was inserted, so a seeded
/// simulation replays exactly. (Keys are node ids and keyed topic hashes: not attacker-chosen.)
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

use super::wire::{self, Body, Encoder, FLAG_END, FLAG_NAMES, FLAG_STATE, Kind, Reject, Seal};

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
    /// Most topics tracked per peer.
    pub max_topics_per_peer: usize,
    /// Most datagrams accepted per second from one source address.
    pub max_rate: u32,
    /// Least time between two resync requests to the same peer, and between two replies to the
    /// same requester.
    pub resync_interval: Duration,
    /// A passive observer: sends nothing but resync requests, never counted by peers.
    pub observer: bool,
}

impl Config {
    /// Defaults for a node with tick `tick`.
    pub fn new(node: u64, incarnation: u64, tick: Duration) -> Config {
        Config {
            node,
            incarnation,
            tick,
            dead_after: (tick * 30).max(Duration::from_secs(3)),
            budget: 1400,
            refresh_cycle: 10,
            max_peers: 1024,
            max_topics_per_peer: 1 << 21,
            max_rate: 20_000,
            resync_interval: (tick / 4).max(Duration::from_millis(5)),
            observer: false,
        }
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
    addr: SocketAddr,
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
    last_request: Option<Instant>,
}

impl Peer {
    fn converged(&self) -> bool {
        self.declared == Some((self.table.digest, self.table.len() as u32))
    }
    fn total(&self) -> u64 {
        self.table.sum
    }
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
    pub rejected: [u64; 12],
    /// Resync requests sent.
    pub resync_requests: u64,
    /// Resync requests answered.
    pub resync_replies: u64,
    /// Peers dropped as dead.
    pub peers_died: u64,
}

impl ProtoStats {
    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
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

/// Most names kept for topics with no count yet.
const PENDING_NAMES: usize = 1 << 16;

/// A datagram planned for this tick: kind, refresh range, entries.
type Planned = (Kind, Option<(u64, u64)>, Vec<(u64, u32)>);

/// The cluster protocol state machine of one node.
pub struct Protocol {
    cfg: Config,
    seal: Seal,
    enc: Encoder,
    seq: u64,
    table: Table,
    changed: Vec<u64>,
    names: HashMap<u64, Arc<str>>,
    new_names: Vec<u64>,
    cursor: u64,
    refresh_credit: f64,
    peers: HashMap<u64, Peer>,
    dead: HashMap<u64, (NodeInfo, Instant)>,
    /// Hashes some peer counts whose names this node does not know.
    unnamed: HashSet<u64>,
    /// Names received before any count of their topic.
    pending_names: HashMap<u64, Arc<str>>,
    tombs: HashMap<u64, (u64, Instant)>,
    remote: HashMap<u64, u64>,
    remote_total: u64,
    remote_changed: HashSet<u64>,
    learned: Vec<(u64, Arc<str>)>,
    out: VecDeque<Transmit>,
    rates: HashMap<SocketAddr, Bucket>,
    replied: HashMap<SocketAddr, Instant>,
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
        Protocol {
            cfg,
            seal,
            enc,
            seq: 0,
            table: Table::default(),
            changed: Vec::new(),
            names: HashMap::default(),
            new_names: Vec::new(),
            cursor: 0,
            refresh_credit: 0.0,
            peers: HashMap::default(),
            dead: HashMap::default(),
            unnamed: HashSet::default(),
            pending_names: HashMap::default(),
            tombs: HashMap::default(),
            remote: HashMap::default(),
            remote_total: 0,
            remote_changed: HashSet::default(),
            learned: Vec::new(),
            out: VecDeque::new(),
            rates: HashMap::default(),
            replied: HashMap::default(),
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
        if old != count {
            self.changed.push(hash);
        }
        if let Some(n) = name {
            self.names.entry(hash).or_insert_with(|| n.clone());
        }
        // A topic (re)appearing here: announce its name, given now or known from before.
        if old == 0 && count != 0 && self.names.contains_key(&hash) {
            self.new_names.push(hash);
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

    /// Names learned from peers since the last call.
    pub fn take_learned_names(&mut self) -> Vec<(u64, Arc<str>)> {
        std::mem::take(&mut self.learned)
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
        self.stats
    }

    /// Live peers and recently dead ones.
    pub fn nodes(&self, now: Instant) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self
            .peers
            .iter()
            .map(|(&node, p)| NodeInfo {
                node,
                addr: p.addr,
                incarnation: p.incarnation,
                last_heard: now.saturating_duration_since(p.last_heard),
                alive: true,
                converged: p.converged(),
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

    fn tomb_ttl(&self) -> Duration {
        self.cfg.dead_after * 10
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

    /// Queues names datagrams, to the group (names ride the group sequence numbers, and every
    /// peer may use them), for those of `hashes` whose names this node knows.
    fn send_names(&mut self, hashes: &[u64]) {
        let list: Vec<(u64, Arc<str>)> = hashes
            .iter()
            .filter_map(|h| self.names.get(h).map(|n| (*h, n.clone())))
            .collect();
        let (digest, topics) = (self.table.digest, self.topics());
        let mut seq = self.seq;
        let mut next = || {
            seq += 1;
            seq
        };
        let dgs = self.enc.names(
            &self.seal,
            &mut next,
            digest,
            topics,
            list.iter().map(|(h, n)| (*h, &**n)),
        );
        self.seq = seq;
        for d in dgs {
            self.push(Dest::Group, d);
        }
    }

    /// One tick: queues this tick's datagrams (names, deltas, refresh slices or a heartbeat; the
    /// last one flagged [`FLAG_END`]) and drops dead peers.
    pub fn on_tick(&mut self, now: Instant) {
        self.expire(now);
        if self.cfg.observer {
            self.changed.clear();
            self.new_names.clear();
            self.request_where_needed(now);
            return;
        }
        let mut batch: Vec<Planned> = Vec::new();

        // Names of topics that appeared here this tick.
        if !self.new_names.is_empty() {
            let mut hs = std::mem::take(&mut self.new_names);
            hs.sort_unstable();
            hs.dedup();
            self.send_names(&hs);
        }

        // Deltas: absolute counts of what changed.
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let per = self.enc.entries_per_datagram(Kind::Delta);
        let entries: Vec<(u64, u32)> = changed
            .iter()
            .map(|h| (*h, self.table.map.get(h).copied().unwrap_or(0)))
            .collect();
        for chunk in entries.chunks(per) {
            batch.push((Kind::Delta, None, chunk.to_vec()));
        }

        // The rotating refresh: the whole table every `refresh_cycle` ticks.
        let per_r = self.enc.entries_per_datagram(Kind::Refresh);
        let dgrams = self.table.len().div_ceil(per_r).max(1) as f64;
        self.refresh_credit += dgrams / f64::from(self.cfg.refresh_cycle.max(1));
        while self.refresh_credit >= 1.0 {
            self.refresh_credit -= 1.0;
            let (lo, hi, e) = self.slice(self.cursor, per_r);
            self.cursor = hi.wrapping_add(1);
            batch.push((Kind::Refresh, Some((lo, hi)), e));
        }

        if batch.is_empty() {
            let seq = self.next_seq();
            let d = self.enc.bare(
                &self.seal,
                Kind::Heartbeat,
                FLAG_END,
                seq,
                self.table.digest,
                self.topics(),
            );
            self.push(Dest::Group, d);
        } else {
            let last = batch.len() - 1;
            for (i, (kind, range, e)) in batch.into_iter().enumerate() {
                let flags = if i == last { FLAG_END } else { 0 };
                let seq = self.next_seq();
                let d = self.enc.entries(
                    &self.seal,
                    kind,
                    flags,
                    seq,
                    self.table.digest,
                    self.topics(),
                    range,
                    &e,
                );
                self.push(Dest::Group, d);
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
            self.stats.peers_died += 1;
            self.drop_peer(n, now, false);
        }
        self.tombs.retain(|_, (_, until)| *until > now);
        let tombs = &self.tombs;
        self.dead.retain(|n, _| tombs.contains_key(n));
        if self.rates.len() > 4 * self.cfg.max_peers {
            self.rates.clear();
        }
        let ri = self.cfg.resync_interval;
        self.replied
            .retain(|_, t| now.saturating_duration_since(*t) < ri);
    }

    /// Removes a peer and its counts. `gone`: it said goodbye (its incarnation stays barred).
    fn drop_peer(&mut self, node: u64, now: Instant, gone: bool) {
        let Some(p) = self.peers.remove(&node) else {
            return;
        };
        for (&h, &c) in &p.table.map {
            self.sub_remote(h, c);
        }
        let info = NodeInfo {
            node,
            addr: p.addr,
            incarnation: p.incarnation,
            last_heard: now.saturating_duration_since(p.last_heard),
            alive: false,
            converged: false,
            topics: 0,
            total: 0,
            received: p.received,
            lost: p.lost,
            rejected: p.rejected,
        };
        self.dead.insert(node, (info, now));
        // A silent node may come back with the same incarnation (a healed partition); only a
        // goodbye bars its incarnation. Either way the entry shows the node as dead for a while.
        let inc = if gone {
            p.incarnation
        } else {
            p.incarnation.saturating_sub(1)
        };
        self.tombs.insert(node, (inc, now + self.tomb_ttl()));
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
                    self.learned.push((h, n));
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
        let old = p.table.set(h, c);
        if old != c {
            self.sub_remote(h, old);
            self.add_remote(h, c);
        }
    }

    /// Asks for a resync every peer whose copy does not match what it declared, and, when some
    /// counted topic has no name here, every peer for its names: soon (one resync interval)
    /// for topics that became unnamed since the last ask, rarely for the same ones again.
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
            .filter_map(|(&n, p)| {
                let behind = p.declared.is_some() && !p.converged();
                let due = p
                    .last_request
                    .is_none_or(|t| now.saturating_duration_since(t) >= every);
                if behind && !due {
                    let at = p.last_request.map_or(now, |t| t + every);
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
            }
            self.stats.resync_requests += 1;
            let flags = if ask_names { FLAG_NAMES } else { 0 } | if state { FLAG_STATE } else { 0 };
            let d = self.enc.request(
                &self.seal,
                flags,
                self.seq,
                self.table.digest,
                self.topics(),
                node,
                inc,
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

    /// Handles one received datagram.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Outcome {
        if !self.rate_ok(from, now) {
            return self.reject(Reject::Rate, None);
        }
        let d = match self.seal.open(bytes) {
            Ok(d) => d,
            Err(r) => return self.reject(r, None),
        };
        let h = d.header;
        let (node, inc, seq) = (h.node.get(), h.incarnation.get(), h.seq.get());
        if node == self.cfg.node {
            return Outcome::Own;
        }
        if d.kind == Kind::ResyncRequest {
            let Body::Target(t, ti) = d.body else {
                return self.reject(Reject::Malformed, None);
            };
            if t == self.cfg.node && ti == self.cfg.incarnation && !self.cfg.observer {
                let f = h.flags.get();
                self.serve_resync(now, from, f & FLAG_NAMES != 0, f & FLAG_STATE != 0);
            }
            self.stats.received += 1;
            return Outcome::Applied;
        }
        if let Some(&(dead_inc, _)) = self.tombs.get(&node) {
            if inc <= dead_inc {
                return self.reject(Reject::Incarnation, None);
            }
            self.tombs.remove(&node);
            self.dead.remove(&node);
        }
        match self.peers.get(&node) {
            Some(p) if inc < p.incarnation => return self.reject(Reject::Incarnation, Some(node)),
            Some(p) if inc > p.incarnation => {
                // A restart: the old process's counts go, whole.
                let old_inc = p.incarnation;
                self.drop_peer(node, now, true);
                self.tombs.insert(node, (old_inc, now + self.tomb_ttl()));
                self.dead.remove(&node);
            }
            Some(p) => {
                let fresh = if d.kind == Kind::ResyncReply {
                    seq >= p.last_seq
                } else {
                    seq > p.last_seq
                };
                if !fresh {
                    return self.reject(Reject::Stale, Some(node));
                }
            }
            None => {}
        }
        if d.kind == Kind::Goodbye {
            self.stats.received += 1;
            if self.peers.contains_key(&node) {
                self.drop_peer(node, now, true);
            } else {
                self.tombs.insert(node, (inc, now + self.tomb_ttl()));
            }
            return Outcome::Applied;
        }
        if !self.peers.contains_key(&node) {
            if self.peers.len() >= self.cfg.max_peers {
                return self.reject(Reject::TooManyPeers, None);
            }
            self.peers.insert(
                node,
                Peer {
                    addr: from,
                    incarnation: inc,
                    last_seq: seq.saturating_sub(1),
                    last_heard: now,
                    tick: Duration::from_millis(u64::from(h.tick_ms.get())),
                    table: Table::default(),
                    declared: None,
                    received: 0,
                    lost: 0,
                    rejected: 0,
                    last_request: None,
                },
            );
        }
        // Caps before any change: a datagram is applied whole or not at all.
        let cap = self.cfg.max_topics_per_peer;
        let over = {
            let p = &self.peers[&node];
            match &d.body {
                // Only when the datagram could reach the cap: count the topics it would add.
                Body::Entries(e) | Body::Range(_, _, e) if p.table.len() + e.len() > cap => {
                    let new = e
                        .iter()
                        .filter(|e| e.count.get() != 0 && !p.table.map.contains_key(&e.hash.get()))
                        .count();
                    p.table.len() + new > cap
                }
                _ => false,
            }
        };
        if over {
            return self.reject(Reject::TooManyTopics, Some(node));
        }
        let tick_ms = h.tick_ms.get();
        let declared = (h.digest.get(), h.topics.get());
        let end = h.flags.get() & FLAG_END != 0;
        {
            let p = self.peers.get_mut(&node).expect("inserted above");
            if d.kind != Kind::ResyncReply && seq > p.last_seq.saturating_add(1) {
                p.lost += seq - p.last_seq - 1;
            }
            p.last_seq = p.last_seq.max(seq);
            p.last_heard = now;
            p.addr = from;
            p.tick = Duration::from_millis(u64::from(tick_ms));
            p.received += 1;
        }
        self.stats.received += 1;
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
                        self.learned.push((h, n));
                    }
                }
            }
            Body::Empty | Body::Target(..) => {}
        }
        if end || d.kind == Kind::Heartbeat {
            let p = self.peers.get_mut(&node).expect("inserted above");
            p.declared = Some(declared);
            if !p.converged() {
                self.request_where_needed(now);
            }
        }
        Outcome::Applied
    }

    /// Sends the whole table and/or the names, as asked, to `to`, at most once per resync
    /// interval.
    fn serve_resync(&mut self, now: Instant, to: SocketAddr, names: bool, state: bool) {
        if self
            .replied
            .get(&to)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.cfg.resync_interval)
        {
            return;
        }
        self.replied.insert(to, now);
        self.stats.resync_replies += 1;
        if names {
            let hashes: Vec<u64> = self.table.map.keys().copied().collect();
            self.send_names(&hashes);
        }
        if !state {
            return;
        }
        let per = self.enc.entries_per_datagram(Kind::ResyncReply);
        let mut lo = 0u64;
        loop {
            let (l, hi, e) = self.slice(lo, per);
            let last = hi == u64::MAX;
            let flags = if last { FLAG_END } else { 0 };
            let d = self.enc.entries(
                &self.seal,
                Kind::ResyncReply,
                flags,
                self.seq,
                self.table.digest,
                self.topics(),
                Some((l, hi)),
                &e,
            );
            self.push(Dest::To(to), d);
            if last {
                break;
            }
            lo = hi + 1;
        }
    }

    /// Queues a goodbye: peers drop this node's counts at once.
    pub fn goodbye(&mut self) {
        if self.cfg.observer {
            return;
        }
        let seq = self.next_seq();
        let d = self.enc.bare(
            &self.seal,
            Kind::Goodbye,
            FLAG_END,
            seq,
            self.table.digest,
            self.topics(),
        );
        self.push(Dest::Group, d);
    }
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
        let hb = enc.bare(&seal, Kind::Heartbeat, FLAG_END, u64::MAX, 0, 0);
        assert_eq!(b.on_datagram(now, from, &hb), Outcome::Applied);
        let r = enc.entries(
            &seal,
            Kind::ResyncReply,
            FLAG_END,
            u64::MAX,
            0,
            0,
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
}
