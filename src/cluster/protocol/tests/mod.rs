//! Unit tests of the protocol: two or a few nodes wired by hand, with captured datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::cluster::wire::{self, FLAG_END, FLAG_NAMES, FLAG_STATE, Kind, Stamp};

mod admission;

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

    /// The running sum and digest always equal what the table holds.
    #[test]
    fn table_sum_and_digest_follow_the_map(
        ops in proptest::collection::vec((0u64..50, 0u32..5), 0..400),
    ) {
        let mut t = Table::default();
        for (h, c) in ops {
            t.set(h, c);
            let sum: u64 = t.map.values().map(|&c| u64::from(c)).sum();
            let digest = t.map.iter().fold(0u64, |d, (&h, &c)| d.wrapping_add(mix(h, c)));
            prop_assert_eq!(t.sum, sum);
            prop_assert_eq!(t.digest, digest);
        }
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
