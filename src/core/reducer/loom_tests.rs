//! Loom models of the hot path against the reducer: the dirty tracking (no change is ever lost,
//! whatever the interleaving) and the park rule of retirement (a straggler never counts into a
//! freed id). They run the real `Core::observe`, `Core::apply`, `Core::park`, [`Collector`],
//! [`sum`] and [`quiet`]:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.

use loom::sync::Arc;

use super::*;

/// The reducer's view: per-topic sums as of its last tick.
struct Mini {
    c: Collector,
    tick: u64,
    local: Vec<i64>,
}

impl Mini {
    fn new(hot: &Hot) -> Mini {
        Mini {
            c: Collector::new(hot.cores.len(), hot.capacity()),
            tick: hot.epoch.load(Ordering::Relaxed),
            local: vec![0; hot.capacity()],
        }
    }
    fn tick(&mut self, hot: &Hot) {
        self.tick += 1;
        self.c.collect(hot, self.tick, hot.capacity() as u32, false);
        for &id in &self.c.touched {
            self.local[id as usize] = sum(hot, id);
        }
    }
}

/// A worker's ops as `(topic, +1/-1)`, or `(_, 0)` for a park; the owner's path exactly as
/// `Shard::join`, `Presence::drop` and `Shard::park` run it.
fn work(hot: &Hot, ops: &[(u32, i32)]) {
    let core = &hot.cores[0];
    // Bound like a shard's owner thread, and released at the end like a dropped shard.
    core.hdr.bound.store(1, Ordering::SeqCst);
    hot.epoch.fetch_add(0, Ordering::SeqCst);
    for &(id, d) in ops {
        if d == 0 {
            core.park(&hot.epoch);
            continue;
        }
        let e = core.observe(&hot.epoch);
        core.apply(e, id, d as u32, 0);
    }
    core.hdr.bound.store(0, Ordering::Release);
}

fn check(ring: usize, ops: &'static [(u32, i32)], concurrent_ticks: usize) {
    loom::model(move || {
        let hot = Arc::new(Hot::new(1, 3, ring));
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || work(&hot, ops))
        };
        let mut r = Mini::new(&hot);
        for _ in 0..concurrent_ticks {
            r.tick(&hot);
        }
        w.join().unwrap();
        // Everything the worker did happened before this tick: it must be exact now.
        r.tick(&hot);
        let mut truth = [0i64; 3];
        for &(id, d) in ops {
            truth[id as usize] += i64::from(d);
        }
        assert_eq!(&r.local[..], &truth[..], "a change was missed");
    });
}

#[test]
fn loom_same_topic_twice_in_one_epoch_is_never_lost() {
    // The classic trap: the second join skips the push because the topic was already pushed
    // this epoch, while the reducer drains and reads concurrently.
    check(4, &[(1, 1), (1, 1)], 2);
}

#[test]
fn loom_join_leave_join_across_ticks() {
    check(4, &[(0, 1), (1, 1), (0, -1), (1, 1)], 2);
}

#[test]
fn loom_a_core_released_and_bound_again_loses_nothing() {
    // An owner releases the core (its watch list may then be dropped) and a new owner binds
    // it, possibly in the same epoch, and changes the same topic.
    loom::model(|| {
        let hot = Arc::new(Hot::new(1, 2, 4));
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || {
                work(&hot, &[(1, 1)]);
                work(&hot, &[(1, 1)]);
            })
        };
        let mut r = Mini::new(&hot);
        r.tick(&hot);
        r.tick(&hot);
        w.join().unwrap();
        r.tick(&hot);
        assert_eq!(r.local[1], 2, "a change was missed");
    });
}

#[test]
fn loom_ring_overflow_rescans() {
    // A ring of 2 entries and 3 topics: the third push fails and asks for a rescan.
    check(2, &[(0, 1), (1, 1), (2, 1), (2, 1)], 1);
}

#[test]
fn loom_park_between_changes_loses_nothing() {
    // A park publishes the core's epoch (the collector may then stop watching older topics)
    // and the next change takes the unpark path, possibly in the same epoch.
    check(4, &[(1, 1), (1, 0), (1, 1), (1, 0), (1, -1)], 2);
}

/// What the model's worker does before it parks.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// Joins T and leaves it again (its presence came and went).
    JoinLeave,
    /// Joins T and stays (T must never be freed).
    Join,
}

/// The topic the model retires.
const T: u32 = 1;
/// The handle a straggler holds: T's generation before retirement.
const OLD: u32 = 0;

impl Mini {
    /// Retires T while the model's workers run: a tick, phase one (as `Topics::begin_retire`
    /// does it on the hot side), then up to two ticks waiting for phase two (as
    /// `Reducer::retire`: `quiet`, then the re-sum). Whether phase two freed T.
    fn retire(&mut self, hot: &Hot) -> bool {
        self.tick(hot);
        let t1 = self.tick;
        hot.bump_generation(T);
        for _ in 0..2 {
            self.tick(hot);
            if quiet(hot) > t1 {
                return sum(hot, T) == 0;
            }
        }
        false
    }
}

/// Binds core 0 to a worker before the model starts, as `ShardPool::bind` leaves it.
fn bound_hot() -> Arc<Hot> {
    let hot = Arc::new(Hot::new(1, 2, 4));
    // The epoch as the reducer leaves it: stored with SeqCst. (Loom treats an atomic's
    // initial value as a non-SeqCst store that a SeqCst load may read even after later SeqCst
    // stores; C++20 coherence forbids that, and in the engine the epoch has been stored by
    // every tick long before any retirement.)
    hot.epoch.store(1, Ordering::SeqCst);
    let h = &hot.cores[0].hdr;
    h.bound.store(1, Ordering::SeqCst);
    h.joiner.store(1, Ordering::SeqCst);
    hot
}

/// The worker: `before`, then park (its event loop blocks), then optionally wake up and join
/// T through its old handle, as `Shard::join` and `Presence::drop` run it. Returns whether
/// it still holds a presence from before the park, and whether the last join counted.
fn parking_worker(hot: &Hot, before: Before, wake: bool) -> (bool, bool) {
    let core = &hot.cores[0];
    let held = match before {
        Before::Nothing => false,
        Before::JoinLeave => {
            if hot.join_owned(0, T, OLD) {
                let e = core.observe(&hot.epoch);
                core.apply(e, T, 1u32.wrapping_neg(), 1u64.wrapping_neg());
            }
            false
        }
        // Before the bump, or a straggler itself (the bump may not be visible yet).
        Before::Join => hot.join_owned(0, T, OLD),
    };
    core.park(&hot.epoch);
    (held, wake && hot.join_owned(0, T, OLD))
}

/// Safety of the park rule: the reducer retires T (phase one as `Topics::begin_retire` does it
/// on the hot side, phase two as `Reducer::retire`: `quiet`, then the re-sum) while the worker
/// parks and then wakes up with a stale handle. If phase two freed T, the straggler's join
/// must have failed, and a presence made before the park must have kept T alive.
fn parked_straggler(before: Before) {
    loom::model(move || {
        let hot = bound_hot();
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || parking_worker(&hot, before, true))
        };
        let mut r = Mini::new(&hot);
        let freed = r.retire(&hot);
        let (held, joined) = w.join().unwrap();
        assert!(!(freed && joined), "a straggler counted into a freed id");
        assert!(
            !(freed && held),
            "freed a topic with a presence made before the park"
        );
        r.tick(&hot);
        assert_eq!(r.local[T as usize], i64::from(held) + i64::from(joined));
    });
}

#[test]
fn loom_parked_straggler_never_counts_into_a_freed_id() {
    parked_straggler(Before::Nothing);
}

#[test]
fn loom_parked_straggler_after_join_and_leave() {
    parked_straggler(Before::JoinLeave);
}

#[test]
fn loom_parked_core_with_a_presence_keeps_its_topic() {
    parked_straggler(Before::Join);
}

#[test]
fn loom_parked_idle_worker_does_not_hold_up_phase_two() {
    // Liveness: the worker joins and leaves T, parks and blocks (no further activity). The
    // ticks that follow must let phase two through, and the re-sum must read T's zero.
    loom::model(|| {
        let hot = bound_hot();
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || {
                parking_worker(&hot, Before::JoinLeave, false);
            })
        };
        let mut r = Mini::new(&hot);
        r.tick(&hot);
        w.join().unwrap();
        r.tick(&hot);
        let t1 = r.tick;
        hot.bump_generation(T);
        r.tick(&hot);
        assert!(quiet(&hot) > t1, "a parked worker held up phase two");
        assert_eq!(sum(&hot, T), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Leaves on another core (a presence dropped on a thread whose home core is not the one it
// joined on: see `hot.rs`, Threads)

/// Binds cores 0 and 1 (two threads' homes) before the model starts.
fn two_homes() -> Arc<Hot> {
    let hot = Arc::new(Hot::new(2, 2, 4));
    hot.epoch.store(1, Ordering::SeqCst);
    for (i, c) in hot.cores.iter().enumerate() {
        c.hdr.bound.store(i as u64 + 1, Ordering::SeqCst);
        c.hdr.joiner.store(i as u64 + 1, Ordering::SeqCst);
    }
    hot
}

/// A leave of a presence made on core `from`, on core `to` (its dropping thread's home), as
/// `Hold::drop` runs it there. The model's single worker plays both threads in turn: program
/// order stands for the synchronization that moved the presence between them.
fn leave_on(hot: &Hot, to: usize) {
    let core = &hot.cores[to];
    let e = core.observe(&hot.epoch);
    core.leave_foreign(e, T);
}

#[test]
fn loom_a_leave_on_another_core_is_never_lost() {
    loom::model(|| {
        let hot = two_homes();
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || {
                assert!(hot.join_owned(0, T, OLD));
                leave_on(&hot, 1);
                assert!(hot.join_owned(0, T, OLD));
                assert!(hot.join_owned(1, T, OLD));
                leave_on(&hot, 0);
            })
        };
        let mut r = Mini::new(&hot);
        r.tick(&hot);
        r.tick(&hot);
        w.join().unwrap();
        r.tick(&hot);
        assert_eq!(r.local[T as usize], 1, "a change was missed");
        assert_eq!(hot.live(), 1, "live presences over both cores");
    });
}

#[test]
fn loom_a_leave_on_another_core_never_frees_a_live_topic() {
    // Two presences join on core 0 (either may be a straggler), one of them leaves on core 1,
    // then both cores park. The reducer retires T meanwhile: if phase two freed it, the
    // presence still held must not have counted.
    loom::model(|| {
        let hot = two_homes();
        let w = {
            let hot = hot.clone();
            loom::thread::spawn(move || {
                let held = hot.join_owned(0, T, OLD);
                if hot.join_owned(0, T, OLD) {
                    leave_on(&hot, 1);
                }
                hot.cores[0].park(&hot.epoch);
                hot.cores[1].park(&hot.epoch);
                held
            })
        };
        let mut r = Mini::new(&hot);
        let freed = r.retire(&hot);
        let held = w.join().unwrap();
        assert!(!(freed && held), "freed a topic whose presence is alive");
        r.tick(&hot);
        assert_eq!(r.local[T as usize], i64::from(held));
    });
}
