//! A burst of a million new topics on one node of two (a stress test, run by name):
//!
//! ```text
//! cargo test --release --test burst -- --ignored --nocapture
//! ```
//!
//! Before ticks were bounded, the bursting node's ticks took 1.5–2.2 s, and with dead-after 1 s
//! its peer dropped it (its total to 0 and back), twice. Now the work is spread over ticks within
//! budgets, and neither node ever takes the other for dead. It prints the tick durations it saw;
//! the figures are in perf/RESULTS.md.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use headcount::Engine;

#[test]
#[ignore = "a stress test: a million topics, about a minute"]
fn a_million_new_topics_never_make_a_busy_node_look_dead() {
    let n: usize = std::env::var("BURST_TOPICS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let g = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 94, 1),
        30_000 + (std::process::id() % 20_000) as u16,
    );
    let cluster = format!("burst-{}", std::process::id());
    let node = || {
        Engine::builder()
            .shards(1)
            .multicast(g)
            .cluster_name(&cluster)
            .cluster_key("burst test key")
            .tick(Duration::from_millis(100))
            .dead_after(Duration::from_secs(1))
            .max_topics(2 * n)
            .start()
            .unwrap()
    };
    let (a, b) = (node(), node());
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.nodes().is_empty() || a.nodes().is_empty() {
        assert!(Instant::now() < deadline, "the two nodes never met");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut shard = a.shard().unwrap();
    let start = Instant::now();
    let held: Vec<_> = (0..n)
        .map(|i| shard.join_by_name(&format!("t{i}")))
        .collect();
    eprintln!("joined {n} topics in {:?}", start.elapsed());
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not exact: a {} b {}",
            a.total(),
            b.total()
        );
        std::thread::sleep(Duration::from_millis(100));
        if a.total() == n as u64
            && b.total() == n as u64
            && b.count_by_name(&format!("t{}", n - 1)) == 1
        {
            break;
        }
    }
    let (sa, sb) = (a.stats(), b.stats());
    let (ca, cb) = (a.cluster_stats().unwrap(), b.cluster_stats().unwrap());
    eprintln!(
        "exact on both {:?} after the joins; longest tick: a {:?}, b {:?}; peers died: a {}, b {}; \
         resync bytes sent by a {}",
        start.elapsed(),
        sa.max_tick,
        sb.max_tick,
        ca.protocol.peers_died,
        cb.protocol.peers_died,
        ca.protocol.repair_bytes
    );
    assert_eq!(ca.protocol.peers_died, 0, "a took b for dead");
    assert_eq!(cb.protocol.peers_died, 0, "b took a for dead");
    drop(held);
}
