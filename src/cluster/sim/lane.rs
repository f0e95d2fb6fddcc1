//! One endpoint's share of the simulation: its events handled against its own state (its
//! protocol, its links, its queue), and what it sends recorded as [`Outgoing`] rather than
//! put on the network. The network's faults are drawn afterwards (`Sim::commit`), in the order
//! the datagrams were sent. So a window's nodes (see `Sim::run_until`) can be handled on two
//! threads and commit in node order after it, and the run is the one a single thread makes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::addr::{self, addr};
use super::event::{Event, Sent, What};
use super::lost;
use super::{Capacity, Node, Sim};
use crate::cluster::protocol::{Dest, Protocol};
use crate::cluster::wire::Seal;

/// Nodes with events in a window from which [`Sim::run_until`] runs it on two threads, when it
/// may (fewer: a thread's start costs more than it saves).
pub const TWO_THREADS_FROM: usize = 32;

/// What every lane reads and none changes.
pub(super) struct Net<'a> {
    pub(super) tick: Duration,
    pub(super) base: Instant,
    pub(super) capacity: Capacity,
    /// The groups (`Sim::nets`).
    pub(super) nets: &'a [Vec<usize>],
    pub(super) seal: &'a Seal,
    /// Endpoints in the simulation.
    pub(super) endpoints: usize,
    /// Whether nodes' events are read (a zoned cluster's, by `Sim::zone_before_tick`); where
    /// they are not, each tick drops the names learned, as an application polling them would.
    pub(super) events_read: bool,
}

/// A datagram endpoint `from` handed its socket: each copy that left its uplink (the receiver,
/// and when it left), and its bytes, shared by the copies.
pub(super) struct Outgoing {
    pub(super) from: usize,
    pub(super) copies: Vec<(usize, Duration)>,
    pub(super) bytes: Arc<Sent>,
}

impl Node {
    /// Whether tick `ev` is no longer this endpoint's (crashed, or restarted since).
    pub(super) fn stale_tick(&self, ev: &Event) -> bool {
        self.proto.is_none() || self.next_tick != ev.at()
    }
}

/// Endpoint `i` with its node's state, the queue and clock of its node, and what it sent.
pub(super) struct Lane<'a> {
    pub(super) i: usize,
    pub(super) node: &'a mut Node,
    pub(super) queue: &'a mut BinaryHeap<Reverse<Event>>,
    pub(super) clock: &'a mut Duration,
    pub(super) bytes_sent: &'a mut u64,
    /// The simulated time of the event being handled.
    pub(super) now: Duration,
    /// Datagrams handed to its protocol.
    pub(super) delivered: u64,
    /// What it sent, in order, for `Sim::commit`.
    pub(super) out: Vec<Outgoing>,
}

impl Lane<'_> {
    /// Handles its events due before `end`, in time order (a window: what it sends cannot
    /// reach another endpoint before then).
    pub(super) fn run(&mut self, net: &Net, end: Duration) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at() < end) {
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            // A wake asked for a time already past runs now.
            let now = ev.at().max(*self.clock);
            *self.clock = now;
            self.now = now;
            self.handle(net, ev);
        }
    }

    /// Event `ev` came up, at `self.now`.
    pub(super) fn handle(&mut self, net: &Net, ev: Event) {
        match ev.what {
            What::Tick(_) => {
                if self.node.stale_tick(&ev) {
                    return;
                }
                let p = self.node.proto.as_mut().expect("running node");
                p.handle_tick(net.base + self.now);
                if !net.events_read {
                    p.skip_learned();
                }
                self.flush(net);
                let next = ev.at() + net.tick;
                self.node.next_tick = next;
                self.queue.push(Reverse(Event::tick(next, self.i)));
                self.rewake(net);
            }
            What::Wake(_) => {
                if self.node.wake != Some(ev.at()) {
                    return; // stale: the node asked for another time since
                }
                self.node.wake = None;
                let Some(p) = self.node.proto.as_mut() else {
                    return;
                };
                p.handle_timeout(net.base + self.now);
                self.flush(net);
                self.rewake(net);
            }
            What::Datagram { .. } => self.deliver(net, ev),
        }
    }

    /// Queues its wake if its protocol asks for a new one.
    pub(super) fn rewake(&mut self, net: &Net) {
        let w = self
            .node
            .proto
            .as_ref()
            .and_then(Protocol::poll_timeout)
            .map(|w| w.saturating_duration_since(net.base));
        if w != self.node.wake {
            self.node.wake = w;
            if let Some(w) = w {
                self.queue.push(Reverse(Event::wake(w, self.i)));
            }
        }
    }

    /// Takes what its protocol sends: counted, through its uplink, and recorded.
    pub(super) fn flush(&mut self, net: &Net) {
        // (One instant: its tick window, its group and the fan-out hold for all it sends.)
        let w = (self.now.as_nanos() / net.tick.as_nanos().max(1)) as u64;
        let members = &net.nets[self.node.net];
        let fanout = net.capacity.unicast_fanout;
        while let Some(t) = self.node.proto.as_mut().and_then(Protocol::poll_transmit) {
            let len = t.bytes.len();
            let n = match t.dest {
                Dest::Group if fanout => members.len() as u64 - 1,
                _ => 1,
            };
            let node = &mut *self.node;
            if node.window.0 != w {
                node.window = (w, 0);
            }
            node.window.1 += len as u64 * n;
            node.link.peak_bytes_per_tick = node.link.peak_bytes_per_tick.max(node.window.1);
            let mut copies = Vec::new();
            match t.dest {
                Dest::Group if fanout => {
                    // A copy per peer, each through the uplink.
                    for &j in members {
                        if j != self.i
                            && let Some(left) = self.uplink(net, len)
                        {
                            *self.bytes_sent += len as u64;
                            copies.push((j, left));
                        }
                    }
                }
                Dest::Group => {
                    // One transmission reaches the whole group.
                    let Some(left) = self.uplink(net, len) else {
                        continue;
                    };
                    *self.bytes_sent += len as u64;
                    copies.extend(members.iter().filter(|&&j| j != self.i).map(|&j| (j, left)));
                }
                Dest::To(a) => {
                    if let Some(j) = addr::index(a).filter(|&j| j < net.endpoints) {
                        let Some(left) = self.uplink(net, len) else {
                            continue;
                        };
                        *self.bytes_sent += len as u64;
                        copies.push((j, left));
                    }
                }
            }
            if !copies.is_empty() {
                // (Checked once here for all its receivers, whatever the network then loses.)
                let bytes = Arc::new(Sent::new(net.seal, &t.bytes, copies.len()));
                self.out.push(Outgoing {
                    from: self.i,
                    copies,
                    bytes,
                });
            }
        }
    }

    /// When `len` bytes leave a link that carries `rate` bytes a second and is busy until
    /// `free`, behind the bytes queued on it; `None` if they would pass `buffer` bytes queued
    /// (0: unbounded).
    fn behind(&self, free: Duration, rate: u64, buffer: u64, len: usize) -> Option<Duration> {
        let backlog = free.saturating_sub(self.now).as_nanos() * u128::from(rate) / 1_000_000_000;
        if buffer > 0 && backlog as u64 + len as u64 > buffer {
            return None;
        }
        let wire = len as u128 * 1_000_000_000 / u128::from(rate.max(1));
        Some(free.max(self.now) + Duration::from_nanos(wire as u64))
    }

    /// Puts `len` bytes on its uplink; when they have left, or `None` if its send buffer is
    /// full.
    fn uplink(&mut self, net: &Net, len: usize) -> Option<Duration> {
        let c = net.capacity;
        if c.egress_bytes_per_sec == 0 {
            return Some(self.now);
        }
        let Some(done) = self.behind(
            self.node.tx_free,
            c.egress_bytes_per_sec,
            c.send_buffer,
            len,
        ) else {
            self.node.link.dropped_send += 1;
            return None;
        };
        self.node.tx_free = done;
        Some(done)
    }

    /// Datagram `ev` reached its downlink now: queued behind the ones before it (or dropped if
    /// its receive buffer is full); given back if it can be handled now.
    fn downlink(&mut self, net: &Net, mut ev: Event) -> Option<Event> {
        let c = net.capacity;
        let What::Datagram {
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
        let len = bytes.bytes().len();
        let rate = c.ingress_bytes_per_sec;
        let Some(done) = self.behind(self.node.rx_free, rate, c.recv_buffer, len) else {
            self.node.link.dropped_recv += 1;
            return None;
        };
        self.node.rx_free = done;
        *arrived = true;
        ev.set_at(done);
        self.queue.push(Reverse(ev));
        None
    }

    /// Datagram event `ev` came up: through its downlink, then to its protocol.
    fn deliver(&mut self, net: &Net, ev: Event) {
        let Some(ev) = self.downlink(net, ev) else {
            return; // queued for the downlink, or dropped
        };
        let What::Datagram { from, bytes, .. } = ev.what else {
            return;
        };
        let Some(p) = self.node.proto.as_mut() else {
            return;
        };
        self.delivered += 1;
        let now = net.base + self.now;
        match &*bytes {
            Sent::Checked(c) => p.handle_checked(now, addr(from as usize), c),
            Sent::Plain(b) => p.handle_shared(now, addr(from as usize), b),
        };
        self.flush(net);
        self.rewake(net);
    }
}

/// What lanes borrow of a simulation, each its own node's share.
pub(super) struct Shares<'a> {
    nodes: &'a mut [Node],
    queues: &'a mut [BinaryHeap<Reverse<Event>>],
    clocks: &'a mut [Duration],
    bytes_sent: &'a mut [u64],
    now: Duration,
}

/// A lane at a time, or a window's lanes on two threads.
impl Sim {
    /// The network's read-only parts, and what its lanes borrow.
    fn split(&mut self) -> (Net<'_>, Shares<'_>) {
        let endpoints = self.nodes.len();
        let Sim {
            nodes,
            queues,
            clocks,
            bytes_sent,
            capacity,
            nets,
            seal,
            tick,
            base,
            now,
            zones,
            ..
        } = self;
        let net = Net {
            tick: *tick,
            base: *base,
            capacity: *capacity,
            nets,
            seal,
            endpoints,
            events_read: zones.is_some(),
        };
        let shares = Shares {
            nodes,
            queues,
            clocks,
            bytes_sent,
            now: *now,
        };
        (net, shares)
    }

    /// Runs `f` on endpoint `e`'s lane (at `self.now`), then puts what it sent on the network.
    pub(super) fn with_lane<R>(&mut self, e: usize, f: impl FnOnce(&mut Lane, &Net) -> R) -> R {
        let u = self.zones.as_ref().map_or(e, |z| e % z.n);
        let (net, sh) = self.split();
        let mut lane = Lane {
            i: e,
            node: &mut sh.nodes[e],
            queue: &mut sh.queues[u],
            clock: &mut sh.clocks[u],
            bytes_sent: &mut sh.bytes_sent[e],
            now: sh.now,
            delivered: 0,
            out: Vec::new(),
        };
        let r = f(&mut lane, &net);
        let (delivered, out) = (lane.delivered, lane.out);
        self.delivered += delivered;
        self.commit(out);
        r
    }

    /// Runs the window before `end` with its nodes split between this thread and a second one,
    /// when [`Sim::spare_cores`] lends a core and the window has [`TWO_THREADS_FROM`] nodes with
    /// events or more; whether it did. Each node handles its events as on one thread (nothing
    /// from another node can reach it within the window); what they sent is then put on the
    /// network in node order, as one thread does it, so the run is the same.
    pub(super) fn window_on_two_threads(&mut self, end: Duration) -> bool {
        // (Not with zones, whose glue acts on a node's two endpoints and its zone at once; nor
        // without delay, where a window is one instant and what a node sends in it is due in it.)
        if self.zones.is_some() || self.faults.delay.is_zero() {
            return false;
        }
        let due = |q: &BinaryHeap<Reverse<Event>>| q.peek().is_some_and(|Reverse(e)| e.at() < end);
        let Some(pool) = self.spare_cores.clone() else {
            return false;
        };
        if self.queues.iter().filter(|q| due(q)).count() < TWO_THREADS_FROM
            || pool
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                .is_err()
        {
            return false;
        }
        let hook = self.on_helper_thread;
        let (net, sh) = self.split();
        let now = sh.now;
        let mut lanes: Vec<Lane> = sh
            .nodes
            .iter_mut()
            .zip(sh.queues.iter_mut())
            .zip(sh.clocks.iter_mut())
            .zip(sh.bytes_sent.iter_mut())
            .enumerate()
            .filter(|(_, (((_, q), _), _))| due(q))
            .map(|(i, (((node, queue), clock), bytes_sent))| Lane {
                i,
                node,
                queue,
                clock,
                bytes_sent,
                now,
                delivered: 0,
                out: Vec::new(),
            })
            .collect();
        // Each thread takes the next lane not taken yet: a node's window may hold one event or
        // hundreds of datagrams, so halves by count could leave one thread waiting on the other.
        let left = Mutex::new(lanes.iter_mut());
        let take = || left.lock().unwrap_or_else(PoisonError::into_inner).next();
        let work = || {
            while let Some(l) = take() {
                l.run(&net, end);
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                hook.inspect(|f| f(true));
                work();
                hook.inspect(|f| f(false));
            });
            work();
        });
        pool.fetch_add(1, Ordering::AcqRel);
        let sent: Vec<(u64, Vec<Outgoing>)> =
            lanes.into_iter().map(|l| (l.delivered, l.out)).collect();
        for (delivered, out) in sent {
            self.delivered += delivered;
            self.commit(out);
        }
        true
    }

    /// Puts what lanes sent on the network, in the order they sent it: each copy's fate drawn
    /// ([`Sim::send`]), then queued for its receiver.
    pub(super) fn commit(&mut self, out: Vec<Outgoing>) {
        let mut arrivals = Vec::new();
        for o in out {
            let data = self.lost_data.is_some() && lost::repaired_kind(o.bytes.bytes());
            for (to, left) in o.copies {
                let lost = self.send(o.from, to, left, &mut arrivals);
                if let Some(l) = self.lost_data.as_mut().filter(|_| lost && data) {
                    l.add(o.from, to, o.bytes.bytes().len());
                }
            }
            self.emit(o.from, &o.bytes, &mut arrivals);
        }
    }
}
