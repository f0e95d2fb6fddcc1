//! The cluster aggregate: each topic's sum over the peers' tables, their total, and which sums
//! changed since they were last reported ([`Sums`]).

use super::open::Open;

/// A sum whose change waits to be reported (the top bit of its value: a sum over peers' u32
/// counts, at most 2^21 peers, stays far below it).
const CHANGED: u64 = 1 << 63;

/// Each topic some peer counts, with the sum of the peers' counts (never 0: a topic no peer
/// counts is not here), their total, and the topics whose sums changed since
/// [`Sums::take_changed`].
///
/// A change is marked in the sum's own entry, which the change had to find anyway: one lookup
/// an entry, where a set of changed topics beside the map was a second cache miss for every
/// entry a peer sends (each is a lookup in a topic-sized table). The changed topics are also
/// listed, once each, as their marks are set; a topic whose sum left (and so its entry and its
/// mark) is listed again if it comes back: [`Sums::take_changed`] removes the repeats.
#[derive(Debug, Default)]
pub(super) struct Sums {
    map: Open<u64>,
    total: u64,
    changed: Vec<u64>,
    /// Where the list is next compacted (0: at the default, see [`Sums::sub`]).
    compact_at: usize,
    /// Compactions so far.
    compactions: u64,
}

impl Sums {
    /// No sums; `seed` places the hashes in the table ([`Open::new`]).
    pub(super) fn new(seed: u64) -> Sums {
        Sums {
            map: Open::new(seed),
            ..Sums::default()
        }
    }

    /// The sum of `hash` (0: no peer counts it).
    pub(super) fn get(&self, hash: u64) -> u64 {
        self.map.get(hash).map_or(0, |s| s & !CHANGED)
    }

    /// Starts loading `hash`'s sum into the cache (see [`Open::prefetch`]).
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        self.map.prefetch(hash);
    }

    /// Whether some peer counts `hash`.
    pub(super) fn contains(&self, hash: u64) -> bool {
        self.map.contains_key(hash)
    }

    /// The sum of every count of every peer.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Every topic some peer counts, with its sum, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(h, &s)| (h, s & !CHANGED))
    }

    /// Whether some sum changed since the last [`Sums::take_changed`].
    pub(super) fn any_changed(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Marks `hash`'s `sum` changed, and lists it unless it was marked already.
    fn mark(changed: &mut Vec<u64>, hash: u64, sum: &mut u64) {
        if *sum & CHANGED == 0 {
            *sum |= CHANGED;
            changed.push(hash);
        }
    }

    /// A peer's count `c` (not 0) of `hash` joins the sum; true when it is new (no peer
    /// counted the topic before).
    pub(super) fn add(&mut self, hash: u64, c: u32) -> bool {
        debug_assert!(c != 0);
        self.total += u64::from(c);
        match self.map.get_mut(hash) {
            Some(s) => {
                *s += u64::from(c);
                Self::mark(&mut self.changed, hash, s);
                false
            }
            None => {
                self.map.insert(hash, u64::from(c) | CHANGED);
                self.changed.push(hash);
                true
            }
        }
    }

    /// A peer's count `c` (not 0) of `hash` leaves the sum; true when the topic left (no peer
    /// counts it now). The change is marked either way.
    pub(super) fn sub(&mut self, hash: u64, c: u32) -> bool {
        let Some(s) = self.map.get_mut(hash) else {
            self.changed.push(hash);
            return false;
        };
        debug_assert!(*s & !CHANGED >= u64::from(c));
        self.total -= u64::from(c);
        if *s & !CHANGED != u64::from(c) {
            *s -= u64::from(c);
            Self::mark(&mut self.changed, hash, s);
            return false;
        }
        // The sum leaves with its entry. (Not through 0 in place: a slot holding 0 is a free
        // one to the table, and the entries after it would be lost to their searches.)
        let marked = *s & CHANGED != 0;
        self.map.remove(hash);
        if !marked {
            self.changed.push(hash);
        }
        if self.changed.len() > (2 * self.map.len() + 1024).max(self.compact_at) {
            // Topics coming and going with nobody taking the changes: drop the repeats, so the
            // list stays within the topics that changed. When they are all different (nothing
            // to drop) the next compaction waits for the list to double: each costs a sort,
            // and a sort at every removal would make a long run of them quadratic.
            self.changed.sort_unstable();
            self.changed.dedup();
            self.compact_at = 2 * self.changed.len();
            self.compactions += 1;
        }
        true
    }

    /// A peer's count of `hash` moves from `old` to `c` (neither 0): the sum moves in one step.
    pub(super) fn replace(&mut self, hash: u64, old: u32, c: u32) {
        match self.map.get_mut(hash) {
            Some(s) => {
                debug_assert!(*s & !CHANGED >= u64::from(old));
                *s = *s - u64::from(old) + u64::from(c);
                self.total = self.total - u64::from(old) + u64::from(c);
                Self::mark(&mut self.changed, hash, s);
            }
            None => self.changed.push(hash),
        }
    }

    /// The topics whose sums changed since the last call, each once (in hash order); their
    /// marks are cleared.
    pub(super) fn take_changed(&mut self) -> Vec<u64> {
        let mut changed = std::mem::take(&mut self.changed);
        self.compact_at = 0;
        changed.sort_unstable();
        changed.dedup();
        for h in &changed {
            if let Some(s) = self.map.get_mut(*h) {
                *s &= !CHANGED;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_follow_counts_and_report_each_change_once() {
        let mut s = Sums::default();
        assert!(s.add(7, 2));
        assert!(!s.add(7, 3));
        s.replace(7, 3, 4);
        assert_eq!((s.get(7), s.total()), (6, 6));
        assert!(s.add(9, 1));
        assert_eq!(s.take_changed(), vec![7, 9]);
        assert!(!s.any_changed());
        // Gone and back before the report: listed once, with its mark cleared after.
        assert!(s.sub(9, 1));
        assert!(!s.contains(9));
        assert!(s.add(9, 5));
        assert!(!s.sub(7, 2));
        assert_eq!((s.get(7), s.get(9), s.total()), (4, 5, 9));
        assert_eq!(s.take_changed(), vec![7, 9]);
        s.add(9, 1);
        assert_eq!(s.take_changed(), vec![9], "marked again after the report");
        // A change to a topic not counted (a peer's count the sum never saw) is still a change.
        assert!(!s.sub(11, 1));
        assert_eq!(s.take_changed(), vec![11]);
        assert_eq!(s.get(11), 0);
    }

    /// Found by the engine's churn test: a sum that left was zeroed in its slot before its
    /// removal, and a zero marks a free slot, so the removal found nothing and the topics
    /// searched past it were lost. Here many share one home slot (one run): every other
    /// stays, after each leaves.
    #[test]
    fn a_sum_that_leaves_keeps_its_neighbours() {
        let mut s = Sums {
            map: Open::unmixed(),
            ..Sums::default()
        };
        let same_home = |i: u64| (1 << 60) | i;
        for i in 0..6 {
            s.add(same_home(i), 1);
        }
        s.take_changed();
        for gone in 0..6 {
            assert!(s.sub(same_home(gone), 1));
            for i in gone + 1..6 {
                assert_eq!(s.get(same_home(i)), 1, "{i} after {gone} left");
            }
            assert_eq!(s.map.len(), (5 - gone) as usize);
        }
        assert_eq!(s.total(), 0);
    }

    /// Random peers' counts coming, changing and leaving (few topics, crowded into a few home
    /// slots) against sums recomputed from scratch; the changes reported are exactly the
    /// topics touched since the last report.
    #[test]
    fn sums_agree_with_the_counts_they_follow() {
        let mut next = super::super::open::test_rng(0x0dd_ba11_5eed);
        let mut s = Sums {
            map: Open::unmixed(),
            ..Sums::default()
        };
        // counts[(peer, topic)]
        let mut counts: std::collections::HashMap<(u64, u64), u32> = Default::default();
        let mut touched = std::collections::BTreeSet::new();
        for step in 0..50_000 {
            let h = (next() % 40) | ((next() % 3) << 62);
            let peer = next() % 4;
            let old = counts.get(&(peer, h)).copied().unwrap_or(0);
            let c = if next().is_multiple_of(3) {
                0
            } else {
                (next() % 5) as u32
            };
            match (old, c) {
                (a, b) if a == b => continue,
                (0, b) => {
                    s.add(h, b);
                }
                (a, 0) => {
                    s.sub(h, a);
                }
                (a, b) => s.replace(h, a, b),
            }
            touched.insert(h);
            if c == 0 {
                counts.remove(&(peer, h));
            } else {
                counts.insert((peer, h), c);
            }
            if step % 500 == 0 {
                let mut want: std::collections::HashMap<u64, u64> = Default::default();
                for (&(_, h), &c) in &counts {
                    *want.entry(h).or_default() += u64::from(c);
                }
                for h in &touched {
                    assert_eq!(s.get(*h), want.get(h).copied().unwrap_or(0), "step {step}");
                    assert_eq!(s.contains(*h), want.contains_key(h), "step {step}");
                }
                assert_eq!(s.iter().count(), want.len());
                assert_eq!(s.total(), want.values().sum::<u64>());
                let reported = s.take_changed();
                assert_eq!(reported, touched.iter().copied().collect::<Vec<_>>());
                touched.clear();
            }
        }
    }

    #[test]
    fn changes_nobody_takes_stay_within_the_topics() {
        let mut s = Sums::default();
        for round in 0..10_000u64 {
            s.add(round % 3, 1);
            s.sub(round % 3, 1);
        }
        assert!(s.changed.len() <= 2 * s.map.len() + 1024 + 1);
        assert_eq!(s.take_changed(), vec![0, 1, 2]);
        assert_eq!(s.total(), 0);
    }

    /// Found in review: topics that come and go once each (all different), nobody taking the
    /// changes: compacting cannot shrink the list, and once past its bound it was sorted at every
    /// removal (60,000 of them took 21 s). It is sorted each time it doubles.
    #[test]
    fn different_topics_churning_unreported_sort_the_list_rarely() {
        let mut s = Sums::default();
        for i in 0..60_000u64 {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            s.add(h, 1);
            s.sub(h, 1);
        }
        assert_eq!(s.changed.len(), 60_000);
        assert!(s.compactions <= 8, "{} compactions", s.compactions);
        assert_eq!(s.take_changed().len(), 60_000);
    }
}
