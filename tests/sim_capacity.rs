//! The simulator's link capacity and socket buffers (`Capacity`): a burst takes the time its
//! bytes need on a link, and a full buffer drops datagrams the way a host's does. The last
//! tests are what repair achieves under such limits (issue 14).

use std::time::Duration;

use headcount::cluster::sim::{Capacity, Sim};

const TICK: Duration = Duration::from_millis(100);

fn sim(n: usize, seed: u64) -> Sim {
    let mut s = Sim::new(n, seed, TICK, |_| {});
    s.faults.delay = Duration::from_millis(1);
    s.run_for(TICK * 3);
    assert!(s.ticks_to_exact(50).is_some(), "the cluster forms");
    s
}

/// Ticks until exact (checked every tick), at most `max`.
fn ticks(s: &mut Sim, max: u32) -> Option<u32> {
    s.ticks_to_exact(max)
}

#[test]
fn unlimited_capacity_is_the_default_and_costs_nothing() {
    let mut s = sim(8, 1);
    s.burst(1, 20_000, 2_000);
    assert!(ticks(&mut s, 3).is_some());
    for i in 0..s.len() {
        let l = s.link(i);
        assert_eq!((l.dropped_send, l.dropped_recv), (0, 0));
        assert!(l.peak_bytes_per_tick > 0);
    }
}

#[test]
fn a_slow_uplink_spreads_a_burst_over_the_time_its_bytes_need() {
    for seed in 0..3 {
        let mut fast = sim(2, seed);
        let mut slow = sim(2, seed);
        // 20 kB/s: node 0's burst of 3,000 topics (≈ 40 kB of deltas) needs about 2 s to leave.
        slow.capacity = Capacity {
            egress_bytes_per_sec: 20_000,
            ..Capacity::default()
        };
        for t in 0..3_000 {
            fast.set(0, headcount::cluster::sim::topic_hash(t), 1);
            slow.set(0, headcount::cluster::sim::topic_hash(t), 1);
        }
        let f = ticks(&mut fast, 50).expect("fast: exact");
        assert!(f <= 2, "seed {seed}: {f} ticks without a limit");
        slow.run_for(Duration::from_millis(1_000));
        assert!(
            !slow.exact(),
            "seed {seed}: 40 kB crossed a 20 kB/s link within 1 s"
        );
        let s = ticks(&mut slow, 100).expect("slow: exact");
        assert!(
            s >= 8,
            "seed {seed}: exact {s} ticks after the first second"
        );
        assert_eq!(
            slow.link(0).dropped_send,
            0,
            "no send buffer limit: nothing dropped"
        );
    }
}

/// Behind a 200 kB/s uplink with an 8 kB send buffer.
const NARROW: Capacity = Capacity {
    egress_bytes_per_sec: 200_000,
    ingress_bytes_per_sec: 0,
    send_buffer: 8_000,
    recv_buffer: 0,
    unicast_fanout: false,
};

/// Node 0 of two, behind [`NARROW`], takes 20,000 topics (a 250 kB table) at once; with the
/// bytes it had sent before.
fn narrow_burst() -> (Sim, u64) {
    let mut s = sim(2, 7);
    s.capacity = NARROW;
    let sent = s.bytes_sent[0];
    for t in 0..20_000 {
        s.set(0, headcount::cluster::sim::topic_hash(t), 1);
    }
    (s, sent)
}

#[test]
fn a_full_send_buffer_drops_what_the_link_cannot_take() {
    let cap = NARROW;
    let (mut s, sent0) = narrow_burst();
    s.run_for(TICK * 10);
    let l = s.link(0);
    assert!(
        l.dropped_send > 0,
        "a 250 kB burst into an 8 kB buffer dropped nothing: {l:?}"
    );
    // What the socket took is at most what the link carried plus one buffer.
    let took = s.bytes_sent[0] - sent0;
    let carried = cap.egress_bytes_per_sec * 10 / 10 + cap.send_buffer + 1_500;
    assert!(
        took <= carried,
        "{took} B taken by a link that carries {carried} B in 1 s"
    );
    assert!(
        l.peak_bytes_per_tick > took,
        "the protocol offered more than the link took: {l:?}"
    );
}

/// Every node's burst arrives at every other at once: 7 senders into each node's 1 MB/s
/// downlink with a 32 kB buffer.
fn incast(seed: u64) -> Sim {
    let mut s = sim(8, seed);
    s.capacity = Capacity {
        ingress_bytes_per_sec: 1_000_000,
        recv_buffer: 32_000,
        ..Capacity::default()
    };
    s.burst(seed, 80_000, 8_000);
    s
}

#[test]
fn incast_overflows_receive_buffers() {
    for seed in 0..3 {
        let mut s = incast(seed);
        s.run_for(TICK * 5);
        let dropped: u64 = (0..s.len()).map(|i| s.link(i).dropped_recv).sum();
        assert!(dropped > 0, "seed {seed}: no receive buffer overflowed");
    }
}

#[test]
fn unicast_fan_out_sends_a_copy_per_peer() {
    for seed in 0..3 {
        let mut multicast = sim(5, seed);
        let mut unicast = sim(5, seed);
        unicast.capacity.unicast_fanout = true;
        let (m0, u0) = (multicast.bytes_sent[0], unicast.bytes_sent[0]);
        for t in 0..2_000 {
            multicast.set(0, headcount::cluster::sim::topic_hash(t), 1);
            unicast.set(0, headcount::cluster::sim::topic_hash(t), 1);
        }
        assert!(ticks(&mut multicast, 10).is_some() && ticks(&mut unicast, 10).is_some());
        let (m, u) = (multicast.bytes_sent[0] - m0, unicast.bytes_sent[0] - u0);
        // Node 0's burst and heartbeats, four copies each (its replies are unicast either way).
        assert!(
            u >= 3 * m && u <= 4 * m,
            "seed {seed}: unicast {u} B, multicast {m} B"
        );
        assert!(
            unicast.link(0).peak_bytes_per_tick >= 3 * multicast.link(0).peak_bytes_per_tick / 2
        );
    }
}

/// Behind [`NARROW`] with repair paced below the link (`max_repair_rate` 100 kB/s, bursts of
/// 6 kB: below the 8 kB send buffer) and the rotating refresh slowed to fit it (a 250 kB table
/// every 10 ticks would be 250 kB/s: more than the link), the burst the buffer dropped is
/// repaired. (Before repair was paced, a peer that lost a datagram asked for the whole table,
/// the reply went out in one burst into the buffer whose overflow lost it, and this never
/// converged.)
#[test]
fn a_full_send_buffer_is_repaired() {
    let mut s = Sim::new(2, 7, TICK, |c| {
        c.max_repair_rate = 100_000;
        c.repair_burst = 6_000;
        c.refresh_cycle = 100;
    });
    s.faults.delay = Duration::from_millis(1);
    s.run_for(TICK * 3);
    assert!(s.ticks_to_exact(50).is_some(), "the cluster forms");
    s.capacity = NARROW;
    for t in 0..20_000 {
        s.set(0, headcount::cluster::sim::topic_hash(t), 1);
    }
    let n = ticks(&mut s, 300);
    assert!(
        n.is_some(),
        "not repaired within 300 ticks: {:?}",
        s.link(0)
    );
    assert!(
        s.link(0).dropped_send > 0,
        "the burst overflowed the buffer"
    );
}

/// Every node's burst into every other's 1 MB/s downlink with a 32 kB buffer: receive buffers
/// overflow, and repair gets everything through when its pace fits the downlink (seven peers
/// answering at 100 kB/s each, in bursts of 4 kB). Answers are paced by each sender; nothing
/// here tells a sender how much a receiver's downlink takes, so `max_repair_rate` times the
/// peers must fit it (at the default 12.5 MB/s into a 1 MB/s downlink, answers storm as table
/// requests did before).
#[test]
fn incast_is_repaired_when_repair_fits_the_downlink() {
    for seed in 0..3 {
        let mut s = Sim::new(8, seed, TICK, |c| {
            c.max_repair_rate = 100_000;
            c.repair_burst = 4_000;
        });
        s.faults.delay = Duration::from_millis(1);
        s.run_for(TICK * 3);
        assert!(s.ticks_to_exact(50).is_some(), "the cluster forms");
        s.capacity = Capacity {
            ingress_bytes_per_sec: 1_000_000,
            recv_buffer: 32_000,
            ..Capacity::default()
        };
        s.burst(seed, 80_000, 8_000);
        let n = ticks(&mut s, 600);
        let dropped: u64 = (0..s.len()).map(|i| s.link(i).dropped_recv).sum();
        assert!(dropped > 0, "seed {seed}: no receive buffer overflowed");
        assert!(
            n.is_some(),
            "seed {seed}: not exact within 600 ticks ({dropped} dropped)"
        );
    }
}

#[test]
fn peak_bytes_per_tick_is_the_busiest_tick_window() {
    let mut s = sim(2, 3);
    let before = s.link(0).peak_bytes_per_tick;
    for t in 0..5_000 {
        s.set(0, headcount::cluster::sim::topic_hash(t), 1);
    }
    assert!(ticks(&mut s, 20).is_some());
    let after = s.link(0).peak_bytes_per_tick;
    // 5,000 deltas (≈ 65 kB) went out in the tick after the burst; heartbeats are ≈ 100 B.
    assert!(before < 2_000 && after > 50_000, "{before} → {after}");
    assert!(
        after <= s.bytes_sent[0],
        "a window holds at most what was sent"
    );
}
