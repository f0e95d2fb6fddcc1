//! The simulation's events and their order.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::wire::{Checked, Seal};

/// One event of the simulation. In time order; at the same time, ticks (by node) before
/// datagrams (in the order they were sent) before wakes (by node). Each node's events are
/// queued apart (see `Sim::run_until`). 40 bytes (a `Duration` and a pair for the order made
/// it 64): a 256-node burst keeps millions in the queues, and each pop moves a dozen.
pub(super) struct Event {
    /// When, in nanoseconds of simulated time.
    at: u64,
    /// The order at one time: the kind (0 tick, 1 datagram, 2 wake) in the top two bits, then
    /// the node (a tick, a wake) or the datagram's number (in the order they were sent).
    key: u64,
    pub(super) what: What,
}

pub(super) enum What {
    Tick(usize),
    Wake(usize),
    /// A datagram for `to`; `arrived`: past the receiver's downlink. A group datagram's copies
    /// share their bytes.
    Datagram {
        to: u32,
        from: u32,
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
    fn new(at: Duration, kind: u64, order: u64, what: What) -> Event {
        Event {
            at: u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
            key: kind << 62 | (order & (u64::MAX >> 2)),
            what,
        }
    }

    /// When it happens.
    pub(super) fn at(&self) -> Duration {
        Duration::from_nanos(self.at)
    }

    /// It happens at `at` instead.
    pub(super) fn set_at(&mut self, at: Duration) {
        self.at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The endpoint it happens at.
    pub(super) fn endpoint(&self) -> usize {
        match self.what {
            What::Tick(i) | What::Wake(i) => i,
            What::Datagram { to, .. } => to as usize,
        }
    }
    pub(super) fn tick(at: Duration, i: usize) -> Event {
        Event::new(at, 0, i as u64, What::Tick(i))
    }
    /// Datagram number `id` (in the order they were sent) for endpoint `to` from `from`.
    pub(super) fn datagram(
        at: Duration,
        id: u64,
        to: usize,
        from: usize,
        bytes: Arc<Sent>,
    ) -> Event {
        let what = What::Datagram {
            to: to as u32,
            from: from as u32,
            bytes,
            arrived: false,
        };
        Event::new(at, 1, id, what)
    }
    pub(super) fn wake(at: Duration, i: usize) -> Event {
        Event::new(at, 2, i as u64, What::Wake(i))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Event;

    #[test]
    fn events_are_small_and_in_order() {
        assert!(std::mem::size_of::<Event>() <= 40);
        let t = Duration::from_millis(5);
        let later = Duration::from_nanos(5_000_001);
        let bytes = std::sync::Arc::new(super::Sent::Plain(std::sync::Arc::from(&[][..])));
        let order = [
            Event::tick(t, 9),
            Event::datagram(t, 0, 1, 2, bytes.clone()),
            Event::datagram(t, 7, 0, 2, bytes.clone()),
            Event::wake(t, 0),
            Event::wake(t, 3),
            Event::tick(later, 0),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(order[5].at(), later);
        assert_eq!(order[1].endpoint(), 1);
    }
}
