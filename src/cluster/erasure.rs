//! Erasure coding for repairs: on-demand parity over GF(2^8), as in PGM.
//!
//! A block is up to [`DATA`] data symbols (byte strings; shorter ones count as padded with
//! zeros to the longest). Parity symbol `j` is `Σ c(j, i) · D_i` over the block's symbols, with
//! `c(j, i) = 1 / (x_j + y_i)` (a Cauchy matrix: `x_j = DATA + j`, `y_i = i`, all distinct), so
//! any `m` parity symbols recover any `m` missing data symbols: every square submatrix of a
//! Cauchy matrix is invertible. One parity symbol thus repairs a *different* loss at every
//! receiver; a sender answers a block with as many as its worst receiver misses, not with every
//! datagram some receiver missed.
//!
//! Pure functions, no state: the protocol decides what a block holds (`protocol/repair`).

/// Data symbols a block holds at most (positions `0..DATA`).
pub const DATA: usize = 112;
/// Parity symbols a block can have (indices `0..PARITY`).
pub const PARITY: usize = 256 - DATA;

/// GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d): exp and log tables.
struct Field {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn field() -> Field {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    // exp[510], exp[511] stay 0: never read (log sums are at most 508).
    Field { exp, log }
}

static GF: Field = field();

fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        GF.exp[usize::from(GF.log[usize::from(a)]) + usize::from(GF.log[usize::from(b)])]
    }
}

/// The inverse of a non-zero element.
fn inv(a: u8) -> u8 {
    debug_assert_ne!(a, 0);
    GF.exp[255 - usize::from(GF.log[usize::from(a)])]
}

/// The coefficient of data position `i` in parity `j` (`i < DATA`, `j < PARITY`).
fn coef(j: usize, i: usize) -> u8 {
    // x_j = DATA + j is in DATA..256 and y_i = i below DATA: disjoint sets, so x_j ^ y_i is
    // never zero.
    inv(((DATA + j) as u8) ^ (i as u8))
}

/// `dst[k] ^= c · src[k]` for every byte of `src` (`dst` at least as long).
fn mul_add(dst: &mut [u8], src: &[u8], c: u8) {
    if c == 0 {
        return;
    }
    let mut row = [0u8; 256];
    for (v, r) in row.iter_mut().enumerate() {
        *r = mul(c, v as u8);
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= row[usize::from(*s)];
    }
}

/// Parity symbol `j` of a block: `data` lists each present position with its symbol. `None`
/// when `j` or a position is out of range, or a position repeats.
pub fn encode(j: usize, data: &[(usize, &[u8])]) -> Option<Vec<u8>> {
    if j >= PARITY || !distinct_below(data.iter().map(|d| d.0), DATA) {
        return None;
    }
    let len = data.iter().map(|d| d.1.len()).max().unwrap_or(0);
    let mut out = vec![0; len];
    for &(i, d) in data {
        mul_add(&mut out, d, coef(j, i));
    }
    Some(out)
}

/// The missing symbols of a block, in the order of `missing`, from the symbols held (`known`)
/// and at least `missing.len()` parity symbols (index, symbol) of the same block; each returned
/// symbol is as long as the parity (zero-padded). `None` when too few parity symbols are
/// given, they differ in length, a known symbol is longer than them, or an index or position
/// is out of range or repeats.
pub fn decode(
    parity: &[(usize, &[u8])],
    known: &[(usize, &[u8])],
    missing: &[usize],
) -> Option<Vec<Vec<u8>>> {
    let m = missing.len();
    if m == 0 {
        return Some(Vec::new());
    }
    let parity = parity.get(..m)?;
    let len = parity[0].1.len();
    if parity.iter().any(|p| p.1.len() != len || p.0 >= PARITY)
        || known.iter().any(|k| k.1.len() > len)
        || !distinct_below(parity.iter().map(|p| p.0), PARITY)
        || !distinct_below(
            known.iter().map(|k| k.0).chain(missing.iter().copied()),
            DATA,
        )
    {
        return None;
    }
    // Each parity less what the known symbols put in it: what the missing ones sum to.
    let mut rhs: Vec<Vec<u8>> = parity
        .iter()
        .map(|&(j, p)| {
            let mut r = p.to_vec();
            for &(i, d) in known {
                mul_add(&mut r, d, coef(j, i));
            }
            r
        })
        .collect();
    let mut a: Vec<Vec<u8>> = parity
        .iter()
        .map(|&(j, _)| missing.iter().map(|&i| coef(j, i)).collect())
        .collect();
    // Gauss-Jordan elimination; the matrix is a square Cauchy submatrix, so invertible.
    for col in 0..m {
        let pivot = (col..m).find(|&r| a[r][col] != 0)?;
        a.swap(col, pivot);
        rhs.swap(col, pivot);
        let s = inv(a[col][col]);
        for v in a[col].iter_mut() {
            *v = mul(*v, s);
        }
        let row = std::mem::take(&mut rhs[col]);
        let mut scaled = vec![0; len];
        mul_add(&mut scaled, &row, s);
        rhs[col] = scaled;
        for r in 0..m {
            let f = a[r][col];
            if r == col || f == 0 {
                continue;
            }
            let (pa, pr) = (a[col].clone(), rhs[col].clone());
            for (x, y) in a[r].iter_mut().zip(&pa) {
                *x ^= mul(f, *y);
            }
            mul_add(&mut rhs[r], &pr, f);
        }
    }
    Some(rhs)
}

/// Whether every value is below `bound` (at most 256) and none repeats.
fn distinct_below(values: impl Iterator<Item = usize>, bound: usize) -> bool {
    let mut seen = [false; 256];
    for v in values {
        if v >= bound.min(256) || seen[v] {
            return false;
        }
        seen[v] = true;
    }
    true
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_field_is_a_field() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
        }
        // Distributive over xor, on a sample.
        for a in [3u8, 29, 200] {
            for b in [7u8, 64, 255] {
                for c in [1u8, 90, 128] {
                    assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
                }
            }
        }
    }

    #[test]
    fn one_parity_repairs_a_different_loss_at_each_receiver() {
        let data: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 20 + usize::from(i)]).collect();
        let all: Vec<(usize, &[u8])> = data.iter().enumerate().map(|(i, d)| (i, &d[..])).collect();
        let p = encode(0, &all).unwrap();
        for lost in 0..10 {
            let known: Vec<(usize, &[u8])> = all.iter().copied().filter(|k| k.0 != lost).collect();
            let got = decode(&[(0, &p)], &known, &[lost]).unwrap();
            assert_eq!(&got[0][..data[lost].len()], &data[lost][..]);
            assert!(got[0][data[lost].len()..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn bad_input_is_refused_not_a_panic() {
        let d = [1u8, 2, 3];
        assert!(encode(PARITY, &[(0, &d)]).is_none());
        assert!(encode(0, &[(DATA, &d)]).is_none());
        assert!(encode(0, &[(1, &d), (1, &d)]).is_none());
        let p = encode(0, &[(0, &d), (1, &d)]).unwrap();
        // Too few parities, a known symbol longer than the parity, a missing one also known.
        assert!(decode(&[(0, &p)], &[], &[0, 1]).is_none());
        assert!(decode(&[(0, &p)], &[(0, &[0u8; 9])], &[1]).is_none());
        assert!(decode(&[(0, &p)], &[(1, &d)], &[1]).is_none());
        assert!(decode(&[(0, &p), (0, &p)], &[], &[0, 1]).is_none());
        assert_eq!(decode(&[], &[], &[]), Some(Vec::new()));
    }

    proptest! {
        /// Any m of the parity symbols recover any m missing data symbols.
        #[test]
        fn any_m_parities_recover_any_m_losses(
            n in 1usize..=DATA,
            lens in proptest::collection::vec(0usize..40, DATA),
            seed in any::<u64>(),
            lost_bits in any::<u128>(),
            first_j in 0usize..PARITY,
        ) {
            let mut x = seed | 1;
            let data: Vec<Vec<u8>> = (0..n)
                .map(|i| (0..lens[i]).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect())
                .collect();
            let lost: Vec<usize> = (0..n).filter(|i| lost_bits & (1 << i) != 0).collect();
            let all: Vec<(usize, &[u8])> = data.iter().enumerate().map(|(i, d)| (i, &d[..])).collect();
            let js: Vec<usize> = (0..lost.len()).map(|k| (first_j + 7 * k) % PARITY).collect();
            prop_assume!({ let mut s = js.clone(); s.sort_unstable(); s.dedup(); s.len() == js.len() });
            let ps: Vec<Vec<u8>> = js.iter().map(|&j| encode(j, &all).unwrap()).collect();
            let parity: Vec<(usize, &[u8])> = js.iter().zip(&ps).map(|(&j, p)| (j, &p[..])).collect();
            let known: Vec<(usize, &[u8])> = all.iter().copied().filter(|k| !lost.contains(&k.0)).collect();
            let got = decode(&parity, &known, &lost).unwrap();
            for (k, &i) in lost.iter().enumerate() {
                prop_assert_eq!(&got[k][..data[i].len()], &data[i][..]);
                prop_assert!(got[k][data[i].len()..].iter().all(|&b| b == 0));
            }
        }
    }
}
