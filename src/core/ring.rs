//! A bounded single-producer single-consumer ring of `u64`s, built from atomics only.
//!
//! The producer is a shard's owner (it records which topics it dirtied); the consumer is the
//! reducer. Neither side ever writes a cache line the other writes: the producer owns `tail` and
//! its cached copy of `head`, the consumer owns `head`.

use crossbeam_utils::CachePadded;

use crate::core::sync::{AtomicU64, AtomicUsize, Ordering, zeroed_u64};

pub(crate) struct Ring {
    buf: Box<[AtomicU64]>,
    mask: usize,
    /// Written by the producer only.
    tail: CachePadded<AtomicUsize>,
    /// The producer's last sight of `head`; read and written by the producer only.
    head_cache: AtomicUsize,
    /// Written by the consumer only.
    head: CachePadded<AtomicUsize>,
}

impl Ring {
    /// A ring holding at least `capacity` entries (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Ring {
        let cap = capacity.max(2).next_power_of_two();
        Ring {
            buf: zeroed_u64(cap),
            mask: cap - 1,
            tail: CachePadded::new(AtomicUsize::new(0)),
            head_cache: AtomicUsize::new(0),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Producer side: appends `v`, or returns `false` when the ring is full.
    ///
    /// Only one thread at a time may call this (the shard's owner).
    #[inline]
    pub(crate) fn push(&self, v: u64) -> bool {
        let t = self.tail.load(Ordering::Relaxed);
        let mut h = self.head_cache.load(Ordering::Relaxed);
        if t.wrapping_sub(h) > self.mask {
            // Acquire: the consumer finished reading every entry below `head`.
            h = self.head.load(Ordering::Acquire);
            self.head_cache.store(h, Ordering::Relaxed);
            if t.wrapping_sub(h) > self.mask {
                return false;
            }
        }
        self.buf[t & self.mask].store(v, Ordering::Relaxed);
        // Release: the entry (and every slot store before it) is visible to whoever sees `tail`.
        self.tail.store(t.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer side: calls `f` on every entry pushed so far, oldest first, and frees them.
    ///
    /// Only one thread at a time may call this (the reducer).
    pub(crate) fn drain(&self, mut f: impl FnMut(u64)) -> usize {
        let h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        let n = t.wrapping_sub(h);
        for i in 0..n {
            f(self.buf[h.wrapping_add(i) & self.mask].load(Ordering::Relaxed));
        }
        // Release: our reads of the entries happen before the producer reuses their places.
        self.head.store(t, Ordering::Release);
        n
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fills_drains_and_wraps() {
        let r = Ring::new(4);
        assert_eq!(r.capacity(), 4);
        for round in 0..10u64 {
            for i in 0..4 {
                assert!(r.push(round * 10 + i));
            }
            assert!(!r.push(99), "a full ring refuses");
            let mut got = vec![];
            assert_eq!(r.drain(|v| got.push(v)), 4);
            assert_eq!(got, (0..4).map(|i| round * 10 + i).collect::<Vec<_>>());
            assert_eq!(r.drain(|_| panic!("empty")), 0);
        }
    }

    #[test]
    fn concurrent_producer_consumer_loses_nothing() {
        let r = std::sync::Arc::new(Ring::new(64));
        let n = if cfg!(miri) { 300 } else { 200_000 };
        let p = {
            let r = r.clone();
            std::thread::spawn(move || {
                for v in 0..n {
                    while !r.push(v) {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut next = 0;
        while next < n {
            r.drain(|v| {
                assert_eq!(v, next);
                next += 1;
            });
        }
        p.join().unwrap();
    }
}
