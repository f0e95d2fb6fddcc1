//! Admission: replays, restarts, stale and foreign datagrams, caps, rates and the repair
//! budget (the rules of the protocol's module docs), each against a defect it once had or could.

use super::*;

#[test]
fn replays_and_old_incarnations_are_rejected() {
    let now = Instant::now();
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    a.set_local(5, 3, None);
    a.handle_tick(now);
    let d = a.poll_transmit().unwrap();
    assert_eq!(b.handle_datagram(now, from, &d.bytes), Outcome::Applied);
    assert_eq!(
        b.handle_datagram(now, from, &d.bytes),
        Outcome::Rejected(Reject::Stale)
    );
    assert_eq!(b.remote(5), 3);
    // A restart: the new incarnation replaces the old state; the old one is barred.
    let mut c = Config::new(1, 2, Duration::from_millis(100));
    c.refresh_cycle = 1;
    let mut a2 = Protocol::new(c, Seal::new("p", b"k"));
    a2.set_local(6, 1, None);
    a2.handle_tick(now);
    while let Some(x) = a2.poll_transmit() {
        b.handle_datagram(now, from, &x.bytes);
    }
    assert_eq!((b.remote(5), b.remote(6)), (0, 1));
    a.set_local(5, 4, None);
    a.handle_tick(now);
    let old = a.poll_transmit().unwrap();
    assert_eq!(
        b.handle_datagram(now, from, &old.bytes),
        Outcome::Rejected(Reject::Incarnation)
    );
    assert_eq!(b.stats().rejected[Reject::Stale.index()], 1);
    assert_eq!(b.nodes(now).len(), 1);
}

#[test]
fn the_largest_sequence_number_does_not_overflow() {
    // Found by the fuzzer: a datagram with seq u64::MAX, then a resync reply with the same.
    let now = Instant::now();
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let seal = Seal::new("p", b"k");
    let enc = Encoder::new(seal.cluster(), 7, 1, 100, 1400);
    let mut b = proto(2, 1400);
    let st = Stamp {
        seq: u64::MAX,
        time: b.config().clock.unix_ms(now),
        ..Stamp::default()
    };
    let hb = enc.bare(&seal, Kind::Heartbeat, FLAG_END, &st);
    assert_eq!(b.handle_datagram(now, from, &hb), Outcome::Applied);
    let r = enc.entries(
        &seal,
        Kind::ResyncReply,
        FLAG_END,
        &st,
        Some((0, u64::MAX)),
        &[],
    );
    assert_eq!(b.handle_datagram(now, from, &r), Outcome::Applied);
    assert_eq!(
        b.handle_datagram(now, from, &hb),
        Outcome::Rejected(Reject::Stale)
    );
}

#[test]
fn caps_on_peers_and_topics_per_peer() {
    let now = Instant::now();
    let mut c = Config::new(100, 1, Duration::from_millis(100));
    c.max_peers = 2;
    c.max_topics_per_peer = 3;
    let mut b = Protocol::new(c, Seal::new("p", b"k"));
    let mut senders: Vec<Protocol> = (1..=3).map(|n| proto(n, 1400)).collect();
    for (i, a) in senders.iter_mut().enumerate() {
        for h in 0..3 {
            a.set_local(h, 1, None);
        }
        a.handle_tick(now);
        let d = a.poll_transmit().unwrap();
        let from: SocketAddr = format!("127.0.0.1:{}", i + 1).parse().unwrap();
        let want = if i < 2 {
            Outcome::Applied
        } else {
            Outcome::Rejected(Reject::TooManyPeers)
        };
        assert_eq!(b.handle_datagram(now, from, &d.bytes), want, "sender {i}");
        while a.poll_transmit().is_some() {}
    }
    assert_eq!(b.remote(0), 2);
    // Sender 0 adds a fourth topic: over its cap, so the datagram is dropped whole.
    let a = &mut senders[0];
    a.set_local(3, 1, None);
    a.set_local(0, 5, None);
    a.handle_tick(now);
    let d = a.poll_transmit().unwrap();
    let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(
        b.handle_datagram(now, from, &d.bytes),
        Outcome::Rejected(Reject::TooManyTopics)
    );
    assert_eq!((b.remote(0), b.remote(3)), (2, 0), "nothing of it applied");
}

#[test]
fn a_flood_from_one_source_is_rate_limited() {
    let now = Instant::now();
    let mut b = proto(2, 1400);
    let junk = [0u8; 100];
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut rate = 0;
    for _ in 0..50_000 {
        if b.handle_datagram(now, from, &junk) == Outcome::Rejected(Reject::Rate) {
            rate += 1;
        }
    }
    assert_eq!(rate, 50_000 - 20_000);
    assert_eq!(b.stats().rejected_total(), 50_000);
}

/// Defect: a node dropped for silence came back, counts and all, when one of its captured
/// datagrams was replayed (its tombstone barred only `incarnation - 1`, and a re-created peer
/// started at `last_seq = seq - 1`).
#[test]
fn a_dropped_node_is_never_revived_by_a_replay() {
    let t0 = Instant::now();
    let (a_addr, b_addr) = (addr(1), addr(2));
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for h in 0..500u64 {
        a.set_local(h, 1, None);
    }
    // Two seconds of normal traffic; every datagram a sends is captured.
    let mut captured = Vec::new();
    let mut now = t0;
    for _ in 0..20 {
        a.handle_tick(now);
        b.handle_tick(now);
        for t in drain(&mut a) {
            captured.push(t.bytes.clone());
            if t.dest == Dest::Group || t.dest == Dest::To(b_addr) {
                b.handle_datagram(now, a_addr, &t.bytes);
            }
        }
        deliver(&mut b, b_addr, &mut a, a_addr, now);
        now += Duration::from_millis(100);
    }
    assert_eq!(b.remote_total(), 500);
    // `a` dies (no goodbye). Some of its last datagrams never reached `b`: those are the
    // dangerous ones (their sequence numbers are new to `b`).
    for _ in 0..3 {
        a.handle_tick(now);
        captured.extend(drain(&mut a).into_iter().map(|t| t.bytes));
        now += Duration::from_millis(100);
    }
    let dead_after = b.config().dead_after;
    now += dead_after;
    b.handle_tick(now);
    assert_eq!(b.remote_total(), 0, "dropped after dead_after");
    // Replays, one every 100 ms for 60 s: while the tombstone is kept, and after.
    let ttl = b.config().tomb_ttl();
    let mut applied = 0;
    let mut i = 0;
    while now < t0 + ttl + Duration::from_secs(60) {
        now += Duration::from_millis(100);
        b.handle_tick(now);
        let d = &captured[i % captured.len()];
        i += 1;
        if b.handle_datagram(now, a_addr, d) == Outcome::Applied {
            applied += 1;
        }
        assert_eq!(b.remote_total(), 0, "replay {i} brought counts back");
    }
    assert_eq!(applied, 0);
    let s = b.stats();
    assert!(
        s.rejected(Reject::Stale) > 0 && s.rejected(Reject::Clock) > 0,
        "{s:?}"
    );
    assert!(b.nodes(now).iter().all(|n| !n.alive));
}

/// A node dropped for silence that really is alive (a healed partition) comes back: its
/// clock moved on as much as ours.
#[test]
fn a_healed_partition_comes_back() {
    let t0 = Instant::now();
    let (a_addr, b_addr) = (addr(1), addr(2));
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    a.set_local(7, 3, None);
    let mut now = t0;
    for round in 0..80 {
        a.handle_tick(now);
        b.handle_tick(now);
        let cut = (10..50).contains(&round);
        if cut {
            drain(&mut a);
            drain(&mut b);
        } else {
            deliver(&mut a, a_addr, &mut b, b_addr, now);
            deliver(&mut b, b_addr, &mut a, a_addr, now);
        }
        if round == 45 {
            assert_eq!(b.remote(7), 0, "dropped during the partition");
        }
        now += Duration::from_millis(100);
    }
    assert_eq!(b.remote(7), 3, "back after the partition healed");
    assert!(b.converged());
}

/// Defect: one captured 88-byte resync request, re-sent from foreign addresses, brought back
/// the whole table to each (and all the names, multicast). Requests are answered only for a
/// live peer, at its own address, once per request number.
#[test]
fn resync_requests_are_answered_only_for_live_peers_at_their_address() {
    let now = Instant::now();
    let (a_addr, b_addr) = (addr(1), addr(2));
    let mut a = proto(1, 1400);
    // Its first tick (the table and its names, more than a socket buffer) leaves at once, as a
    // smaller one would: only the answers are left to pace below.
    a.cfg.max_unpaced_tick = usize::MAX;
    let mut b = proto(2, 1400);
    for h in 0..10_000u64 {
        a.set_local(h, 1, Some(&Arc::from(format!("topic:{h}"))));
    }
    a.handle_tick(now);
    for t in [now, now + Duration::from_millis(10)] {
        b.handle_tick(t);
        deliver(&mut b, b_addr, &mut a, a_addr, t); // a knows b at its address now
    }
    drain(&mut a);
    // b asks a for its table (as after a lost datagram).
    b.handle_datagram(now, a_addr, &{
        let mut x = proto(1, 1400);
        x.handle_tick(now);
        drain(&mut x).pop().unwrap().bytes
    });
    let mut req = None;
    let later = now + Duration::from_millis(50);
    b.set_local(99, 1, None);
    for i in 0..3 {
        let t = later + Duration::from_millis(30 * i);
        b.requests += 1;
        let d = b.enc.request(
            &b.seal,
            FLAG_STATE | FLAG_NAMES,
            &b.stamp(t, b.seq),
            1,
            1,
            b.requests,
        );
        req.get_or_insert(d);
    }
    let req = req.unwrap();
    assert_eq!(a.handle_datagram(later, b_addr, &req), Outcome::Applied);
    let reply: usize = drain_paced(&mut a, later, later + Duration::from_millis(500))
        .iter()
        .inspect(|t| assert_eq!(t.dest, Dest::To(b_addr), "replies go to the requester only"))
        .map(|t| t.bytes.len())
        .sum();
    assert!(reply > 100_000, "the table and its names: {reply} bytes");
    // The same request again, from b's address: a request number already used.
    let t = later + Duration::from_secs(1);
    assert_eq!(
        a.handle_datagram(t, b_addr, &req),
        Outcome::Rejected(Reject::Stale)
    );
    // From 20 foreign addresses: nothing sent anywhere.
    for i in 0..20u16 {
        assert_eq!(
            a.handle_datagram(t, addr(1000 + i), &req),
            Outcome::Rejected(Reject::NotPeer)
        );
    }
    assert!(
        drain(&mut a).is_empty(),
        "no reply to a replayed or spoofed request"
    );
    // After b is dropped, its own address gets nothing either.
    let gone = t + a.config().dead_after * 2;
    a.handle_tick(gone);
    drain(&mut a);
    let mut fresh = req.clone();
    let n = fresh.len() - wire::TAG_LEN;
    fresh.truncate(n);
    fresh[wire::HEADER_LEN + 16..wire::HEADER_LEN + 24].copy_from_slice(&1000u64.to_be_bytes());
    b.seal.seal(&mut fresh);
    assert_eq!(
        a.handle_datagram(gone, b_addr, &fresh),
        Outcome::Rejected(Reject::NotPeer)
    );
    assert!(drain(&mut a).is_empty());
}

/// The repair bucket holds over all requesters: many live peers asking at once are answered
/// at most a burst at once and `max_repair_rate` over time, every one of them in full; past
/// `MAX_TABLE_REPLIES` replies under way, a request is refused (`Reject::Budget`) and asked
/// again later.
#[test]
fn the_repair_bucket_paces_replies_over_all_requesters() {
    let now = Instant::now();
    let mut c = Config::new(1, 1, Duration::from_millis(100));
    c.max_repair_rate = 200_000;
    c.repair_burst = 16_000;
    let mut a = Protocol::new(c, Seal::new("p", b"k"));
    for h in 0..2_000u64 {
        a.set_local(h, 1, None);
    }
    a.handle_tick(now);
    drain(&mut a);
    let n = crate::cluster::protocol::repair::MAX_TABLE_REPLIES + 4;
    let mut peers: Vec<Protocol> = (2..2 + n as u64).map(|n| proto(n, 1400)).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        for _ in 0..2 {
            p.handle_tick(now);
            deliver(p, addr(100 + i as u16), &mut a, addr(1), now);
        }
    }
    drain(&mut a);
    let mut at_once = 0usize;
    let mut refused = 0;
    for (i, p) in peers.iter_mut().enumerate() {
        let d = p
            .enc
            .request(&p.seal, FLAG_STATE, &p.stamp(now, p.seq), 1, 1, 1);
        match a.handle_datagram(now, addr(100 + i as u16), &d) {
            Outcome::Applied => {}
            Outcome::Rejected(Reject::Budget) => refused += 1,
            o => panic!("{o:?}"),
        }
        at_once += drain(&mut a).iter().map(|t| t.bytes.len()).sum::<usize>();
    }
    assert_eq!(refused, 4, "past the replies under way, requests wait");
    assert_eq!(a.stats().rejected(Reject::Budget), refused);
    // At once: one burst (a datagram may start within it).
    assert!(at_once <= 16_000 + 1400, "{at_once} bytes at once");
    // Over the next second: what the rate allows, and each reply whole (ending with FLAG_END).
    let sent = drain_paced(&mut a, now, now + Duration::from_secs(1));
    let bytes: usize = sent.iter().map(|t| t.bytes.len()).sum();
    assert!(
        at_once + bytes <= 200_000 + 16_000 + 1400,
        "{} bytes in a second",
        at_once + bytes
    );
    // 2,000 topics are about 26 kB a reply: at 200 kB/s, all 16 in about 2 s.
    let rest = drain_paced(
        &mut a,
        now + Duration::from_secs(1),
        now + Duration::from_secs(3),
    );
    let ends = sent
        .iter()
        .chain(&rest)
        .filter(|t| {
            a.seal
                .open(&t.bytes)
                .is_ok_and(|d| d.header.flags.get() & FLAG_END != 0)
        })
        .count();
    assert_eq!(ends, n - 4, "every reply under way ends");
}

/// Another process with this node's id, or a peer whose clock is far off, is refused and
/// counted, never merged.
#[test]
fn node_id_conflicts_and_clock_skew_are_refused() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut twin = Protocol::new(
        Config::new(1, 2, Duration::from_millis(100)),
        Seal::new("p", b"k"),
    );
    twin.set_local(5, 1, None);
    twin.handle_tick(now);
    for t in drain(&mut twin) {
        assert_eq!(
            a.handle_datagram(now, addr(9), &t.bytes),
            Outcome::Rejected(Reject::NodeId)
        );
    }
    let mut c = Config::new(3, 1, Duration::from_millis(100));
    c.clock.unix_ms += 120_000; // two minutes ahead
    let mut skewed = Protocol::new(c, Seal::new("p", b"k"));
    skewed.set_local(6, 1, None);
    skewed.handle_tick(now);
    for t in drain(&mut skewed) {
        assert_eq!(
            a.handle_datagram(now, addr(3), &t.bytes),
            Outcome::Rejected(Reject::Clock)
        );
    }
    assert_eq!((a.remote(5), a.remote(6)), (0, 0));
}

/// In a cross-zone group, a zone mate's datagrams (its id's top bits are this node's zone) are
/// refused whole, and counted; another zone's are applied.
#[test]
fn a_zone_mate_is_refused_in_the_cross_zone_group() {
    let now = Instant::now();
    let tick = Duration::from_millis(100);
    let zoned = |zone: u16, id: u64| {
        let mut c = Config::new((u64::from(zone) << 48) | id, 1, tick);
        c.zone = zone;
        Protocol::new(c, Seal::new("p", b"k"))
    };
    let mut a = zoned(1, 1);
    let mut mate = zoned(1, 2);
    let mut other = zoned(2, 3);
    mate.set_local(5, 4, None);
    other.set_local(6, 7, None);
    mate.handle_tick(now);
    other.handle_tick(now);
    let sent = drain(&mut mate);
    assert!(!sent.is_empty());
    for t in &sent {
        assert_eq!(
            a.handle_datagram(now, addr(2), &t.bytes),
            Outcome::Rejected(Reject::Zone)
        );
    }
    for t in drain(&mut other) {
        assert_eq!(a.handle_datagram(now, addr(3), &t.bytes), Outcome::Applied);
    }
    assert_eq!((a.remote(5), a.remote(6)), (0, 7));
    assert_eq!(a.stats().rejected[Reject::Zone.index()], sent.len() as u64);
    assert_eq!(a.nodes(now).len(), 1, "the zone mate is no peer");
    // Outside zones (zone 0) the same id is an ordinary peer.
    let mut flat = proto(9, 1400);
    for t in &sent {
        assert_eq!(
            flat.handle_datagram(now, addr(2), &t.bytes),
            Outcome::Applied
        );
    }
    assert_eq!(flat.remote(5), 4);
}

/// Node 1 counting 5,000 topics, and node 2 that keeps at most 1,000 of a peer's.
fn over_the_cap() -> (Protocol, Protocol) {
    let mut c = Config::new(2, 1, Duration::from_millis(100));
    c.max_topics_per_peer = 1000;
    let b = Protocol::new(c, Seal::new("p", b"k"));
    let mut a = proto(1, 1400);
    for h in 0..5000u64 {
        a.set_local(h, 1, None);
    }
    (a, b)
}

/// A peer whose table is over this node's cap is flagged, and asked for its table with
/// exponential backoff instead of every resync interval forever.
#[test]
fn a_peer_over_the_cap_is_flagged_and_asked_with_backoff() {
    let t0 = Instant::now();
    let (mut a, mut b) = over_the_cap();
    let mut now = t0;
    for _ in 0..600 {
        a.handle_tick(now);
        b.handle_tick(now);
        deliver(&mut a, addr(1), &mut b, addr(2), now);
        deliver(&mut b, addr(2), &mut a, addr(1), now);
        now += Duration::from_millis(100);
    }
    let n = b.nodes(now);
    assert!(n[0].over_cap && !n[0].converged, "{n:?}");
    assert!(b.stats().rejected(Reject::TooManyTopics) > 0);
    // 60 s at a 25 ms resync interval: 2,400 requests without backoff.
    let asked = b.stats().resync_requests;
    assert!(asked <= 20, "{asked} resync requests in 60 s");
    // Its datagrams refused for the cap still say it is alive (a tick's one refresh slice, all
    // it sends idle, made it die and come back every few seconds).
    assert_eq!(b.stats().peers_died, 0);
}

/// Found by the fuzzer: a copy of a fresh datagram that reached a node first from another
/// address (a replay racing the original, an interception) moved the peer there, and the
/// node then sent its requests, and answered requests with its whole table, to that address.
/// A peer's address is pinned for its incarnation, and only a settled address is sent to.
#[test]
fn a_copy_from_another_address_does_not_move_a_peer() {
    let t0 = Instant::now();
    let (a_addr, b_addr, evil) = (addr(1), addr(2), addr(666));
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for h in 0..2000u64 {
        a.set_local(h, 1, None);
    }
    let mut now = t0;
    // First contact: b's first datagram arrives from the attacker's address first.
    b.handle_tick(now);
    let first = drain(&mut b);
    for t in &first {
        assert_eq!(a.handle_datagram(now, evil, &t.bytes), Outcome::Applied);
        assert_eq!(
            a.handle_datagram(now, b_addr, &t.bytes),
            Outcome::Rejected(Reject::Stale)
        );
    }
    // The attacker also delivers a fresh request of b's before b's own copy arrives.
    b.requests += 1;
    let req = b.enc.request(
        &b.seal,
        FLAG_STATE | FLAG_NAMES,
        &b.stamp(now, b.seq),
        1,
        1,
        b.requests,
    );
    assert_eq!(
        a.handle_datagram(now, evil, &req),
        Outcome::Rejected(Reject::NotPeer)
    );
    // Then b is heard normally, and every datagram a sends to b goes to b.
    for _ in 0..20 {
        now += Duration::from_millis(100);
        a.handle_tick(now);
        b.handle_tick(now);
        for t in drain(&mut a) {
            assert_ne!(t.dest, Dest::To(evil), "a sent to the attacker's address");
            if t.dest == Dest::Group || t.dest == Dest::To(b_addr) {
                b.handle_datagram(now, a_addr, &t.bytes);
            }
        }
        deliver(&mut b, b_addr, &mut a, a_addr, now);
    }
    assert_eq!(
        a.nodes(now)[0].addr,
        b_addr,
        "moved to b's real address once evil was silent"
    );
    assert_eq!(b.remote_total(), 2000);
    assert!(b.converged());
}

/// Found in review: a datagram refused for a cap leaves the peer's sequence number where it
/// was, so the same bytes replayed from its address (an attacker on the path, a duplicating
/// network) kept a stopped peer alive, counts and all, until the clock window refused them
/// (30 s, where `dead_after` is 3 s). A refused datagram says the peer is alive once.
#[test]
fn a_replayed_datagram_refused_for_the_cap_does_not_keep_a_stopped_peer_alive() {
    let t0 = Instant::now();
    let (mut a, mut b) = over_the_cap();
    let mut now = t0;
    let mut refused: Option<Vec<u8>> = None;
    for _ in 0..50 {
        if refused.is_some() && now > t0 + Duration::from_secs(2) {
            break;
        }
        a.handle_tick(now);
        b.handle_tick(now);
        for t in drain(&mut a) {
            if t.dest == Dest::Group || t.dest == Dest::To(addr(2)) {
                let o = b.handle_datagram(now, addr(1), &t.bytes);
                refused = (o == Outcome::Rejected(Reject::TooManyTopics)).then(|| t.bytes.clone());
            }
        }
        deliver(&mut b, addr(2), &mut a, addr(1), now);
        now += Duration::from_millis(100);
    }
    let replay = refused.expect("a datagram refused for the cap");
    assert_eq!(b.nodes(now).len(), 1);
    // `a` stopped; its last datagram is replayed from its address once a tick for 10 s.
    for _ in 0..100 {
        b.handle_tick(now);
        drain(&mut b);
        let _ = b.handle_datagram(now, addr(1), &replay);
        now += Duration::from_millis(100);
    }
    assert!(
        b.nodes(now).iter().all(|n| !n.alive),
        "a peer silent for 10 s is still alive: {:?}",
        b.nodes(now)
    );
}
