use super::*;
use crate::core::hot::{Hot, SHARED};
use crate::core::reducer::quiet;

fn pool(cores: usize, cap: usize) -> Arc<ShardPool> {
    let hot = HotBox::new(Hot::new(cores, cap, 16));
    Arc::new(ShardPool::new(
        hot,
        cores,
        Topics::new(cap, 0, crate::MAX_NAME_LEN),
        true,
    ))
}

fn sum(hot: &Hot, id: u32) -> i64 {
    let mut s = hot.shared.count(id);
    for c in hot.cores.iter() {
        s = s.wrapping_add(c.count(id));
    }
    i64::from(s as i32)
}

#[test]
fn join_drop_on_owner_and_elsewhere() {
    let p = pool(2, 64);
    let t = Topic::from_parts(5, 0);
    let mut s = Shard::claim(&p, 2).unwrap();
    let a = s.join(t);
    let b = s.join(t);
    assert_eq!(sum(&p.hot, 5), 2);
    drop(a);
    assert_eq!(sum(&p.hot, 5), 1);
    // Dropped on another thread: through the shared core.
    std::thread::spawn(move || drop(b)).join().unwrap();
    assert_eq!(sum(&p.hot, 5), 0);
    assert_eq!(p.hot.live(), 0);
}

#[test]
fn presence_outliving_pool_is_safe_and_leaks() {
    let p = pool(1, 64);
    let t = Topic::from_parts(3, 0);
    let mut s = Shard::claim(&p, 1).unwrap();
    let a = s.join(t);
    drop(s);
    assert_eq!(sum(&p.hot, 3), 1);
    drop(a); // the shard was returned: counts through the shared core
    assert_eq!(sum(&p.hot, 3), 0);
    let mut s = Shard::claim(&p, 1).unwrap();
    let b = s.join(t);
    drop(s);
    drop(p); // live presence: the hot memory is kept, not freed
    drop(b);
}

#[test]
fn stale_handles_count_nothing() {
    let p = pool(1, 64);
    let mut s = Shard::claim(&p, 1).unwrap();
    p.hot.gens[7].store(1, Ordering::SeqCst);
    let stale = Topic::from_parts(7, 0);
    assert!(matches!(
        s.try_join(stale),
        Err(Error::StaleTopic { id: 7 })
    ));
    let inert = s.join(stale);
    assert!(!inert.is_counted());
    assert!(
        s.try_join(Topic::from_parts(1_000, 0)).is_err(),
        "out of range is stale too"
    );
    let ok = s.join(Topic::from_parts(7, 1));
    assert_eq!(sum(&p.hot, 7), 1);
    drop((inert, ok));
    assert_eq!(sum(&p.hot, 7), 0);
}

#[test]
fn moved_shard_counts_exactly_through_shared_path() {
    let p = pool(1, 64);
    let t = Topic::from_parts(1, 0);
    let mut s = Shard::claim(&p, 1).unwrap();
    let a = s.join(t); // binds to this thread
    let (s, b) = std::thread::spawn(move || {
        let mut s = s;
        let b = s.join(t);
        (s, b)
    })
    .join()
    .unwrap();
    assert_eq!(sum(&p.hot, 1), 2);
    assert_eq!(b.hold.core(), SHARED);
    drop((a, b, s));
    assert_eq!(sum(&p.hot, 1), 0);
}

#[test]
fn claims_run_out_and_come_back() {
    let p = pool(2, 8);
    let a = Shard::claim(&p, 2).unwrap();
    let b = Shard::claim(&p, 2).unwrap();
    assert!(matches!(
        Shard::claim(&p, 2),
        Err(Error::NoFreeShard { shards: 2 })
    ));
    drop(a);
    let c = Shard::claim(&p, 2).unwrap();
    drop((b, c));
    assert_eq!(p.free_shards(), 2);
}

#[test]
fn full_ring_asks_for_a_rescan_and_retries() {
    let p = pool(1, 64);
    let mut s = Shard::claim(&p, 1).unwrap();
    let keep: Vec<_> = (0..40).map(|i| s.join(Topic::from_parts(i, 0))).collect();
    let core = &p.hot.cores[0];
    assert!(core.hdr.overflows.load(Ordering::Acquire) > 0);
    let mut n = 0;
    core.ring.drain(|_| n += 1);
    assert_eq!(n, 16);
    // The marks are set anyway: a second change in the same epoch does not retry the push.
    let before = core.hdr.overflows.load(Ordering::Acquire);
    let again = s.join(Topic::from_parts(39, 0));
    assert_eq!(core.hdr.overflows.load(Ordering::Acquire), before);
    drop(again);
    drop(keep);
}

fn parked(p: &ShardPool, c: usize) -> bool {
    p.hot.cores[c].hdr.parked.load(Ordering::SeqCst)
}

#[test]
fn park_then_join_and_leave_count_exactly() {
    let p = pool(2, 64);
    let t = Topic::from_parts(5, 0);
    let mut s = Shard::claim(&p, 2).unwrap();
    let c = s.index();
    let a = s.join(t);
    s.park();
    assert!(parked(&p, c));
    assert_eq!(quiet(&p.hot), u64::MAX, "a parked core holds up nothing");
    p.hot.epoch.store(2, Ordering::SeqCst); // a tick while parked
    let b = s.join(t);
    assert!(!parked(&p, c), "a join unparks");
    assert_eq!(p.hot.cores[c].hdr.seen.load(Ordering::Acquire), 2);
    assert_eq!(quiet(&p.hot), 2);
    assert_eq!(sum(&p.hot, 5), 2);
    s.park();
    drop(a);
    assert!(!parked(&p, c), "a leave on the owner thread unparks too");
    assert_eq!(sum(&p.hot, 5), 1);
    s.park();
    s.park(); // twice is the same as once
    assert!(parked(&p, c));
    let again = s.join(t); // in the same epoch as the park
    assert_eq!(sum(&p.hot, 5), 2);
    drop((b, again));
    assert_eq!(sum(&p.hot, 5), 0);
    assert_eq!(p.hot.live(), 0);
}

#[test]
fn stale_handle_after_park_and_retirement_is_rejected() {
    let p = pool(1, 64);
    let t = Topic::from_parts(7, 0);
    let mut s = Shard::claim(&p, 1).unwrap();
    drop(s.join(t));
    s.park();
    // Phase one in tick 2, phase two's check in tick 3: the parked core does not hold it up.
    p.hot.epoch.store(2, Ordering::SeqCst);
    let g = p.hot.bump_generation(7);
    p.hot.epoch.store(3, Ordering::SeqCst);
    assert!(quiet(&p.hot) > 2);
    assert_eq!(sum(&p.hot, 7), 0);
    // The worker wakes up with its old handle.
    assert!(matches!(s.try_join(t), Err(Error::StaleTopic { id: 7 })));
    assert!(!s.join(t).is_counted());
    assert!(!parked(&p, 0));
    assert_eq!(quiet(&p.hot), 3);
    assert_eq!(sum(&p.hot, 7), 0);
    let fresh = s.join(Topic::from_parts(7, g));
    assert!(fresh.is_counted());
    assert_eq!(sum(&p.hot, 7), 1);
}

#[test]
fn park_on_an_unused_or_moved_shard_is_harmless() {
    let p = pool(1, 64);
    let t = Topic::from_parts(2, 0);
    let mut s = Shard::claim(&p, 1).unwrap();
    s.park(); // never used: bound to no thread
    assert!(!parked(&p, 0));
    let a = s.join(t);
    assert_eq!(quiet(&p.hot), 1);
    // Moved to another thread while `a` lives: it counts through the shared core there, and
    // parking there leaves the core bound here alone.
    let s = std::thread::spawn(move || {
        let mut s = s;
        s.park();
        drop(s.join(t));
        s.park();
        s
    })
    .join()
    .unwrap();
    assert!(!parked(&p, 0));
    assert_eq!(sum(&p.hot, 2), 1);
    // A parked shard given back: its core holds up nothing, and the next owner unparks on
    // its first join.
    let mut s = s;
    s.park();
    drop(s);
    assert!(parked(&p, 0));
    assert_eq!(quiet(&p.hot), u64::MAX);
    let mut s = Shard::claim(&p, 1).unwrap();
    let b = s.join(t);
    assert!(!parked(&p, 0));
    assert_eq!(sum(&p.hot, 2), 2);
    drop((a, b));
    assert_eq!(sum(&p.hot, 2), 0);
}

#[test]
fn leaves_on_a_home_core_never_lower_the_joining_cores_live_count() {
    // A worker joins twice through its shard and hands the shard and both presences over; the
    // shard is dropped here, so its core stays bound to the (living) worker.
    let p = pool(2, 64);
    let t = Topic::from_parts(5, 0);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let p = p.clone();
        std::thread::spawn(move || {
            let mut s = Shard::claim(&p, 2).unwrap();
            let (a, b) = (s.join(t), s.join(t));
            tx.send((s, a, b)).unwrap();
            let _ = stop_rx.recv();
        })
    };
    let (s, a, b) = rx.recv().unwrap();
    assert_eq!(a.hold.core(), 0);
    drop(s);
    // Another thread drops one of them through its own (implicit, home) shard: core 1.
    {
        let p = p.clone();
        std::thread::spawn(move || {
            let other = p.join_here(Topic::from_parts(6, 0)).unwrap();
            assert_eq!(other.hold.core(), 1);
            drop(a);
            drop(other);
        })
        .join()
        .unwrap();
    }
    assert_eq!(sum(&p.hot, 5), 1);
    assert_eq!(p.hot.live(), 1, "b is alive");
    let h = &p.hot.cores[0].hdr;
    assert_eq!(
        h.live.load(Ordering::Relaxed),
        2,
        "core 0 still counts both of its presences: the leave on core 1 went to core 1's foreign"
    );
    // So core 0 cannot be handed over while its worker lives (b, made there, is alive and the
    // worker could still drop it there): a new shard claimed on it counts through the shared core.
    let _unbound = Shard::claim(&p, 2).unwrap(); // claims prefer unbound cores: core 1
    let mut s = Shard::claim(&p, 2).unwrap();
    assert_eq!(s.index(), 0);
    let c = s.join(t);
    assert_eq!(c.hold.core(), SHARED);
    drop((b, c));
    assert_eq!(sum(&p.hot, 5), 0);
    assert_eq!(p.hot.live(), 0, "the memory can be freed");
    stop_tx.send(()).unwrap();
    worker.join().unwrap();
}
