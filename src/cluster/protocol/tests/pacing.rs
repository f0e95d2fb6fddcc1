//! Pacing a backlog tick, and what answers say while its datagrams wait.

use super::*;

/// A tick of a burst bigger than one tick's datagrams leaves its first `repair_burst` bytes at
/// once and the rest spread over nine tenths of the tick, in order (handed to the socket at
/// once, such ticks from many peers overflow the buffers: the storm `converge` showed with
/// 1 Gbit/s links); a tick that ends the burst leaves at once, unless it is bigger than
/// `max_unpaced_tick`.
#[test]
fn a_backlog_tick_is_paced_and_a_final_tick_is_not() {
    let now = Instant::now();
    let tick = Duration::from_millis(100);
    // Node `id` counting `topics` topics, at most `per_tick` datagrams a tick, after its tick.
    let ticked = |id: u64, topics: u64, per_tick: usize, unpaced: Option<usize>| {
        let mut p = proto(id, 1400);
        p.cfg.max_tick_datagrams = per_tick;
        if let Some(u) = unpaced {
            p.cfg.max_unpaced_tick = u;
        }
        for h in 0..topics {
            p.set_local(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, None);
        }
        p.handle_tick(now);
        p
    };
    let mut a = ticked(1, 40_000, 200, None);
    let at_once: Vec<Transmit> = drain(&mut a);
    let bytes = |v: &[Transmit]| v.iter().map(|t| t.bytes.len()).sum::<usize>();
    assert!(
        bytes(&at_once) <= a.cfg.repair_burst,
        "{} B at once",
        bytes(&at_once)
    );
    let first_wake = a.poll_timeout().expect("the rest is paced");
    assert!(first_wake > now);
    let mut later = Vec::new();
    let mut t = now;
    while let Some(w) = a.poll_timeout().filter(|&w| w <= now + tick) {
        assert!(w >= t, "wakes go forward");
        t = w;
        a.handle_timeout(t);
        let got = drain(&mut a);
        // Spread: no wake lets out more than the burst.
        assert!(
            bytes(&got) <= a.cfg.repair_burst,
            "{} B at {t:?}",
            bytes(&got)
        );
        later.extend(got);
    }
    assert!(a.poll_timeout().is_none(), "all of the tick left within it");
    assert!(t <= now + tick * 9 / 10, "{:?} after the tick", t - now);
    let all: Vec<Transmit> = at_once.into_iter().chain(later).collect();
    assert_eq!(all.len(), 200, "the tick's datagrams, all of them");
    let seqs: Vec<u64> = all
        .iter()
        .map(|d| a.seal.open(&d.bytes).unwrap().header.seq.get())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");

    // A burst one tick carries: the whole tick at once, though above the burst.
    let mut b = ticked(2, 12_000, 512, None);
    let sent = drain(&mut b);
    assert!(bytes(&sent) > b.cfg.repair_burst, "{} B", bytes(&sent));
    assert!(b.changed.is_empty());
    assert!(
        b.poll_timeout().is_none_or(|w| w > now + tick),
        "nothing held back"
    );

    // The same tick on a node whose socket takes less at once: spread too.
    let mut c = ticked(3, 12_000, 512, Some(bytes(&sent) - 1));
    let at_once = drain(&mut c);
    assert!(
        bytes(&at_once) <= c.cfg.repair_burst,
        "{} B",
        bytes(&at_once)
    );
    let w = c.poll_timeout().expect("the rest is paced");
    assert!(w > now && w <= now + tick, "{:?}", w - now);
}

/// While a backlog tick's datagrams wait, what this node answers carries the number of the last
/// datagram it sent, not of the last it numbered: a peer that got an answer first would have
/// counted the waiting ones missed and refused them as stale when they came (found in review:
/// every paced delta of a tick refused).
#[test]
fn answers_during_a_paced_tick_carry_the_last_number_sent() {
    let now = Instant::now();
    let tick = Duration::from_millis(100);
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    a.cfg.max_tick_datagrams = 200;
    // b knows a first.
    a.handle_tick(now);
    deliver(&mut a, addr(1), &mut b, addr(2), now);
    for h in 0..40_000u64 {
        a.set_local(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, None);
    }
    let t = now + tick;
    a.handle_tick(t);
    let first = drain(&mut a);
    let last_sent = first
        .iter()
        .map(|d| a.seal.open(&d.bytes).unwrap().header.seq.get())
        .max()
        .unwrap();
    assert!(!a.paced.is_empty(), "the rest of the tick waits");
    assert_eq!(a.sent_seq(), last_sent);
    assert!(a.sent_seq() < a.seq);
    for d in &first {
        assert_eq!(b.handle_datagram(t, addr(1), &d.bytes), Outcome::Applied);
    }
    // A nack from a (stamped as answers, nacks and requests are) reaches b before the rest of
    // the tick.
    let answer = a
        .enc
        .nacks(
            &a.seal,
            0,
            &a.stamp(t, a.sent_seq()),
            &[wire::Gap::new(99, 1, 1)],
        )
        .pop()
        .expect("a nack");
    assert_eq!(b.handle_datagram(t, addr(1), &answer), Outcome::Applied);
    let rest = drain_paced(&mut a, t, t + tick);
    assert!(!rest.is_empty());
    for d in &rest {
        assert_eq!(
            b.handle_datagram(t, addr(1), &d.bytes),
            Outcome::Applied,
            "a paced datagram refused"
        );
    }
    assert_eq!(a.sent_seq(), a.seq, "all sent");
    let p = &b.peers[&1];
    assert!(p.gaps.is_empty(), "nothing counted missed: {:?}", p.gaps);
}

/// A node with an empty table that has nothing else to send heartbeats every
/// `empty_heartbeat_every` ticks (the first tick at once); one that counts, every tick; one
/// whose table just emptied, every tick for that many ticks (the loss of the datagram that
/// emptied it shows at once), then every few again; with the default, every tick.
#[test]
fn an_empty_node_heartbeats_every_few_ticks() {
    let t0 = Instant::now();
    let tick = Duration::from_millis(100);
    // Datagrams sent at each of `ticks` ticks, counting topic 5 at ticks `from..to`.
    let sent_per_tick = |every: u32, ticks: u32, from: u32, to: u32| {
        let mut c = Config::new(1, 1, tick);
        c.empty_heartbeat_every = every;
        c.idle_refresh = 0; // no refresh slices between the heartbeats
        let mut p = Protocol::new(c, Seal::new("p", b"k"));
        (0..ticks)
            .map(|k| {
                if k == from {
                    p.set_local(5, 1, None);
                }
                if k == to {
                    p.set_local(5, 0, None);
                }
                p.handle_tick(t0 + tick * k);
                drain(&mut p).len()
            })
            .collect::<Vec<_>>()
    };
    let beats = |v: &[usize]| v.iter().map(|&n| n.min(1)).collect::<Vec<_>>();
    // Empty, every 5 ticks: ticks 0, 5 and 10, nothing else.
    let quiet = sent_per_tick(5, 12, u32::MAX, u32::MAX);
    assert_eq!(quiet, vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]);
    // The default: every tick.
    assert!(
        sent_per_tick(1, 12, u32::MAX, u32::MAX)
            .iter()
            .all(|&n| n >= 1)
    );
    // Counting from tick 3: every tick from then on.
    let busy = sent_per_tick(5, 12, 3, u32::MAX);
    assert!(busy[3..].iter().all(|&n| n >= 1), "{busy:?}");
    // Counting at ticks 2 and 3, empty again from tick 4 (its delta): every tick up to 9, then
    // tick 14.
    let emptied = sent_per_tick(5, 16, 2, 4);
    assert_eq!(
        beats(&emptied),
        vec![1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0],
        "{emptied:?}"
    );
}
