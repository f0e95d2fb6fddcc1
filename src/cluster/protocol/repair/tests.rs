//! Unit tests of the sending side of repair.

use super::*;

/// A nack of everything, on a node with a long history of one-topic datagrams between
/// heartbeats, queues a bounded number of repairs, and again. (It once scanned the queue
/// for every empty run it added: quadratic in the history.)
#[test]
fn a_nack_of_a_long_history_queues_a_bounded_number() {
    use crate::cluster::protocol::{Config, Protocol};
    use crate::cluster::wire::Seal;
    let now = Instant::now();
    let mut c = Config::new(1, 1, Duration::from_millis(100));
    c.max_repair_rate = 1_000_000;
    let mut p = Protocol::new(c, Seal::new("p", b"k"));
    // Every other sequence number a delta (the others heartbeats: runs of empty repairs).
    for seq in (2..=200_000u64).step_by(2) {
        p.keep_sent(now, seq, false, vec![seq], None);
    }
    p.seq = 200_000;
    for _ in 0..3 {
        p.nacked(now, None, (0, u64::MAX), None);
        assert!(
            p.repairs.queue.len() <= MAX_QUEUE,
            "{}",
            p.repairs.queue.len()
        );
    }
    // Each history entry is queued once however often it is asked for.
    let seqs: Vec<u64> = p
        .repairs
        .queue
        .iter()
        .filter_map(|j| match j {
            Job::Seq(s) => Some(*s),
            Job::Empty(..) | Job::Parity { .. } => None,
        })
        .collect();
    let once: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(once.len(), seqs.len(), "a datagram queued twice");
    while p.poll_transmit().is_some() {}
}

/// Heartbeats several receivers missed, asked for in different nacks (overlapping gaps), are
/// repaired to the group once within the nack window, and again after it (a receiver that
/// missed the repair too asks again later). A repair to a direct asker is not held back.
#[test]
fn an_empty_run_goes_to_the_group_once_per_window() {
    use crate::cluster::protocol::{Config, Protocol};
    use crate::cluster::wire::Seal;
    let now = Instant::now();
    let tick = Duration::from_millis(100);
    let mut c = Config::new(1, 1, tick);
    // (A bucket that barely refills, held empty: the queue can be read.)
    c.max_repair_rate = 1;
    let mut p = Protocol::new(c, Seal::new("p", b"k"));
    // Deltas at 10 and 20; the others heartbeats.
    p.keep_sent(now, 10, false, vec![1], None);
    p.keep_sent(now, 20, false, vec![2], None);
    p.seq = 30;
    let empties = |p: &mut Protocol| {
        let mut v = Vec::new();
        while let Some(j) = p.repairs.queue.pop_front() {
            if let Job::Empty(lo, hi, to) = j {
                v.push((lo, hi, to.is_some()));
            }
        }
        v
    };
    p.repairs.tokens = 0.0;
    p.nacked(now, None, (3, 12), None);
    assert_eq!(empties(&mut p), [(3, 9, false), (11, 12, false)]);
    // A second receiver missed 5..=15: only 13..=15 was not repaired yet.
    let soon = now + Duration::from_millis(5);
    p.nacked(soon, None, (5, 15), None);
    assert_eq!(empties(&mut p), [(13, 15, false)]);
    // A relaying asker gets its own.
    let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
    p.nacked(soon, Some(to), (5, 9), Some(2));
    assert_eq!(empties(&mut p), [(5, 9, true)]);
    // Past the window, the same loss is repaired again.
    let later = now + p.cfg.nack_window * 2;
    p.nacked(later, None, (5, 9), None);
    assert_eq!(empties(&mut p), [(5, 9, false)]);
}

/// A first nack's moment is below the window, and rarely early where many receivers may nack:
/// with 256 of them about 2 % of moments fall in the window's first tenth (evenly drawn, 10 %),
/// while with 2 the draw is nearly even.
#[test]
fn first_moments_are_rarely_early_in_a_big_group() {
    let max = Duration::from_millis(10);
    let early = |receivers: usize| {
        let mut r = Repairs::new(Instant::now(), 0.0, 7);
        let n = 20_000;
        let mut early = 0;
        for _ in 0..n {
            let t = r.first_moment(max, receivers);
            assert!(t < max);
            if t < max / 10 {
                early += 1;
            }
        }
        early as f64 / n as f64
    };
    let big = early(256);
    assert!((0.01..0.035).contains(&big), "{big}");
    let small = early(2);
    assert!((0.07..0.11).contains(&small), "{small}");
}
