//! Unit tests of the sending side of repair.

use super::*;

#[test]
fn subtract_cuts_ranges() {
    assert_eq!(subtract(&[(1, 10)], &[]), vec![(1, 10)]);
    assert_eq!(subtract(&[(1, 10)], &[(1, 10)]), vec![]);
    assert_eq!(subtract(&[(1, 10)], &[(0, 20)]), vec![]);
    assert_eq!(subtract(&[(1, 10)], &[(4, 6)]), vec![(1, 3), (7, 10)]);
    assert_eq!(
        subtract(&[(1, 10), (20, 30)], &[(8, 22)]),
        vec![(1, 7), (23, 30)]
    );
    assert_eq!(subtract(&[(5, 5)], &[(6, 9), (0, 4)]), vec![(5, 5)]);
    assert_eq!(subtract(&[(0, u64::MAX)], &[(0, 0)]), vec![(1, u64::MAX)]);
}

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
        p.keep_sent(seq, false, vec![seq]);
    }
    p.seq = 200_000;
    for _ in 0..3 {
        p.nacked(now, None, (0, u64::MAX), false);
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
            Job::Empty(..) => None,
        })
        .collect();
    let once: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(once.len(), seqs.len(), "a datagram queued twice");
    while p.poll_transmit().is_some() {}
}

#[test]
fn a_full_gap_list_merges() {
    let mut g = Vec::new();
    for i in 0..MAX_GAPS as u64 + 3 {
        add_gap(&mut g, 10 * i + 1, 10 * i + 2);
    }
    assert!(g.len() <= MAX_GAPS);
    assert_eq!(g.first().map(|x| x.0), Some(1));
    assert_eq!(g.last().map(|x| x.1), Some(10 * (MAX_GAPS as u64 + 2) + 2));
}
