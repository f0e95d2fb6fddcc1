//! Who a unicast node sends its group datagrams to: the peers it was given, those DNS resolves,
//! and those it learned (with a cluster key), each with how it was found and when it was last
//! heard. `net.rs` sends to every one of them; the engine thread feeds it what it hears.
//!
//! The rules:
//!
//! - A configured address is kept for good.
//! - A resolved address is kept while DNS lists it; once gone from DNS it is dropped when it is
//!   also silent for `dead_after` (a node that says goodbye loses its counts at once through
//!   the protocol, as always; its address goes with the same silence rule).
//! - With a cluster key, an address an authenticated datagram came from, or that a peer says it
//!   hears a node at (membership gossip), is learned, and dropped when silent for `dead_after`.
//!   Without a key nothing is learned: only configured and resolved addresses are talked to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster::protocol::Found;

/// Most learned addresses kept: a bound on what gossip from (keyed, so trusted) peers can add.
const MAX_LEARNED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Member {
    found: Found,
    /// Listed by the latest resolution of some DNS name.
    in_dns: bool,
    /// When a datagram from it was last applied.
    heard: Option<Instant>,
    /// When it was added (the silence clock of an address never heard).
    since: Instant,
}

/// The destination set of a unicast node.
#[derive(Debug)]
pub(crate) struct Members {
    map: HashMap<SocketAddr, Member>,
    /// Per DNS name: the addresses its last successful resolution listed.
    dns: Vec<Vec<SocketAddr>>,
    /// Whether addresses may be learned (a cluster key is set).
    learn: bool,
    dead_after: Duration,
    learned: usize,
    /// The socket is IPv4: IPv6 addresses (from DNS, from gossip) cannot be reached.
    v4_only: bool,
}

impl Members {
    pub(crate) fn new(
        configured: &[SocketAddr],
        dns_names: usize,
        learn: bool,
        dead_after: Duration,
        now: Instant,
    ) -> Members {
        let map = configured
            .iter()
            .map(|&a| {
                let m = Member {
                    found: Found::Configured,
                    in_dns: false,
                    heard: None,
                    since: now,
                };
                (a, m)
            })
            .collect();
        Members {
            map,
            dns: vec![Vec::new(); dns_names],
            learn,
            dead_after,
            learned: 0,
            v4_only: false,
        }
    }

    /// Skips IPv6 addresses from DNS and gossip: the socket is IPv4.
    pub(crate) fn v4_only(mut self, yes: bool) -> Members {
        self.v4_only = yes;
        self
    }

    fn reachable(&self, a: SocketAddr) -> bool {
        !(self.v4_only && a.is_ipv6())
    }

    /// Whether addresses may be learned (the node has a cluster key).
    pub(crate) fn learns(&self) -> bool {
        self.learn
    }

    /// Every address to send a group datagram to.
    pub(crate) fn targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.map.keys().copied()
    }

    /// How `addr` was found, if it is a member.
    pub(crate) fn found(&self, addr: SocketAddr) -> Option<Found> {
        self.map.get(&addr).map(|m| m.found)
    }

    /// How many members were found each way: configured, dns, learned.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let n = |f| self.map.values().filter(|m| m.found == f).count();
        (n(Found::Configured), n(Found::Dns), n(Found::Learned))
    }

    /// The latest successful resolution of DNS name `i`.
    pub(crate) fn resolved(&mut self, i: usize, addrs: Vec<SocketAddr>, now: Instant) {
        if let Some(slot) = self.dns.get_mut(i) {
            *slot = addrs;
            let v4_only = self.v4_only;
            slot.retain(|a| !(v4_only && a.is_ipv6()));
        }
        for m in self.map.values_mut() {
            m.in_dns = false;
        }
        for &a in self.dns.iter().flatten() {
            let m = self.map.entry(a).or_insert(Member {
                found: Found::Dns,
                in_dns: false,
                heard: None,
                since: now,
            });
            m.in_dns = true;
            if m.found == Found::Learned {
                m.found = Found::Dns;
                self.learned -= 1;
            }
        }
    }

    /// A datagram from `addr` was applied: it is heard now, and learned if it is new and
    /// learning is allowed. True when it was added.
    pub(crate) fn heard(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if let Some(m) = self.map.get_mut(&addr) {
            m.heard = Some(now);
            return false;
        }
        self.learn_addr(addr, Some(now), now)
    }

    /// A peer hears a node at `addr` (membership gossip). True when it was added.
    pub(crate) fn gossip(&mut self, addr: SocketAddr, now: Instant) -> bool {
        !self.map.contains_key(&addr) && self.learn_addr(addr, None, now)
    }

    fn learn_addr(&mut self, addr: SocketAddr, heard: Option<Instant>, now: Instant) -> bool {
        if !self.learn || self.learned >= MAX_LEARNED || addr.port() == 0 || !self.reachable(addr) {
            return false;
        }
        self.learned += 1;
        self.map.insert(
            addr,
            Member {
                found: Found::Learned,
                in_dns: false,
                heard,
                since: now,
            },
        );
        true
    }

    /// Drops learned addresses, and resolved ones DNS no longer lists, silent for `dead_after`.
    /// Returns how many it dropped.
    pub(crate) fn prune(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        let dead_after = self.dead_after;
        let mut learned = self.learned;
        self.map.retain(|_, m| {
            let droppable = match m.found {
                Found::Learned => true,
                Found::Dns => !m.in_dns,
                _ => false,
            };
            let silent = now.saturating_duration_since(m.heard.unwrap_or(m.since)) > dead_after;
            let keep = !(droppable && silent);
            if !keep && m.found == Found::Learned {
                learned -= 1;
            }
            keep
        });
        self.learned = learned;
        before - self.map.len()
    }
}

/// The engine thread's side of discovery: the resolver's results, the addresses heard and
/// gossiped since the last step, and the counters `INFO` shows.
#[derive(Default)]
pub(crate) struct Discovering {
    pub(crate) resolver: Option<crate::engine::dns::Resolver>,
    /// Addresses datagrams were applied from since the last step.
    pub(crate) heard: Vec<SocketAddr>,
    /// Addresses peers said they hear nodes at since the last step.
    pub(crate) gossiped: Vec<SocketAddr>,
    pub(crate) stats: DiscoveryStats,
    /// How each node was last found, for peers whose address has left the member list (a dead
    /// peer stays listed until its tombstone expires).
    found: HashMap<u64, Found>,
}

/// Discovery counters (see [`crate::ClusterStats`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct DiscoveryStats {
    pub(crate) resolutions: u64,
    pub(crate) failures: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) dropped: u64,
}

impl Discovering {
    /// Applies what happened since the last step to `members`: resolutions, addresses heard and
    /// gossiped; then drops what was silent too long.
    pub(crate) fn step(&mut self, members: &mut Members, now: Instant) {
        if let Some(r) = &self.resolver {
            while let Ok(res) = r.rx.try_recv() {
                match res.result {
                    Ok(addrs) => {
                        self.stats.resolutions += 1;
                        members.resolved(res.index, addrs, now);
                    }
                    Err(e) => {
                        // The last known set stays.
                        self.stats.failures += 1;
                        self.stats.last_error = Some(e);
                    }
                }
            }
        }
        for a in self.heard.drain(..) {
            members.heard(a, now);
        }
        for a in self.gossiped.drain(..) {
            members.gossip(a, now);
        }
        self.stats.dropped += members.prune(now) as u64;
    }

    /// How `node` was found: `now` (the member list's answer for its address), remembered; or,
    /// when the list has no answer any more (a dead peer whose address was dropped), the last
    /// one known.
    pub(crate) fn found(&mut self, node: u64, now: Option<Found>) -> Option<Found> {
        match now {
            Some(f) => {
                self.found.insert(node, f);
                Some(f)
            }
            None => self.found.get(&node).copied(),
        }
    }

    /// Forgets how nodes no longer in `nodes` were found (nothing to do, and no work, while
    /// it remembers no more nodes than are listed).
    pub(crate) fn forget_found(&mut self, nodes: &[crate::cluster::protocol::NodeInfo]) {
        if self.found.len() > nodes.len() {
            let listed: std::collections::HashSet<u64> = nodes.iter().map(|n| n.node).collect();
            self.found.retain(|n, _| listed.contains(n));
        }
    }

    /// Notes that a datagram from `from` was applied (cheap: consecutive repeats are skipped).
    #[inline]
    pub(crate) fn note_heard(&mut self, from: SocketAddr) {
        if self.heard.last() != Some(&from) && self.heard.len() < MAX_LEARNED {
            self.heard.push(from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn configured_stay_resolved_follow_dns_learned_need_a_key() {
        let t0 = Instant::now();
        let d = Duration::from_secs(3);
        let mut m = Members::new(&[a("10.0.0.1:7380")], 1, true, d, t0);
        m.resolved(0, vec![a("10.0.0.2:7380"), a("10.0.0.3:7380")], t0);
        assert!(m.heard(a("10.0.0.9:7380"), t0), "learned with a key");
        assert!(!m.heard(a("10.0.0.2:7380"), t0), "already a member");
        assert!(m.gossip(a("10.0.0.8:7380"), t0));
        assert_eq!(m.counts(), (1, 2, 2));
        assert_eq!(m.found(a("10.0.0.9:7380")), Some(Found::Learned));

        // 10.0.0.3 leaves DNS; 10.0.0.2 keeps being heard; nothing is silent long enough yet.
        let t1 = t0 + Duration::from_secs(2);
        m.resolved(0, vec![a("10.0.0.2:7380")], t1);
        m.heard(a("10.0.0.2:7380"), t1);
        m.heard(a("10.0.0.9:7380"), t1);
        assert_eq!(m.prune(t1), 0);
        // Past dead_after of silence: the address gone from DNS and the silent learned one go;
        // the configured one stays, silent or not.
        let t2 = t0 + Duration::from_secs(4);
        assert_eq!(m.prune(t2), 2);
        let mut left: Vec<_> = m.targets().collect();
        left.sort();
        assert_eq!(
            left,
            vec![a("10.0.0.1:7380"), a("10.0.0.2:7380"), a("10.0.0.9:7380")]
        );
        // A failed resolution is not reported here at all: the last set stays.
        assert_eq!(m.found(a("10.0.0.2:7380")), Some(Found::Dns));
    }

    #[test]
    fn a_dead_peer_keeps_how_it_was_found() {
        let mut d = Discovering::default();
        assert_eq!(d.found(7, Some(Found::Dns)), Some(Found::Dns));
        assert_eq!(
            d.found(7, None),
            Some(Found::Dns),
            "address dropped, node still listed"
        );
        d.forget_found(&[]);
        assert_eq!(d.found(7, None), None, "forgotten once no longer listed");
    }

    #[test]
    fn without_a_key_nothing_is_learned() {
        let t0 = Instant::now();
        let mut m = Members::new(&[], 0, false, Duration::from_secs(3), t0);
        assert!(!m.heard(a("10.0.0.9:7380"), t0));
        assert!(!m.gossip(a("10.0.0.8:7380"), t0));
        assert_eq!(m.targets().count(), 0);
    }
}
