//! Sequence-number ranges: a peer's gaps, and the nacks other receivers sent for it.

use std::time::Instant;

/// Gaps kept per peer (more are merged into one).
const MAX_GAPS: usize = 32;
/// Others' nacks remembered per peer, for suppression.
const MAX_ASKED: usize = 64;

/// `gaps` less every range in `asked` (both inclusive ranges; the result in order).
pub(in crate::cluster::protocol) fn subtract(
    gaps: &[(u64, u64)],
    asked: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(lo, hi) in gaps {
        let mut parts = vec![(lo, hi)];
        for &(a, b) in asked {
            parts = parts
                .into_iter()
                .flat_map(|(l, h)| {
                    let mut v = Vec::with_capacity(2);
                    if b < l || a > h {
                        v.push((l, h));
                    } else {
                        if a > l {
                            v.push((l, a - 1));
                        }
                        if b < h {
                            v.push((b + 1, h));
                        }
                    }
                    v
                })
                .collect();
        }
        out.extend(parts);
    }
    out
}

/// Adds the gap `lo..=hi` to a peer's list, merging everything once the list is full.
pub(in crate::cluster::protocol) fn add_gap(gaps: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    if gaps.len() >= MAX_GAPS {
        let first = gaps.first().map_or(lo, |g| g.0.min(lo));
        gaps.clear();
        gaps.push((first, hi));
    } else {
        gaps.push((lo, hi));
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

#[cfg(test)]
mod tests {
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
}
