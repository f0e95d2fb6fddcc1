//! Which zone each node of a zoned simulation is in, and who speaks for each (the state;
//! what the nodes do with it is in `zone.rs`).

use std::time::Duration;

/// Which zone each node is in, and which nodes speak for their zone now.
pub(super) struct Zones {
    /// Nodes (endpoints `0..n` are their inner protocols, `n..2n` their outer ones).
    pub(super) n: usize,
    /// Each node's zone, from 1.
    pub(super) zone: Vec<u16>,
    /// Whether the node publishes its zone's sum in the outer group now.
    pub(super) speaking: Vec<bool>,
    /// When the node (re)started.
    pub(super) since: Vec<Duration>,
    /// Since when the node has found no elder alive in its zone (`None`: it has one).
    pub(super) eldest: Vec<Option<Duration>>,
    /// Times some node started or stopped speaking.
    pub(super) switches: u64,
}

impl Zones {
    pub(super) fn len(&self) -> usize {
        self.n
    }

    /// The groups: the cross-zone group (0: every outer endpoint), then each zone's own.
    pub(super) fn nets(&self) -> Vec<Vec<usize>> {
        let zones = self.zone.iter().copied().max().unwrap_or(0);
        let mut nets = vec![Vec::new(); usize::from(zones) + 1];
        nets[0] = (self.n..2 * self.n).collect();
        for (i, &z) in self.zone.iter().enumerate() {
            nets[usize::from(z)].push(i);
        }
        nets
    }

    /// The group endpoint `e` sends its group datagrams to.
    pub(super) fn net(&self, e: usize) -> usize {
        if e < self.n {
            usize::from(self.zone[e])
        } else {
            0
        }
    }
}
