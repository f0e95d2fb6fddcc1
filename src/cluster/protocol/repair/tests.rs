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
            Job::Empty(..) | Job::Parity { .. } => None,
        })
        .collect();
    let once: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(once.len(), seqs.len(), "a datagram queued twice");
    while p.poll_transmit().is_some() {}
}
