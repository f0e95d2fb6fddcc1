//! The simulation's events and their order.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::wire::{Checked, Seal};

/// One event of the simulation. In time order; at the same time, ticks (by node) before
/// datagrams (in the order they were sent) before wakes (by node). Each node's events are
/// queued apart (see `Sim::run_until`).
pub(super) struct Event {
    pub(super) at: Duration,
    pub(super) key: (u8, u64),
    pub(super) what: What,
}

pub(super) enum What {
    Tick(usize),
    Wake(usize),
    /// A datagram for `to`; `arrived`: past the receiver's downlink. A group datagram's copies
    /// share their bytes.
    Datagram {
        to: usize,
        from: usize,
        bytes: Arc<Sent>,
        arrived: bool,
    },
}

/// A datagram's bytes, shared by its copies: with its tag checked once for all of its receivers
/// (every simulated node has the same key), or as they are (one receiver checks it itself, and
/// a datagram that failed the check is refused by each).
pub(super) enum Sent {
    Checked(Checked),
    Plain(Arc<[u8]>),
}

impl Sent {
    /// `bytes` for `receivers`: checked here, once, when several share them (one receiver's
    /// own check costs the same).
    pub(super) fn new(seal: &Seal, bytes: &[u8], receivers: usize) -> Sent {
        let bytes: Arc<[u8]> = bytes.into();
        match (receivers > 1).then(|| seal.check(&bytes)).flatten() {
            Some(c) => Sent::Checked(c),
            None => Sent::Plain(bytes),
        }
    }

    pub(super) fn bytes(&self) -> &Arc<[u8]> {
        match self {
            Sent::Checked(c) => c.bytes(),
            Sent::Plain(b) => b,
        }
    }
}

impl Event {
    /// The endpoint it happens at.
    pub(super) fn endpoint(&self) -> usize {
        match self.what {
            What::Tick(i) | What::Wake(i) => i,
            What::Datagram { to, .. } => to,
        }
    }
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
