//! Relaying (issue 14): unicast clusters whose group datagrams travel trees, over many seeds of
//! the simulator — exact under loss, a hot node's egress bounded by the fan-out, a relay that
//! dies, a node that restarts.

use std::time::Duration;

use headcount::cluster::sim::{Capacity, Sim};

const TICK: Duration = Duration::from_millis(100);

/// `n` nodes without multicast (a group datagram is a unicast copy per peer), relaying with
/// fan-out `k` (0: not at all), formed and exact, 1 ms apart.
fn formed(n: usize, k: usize, seed: u64) -> Sim {
    let mut s = Sim::new(n, seed, TICK, move |c| c.relay_fanout = k);
    s.faults.delay = Duration::from_millis(1);
    s.capacity = Capacity {
        unicast_fanout: true,
        ..Capacity::default()
    };
    s.run_for(TICK * 3);
    assert!(
        s.ticks_to_exact(50).is_some(),
        "seed {seed}: the cluster forms"
    );
    s
}

fn relayed(s: &Sim) -> u64 {
    (0..s.len())
        .filter_map(|i| s.node(i))
        .map(|p| p.stats().relayed)
        .sum()
}

#[test]
fn relayed_clusters_are_exact_under_loss() {
    for seed in 0..6 {
        let mut s = formed(40, 4, seed);
        s.faults.loss = 0.05;
        s.burst(seed, 20_000, 500);
        let ticks = s.ticks_to_exact(40);
        assert!(
            ticks.is_some(),
            "seed {seed}: not exact: {:?}",
            s.mismatches().first()
        );
        assert!(relayed(&s) > 0, "seed {seed}: nothing was relayed");
    }
}

#[test]
fn a_hot_nodes_egress_is_its_fanout_not_its_peers() {
    // One node takes every join: without relaying it sends each datagram to its 39 peers; with
    // fan-out 4, to four of them, and the busiest node's tick is a fraction of the other's.
    let mut peak = Vec::new();
    for k in [0, 4] {
        let mut s = formed(40, k, 7);
        s.burst_on(7, 20_000, 2_000, 1);
        assert!(s.ticks_to_exact(40).is_some(), "fan-out {k}: not exact");
        let busiest = (0..s.len())
            .map(|i| s.link(i).peak_bytes_per_tick)
            .max()
            .unwrap_or(0);
        peak.push(busiest);
    }
    assert!(
        peak[1] * 4 < peak[0],
        "busiest tick relayed {} bytes, not relayed {}",
        peak[1],
        peak[0]
    );
}

#[test]
fn a_relay_that_dies_costs_time_not_counts() {
    for seed in 0..4 {
        let mut s = formed(30, 3, seed);
        // Node 1 (id 2) relays for many trees: it dies without a goodbye, then a burst.
        s.crash(1);
        s.faults.loss = 0.01;
        s.burst(seed, 10_000, 300);
        // The others stop counting it after `dead_after` (3 s), and reroute around it.
        let ticks = s.ticks_to_exact(80);
        eprintln!("seed {seed}: exact after {ticks:?} ticks");
        assert!(
            ticks.is_some(),
            "seed {seed}: not exact: {:?}",
            s.mismatches().first()
        );
    }
}

#[test]
fn a_node_restarting_in_a_relayed_cluster_is_counted_again() {
    for seed in 0..4 {
        let mut s = formed(24, 3, seed);
        s.burst(seed, 10_000, 300);
        assert!(s.ticks_to_exact(40).is_some(), "seed {seed}: burst");
        s.restart(5);
        s.faults.loss = 0.02;
        s.burst(seed + 100, 5_000, 300);
        assert!(
            s.ticks_to_exact(60).is_some(),
            "seed {seed}: not exact after the restart: {:?}",
            s.mismatches().first()
        );
    }
}

#[test]
fn observers_hear_a_relayed_cluster() {
    // Two observers (`watch`) beside 20 relaying nodes: they are in no tree (they come and go,
    // and do not hear of each other); every sender sends them their copies itself.
    for seed in 0..3 {
        let mut s = Sim::new(22, seed, TICK, |c| {
            c.relay_fanout = 3;
            c.observer = c.node >= 21;
        });
        s.faults.delay = Duration::from_millis(1);
        s.capacity = Capacity {
            unicast_fanout: true,
            ..Capacity::default()
        };
        s.run_for(TICK * 3);
        s.faults.loss = 0.02;
        s.burst_on(seed, 10_000, 300, 20);
        assert!(
            s.ticks_to_exact(40).is_some(),
            "seed {seed}: not exact: {:?}",
            s.mismatches().first()
        );
        for i in [20, 21] {
            let p = s.node(i).expect("observer");
            assert_eq!(p.remote_total(), 10_000, "seed {seed}: observer {i}");
            assert_eq!(p.stats().relayed, 0, "seed {seed}: observer {i} relayed");
        }
    }
}
