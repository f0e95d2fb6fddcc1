//! Reconciling by range digests: answered only as admission allows, a replay asking nothing,
//! and the fallback to the whole table.

use super::*;

/// Node `n` ticking every 100 ms without the rotating refresh: only reconciliation mends its
/// peers' copies.
fn quiet(n: u64) -> Protocol {
    let mut c = Config::new(n, 1, Duration::from_millis(100));
    c.refresh_cycle = 1_000_000;
    Protocol::new(c, Seal::new("p", b"k"))
}

/// Digest requests meet rule 8 as resync requests do (a live peer at its address, a request
/// number not used before), at most `DIGEST_REQUESTS` per requester per resync interval; and
/// they are answered with a digest reply for a big range, the entries of a small one (exactly
/// that range, authoritative for it), to the requester only.
#[test]
fn digest_requests_are_answered_by_range_only_for_live_peers() {
    let now = Instant::now();
    let (a_addr, b_addr) = (addr(1), addr(2));
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for h in 0..10_000u64 {
        a.set_local(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, None);
    }
    a.handle_tick(now);
    for t in [now, now + Duration::from_millis(10)] {
        b.handle_tick(t);
        deliver(&mut b, b_addr, &mut a, a_addr, t);
    }
    drain(&mut a);
    let t = now + Duration::from_millis(50);
    let ask = |b: &mut Protocol, flags: u16, ranges: &[(u64, u64)]| -> Vec<u8> {
        let mut n = b.requests;
        let d = b.enc.digest_requests(
            &b.seal,
            flags,
            &b.stamp(t, b.seq),
            (1, 1),
            &mut || {
                n += 1;
                n
            },
            ranges,
        );
        b.requests = n;
        d.into_iter().next().unwrap()
    };
    // The whole range: a digest reply, its children adding up to the table.
    let root = ask(&mut b, 0, &[(0, u64::MAX)]);
    assert_eq!(a.handle_datagram(t, b_addr, &root), Outcome::Applied);
    let out = drain(&mut a);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, Dest::To(b_addr));
    let d = a.seal.open(&out[0].bytes).unwrap();
    let Body::Digests(0, u64::MAX, children) = d.body else {
        panic!("not a digest reply: {:?}", d.kind)
    };
    assert_eq!(children.len(), wire::MAX_FANOUT);
    let (sum, topics) = children.iter().fold((0u64, 0u32), |(s, n), c| {
        (s.wrapping_add(c.digest.get()), n + c.topics.get())
    });
    assert_eq!((sum, topics), (a.table.digest, 10_000));
    assert_eq!(a.stats().digest_replies, 1);
    // A small range: its entries, whatever the flag.
    let (lo, hi) = wire::child_range(0, u64::MAX, 1 << 12, 5).unwrap();
    for flags in [0, FLAG_STATE] {
        let small = ask(&mut b, flags, &[(lo, hi)]);
        assert_eq!(a.handle_datagram(t, b_addr, &small), Outcome::Applied);
        let out = drain(&mut a);
        assert_eq!(out.len(), 1);
        let d = a.seal.open(&out[0].bytes).unwrap();
        let Body::Range(l, h, e) = d.body else {
            panic!("not a range: {:?}", d.kind)
        };
        assert_eq!((l, h), (lo, hi));
        let want: Vec<(u64, u32)> = a.table.map.range(lo, hi).collect();
        let got: Vec<(u64, u32)> = e.iter().map(|e| (e.hash.get(), e.count.get())).collect();
        assert_eq!(got, want);
    }
    // Replayed, or from elsewhere: refused, nothing sent.
    assert_eq!(
        a.handle_datagram(t, b_addr, &root),
        Outcome::Rejected(Reject::Stale)
    );
    let other = ask(&mut b, 0, &[(0, u64::MAX)]);
    assert_eq!(
        a.handle_datagram(t, addr(77), &other),
        Outcome::Rejected(Reject::NotPeer)
    );
    assert!(drain(&mut a).is_empty());
    // At most DIGEST_REQUESTS per interval (three were answered so far).
    let mut outcomes = Vec::new();
    for _ in 0..repair::DIGEST_REQUESTS {
        let d = ask(&mut b, 0, &[(1, 2)]);
        outcomes.push(a.handle_datagram(t, b_addr, &d));
    }
    let refused = outcomes
        .iter()
        .filter(|o| **o == Outcome::Rejected(Reject::Rate))
        .count();
    assert_eq!(refused, 3);
    let next = t + a.config().resync_interval;
    let d = ask(&mut b, 0, &[(1, 2)]);
    assert_eq!(a.handle_datagram(next, b_addr, &d), Outcome::Applied);
    // At most DIGEST_SCAN times the hash space an interval (each whole-range request scans
    // the table, or sends it), then again in the next.
    let later = next + a.config().resync_interval;
    let whole = (0..repair::DIGEST_SCAN + 1)
        .map(|_| {
            let d = ask(&mut b, 0, &[(0, u64::MAX)]);
            a.handle_datagram(later, b_addr, &d)
        })
        .collect::<Vec<_>>();
    assert_eq!(whole.last(), Some(&Outcome::Rejected(Reject::Rate)));
    assert!(
        whole[..whole.len() - 1]
            .iter()
            .all(|o| *o == Outcome::Applied)
    );
    let d = ask(&mut b, FLAG_STATE, &[(0, u64::MAX)]);
    assert_eq!(
        a.handle_datagram(later, b_addr, &d),
        Outcome::Rejected(Reject::Rate)
    );
    let d = ask(&mut b, FLAG_STATE, &[(0, u64::MAX)]);
    let then = later + a.config().resync_interval;
    assert_eq!(a.handle_datagram(then, b_addr, &d), Outcome::Applied);
}

/// A peer that answers no digest request (an older node refuses the kind) is asked for its
/// whole table after `MAX_DIGEST_ROUNDS` of them, and the copy is right again; one that
/// answers is never asked for its table. A small table (at most `SMALL_TABLE` datagrams) is
/// asked for whole at once: one round trip, not rounds of digests.
#[test]
fn a_peer_that_never_answers_digest_requests_is_asked_for_its_table() {
    for (answers, topics) in [(false, 5_000u64), (true, 5_000), (true, 1_000)] {
        let start = Instant::now();
        let (mut a, mut b) = (quiet(1), quiet(2));
        let (aa, ab) = (addr(1), addr(2));
        let per = b.enc.entries_per_datagram(Kind::ResyncReply);
        let small = topics as usize <= repair::SMALL_TABLE * per;
        for h in 0..topics {
            let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            a.set_local(h, 1, Some(&Arc::from(format!("room:{h}"))));
        }
        // Runs both for `ms` milliseconds, a tick every 100 ms and timeouts every 5 ms, with
        // everything delivered (b's digest requests to a only if `answers`).
        let run = |a: &mut Protocol, b: &mut Protocol, from: u64, ms: u64| {
            for step in (from..from + ms).step_by(5) {
                let t = start + Duration::from_millis(step);
                if step % 100 == 0 {
                    a.handle_tick(t);
                    b.handle_tick(t);
                }
                a.handle_timeout(t);
                b.handle_timeout(t);
                for d in drain(a) {
                    b.handle_datagram(t, aa, &d.bytes);
                }
                for d in drain(b) {
                    let kind = b.seal.open(&d.bytes).map(|d| d.kind);
                    if answers || kind != Ok(Kind::DigestRequest) {
                        a.handle_datagram(t, ab, &d.bytes);
                    }
                }
            }
        };
        run(&mut a, &mut b, 0, 1_000);
        assert!(b.converged(), "b has a's table");
        let before = b.stats();
        let h = 7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        b.corrupt_peer_entry_for_test(1, h, 9);
        assert!(!b.converged());
        run(&mut a, &mut b, 1_000, 1_000);
        assert!(b.converged(), "answers: {answers}");
        assert_eq!(b.remote(h), 1);
        let s = b.stats();
        let tables = s.table_requests - before.table_requests;
        let asked = s.digest_requests - before.digest_requests;
        if small {
            assert_eq!((tables, asked), (1, 0), "{topics} topics");
        } else if answers {
            assert_eq!(tables, 0);
            assert!(asked >= 2, "{asked} digest requests");
        } else {
            assert_eq!(tables, 1);
            assert_eq!(asked, u64::from(repair::MAX_DIGEST_ROUNDS));
        }
    }
}

/// A nack of datagrams older than the history is answered by reconciling the whole range, a
/// scan of the table: replayed (the same datagram passes while the sender's number has not
/// moved), it is charged to the requester's digest budget like a digest request for the whole
/// hash space, not answered at the repair bucket's pace (200 copies once made 200 scans).
#[test]
fn old_gap_nacks_are_charged_to_the_digest_budget() {
    let start = Instant::now();
    let tick = Duration::from_millis(100);
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    a.cfg.refresh_cycle = 1_000_000;
    b.cfg.refresh_cycle = 1_000_000;
    // A history of about ten datagrams: the first ones are forgotten.
    a.cfg.repair_history = 1_000;
    for h in 0..20_000u64 {
        a.set_local(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, None);
    }
    let mut t = start;
    for _ in 0..3 {
        a.handle_tick(t);
        b.handle_tick(t);
        let _ = drain(&mut a);
        deliver(&mut b, addr(2), &mut a, addr(1), t);
        t += tick;
    }
    let _ = drain(&mut a);
    let before = a.stats().digest_replies;
    let st = b.stamp(t, b.seq);
    let nack = b
        .enc
        .nacks(&b.seal, 0, &st, &[wire::Gap::new(1, 1, 1)])
        .pop()
        .expect("a nack");
    for i in 0..200u32 {
        let now = t + Duration::from_micros(u64::from(i) * 20);
        a.handle_datagram(now, addr(2), &nack);
        a.handle_timeout(now);
        let _ = drain(&mut a);
    }
    let replies = a.stats().digest_replies - before;
    assert!(replies >= 1, "the old gap is answered");
    assert!(
        replies <= repair::DIGEST_SCAN as u64,
        "{replies} whole-range answers within one interval"
    );
}

/// A digest reply below the root is acted on once, for a range this node asked for: a
/// replayed one (or one nobody asked for) would have it scan its copy and ask again.
#[test]
fn a_replayed_digest_reply_is_ignored() {
    let start = Instant::now();
    let tick = Duration::from_millis(100);
    let (mut a, mut b) = (quiet(1), quiet(2));
    let (aa, ab) = (addr(1), addr(2));
    // Children of the root hold about 40k / 32 entries: more than a reconcile answers with.
    for h in 0..40_000u64 {
        a.set_local(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, None);
    }
    let mut t = start;
    for _ in 0..20 {
        a.handle_tick(t);
        b.handle_tick(t);
        for d in drain_paced(&mut a, t, t + tick / 2) {
            b.handle_datagram(t, aa, &d.bytes);
        }
        for d in drain(&mut b) {
            a.handle_datagram(t, ab, &d.bytes);
        }
        t += tick;
    }
    assert!(b.converged());
    b.corrupt_peer_entry_for_test(1, 7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15), 9);
    b.request_where_needed(t);
    // One round: b's requests to a, a's digest replies back (the last one kept).
    let round = |a: &mut Protocol, b: &mut Protocol| -> Option<Transmit> {
        for d in drain(b) {
            a.handle_datagram(t, ab, &d.bytes);
        }
        let replies: Vec<Transmit> = drain_paced(a, t, t + tick / 2)
            .into_iter()
            .filter(|d| {
                a.seal
                    .open(&d.bytes)
                    .is_ok_and(|d| d.kind == Kind::DigestReply)
            })
            .collect();
        replies.into_iter().last()
    };
    let root = round(&mut a, &mut b).expect("the root's digests");
    b.handle_datagram(t, aa, &root.bytes);
    let child = round(&mut a, &mut b).expect("a child's digests");
    let d = a.seal.open(&child.bytes).unwrap();
    let Body::Digests(lo, hi, _) = d.body else {
        panic!("not a digest reply")
    };
    assert_ne!((lo, hi), (0, u64::MAX), "below the root");
    let asked = |b: &Protocol| b.stats().digest_requests;
    let before = asked(&b);
    b.handle_datagram(t, aa, &child.bytes);
    let _ = drain(&mut b);
    assert!(asked(&b) > before, "the first copy drills down");
    let once = asked(&b);
    for _ in 0..5 {
        b.handle_datagram(t, aa, &child.bytes);
    }
    let _ = drain(&mut b);
    assert_eq!(asked(&b), once, "replayed copies ask nothing");
}
