//! The hot path allocates nothing: a million `Shard::join` + drop on interned topics, counted by
//! a global allocator that only counts on the measuring thread (the engine thread may allocate
//! concurrently). This must stay the only test in this file: the allocator is process-global.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use headcount::Engine;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` and `Drop`-free: reading it never allocates or registers a destructor.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every method forwards to `System` unchanged; the counter is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as in `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCS.load(Ordering::Relaxed) - before, r)
}

#[test]
fn join_and_leave_allocate_nothing() {
    const TOPICS: usize = 1000;
    const OPS: usize = 1_000_000;

    // The counter works: a Vec allocates.
    let (n, v) = allocations_in(|| Vec::<u64>::with_capacity(16));
    assert!(
        n >= 1,
        "the counting allocator must see this thread's allocations"
    );
    drop(v);

    // A short tick, so that epochs move (and rings get pushed and drained) while we measure.
    let engine = Engine::builder()
        .shards(2)
        .tick(Duration::from_millis(1))
        .start()
        .unwrap();
    let topics: Vec<_> = (0..TOPICS)
        .map(|i| engine.try_topic(&format!("room:{i}")).unwrap())
        .collect();
    let mut shard = engine.shard().unwrap();
    // Warm-up: the first join binds the shard to this thread (may allocate once).
    for &t in &topics {
        drop(shard.join(t));
    }
    let keep = shard.join(topics[0]);

    let (n, checksum) = allocations_in(|| {
        let mut counted = 0usize;
        for i in 0..OPS {
            let p = shard.join(topics[i % TOPICS]);
            counted += usize::from(p.is_counted());
            drop(p);
        }
        counted
    });
    assert_eq!(checksum, OPS, "every join counted");
    assert_eq!(n, 0, "{OPS} joins and leaves allocated {n} times");

    // The convenience path too, once this thread has its own shard: `Engine::join` looks the
    // thread's shard up in a thread-local list.
    drop(engine.join(topics[0]));
    let (n, checksum) = allocations_in(|| {
        let mut counted = 0usize;
        for i in 0..OPS / 10 {
            let p = engine.join(topics[i % TOPICS]);
            counted += usize::from(p.is_counted());
            drop(p);
        }
        counted
    });
    assert_eq!(checksum, OPS / 10);
    assert_eq!(n, 0, "Engine::join and leave allocated {n} times");

    engine.sync();
    assert_eq!(engine.count(topics[0]), 1);
    assert_eq!(engine.total(), 1);
    drop(keep);
    engine.sync();
    assert_eq!(engine.total(), 0);
}
