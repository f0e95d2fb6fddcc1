//! What the protocol reports: its counters ([`ProtoStats`]) and its peers ([`NodeInfo`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::wire::Reject;

/// How this node found a peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Found {
    /// Given at start (`unicast(.., peers)`, `serve --peers`).
    Configured,
    /// Resolved from DNS (`peers_dns`, `serve --peers-dns`).
    Dns,
    /// Learned: it sent an authenticated datagram from an address not yet known, or a peer
    /// told this node about it (membership gossip). Only with a cluster key.
    Learned,
    /// Heard on the multicast group.
    Multicast,
    /// Through an application-provided transport.
    Custom,
}

impl Found {
    /// Its name in `NODES` and the metrics: `configured`, `dns`, `learned`, `multicast`, `custom`.
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Configured => "configured",
            Found::Dns => "dns",
            Found::Learned => "learned",
            Found::Multicast => "multicast",
            Found::Custom => "custom",
        }
    }
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// How this node found that address (set by the engine; `None` from a bare protocol).
    pub found: Option<Found>,
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
    /// Heap bytes this node's copy of its table takes (0 once it is dropped).
    pub table_bytes: usize,
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
    /// Resync requests sent (for a peer's whole table, or names).
    pub resync_requests: u64,
    /// Of `resync_requests`, those for a peer's whole table (the others ask for names only).
    pub table_requests: u64,
    /// Resync requests answered.
    pub resync_replies: u64,
    /// Digest request datagrams sent: a copy of a peer's table reconciled by hash range (the
    /// whole range, then each differing range drilled into or fetched).
    pub digest_requests: u64,
    /// Digest reply datagrams sent (the digests of a range's children).
    pub digest_replies: u64,
    /// Bytes sent answering resync requests and nacks (whole tables, names, repairs).
    pub repair_bytes: u64,
    /// Nack datagrams sent (this node missed some of a peer's datagrams, and its copy was
    /// wrong).
    pub nacks_sent: u64,
    /// Bytes of those nacks (every copy, with a unicast peer list).
    pub nack_bytes: u64,
    /// Nacks this node held back because other receivers had asked for the same.
    pub nacks_suppressed: u64,
    /// Repair datagrams sent (current counts and names of what peers nacked).
    pub repairs_sent: u64,
    /// Parity datagrams sent (coded repairs: each repairs a different loss at each receiver).
    pub parity_sent: u64,
    /// Peers' datagrams this node recovered from parity.
    pub recovered: u64,
    /// Copies of peers' datagrams forwarded along their relay trees.
    pub relayed: u64,
    /// Bytes of those copies.
    pub relayed_bytes: u64,
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
