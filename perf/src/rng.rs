//! The crate's one PRNG: deterministic, dependency-free randomness for topic orders
//! ([`crate::rig`]) and the load clients' workload (Zipf picks, which connection churns next).
//!
//! xorshift64 (Marsaglia) with a multiplied seed. Not for anything but workloads: [`Rng::below`]
//! and [`Rng::unit`] use the high bits, the good ones of this generator.

/// xorshift64, seeded through a multiply so that small and similar seeds give unrelated streams.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (multiply-shift; the bias is irrelevant here). `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `0..n` in a random order (Fisher-Yates with [`Rng`]), the same for the same `seed`.
pub fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut r = Rng::new(seed);
    for i in (1..n).rev() {
        v.swap(i, r.below(i + 1));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_is_a_permutation_and_depends_on_the_seed() {
        let a = shuffled(1000, 1);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_eq!(a, shuffled(1000, 1));
        assert_ne!(a, shuffled(1000, 2));
    }

    #[test]
    fn below_and_unit_stay_in_range() {
        let mut r = Rng::new(0);
        for _ in 0..10_000 {
            assert!(r.below(3) < 3);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
