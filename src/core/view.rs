//! The read side: per-topic counts any thread can read without a lock, and the change feed.
//!
//! Counts are published by the engine thread once per tick with relaxed stores. A reader sees
//! each topic's count as of some tick; it does not see a consistent snapshot across topics
//! (like any gauge read while it moves).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::core::sync::{AtomicU64, Ordering, zeroed_u64};

pub(crate) struct View {
    /// Per topic, side by side (one cache line for both): `[2 id]` local, `[2 id + 1]` cluster.
    counts: Box<[AtomicU64]>,
    pub(crate) total_local: AtomicU64,
    pub(crate) total_cluster: AtomicU64,
}

impl View {
    pub(crate) fn new(capacity: usize) -> View {
        View {
            counts: zeroed_u64(capacity * 2),
            total_local: AtomicU64::new(0),
            total_cluster: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn local(&self, id: u32) -> &AtomicU64 {
        &self.counts[id as usize * 2]
    }

    #[inline]
    pub(crate) fn cluster(&self, id: u32) -> &AtomicU64 {
        &self.counts[id as usize * 2 + 1]
    }

    pub(crate) fn set(&self, id: u32, local: u64, cluster: u64) {
        self.local(id).store(local, Ordering::Relaxed);
        self.cluster(id).store(cluster, Ordering::Relaxed);
    }
}

/// The changes of one tick: every topic whose count changed, with its new count.
#[derive(Debug, Clone)]
pub struct TickChanges {
    /// The tick number (the engine's epoch).
    pub tick: u64,
    /// `(topic name, new cluster-wide count)`, in no particular order.
    pub changes: Vec<(Arc<str>, u64)>,
}

/// What a [`ChangeFeed`] hands out.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// The changes of one tick.
    Changes(Arc<TickChanges>),
    /// This reader fell behind and `missed` ticks' changes were dropped for it; re-read the
    /// counts it cares about.
    Lagged {
        /// How many ticks' changes were lost.
        missed: u64,
    },
}

struct Queue {
    buf: VecDeque<Arc<TickChanges>>,
    /// Sequence number of `buf[0]`.
    first: u64,
    closed: bool,
}

pub(crate) struct Feed {
    q: Mutex<Queue>,
    cv: Condvar,
    capacity: usize,
    /// Wakes async readers ([`crate::AsyncChangeFeed`]) after each publish and at close.
    #[cfg(feature = "tokio")]
    pub(crate) notify: tokio::sync::Notify,
}

impl Feed {
    pub(crate) fn new(capacity: usize) -> Arc<Feed> {
        Arc::new(Feed {
            q: Mutex::new(Queue {
                buf: VecDeque::new(),
                first: 0,
                closed: false,
            }),
            cv: Condvar::new(),
            capacity: capacity.max(1),
            #[cfg(feature = "tokio")]
            notify: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anyone is reading (the engine skips building batches otherwise).
    pub(crate) fn has_readers(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }

    /// Appends one tick's changes, dropping the oldest beyond capacity. Never waits on readers
    /// for longer than it takes to push to a queue.
    pub(crate) fn publish(&self, batch: TickChanges) {
        let mut q = self.lock();
        q.buf.push_back(Arc::new(batch));
        while q.buf.len() > self.capacity {
            q.buf.pop_front();
            q.first += 1;
        }
        drop(q);
        self.cv.notify_all();
        self.wake_async();
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
        self.wake_async();
    }

    /// Wakes every async reader waiting (after the queue's lock is released, like the condvar).
    #[inline]
    fn wake_async(&self) {
        #[cfg(feature = "tokio")]
        self.notify.notify_waiters();
    }

    pub(crate) fn subscribe(self: &Arc<Self>) -> ChangeFeed {
        let q = self.lock();
        ChangeFeed {
            feed: self.clone(),
            next: q.first + q.buf.len() as u64,
        }
    }
}

/// A reader of the per-tick change feed ([`crate::Engine::changes`]).
///
/// Bounded: the engine keeps the last `feed_capacity` ticks; a reader further behind gets
/// [`FeedEvent::Lagged`] and resumes at the oldest kept tick. The engine never waits for readers.
///
/// Its methods block the calling thread. From async code, with the `tokio` feature, turn it into
/// an `AsyncChangeFeed` (`ChangeFeed::into_async`): the same events and lag, awaited.
///
/// Ordering with the read API: the engine stores a tick's counts before it publishes the tick
/// to the feed, so once a reader has received a tick, [`crate::Engine::count`] returns those
/// counts or newer ones. A reader that keeps its own copy of some counts (seeded from
/// `Engine::count` and then updated from the feed) can thus fall behind the read API by the
/// ticks it has not read yet, never the other way round; to never move a count backwards, take
/// the feed as "these topics changed" and read their counts again.
pub struct ChangeFeed {
    feed: Arc<Feed>,
    next: u64,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("next", &self.next)
            .finish()
    }
}

impl ChangeFeed {
    fn take(&mut self, q: &Queue) -> Option<FeedEvent> {
        if self.next < q.first {
            let missed = q.first - self.next;
            self.next = q.first;
            return Some(FeedEvent::Lagged { missed });
        }
        let i = (self.next - q.first) as usize;
        let b = q.buf.get(i)?.clone();
        self.next += 1;
        Some(FeedEvent::Changes(b))
    }

    /// The next event if one is ready, and whether the feed is closed (the engine stopped).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_next(&mut self) -> (Option<FeedEvent>, bool) {
        let feed = self.feed.clone();
        let q = feed.lock();
        (self.take(&q), q.closed)
    }

    /// The shared queue this reader reads (for the async reader's wake-ups).
    #[cfg(feature = "tokio")]
    pub(crate) fn shared(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<FeedEvent> {
        let feed = self.feed.clone();
        let q = feed.lock();
        self.take(&q)
    }

    /// Waits up to `timeout` for the next event; `None` on timeout or once the engine stopped
    /// and everything was read.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<FeedEvent> {
        let deadline = Instant::now() + timeout;
        let feed = self.feed.clone();
        let mut q = feed.lock();
        loop {
            if let Some(ev) = self.take(&q) {
                return Some(ev);
            }
            let now = Instant::now();
            if q.closed || now >= deadline {
                return None;
            }
            q = feed
                .cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the next event; `None` once the engine stopped and everything was read.
    pub fn recv(&mut self) -> Option<FeedEvent> {
        let feed = self.feed.clone();
        let mut q = feed.lock();
        loop {
            if let Some(ev) = self.take(&q) {
                return Some(ev);
            }
            if q.closed {
                return None;
            }
            q = feed.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Iterator for ChangeFeed {
    type Item = FeedEvent;
    fn next(&mut self) -> Option<FeedEvent> {
        self.recv()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn batch(tick: u64) -> TickChanges {
        TickChanges {
            tick,
            changes: vec![("t".into(), tick)],
        }
    }

    #[test]
    fn slow_reader_is_told_it_lagged() {
        let f = Feed::new(2);
        let mut r = f.subscribe();
        assert!(f.has_readers());
        assert!(r.try_recv().is_none());
        for t in 1..=5 {
            f.publish(batch(t));
        }
        match r.try_recv() {
            Some(FeedEvent::Lagged { missed: 3 }) => {}
            other => panic!("expected a lag of 3, got {other:?}"),
        }
        for want in [4, 5] {
            match r.try_recv() {
                Some(FeedEvent::Changes(b)) => assert_eq!(b.tick, want),
                other => panic!("{other:?}"),
            }
        }
        f.close();
        assert!(r.recv().is_none());
        assert!(r.recv_timeout(Duration::from_millis(1)).is_none());
    }
}
