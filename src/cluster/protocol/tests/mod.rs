//! Unit tests of the protocol: two or a few nodes wired by hand, with captured datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::cluster::wire::{self, Body, FLAG_END, FLAG_NAMES, FLAG_STATE, Kind, Stamp};

mod admission;
mod digests;
mod names;
mod pacing;
mod parity;
mod relay;

fn proto(node: u64, budget: usize) -> Protocol {
    let mut c = Config::new(node, 1, Duration::from_millis(100));
    c.budget = budget;
    c.refresh_cycle = 1;
    Protocol::new(c, Seal::new("p", b"k"))
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], i))
}

/// Everything `p` queued.
fn drain(p: &mut Protocol) -> Vec<Transmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

/// Everything `p` queued, and what its repair bucket lets out from `now` until `until`
/// (answers are paced: [`Protocol::poll_timeout`] says when more may go).
fn drain_paced(p: &mut Protocol, now: Instant, until: Instant) -> Vec<Transmit> {
    let mut out = drain(p);
    let mut t = now;
    while let Some(w) = p.poll_timeout().filter(|&w| w <= until) {
        t = t.max(w);
        p.handle_timeout(t);
        out.extend(drain(p));
    }
    out
}

/// Delivers everything `from` queued (group datagrams, and unicast ones addressed to `to_addr`)
/// to `to`, as sent from `from_addr`; returns the outcomes.
fn deliver(
    from: &mut Protocol,
    from_addr: SocketAddr,
    to: &mut Protocol,
    to_addr: SocketAddr,
    now: Instant,
) -> Vec<Outcome> {
    drain(from)
        .into_iter()
        .filter(|t| t.dest == Dest::Group || t.dest == Dest::To(to_addr))
        .map(|t| to.handle_datagram(now, from_addr, &t.bytes))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The compact table answers every lookup and range as an ordered map would, through
    /// inserts, updates and removals that split its buckets (hashes over the whole space,
    /// and crowded in a few buckets), sized ahead (`expect`) or not, before or midway.
    #[test]
    fn counts_agree_with_an_ordered_map(
        ops in proptest::collection::vec((any::<u64>(), 0u32..4, any::<bool>()), 0..3000),
        ranges in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..20),
        ahead in proptest::option::of((0usize..3000, 0usize..20_000)),
    ) {
        let mut c = peer::Counts::default();
        let mut m = std::collections::BTreeMap::new();
        for (i, (h, n, crowd)) in ops.into_iter().enumerate() {
            if let Some((at, size)) = ahead && (at == i || at / 2 == i) {
                c.expect(size);
            }
            // Crowded: the same top bits, or one of a few hashes again and again.
            let h = if crowd { (h & 0xff) | 0xabc0_0000_0000_0000 } else { h };
            let old = m.get(&h).copied().unwrap_or(0);
            if n == 0 { m.remove(&h); } else { m.insert(h, n); }
            prop_assert_eq!(c.set(h, n), old);
            prop_assert_eq!(c.len(), m.len());
            if i % 97 == 0 {
                prop_assert!(c.iter().eq(m.iter().map(|(&h, &n)| (h, n))));
            }
        }
        for (a, b) in ranges {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(c.range(lo, hi).eq(m.range(lo..=hi).map(|(&h, &n)| (h, n))));
            prop_assert_eq!(c.get(&a).copied(), m.get(&a).copied());
            prop_assert_eq!(c.contains_key(&b), m.contains_key(&b));
        }
        prop_assert!(c.iter().eq(m.iter().map(|(&h, &n)| (h, n))));
    }

    /// The search that starts at a bucket's interpolated position answers as a binary search
    /// does, whatever the keys: spread evenly, crowded at one end, or a handful.
    #[test]
    fn find_agrees_with_binary_search(
        keys in proptest::collection::btree_set(any::<u64>(), 0..600),
        crowd in 0u32..3,
        bits in 0u32..25,
        probes in proptest::collection::vec(any::<u64>(), 1..50),
    ) {
        let shift = [0, 40, 60][crowd as usize];
        let keys: Vec<u64> = keys.into_iter().map(|k| k >> shift).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        for h in probes.into_iter().map(|h| h >> shift).chain(keys.iter().copied()) {
            prop_assert_eq!(peer::find(&keys, h, bits), keys.binary_search(&h));
        }
    }

    /// The running sum and digest always equal what the table holds.
    #[test]
    fn table_sum_and_digest_follow_the_map(
        ops in proptest::collection::vec((0u64..50, 0u32..5), 0..400),
    ) {
        let mut t = Table::default();
        for (h, c) in ops {
            t.set(h, c);
            let sum: u64 = t.map.iter().map(|(_, c)| u64::from(c)).sum();
            let digest = t.map.iter().fold(0u64, |d, (h, c)| d.wrapping_add(mix(h, c)));
            prop_assert_eq!(t.sum, sum);
            prop_assert_eq!(t.digest, digest);
        }
    }

    /// Range digests agree exactly when the ranges hold the same entries. B is A changed
    /// (counts changed, topics added or removed) only inside a random range, or only outside
    /// it; over that range, its children (as a digest reply splits it), ranges around each
    /// change and random ranges, B's digest and size equal A's if and only if B and A hold the
    /// same entries there. The children's digests and sizes also add up to their range's.
    #[test]
    fn range_digests_agree_iff_the_ranges_agree(
        entries in proptest::collection::vec((any::<u64>(), 1u32..4), 0..1500),
        changes in proptest::collection::vec((any::<u64>(), 0u32..4, any::<bool>()), 1..12),
        (x, y) in (any::<u64>(), any::<u64>()),
        inside in any::<bool>(),
        probes in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..16),
    ) {
        let (lo, hi) = (x.min(y), x.max(y));
        let mut a = Table::default();
        for &(h, c) in &entries {
            a.set(h, c);
        }
        let mut b = a.clone();
        let width = u128::from(hi - lo) + 1;
        let outside = (1u128 << 64) - width;
        let mut changed = Vec::new();
        for (sel, c, existing) in changes {
            let h = if existing && !entries.is_empty() {
                // An entry A holds (kept only if it lies where changes go).
                entries[(sel % entries.len() as u64) as usize].0
            } else if inside {
                lo + (u128::from(sel) % width) as u64
            } else if outside > 0 {
                let k = u128::from(sel) % outside;
                if k < u128::from(lo) { k as u64 } else { (k + width) as u64 }
            } else {
                continue;
            };
            if (lo..=hi).contains(&h) == inside {
                b.set(h, c);
                changed.push(h);
            }
        }
        let mut ranges = vec![(lo, hi), (0, u64::MAX)];
        let n = wire::MAX_FANOUT;
        let children: Vec<(u64, u64)> =
            (0..n).filter_map(|i| wire::child_range(lo, hi, n, i)).collect();
        ranges.extend(&children);
        for &h in &changed {
            ranges.push((h, h));
            ranges.push((h.saturating_sub(1 << 40), h.saturating_add(1 << 40)));
        }
        ranges.extend(probes.iter().map(|&(p, q)| (p.min(q), p.max(q))));
        for (l, h) in ranges {
            let same = a.map.range(l, h).eq(b.map.range(l, h));
            let agree = a.range_digest(l, h) == b.range_digest(l, h);
            prop_assert_eq!(same, agree, "[{:x}, {:x}]", l, h);
        }
        // The changes were confined: the other side agrees whole.
        if inside {
            if lo > 0 {
                prop_assert_eq!(a.range_digest(0, lo - 1), b.range_digest(0, lo - 1));
            }
            if hi < u64::MAX {
                prop_assert_eq!(a.range_digest(hi + 1, u64::MAX), b.range_digest(hi + 1, u64::MAX));
            }
        } else {
            prop_assert!(a.map.range(lo, hi).eq(b.map.range(lo, hi)));
        }
        // The children cover their range exactly.
        let (d, c) = children.iter().fold((0u64, 0u32), |(d, c), &(l, h)| {
            let (x, y) = b.range_digest(l, h);
            (d.wrapping_add(x), c + y)
        });
        prop_assert_eq!((d, c), b.range_digest(lo, hi));
        prop_assert_eq!(b.range_digest(0, u64::MAX), (b.digest, b.len() as u32));
    }

    /// Whatever the table, the names and the budget, no datagram exceeds the budget, and a
    /// peer that hears everything ends up with an exact, converged copy.
    #[test]
    fn datagrams_fit_the_budget_and_replicate(
        budget in wire::MIN_BUDGET..3000usize,
        table in proptest::collection::vec((any::<u64>(), 0..5u32, "[a-z]{0,300}"), 0..400),
    ) {
        let now = Instant::now();
        let mut a = proto(1, budget);
        let mut b = proto(2, budget);
        for (h, c, n) in &table {
            let n: Arc<str> = n.as_str().into();
            a.set_local(*h, *c, Some(&n));
        }
        let from_a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let from_b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        for round in 0..4 {
            let t = now + Duration::from_millis(100 * round);
            a.handle_tick(t);
            b.handle_tick(t);
            while let Some(x) = a.poll_transmit() {
                prop_assert!(x.bytes.len() <= budget, "{} > {}", x.bytes.len(), budget);
                prop_assert!(matches!(b.handle_datagram(t, from_a, &x.bytes), Outcome::Applied));
            }
            while let Some(x) = b.poll_transmit() {
                prop_assert!(x.bytes.len() <= budget);
                a.handle_datagram(t, from_b, &x.bytes);
            }
        }
        let mut truth: HashMap<u64, u32> = HashMap::default();
        for (h, c, _) in &table {
            truth.insert(*h, *c);
        }
        for (h, c) in truth {
            prop_assert_eq!(b.remote(h), u64::from(c));
        }
        prop_assert!(b.converged());
    }
}

/// A burst of changes larger than a tick's budget goes out over several ticks; peers see no
/// final digest (and ask for nothing) until all of it went out, then converge.
#[test]
fn a_burst_is_spread_over_ticks_and_converges_without_resyncs() {
    let t0 = Instant::now();
    let mut c = Config::new(1, 1, Duration::from_millis(100));
    c.max_tick_datagrams = 50;
    let mut a = Protocol::new(c, Seal::new("p", b"k"));
    let mut b = proto(2, 1400);
    for h in 0..20_000u64 {
        a.set_local(h, 2, Some(&Arc::from(format!("t{h}"))));
    }
    let mut now = t0;
    let mut ticks = 0;
    loop {
        a.handle_tick(now);
        b.handle_tick(now);
        let out = drain(&mut a);
        let deltas = out
            .iter()
            .filter(|t| t.dest == Dest::Group)
            .filter(|t| {
                a.seal
                    .open(&t.bytes)
                    .is_ok_and(|d| matches!(d.kind, Kind::Delta | Kind::Names))
            })
            .count();
        assert!(
            deltas <= 50,
            "tick {ticks}: {deltas} delta and names datagrams"
        );
        let ends = out
            .iter()
            .filter(|t| {
                a.seal
                    .open(&t.bytes)
                    .is_ok_and(|d| d.header.flags.get() & FLAG_END != 0)
            })
            .count();
        assert_eq!(ends, usize::from(a.stats().backlog == 0), "tick {ticks}");
        for t in out {
            assert_eq!(b.handle_datagram(now, addr(1), &t.bytes), Outcome::Applied);
        }
        deliver(&mut b, addr(2), &mut a, addr(1), now);
        ticks += 1;
        now += Duration::from_millis(100);
        if a.stats().backlog == 0 {
            break;
        }
    }
    assert!(ticks >= 5, "spread over {ticks} ticks");
    a.handle_tick(now);
    deliver(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!(b.remote_total(), 40_000);
    assert!(b.converged());
    assert_eq!(b.stats().resync_requests, 0, "a backlog is not divergence");
    let learned = std::iter::from_fn(|| b.poll_event())
        .filter(|e| matches!(e, Event::NameLearned { .. }))
        .count();
    assert_eq!(learned, 20_000);
}

/// A tick sends its share of a backlog in hash order (a receiver's table of the sender then
/// grows at the ends of its sorted runs), and the oldest changes still go first.
#[test]
fn a_tick_sends_the_oldest_changes_in_hash_order() {
    let mut c = Config::new(1, 1, Duration::from_millis(100));
    c.max_tick_datagrams = 4;
    let mut a = Protocol::new(c, Seal::new("p", b"k"));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut order = Vec::new();
    for _ in 0..3_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.push(x);
        a.set_local(x, 1, None);
    }
    let mut now = Instant::now();
    let mut sent = Vec::new();
    while a.stats().backlog > 0 {
        a.handle_tick(now);
        let mut tick = Vec::new();
        for t in drain(&mut a) {
            if let Ok(d) = a.seal.open(&t.bytes)
                && d.kind == Kind::Delta
                && let Body::Entries(e) = d.body
            {
                tick.extend(e.iter().map(|x| x.hash.get()));
            }
        }
        assert!(!tick.is_empty(), "a tick with a backlog sent nothing");
        assert!(tick.is_sorted(), "a tick's deltas out of hash order");
        let mut oldest = order[sent.len()..sent.len() + tick.len()].to_vec();
        oldest.sort_unstable();
        assert_eq!(tick, oldest, "not the oldest changes");
        sent.extend(tick);
        now += Duration::from_millis(100);
    }
    assert_eq!(sent.len(), order.len());
}

/// `poll_event` reports every changed peer sum first (once each, with the sum at the time of the
/// report), then the learned names in order; a caller that stops early finds the rest later,
/// behind the changes that came meanwhile.
#[test]
fn events_report_changed_sums_first_then_names_in_order() {
    let now = Instant::now();
    let mut a = proto(1, 1400);
    let mut b = proto(2, 1400);
    for h in 1..=3u64 {
        a.set_local(h, h as u32, Some(&Arc::from(format!("t{h}"))));
    }
    a.handle_tick(now);
    deliver(&mut a, addr(1), &mut b, addr(2), now);
    let first: Vec<Event> = std::iter::from_fn(|| b.poll_event()).take(4).collect();
    let mut sums: Vec<(u64, u64)> = first[..3]
        .iter()
        .map(|e| match e {
            Event::RemoteChanged { hash, sum } => (*hash, *sum),
            e => panic!("{e:?} before a changed sum"),
        })
        .collect();
    sums.sort_unstable();
    assert_eq!(sums, vec![(1, 1), (2, 2), (3, 3)]);
    assert_eq!(
        first[3],
        Event::NameLearned {
            hash: 1,
            name: "t1".into()
        }
    );
    // Stopped early; a change comes in meanwhile: it is reported before the remaining names.
    a.set_local(2, 7, None);
    a.handle_tick(now + Duration::from_millis(100));
    deliver(
        &mut a,
        addr(1),
        &mut b,
        addr(2),
        now + Duration::from_millis(100),
    );
    let rest: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
    assert_eq!(
        rest,
        vec![
            Event::RemoteChanged { hash: 2, sum: 7 },
            Event::NameLearned {
                hash: 2,
                name: "t2".into()
            },
            Event::NameLearned {
                hash: 3,
                name: "t3".into()
            },
        ]
    );
}

/// Two receivers miss the same datagrams of a sender. The one whose random wait ends first
/// nacks them to the group; the other hears that nack within its own wait and holds its own
/// back; the one repair the sender sends to the group serves both.
#[test]
fn a_nack_heard_within_the_wait_holds_the_same_nack_back() {
    let now = Instant::now();
    let tick = Duration::from_millis(100);
    let node = |n: u64, window: Duration| {
        let mut c = Config::new(n, 1, tick);
        c.nack_window = window;
        Protocol::new(c, Seal::new("p", b"k"))
    };
    let mut a = node(1, Duration::from_millis(1));
    // (b's wait ends within a resync interval of c's nack: past that, b would take c's nack
    // or its repair for lost, and nack.)
    let mut b = node(2, Duration::from_millis(20));
    let mut c = node(3, Duration::from_millis(1));
    let (aa, ab, ac) = (addr(1), addr(2), addr(3));
    let mut t = now;
    // Everyone hears everyone twice (settled peers).
    for _ in 0..2 {
        for p in [&mut a, &mut b, &mut c] {
            p.handle_tick(t);
        }
        let (da, db, dc) = (drain(&mut a), drain(&mut b), drain(&mut c));
        for d in &da {
            b.handle_datagram(t, aa, &d.bytes);
            c.handle_datagram(t, aa, &d.bytes);
        }
        for d in &db {
            a.handle_datagram(t, ab, &d.bytes);
            c.handle_datagram(t, ab, &d.bytes);
        }
        for d in &dc {
            a.handle_datagram(t, ac, &d.bytes);
            b.handle_datagram(t, ac, &d.bytes);
        }
        t += tick;
    }
    // a's changes reach nobody.
    for h in 0..50u64 {
        a.set_local(h, 1, Some(&Arc::from(format!("room:{h}"))));
    }
    a.handle_tick(t);
    assert!(!drain(&mut a).is_empty());
    t += tick;
    // Its next heartbeat says what its table is: both see the gap and wait.
    a.handle_tick(t);
    for d in drain(&mut a) {
        b.handle_datagram(t, aa, &d.bytes);
        c.handle_datagram(t, aa, &d.bytes);
    }
    assert!(
        drain(&mut b).is_empty() && drain(&mut c).is_empty(),
        "nobody nacks at once"
    );
    // c's wait ends first: its nack goes to the group.
    let tc = c.poll_timeout().expect("c waits to nack");
    let tb = b.poll_timeout().expect("b waits to nack");
    assert!(tc < tb);
    c.handle_timeout(tc);
    let nack = drain(&mut c);
    assert_eq!(nack.len(), 1);
    assert_eq!(c.stats().nacks_sent, 1);
    b.handle_datagram(tc, ac, &nack[0].bytes);
    a.handle_datagram(tc, ac, &nack[0].bytes);
    // b's wait ends before the repair comes: it holds its nack back.
    b.handle_timeout(tb.max(tc));
    assert!(drain(&mut b).is_empty(), "b nacked what c had asked for");
    assert_eq!((b.stats().nacks_sent, b.stats().nacks_suppressed), (0, 1));
    // The repair serves both; nobody asked for a table.
    let repair = drain(&mut a);
    assert!(!repair.is_empty() && repair.iter().all(|d| d.dest == Dest::Group));
    for d in &repair {
        b.handle_datagram(tb, aa, &d.bytes);
        c.handle_datagram(tb, aa, &d.bytes);
    }
    for p in [&b, &c] {
        assert_eq!(p.remote_total(), 50);
        assert!(p.converged());
        assert_eq!(p.name(49), Some("room:49"));
        assert_eq!(p.stats().resync_requests, 0);
    }
}

/// A table told the size it will have (a peer's declared size) makes the room up front, once:
/// filled, it holds what it was given in at most 16 bytes an entry, having grown little past
/// that room.
#[test]
fn a_peer_table_sized_ahead_makes_room_once() {
    let mut next = super::open::test_rng(0x2545_f491_4f6c_dd1d);
    for n in [500usize, 4_000, 50_000] {
        let mut c = peer::Counts::default();
        c.expect(n);
        let room = c.heap_bytes();
        assert!(room >= n * 12 * 9 / 10, "{room} B made for {n}");
        c.expect(n);
        assert_eq!(c.heap_bytes(), room, "sized once");
        let mut keys = Vec::new();
        while c.len() < n {
            let x = next();
            keys.push(x);
            c.set(x, 2);
        }
        let per = c.heap_bytes() as f64 / n as f64;
        assert!(per <= 16.0, "{per:.1} B an entry at {n}");
        assert!(
            c.heap_bytes() < room * 13 / 10,
            "{room} -> {}",
            c.heap_bytes()
        );
        keys.sort_unstable();
        assert!(c.iter().eq(keys.iter().map(|&k| (k, 2))));
    }
}

/// A peer's table costs at most 16 bytes an entry, growing and shrinking (issue 14's target:
/// every node keeps every peer's table).
#[test]
fn a_peer_table_costs_at_most_16_bytes_an_entry() {
    let mut c = peer::Counts::default();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut keys = Vec::new();
    for n in [1_000usize, 10_000, 100_000, 300_000] {
        while c.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            keys.push(x);
            c.set(x, 1);
        }
        let per = c.heap_bytes() as f64 / c.len() as f64;
        eprintln!("{n} entries: {per:.1} B an entry");
        assert!(per <= 16.0, "{per:.1} B an entry at {n}");
    }
    // Half of them leave: what stays still costs at most 16 B an entry.
    for k in keys.iter().step_by(2) {
        c.set(*k, 0);
    }
    let per = c.heap_bytes() as f64 / c.len() as f64;
    assert!(per <= 16.0, "{per:.1} B an entry after removals");
    // Nearly all leave: the buckets merge, and the few left cost little.
    for k in keys.iter().skip(1).step_by(2).skip(100) {
        c.set(*k, 0);
    }
    assert_eq!(c.len(), 100);
    assert!(
        c.heap_bytes() < 8_000,
        "{} B for 100 entries",
        c.heap_bytes()
    );
    // And they are the right ones, in order.
    let mut left: Vec<(u64, u32)> = keys
        .iter()
        .skip(1)
        .step_by(2)
        .take(100)
        .map(|&k| (k, 1))
        .collect();
    left.sort_unstable();
    assert!(c.iter().eq(left.iter().copied()));
    assert!(left.iter().all(|(k, _)| c.get(k) == Some(&1)));
}
