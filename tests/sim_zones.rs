//! Zones (simulated, `Sim::zoned`): the level above a flat cluster. Each node keeps its zone
//! peers' tables and one table per other zone, published there by that zone's speaker; every
//! view is exact after bursts under loss, and after a speaker crashes, leaves or comes back.

#[allow(dead_code)] // its TICK only
mod common;

use std::time::{Duration, Instant};

use common::TICK;
use headcount::cluster::protocol::Config;
use headcount::cluster::sim::{LISTENER_HEARTBEAT_EVERY, Sim, topic_hash};

/// `n` nodes in `zones` zones, formed: every zone has its speaker and every view is exact.
fn zoned(n: usize, zones: usize, seed: u64) -> Sim {
    let mut s = Sim::zoned(n, zones, seed, TICK, |_| {});
    s.faults.delay = Duration::from_millis(1);
    s.run_for(TICK * 6);
    assert!(
        s.ticks_to_exact(50).is_some(),
        "seed {seed}: the cluster forms"
    );
    s
}

/// The nodes speaking for zone `z`.
fn speakers(s: &Sim, z: u16) -> Vec<usize> {
    (0..s.len())
        .filter(|&i| s.zone(i) == Some(z) && s.speaks(i))
        .collect()
}

/// Ticks a crashed node's peers wait before they drop it.
fn dead_ticks() -> u32 {
    (Config::new(1, 1, TICK).dead_after.as_millis() / TICK.as_millis()) as u32
}

#[test]
fn a_zoned_cluster_is_exact_after_bursts_under_loss() {
    for seed in 0..6 {
        // Zones of 6 and 7 nodes (26 over 4).
        let mut s = zoned(26, 4, seed);
        for z in 1..=4 {
            // The zone's first node: the lowest id among equally old members.
            let first = (0..26).find(|&i| s.zone(i) == Some(z)).unwrap();
            assert_eq!(speakers(&s, z), vec![first], "seed {seed}: zone {z}");
        }
        s.faults.loss = 0.1;
        s.burst(seed, 20_000, 2_000);
        let t = s.ticks_to_exact(30);
        assert!(t.is_some(), "seed {seed}: {:?}", s.mismatches().first());
        // Leaves too: every node leaves each of the 500 hottest topics once, and a third of
        // the nodes leave everything.
        for i in 0..26 {
            for t in 0..500 {
                s.add(i, topic_hash(t * t / 2_000), -1);
            }
        }
        for i in (0..26).step_by(3) {
            for t in 0..2_000 {
                s.set(i, topic_hash(t), 0);
            }
        }
        let t = s.ticks_to_exact(30);
        assert!(t.is_some(), "seed {seed}: {:?}", s.mismatches().first());
    }
}

/// What zones are for: a node holds its zone peers' tables and one per other zone, not one per
/// node of the cluster.
#[test]
fn a_node_keeps_its_zone_peers_and_one_table_per_other_zone() {
    let mut s = zoned(32, 4, 7);
    s.burst(7, 40_000, 3_000);
    assert!(s.ticks_to_exact(30).is_some());
    let now = Instant::now();
    let n = s.len();
    for i in 0..n {
        let inner = s.endpoint(i).unwrap().nodes(now);
        let outer = s.endpoint(n + i).unwrap().nodes(now);
        let tables = |v: &[headcount::cluster::protocol::NodeInfo]| {
            v.iter().filter(|p| p.alive && p.topics > 0).count()
        };
        // Its 7 zone peers, every one counting something after 1,250 joins each.
        assert_eq!((inner.len(), tables(&inner)), (7, 7), "node {i}");
        // The 24 nodes of the other zones are heard; only their 3 speakers have tables.
        assert_eq!((outer.len(), tables(&outer)), (24, 3), "node {i}");
    }
}

/// A speaker that crashes is dropped by its zone mates and by the other zones alike; the next
/// oldest mate speaks for the zone, and every view is exact again without the crashed node's
/// counts.
#[test]
fn the_zone_mates_of_a_crashed_speaker_take_over() {
    for seed in 0..4 {
        let mut s = zoned(24, 3, seed);
        s.faults.loss = 0.05;
        s.burst(seed, 20_000, 1_500);
        assert!(s.ticks_to_exact(30).is_some(), "seed {seed}");
        assert_eq!(speakers(&s, 1), vec![0]);
        let topics: Vec<u64> = (0..1_500).map(topic_hash).collect();
        let stale: Vec<u64> = topics.iter().map(|&h| s.truth(h)).collect();
        s.crash(0);
        assert!(!s.exact(), "seed {seed}: node 0 counted something");
        // Until every view is exact, no node counts the zone twice (the new speaker's table
        // beside the dead one's): at most what the cluster counted before the crash.
        let mut ms = 0;
        while !s.exact() && ms < 5_000 {
            for i in 1..s.len() {
                for (k, &h) in topics.iter().enumerate() {
                    assert!(
                        s.view(i, h) <= stale[k],
                        "seed {seed}: node {i} counts {} of topic {k} at {ms} ms, {} before",
                        s.view(i, h),
                        stale[k]
                    );
                }
            }
            s.run_for(Duration::from_millis(20));
            ms += 20;
        }
        let t = s.ticks_to_exact(dead_ticks() + 10);
        assert!(
            t == Some(0) && ms >= (dead_ticks() - 1) * 100,
            "seed {seed}: {ms} ms, {:?}",
            s.mismatches().first()
        );
        assert_eq!(speakers(&s, 1), vec![1], "seed {seed}");
        // The new speaker carries the zone: a join on one of its mates reaches every zone.
        s.add(5, topic_hash(1), 3);
        assert!(s.ticks_to_exact(5).is_some(), "seed {seed}");
    }
}

/// A speaker that shuts down says goodbye in both groups: it is replaced in a few ticks, not
/// after the silence that drops a crashed one.
#[test]
fn a_speaker_that_leaves_is_replaced_at_once() {
    for seed in 0..4 {
        let mut s = zoned(24, 3, seed);
        s.burst(seed, 20_000, 1_500);
        assert!(s.ticks_to_exact(30).is_some(), "seed {seed}");
        s.stop(8);
        let t = s.ticks_to_exact(10);
        assert!(t.is_some_and(|t| t <= 4), "seed {seed}: {t:?} ticks");
        assert_eq!(speakers(&s, 2), vec![9], "seed {seed}");
    }
}

/// A restarted node is younger than its zone mates (a new incarnation): it does not take the
/// zone back from the one that replaced it, and the zone does not switch speakers again.
#[test]
fn a_restarted_elder_does_not_take_its_zone_back() {
    let mut s = zoned(16, 2, 3);
    s.burst(3, 10_000, 1_000);
    assert!(s.ticks_to_exact(30).is_some());
    s.stop(0);
    assert!(s.ticks_to_exact(10).is_some());
    let switches = s.speaker_switches();
    s.restart(0);
    for t in 0..100 {
        s.add(0, topic_hash(t), 2);
    }
    assert!(s.ticks_to_exact(30).is_some());
    s.run_for(TICK * 10);
    assert!(s.exact());
    assert_eq!(speakers(&s, 1), vec![1]);
    assert_eq!(s.speaker_switches(), switches);
}

/// In the cross-zone group, where every node of every zone is a member, a node that does not
/// speak for its zone sends a heartbeat every `LISTENER_HEARTBEAT_EVERY` ticks and nothing
/// else; its zone's speaker sends every tick.
#[test]
fn listeners_are_quiet_in_the_cross_zone_group() {
    let mut s = zoned(16, 4, 2);
    s.burst(2, 8_000, 800);
    assert!(s.ticks_to_exact(30).is_some());
    s.run_for(TICK * 12);
    let n = s.len();
    let before: Vec<u64> = s.bytes_sent.clone();
    s.run_for(TICK * 20);
    for i in 0..n {
        let sent = s.bytes_sent[n + i] - before[n + i];
        if s.speaks(i) {
            assert!(sent >= 20 * 60, "speaker {i}: {sent} B in 20 ticks");
        } else {
            // 4 heartbeats (of 60 to 120 bytes), where one a tick was 20.
            assert_eq!(LISTENER_HEARTBEAT_EVERY, 5);
            assert!(
                (3 * 60..=4 * 120).contains(&sent),
                "listener {i}: {sent} B in 20 ticks"
            );
        }
    }
}

/// A speaker that stops speaking while alive (its elder, cut off by a partition, is heard
/// again) zeroes everything it published, also a topic whose sum left the zone in the same
/// outer tick (found in review: 17 of 40 runs kept such a count in the other zones for good).
#[test]
fn a_speaker_that_steps_down_zeroes_all_it_published() {
    let x = topic_hash(7);
    for seed in 0..4 {
        for offset in 0..10 {
            let mut s = zoned(9, 3, seed);
            s.set(2, x, 5);
            assert!(s.ticks_to_exact(10).is_some());
            // Node 0 alone: node 1 speaks for the rest of zone 1, node 0 for itself.
            s.partition(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
            s.run_for(TICK * 40);
            assert_eq!(speakers(&s, 1), vec![0, 1], "seed {seed}");
            s.heal();
            s.run_for(Duration::from_millis(10 * offset));
            s.set(2, x, 0);
            s.run_for(TICK * 60);
            assert_eq!(speakers(&s, 1), vec![0], "seed {seed}, {offset}");
            assert!(
                s.exact(),
                "seed {seed}, {offset} × 10 ms: {:?}",
                s.mismatches().first()
            );
        }
    }
}

/// Which mate is eldest goes by start, not by how often a node restarted: a node restarted
/// after the current speaker started, however low its id, does not take the zone over (found
/// in review: with per-node restart counts, it did, and the zone went missing meanwhile).
#[test]
fn a_later_start_with_a_lower_id_does_not_take_over() {
    let mut s = zoned(4, 2, 1);
    s.restart(1);
    s.run_for(TICK * 10);
    assert_eq!(speakers(&s, 1), vec![0]);
    s.stop(0);
    s.run_for(TICK * 10);
    assert_eq!(speakers(&s, 1), vec![1]);
    s.set(1, topic_hash(1), 4);
    assert!(s.ticks_to_exact(10).is_some());
    let switches = s.speaker_switches();
    s.restart(0);
    for _ in 0..20 {
        s.run_for(TICK / 2);
        assert_eq!(s.view(2, topic_hash(1)), 4, "zone 1 missing from zone 2");
    }
    assert_eq!(speakers(&s, 1), vec![1]);
    assert_eq!(s.speaker_switches(), switches);
}

/// A zone member knows its zone's names in the cross-zone group too. A speaker does not announce
/// there a name another zone's speaker counts; that zone's members refuse their own speaker's
/// datagrams there, so they never heard its announcement, and asked: 49–76 names requests a
/// seed here before. With the node's inner names given to its outer protocol, 0–12 (a name the
/// inner group learns after the outer count came).
#[test]
fn a_lossless_zoned_burst_asks_for_few_names() {
    for seed in 0..8 {
        let mut s = zoned(24, 4, seed);
        let asked = |s: &Sim| -> u64 {
            (0..s.endpoints())
                .filter_map(|e| s.endpoint(e))
                .map(|p| p.stats().resync_requests)
                .sum()
        };
        let before = asked(&s);
        s.burst(seed, 20_000, 2_000);
        assert!(s.ticks_to_exact(30).is_some(), "seed {seed}");
        let names_asked = asked(&s) - before;
        assert!(names_asked <= 20, "seed {seed}: {names_asked} requests");
    }
}
