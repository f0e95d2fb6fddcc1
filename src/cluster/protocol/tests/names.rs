//! Names: kept through count changes, asked for by topic, announced once.

use super::*;
use crate::cluster::protocol::events::KEEP_QUEUE;

/// A peer's count that changes without reaching zero keeps the topic's name here. (The sum
/// once went through zero on the way: a topic only that peer counted lost its name, and every
/// such change had every peer asked for all its names.)
#[test]
fn a_count_that_changes_keeps_its_name() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    let name: Arc<str> = "room:1".into();
    a.set_local(7, 1, Some(&name));
    let mut t = now;
    for _ in 0..2 {
        a.handle_tick(t);
        deliver(&mut a, addr(1), &mut b, addr(2), t);
        t += Duration::from_millis(100);
    }
    assert_eq!(b.name(7), Some("room:1"));
    while b.poll_event().is_some() {}
    for c in [2, 5, 1] {
        a.set_local(7, c, Some(&name));
        a.handle_tick(t);
        deliver(&mut a, addr(1), &mut b, addr(2), t);
        t += Duration::from_millis(100);
        assert_eq!(b.remote(7), u64::from(c));
        assert_eq!(b.remote_total(), u64::from(c));
        assert_eq!(b.name(7), Some("room:1"));
        assert!(b.unnamed.is_empty(), "the name was lost at {c}");
        let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
        assert_eq!(
            events,
            vec![Event::RemoteChanged {
                hash: 7,
                sum: u64::from(c)
            }]
        );
    }
}

/// A node missing a few names asks the peers that count those topics for those names only,
/// and gets those names back, not every name the peers know.
#[test]
fn missing_names_are_asked_for_by_topic() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for h in 0..500u64 {
        a.set_local(h, 1, Some(&Arc::from(format!("room:{h}"))));
    }
    let mut t = now;
    for _ in 0..4 {
        a.handle_tick(t);
        b.handle_tick(t);
        deliver(&mut a, addr(1), &mut b, addr(2), t);
        deliver(&mut b, addr(2), &mut a, addr(1), t);
        t += Duration::from_millis(100);
    }
    assert_eq!(b.name(7), Some("room:7"));
    // b loses two names (as if their datagram never came and no repair brought them).
    for h in [7u64, 300] {
        b.names.remove(h);
        b.unnamed.insert(h);
    }
    b.newly_unnamed = 2;
    b.names_asked = None;
    b.request_where_needed(t);
    let asks = drain(&mut b);
    assert_eq!(
        asks.len(),
        1,
        "one request, to the one peer that counts them"
    );
    let d = b.seal.open(&asks[0].bytes).unwrap();
    let Body::Target { names, .. } = d.body else {
        panic!("not a request: {:?}", d.kind)
    };
    let asked: Vec<u64> = names.iter().map(|h| h.get()).collect();
    assert_eq!(asked, vec![7, 300]);
    assert_eq!(
        a.handle_datagram(t, addr(2), &asks[0].bytes),
        Outcome::Applied
    );
    let reply = drain(&mut a);
    let bytes: usize = reply.iter().map(|r| r.bytes.len()).sum();
    assert!(bytes < 200, "{bytes} B of names for two topics");
    for r in &reply {
        assert_eq!(r.dest, Dest::To(addr(2)));
        b.handle_datagram(t, addr(1), &r.bytes);
    }
    assert_eq!(b.name(7), Some("room:7"));
    assert_eq!(b.name(300), Some("room:300"));
    assert!(b.unnamed.is_empty());
}

/// A node that starts counting a topic a peer already counts does not announce its name again
/// (with hot topics every node once announced every name: N − 1 copies to every receiver); a
/// node that missed the first announcement still learns it, from whichever node counts it.
#[test]
fn a_topic_a_peer_counts_is_not_announced_again() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    let mut c = proto(3, 1400);
    let name: Arc<str> = "room:lobby".into();
    a.set_local(9, 1, Some(&name));
    let mut t = now;
    for _ in 0..3 {
        for p in [&mut a, &mut b, &mut c] {
            p.handle_tick(t);
        }
        // a's datagrams reach b only; b and c hear each other.
        let from_a = drain(&mut a);
        for d in &from_a {
            b.handle_datagram(t, addr(1), &d.bytes);
        }
        deliver(&mut b, addr(2), &mut c, addr(3), t);
        deliver(&mut c, addr(3), &mut b, addr(2), t);
        t += Duration::from_millis(100);
    }
    assert_eq!(b.remote(9), 1);
    b.set_local(9, 1, Some(&name));
    b.handle_tick(t);
    let sent = drain(&mut b);
    let kinds: Vec<Kind> = sent
        .iter()
        .map(|d| b.seal.open(&d.bytes).unwrap().kind)
        .collect();
    assert!(kinds.contains(&Kind::Delta), "{kinds:?}");
    assert!(!kinds.contains(&Kind::Names), "announced again: {kinds:?}");
    // c counts b's topic without its name, and asks b for it.
    for d in &sent {
        c.handle_datagram(t, addr(2), &d.bytes);
    }
    assert_eq!(c.remote(9), 1);
    assert_eq!(c.name(9), None);
    let mut named = false;
    for _ in 0..100 {
        t += Duration::from_millis(100);
        for p in [&mut b, &mut c] {
            p.handle_tick(t);
            while p.poll_timeout().is_some_and(|w| w <= t) {
                p.handle_timeout(t);
            }
        }
        deliver(&mut b, addr(2), &mut c, addr(3), t);
        deliver(&mut c, addr(3), &mut b, addr(2), t);
        if c.name(9).is_some() {
            named = true;
            break;
        }
    }
    assert!(named, "c never learned the name");
    assert_eq!(c.name(9), Some("room:lobby"));
}

/// Names heard before any count of their topics wait for the counts and name the topics when
/// they come, without a request; a name heard again meanwhile is kept once; the wait is
/// bounded (past [`apply::PENDING_NAMES`] the waiting names are dropped).
#[test]
fn names_heard_before_their_counts_wait_for_them() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for _ in 0..2 {
        for h in 0..100u64 {
            b.learn_name(h, &format!("room:{h}"));
        }
    }
    assert_eq!(b.pending_names.len(), 100);
    assert_eq!(b.name(5), None, "named before anyone counts it");
    // a counts them without knowing their names: the names can only come from b's wait.
    count_unnamed(&mut a, &mut b, now, 2);
    for h in 0..100u64 {
        assert_eq!(b.name(h), Some(format!("room:{h}").as_str()));
    }
    assert!(b.unnamed.is_empty());
    assert_eq!(b.pending_names.len(), 0);
    assert_eq!(b.stats().resync_requests, 0, "asked for names it had");
    // The bound.
    let over = apply::PENDING_NAMES as u64 + 1;
    for h in 1_000..1_000 + over {
        b.learn_name(h, "x");
    }
    assert_eq!(b.pending_names.len(), 1);
}

/// The queue of names learned gives its memory back once polled empty (a burst of 20k new
/// names left it sized for all of them for as long as the node ran), and so does dropping the
/// names unpolled (`skip_learned`, the simulator's); names learned later are still reported.
#[test]
fn a_drained_queue_of_names_learned_gives_its_memory_back() {
    let mut now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    let mut c = proto(3, 1400);
    for h in 1..=20_000u64 {
        a.set_local(h, 1, Some(&Arc::from(format!("t{h}"))));
    }
    for _ in 0..100 {
        a.handle_tick(now);
        for t in drain_paced(&mut a, now, now + Duration::from_millis(100)) {
            b.handle_datagram(now, addr(1), &t.bytes);
            c.handle_datagram(now, addr(1), &t.bytes);
        }
        now += Duration::from_millis(100);
        if a.stats().backlog == 0 && b.learned.len() == 20_000 {
            break;
        }
    }
    assert_eq!((b.learned.len(), c.learned.len()), (20_000, 20_000));
    let names = std::iter::from_fn(|| b.poll_event())
        .filter(|e| matches!(e, Event::NameLearned { .. }))
        .count();
    assert_eq!(names, 20_000);
    assert!(
        b.learned.capacity() <= KEEP_QUEUE,
        "{}",
        b.learned.capacity()
    );
    c.skip_learned();
    assert!(
        c.learned.capacity() <= KEEP_QUEUE,
        "{}",
        c.learned.capacity()
    );
    // A name learned afterwards is reported as before.
    a.set_local(20_001, 1, Some(&Arc::from("late")));
    a.handle_tick(now);
    for t in drain(&mut a) {
        c.handle_datagram(now, addr(1), &t.bytes);
    }
    let late: Vec<Event> = std::iter::from_fn(|| c.poll_event())
        .filter(|e| matches!(e, Event::NameLearned { .. }))
        .collect();
    assert_eq!(
        late,
        vec![Event::NameLearned {
            hash: 20_001,
            name: "late".into()
        }]
    );
}

/// Names that come several times in one datagram, some known here already, some of topics no
/// peer counts yet, across more than a chunk of lookups: each counted topic is named once, and
/// reported once; the others wait for their counts.
#[test]
fn names_are_learned_once_however_they_repeat_in_a_datagram() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    // `a` counts topics 0..100, unnamed: `b` learns the counts, not the names.
    count_unnamed(&mut a, &mut b, now, 3);
    b.learn_name(5, "room:5");
    while b.poll_event().is_some() {}
    // 0..100 each twice (the second copy 17 entries later: past the lookahead) and 100..140
    // (no count here) once, interleaved: 240 entries, over three chunks.
    let mut order: Vec<u64> = Vec::new();
    for h in 0..100u64 {
        order.push(h);
        if h >= 17 {
            order.push(h - 17);
        }
        if h < 40 {
            order.push(100 + h);
        }
    }
    order.extend(83..100);
    let mut body = Vec::new();
    for &h in &order {
        let name = format!("room:{h}");
        body.extend_from_slice(&h.to_be_bytes());
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
    }
    let names = crate::cluster::wire::names_body(&body, order.len()).expect("well formed");
    b.learn_names(names);
    for h in 0..100u64 {
        assert_eq!(b.name(h), Some(format!("room:{h}").as_str()));
    }
    assert!(b.unnamed.is_empty());
    for h in 100..140u64 {
        assert_eq!(b.name(h), None, "{h} is counted by no peer");
    }
    let learned: Vec<u64> = std::iter::from_fn(|| b.poll_event())
        .map(|e| match e {
            Event::NameLearned { hash, name } => {
                assert_eq!(&*name, format!("room:{hash}"));
                hash
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: Vec<u64> = (0..100).filter(|&h| h != 5).collect();
    let mut got = learned.clone();
    got.sort_unstable();
    assert_eq!(got, want, "each counted topic reported once: {learned:?}");
}

/// `a` counts topics 0..100 without their names, and `b` hears its next `ticks` ticks from
/// `now`: `b` then holds the counts.
fn count_unnamed(a: &mut Protocol, b: &mut Protocol, now: Instant, ticks: u32) {
    for h in 0..100u64 {
        a.set_local(h, 1, None);
    }
    let mut t = now;
    for _ in 0..ticks {
        a.handle_tick(t);
        deliver(a, addr(1), b, addr(2), t);
        t += Duration::from_millis(100);
    }
    assert_eq!(b.remote_total(), 100);
}
