//! The rotating refresh (simulated): at its full rate — every node's whole table every
//! `refresh_cycle` ticks — only while a peer may lack the table (one appeared), at most
//! `idle_refresh` datagrams a tick the rest of the time, so that what every node hears idle
//! grows with the peers, not with their tables.

mod common;

use common::{TICK, formed};
use headcount::cluster::sim::{Sim, topic_hash};

/// Node 0 of 8 counts `topics` topics; the cluster is exact, and the refresh that new peers
/// started is over. The bytes node 0 sends in the next `ticks` ticks.
fn idle_bytes(seed: u64, topics: u64, ticks: u32, idle_refresh: u32) -> (Sim, u64) {
    let mut s = formed(8, seed, move |c| c.idle_refresh = idle_refresh);
    for t in 0..topics {
        s.set(0, topic_hash(t), 1 + (t % 4) as u32);
    }
    assert!(s.ticks_to_exact(30).is_some(), "seed {seed}: exact");
    s.run_for(TICK * 12);
    let before = s.bytes_sent[0];
    s.run_for(TICK * ticks);
    assert!(s.exact(), "seed {seed}: still exact");
    let sent = s.bytes_sent[0] - before;
    (s, sent)
}

/// Idle, a node with a 30,000-topic table sends about one datagram a tick, where the refresh at
/// its full rate (the former behaviour, `idle_refresh` unbounded) sends its whole table every
/// ten ticks: 360 kB.
#[test]
fn an_idle_node_sends_its_idle_refresh_not_its_table() {
    for seed in 0..3 {
        let (_, idle) = idle_bytes(seed, 30_000, 20, 1);
        let (_, full) = idle_bytes(seed, 30_000, 20, u32::MAX);
        // 20 ticks of one datagram (at most the 1,400-byte budget and its headers).
        assert!(idle <= 20 * 1_500, "seed {seed}: {idle} B idle in 20 ticks");
        // Two cycles of the whole table: 2 × 30,000 entries of 12 bytes, and headers.
        assert!(
            full >= 2 * 30_000 * 12,
            "seed {seed}: {full} B at the full rate"
        );
        assert!(idle * 20 < full, "seed {seed}: {idle} B vs {full} B");
    }
}

/// With the idle refresh off, a copy gone wrong without a trace (no gap: nothing to nack) is
/// still found, by the digest every tick carries, and mended by range digests.
#[test]
fn without_any_idle_refresh_a_wrong_copy_is_still_mended() {
    for seed in 0..3 {
        let (mut s, idle) = idle_bytes(seed, 20_000, 10, 0);
        assert!(idle <= 10 * 100, "seed {seed}: heartbeats only, {idle} B");
        s.corrupt_copy_for_test(5, 0, topic_hash(77), 999);
        assert!(!s.exact());
        let n = s.ticks_to_exact(10);
        assert!(n.is_some_and(|n| n <= 3), "seed {seed}: {n:?} ticks");
    }
}

/// A node that restarts (an empty table, a new incarnation) is a new peer to every other:
/// each refreshes its whole table at the full rate for a cycle, and the restarted node is exact
/// within about that cycle, as it was when the refresh always ran at the full rate.
#[test]
fn a_restarted_node_gets_every_table_within_a_cycle() {
    for seed in 0..3 {
        let mut s = formed(8, seed, |_| {});
        for i in 0..8 {
            for t in 0..3_000 {
                s.set(i, topic_hash(t + 10_000 * i as u64), 2);
            }
        }
        assert!(s.ticks_to_exact(30).is_some(), "seed {seed}: exact");
        s.run_for(TICK * 12);
        let replies = |s: &Sim| s.node(1).map_or(0, |p| p.stats().repair_bytes);
        let before = (s.bytes_sent[1], replies(&s));
        s.restart(3);
        let n = s.ticks_to_exact(30);
        assert!(n.is_some_and(|n| n <= 12), "seed {seed}: {n:?} ticks");
        s.run_for(TICK * 10);
        // Besides what it answered node 3's requests with, node 1 sent its 3,000 entries to
        // the group again (36 kB), not one datagram a tick (14 kB in ten ticks).
        let sent = s.bytes_sent[1] - before.0 - (replies(&s) - before.1);
        assert!(sent >= 3_000 * 12, "seed {seed}: {sent} B from node 1");
    }
}
