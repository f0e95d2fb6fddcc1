//! The async change feed (feature `tokio`): async readers on both runtime flavours see exactly
//! what a blocking reader sees, a lagging one is told how much it lost, and stopping the engine
//! ends every reader. Run with `cargo test -p headcount --features tokio` (CI does).
#![cfg(feature = "tokio")]

use std::thread;
use std::time::Duration;

use headcount::{AsyncChangeFeed, Engine, FeedEvent};
use tokio::time::timeout;

/// Bound on any one wait in these tests.
const LIMIT: Duration = Duration::from_secs(20);

/// An event as comparable data: `Some((tick, sorted changes))`, or `None` for a lag.
type Seen = Vec<Option<(u64, Vec<(String, u64)>)>>;

fn record(ev: FeedEvent, out: &mut Seen) {
    match ev {
        FeedEvent::Changes(b) => {
            let mut c: Vec<(String, u64)> =
                b.changes.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            c.sort();
            out.push(Some((b.tick, c)));
        }
        FeedEvent::Lagged { .. } => out.push(None),
    }
}

async fn drain(mut feed: AsyncChangeFeed) -> Seen {
    let mut out = Seen::new();
    loop {
        match timeout(LIMIT, feed.recv()).await {
            Ok(Some(ev)) => record(ev, &mut out),
            Ok(None) => return out,
            Err(_) => panic!("async reader: no event and no end within {LIMIT:?}"),
        }
    }
}

fn engine(feed_capacity: usize) -> Engine {
    Engine::builder()
        .shards(2)
        // Long: every change below is published by an explicit `sync` (no timer tick splits a
        // step's changes over two ticks).
        .tick(Duration::from_secs(60))
        .feed_capacity(feed_capacity)
        .start()
        .expect("engine")
}

/// Joins and leaves in two rooms, a `sync` after each step, then stops the engine.
fn script(engine: Engine) {
    let a = engine.topic("room:a");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(engine.join(a));
        engine.sync();
    }
    let b1 = engine.join_by_name("room:b");
    let b2 = engine.join_by_name("room:b");
    engine.sync();
    held.truncate(1);
    engine.sync();
    drop(b1);
    engine.sync();
    drop(held);
    drop(b2);
    engine.sync();
    drop(engine);
}

#[test]
fn async_readers_see_what_a_blocking_reader_sees() {
    let engine = engine(1024);
    let blocking = engine.changes();
    let on_current = engine.changes().into_async();
    let on_multi = engine.changes().into_async();

    // Both async readers wait in `recv` while the script runs (woken by the engine thread).
    let current = thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(drain(on_current))
    });
    let multi = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { tokio::spawn(drain(on_multi)).await.unwrap() })
    });
    let reader = thread::spawn(move || {
        let mut out = Seen::new();
        for ev in blocking {
            record(ev, &mut out);
        }
        out
    });

    script(engine);

    let want = reader.join().unwrap();
    // What the script did, tick by tick (no lag: the capacity holds it all).
    let counts: Vec<Vec<(String, u64)>> = want.iter().map(|e| e.clone().unwrap().1).collect();
    let a = |n| ("room:a".to_string(), n);
    let b = |n| ("room:b".to_string(), n);
    assert_eq!(
        counts,
        vec![
            vec![a(1)],
            vec![a(2)],
            vec![a(3)],
            vec![b(2)],
            vec![a(1)],
            vec![b(1)],
            vec![a(0), b(0)],
        ]
    );
    assert_eq!(current.join().unwrap(), want, "current_thread reader");
    assert_eq!(multi.join().unwrap(), want, "multi-thread reader");
}

#[tokio::test(flavor = "current_thread")]
async fn a_lagging_async_reader_is_told_what_it_missed() {
    let engine = engine(2);
    let mut feed = engine.changes().into_async();
    let room = engine.topic("room");
    let mut held = Vec::new();
    // Five ticks with a change each, none read: the engine keeps the last two.
    for _ in 0..5 {
        held.push(engine.join(room));
        engine.sync();
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            timeout(LIMIT, feed.recv())
                .await
                .expect("in time")
                .expect("open"),
        );
    }
    match &seen[0] {
        FeedEvent::Lagged { missed: 3 } => {}
        other => panic!("expected a lag of 3 ticks, got {other:?}"),
    }
    for (ev, want) in seen[1..].iter().zip([4, 5]) {
        match ev {
            FeedEvent::Changes(b) => assert_eq!(b.changes, vec![("room".into(), want)]),
            other => panic!("expected the count {want}, got {other:?}"),
        }
    }
    // Caught up: nothing waiting, and a wait times out (the reader is still open).
    assert!(feed.try_recv().is_none());
    assert!(
        timeout(Duration::from_millis(50), feed.recv())
            .await
            .is_err()
    );
    // The same position for the blocking reader after a round trip.
    let mut back = feed.into_blocking();
    assert!(back.try_recv().is_none());
    drop(held);
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_engine_ends_the_stream() {
    let engine = engine(64);
    let mut feed = engine.changes().into_async();
    let room = engine.topic("room");
    let p = engine.join(room);
    engine.sync();
    // A reader already waiting when the engine stops.
    let waiter = tokio::spawn(async move {
        let mut n = 0;
        while let Some(ev) = feed.recv().await {
            assert!(matches!(ev, FeedEvent::Changes(_)), "{ev:?}");
            n += 1;
        }
        // Ended for good.
        assert!(feed.recv().await.is_none());
        n
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(p);
    // Dropping (stopping) blocks until the engine thread joined: off the runtime's threads.
    tokio::task::spawn_blocking(move || drop(engine))
        .await
        .unwrap();
    let n = timeout(LIMIT, waiter)
        .await
        .expect("ended in time")
        .unwrap();
    assert!(n >= 1, "saw {n} events");
}
