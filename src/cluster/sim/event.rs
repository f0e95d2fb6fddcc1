//! The simulation's events and their order.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// One event of the simulation. In time order; at the same time, ticks (by node) before
/// datagrams (in the order they were sent) before wakes (by node).
pub(super) struct Event {
    pub(super) at: Duration,
    pub(super) key: (u8, u64),
    pub(super) what: What,
}

pub(super) enum What {
    Tick(usize),
    Wake(usize),
    /// A datagram for `to`; `arrived`: past the receiver's downlink. One group datagram's
    /// copies share their bytes.
    Datagram {
        to: usize,
        from: usize,
        bytes: Arc<[u8]>,
        arrived: bool,
    },
    /// Copies of one datagram that arrive at the same time, for `copies[next..]` (each
    /// receiver with its copy's number, which orders it among the other events as a
    /// `Datagram` of its own would be).
    Copies {
        copies: Vec<(usize, u64)>,
        next: usize,
        from: usize,
        bytes: Arc<[u8]>,
    },
}

impl Event {
    pub(super) fn tick(at: Duration, i: usize) -> Event {
        Event {
            at,
            key: (0, i as u64),
            what: What::Tick(i),
        }
    }
    pub(super) fn wake(at: Duration, i: usize) -> Event {
        Event {
            at,
            key: (2, i as u64),
            what: What::Wake(i),
        }
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Event) -> bool {
        (self.at, self.key) == (o.at, o.key)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Event) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Event) -> Ordering {
        (self.at, self.key).cmp(&(o.at, o.key))
    }
}
