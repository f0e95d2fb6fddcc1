//! [`Open`]: a hash table of topic hashes whose lookups cost one cache miss and can be
//! prefetched, for the per-topic tables every entry a peer sends is looked up in (the sums, the
//! names).
//!
//! A topic hash is a keyed hash already, spread evenly: one multiplication by the table's odd
//! number (a secret in the engine: a peer cannot aim hashes at one slot) and the product's top
//! bits are the slot where its search starts, and a search walks on from there (linear
//! probing) in one array of `(key, value)` slots. A lookup in a general-purpose map
//! (`hashbrown`) loads a control group first, then the slot it points to: two dependent misses,
//! neither known ahead. Here the slot's address is known from the hash alone, so a receiver prefetches a whole run of entries'
//! slots ([`Open::prefetch`]) before it looks them up, and their misses overlap (in the
//! simulator, where hundreds of nodes' tables are far out of cache, these lookups were a fifth
//! of the time).
//!
//! A slot is free when its value is vacant ([`Vacant`]): 0 for a sum (a topic no peer counts
//! has no sum), `None` for a name; so any key, 0 included, can be stored. Removal shifts the
//! run after it back (no tombstones), so searches stay as short as the load allows; the table
//! grows past three quarters full and never shrinks (like `std`'s map).

/// A value whose one special state marks a free slot.
pub(super) trait Vacant {
    /// The free slot's value.
    fn vacant() -> Self;
    /// Whether this is the free slot's value.
    fn is_vacant(&self) -> bool;
}

impl Vacant for u64 {
    fn vacant() -> u64 {
        0
    }
    fn is_vacant(&self) -> bool {
        *self == 0
    }
}

impl<T> Vacant for Option<T> {
    fn vacant() -> Option<T> {
        None
    }
    fn is_vacant(&self) -> bool {
        self.is_none()
    }
}

/// `x` mixed (the splitmix64 finalizer): seeds made from small numbers still spread, and
/// `peer::mix`'s digest terms.
pub(super) fn spread(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Slots a table starts with.
const MIN_SLOTS: usize = 8;

/// A map from `u64` keys (evenly spread: topic hashes) to non-vacant `V`.
#[derive(Debug, Clone)]
pub(super) struct Open<V> {
    slots: Vec<(u64, V)>,
    /// A key's home is the top bits of its product with this odd number (multiply-shift): a
    /// peer that does not know it cannot choose hashes that share a home.
    mul: u64,
    /// `slots.len() == 1 << bits` (or 0 slots, before the first insert).
    bits: u32,
    len: usize,
}

impl<V> Default for Open<V> {
    fn default() -> Open<V> {
        Open::new(0)
    }
}

impl<V> Open<V> {
    /// An empty table whose homes `seed` chooses (a secret random seed, against hashes chosen
    /// to collide).
    pub(super) fn new(seed: u64) -> Open<V> {
        Open {
            slots: Vec::new(),
            mul: spread(seed) | 1,
            bits: 0,
            len: 0,
        }
    }

    /// An empty table whose homes are the keys' top bits (multiplier 1): tests crowd keys into
    /// one run with it.
    #[cfg(test)]
    pub(super) fn unmixed() -> Open<V> {
        Open {
            mul: 1,
            ..Open::new(0)
        }
    }
}

impl<V: Vacant> Open<V> {
    /// Where the search for `key` starts (`slots` not empty).
    #[inline]
    fn home(&self, key: u64) -> usize {
        // `bits` ≥ 3 once there are slots: the shift is in range.
        (key.wrapping_mul(self.mul) >> (64 - self.bits)) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`, or the free slot where its search ended.
    #[inline]
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let (k, v) = &self.slots[i];
            if v.is_vacant() {
                return Err(i);
            }
            if *k == key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Keys with a value.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Forgets every key, and the slots (the homes stay where they were: the same multiplier).
    pub(super) fn clear(&mut self) {
        self.slots = Vec::new();
        self.bits = 0;
        self.len = 0;
    }

    /// The value of `key`.
    #[inline]
    pub(super) fn get(&self, key: u64) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        self.find(key).ok().map(|i| &self.slots[i].1)
    }

    /// The value of `key`, to change; never to the vacant value (that would free the slot in
    /// place, and the entries searched past it would be lost): [`Open::remove`] instead.
    #[inline]
    pub(super) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        if self.len == 0 {
            return None;
        }
        self.find(key).ok().map(|i| &mut self.slots[i].1)
    }

    /// Whether `key` has a value.
    #[inline]
    pub(super) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value (`value` not vacant); returns the old one.
    pub(super) fn insert(&mut self, key: u64, value: V) -> Option<V> {
        debug_assert!(!value.is_vacant());
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].1, value)),
            Err(i) => {
                self.slots[i] = (key, value);
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub(super) fn remove(&mut self, key: u64) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let mut hole = self.find(key).ok()?;
        let old = std::mem::replace(&mut self.slots[hole], (0, V::vacant())).1;
        self.len -= 1;
        // Shift back the entries after the hole whose searches pass through it.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            if self.slots[j].1.is_vacant() {
                return Some(old);
            }
            let home = self.home(self.slots[j].0);
            // Its search starts at `home` and ends at `j`: it must move back when the hole lies
            // on that path (cyclically within home..=j, hole != j).
            let passes = if hole <= j {
                home <= hole || home > j
            } else {
                home <= hole && home > j
            };
            if passes {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
    }

    /// Every key with its value, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.slots
            .iter()
            .filter(|(_, v)| !v.is_vacant())
            .map(|(k, v)| (*k, v))
    }

    /// Every value, to change in place (never to the vacant value: see [`Open::get_mut`]).
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.slots
            .iter_mut()
            .map(|(_, v)| v)
            .filter(|v| !v.is_vacant())
    }

    /// Heap bytes held.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u64, V)>()
    }

    /// Starts loading the slot where `key`'s search starts into the cache, and returns: a
    /// lookup of it soon after finds it there (see `Aggregate::set_all` in `apply.rs`).
    #[inline]
    pub(super) fn prefetch(&self, key: u64) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[self.home(key)]);
        }
    }

    /// Doubles the slots and puts every entry back.
    fn grow(&mut self) {
        let bits = if self.slots.is_empty() {
            MIN_SLOTS.trailing_zeros()
        } else {
            self.bits + 1
        };
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| (0, V::vacant()))
                .take(1 << bits)
                .collect(),
        );
        self.bits = bits;
        for (k, v) in old {
            // (Distinct keys: each search ends at a free slot.)
            if !v.is_vacant()
                && let Err(i) = self.find(k)
            {
                self.slots[i] = (k, v);
            }
        }
    }
}

/// Topic names by hash: an [`Open`] table of where each name is in one buffer of names, each
/// a length byte and its UTF-8 bytes. A slot is 16 bytes and a name its length and one more
/// (an `Arc<str>` a name was a 16-byte slot value and a 40–48-byte allocation: at 100k topics
/// the names took ~11 MB of a node's heap, a third of what the burst added in the simulator).
/// What names leave behind is reclaimed when it is over half the buffer.
#[derive(Debug, Clone, Default)]
pub(super) struct Names {
    /// Where a name starts in `bytes`, plus one (0: a free slot).
    at: Open<u32>,
    bytes: Vec<u8>,
    /// Bytes of `bytes` no name uses any more.
    garbage: usize,
}

impl Vacant for u32 {
    fn vacant() -> u32 {
        0
    }
    fn is_vacant(&self) -> bool {
        *self == 0
    }
}

impl Names {
    /// No names; `seed` places the hashes in the table ([`Open::new`]).
    pub(super) fn new(seed: u64) -> Names {
        Names {
            at: Open::new(seed),
            ..Names::default()
        }
    }

    /// The name at `at` (a slot's value).
    fn at(&self, at: u32) -> &str {
        let i = at as usize; // the length byte is at `i - 1`
        let len = usize::from(self.bytes[i - 1]);
        std::str::from_utf8(&self.bytes[i..i + len]).expect("stored from a str")
    }

    /// The name of `hash`.
    #[inline]
    pub(super) fn get(&self, hash: u64) -> Option<&str> {
        self.at.get(hash).map(|&at| self.at(at))
    }

    /// Whether `hash` has a name.
    #[inline]
    pub(super) fn contains_key(&self, hash: u64) -> bool {
        self.at.contains_key(hash)
    }

    /// How many hashes have a name.
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }

    /// Forgets every name, and their memory.
    pub(super) fn clear(&mut self) {
        self.at.clear();
        self.bytes = Vec::new();
        self.garbage = 0;
    }

    /// Names `hash` (a name over [`crate::MAX_NAME_LEN`] bytes, which no datagram can carry,
    /// is not kept).
    pub(super) fn insert(&mut self, hash: u64, name: &str) {
        if name.len() > usize::from(u8::MAX) {
            return;
        }
        if self.bytes.len() + 1 + name.len() >= u32::MAX as usize {
            self.compact();
            if self.bytes.len() + 1 + name.len() >= u32::MAX as usize {
                return;
            }
        }
        self.bytes.push(name.len() as u8);
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name.as_bytes());
        if let Some(old) = self.at.insert(hash, at) {
            self.forget(old);
        }
    }

    /// Forgets `hash`'s name.
    pub(super) fn remove(&mut self, hash: u64) {
        if let Some(old) = self.at.remove(hash) {
            self.forget(old);
        }
    }

    /// The name at `at` is no longer used: its bytes are garbage, and once garbage is over half
    /// the buffer the names left are moved together.
    fn forget(&mut self, at: u32) {
        self.garbage += 1 + usize::from(self.bytes[at as usize - 1]);
        if self.at.len() == 0 {
            self.bytes = Vec::new();
            self.garbage = 0;
        } else if self.garbage > 4096 && self.garbage * 2 > self.bytes.len() {
            self.compact();
        }
    }

    /// Moves the names in use together, in a buffer of their size.
    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.garbage);
        for at in self.at.values_mut() {
            let i = *at as usize;
            let len = usize::from(self.bytes[i - 1]);
            bytes.extend_from_slice(&self.bytes[i - 1..i + len]);
            *at = (bytes.len() - len) as u32;
        }
        self.bytes = bytes;
        self.garbage = 0;
    }

    /// Heap bytes held (for the memory figures).
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.at.heap_bytes() + self.bytes.capacity()
    }

    /// Starts loading `hash`'s slot into the cache (see [`Open::prefetch`]).
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        self.at.prefetch(hash);
    }
}

/// Starts loading `*at`'s cache line, without waiting for it (a hint: it changes nothing a
/// program can observe but its speed).
#[inline]
pub(super) fn prefetch<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` reads nothing a program sees and cannot fault (on any address,
    // and this one is a live reference's); its one requirement, SSE, is part of every x86_64
    // target. (Run under Miri by CI: `cluster::protocol::open::`.)
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(at).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// A seeded xorshift generator, for the randomized tests of the tables.
#[cfg(test)]
pub(super) fn test_rng(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, updates and removals against `std`'s map, with keys crowded into a few
    /// home slots (their top bits equal, homes taken from them) so that runs wrap around the end
    /// and removals shift.
    #[test]
    fn agrees_with_a_map_through_inserts_and_removals() {
        let mut next = test_rng(0x1234_5678_9abc_def1);
        for crowd in [0u32, 3, 60] {
            // Homes straight from the top bits (multiplier 1), so that the crowd is one run.
            let mut t: Open<u64> = Open::unmixed();
            let mut m: HashMap<u64, u64> = HashMap::new();
            // (Miri runs a few hundred steps over fewer keys: enough to wrap and shift.)
            let (steps, keys) = if cfg!(miri) { (300, 24) } else { (20_000, 512) };
            for step in 0..steps {
                // `crowd` top bits forced to ones: near the end, wrapping.
                let k = (next() % keys).wrapping_mul(0x9E37_79B9_7F4A_7C15) | !(u64::MAX >> crowd);
                match next() % 3 {
                    0 => assert_eq!(t.remove(k), m.remove(&k), "step {step}"),
                    _ => {
                        let v = next() % 1000 + 1;
                        assert_eq!(t.insert(k, v), m.insert(k, v), "step {step}");
                    }
                }
                assert_eq!(t.len(), m.len());
                if step % 97 == 0 {
                    for (k, v) in &m {
                        assert_eq!(t.get(*k), Some(v));
                    }
                    assert_eq!(t.iter().count(), m.len());
                }
            }
            for (k, v) in &m {
                assert_eq!(t.get(*k), Some(v));
                t.prefetch(*k);
            }
        }
    }

    /// The longest way from a key's home to its slot.
    fn longest_search<V: Vacant>(t: &Open<V>) -> usize {
        let mask = t.mask();
        (0..t.slots.len())
            .filter(|&i| !t.slots[i].1.is_vacant())
            .map(|i| i.wrapping_sub(t.home(t.slots[i].0)) & mask)
            .max()
            .unwrap_or(0)
    }

    /// Hashes a peer chose to share their top bits (which, were they the slot, would make one
    /// run of them all, and every lookup a walk along it) spread like any others.
    #[test]
    fn hashes_aimed_at_one_slot_spread() {
        for seed in [1, 2, 0xfeed] {
            let mut t: Open<u64> = Open::new(seed);
            for i in 0..if cfg!(miri) { 64 } else { 4096 } {
                t.insert((0xabcd << 48) | i, 1);
            }
            assert!(
                longest_search(&t) < 40,
                "seed {seed}: {}",
                longest_search(&t)
            );
        }
    }

    #[test]
    fn any_key_is_a_key_and_vacant_values_mark_free_slots() {
        let mut t: Open<Option<std::sync::Arc<str>>> = Open::default();
        assert!(t.get(0).is_none() && t.remove(0).is_none());
        t.prefetch(0);
        t.insert(0, Some("zero".into()));
        t.insert(u64::MAX, Some("max".into()));
        assert_eq!(t.get(0).cloned().flatten().as_deref(), Some("zero"));
        assert_eq!(t.get(u64::MAX).cloned().flatten().as_deref(), Some("max"));
        assert_eq!(t.remove(0).flatten().as_deref(), Some("zero"));
        assert!(!t.contains_key(0) && t.contains_key(u64::MAX) && t.len() == 1);
        assert_eq!(t.iter().count(), 1);
    }

    proptest::proptest! {
        /// Names agree with a map of strings through inserts, renames and removals, across
        /// compactions, and what they hold stays within twice the names' bytes plus the slots.
        #[test]
        #[cfg_attr(miri, ignore = "safe code, and slow under Miri")]
        fn names_agree_with_a_map(
            ops in proptest::collection::vec((0u64..300, 0usize..40, proptest::bool::ANY), 1..3000),
        ) {
            let mut names = Names::new(7);
            let mut want: HashMap<u64, String> = HashMap::new();
            for (h, len, keep) in ops {
                if keep {
                    let name: String = std::iter::repeat_n('é', len / 2)
                        .chain(std::iter::repeat_n('x', len % 2))
                        .chain(h.to_string().chars())
                        .collect();
                    names.insert(h, &name);
                    want.insert(h, name);
                } else {
                    names.remove(h);
                    want.remove(&h);
                }
                proptest::prop_assert_eq!(names.get(h), want.get(&h).map(String::as_str));
            }
            for h in 0..300 {
                proptest::prop_assert_eq!(names.get(h), want.get(&h).map(String::as_str));
                proptest::prop_assert_eq!(names.contains_key(h), want.contains_key(&h));
            }
            let live: usize = want.values().map(|n| 1 + n.len()).sum();
            proptest::prop_assert!(names.bytes.len() <= 2 * live + 4096 + 300);
        }
    }

    /// A name too long for a datagram is not kept; the others are.
    #[test]
    #[cfg_attr(miri, ignore = "safe code")]
    fn names_over_255_bytes_are_not_kept() {
        let mut names = Names::new(1);
        names.insert(1, &"x".repeat(256));
        names.insert(2, &"y".repeat(255));
        assert_eq!(names.get(1), None);
        assert_eq!(names.get(2).map(str::len), Some(255));
    }

    /// 100k names of 22 bytes take under 80 bytes a name (an `Arc<str>` a name took about 110
    /// in the table this replaced: a 24-byte slot at the same load, and a 48-byte allocation).
    #[test]
    #[cfg_attr(miri, ignore = "safe code, and slow under Miri")]
    fn names_take_little_memory() {
        let mut names = Names::new(3);
        let mut x = 1u64;
        for _ in 0..100_000 {
            x = spread(x);
            names.insert(x, &format!("topic-{x:016x}"));
        }
        let per = names.heap_bytes() as f64 / 100_000.0;
        assert!(per < 80.0, "{per:.1} B a name");
        assert_eq!(names.get(x).map(str::len), Some(22));
    }
}
