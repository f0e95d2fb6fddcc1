//! The builder's options for the cluster protocol: clocks, repair, relaying, parity, the
//! refresh, observers.

use std::time::Duration;

use super::Builder;

impl Builder {
    /// How far a peer's clock may be from this node's (default 30 s). Datagrams are stamped
    /// with the sender's clock; one sealed further away is refused (counted as
    /// [`crate::Reject::Clock`]), which is what makes a captured datagram useless to replay
    /// after that long. Keep the cluster's clocks in sync (NTP) well within it.
    pub fn max_clock_skew(mut self, d: Duration) -> Self {
        self.cluster.max_clock_skew = d;
        self
    }

    /// Bytes per second this node spends answering peers, over all of them (default 12.5 MB/s,
    /// a tenth of a 1 Gbit/s link): repairs of the datagrams they missed (nacks) and the whole
    /// tables they ask for. Answers wait for this pace instead of bursting; past 16 table
    /// replies under way, a request is refused (counted as [`crate::Reject::Budget`]) and asked
    /// again later. Keep it below what the uplink carries beside the node's own traffic.
    pub fn max_repair_rate(mut self, bytes_per_second: u64) -> Self {
        self.cluster.max_repair_rate = bytes_per_second;
        self
    }

    /// The most bytes of answers sent at once (default 64 KiB): keep it below the socket
    /// send buffer and the peers' receive buffers, so an answer never overflows the buffers
    /// whose overflow lost what it answers. At least one datagram (the payload budget). A
    /// tick of a burst too big for one tick also sends this much at once and spreads the rest
    /// over nine tenths of the tick.
    pub fn repair_burst(mut self, bytes: usize) -> Self {
        self.cluster.repair_burst = bytes;
        self
    }

    /// Most topics tracked over all peers' tables together (default 2^24): with
    /// [`Builder::max_topics`] per peer, this bounds the memory peers can make this node use
    /// (about 14 bytes per peer entry, plus about 100 per distinct topic).
    pub fn max_remote_topics(mut self, n: usize) -> Self {
        self.cluster.max_remote_topics = n;
        self
    }

    /// With unicast peers and a cluster key: most copies this node sends of each of its
    /// datagrams to the cluster (default 16). With more peers than this, datagrams travel a
    /// tree of this fan-out instead, each node forwarding them to a few others, so that a
    /// node's egress stays about what it hears instead of its own traffic times the peers
    /// (heartbeats, goodbyes, requests and answers still go directly). 0 turns relaying off;
    /// otherwise 2 to 255. Multicast needs none.
    pub fn relay_fanout(mut self, k: usize) -> Self {
        self.cluster.relay_fanout = k;
        self
    }

    /// Repair with parity (default on: one datagram repairs a different loss at each peer).
    /// Off: plain repairs both ways, while some nodes run a version without parity.
    pub fn parity(mut self, on: bool) -> Self {
        self.cluster.parity = on;
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

    /// Ticks over which the rotating refresh resends the whole table (default 10) while it
    /// runs at its full rate: for that many ticks after a peer appears.
    pub fn refresh_cycle(mut self, ticks: u32) -> Self {
        self.cluster.refresh_cycle = ticks;
        self
    }

    /// The rotating refresh's datagrams per tick at most the rest of the time (default 1; 0:
    /// none, a copy gone wrong is then found by the digest every tick carries and asked for,
    /// which needs the way back to the peer: across a path that loses every request, only the
    /// refresh mends a copy, in as many ticks as the table has datagrams at 1).
    /// Every node hears every peer's refresh: at the full rate, with `T` topics a node and `N`
    /// nodes, that is `N × T × 12.7` bytes every cycle, idle (256 nodes of 100,000 topics:
    /// 325 MB a second); at this rate, at most `N` datagrams a tick.
    pub fn idle_refresh(mut self, datagrams_per_tick: u32) -> Self {
        self.cluster.idle_refresh = datagrams_per_tick;
        self
    }

    /// Joins the cluster as a passive observer: counts nothing of its own and never appears in
    /// other nodes' views (for `headcount watch`).
    pub fn observer(mut self, on: bool) -> Self {
        self.cluster.observer = on;
        self
    }
}
