//! What the simulated network does to datagrams: faults, each node's link capacity and socket
//! buffers, and delivery (each copy of a group datagram queued for its receiver).

use std::sync::Arc;
use std::time::Duration;

use super::Sim;
use super::event::{Event, Sent};

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

/// The network between the links (each node's uplink and downlink, and its socket buffers, are
/// its lane's: `lane.rs`): faults, and each copy queued for its receiver.
impl Sim {
    /// What the network does to one copy of a datagram for `to` that left at `left`: lost, or
    /// when it arrives (twice if duplicated), each with its number, added to `out`.
    /// Returns whether random loss took it.
    pub(super) fn send(
        &mut self,
        from: usize,
        to: usize,
        left: Duration,
        out: &mut Vec<(Duration, usize, u64)>,
    ) -> bool {
        if self.nodes[from].group != self.nodes[to].group {
            return false;
        }
        if self.chance(self.faults.loss) {
            return true;
        }
        let copies = if self.chance(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = left + self.faults.delay;
            if self.chance(self.faults.reorder) && !self.faults.jitter.is_zero() {
                at += Duration::from_nanos(self.rand() % self.faults.jitter.as_nanos() as u64);
            }
            let id = self.next_id;
            self.next_id += 1;
            out.push((at, to, id));
        }
        false
    }

    /// Queues the copies `send` made of one datagram, each for its receiver.
    pub(super) fn emit(
        &mut self,
        from: usize,
        bytes: &Arc<Sent>,
        out: &mut Vec<(Duration, usize, u64)>,
    ) {
        for (at, to, id) in out.drain(..) {
            self.queue(Event::datagram(at, id, to, from, bytes.clone()));
        }
    }
}
