//! Sequence-number ranges: a peer's gaps, the nacks other receivers sent for it, and the runs
//! without topics this node recently repaired to the group.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Gaps kept per peer (past it, the two with the fewest numbers between them are merged).
const MAX_GAPS: usize = 256;
/// Others' nacks remembered per peer, for suppression.
const MAX_ASKED: usize = 64;
/// Empty repairs to the group remembered (for [`unrepaired`]).
const MAX_EMPTIES: usize = 256;

/// `gaps` less every range in `asked` (both inclusive ranges; each gap's pieces in order, the
/// gaps in the order given). `asked` is sorted and merged once, and each gap cut by the ranges
/// that overlap it only: O((n + m) log m), whatever the ranges (one gap less thousands of
/// single numbers was quadratic).
pub(in crate::cluster::protocol) fn subtract(
    gaps: &[(u64, u64)],
    asked: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let merged = merge(asked);
    let mut out = Vec::new();
    for &(lo, hi) in gaps {
        if lo > hi {
            continue;
        }
        // From the first asked range that ends at or after `lo`; `from` is the first number
        // of the gap not yet covered or emitted.
        let mut from = lo;
        let mut covered = false;
        let mut i = merged.partition_point(|r| r.1 < lo);
        while let Some(&(a, b)) = merged.get(i) {
            if a > hi {
                break;
            }
            if a > from {
                out.push((from, a - 1));
            }
            if b >= hi {
                covered = true;
                break;
            }
            // (b < hi: no overflow.)
            from = b + 1;
            i += 1;
        }
        if !covered {
            out.push((from, hi));
        }
    }
    out
}

/// `ranges` sorted, overlapping and adjacent ones joined.
pub(in crate::cluster::protocol) fn merge(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.0 <= r.1).collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (l, h) in v {
        match out.last_mut() {
            Some(last) if l <= last.1.saturating_add(1) => last.1 = last.1.max(h),
            _ => out.push((l, h)),
        }
    }
    out
}

/// Adds the gap `lo..=hi` to a peer's list; past [`MAX_GAPS`], the two gaps with the fewest
/// numbers between them become one. A merged gap asks again for the numbers between (they
/// came): the closest pair costs least. (Once the list held 32, everything was merged into one
/// gap: a burst of more than about 300 datagrams at 10 % loss was asked for whole, and at
/// 16 × 100k a node sent more parity than all its receivers had lost.)
pub(in crate::cluster::protocol) fn add_gap(gaps: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    gaps.push((lo, hi));
    if gaps.len() > MAX_GAPS {
        if !gaps.is_sorted() {
            gaps.sort_unstable();
        }
        let closest = (0..gaps.len() - 1)
            .min_by_key(|&i| gaps[i + 1].0.saturating_sub(gaps[i].1))
            .unwrap_or(0);
        let next = gaps.remove(closest + 1);
        let g = &mut gaps[closest];
        g.1 = g.1.max(next.1);
    }
}

/// Remembers another receiver's nack of `lo..=hi` (oldest forgotten first).
pub(in crate::cluster::protocol) fn add_asked(
    asked: &mut Vec<(u64, u64, Instant)>,
    lo: u64,
    hi: u64,
    now: Instant,
) {
    if asked.len() >= MAX_ASKED {
        asked.remove(0);
    }
    asked.push((lo, hi, now));
}

/// Another receiver's first nack of a peer for parity: the lowest and highest numbers it asked
/// for, how many, and when it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::cluster::protocol) struct Bid {
    pub(in crate::cluster::protocol) lo: u64,
    pub(in crate::cluster::protocol) hi: u64,
    pub(in crate::cluster::protocol) count: u64,
    pub(in crate::cluster::protocol) at: Instant,
}

/// Remembers another receiver's first nack for parity (oldest forgotten first).
pub(in crate::cluster::protocol) fn add_bid(bids: &mut Vec<Bid>, bid: Bid) {
    if bids.len() >= MAX_ASKED {
        bids.remove(0);
    }
    bids.push(bid);
}

/// Whether another receiver's first nack asked for at least as many numbers as `gaps` (a
/// first nack's) holds, all within one block's span together with them: a block is answered
/// with as many symbols as the largest of a round's first nacks asks for, each of which
/// repairs any one loss, so that answer serves these gaps too. Counted, not matched: with
/// hundreds of receivers no two miss the same datagrams, and a receiver held back only when
/// others had asked for each of its numbers nacked at 256 nodes as often as not. (A span
/// across two blocks may hold fewer of one block's numbers than `gaps` does; such a receiver
/// asks again a round later.)
pub(in crate::cluster::protocol) fn outbid(gaps: &[(u64, u64)], bids: &[Bid]) -> bool {
    let (Some(lo), Some(hi)) = (
        gaps.iter().map(|g| g.0).min(),
        gaps.iter().map(|g| g.1).max(),
    ) else {
        return false;
    };
    let need = gaps
        .iter()
        .map(|&(l, h)| h.saturating_sub(l).saturating_add(1))
        .fold(0, u64::saturating_add);
    bids.iter()
        .any(|b| b.count >= need && b.hi.max(hi) - b.lo.min(lo) < crate::cluster::wire::BLOCK)
}

/// Of a run `lo..=hi` of this node's sequence numbers that carried no topics, asked for by a
/// nack to the group, the pieces no empty repair to the group covered within `hold` (`sent`:
/// the runs repaired, and when); notes this one. Every receiver that missed a heartbeat asks
/// for it, and the first repair answers them all (at 256 nodes and 10 % loss each heartbeat was
/// otherwise repaired once a nack: twice the empty repairs).
pub(in crate::cluster::protocol) fn unrepaired(
    sent: &mut VecDeque<(u64, u64, Instant)>,
    (now, hold): (Instant, Duration),
    (lo, hi): (u64, u64),
) -> Vec<(u64, u64)> {
    while sent
        .front()
        .is_some_and(|e| now.saturating_duration_since(e.2) >= hold)
    {
        sent.pop_front();
    }
    let recent: Vec<(u64, u64)> = sent.iter().map(|e| (e.0, e.1)).collect();
    if sent.len() >= MAX_EMPTIES {
        sent.pop_front();
    }
    sent.push_back((lo, hi, now));
    subtract(&[(lo, hi)], &recent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first nack is outbid by another that asked for as many numbers, within one block's
    /// span of its own: not by fewer, nor by one whose numbers lie a block or more away.
    #[test]
    fn a_bid_of_as_many_within_a_block_outbids() {
        let at = Instant::now();
        let bid = |lo, hi, count| Bid { lo, hi, count, at };
        let gaps = [(10, 10), (20, 21)];
        assert!(outbid(&gaps, &[bid(11, 30, 3)]));
        assert!(outbid(&gaps, &[bid(1, 2, 2), bid(5, 40, 4)]));
        assert!(!outbid(&gaps, &[bid(11, 30, 2)]));
        let far = 10 + crate::cluster::wire::BLOCK;
        assert!(!outbid(&gaps, &[bid(far - 3, far, 4)]));
        assert!(outbid(&gaps, &[bid(far - 4, far - 1, 4)]));
        assert!(!outbid(&[], &[bid(1, 2, 2)]));
        assert!(!outbid(&gaps, &[]));
    }

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

    /// `subtract` agrees with a number-by-number model: each gap's numbers not asked for, in
    /// runs, the gaps in their order.
    #[test]
    fn subtract_agrees_with_a_model() {
        use proptest::prelude::*;
        let r = (0u64..300).prop_flat_map(|lo| (Just(lo), lo..lo + 40));
        proptest!(|(gaps in proptest::collection::vec(r.clone(), 0..8),
                    asked in proptest::collection::vec(r, 0..40))| {
            let mut want = Vec::new();
            for &(lo, hi) in &gaps {
                let mut run: Option<(u64, u64)> = None;
                for n in lo..=hi {
                    if asked.iter().any(|&(a, b)| (a..=b).contains(&n)) {
                        want.extend(run.take());
                    } else {
                        run = Some(run.map_or((n, n), |(l, _)| (l, n)));
                    }
                }
                want.extend(run);
            }
            prop_assert_eq!(subtract(&gaps, &asked), want);
        });
    }

    #[test]
    fn a_full_gap_list_merges_the_closest_gaps() {
        let mut g = Vec::new();
        for i in 0..MAX_GAPS as u64 + 3 {
            add_gap(&mut g, 10 * i + 1, 10 * i + 2);
        }
        // The list is full: the 3 gaps past it each merged two neighbours 9 numbers apart, the
        // first gap below merges one more such pair, the second the two 1 apart.
        add_gap(&mut g, 10_000, 10_000);
        add_gap(&mut g, 10_002, 10_002);
        assert_eq!(g.len(), MAX_GAPS);
        assert_eq!(g.first().map(|x| x.0), Some(1));
        assert!(g.contains(&(10_000, 10_002)), "the closest pair merged");
        // Everything that was missed is still asked for, and few numbers that came are.
        let asked: u64 = g.iter().map(|&(lo, hi)| hi - lo + 1).sum();
        let missed = 2 * (MAX_GAPS as u64 + 3) + 2;
        assert!(
            asked >= missed && asked <= missed + 4 * 8 + 1,
            "{asked} asked"
        );
        for i in 0..MAX_GAPS as u64 + 3 {
            assert!(
                g.iter()
                    .any(|&(lo, hi)| lo <= 10 * i + 1 && 10 * i + 2 <= hi)
            );
        }
    }
}
