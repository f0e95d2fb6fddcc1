//! What a peer's datagrams set while it has gaps, for applying a recovered datagram without
//! setting a topic back (see `recover.rs`).

/// The topics each datagram of a peer set, by its sequence number: a sorted run of hashes per
/// datagram, with the run's least and greatest. Appending is all a datagram costs (a map of the
/// newest setter by topic cost a lookup an entry, and its growth most of the pages a burst's
/// receivers faulted in); a recovered entry, the only one looked up, skips runs older than it or
/// not spanning its hash (a tick's datagrams span disjoint ranges: they go in hash order).
#[derive(Debug, Default)]
pub(super) struct SetBy {
    /// Sequence number, least and greatest hash, and where the run ends in `hashes`.
    runs: Vec<(u64, u64, u64, usize)>,
    hashes: Vec<u64>,
}

impl SetBy {
    /// Hashes set, counted once per datagram that set them.
    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Datagram `seq` set `hashes`; returns how many.
    pub(super) fn note(&mut self, seq: u64, hashes: impl Iterator<Item = u64>) -> usize {
        let start = self.hashes.len();
        self.hashes.extend(hashes);
        let run = &mut self.hashes[start..];
        run.sort_unstable();
        if let (Some(&lo), Some(&hi)) = (run.first(), run.last()) {
            self.runs.push((seq, lo, hi, self.hashes.len()));
        }
        self.hashes.len() - start
    }

    /// Whether datagram `seq` or a later one set `h`.
    pub(super) fn newer(&self, h: u64, seq: u64) -> bool {
        let mut start = 0;
        self.runs.iter().any(|&(s, lo, hi, end)| {
            let run = start..end;
            start = end;
            s >= seq && lo <= h && h <= hi && self.hashes[run].binary_search(&h).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::SetBy;

    proptest! {
        /// `newer` answers as a map of each topic's newest setter would.
        #[test]
        fn newer_agrees_with_the_newest_setter(
            sets in proptest::collection::vec(
                (0u64..40, proptest::collection::vec(0u64..64, 0..12)), 0..24),
            asks in proptest::collection::vec((0u64..64, 0u64..44), 1..40),
        ) {
            let mut by = SetBy::default();
            let mut newest: HashMap<u64, u64> = HashMap::new();
            let mut n = 0;
            for (seq, hashes) in &sets {
                let mut hs = hashes.clone();
                hs.sort_unstable();
                hs.dedup();
                hs.reverse(); // not in order: `note` sorts
                n += by.note(*seq, hs.iter().copied());
                for &h in &hs {
                    let s = newest.entry(h).or_insert(*seq);
                    *s = (*s).max(*seq);
                }
            }
            prop_assert_eq!(by.len(), n);
            prop_assert_eq!(by.is_empty(), n == 0);
            for (h, seq) in asks {
                prop_assert_eq!(by.newer(h, seq), newest.get(&h).is_some_and(|&s| s >= seq));
            }
        }
    }
}
