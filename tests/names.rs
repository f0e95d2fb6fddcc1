//! Nothing silent: a stale handle, a name over [`MAX_NAME_LEN`] bytes and a full topic table,
//! through every API that joins or takes a name. The `try_` forms return an error; the infallible
//! forms count the outcome in `Stats` (and an over-long name or a full table in the overflow
//! topic). The cluster-side boundary (a 255-byte name is named on peers) is in `cluster.rs`.

use std::time::Duration;

use headcount::{Engine, Error, MAX_NAME_LEN, OVERFLOW_NAME, Shard, Topic};

/// Ticks only on `sync()`; retires at once (so a test can make a stale handle).
fn engine(max_topics: usize) -> Engine {
    Engine::builder()
        .shards(1)
        .tick(Duration::from_secs(3600))
        .retire_after(Duration::ZERO)
        .max_topics(max_topics)
        .start()
        .unwrap()
}

fn step(engine: &Engine, shard: &mut Shard, keepalive: Topic) {
    drop(shard.join(keepalive));
    engine.sync();
}

#[test]
fn the_limit_is_the_wire_limit() {
    assert_eq!(MAX_NAME_LEN, headcount::cluster::wire::MAX_WIRE_NAME);
    assert_eq!(MAX_NAME_LEN, 255);
}

#[test]
fn a_stale_handle_is_an_error_from_engine_try_join_and_counted_by_engine_join() {
    let engine = engine(64);
    // The test holds the only shard: the engine's joins go through the shared core (a thread
    // shard bound to this thread and left idle would hold up retirement).
    let mut shard = engine.shard().unwrap();
    let keepalive = engine.topic("keepalive");
    let _hold = shard.join(keepalive);
    let old = engine.topic("room");
    drop(engine.join(old));
    for _ in 0..4 {
        step(&engine, &mut shard, keepalive);
    }
    assert!(engine.lookup("room").is_none(), "room was retired");
    assert_eq!(engine.stats().stale_joins, 0);

    match engine.try_join(old) {
        Err(e @ Error::StaleTopic { .. }) => {
            assert!(e.to_string().contains("stale"), "{e}");
        }
        other => panic!("expected StaleTopic, got {other:?}"),
    }
    assert_eq!(engine.stats().stale_joins, 0, "an Err is not also counted");

    let inert = engine.join(old);
    assert!(!inert.is_counted());
    assert_eq!(engine.stats().stale_joins, 1);

    // By name, the topic is looked up again: a live handle, counted.
    let p = engine.try_join_by_name("room").unwrap();
    let q = shard.try_join_by_name("room").unwrap();
    assert!(p.is_counted() && q.is_counted());
    engine.sync();
    assert_eq!(engine.count_by_name("room"), 2);
    assert_eq!(engine.stats().stale_joins, 1);
}

#[test]
fn a_name_over_the_limit_through_every_api() {
    let engine = engine(64);
    let mut shard = engine.shard().unwrap();
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let edge = "y".repeat(MAX_NAME_LEN);
    let want = |r: Result<headcount::Presence, Error>| match r {
        Err(e @ Error::NameTooLong { len, max }) => {
            assert_eq!((len, max), (MAX_NAME_LEN + 1, MAX_NAME_LEN));
            assert!(e.to_string().contains("256 bytes"), "{e}");
        }
        other => panic!("expected NameTooLong, got {other:?}"),
    };
    // The try_ forms: an error, nothing interned, nothing counted.
    match engine.try_topic(&long) {
        Err(Error::NameTooLong { len: 256, max: 255 }) => {}
        other => panic!("expected NameTooLong, got {other:?}"),
    }
    want(engine.try_join_by_name(&long));
    want(shard.try_join_by_name(&long));
    assert_eq!(engine.stats().long_names, 0);

    // The infallible forms: the overflow topic, one count in `long_names` per call.
    assert_eq!(engine.topic(&long), Topic::OVERFLOW);
    let held = [
        engine.join_by_name(&long),
        shard.join_by_name(&long),
        shard.join(engine.topic(&long)),
    ];
    assert!(
        held.iter()
            .all(|p| p.is_counted() && p.topic() == Topic::OVERFLOW)
    );
    assert_eq!(engine.stats().long_names, 4);
    assert_eq!(engine.stats().full_table, 0);

    // Reads by name find nothing: the name was never interned.
    assert!(engine.lookup(&long).is_none());
    engine.sync();
    assert_eq!(engine.count_by_name(&long), 0);
    assert_eq!(engine.count(Topic::OVERFLOW), 3);
    assert_eq!(engine.top(10), vec![(OVERFLOW_NAME.to_string(), 3)]);

    // The boundary: 255 bytes is an ordinary name everywhere.
    let t = engine.try_topic(&edge).unwrap();
    assert_ne!(t, Topic::OVERFLOW);
    let edge_held = [
        engine.try_join_by_name(&edge).unwrap(),
        shard.try_join_by_name(&edge).unwrap(),
        engine.join_by_name(&edge),
        shard.join_by_name(&edge),
    ];
    engine.sync();
    assert_eq!(engine.count_by_name(&edge), 4);
    assert_eq!(engine.lookup(&edge), Some(t));
    assert_eq!(engine.stats().long_names, 4);
    drop((held, edge_held));
}

#[test]
fn a_full_table_is_an_error_from_the_try_forms_and_counted_by_the_others() {
    // Capacity 3: the overflow topic and two names.
    let engine = engine(3);
    let mut shard = engine.shard().unwrap();
    let a = shard.try_join_by_name("a").unwrap();
    let b = engine.try_join_by_name("b").unwrap();
    let full = |r: Result<headcount::Presence, Error>| match r {
        Err(Error::TopicsFull { capacity: 3 }) => {}
        other => panic!("expected TopicsFull, got {other:?}"),
    };
    full(engine.try_join_by_name("c"));
    full(shard.try_join_by_name("c"));
    assert_eq!(engine.stats().full_table, 0);

    let c1 = engine.join_by_name("c");
    let c2 = shard.join_by_name("c");
    assert_eq!(engine.topic("c"), Topic::OVERFLOW);
    assert_eq!(c1.topic(), Topic::OVERFLOW);
    assert_eq!(c2.topic(), Topic::OVERFLOW);
    let s = engine.stats();
    assert_eq!((s.full_table, s.long_names), (3, 0));
    engine.sync();
    assert_eq!(engine.count(Topic::OVERFLOW), 2);
    assert_eq!(engine.total(), 4);
    drop((a, b, c1, c2));
}
