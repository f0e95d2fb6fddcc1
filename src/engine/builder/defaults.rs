//! The defaults of every [`Builder`](crate::Builder) option, each written once. The cluster's own defaults are
//! those of the protocol (`cluster::protocol::defaults`), re-exported here under the builder's
//! names.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub use crate::cluster::protocol::defaults::{
    BUDGET as PAYLOAD_BUDGET, IDLE_REFRESH, MAX_CLOCK_SKEW, MAX_REMOTE_TOPICS, MAX_REPAIR_RATE,
    MAX_TICK_DATAGRAMS, REFRESH_CYCLE, RELAY_FANOUT, REPAIR_BURST, dead_after,
};

/// [`Builder::tick`](crate::Builder::tick): the reducer period.
pub const TICK: Duration = Duration::from_millis(100);
/// [`Builder::max_topics`](crate::Builder::max_topics): the topic table's capacity.
pub const MAX_TOPICS: usize = 1 << 20;
/// [`Builder::retire_after`](crate::Builder::retire_after).
pub const RETIRE_AFTER: Duration = Duration::from_secs(30);
/// [`Builder::ring_capacity`](crate::Builder::ring_capacity): entries per shard's dirty ring.
pub const RING_CAPACITY: usize = 1 << 14;
/// [`Builder::feed_capacity`](crate::Builder::feed_capacity): ticks kept for slow readers.
pub const FEED_CAPACITY: usize = 64;
/// [`Builder::dns_interval`](crate::Builder::dns_interval): how often `peers_dns` names are
/// resolved again.
pub const DNS_INTERVAL: Duration = Duration::from_secs(5);
/// [`Builder::claim_on_join`](crate::Builder::claim_on_join).
pub const CLAIM_ON_JOIN: bool = true;
/// [`Builder::hash_key`](crate::Builder::hash_key) without a cluster.
pub const HASH_KEY: u128 = 0;
/// [`Builder::cluster_name`](crate::Builder::cluster_name).
pub const CLUSTER_NAME: &str = "headcount";
/// The default multicast group: `headcount serve` and `demo` use it on loopback.
pub const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 70, 77), 7380);
/// [`Builder::interface`](crate::Builder::interface) after
/// [`Builder::multicast`](crate::Builder::multicast).
pub const INTERFACE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// [`Builder::multicast_ttl`](crate::Builder::multicast_ttl): this subnet only.
pub const MULTICAST_TTL: u32 = 1;
/// [`Builder::multicast_loopback`](crate::Builder::multicast_loopback).
pub const MULTICAST_LOOPBACK: bool = true;
/// A good capacity for [`ChannelTransport::new`](crate::ChannelTransport::new): datagrams queued
/// each way (about two ticks' worth for a busy node; each holds at most a payload budget).
pub const CHANNEL_CAPACITY: usize = 1024;
