//! What the simulated network does to datagrams: faults, each node's link capacity and socket
//! buffers, and delivery (each copy of a group datagram queued for its receiver).

use std::sync::Arc;
use std::time::Duration;

use super::Sim;
use super::addr::addr;
use super::event::{Event, Sent, What};

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

/// The links: each node's uplink and downlink, and its socket buffers.
impl Sim {
    /// How long `len` bytes take at `rate` bytes a second (0: unlimited).
    fn wire_time(len: usize, rate: u64) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((len as u128 * 1_000_000_000 / u128::from(rate)) as u64)
    }

    /// Bytes still queued on a link that is busy until `free`, at `rate`.
    fn backlog(&self, free: Duration, rate: u64) -> u64 {
        let wait = free.saturating_sub(self.now);
        (wait.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
    }

    /// Puts `len` bytes on node `i`'s uplink; when they have left, or `None` if its send buffer
    /// is full.
    pub(super) fn uplink(&mut self, i: usize, len: usize) -> Option<Duration> {
        let c = self.capacity;
        let free = self.nodes[i].tx_free;
        if c.egress_bytes_per_sec == 0 {
            return Some(self.now);
        }
        if c.send_buffer > 0
            && self.backlog(free, c.egress_bytes_per_sec) + len as u64 > c.send_buffer
        {
            self.nodes[i].link.dropped_send += 1;
            return None;
        }
        let done = free.max(self.now) + Self::wire_time(len, c.egress_bytes_per_sec);
        self.nodes[i].tx_free = done;
        Some(done)
    }

    /// Datagram `ev` reached its receiver's downlink now: queued behind the ones before it (or
    /// dropped if its receive buffer is full); given back if it can be handled now.
    pub(super) fn downlink(&mut self, mut ev: Event) -> Option<Event> {
        let c = self.capacity;
        let What::Datagram {
            to,
            ref bytes,
            ref mut arrived,
            ..
        } = ev.what
        else {
            return Some(ev);
        };
        if c.ingress_bytes_per_sec == 0 || *arrived {
            return Some(ev);
        }
        let to = to as usize;
        let len = bytes.bytes().len();
        let free = self.nodes[to].rx_free;
        if c.recv_buffer > 0
            && self.backlog(free, c.ingress_bytes_per_sec) + len as u64 > c.recv_buffer
        {
            self.nodes[to].link.dropped_recv += 1;
            return None;
        }
        let done = free.max(self.now) + Self::wire_time(len, c.ingress_bytes_per_sec);
        self.nodes[to].rx_free = done;
        *arrived = true;
        ev.set_at(done);
        self.queue(ev);
        None
    }

    /// What the network does to one copy of a datagram for `to` that left at `left`: lost, or
    /// when it arrives (twice if duplicated), each with its number, added to `out`.
    pub(super) fn send(
        &mut self,
        from: usize,
        to: usize,
        left: Duration,
        out: &mut Vec<(Duration, usize, u64)>,
    ) {
        if self.nodes[from].group != self.nodes[to].group || self.chance(self.faults.loss) {
            return;
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

    /// Datagram event `ev` came up: through the receiver's downlink, then to its protocol.
    pub(super) fn deliver(&mut self, ev: Event) {
        let Some(ev) = self.downlink(ev) else {
            return; // queued for the downlink, or dropped
        };
        let What::Datagram {
            to, from, bytes, ..
        } = ev.what
        else {
            return;
        };
        let (to, from) = (to as usize, from as usize);
        if let Some(mut p) = self.nodes[to].proto.take() {
            self.delivered += 1;
            let now = self.base + self.now;
            match &*bytes {
                Sent::Checked(c) => p.handle_checked(now, addr(from), c),
                Sent::Plain(b) => p.handle_shared(now, addr(from), b),
            };
            self.flush(to, &mut p);
            self.nodes[to].proto = Some(p);
            self.rewake(to);
        }
    }
}
