//! The protocol's settings ([`Config`]), its wall clock ([`Clock`]) and every default of the
//! cluster settings ([`defaults`]: the engine's builder takes its defaults from there too).

use std::time::{Duration, Instant};

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
    /// Ticks over which the rotating refresh covers the whole table while it runs at full
    /// rate: for `refresh_cycle` ticks after a peer appears (new, restarted, or back).
    pub refresh_cycle: u32,
    /// The rotating refresh's datagrams per tick at most the rest of the time (0: none). What
    /// every node hears idle is then bounded by the peers, not by their tables: at the
    /// full rate it is the whole of every peer's table every `refresh_cycle` ticks.
    pub idle_refresh: u32,
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
    /// same requester; the longest between two nack rounds to the same peer (for a big table
    /// they follow its measured round trip, at least `nack_window` apart).
    pub resync_interval: Duration,
    /// Bytes per second this node spends answering resync requests and nacks, over all
    /// requesters.
    pub max_repair_rate: u64,
    /// The most bytes of answers sent at once (the repair bucket's depth; at least one
    /// datagram): below a socket buffer, so an answer never overflows the buffers whose
    /// overflow caused the loss it answers. Also what a tick of a burst bigger than one tick
    /// sends at once: the rest of such a tick is spread over nine tenths of it.
    pub repair_burst: usize,
    /// Topics of recent deltas and names this node keeps to answer nacks; a nack for older
    /// datagrams is answered with the whole table.
    pub repair_history: usize,
    /// The longest a receiver waits, at random, before it nacks (another receiver's nack for
    /// the same may come first, and then it waits for the repair instead).
    pub nack_window: Duration,
    /// Most delta and names datagrams one tick sends; the rest waits for the next tick.
    pub max_tick_datagrams: usize,
    /// How far a datagram's `time` may be from this node's clock.
    pub max_clock_skew: Duration,
    /// This node's wall clock.
    pub clock: Clock,
    /// A passive observer: counts nothing, never counted or listed by peers.
    pub observer: bool,
    /// Tell peers, every [`defaults::MEMBERS_EVERY`] ticks and when a new peer is heard, which
    /// peers this node hears and at which addresses (membership gossip: a node given one seed
    /// peer learns the rest). For unicast clusters with a key; multicast needs none.
    pub gossip_members: bool,
    /// Most copies this node sends of a group datagram itself, with a unicast peer list: with
    /// more peers than this, group datagrams (but heartbeats and goodbyes) travel a tree of
    /// this fan-out, each node forwarding them to a few others, so that a node's egress stays
    /// about what it hears instead of growing with the cluster. 0 or 1: never relay. Only for
    /// unicast clusters that learn their peers' addresses (with a key); multicast needs none.
    pub relay_fanout: usize,
    /// Answer other nodes' nacks with parity (coded repairs: one datagram repairs a different
    /// loss at each receiver) and decode theirs. Off: plain repairs only, both ways (for a
    /// cluster with nodes that predate parity, until all are upgraded). Default on.
    pub parity: bool,
    /// In the cross-zone group of a zoned cluster, this node's zone (0: not zoned): datagrams
    /// from nodes of the same zone (by [`zone_of`] their id) are refused
    /// ([`Reject::Zone`](crate::cluster::wire::Reject::Zone)), so that the zone's own sum, which
    /// one of them publishes there, is not counted twice. Zones are simulated
    /// ([`crate::cluster::sim::Sim::zoned`]), not yet offered by the engine.
    pub zone: u16,
    /// Ticks between heartbeats of a node whose table is empty and that sends nothing else
    /// (1: every tick, the default). A zoned cluster's nodes that do not speak for their zone
    /// count nothing in the cross-zone group, where every node of every zone is a member: 5
    /// there makes what each node hears idle about a fifth (`dead_after` is 30 ticks, so each
    /// peer still hears six of them before it would drop the node).
    pub empty_heartbeat_every: u32,
    /// The most bytes a tick that ends a burst hands to the socket at once; a bigger one is
    /// spread over the tick like a tick of a longer burst (see `repair_burst`). Default:
    /// Linux's default socket buffer, 208 KiB. (At once, a 600 kB tick into such a buffer on
    /// a 1 Gbit/s link lost most of itself, and its repairs ran out of rounds; spreading every
    /// tick above `repair_burst` cost a tick of delay on unlimited links.)
    pub max_unpaced_tick: usize,
    /// Seeds where the per-topic tables (the aggregate's sums, the names) place a topic hash
    /// (`open.rs`). The engine gives a secret random one, so that no peer can crowd the hashes
    /// it sends into one run of slots and make every lookup a long search; the default, derived
    /// from `node` and `incarnation`, keeps a simulation reproducible.
    pub table_seed: u64,
}

/// The zone of a node id in a zoned cluster: its top 16 bits.
pub fn zone_of(node: u64) -> u16 {
    (node >> 48) as u16
}

/// Every default of the protocol's settings, written once: [`Config::new`] and the engine's
/// builder both take them from here.
pub mod defaults {
    /// Ticks between two rounds of membership gossip ([`super::Config::gossip_members`]).
    pub const MEMBERS_EVERY: u64 = 10;
    use std::time::Duration;

    /// Largest datagram (fits a 1500-byte MTU with IP and UDP headers).
    pub const BUDGET: usize = 1400;
    /// Ticks per full rotating refresh.
    pub const REFRESH_CYCLE: u32 = 10;
    /// The idle refresh's datagrams per tick.
    pub const IDLE_REFRESH: u32 = 1;
    /// Allowed distance between a sender's clock and the receiver's.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
    /// Resync replies and repairs per second, in bytes: a tenth of a 1 Gbit/s link.
    pub const MAX_REPAIR_RATE: u64 = 12_500_000;
    /// The most bytes a tick that ends a burst sends at once: Linux's default socket buffer.
    pub const MAX_UNPACED_TICK: usize = 212_992;
    /// The repair bucket's depth: 64 KiB, a third of Linux's default socket buffer.
    pub const REPAIR_BURST: usize = 64 * 1024;
    /// Topics of recent deltas and names kept for repairs (8 bytes each: 2 MiB).
    pub const REPAIR_HISTORY: usize = 1 << 18;
    /// Topics tracked over all peers' tables together.
    pub const MAX_REMOTE_TOPICS: usize = 1 << 24;
    /// Delta and names datagrams per tick (about 700 kB: what a receiver's socket buffer takes
    /// while it is busy, many times over).
    pub const MAX_TICK_DATAGRAMS: usize = 512;

    /// The relay tree's fan-out for unicast clusters ([`super::Config::relay_fanout`]): a
    /// cluster of up to 17 nodes sends directly; 256 nodes are two hops deep (16, then 16 each).
    pub const RELAY_FANOUT: usize = 16;

    /// Peers tracked.
    pub const MAX_PEERS: usize = 1024;
    /// Observers tracked (apart from the peers).
    pub const MAX_OBSERVERS: usize = 64;
    /// Topics tracked per peer.
    pub const MAX_TOPICS_PER_PEER: usize = 1 << 21;
    /// Datagrams accepted per second from one source address.
    pub const MAX_RATE: u32 = 20_000;

    /// `dead_after` for a tick: 3 s or 30 ticks, whichever is longer.
    pub fn dead_after(tick: Duration) -> Duration {
        (tick * 30).max(Duration::from_secs(3))
    }

    /// `resync_interval` for a tick: a quarter of it, at least 5 ms.
    pub fn resync_interval(tick: Duration) -> Duration {
        (tick / 4).max(Duration::from_millis(5))
    }

    /// `nack_window` for a tick: a tenth of it, at least 1 ms (it must exceed the time a nack
    /// takes to reach the other receivers for them to hold theirs back).
    pub fn nack_window(tick: Duration) -> Duration {
        (tick / 10).max(Duration::from_millis(1))
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
            idle_refresh: defaults::IDLE_REFRESH,
            max_peers: defaults::MAX_PEERS,
            max_observers: defaults::MAX_OBSERVERS,
            max_topics_per_peer: defaults::MAX_TOPICS_PER_PEER,
            max_remote_topics: defaults::MAX_REMOTE_TOPICS,
            max_rate: defaults::MAX_RATE,
            resync_interval: defaults::resync_interval(tick),
            max_repair_rate: defaults::MAX_REPAIR_RATE,
            repair_burst: defaults::REPAIR_BURST,
            repair_history: defaults::REPAIR_HISTORY,
            nack_window: defaults::nack_window(tick),
            max_tick_datagrams: defaults::MAX_TICK_DATAGRAMS,
            max_clock_skew: defaults::MAX_CLOCK_SKEW,
            clock: Clock::system(),
            observer: false,
            gossip_members: false,
            relay_fanout: 0,
            parity: true,
            zone: 0,
            empty_heartbeat_every: 1,
            max_unpaced_tick: defaults::MAX_UNPACED_TICK,
            table_seed: super::open::spread(node ^ incarnation.rotate_left(32)),
        }
    }

    /// How long a dropped node's tombstone is kept: past the clock window, so that when it is
    /// forgotten every datagram the node sent before is already refused by the clock rule.
    pub(super) fn tomb_ttl(&self) -> Duration {
        (self.dead_after * 10).max(self.max_clock_skew + self.dead_after * 2)
    }
}
