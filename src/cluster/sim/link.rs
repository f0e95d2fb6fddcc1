//! What the simulated network does to datagrams: faults, and each node's link capacity.

use std::time::Duration;

/// Network faults. Probabilities are per delivery (per receiver, for group datagrams).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub dup: f64,
    /// Probability a datagram is held back by up to `jitter` extra (reordering).
    pub reorder: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Largest extra delay of a reordered datagram.
    pub jitter: Duration,
}

/// Each node's link and socket buffers (0: unlimited, the default). With these, a burst larger
/// than a link or a buffer loses datagrams the way a network does (a repair storm shows as the
/// loss it causes), on top of [`Faults`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    /// Bytes a second a node's uplink carries: a datagram leaves after the ones queued before it
    /// (a group datagram once, a unicast fan-out once per peer).
    pub egress_bytes_per_sec: u64,
    /// Bytes a second a node's downlink carries: arriving datagrams queue for it.
    pub ingress_bytes_per_sec: u64,
    /// Bytes waiting for the uplink past which a send is dropped (a full socket send buffer).
    pub send_buffer: u64,
    /// Bytes waiting for the downlink past which an arriving datagram is dropped (`SO_RCVBUF`).
    pub recv_buffer: u64,
    /// No multicast: a group datagram leaves as one unicast copy per other node (a unicast peer
    /// list, as in most clouds), each taking the uplink and counted in [`Sim::bytes_sent`](super::Sim::bytes_sent).
    pub unicast_fanout: bool,
}

/// What capacity cost a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams dropped for a full send buffer.
    pub dropped_send: u64,
    /// Datagrams dropped on arrival for a full receive buffer.
    pub dropped_recv: u64,
    /// The most bytes the node's protocol handed to its socket within one tick window (of the
    /// simulation's tick, aligned on multiples of it), sent or dropped.
    pub peak_bytes_per_tick: u64,
}
