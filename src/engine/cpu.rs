//! Where threads run: the number of CPUs, and the one rule for pinning. When pinned, the engine
//! thread takes the last CPU this process may run on, and worker `i` takes CPU `i` of the others,
//! round-robin; with a single CPU, everything shares it. Decided here only, so that the engine and
//! an application's workers (such as `headcount serve --pin`) never pick the same CPU by
//! accident.

/// The CPUs this process may run on, in order (empty if unknown or without `affinity`).
#[cfg(feature = "affinity")]
fn allowed() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// The number of CPUs this process may run on (at least 1).
pub fn cpus() -> usize {
    #[cfg(feature = "affinity")]
    {
        let n = allowed().len();
        if n > 0 {
            return n;
        }
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The index, in the allowed CPUs, of the engine's CPU and of worker `i`'s, out of `n` CPUs.
#[cfg_attr(not(feature = "affinity"), allow(dead_code))]
fn plan(n: usize, worker: Option<usize>) -> Option<usize> {
    match (n, worker) {
        (0, _) => None,
        (n, None) => Some(n - 1),
        (1, Some(_)) => Some(0),
        (n, Some(i)) => Some(i % (n - 1)),
    }
}

/// Pins the calling thread to worker `i`'s CPU: one of the CPUs the engine thread does not take
/// (see the module docs). Returns whether it pinned (false without the `affinity` feature, or
/// when the CPUs cannot be listed or set).
pub fn pin_worker(i: usize) -> bool {
    pin(Some(i))
}

/// Pins the engine thread (called by the engine when [`Builder::pin`](crate::Builder::pin) is on).
pub(crate) fn pin_engine() -> bool {
    pin(None)
}

#[cfg(feature = "affinity")]
fn pin(worker: Option<usize>) -> bool {
    let cpus = allowed();
    plan(cpus.len(), worker).is_some_and(|at| core_affinity::set_for_current(cpus[at]))
}

#[cfg(not(feature = "affinity"))]
fn pin(_: Option<usize>) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn workers_never_share_the_engines_cpu_when_there_is_another() {
        assert_eq!(plan(0, None), None);
        assert_eq!(plan(0, Some(3)), None);
        assert_eq!(plan(1, None), Some(0));
        assert_eq!(plan(1, Some(5)), Some(0));
        assert_eq!(plan(2, None), Some(1));
        assert_eq!(
            (0..4).map(|i| plan(2, Some(i))).collect::<Vec<_>>(),
            vec![Some(0); 4]
        );
        assert_eq!(plan(4, None), Some(3));
        assert_eq!(
            (0..5)
                .map(|i| plan(4, Some(i)).unwrap())
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1]
        );
    }
}
