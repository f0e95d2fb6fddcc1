//! The library half of headcount's perf harness: what the `headcount-perf` binary and the
//! criterion benches (`perf/benches/`) share.
//!
//! - [`rig`]: the hot-path and reducer workloads, run by `headcount-perf hotpath` / `reducer`
//!   and by the benches alike;
//! - [`rng`]: the crate's one PRNG (topic orders, the load clients' picks);
//! - [`counting`]: the counting global allocator behind `hotpath`'s `allocs_per_op` (the crate's
//!   only unsafe code).
//!
//! Everything else (one file per subcommand, spawning servers, the load harness) lives in the
//! binary: see `src/main.rs`. The RESP client is the server crate's
//! (`headcount_server::resp::client`).

#![deny(missing_docs)]

pub mod counting;
pub mod rig;
pub mod rng;
