//! The cluster protocol as a sans-IO state machine: no sockets, no clock reads.
//!
//! Its surface has the shape of quinn-proto's `Connection`: input goes in through `handle_*`
//! (and [`Protocol::set_local`]), output comes out through `poll_*`, and every call that
//! depends on time is given `now`.
//!
//! | call | what it does |
//! |---|---|
//! | [`Protocol::set_local`] | this node's count of a topic changed (with its name, when new) |
//! | [`Protocol::handle_tick`] | a tick: drop silent peers, queue this tick's datagrams |
//! | [`Protocol::handle_datagram`] | a datagram arrived: admission, then its effect ([`Outcome`]) |
//! | [`Protocol::handle_timeout`] | the time [`Protocol::poll_timeout`] asked for has come |
//! | [`Protocol::goodbye`] | queue a goodbye before stopping |
//! | [`Protocol::poll_transmit`] | the next datagram to send ([`Transmit`]) |
//! | [`Protocol::poll_event`] | the next [`Event`]: a changed peer sum, a name learned |
//! | [`Protocol::poll_timeout`] | when to call `handle_timeout` next |
//!
//! The engine's thread drives it over real sockets (it feeds it the reducer's changes, ticks it,
//! hands it what `net.rs` received and gives `net.rs` what it queued); the simulation
//! ([`crate::cluster::sim`]), the protocol tests and fuzz target, and `headcount-perf converge`
//! drive it, hundreds of nodes at a time, over a simulated network.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Protocol`] type and its public surface;
//! - `admit.rs`: admission, the rules below: it decides, and changes only the bookkeeping the
//!   rules need (rate buckets, the repair budget, request numbers, the peer entry of a sender it
//!   lets in, which for a restart drops the old incarnation's counts at once);
//! - `apply.rs`: what an admitted datagram does to the peer tables and the cluster aggregate;
//!   dropping dead, restarted and departed peers;
//! - `send.rs`: everything that goes out: deltas, names, refresh, heartbeats, resync replies,
//!   the goodbye; `repair.rs`: repairs, the answers' token bucket; `repair/request.rs`: what
//!   this node asks of each peer whose copy is wrong, and when (nacks, digests, tables, names);
//!   `repair/nack.rs`: nacks sent and answered; `repair/digest.rs`: reconciliation by range
//!   digests (the ranges served, the ranges asked for, and what a receiver asks next from a
//!   digest reply); `relay.rs`: the relay trees of big unicast clusters (what is marked,
//!   forwarded, and to whom);
//! - `peer.rs`: a peer's table and state, tombstones; `sums.rs`: the aggregate's per-topic
//!   sums; `open.rs`: the hash table under the sums and the names, whose lookups a receiver
//!   prefetches; `config.rs`: [`Config`], [`Clock`] and the [`defaults`]; `stats.rs`:
//!   [`ProtoStats`], [`NodeInfo`];
//! - `tests/`: unit tests, two or a few nodes wired by hand (`admission.rs`: the rules below,
//!   each against a defect it once had or could have; `digests.rs`, `names.rs`, `pacing.rs`,
//!   `relay.rs`: reconciliation, names, paced ticks, relaying).
//!
//! # Admission: what each datagram must meet
//!
//! Every rule below is checked before a datagram changes anything; a datagram that fails one is
//! dropped whole and counted by [`Reject`] reason. The tests in `tests/replay.rs` capture every
//! kind from a real node and replay it (live sender, dead sender, restarted sender, foreign
//! source address) against these rules.
//!
//! 1. **Rate**: at most [`Config::max_rate`] datagrams a second from one source address (a
//!    relay's forwarded copies count against the relay's address).
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
//!    reply, nack, repair, digest reply) one at least as high (they carry the sender's current number). A node dropped for
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
//!    (`Reject::Budget`). Digest requests (hash ranges of the table, see `repair.rs`) meet the
//!    same checks, share the request numbers, and are answered at most
//!    `repair::DIGEST_REQUESTS` times per requester per resync interval (a reconciliation sends
//!    one per range it drills into). Replies (the table, the names, ranges, digests) go to that
//!    requester only. So no
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
//!
//! [`FLAG_END`]: crate::cluster::wire::FLAG_END

mod admit;
mod apply;
mod config;
mod events;
mod open;
mod peer;
mod relay;
mod repair;
mod send;
mod stats;
mod sums;
#[cfg(all(test, not(loom), not(miri)))]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use config::{Clock, Config, defaults, zone_of};
pub use events::Event;
pub use peer::mix;
pub use stats::{Found, NodeInfo, ProtoStats};

use super::wire::{self, Encoder, Reject, Seal};
use admit::Bucket;
use open::Names;
use peer::{Peer, Table, Tomb};
use repair::Repairs;
use sums::Sums;

/// Maps with a fixed hasher: iteration order depends only on what was inserted, so a seeded
/// simulation replays exactly. (Keys are node ids and keyed topic hashes: not attacker-chosen.)
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

/// Moves a pending wake-up to `at` if that is sooner (or sets it).
fn wake_at(wake: &mut Option<Instant>, at: Instant) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// Most members heard of from peers and not polled yet ([`Event::MemberLearned`]).
const MAX_MEMBERS_LEARNED: usize = 4096;

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

/// What [`Protocol::handle_datagram`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Our own (multicast loops back): ignored.
    Own,
    /// Dropped.
    Rejected(Reject),
}

/// The cluster protocol state machine of one node.
pub struct Protocol {
    cfg: Config,
    seal: Seal,
    enc: Encoder,
    seq: u64,
    table: Table,
    /// Hashes whose count changed and was not sent yet, oldest first but for what a tick takes
    /// at once, which it sorts by hash (each once: `queued`).
    changed: VecDeque<u64>,
    queued: HashSet<u64>,
    names: Names,
    /// Hashes whose names go out with their next delta.
    new_names: HashSet<u64>,
    cursor: u64,
    refresh_credit: f64,
    /// Ticks left at the refresh's full rate (see [`Config::idle_refresh`]).
    refresh_full: u32,
    /// Ticks in a row with an empty table and no change to send, and ticks since the last tick
    /// that sent something, a heartbeat or else (see [`Config::empty_heartbeat_every`]).
    quiet_ticks: u32,
    beat_ticks: u32,
    peers: HashMap<u64, Peer>,
    /// Bumped whenever a peer is added or dropped ([`Protocol::membership`]).
    membership: u64,
    /// Peers that are observers (counted apart from `max_peers`).
    observers: usize,
    dead: HashMap<u64, (NodeInfo, Instant)>,
    /// Hashes some peer counts whose names this node does not know.
    unnamed: HashSet<u64>,
    /// Names received before any count of their topic.
    pending_names: Names,
    tombs: HashMap<u64, Tomb>,
    /// Each topic's sum over the peers' tables, and which sums changed since last reported.
    remote: Sums,
    /// Topics over all peers' tables.
    remote_topics: usize,
    /// Hashes whose peer sum changed, taken from `remote` and being reported, the next one
    /// last.
    reporting: Vec<u64>,
    /// Topics whose names were learned from peers and not reported yet, oldest first (a name
    /// is read from `names` when reported: one forgotten by then, its topic gone, is not).
    learned: VecDeque<u64>,
    out: VecDeque<Transmit>,
    /// Copies of a relayed group datagram for this node's children after the first.
    relay_fan: VecDeque<Transmit>,
    relay: relay::Relay,
    /// A backlog tick's datagrams past its first [`Config::repair_burst`] bytes, each with when
    /// it may leave (see `pace_tick` in `send.rs`).
    paced: VecDeque<(Instant, Transmit)>,
    /// How many of `paced` are numbered (a relaying tick's direct heartbeat, paced with them,
    /// is not).
    paced_numbered: u64,
    rates: HashMap<SocketAddr, Bucket>,
    /// Repair: the history of what was sent, and the answers waiting for the repair bucket.
    repairs: Repairs,
    /// This node's resync requests so far (their request numbers).
    requests: u64,
    names_asked: Option<Instant>,
    /// Topics that became unnamed since names were last asked for.
    newly_unnamed: usize,
    /// When a rate-limited resync request becomes due.
    wake: Option<Instant>,
    /// Ticks until the next membership gossip (0: at the next tick).
    members_due: u64,
    /// Members heard of from peers and not reported yet.
    members_learned: VecDeque<(u64, SocketAddr)>,
    /// Bytes of peers' datagrams and parity held for decoding, and topics whose newest setter
    /// is tracked, over all peers (`repair/recover.rs`).
    held_bytes: usize,
    set_at_len: usize,
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
        let seed = cfg.table_seed;
        let enc = Encoder::new(
            seal.cluster(),
            cfg.node,
            cfg.incarnation,
            tick_ms,
            cfg.budget,
        );
        let repairs = Repairs::new(
            cfg.clock.base,
            repair::burst(&cfg),
            cfg.node.rotate_left(17) ^ cfg.incarnation,
        );
        Protocol {
            cfg,
            seal,
            enc,
            seq: 0,
            table: Table::default(),
            changed: VecDeque::new(),
            queued: HashSet::default(),
            names: Names::new(seed),
            new_names: HashSet::default(),
            cursor: 0,
            refresh_credit: 0.0,
            refresh_full: 0,
            quiet_ticks: u32::MAX,
            beat_ticks: u32::MAX,
            peers: HashMap::default(),
            membership: 0,
            observers: 0,
            dead: HashMap::default(),
            unnamed: HashSet::default(),
            pending_names: Names::new(seed.rotate_left(16)),
            tombs: HashMap::default(),
            remote: Sums::new(seed.rotate_left(32)),
            remote_topics: 0,
            reporting: Vec::new(),
            learned: VecDeque::new(),
            out: VecDeque::new(),
            relay_fan: VecDeque::new(),
            relay: relay::Relay::default(),
            paced: VecDeque::new(),
            paced_numbered: 0,
            rates: HashMap::default(),
            repairs,
            requests: 0,
            names_asked: None,
            newly_unnamed: 0,
            wake: None,
            members_due: 0,
            members_learned: VecDeque::new(),
            held_bytes: 0,
            set_at_len: 0,
            stats: ProtoStats::default(),
        }
    }

    // ---- Input ------------------------------------------------------------------------------

    /// Sets this node's count for a topic (0 removes it), with its name when known.
    pub fn set_local(&mut self, hash: u64, count: u32, name: Option<&Arc<str>>) {
        let old = self.table.set(hash, count);
        if old != count && self.queued.insert(hash) {
            self.changed.push_back(hash);
        }
        if let Some(n) = name
            && !self.names.contains_key(hash)
        {
            self.names.insert(hash, n);
        }
        if count == 0 {
            // Nobody counts it here any more: keep its name only while a peer counts it (the
            // engine gives it again if it comes back), so names cannot pile up with churn.
            self.new_names.remove(&hash);
            if !self.remote.contains(hash) {
                self.names.remove(hash);
            }
        } else if old == 0 && self.names.contains_key(hash) && !self.remote.contains(hash) {
            // A topic (re)appearing here that no peer counts: announce its name with its count.
            // (One a peer counts was announced by that peer; a node that missed it asks the
            // nodes counting the topic, this one among them.)
            self.new_names.insert(hash);
        }
    }

    /// One tick: drops the peers that went silent, then queues this tick's datagrams (names and
    /// deltas of what changed, within the per-tick budget; refresh slices; or a heartbeat) and
    /// the resync requests that are due. The last datagram is flagged
    /// [`FLAG_END`](crate::cluster::wire::FLAG_END) when no change waits for a later tick.
    pub fn handle_tick(&mut self, now: Instant) {
        self.expire(now);
        self.send_tick(now);
        self.pump_repairs(now);
    }

    /// One received datagram: admission (see the module docs), then its effect: counts applied
    /// to its sender's table, or a resync request answered (queued for its sender only).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Outcome {
        self.receive(now, from, bytes, None, None)
    }

    /// [`Protocol::handle_datagram`] for a datagram the caller holds shared: what the protocol
    /// keeps of it (a peer's delta held to decode its parity) is that allocation, not a copy
    /// (a simulator delivering one datagram to many nodes keeps it once).
    pub fn handle_shared(&mut self, now: Instant, from: SocketAddr, bytes: &Arc<[u8]>) -> Outcome {
        self.receive(now, from, bytes, Some(bytes), None)
    }

    /// [`Protocol::handle_shared`] for bytes whose tag was checked already (by a seal with
    /// this node's key, as [`crate::cluster::sim`] checks each datagram once for all its
    /// receivers); every other rule applies as ever.
    pub(crate) fn handle_checked(
        &mut self,
        now: Instant,
        from: SocketAddr,
        checked: &wire::Checked,
    ) -> Outcome {
        let bytes = checked.bytes();
        self.receive(now, from, bytes, Some(bytes), Some(checked))
    }

    /// Sends the resync requests and nacks that became due, and the answers the repair bucket
    /// now allows (see [`Protocol::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.wake.is_some_and(|w| w <= now) {
            self.wake = None;
            self.request_where_needed(now);
        }
        if self.repairs.wake().is_some_and(|w| w <= now) {
            self.pump_repairs(now);
        }
        self.release_paced(Some(now));
    }

    /// The transport knows the peer at `from` is gone (an Erlang `nodedown`, a closed stream):
    /// its counts leave now instead of after [`Config::dead_after`]. Not a ban: if it comes back
    /// (a healed partition), its next datagram admits it again, and its counts return with the
    /// resync that follows. Returns how many peers were dropped (0 if none was heard at `from`).
    pub fn peer_gone(&mut self, now: Instant, from: SocketAddr) -> usize {
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.addr == from)
            .map(|(n, _)| *n)
            .collect();
        for &n in &gone {
            if self.peers.get(&n).is_some_and(|p| !p.observer) {
                self.stats.peers_died += 1;
            }
            self.drop_peer(n, now, false);
        }
        gone.len()
    }

    /// Queues a goodbye: peers drop this node's counts at once. The last call before stopping.
    pub fn goodbye(&mut self, now: Instant) {
        // What waits of a backlog would only go before the goodbye into a full socket buffer,
        // where the goodbye is then the datagram dropped; the goodbye drops all of it anyway.
        self.paced.clear();
        self.paced_numbered = 0;
        self.send_goodbye(now);
    }

    // ---- Output -----------------------------------------------------------------------------

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.next_transmit()
    }

    /// When [`Protocol::handle_timeout`] should next be called (a rate-limited resync request
    /// or a nack becomes due, or the repair bucket allows more of what waits), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.wake,
            self.repairs.wake(),
            self.paced.front().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- State ------------------------------------------------------------------------------

    /// This node's settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The sum of every live peer's count for `hash`.
    pub fn remote(&self, hash: u64) -> u64 {
        self.remote.get(hash)
    }

    /// This node's own counts ([`Protocol::set_local`]), by hash.
    pub fn local_counts(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.table.map.iter()
    }

    /// Every topic some live peer counts, with the sum of their counts, in no particular order.
    pub fn remote_sums(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.remote.iter()
    }

    /// The sum of every live peer's counts.
    pub fn remote_total(&self) -> u64 {
        self.remote.total()
    }

    /// The name of `hash`, if known.
    pub fn name(&self, hash: u64) -> Option<&str> {
        self.names.get(hash)
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
                found: None,
                incarnation: p.incarnation,
                last_heard: now.saturating_duration_since(p.last_heard),
                alive: true,
                converged: p.converged(),
                over_cap: p.over_cap,
                topics: p.table.len(),
                table_bytes: p.table.map.heap_bytes(),
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

    /// A number that changes whenever a peer is added or dropped: the driver republishes the
    /// node list when it does.
    pub fn membership(&self) -> u64 {
        self.membership
    }

    /// Whether every live peer's copy is converged.
    pub fn converged(&self) -> bool {
        self.peers.values().all(Peer::converged)
    }

    /// Test hook, not for use outside tests: sets this node's copy of peer `node`'s count of
    /// `hash` to `count` (0 removes it), as a lost datagram that left no sequence gap would
    /// (the cluster aggregate follows). Does nothing if `node` is not a peer.
    #[doc(hidden)]
    pub fn corrupt_peer_entry_for_test(&mut self, node: u64, hash: u64, count: u32) {
        self.peer_set(node, hash, count);
    }
}
