//! Helpers shared by the simulation tests.

use std::time::Duration;

use headcount::cluster::protocol::Config;
use headcount::cluster::sim::Sim;

/// The tick every simulated node runs.
pub const TICK: Duration = Duration::from_millis(100);

/// `n` nodes, formed and exact, 1 ms apart; `cfg` adjusts every node's settings.
pub fn formed(n: usize, seed: u64, cfg: impl Fn(&mut Config) + 'static) -> Sim {
    let mut s = Sim::new(n, seed, TICK, cfg);
    s.faults.delay = Duration::from_millis(1);
    s.run_for(TICK * 3);
    assert!(
        s.ticks_to_exact(50).is_some(),
        "seed {seed}: the cluster forms"
    );
    s
}
