//! One place that chooses the atomics: `std`'s normally, loom's under `--cfg loom`, so the hot path
//! and the reducer's collection logic can be model-checked without a second copy of the code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A boxed slice of `n` zeroed atomics.
///
/// Outside loom this asks the allocator for zeroed memory (`calloc`), which the OS maps lazily: a
/// table sized for a million topics costs address space, and resident memory only for the pages
/// that topics actually touch.
#[cfg(not(loom))]
pub(crate) fn zeroed_u64(n: usize) -> Box<[AtomicU64]> {
    let b = Box::<[AtomicU64]>::new_zeroed_slice(n);
    // SAFETY:
    // - `AtomicU64` has the same in-memory representation as `u64` (documented by std), and the
    //   all-zero bit pattern is a valid `u64`, so every zeroed element is an initialized atomic 0.
    unsafe { b.assume_init() }
}

/// A boxed slice of `n` zeroed `AtomicU32`s (see [`zeroed_u64`]).
#[cfg(not(loom))]
pub(crate) fn zeroed_u32(n: usize) -> Box<[AtomicU32]> {
    let b = Box::<[AtomicU32]>::new_zeroed_slice(n);
    // SAFETY:
    // - `AtomicU32` has the same in-memory representation as `u32`; all-zero is a valid `u32`.
    unsafe { b.assume_init() }
}

#[cfg(loom)]
pub(crate) fn zeroed_u64(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

#[cfg(loom)]
pub(crate) fn zeroed_u32(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn zeroed_tables_read_zero_and_are_writable() {
        let a = zeroed_u64(1000);
        let b = zeroed_u32(1000);
        assert!(a.iter().all(|x| x.load(Ordering::Relaxed) == 0));
        assert!(b.iter().all(|x| x.load(Ordering::Relaxed) == 0));
        a[999].store(7, Ordering::Relaxed);
        b[0].fetch_add(3, Ordering::Relaxed);
        assert_eq!(a[999].load(Ordering::Relaxed), 7);
        assert_eq!(b[0].load(Ordering::Relaxed), 3);
    }
}
