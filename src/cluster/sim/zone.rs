//! Zones in the simulation: the level above a flat cluster (see `docs/scale.md`).
//!
//! A zoned cluster's nodes are grouped in zones. Each node runs two protocols, as two
//! endpoints with their own addresses:
//!
//! - **inner** (endpoint `i`), in its zone's own group: today's flat protocol among the zone's
//!   nodes, every node keeping every zone peer's table;
//! - **outer** (endpoint `n + i`), in the cross-zone group that every node joins: one node of
//!   each zone, its *speaker*, publishes the zone's sum there (its own counts plus its zone
//!   peers', from its inner protocol) as its own table; the others publish nothing but
//!   heartbeats. Every node keeps the other zones' tables from there ([`Config::zone`]: it
//!   refuses its own zone's, which it has first-hand), so it holds `N_zone − 1` node tables
//!   and `Z − 1` zone tables instead of `N − 1` node tables.
//!
//! A node's view of a topic is its own count, plus its inner peers' sum, plus its outer peers'
//! sum. No election: a zone's speaker is the running member with the oldest incarnation (ties:
//! the lowest id) among those its inner protocol hears alive, once it has run for
//! [`SPEAK_AFTER`] ticks (a node that just started has not heard its zone yet) and has found no
//! elder for [`TAKEOVER_TICKS`]. Every member
//! decides for itself from what it hears; when the speaker dies or leaves, its zone mates drop
//! it from their inner view and the next oldest starts publishing, while the other zones drop
//! the dead speaker's table from their outer view (a brief gap, or a brief double count when
//! two members both speak, until the views agree again).
//!

use std::sync::Arc;
use std::time::Duration;

use super::zones::Zones;
use super::{LinkStats, Sim};
use crate::cluster::protocol::{Config, Event, Protocol};

/// Ticks a node runs before it may speak for its zone.
pub const SPEAK_AFTER: u32 = 3;

/// Ticks a node waits, once it finds no elder alive in its zone, before it speaks: until the
/// other zones have dropped the elder too. Its zone mates and the other zones each drop a
/// silent speaker `dead_after` after they last heard it, but in different groups (its inner
/// and outer endpoints tick up to a tick apart) and at their own ticks: up to two ticks apart.
/// Speaking at once double counted the zone for up to a tick in 7 of 12 seeds (48 nodes in 6
/// zones, the speaker crashed); one tick later, in 2 of 12; two ticks later, in none, for the
/// zone's counts missing elsewhere up to two ticks longer.
pub const TAKEOVER_TICKS: u32 = 2;

/// Ticks between the heartbeats of a node that does not speak for its zone, in the cross-zone
/// group ([`Config::empty_heartbeat_every`]): every node of every zone is a member there, so
/// its heartbeats are most of what every node hears idle.
pub const LISTENER_HEARTBEAT_EVERY: u32 = 5;

impl Sim {
    /// A zoned cluster of `n` nodes in `zones` zones (node `i` in zone `i × zones / n`, so
    /// zones of consecutive nodes, as equal as `n` allows), each node an inner and an outer
    /// endpoint (see the module docs). Every node-indexed method takes a node (`0..n`); the
    /// per-endpoint figures ([`Sim::bytes_sent`], [`Sim::link`]) are per endpoint
    /// ([`Sim::endpoints`]), and each endpoint has a link of its own.
    ///
    /// # Panics
    ///
    /// If `zones` is 0, more than `n` or more than 65,535.
    pub fn zoned(
        n: usize,
        zones: usize,
        seed: u64,
        tick: Duration,
        cfg: impl Fn(&mut Config) + 'static,
    ) -> Sim {
        assert!(
            (1..=n.min(usize::from(u16::MAX))).contains(&zones),
            "1 to n (at most 65,535) zones"
        );
        let z = Zones {
            n,
            zone: (0..n).map(|i| (i * zones / n + 1) as u16).collect(),
            speaking: vec![false; n],
            since: vec![Duration::ZERO; n],
            eldest: vec![None; n],
            switches: 0,
        };
        Sim::build(2 * n, Some(z), seed, tick, Box::new(cfg))
    }

    /// Node `i`'s zone (from 1), or `None` if the cluster has no zones.
    pub fn zone(&self, i: usize) -> Option<u16> {
        self.zones.as_ref().map(|z| z.zone[i])
    }

    /// Whether node `i` publishes its zone's sum now.
    pub fn speaks(&self, i: usize) -> bool {
        self.zones.as_ref().is_some_and(|z| z.speaking[i])
    }

    /// How many times a node started or stopped speaking for its zone.
    pub fn speaker_switches(&self) -> u64 {
        self.zones.as_ref().map_or(0, |z| z.switches)
    }

    /// Protocol endpoints: the nodes, or twice as many in a zoned cluster (`0..n` inner,
    /// `n..2n` outer).
    pub fn endpoints(&self) -> usize {
        self.nodes.len()
    }

    /// Endpoint `e`'s protocol, if it runs.
    pub fn endpoint(&self, e: usize) -> Option<&Protocol> {
        self.nodes[e].proto.as_ref()
    }

    /// What capacity cost endpoint `e` so far.
    pub fn endpoint_link(&self, e: usize) -> LinkStats {
        self.nodes[e].link
    }

    /// Node `i`'s endpoints.
    pub(super) fn endpoints_of(&self, i: usize) -> Vec<usize> {
        match &self.zones {
            Some(z) => vec![i, z.n + i],
            None => vec![i],
        }
    }

    /// Endpoint `e`'s node id and zone (0: none).
    pub(super) fn identity(&self, e: usize) -> (u64, u16) {
        match &self.zones {
            Some(z) if e >= z.n => {
                let zone = z.zone[e - z.n];
                ((u64::from(zone) << 48) | (e - z.n + 1) as u64, zone)
            }
            _ => (e as u64 + 1, 0),
        }
    }

    /// An outer endpoint's settings, in zone `zone`: it refuses its zone mates, heartbeats
    /// every [`LISTENER_HEARTBEAT_EVERY`] ticks while it publishes nothing, and tracks every
    /// node of the cluster as a peer.
    pub(super) fn outer_config(&self, c: &mut Config, zone: u16) {
        c.zone = zone;
        c.empty_heartbeat_every = LISTENER_HEARTBEAT_EVERY;
        c.max_peers = c.max_peers.max(self.len());
    }

    /// Node `i`'s outer protocol, if zoned and running.
    pub(super) fn outer(&self, i: usize) -> Option<&Protocol> {
        let z = self.zones.as_ref()?;
        self.nodes[z.n + i].proto.as_ref()
    }

    /// Node `i`'s zone's sum of `hash`: its own count and its inner peers'.
    fn zone_sum(&self, i: usize, hash: u64) -> u32 {
        let n = &self.nodes[i];
        let own = u64::from(n.local.get(&hash).copied().unwrap_or(0));
        let peers = n.proto.as_ref().map_or(0, |p| p.remote(hash));
        (own + peers).min(u64::from(u32::MAX)) as u32
    }

    /// Node `i` named `hash` (its own topic): its outer protocol knows the name too (see
    /// `zone_before_tick`).
    pub(super) fn zone_name(&mut self, i: usize, hash: u64, name: &str) {
        let Some(z) = &self.zones else { return };
        let e = z.n + i;
        if let Some(p) = self.nodes[e].proto.as_mut() {
            p.learn_name(hash, name);
        }
    }

    /// If node `i` speaks: its zone's sum of `hash` as its outer table's count.
    pub(super) fn zone_publish(&mut self, i: usize, hash: u64) {
        let Some(z) = &self.zones else { return };
        if !z.speaking[i] {
            return;
        }
        let e = z.n + i;
        let c = self.zone_sum(i, hash);
        let name = self.nodes[i]
            .proto
            .as_ref()
            .and_then(|p| p.name(hash))
            .map(Arc::from);
        if let Some(p) = self.nodes[e].proto.as_mut() {
            p.set_local(hash, c, name.as_ref());
        }
    }

    /// Node `i` (re)started or stopped: it speaks for nobody.
    pub(super) fn zone_reset(&mut self, i: usize) {
        let now = self.now;
        if let Some(z) = self.zones.as_mut() {
            z.speaking[i] = false;
            z.since[i] = now;
            z.eldest[i] = None;
        }
    }

    /// Before endpoint `e`'s tick: if it is a node's outer endpoint, the node decides whether
    /// it speaks, and what changed in its zone since its last tick goes into its outer table
    /// (so that this tick sends it).
    pub(super) fn zone_before_tick(&mut self, e: usize) {
        let Some(z) = &self.zones else { return };
        let Some(i) = e.checked_sub(z.n) else { return };
        let mut changed = Vec::new();
        let mut names = Vec::new();
        if let Some(p) = self.nodes[i].proto.as_mut() {
            // A name learned after its count went out is given to the outer protocol too: its
            // peers may ask for it.
            while let Some(ev) = p.poll_event() {
                match ev {
                    Event::RemoteChanged { hash, .. } => changed.push(hash),
                    Event::NameLearned { hash, name } => {
                        changed.push(hash);
                        names.push((hash, name));
                    }
                    _ => {}
                }
            }
        }
        // Every name the zone knows is known to the node's outer protocol as well (one names
        // table, in effect): in the cross-zone group a speaker does not announce a name another
        // zone's speaker counts, and that zone's own members refuse their speaker's datagrams
        // there, so they would otherwise ask for it.
        if let Some(p) = self.nodes[e].proto.as_mut() {
            for (h, n) in &names {
                p.learn_name(*h, n);
            }
        }
        if self.speaks(i) {
            for h in changed {
                self.zone_publish(i, h);
            }
        }
        // Then whether it speaks (publishing first: a topic whose sum left the zone is no
        // longer among the zone's topics, and a speaker that stops must have zeroed it).
        self.elect(i);
        if let Some(p) = self.nodes[e].proto.as_mut() {
            while p.poll_event().is_some() {}
        }
    }

    /// Whether node `i` should speak for its zone now; starts or stops if that changed.
    fn elect(&mut self, i: usize) {
        let Some(z) = &self.zones else { return };
        let Some(p) = self.nodes[i].proto.as_ref() else {
            return;
        };
        let now = self.base + self.now;
        let ready = self.now.saturating_sub(z.since[i]) >= self.tick * SPEAK_AFTER;
        let me = (p.config().incarnation, p.config().node);
        let elder = p
            .nodes(now)
            .into_iter()
            .filter(|n| n.alive)
            .any(|n| (n.incarnation, n.node) < me);
        let since = if elder {
            None
        } else {
            z.eldest[i].or(Some(self.now))
        };
        let speak = ready && since.is_some_and(|t| self.now - t >= self.tick * TAKEOVER_TICKS);
        let z = self.zones.as_mut().expect("zoned");
        z.eldest[i] = since;
        if speak == z.speaking[i] {
            return;
        }
        let p = self.nodes[i].proto.as_ref().expect("running");
        let e = self.zones.as_ref().expect("zoned").n + i;
        // Starting: every topic of the zone (this node's own and its inner peers'). Stopping:
        // every topic of its outer table, whatever the zone counts now.
        let topics: Vec<u64> = if speak {
            let mut t: Vec<u64> = self.nodes[i].local.keys().copied().collect();
            t.extend(p.remote_sums().map(|(h, _)| h));
            t.sort_unstable();
            t.dedup();
            t
        } else {
            self.nodes[e]
                .proto
                .as_ref()
                .map(|o| o.local_counts().map(|(h, _)| h).collect())
                .unwrap_or_default()
        };
        let z = self.zones.as_mut().expect("zoned");
        z.speaking[i] = speak;
        z.switches += 1;
        for h in topics {
            if speak {
                self.zone_publish(i, h);
            } else if let Some(p) = self.nodes[e].proto.as_mut() {
                p.set_local(h, 0, None::<&Arc<str>>);
            }
        }
    }
}
