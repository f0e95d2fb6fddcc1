//! Bounded memory under topic churn, and the safety of stale handles to retired topics.
//!
//! Retirement needs two ticks after a topic's count reaches zero: phase one (the tick that sees the
//! zero, with `retire_after` 0) and phase two once every bound shard has published an epoch after
//! phase one. A claimed shard publishes an epoch when it joins or leaves after a tick, so the
//! tests keep using theirs between syncs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use headcount::{Engine, Error, Presence, Shard, Topic};

const LIVE: usize = 1000;

/// Retire at once; ticks only on `sync()`. With one shard, which the tests claim, the engine's
/// convenience join goes through the shared core (a thread shard it claimed would be bound to
/// the test thread and, idle, hold up phase two).
fn churn_engine(max_topics: usize) -> Engine {
    Engine::builder()
        .shards(1)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::ZERO)
        .max_topics(max_topics)
        .start()
        .unwrap()
}

#[test]
fn bounded_memory_under_topic_churn() {
    const NAMES: usize = 1_000_000;
    const SYNC_EVERY: usize = 500;
    const BOUND: u32 = 4096;

    let started = Instant::now();
    let engine = churn_engine(8192);
    let mut shard = engine.shard().unwrap();
    let mut fifo: VecDeque<(Topic, Presence)> = VecDeque::with_capacity(LIVE + 1);
    let mut name = String::new();
    let mut high_water = 0;
    for i in 0..NAMES {
        name.clear();
        use std::fmt::Write;
        write!(name, "t{i}").unwrap();
        let t = match engine.try_topic(&name) {
            Ok(t) => t,
            Err(e) => panic!("name #{i}: {e} (stats: {:?})", engine.stats()),
        };
        assert_ne!(t, Topic::OVERFLOW);
        let p = shard
            .try_join(t)
            .unwrap_or_else(|e| panic!("fresh handle for {name}: {e}"));
        fifo.push_back((t, p));
        if fifo.len() > LIVE {
            fifo.pop_front();
        }
        if i % SYNC_EVERY == SYNC_EVERY - 1 {
            engine.sync();
            let s = engine.stats();
            high_water = high_water.max(s.topic_high_water);
            assert!(s.topic_high_water <= BOUND, "after {} names: {s:?}", i + 1);
            assert_eq!(engine.total(), fifo.len() as u64, "after {} names", i + 1);
        }
    }
    let churned = started.elapsed();

    // Spot-check the live topics' counts, then drop everything.
    engine.sync();
    for (t, _) in fifo.iter().step_by(97) {
        assert_eq!(engine.count(*t), 1);
        assert_eq!(engine.local_count(*t), 1);
    }
    let live: Vec<Topic> = fifo.iter().map(|(t, _)| *t).collect();
    drop(fifo);
    for _ in 0..4 {
        // Keep the shard moving through epochs so that phase two can run.
        drop(shard.join(Topic::OVERFLOW));
        engine.sync();
    }
    let s = engine.stats();
    eprintln!("churned {NAMES} names in {churned:?}, high water {high_water}, end stats {s:?}");
    assert_eq!(engine.total(), 0);
    assert_eq!(engine.local_total(), 0);
    assert!(live.iter().all(|&t| engine.count(t) == 0));
    assert!(s.retired >= (NAMES - 2 * LIVE) as u64, "{s:?}");
    assert!(s.topic_high_water <= BOUND, "{s:?}");
    assert!(
        s.topics <= 2 * LIVE,
        "only a few topics stay interned: {s:?}"
    );
    assert_eq!(s.stale_joins, 0);
}

/// Joins and leaves `keepalive` (a topic with a count of its own, so it never retires) through
/// `shard`, then syncs: each call moves the shard past one more epoch.
fn step(engine: &Engine, shard: &mut Shard, keepalive: Topic) {
    drop(shard.join(keepalive));
    engine.sync();
}

#[test]
fn stale_handle_never_counts_into_the_topic_that_reuses_its_id() {
    let engine = churn_engine(64);
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);

    let old_a = engine.topic("a");
    drop(shard.join(old_a));
    let retired_before = engine.stats().retired;
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    assert!(
        engine.stats().retired > retired_before,
        "a stayed at zero: retired ({:?})",
        engine.stats()
    );
    assert!(engine.lookup("a").is_none());
    assert!(engine.describe(old_a).is_none());

    // Intern new names until one reuses a's id.
    let mut b = None;
    for i in 0..64 {
        let t = engine.try_topic(&format!("b{i}")).unwrap();
        if t.id() == old_a.id() {
            b = Some(t);
            break;
        }
    }
    let b = b.expect("a's id was reused");
    assert_ne!(b.generation(), old_a.generation());
    let name_b = engine.describe(b).unwrap().0;

    let b1 = shard.join(b);
    let b2 = engine.join(b);
    assert!(b1.is_counted() && b2.is_counted());
    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count(b), 2);

    let stale_before = engine.stats().stale_joins;
    match shard.try_join(old_a) {
        Err(Error::StaleTopic { id }) => assert_eq!(id, old_a.id()),
        other => panic!("expected StaleTopic, got {other:?}"),
    }
    let inert = shard.join(old_a);
    assert!(!inert.is_counted());
    assert_eq!(inert.topic(), old_a);
    let inert2 = engine.join(old_a); // the engine's convenience join too
    assert!(!inert2.is_counted());
    // And from a thread without a shard of its own (the shared core).
    let e = engine.clone();
    let inert3 = std::thread::spawn(move || e.join(old_a)).join().unwrap();
    assert!(!inert3.is_counted());
    assert_eq!(engine.stats().stale_joins, stale_before + 3);

    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count(b), 2, "stale joins must not count into b");
    assert_eq!(engine.count_by_name(&name_b), 2);
    assert_eq!(engine.count(old_a), 0);
    assert_eq!(engine.local_count(old_a), 0);
    assert_eq!(engine.total(), 3); // b's two and the keepalive

    // Dropping the inert guards (here and elsewhere) takes nothing away from b.
    drop(inert);
    std::thread::spawn(move || drop((inert2, inert3)))
        .join()
        .unwrap();
    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count(b), 2);
    drop((b1, b2));
    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count(b), 0);
    assert_eq!(engine.total(), 1);
}

#[test]
fn looking_up_a_dying_topic_revives_it_with_the_same_id() {
    let engine = churn_engine(64);
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);

    let a = engine.topic("a");
    drop(shard.join(a));
    // One tick: a's count is zero and retire_after is 0, so phase one runs (a is dying).
    engine.sync();
    assert_eq!(engine.stats().retiring, 1, "{:?}", engine.stats());
    assert!(
        engine.lookup("a").is_none(),
        "a dying name is not handed out by lookup"
    );

    // Looking the name up again revives it: same id, and the old handle is stale.
    let revived = engine.topic("a");
    assert_eq!(revived.id(), a.id());
    assert_ne!(revived.generation(), a.generation());
    assert_eq!(engine.lookup("a"), Some(revived));
    assert_eq!(engine.try_topic("a").unwrap(), revived);
    let p1 = shard.join(revived);
    let p2 = engine.join_by_name("a");
    assert!(p1.is_counted() && p2.is_counted());
    assert_eq!(p2.topic(), revived);

    let revived_before = engine.stats().revived;
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    let s = engine.stats();
    assert!(
        s.revived > revived_before,
        "phase two called the retirement off: {s:?}"
    );
    assert_eq!(s.retiring, 0);
    assert_eq!(engine.lookup("a"), Some(revived), "still the same topic");
    assert_eq!(engine.count(revived), 2);
    assert_eq!(engine.count_by_name("a"), 2);
    assert_eq!(engine.count(a), 0, "the pre-retirement handle is stale");
    assert_eq!(engine.total(), 3);
    assert_eq!(engine.top(10)[0], ("a".to_string(), 2));

    // Once it is left for good it retires for real, and a new "a" may get any id.
    drop((p1, p2));
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    assert!(engine.lookup("a").is_none());
    assert_eq!(engine.count(revived), 0);
    let again = engine.topic("a");
    assert_ne!(again, revived);
    let p = shard.join(again);
    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count(again), 1);
    assert_eq!(engine.count_by_name("a"), 1);
    drop(p);
}

/// A revived topic is one topic on one id: joins through the revived handle count under the name,
/// and leaves dropped on another thread (the shared core) bring the same count back down.
#[test]
fn revived_topic_counts_on_one_id_wherever_presences_drop() {
    let engine = churn_engine(64);
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);

    let a = engine.topic("a");
    drop(shard.join(a));
    engine.sync(); // a is dying
    assert_eq!(engine.stats().retiring, 1);
    let revived = engine.topic("a");
    let p = shard.join(revived);
    engine.sync();
    assert_eq!(engine.count(revived), 1);
    assert_eq!(engine.count_by_name("a"), 1);
    // The presence can be dropped on another thread; still one id, back to zero.
    std::thread::spawn(move || drop(p)).join().unwrap();
    step(&engine, &mut shard, keepalive);
    assert_eq!(engine.count_by_name("a"), 0);
    assert_eq!(engine.total(), 1);
}

/// The reducer docs: an idle claimed shard holds up phase two until it "joins or leaves again, or
/// is dropped". Here the shard *is* dropped — on another thread than the one it is bound to (a
/// `Shard` is `Send`: handing it back from elsewhere is allowed). Retirement must go on.
#[test]
fn shard_dropped_on_another_thread_does_not_hold_up_retirement() {
    let engine = Engine::builder()
        .shards(2)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::ZERO)
        .max_topics(64)
        .start()
        .unwrap();
    let (shard_tx, shard_rx) = std::sync::mpsc::channel::<Shard>();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let e = engine.clone();
    // A worker uses a shard (binding it to its thread), hands it back, and lives on.
    let worker = std::thread::spawn(move || {
        let mut s = e.shard().unwrap();
        drop(s.join_by_name("w"));
        shard_tx.send(s).unwrap();
        let _ = exit_rx.recv();
    });
    let returned = shard_rx.recv().unwrap();
    drop(returned); // dropped here, not on the worker's thread
    assert_eq!(engine.stats().free_shards, 2);

    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);
    let a = engine.topic("a");
    drop(shard.join(a));
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    let stuck = engine.stats();

    // Diagnosis: once the worker thread exits (unbinding the core) retirement goes on.
    exit_tx.send(()).unwrap();
    worker.join().unwrap();
    for _ in 0..3 {
        step(&engine, &mut shard, keepalive);
    }
    let after_exit = engine.stats();
    assert_eq!(after_exit.retiring, 0, "{after_exit:?}");
    assert!(engine.lookup("a").is_none());

    assert_eq!(
        stuck.retiring, 0,
        "a and w should have been retired while the worker was alive; its returned shard's core \
         is still bound to it and holds up phase two: {stuck:?}"
    );
}

/// `Engine::join` claims a shard for the calling thread and keeps it until the thread exits. If
/// that thread then stays idle (say, a control thread that joined once), its core never publishes
/// a newer epoch and no topic can finish retiring: ids are never reused and the table fills up.
/// The remedy is `Engine::release_thread`, which such a thread calls before it goes idle.
#[test]
fn idle_thread_that_used_engine_join_does_not_hold_up_retirement() {
    let engine = Engine::builder()
        .shards(2)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::ZERO)
        .max_topics(64)
        .start()
        .unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let e = engine.clone();
    let idle = std::thread::spawn(move || {
        drop(e.join_by_name("once"));
        // Going idle: give the implicit shard back (documented on `Engine::release_thread`).
        e.release_thread();
        ready_tx.send(()).unwrap();
        let _ = exit_rx.recv();
    });
    ready_rx.recv().unwrap();
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);
    drop(shard.join_by_name("a"));
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    let s = engine.stats();
    exit_tx.send(()).unwrap();
    idle.join().unwrap();
    assert_eq!(s.retiring, 0, "{s:?}");
    assert!(s.retired >= 2, "{s:?}");
}

/// A worker thread with its own shard that joins and leaves `keepalive` only when told to, so the
/// test decides which epochs its core has seen.
struct Stepper {
    tx: std::sync::mpsc::Sender<()>,
    ack: std::sync::mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stepper {
    fn spawn(engine: &Engine, keepalive: Topic) -> Stepper {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ack_tx, ack) = std::sync::mpsc::channel::<()>();
        let e = engine.clone();
        let thread = std::thread::spawn(move || {
            let mut s = e.shard().unwrap();
            for () in rx {
                drop(s.join(keepalive));
                ack_tx.send(()).unwrap();
            }
        });
        let st = Stepper { tx, ack, thread };
        st.step();
        st
    }

    /// Joins and leaves once on the worker's thread: its core observes the current epoch.
    fn step(&self) {
        self.tx.send(()).unwrap();
        self.ack.recv().unwrap();
    }

    fn stop(self) {
        drop(self.tx);
        self.thread.join().unwrap();
    }
}

/// A topic is retired (phase one at tick t1), revived by a lookup, used, and left again, so phase
/// one runs a second time (tick t2 > t1) while the first phase two is still waiting for an idle
/// shard. Phase two may free the id only once every bound shard has moved past t2: before that, a
/// join through the revived handle that checked the generation just before the second bump may
/// still land, and would count into whatever topic reuses the id.
#[test]
fn second_retirement_waits_for_its_own_phase_one_to_be_passed() {
    let engine = Engine::builder()
        .shards(2)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::ZERO)
        .max_topics(64)
        .start()
        .unwrap();
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);
    let other = Stepper::spawn(&engine, keepalive); // bound; idle until stepped

    let a = engine.topic("a");
    drop(shard.join(a));
    engine.sync(); // t1: a is at zero: phase one
    assert_eq!(engine.stats().retiring, 1);
    let revived = engine.topic("a"); // revived: the first retirement is called off
    assert_eq!(revived.id(), a.id());
    let p = shard.join(revived);
    engine.sync(); // phase two of t1 waits for `other`, which has not moved past t1
    assert_eq!(engine.count(revived), 1);
    drop(p);
    engine.sync(); // t2: a is at zero again: phase one again (generation bumped again)
    assert!(engine.lookup("a").is_none(), "a is dying again");
    assert_eq!(engine.stats().retired, 0);

    // Both shards move past t2 (but not past the next tick).
    other.step();
    step(&engine, &mut shard, keepalive); // tick t2 + 1
    let s = engine.stats();
    assert_eq!(
        s.retired, 0,
        "the id was freed one tick after the second phase one, before every shard moved past it \
         (the first, called-off retirement's phase two freed it): {s:?}"
    );

    other.step();
    step(&engine, &mut shard, keepalive); // now every shard is past t2
    let s = engine.stats();
    assert_eq!(s.retired, 1, "{s:?}");
    assert_eq!(s.retiring, 0, "{s:?}");
    other.stop();
}
