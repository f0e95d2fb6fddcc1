//! Whether a seed's two runs take turns or run side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use headcount::cluster::sim::TWO_THREADS_FROM;

/// A seed's lossless baseline runs before its lossy run, not beside it, where one run's copies
/// of the peers' tables would take this many bytes or more ([`tables_bytes`]): the lossy run
/// then reuses the baseline's memory, and the seed touches half as much (256 × 100k: 6.5 GB,
/// not 13). Below it, the two side by side take less time (where a cluster's windows are
/// small, a run alone keeps its second core busy less of the time).
pub(super) const IN_TURN_FROM_BYTES: u64 = 1 << 30;

/// About how many bytes one run's copies of the peers' tables take: every node holds the table
/// of every sender but itself, of at most `topics` or the sender's share of `joins` (~14 B an
/// entry).
fn tables_bytes(nodes: usize, senders: usize, topics: u64, joins: u64) -> u64 {
    let senders = (if senders == 0 {
        nodes
    } else {
        senders.min(nodes)
    }) as u64;
    let per_table = topics.min(joins / senders.max(1));
    (nodes as u64)
        .saturating_mul(senders.saturating_sub(1))
        .saturating_mul(per_table)
        .saturating_mul(14)
}

/// Whether a seed's lossless baseline should run before its lossy run rather than beside it: the
/// tables are big ([`IN_TURN_FROM_BYTES`]), and a run's busy windows take both cores
/// (`Sim::spare_cores`: a cluster of [`TWO_THREADS_FROM`] nodes or more, not zoned).
pub(super) fn in_turn(nodes: usize, zones: usize, senders: usize, topics: u64, joins: u64) -> bool {
    zones == 0
        && nodes >= TWO_THREADS_FROM
        && tables_bytes(nodes, senders, topics, joins) >= IN_TURN_FROM_BYTES
}

/// The cores left to lend ([`Sim::spare_cores`](headcount::cluster::sim::Sim::spare_cores))
/// of `cores` while `runs` runs hold one each.
pub(super) fn spare(cores: usize, runs: usize) -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(cores.saturating_sub(runs)))
}

/// Runs a seed's lossless `baseline` and its lossy run (`lossy`), each given the cores no run
/// holds (`Sim::spare_cores`); returns the lossy run's result, then the baseline's.
///
/// `in_turn`: the baseline first, then the lossy run, which reuses its memory; each has the
/// second core for its busy windows. Otherwise the baseline runs on another thread beside the
/// lossy run (up to its burst's end only, so it ends first) and then gives its core back.
pub(super) fn pair<R: Send>(
    in_turn: bool,
    cores: usize,
    baseline: impl FnOnce(&Arc<AtomicUsize>) -> R + Send,
    lossy: impl FnOnce(&Arc<AtomicUsize>) -> R,
) -> (R, R) {
    if in_turn {
        let spare = spare(cores, 1);
        let b = baseline(&spare);
        return (lossy(&spare), b);
    }
    let spare = spare(cores, 2);
    std::thread::scope(|s| {
        let beside = s.spawn(|| {
            let b = baseline(&spare);
            spare.fetch_add(1, Ordering::AcqRel);
            b
        });
        let r = lossy(&spare);
        (r, beside.join().expect("baseline run"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runs whose tables take gigabytes take turns; the comparison suite's smaller ones run
    /// side by side.
    #[test]
    fn big_tables_take_turns() {
        let big = |n, t, j| tables_bytes(n, 0, t, j) >= IN_TURN_FROM_BYTES;
        assert!(big(256, 100_000, 1_000_000), "256 × 100k (3.6 GB a run)");
        assert!(!big(64, 2_000, 100_000), "64 × 2k");
        assert!(!big(256, 2_000, 100_000), "256 × 2k");
        assert!(!big(16, 100_000, 1_000_000), "16 × 100k");
        assert_eq!(tables_bytes(4, 2, 1_000, 1_000), 4 * 14 * 500);
        assert_eq!(tables_bytes(1, 0, 0, 0), 0);
        assert_eq!(tables_bytes(usize::MAX, 0, u64::MAX, u64::MAX), u64::MAX);
    }

    /// Zoned clusters and small ones run side by side whatever their tables.
    #[test]
    fn zoned_and_small_clusters_do_not_take_turns() {
        assert!(in_turn(256, 0, 0, 100_000, 1_000_000));
        assert!(!in_turn(256, 16, 0, 100_000, 1_000_000));
        assert!(!in_turn(TWO_THREADS_FROM - 1, 0, 0, u64::MAX, u64::MAX));
    }
}
