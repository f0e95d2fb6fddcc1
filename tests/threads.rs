//! Which shard a join and a leave go through when threads come and go: a thread's own shard
//! (`Engine::bind_thread`, or claimed on its first join), and the leave of a presence dropped on
//! another thread, which counts on *that* thread's shard. Counts are exact whatever the path;
//! these tests check that the fast paths are the ones taken (`Stats::shared_ops` counts the
//! others).

use std::sync::mpsc;
use std::thread;

use headcount::{Engine, Error};

fn engine(shards: usize, claim_on_join: bool) -> Engine {
    Engine::builder()
        .shards(shards)
        .claim_on_join(claim_on_join)
        .max_topics(1 << 10)
        .start()
        .unwrap()
}

#[test]
fn a_presence_dropped_on_another_thread_with_a_shard_leaves_through_that_shard() {
    let engine = engine(2, true);
    let t = engine.topic("room");
    let (to_b, from_a) = mpsc::channel();
    let a = {
        let e = engine.clone();
        thread::spawn(move || {
            e.bind_thread().unwrap();
            for _ in 0..1000 {
                to_b.send(e.join(t)).unwrap();
            }
        })
    };
    let b = {
        let e = engine.clone();
        thread::spawn(move || {
            e.bind_thread().unwrap();
            // Hold them until A is done, so both cores carry counts at once.
            let held: Vec<_> = from_a.iter().collect();
            e.sync();
            assert_eq!(e.count(t), 1000);
            drop(held);
        })
    };
    a.join().unwrap();
    b.join().unwrap();
    engine.sync();
    assert_eq!(
        engine.count(t),
        0,
        "exact after 1000 joins on A and leaves on B"
    );
    assert_eq!(
        engine.stats().shared_ops,
        0,
        "every leave counted on the dropping thread's own shard"
    );
}

#[test]
fn a_thread_without_a_shard_leaves_through_the_shared_core() {
    let engine = engine(1, true);
    let t = engine.topic("room");
    let e = engine.clone();
    let ps = thread::spawn(move || (0..10).map(|_| e.join(t)).collect::<Vec<_>>())
        .join()
        .unwrap();
    assert_eq!(engine.stats().shared_ops, 0);
    // This thread never joined: it has no shard, so the leaves take the shared path.
    drop(ps);
    engine.sync();
    assert_eq!(engine.count(t), 0);
    assert_eq!(engine.stats().shared_ops, 10);
}

#[test]
fn with_claim_on_join_off_only_bound_threads_take_shards() {
    let engine = engine(1, false);
    let t = engine.topic("room");
    // The main thread of a program (a `#[tokio::main]` thread, say) joins once.
    let p = engine.join(t);
    assert!(p.is_counted());
    assert_eq!(
        engine.stats().shared_ops,
        1,
        "no shard claimed: the shared path"
    );
    assert_eq!(
        engine.stats().free_shards,
        1,
        "the shard stays free for a worker"
    );

    let e = engine.clone();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        assert_eq!(e.bind_thread().unwrap(), 0);
        assert_eq!(
            e.bind_thread().unwrap(),
            0,
            "binding twice keeps the same shard"
        );
        let before = e.stats().shared_ops;
        let ps: Vec<_> = (0..100).map(|_| e.join(t)).collect();
        drop(ps);
        ready_tx.send(e.stats().shared_ops - before).unwrap();
        let _ = stop_rx.recv();
        e.park_thread(); // about to go idle: retirement need not wait for it
    });
    assert_eq!(
        ready_rx.recv().unwrap(),
        0,
        "the bound worker took the fast path"
    );
    // Every shard is taken now.
    let e = engine.clone();
    let err = thread::spawn(move || e.bind_thread())
        .join()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::NoFreeShard { shards: 1 }), "{err}");
    stop_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(
        engine.stats().free_shards,
        1,
        "given back when the worker exits"
    );
    drop(p);
    engine.sync();
    assert_eq!(engine.count(t), 0);
}

#[test]
fn release_thread_gives_the_shard_back_and_later_leaves_stay_exact() {
    let engine = engine(1, true);
    let t = engine.topic("room");
    let ps: Vec<_> = (0..5).map(|_| engine.join(t)).collect();
    assert_eq!(engine.stats().free_shards, 0);
    engine.release_thread();
    assert_eq!(engine.stats().free_shards, 1);
    let before = engine.stats().shared_ops;
    drop(ps);
    assert_eq!(
        engine.stats().shared_ops - before,
        5,
        "no shard any more: the shared path"
    );
    // Another thread takes the shard, joins and leaves on it.
    let e = engine.clone();
    thread::spawn(move || {
        let p = e.join(t);
        drop(p);
        assert_eq!(e.stats().free_shards, 0);
    })
    .join()
    .unwrap();
    engine.sync();
    assert_eq!(engine.count(t), 0);
    assert_eq!(engine.stats().free_shards, 1);
}

#[test]
fn a_thread_in_two_engines_counts_exactly_in_both() {
    // A thread's home is in one engine at a time; the other's leaves take the shared path.
    let (x, y) = (engine(2, true), engine(2, true));
    let (tx, ty) = (x.topic("a"), y.topic("a"));
    let (sx, sy) = (x.clone(), y.clone());
    let held = thread::spawn(move || {
        let mut v = Vec::new();
        for _ in 0..50 {
            v.push(sx.join(tx));
            v.push(sy.join(ty));
        }
        v
    })
    .join()
    .unwrap();
    let (sx, sy) = (x.clone(), y.clone());
    thread::spawn(move || {
        sx.bind_thread().unwrap();
        sy.bind_thread().unwrap();
        drop(held);
    })
    .join()
    .unwrap();
    x.sync();
    y.sync();
    assert_eq!((x.count(tx), y.count(ty)), (0, 0));
}

#[test]
fn a_tokio_runtime_bound_to_the_engine_takes_no_shared_path() {
    let workers = 2;
    let engine = Engine::builder()
        .shards(workers)
        .claim_on_join(false)
        .max_topics(1 << 10)
        .start()
        .unwrap();
    let rt = engine
        .bind_runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(workers))
        .build()
        .unwrap();
    let topics: Vec<_> = (0..10)
        .map(|i| engine.topic(&format!("room:{i}")))
        .collect();
    let moved = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (e, t) = (engine.clone(), topics[i % topics.len()]);
            tasks.push(tokio::spawn(async move {
                let mut moved = 0;
                for _ in 0..50 {
                    let before = std::thread::current().id();
                    let p = e.join(t);
                    tokio::task::yield_now().await;
                    moved += usize::from(std::thread::current().id() != before);
                    drop(p);
                }
                moved
            }));
        }
        let mut moved = 0;
        for t in tasks {
            moved += t.await.unwrap();
        }
        moved
    });
    engine.sync();
    assert_eq!(engine.total(), 0);
    let st = engine.stats();
    // Exact either way; the point is the path: every join and every leave, wherever the task
    // resumed, ran on a worker that owns a shard.
    assert_eq!(
        st.shared_ops, 0,
        "{moved} of 10000 presences moved threads; shared ops: {}",
        st.shared_ops
    );
    drop(rt);
    assert_eq!(
        engine.stats().free_shards,
        workers,
        "each worker gives its shard back when it stops"
    );
}
