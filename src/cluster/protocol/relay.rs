//! Relaying: group datagrams of a big unicast cluster travel a tree instead of leaving N − 1
//! times from their sender.
//!
//! Without multicast a group datagram is one unicast copy per peer, so a node's egress grows
//! with the cluster (at 256 nodes a burst tick of 1 MB leaves as 255 MB). With
//! [`Config::relay_fanout`](super::Config::relay_fanout) `k` and more than `k` peers, a node
//! marks its group datagrams with `k` (the high byte of the header flags, sealed with the rest)
//! and sends each to its `k` children in its own tree; a node that admits a marked datagram
//! forwards the same bytes to its children in the sender's tree. Every datagram reaches every
//! node once, in about `log_k N` hops, and each node sends about what it hears.
//!
//! The tree of sender `s`: the live nodes this node knows (itself and its peers, not observers,
//! which the sender sends their copies itself), sorted by id and rotated so that `s` comes
//! first; the node at position `i` has positions
//! `k·i + 1 ..= k·i + k` as children. Every node computes it from its own view, so while views
//! differ (a node just joined or died) a datagram may reach a node twice (the copy is refused
//! as stale, or is an idempotent answer) or miss one: a gap like any loss, found by the
//! sequence numbers that follow (or by the number a direct heartbeat or answer carries, an
//! interval later) and repaired by nack.
//!
//! What does not travel the tree: every tick a heartbeat without a number of its own goes to
//! every peer directly (it keeps every node hearing every other while a relay is dead, and
//! teaches it the peers' addresses), and so does the goodbye; nacks go to the sender directly
//! (twice: no other receiver's nack stands in for a lost one), and a repair to the one who
//! asked, marked so that it forwards it down its own branch of the sender's tree, which missed
//! the datagram with it (an asker below another gets it that way; one that asks again gets it
//! directly, twice); requests and replies are unicast as always. Every
//! numbered datagram travels the tree: one sent directly would overtake those still relayed,
//! which would then be refused as stale. A relayed datagram's source
//! address is its relay's, so it does not move the sender's address; and a node forwards only
//! to settled addresses, like every other datagram it sends to one peer. A node forwards a
//! datagram only once (by its tag): a loop between two differing views cannot amplify.

use std::net::SocketAddr;
use std::time::Instant;

use zerocopy::FromBytes;

use super::{Dest, HashSet, Protocol, Transmit};
use crate::cluster::wire::{self, FLAG_DIRECT, FLAG_END, FLAG_REPLY, Kind};

/// Tags of the datagrams forwarded recently, kept to forward each once.
const FORWARDED: usize = 1 << 14;

/// The relay state of a node.
#[derive(Debug, Default)]
pub(super) struct Relay {
    /// The live nodes by id, this node among them, as of `membership`.
    members: Vec<u64>,
    membership: Option<u64>,
    /// Tags of datagrams forwarded, oldest first (`seen` holds the same).
    order: std::collections::VecDeque<[u8; wire::TAG_LEN]>,
    seen: HashSet<[u8; wire::TAG_LEN]>,
}

impl Relay {
    /// Whether `tag` was forwarded already; if not, remembers it.
    fn first(&mut self, tag: [u8; wire::TAG_LEN]) -> bool {
        if !self.seen.insert(tag) {
            return false;
        }
        self.order.push_back(tag);
        if self.order.len() > FORWARDED
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// The positions of the children of position `i` in a tree of `n` nodes and fan-out `k`.
pub(super) fn children_of(i: usize, n: usize, k: usize) -> std::ops::Range<usize> {
    let lo = i.saturating_mul(k).saturating_add(1).min(n);
    let hi = i
        .saturating_mul(k)
        .saturating_add(k)
        .saturating_add(1)
        .min(n);
    lo..hi
}

/// How many copies of `t` leave: one per child for a group datagram marked for relaying, else
/// one.
pub(super) fn copies(t: &Transmit) -> usize {
    let k = wire::Header::ref_from_prefix(&t.bytes)
        .map_or(0, |(h, _)| wire::relay_fanout(h.flags.get()));
    if t.dest == Dest::Group && k >= 2 {
        k
    } else {
        1
    }
}

impl Protocol {
    /// The fan-out this node relays its own group datagrams with now (`None`: it sends each to
    /// every peer itself).
    pub(super) fn relay_k(&self) -> Option<usize> {
        let k = self.cfg.relay_fanout.min(usize::from(u8::MAX));
        let members = self.peers.len() - self.observers;
        (k >= 2 && members > k && !self.cfg.observer).then_some(k)
    }

    /// Marks a datagram of this node, which relays with fan-out `k`, and seals it again: a group
    /// datagram with `k` (but the goodbye and the unnumbered heartbeat, which go to every peer
    /// directly), a unicast one with [`FLAG_DIRECT`].
    pub(super) fn mark_relayed(&self, bytes: &mut Vec<u8>, dest: Dest, k: usize) {
        let Ok((h, _)) = wire::Header::ref_from_prefix(&bytes[..]) else {
            return;
        };
        let direct = h.kind == Kind::Goodbye as u8 || h.flags.get() & FLAG_DIRECT != 0;
        match dest {
            Dest::Group if direct => {}
            Dest::Group => self.seal.reflag(bytes, |f| {
                (f & 0xff) | ((k.min(255) as u16) << wire::RELAY_SHIFT)
            }),
            Dest::To(_) => self.seal.reflag(bytes, |f| f | FLAG_DIRECT),
        }
    }

    /// While relaying, every tick also sends a heartbeat to every peer directly, without a number
    /// of its own ([`FLAG_REPLY`], [`FLAG_DIRECT`]: it may overtake the tick's relayed datagrams,
    /// and says nothing of which were missed): every peer keeps hearing this node at its own
    /// address (where its address settles, so that it is sent to) and hears it alive while a
    /// relay above it is dead. (The numbered heartbeat of an idle tick travels the tree with the
    /// rest: sent directly, it overtook the last tick's relayed datagrams, which were then
    /// refused as stale.)
    /// It declares the digest ([`FLAG_END`]) when no change waits for a later tick.
    pub(super) fn send_direct_heartbeat(&mut self, now: Instant) {
        let end = if self.changed.is_empty() { FLAG_END } else { 0 };
        let flags = FLAG_REPLY | FLAG_DIRECT | end;
        let d = self.enc.bare(
            &self.seal,
            Kind::Heartbeat,
            flags,
            &self.stamp(now, self.sent_seq()),
        );
        self.push(Dest::Group, d);
    }

    /// Brings the live nodes by id, this node among them, up to date.
    fn relay_members(&mut self) {
        if self.relay.membership != Some(self.membership) {
            let r = &mut self.relay;
            r.members.clear();
            if !self.cfg.observer {
                r.members.push(self.cfg.node);
            }
            // Observers are not in the trees (they come and go, and do not hear of each other):
            // a sender sends them their copies itself.
            r.members.extend(
                self.peers
                    .iter()
                    .filter(|(_, p)| !p.observer)
                    .map(|(&n, _)| n),
            );
            r.members.sort_unstable();
            r.membership = Some(self.membership);
        }
    }

    /// The addresses of this node's children in the tree of `source` with fan-out `k`. A child
    /// whose address is not settled (heard first-hand at least twice: one intercepted or
    /// replayed datagram does not make an address this node sends to) is skipped for its own
    /// children, so that its subtree is not cut off with it.
    pub(super) fn relay_children(&mut self, source: u64, k: usize) -> Vec<SocketAddr> {
        let me = self.cfg.node;
        self.relay_members();
        let members = &self.relay.members;
        let n = members.len();
        let (Ok(s), Ok(m)) = (members.binary_search(&source), members.binary_search(&me)) else {
            return Vec::new();
        };
        let mut todo: Vec<usize> = children_of((m + n - s) % n, n, k).rev().collect();
        let mut out = Vec::with_capacity(k);
        while let Some(c) = todo.pop() {
            match self.peers.get(&members[(s + c) % n]) {
                Some(p) if p.settled() => out.push(p.addr),
                _ => todo.extend(children_of(c, n, k).rev()),
            }
        }
        out
    }

    /// The nodes above `node` in this node's own tree with fan-out `k` (its parent first, this
    /// node not among them): each forwards to `node`'s branch what it is sent marked for
    /// relaying.
    pub(super) fn relay_ancestors(&mut self, node: u64, k: usize) -> Vec<u64> {
        self.relay_members();
        let members = &self.relay.members;
        let n = members.len();
        let (Ok(s), Ok(c)) = (
            members.binary_search(&self.cfg.node),
            members.binary_search(&node),
        ) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut i = (c + n - s) % n;
        while i > 0 {
            i = (i - 1) / k.max(2);
            if i > 0 {
                out.push(members[(s + i) % n]);
            }
        }
        out
    }

    /// Forwards a peer's datagram (`h` its header), if it is marked for relaying, to this
    /// node's children in the sender's tree (once per datagram).
    pub(super) fn forward(&mut self, h: &wire::Header, bytes: &[u8]) {
        let (source, k) = (h.node.get(), wire::relay_fanout(h.flags.get()));
        if k < 2 || bytes.len() < wire::TAG_LEN {
            return;
        }
        let mut tag = [0; wire::TAG_LEN];
        tag.copy_from_slice(&bytes[bytes.len() - wire::TAG_LEN..]);
        if !self.relay.first(tag) {
            return;
        }
        for addr in self.relay_children(source, k) {
            self.stats.relayed += 1;
            self.stats.relayed_bytes += bytes.len() as u64;
            self.out.push_back(Transmit {
                dest: Dest::To(addr),
                bytes: bytes.to_vec(),
            });
        }
    }

    /// The next datagram to hand to the socket: a marked group datagram of this node leaves as
    /// one copy per child in its own tree (the rest queued in `relay_fan`), everything else as it is.
    pub(super) fn next_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.relay_fan.pop_front() {
            return Some(t);
        }
        let t = self.out.pop_front()?;
        let k = copies(&t);
        if k < 2 {
            return Some(t);
        }
        let mut children = self.relay_children(self.cfg.node, k);
        children.extend(
            self.peers
                .values()
                .filter(|p| p.observer && p.settled())
                .map(|p| p.addr),
        );
        let mut copies = children.into_iter().map(|addr| Transmit {
            dest: Dest::To(addr),
            bytes: t.bytes.clone(),
        });
        let first = copies.next();
        self.relay_fan.extend(copies);
        // No child known first-hand (peers heard only through relays so far): to every peer.
        Some(first.unwrap_or(t))
    }
}

#[cfg(test)]
mod tests {
    use super::children_of;

    /// Every position but the root is the child of exactly one position: a datagram reaches
    /// every node once.
    #[test]
    fn the_tree_covers_every_position_once() {
        for n in 1..200 {
            for k in 2..20 {
                let mut parent = vec![0usize; n];
                for i in 0..n {
                    for c in children_of(i, n, k) {
                        assert!(c > i, "a child comes after its parent");
                        parent[c] += 1;
                    }
                }
                assert_eq!(parent[0], 0);
                assert!(parent[1..].iter().all(|&p| p == 1), "n {n} k {k}");
            }
        }
    }
}
