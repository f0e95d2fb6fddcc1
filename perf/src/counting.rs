//! A global allocator that counts the allocations of the threads that ask for it: how
//! `headcount-perf hotpath` shows that the hot path allocates nothing (`allocs_per_op`); and,
//! when asked, the bytes allocated and not freed yet: how `headcount-perf converge` measures
//! what the protocol's tables take (`bytes_per_peer_topic`).
//!
//! Only a binary installs it (`#[global_allocator] static A: Counting = Counting;`, as
//! `headcount-perf` does); the criterion benches keep the system allocator. This is the crate's
//! only unsafe code, and CI runs its test under Miri (`.ci/run`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The system allocator, counting the allocations (`alloc`, `alloc_zeroed`, `realloc`) made by
/// threads that turned counting on with [`count_allocs`].
#[derive(Debug)]
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations are counted. Const-initialized and without a
    /// destructor, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread's allocations and frees move [`LIVE`] (off by default: the
    /// multithreaded load commands then pay nothing; and `converge` runs its lossless baseline
    /// beside the measured run, untracked).
    static TRACK: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread allocated and did not free since it began tracking them (may go below
    /// zero when memory allocated before is freed). Its own, not an atomic shared by all: a
    /// 256-node `converge` run allocates tens of millions of times on the thread it measures.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn note_alloc() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

#[inline]
fn note_bytes(delta: i64) {
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        let _ = LIVE.try_with(|l| l.set(l.get() + delta));
    }
}

// SAFETY: every method forwards to `System` with the same arguments; counting touches only an
// atomic and thread-local `Cell`s, none of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        note_bytes(layout.size() as i64);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        note_bytes(layout.size() as i64);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        note_bytes(new_size as i64 - layout.size() as i64);
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_bytes(-(layout.size() as i64));
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Turns counting of this thread's allocations on or off. Also a [`crate::rig::Hook`]: the
/// headcount one-thread hot-path loop counts its own allocations with it.
pub fn count_allocs(on: bool) {
    COUNTING.with(|c| c.set(on));
}

/// Bytes that threads helping the tracking thread ([`helper_bytes`]) allocated and did not
/// free, added when each stops helping.
static HELPED: AtomicI64 = AtomicI64::new(0);

/// Starts keeping the bytes this thread allocates and does not free ([`live_bytes`]), from
/// zero; or stops. (One thread at a time: its helpers' bytes are kept process-wide.)
pub fn track_bytes(on: bool) {
    LIVE.with(|l| l.set(0));
    HELPED.store(0, Ordering::Relaxed);
    TRACK.with(|t| t.set(on));
}

/// This thread starts or stops working for the thread that tracks bytes: while it does, what it
/// allocates and frees counts in that thread's [`live_bytes`] (added when it stops). A
/// simulation's second thread (`Sim::on_helper_thread`) does its share of the measured run.
pub fn helper_bytes(on: bool) {
    let mine = LIVE.with(|l| l.replace(0));
    if !on {
        HELPED.fetch_add(mine, Ordering::Relaxed);
    }
    TRACK.with(|t| t.set(on));
}

/// Bytes this thread, and the threads that helped it and stopped, allocated and did not free
/// since its [`track_bytes`]`(true)` (requested sizes, not the allocator's rounding; zero
/// unless [`Counting`] is the global allocator).
pub fn live_bytes() -> i64 {
    LIVE.with(Cell::get) + HELPED.load(Ordering::Relaxed)
}

/// Allocations counted so far, all threads together (zero unless [`Counting`] is the global
/// allocator).
pub fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

#[cfg(test)]
#[global_allocator]
static GLOBAL: Counting = Counting;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs under Miri in CI (`.ci/run`): the counting allocator forwards every call intact.
    #[test]
    fn counting_allocator_counts_and_forwards() {
        count_allocs(true);
        let before = allocs();
        let mut v: Vec<u64> = (0..100).collect();
        v.extend(0..1000u64); // realloc
        let z = vec![0u8; 4096]; // alloc_zeroed
        let counted = allocs() - before;
        count_allocs(false);
        assert!(counted >= 3, "counted {counted}");
        assert_eq!(v.iter().sum::<u64>(), 4950 + 499_500);
        assert!(z.iter().all(|&b| b == 0));
        let before = allocs();
        drop(vec![1u8; 10]);
        assert_eq!(allocs(), before, "not counting when off");
    }

    /// Runs under Miri in CI too. Only this thread's allocations count: other tests run
    /// meanwhile; and another thread's allocation is not counted.
    #[test]
    fn counting_allocator_keeps_live_bytes() {
        const MIB: i64 = 1 << 20;
        track_bytes(true);
        let a = live_bytes();
        let mut v: Vec<u8> = Vec::with_capacity(16 << 20);
        let b = live_bytes();
        assert!((b - a - 16 * MIB).abs() < MIB, "alloc: {a} -> {b}");
        v.reserve_exact(32 << 20); // realloc to 32 MiB
        let c = live_bytes();
        assert!((c - b - 16 * MIB).abs() < MIB, "realloc: {b} -> {c}");
        drop(v);
        let d = live_bytes();
        assert!((c - d - 32 * MIB).abs() < MIB, "free: {c} -> {d}");
        let other = std::thread::spawn(|| Vec::<u8>::with_capacity(16 << 20))
            .join()
            .expect("allocating thread");
        let e = live_bytes();
        assert!((e - d).abs() < MIB, "another thread's: {d} -> {e}");
        // A helper's bytes count once it stops helping, and so do frees here of what it
        // allocated.
        let helped = std::thread::spawn(|| {
            helper_bytes(true);
            let v = Vec::<u8>::with_capacity(8 << 20);
            helper_bytes(false);
            v
        })
        .join()
        .expect("helping thread");
        let f = live_bytes();
        assert!((f - e - 8 * MIB).abs() < MIB, "a helper's: {e} -> {f}");
        drop(helped);
        let g = live_bytes();
        assert!((g - e).abs() < MIB, "its bytes freed here: {f} -> {g}");
        track_bytes(false);
        drop(other);
    }
}
