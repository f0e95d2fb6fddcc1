//! What the protocol reports: its counters ([`ProtoStats`]) and its peers ([`NodeInfo`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::wire::Reject;

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
