//! API behaviour of [`Engine`]: builder validation, shard claims, name-based helpers, `top`, the
//! change feed, the shared-path convenience join, shutdown, and the overflow topic.

use std::sync::Arc;
use std::time::Duration;

use headcount::{Engine, Error, FeedEvent, OVERFLOW_NAME, Topic};

/// An engine whose reducer only runs when the test calls `sync()` (the tick is an hour).
fn quiet(shards: usize) -> headcount::Builder {
    Engine::builder()
        .shards(shards)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::from_secs(3600))
}

fn config_error(b: headcount::Builder) -> (String, String) {
    match b.start() {
        Err(e @ Error::Config { .. }) => {
            let Error::Config { option, .. } = &e else {
                unreachable!()
            };
            (option.to_string(), e.to_string())
        }
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(engine) => panic!("expected Error::Config, got a running engine {engine:?}"),
    }
}

#[test]
fn builder_errors_name_the_option_and_the_value() {
    let cases: Vec<(headcount::Builder, &str, &str)> = vec![
        (Engine::builder().shards(0), "shards", "0"),
        (Engine::builder().shards(5000), "shards", "5000"),
        (Engine::builder().tick(Duration::ZERO), "tick", "0ns"),
        (
            Engine::builder().tick(Duration::from_secs(7200)),
            "tick",
            "7200s",
        ),
        (Engine::builder().max_topics(1), "max_topics", "1"),
        (Engine::builder().ring_capacity(1), "ring_capacity", "1"),
        (Engine::builder().feed_capacity(0), "feed_capacity", "0"),
    ];
    for (b, option, value) in cases {
        let (got_option, text) = config_error(b);
        assert_eq!(got_option, option, "{text}");
        assert!(
            text.contains(option),
            "{text:?} should name the option {option}"
        );
        assert!(
            text.contains(value),
            "{text:?} should name the value {value}"
        );
    }
    // The limits themselves are accepted.
    let e = Engine::builder()
        .shards(1)
        .tick(Duration::from_millis(1))
        .max_topics(2)
        .start()
        .unwrap();
    assert_eq!(e.shards(), 1);
    assert_eq!(e.tick_interval(), Duration::from_millis(1));
    e.shutdown();
}

#[test]
fn no_free_shard_until_one_is_dropped() {
    let engine = quiet(2).start().unwrap();
    assert_eq!(engine.stats().free_shards, 2);
    let a = engine.shard().unwrap();
    let b = engine.shard().unwrap();
    assert_ne!(a.index(), b.index());
    assert_eq!(engine.stats().free_shards, 0);
    match engine.shard() {
        Err(e @ Error::NoFreeShard { shards: 2 }) => {
            assert!(e.to_string().contains("all 2 shards are claimed"), "{e}")
        }
        other => panic!("expected NoFreeShard, got {other:?}"),
    }
    let freed = a.index();
    drop(a);
    assert_eq!(engine.stats().free_shards, 1);
    let c = engine.shard().unwrap();
    assert_eq!(c.index(), freed);
    assert!(matches!(engine.shard(), Err(Error::NoFreeShard { .. })));
    drop((b, c));
    assert_eq!(engine.stats().free_shards, 2);
}

#[test]
fn by_name_helpers_and_top_order() {
    let engine = quiet(2).start().unwrap();
    let mut shard = engine.shard().unwrap();
    let mut keep = Vec::new();
    // b: 3, a: 2, c: 2, d: 1, e: 0 (interned, joined and left).
    for (name, n) in [("b", 3), ("c", 2), ("a", 2), ("d", 1)] {
        for _ in 0..n {
            keep.push(shard.join_by_name(name));
        }
    }
    drop(shard.join_by_name("e"));
    keep.push(engine.join_by_name("d")); // d: 2 through the engine's convenience join
    engine.sync();
    assert_eq!(engine.count_by_name("b"), 3);
    assert_eq!(engine.count_by_name("a"), 2);
    assert_eq!(engine.count_by_name("d"), 2);
    assert_eq!(engine.count_by_name("e"), 0);
    assert_eq!(engine.count_by_name("never-interned"), 0);
    assert!(
        engine.lookup("never-interned").is_none(),
        "count_by_name must not intern"
    );
    assert_eq!(engine.count(engine.lookup("c").unwrap()), 2);
    assert_eq!(engine.total(), 9);
    assert_eq!(engine.local_total(), 9);

    let s = |v: &[(&str, u64)]| {
        v.iter()
            .map(|&(n, c)| (n.to_string(), c))
            .collect::<Vec<_>>()
    };
    assert_eq!(engine.top(10), s(&[("b", 3), ("a", 2), ("c", 2), ("d", 2)]));
    assert_eq!(engine.top(4), engine.top(10));
    assert_eq!(engine.top(1), s(&[("b", 3)]));
    assert!(engine.top(0).is_empty());

    // Whichever of the tied topics a cut keeps, they come largest first, then by name.
    for k in 2..=3 {
        let top = engine.top(k);
        assert_eq!(top.len(), k);
        assert_eq!(top[0], ("b".to_string(), 3));
        assert!(top[1..].iter().all(|(_, c)| *c == 2), "{top:?}");
        assert!(
            top.windows(2)
                .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)),
            "{top:?}"
        );
    }

    drop(keep);
    engine.sync();
    assert!(engine.top(10).is_empty());
    assert_eq!(engine.total(), 0);
}

/// `top(k)` is "the k largest, ties by name": the first k of the full ranking, so a cut between
/// tied topics keeps the names that sort first, whatever order the topics were interned in.
#[test]
fn top_k_cut_between_ties_keeps_the_first_names() {
    // Interned in name order and in reverse, so ids sort both with and against names.
    for order in [["w", "x", "y", "z"], ["z", "y", "x", "w"]] {
        let engine = quiet(1).start().unwrap();
        let mut shard = engine.shard().unwrap();
        let mut keep = Vec::new();
        for name in order {
            keep.push(shard.join_by_name(name));
        }
        keep.push(shard.join_by_name("top"));
        keep.push(shard.join_by_name("top"));
        engine.sync();
        let full = engine.top(10);
        let s = |v: &[(&str, u64)]| {
            v.iter()
                .map(|&(n, c)| (n.to_string(), c))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            full,
            s(&[("top", 2), ("w", 1), ("x", 1), ("y", 1), ("z", 1)])
        );
        for k in 1..=full.len() {
            assert_eq!(
                engine.top(k),
                full[..k].to_vec(),
                "top({k}) should be the first {k} of the ranking (topics interned in order {order:?})"
            );
        }
        drop(keep);
    }
}

#[test]
fn describe_and_wire_hash() {
    let engine = quiet(1).hash_key(7).start().unwrap();
    let t = engine.topic("room:1");
    let (name, hash) = engine.describe(t).unwrap();
    assert_eq!(&*name, "room:1");
    assert_eq!(hash, headcount::wire_hash(7u128.to_le_bytes(), "room:1"));
    assert_eq!(engine.topic("room:1"), t, "interning is idempotent");
    assert_eq!(engine.lookup("room:1"), Some(t));
}

fn next_changes(feed: &mut headcount::ChangeFeed) -> Arc<headcount::TickChanges> {
    match feed.try_recv() {
        Some(FeedEvent::Changes(c)) => c,
        other => panic!("expected a tick's changes, got {other:?}"),
    }
}

#[test]
fn change_feed_reports_names_and_counts_after_sync() {
    let engine = quiet(1).start().unwrap();
    let mut feed = engine.changes();
    assert!(feed.try_recv().is_none());
    let mut shard = engine.shard().unwrap();
    let a1 = shard.join_by_name("a");
    let a2 = shard.join_by_name("a");
    let b = shard.join_by_name("b");
    engine.sync();
    let c = next_changes(&mut feed);
    let mut got: Vec<(String, u64)> = c.changes.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    got.sort();
    assert_eq!(got, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
    assert!(feed.try_recv().is_none(), "one batch per tick");

    drop(a1);
    engine.sync();
    let c2 = next_changes(&mut feed);
    assert!(c2.tick > c.tick);
    assert_eq!(
        c2.changes
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect::<Vec<_>>(),
        vec![("a".to_string(), 1)]
    );

    // A tick without changes publishes nothing.
    engine.sync();
    assert!(feed.try_recv().is_none());

    drop((a2, b));
    engine.sync();
    let mut got: Vec<(String, u64)> = next_changes(&mut feed)
        .changes
        .iter()
        .map(|(n, c)| (n.to_string(), *c))
        .collect();
    got.sort();
    assert_eq!(got, vec![("a".to_string(), 0), ("b".to_string(), 0)]);

    // After shutdown the feed ends once drained.
    engine.shutdown();
    assert!(feed.recv_timeout(Duration::from_secs(5)).is_none());
    assert!(feed.recv().is_none());
}

#[test]
fn slow_feed_reader_is_told_it_lagged() {
    let engine = quiet(1).feed_capacity(2).start().unwrap();
    let mut slow = engine.changes();
    let mut shard = engine.shard().unwrap();
    let t = engine.topic("t");
    let mut keep = Vec::new();
    for _ in 0..5 {
        keep.push(shard.join(t));
        engine.sync();
    }
    match slow.try_recv() {
        Some(FeedEvent::Lagged { missed: 3 }) => {}
        other => panic!("expected Lagged {{ missed: 3 }}, got {other:?}"),
    }
    // It resumes at the oldest kept tick: counts 4 and 5.
    for want in [4, 5] {
        let c = next_changes(&mut slow);
        assert_eq!(c.changes.len(), 1);
        assert_eq!((&*c.changes[0].0, c.changes[0].1), ("t", want));
    }
    assert!(slow.try_recv().is_none());
    drop(keep);
}

#[test]
fn engine_join_from_a_thread_without_a_shard() {
    let engine = quiet(2).start().unwrap();
    let t = engine.topic("room");
    let e = engine.clone();
    // The thread claims a shard for itself on its first join and gives it back when it exits.
    let (p1, p2) = std::thread::spawn(move || {
        let p1 = e.join(t);
        let p2 = e.join_by_name("room");
        assert_eq!(
            e.stats().free_shards,
            1,
            "one shard claimed for this thread"
        );
        assert!(p1.is_counted() && p2.is_counted());
        (p1, p2)
    })
    .join()
    .unwrap();
    assert_eq!(
        engine.stats().free_shards,
        2,
        "the thread's shard is returned when it exits"
    );
    engine.sync();
    assert_eq!(engine.count(t), 2);

    // With every shard claimed, joins go through the shared core and still count exactly.
    let s1 = engine.shard().unwrap();
    let s2 = engine.shard().unwrap();
    let before = engine.stats().shared_ops;
    let e = engine.clone();
    let p3 = std::thread::spawn(move || e.join(t)).join().unwrap();
    assert!(p3.is_counted());
    assert!(
        engine.stats().shared_ops > before,
        "no shard was free: the join used the shared core"
    );
    engine.sync();
    assert_eq!(engine.count(t), 3);
    // Presences dropped on yet another thread.
    std::thread::spawn(move || drop((p1, p3))).join().unwrap();
    engine.sync();
    assert_eq!(engine.count(t), 1);
    drop(p2);
    engine.sync();
    assert_eq!(engine.count(t), 0);
    assert_eq!(engine.total(), 0);
    drop((s1, s2));
}

#[test]
fn presences_outlive_shutdown_and_the_engine() {
    let engine = quiet(2).start().unwrap();
    let mut shard = engine.shard().unwrap();
    let t = engine.topic("t");
    let a = shard.join(t);
    let b = shard.join(t);
    let c = engine.join(t);
    let d = shard.join(t);
    engine.sync();
    assert_eq!(engine.count(t), 4);

    engine.shutdown();
    assert!(engine.is_stopped());
    engine.shutdown(); // idempotent
    engine.sync(); // returns at once
    drop(a); // after shutdown, on the shard's thread
    std::thread::spawn(move || drop(b)).join().unwrap(); // after shutdown, elsewhere
    assert_eq!(
        engine.count(t),
        4,
        "counts stay readable at their last values"
    );
    let e = shard.join(t); // shards stay usable
    assert!(e.is_counted());

    drop(shard);
    drop(engine); // the last handle: the hot memory must stay alive for c, d and e
    drop(c);
    std::thread::spawn(move || drop(d)).join().unwrap();
    drop(e);
}

#[test]
fn dropping_the_engine_without_shutdown_stops_it() {
    let engine = quiet(1).start().unwrap();
    let e2 = engine.clone();
    let p = engine.join_by_name("x");
    drop(engine);
    assert!(!e2.is_stopped(), "a clone keeps the engine running");
    e2.sync();
    assert_eq!(e2.count_by_name("x"), 1);
    drop(e2);
    drop(p);
}

#[test]
fn full_table_counts_into_the_overflow_topic() {
    // Capacity 3: id 0 is the overflow topic, so two real topics fit.
    let engine = quiet(1).max_topics(3).start().unwrap();
    assert_eq!(engine.stats().topic_capacity, 3);
    let a = engine.try_topic("a").unwrap();
    let b = engine.try_topic("b").unwrap();
    assert_ne!(a, Topic::OVERFLOW);
    assert_ne!(b, Topic::OVERFLOW);
    match engine.try_topic("c") {
        Err(e @ Error::TopicsFull { capacity: 3 }) => {
            assert!(e.to_string().contains("max_topics"), "{e}")
        }
        other => panic!("expected TopicsFull, got {other:?}"),
    }
    assert_eq!(
        engine.try_topic("a").unwrap(),
        a,
        "existing names still resolve"
    );
    let c = engine.topic("c");
    assert_eq!(c, Topic::OVERFLOW);
    assert_eq!(engine.topic("d"), Topic::OVERFLOW);

    let mut shard = engine.shard().unwrap();
    let keep = vec![
        shard.join(c),
        shard.join_by_name("d"),
        engine.join_by_name("e"),
        shard.join(a),
        shard.join(b),
        shard.join(b),
    ];
    assert!(keep.iter().all(|p| p.is_counted()));
    engine.sync();
    assert_eq!(engine.count(Topic::OVERFLOW), 3);
    assert_eq!(engine.count_by_name("c"), 0, "c was never interned");
    assert_eq!(engine.total(), 6);
    let want: Vec<(String, u64)> = vec![
        (OVERFLOW_NAME.to_string(), 3),
        ("b".to_string(), 2),
        ("a".to_string(), 1),
    ];
    assert_eq!(engine.top(10), want);
    let (name, _) = engine.describe(Topic::OVERFLOW).unwrap();
    assert_eq!(&*name, OVERFLOW_NAME);
    drop(keep);
    engine.sync();
    assert_eq!(engine.total(), 0);
    assert_eq!(engine.count(Topic::OVERFLOW), 0);
}

/// A shard handed back from another thread than the one it was bound to: once no presence made
/// on it is alive, whoever claims it next takes the binding over and gets the fast path.
#[test]
fn a_shard_returned_from_another_thread_binds_to_its_next_claimer() {
    let engine = quiet(1).start().unwrap();
    let e = engine.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let mut s = e.shard().unwrap();
        drop(s.join_by_name("w")); // binds the shard to this thread
        tx.send(s).unwrap(); // and hands it back, from here
        let _ = exit_rx.recv(); // the worker lives on
    });
    drop(rx.recv().unwrap()); // returned to the pool from this thread
    let mut shard = engine.shard().unwrap();
    let t = engine.topic("t");
    let before = engine.stats().shared_ops;
    let ps: Vec<_> = (0..10).map(|_| shard.join(t)).collect();
    drop(ps);
    let shared = engine.stats().shared_ops - before;
    engine.sync();
    assert_eq!(engine.count(t), 0, "still exact");
    exit_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(
        shared, 0,
        "a freshly claimed shard, used on one thread, took the shared path {shared} times"
    );
}
