//! Applying what was admitted: a datagram's effect on its sender's table, the cluster
//! aggregate (`remote`), names and events; and dropping peers (dead, restarted, gone).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::open::Names;
use super::peer::{Counts, Table, Tomb};
use super::sums::Sums;
use super::{HashMap, HashSet, NodeInfo, Peer, Protocol};
use crate::cluster::wire::{self, Body, FLAG_DIRECT, FLAG_END, FLAG_REPLY, Kind};

/// Most names kept for topics with no count yet.
pub(super) const PENDING_NAMES: usize = 1 << 16;

/// The cluster aggregate and what follows it (each topic's sum over the peers' tables, the
/// topics whose sum changed, their names), borrowed apart from the peers: a datagram's entries
/// are applied to its sender's table, found once, and here.
struct Aggregate<'a> {
    /// This node's own table (a topic it counts keeps its name).
    local: &'a Table,
    remote: &'a mut Sums,
    remote_topics: &'a mut usize,
    names: &'a mut Names,
    unnamed: &'a mut HashSet<u64>,
    pending_names: &'a mut Names,
    learned: &'a mut VecDeque<u64>,
    newly_unnamed: &'a mut usize,
}

impl Protocol {
    /// Applies an admitted datagram (admission made its sender a peer, unless it is a goodbye):
    /// the sender's sequence, address and clock, then its body; a final digest that does not
    /// match asks for a resync.
    pub(super) fn apply(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: wire::Datagram,
        raw: impl FnOnce() -> Arc<[u8]>,
    ) {
        let h = d.header;
        let (node, seq, time) = (h.node.get(), h.seq.get(), h.time.get());
        if d.kind == Kind::Goodbye {
            if self.peers.contains_key(&node) {
                self.drop_peer(node, now, true);
            } else {
                self.tombs.insert(
                    node,
                    Tomb {
                        incarnation: h.incarnation.get(),
                        addr: from,
                        barred: true,
                        last_seq: seq,
                        requests_seen: 0,
                        time,
                        heard: now,
                        until: now + self.cfg.tomb_ttl(),
                    },
                );
            }
            return;
        }
        let reply = d.kind == Kind::ResyncReply || h.flags.get() & FLAG_REPLY != 0;
        let declared = (h.digest.get(), h.topics.get());
        let end = h.flags.get() & FLAG_END != 0;
        // Sent directly by a peer that relays its group datagrams ([`FLAG_DIRECT`]).
        let direct = h.flags.get() & FLAG_DIRECT != 0;
        {
            let p = self.peers.get_mut(&node).expect("admitted");
            // New to this node (a reply may repeat the last number: a replay of it, from
            // anywhere, must not count towards an address).
            let fresh = seq > p.last_seq;
            // Sequence numbers skipped are missed: a group datagram's own number is the next;
            // a reply's (which carries the sender's current number) is one more missed, since
            // what it skips would now be refused as stale even if it is only late. Not so for
            // an answer sent directly by a peer that relays ([`FLAG_DIRECT`]): its group
            // datagrams take longer, and come in their order after it (what they carry is older
            // than the answer, but every later change follows them).
            if !(reply && direct) {
                let next = if reply { seq } else { seq.saturating_sub(1) };
                if next > p.last_seq {
                    p.lost += next - p.last_seq;
                    super::repair::add_gap(&mut p.gaps, p.last_seq + 1, next);
                    super::repair::add_gap(&mut p.recover.missed, p.last_seq + 1, next);
                }
                if seq > p.last_seq {
                    p.seq_at = now;
                }
                p.last_seq = p.last_seq.max(seq);
            }
            p.last_heard = now;
            if wire::relay_fanout(h.flags.get()) != 0 {
                // A relayed datagram comes from its relay's address, not its sender's: it says
                // nothing of the sender's address (the direct heartbeats below do).
            } else if d.kind == Kind::Heartbeat && direct {
                // A relaying peer's unnumbered heartbeat: newer by its clock than the last, or a
                // replay. It says what its relayed datagrams will bring (or have brought).
                if time > p.direct_time {
                    p.direct_time = time;
                    p.heard_from(from, now, self.cfg.dead_after / 2);
                    p.expect(seq, end.then_some(declared), now);
                }
            } else if fresh {
                p.heard_from(from, now, self.cfg.dead_after / 2);
            }
            if reply && direct && d.kind != Kind::Heartbeat {
                // An answer sent directly (a repair, a nack) carries the number the peer's
                // relayed datagrams have reached: those not come an interval later were missed,
                // as for its direct heartbeat (which may have been lost with them).
                p.expect(seq, None, now);
                if let Some(m) = p.marker.filter(|m| m.seq > p.last_seq) {
                    // Look again then (`request_where_needed`).
                    let at = m.at + self.cfg.resync_interval;
                    super::wake_at(&mut self.wake, at);
                }
            }
            p.time = p.time.max(time);
            p.tick = Duration::from_millis(u64::from(h.tick_ms.get()));
            p.received += 1;
            // An answer to this node's nack times the round (`repair/round_trip.rs`).
            match d.body {
                Body::Repair(lo, hi, _) | Body::RepairNames(lo, hi, _) => {
                    p.round_trip.answered(now, lo, hi);
                }
                Body::Parity { lo, .. } => p.round_trip.answered_block(now, lo),
                _ => {}
            }
            if let Body::Gaps(g) = d.body {
                // A nack: for this node, or what another receiver already asks of a peer.
                self.on_nack(now, node, g, direct, h.flags.get());
                return;
            }
            let relaying = self.relay_k().is_some();
            let p = self.peers.get_mut(&node).expect("admitted");
            if !reply && !end {
                // More of this tick's datagrams follow, or a backlog waits for later ticks:
                // what the peer declared before no longer holds, and its next final datagram
                // will say what does. (A stale declaration would make every tick of a
                // multi-tick burst look like divergence and ask for the whole table.)
                p.declared = None;
                if !p.gaps.is_empty() && relaying {
                    // Should the rest, the final datagram among it, not come: look again
                    // once the peer has been quiet an interval (`request_where_needed`).
                    let at = now + self.cfg.resync_interval;
                    super::wake_at(&mut self.wake, at);
                }
            }
            if p.observer {
                return;
            }
            if matches!(
                d.body,
                Body::Entries(_) | Body::Range(..) | Body::Repair(..)
            ) {
                // Counts come: the copy is sized for the table the peer says it has (at most
                // what a peer may hold here), not grown a few entries at a time.
                p.table
                    .map
                    .expect((declared.1 as usize).min(self.cfg.max_topics_per_peer));
            }
        }
        // One of its own numbered delta or names datagrams, sent to the group itself: held for
        // decoding its parity (`repair/recover.rs`).
        let numbered = !reply && wire::relay_fanout(h.flags.get()) == 0 && self.cfg.parity;
        if numbered {
            self.heard_numbered(node, seq);
        }
        match d.body {
            Body::Entries(e) => {
                if numbered {
                    self.hold(now, node, seq, raw());
                }
                self.note_set(node, seq, e.iter().map(|x| x.hash.get()));
                self.peer_set_all(node, e);
            }
            Body::Range(lo, hi, e) => {
                self.note_range(node, seq, lo, hi);
                let (peers, mut agg) = self.aggregate();
                let p = peers.get_mut(&node).expect("admitted");
                for h in unlisted(&p.table.map, lo, hi, e) {
                    agg.set(&mut p.table, h, 0);
                }
                agg.set_all(&mut p.table, e);
            }
            Body::Repair(lo, hi, e) => {
                self.note_set(node, seq, e.iter().map(|x| x.hash.get()));
                self.repaired(node, lo, hi);
                self.peer_set_all(node, e);
            }
            Body::RepairNames(lo, hi, names) => {
                self.repaired(node, lo, hi);
                self.learn_names(names);
            }
            Body::Names(names) => {
                if numbered {
                    self.hold(now, node, seq, raw());
                }
                self.learn_names(names);
            }
            Body::Parity {
                lo,
                members,
                index,
                payload,
            } => self.on_parity(node, (lo, members), index, payload),
            Body::Members(m) => {
                for m in m {
                    let (n, addr) = (m.node.get(), m.addr());
                    let known = self.peers.get(&n).is_some_and(|p| p.addr == addr);
                    if n != self.cfg.node
                        && !known
                        && self.cfg.gossip_members
                        && self.members_learned.len() < super::MAX_MEMBERS_LEARNED
                    {
                        self.members_learned.push_back((n, addr));
                    }
                }
            }
            Body::Digests(lo, hi, children) => self.on_digests(now, node, (lo, hi), children),
            Body::Empty | Body::Target { .. } | Body::Ranges { .. } | Body::Gaps(_) => {}
        }
        if end || d.kind == Kind::Heartbeat {
            let unnamed = !self.unnamed.is_empty();
            let p = self.peers.get_mut(&node).expect("admitted");
            // (What a relaying peer sends directly may overtake its relayed datagrams: its
            // declaration holds once they came, or are overdue; see `Peer::marker`.)
            if end && !direct {
                p.declared = Some(declared);
            }
            if p.converged() {
                p.over_cap = false;
                p.backoff = Duration::ZERO;
                p.digest_rounds = 0;
                p.digests_asked.clear();
                // Its counts are right. What this node missed of it may still hold names (the
                // digest does not cover them): the gaps stay while some topic has no name here.
                if !unnamed {
                    p.gaps.clear();
                    p.asked.clear();
                    p.nacks = 0;
                    p.least_need = None;
                    p.nack_at = None;
                } else if !p.gaps.is_empty() {
                    self.request_where_needed(now);
                }
            } else if end {
                self.request_where_needed(now);
            }
        }
        self.trim_held(now, node);
    }

    /// Names a peer sent (with a count, in a reply or a repair).
    pub(super) fn learn_names(&mut self, names: wire::Names) {
        const CHUNK: usize = 64;
        const AHEAD: usize = 16;
        let mut names = names.raw();
        let mut chunk: [(u64, &[u8]); CHUNK] = [(0, &[]); CHUNK];
        loop {
            let n = chunk
                .iter_mut()
                .zip(&mut names)
                .map(|(c, e)| *c = e)
                .count();
            if n == 0 {
                return;
            }
            // Most names come more than once (every node that counts a topic announces it):
            // one lookup settles those, before their bytes are checked again as UTF-8. Each
            // slot is prefetched `AHEAD` names before its lookup, so that the misses overlap;
            // the few names not known here are then looked up among the sums, prefetched
            // together too.
            for (h, _) in chunk[..n].iter().take(AHEAD) {
                self.names.prefetch(*h);
            }
            let mut unknown = 0;
            for i in 0..n {
                if let Some(&(next, _)) = chunk[..n].get(i + AHEAD) {
                    self.names.prefetch(next);
                }
                if !self.names.contains_key(chunk[i].0) {
                    chunk[unknown] = chunk[i];
                    unknown += 1;
                }
            }
            for (h, _) in &chunk[..unknown] {
                self.remote.prefetch(*h);
            }
            for &(h, name) in &chunk[..unknown] {
                // (A name may come twice in one datagram: the first is known by now.)
                if !self.names.contains_key(h)
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    self.learn_unknown_name(h, name);
                }
            }
        }
    }

    /// Topic `hash` is called `name`, as this node learned other than from its peers here (a
    /// zoned node's other group): taken as a peer's announcement would be (kept while the topic
    /// is counted, or waits for its count in a bounded side table).
    pub fn learn_name(&mut self, hash: u64, name: &str) {
        if !self.names.contains_key(hash) {
            self.learn_unknown_name(hash, name);
        }
    }

    /// [`Protocol::learn_name`] for a name the caller found unknown here.
    fn learn_unknown_name(&mut self, hash: u64, name: &str) {
        // Names of topics not counted yet (the counts may be in flight) wait in a bounded side
        // table, so that names alone cannot grow memory.
        if !self.remote.contains(hash) && !self.table.map.contains_key(&hash) {
            // (Every node that counts a topic announces it: the first announcement is kept.)
            if !self.pending_names.contains_key(hash) {
                if self.pending_names.len() >= PENDING_NAMES {
                    self.pending_names.clear();
                }
                self.pending_names.insert(hash, name);
            }
            return;
        }
        self.names.insert(hash, name);
        self.unnamed.remove(&hash);
        self.learned.push_back(hash);
    }

    /// Peer `node` repaired its sequence numbers `lo..=hi`: they are no longer missing here.
    pub(super) fn repaired(&mut self, node: u64, lo: u64, hi: u64) {
        if let Some(p) = self.peers.get_mut(&node)
            && !p.gaps.is_empty()
        {
            let left = super::repair::subtract(&p.gaps, &[(lo, hi)]);
            if left != p.gaps {
                // A round that mended something did not fail: the rounds count afresh. (They
                // were counted until a final digest matched, and while the peer's counts
                // changed every tick none did: one loss a tick, each mended, used them up, and
                // the next single loss was asked for as the whole table.)
                p.nacks = 0;
            }
            p.gaps = left;
        }
    }

    /// Drops the peers not heard from for too long, and forgets old tombstones.
    pub(super) fn expire(&mut self, now: Instant) {
        let dead: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.last_heard) > self.cfg.dead_after.max(p.tick * 3)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in dead {
            if self.peers.get(&n).is_some_and(|p| !p.observer) {
                self.stats.peers_died += 1;
            }
            self.drop_peer(n, now, false);
        }
        self.tombs.retain(|_, t| t.until > now);
        // Tombstones are made only by authenticated datagrams of peers that were admitted, so
        // this bound is rarely reached; past it the oldest go first.
        let cap = self.cfg.max_peers + self.cfg.max_observers;
        if self.tombs.len() > cap {
            let mut by_age: Vec<(Instant, u64)> =
                self.tombs.iter().map(|(n, t)| (t.until, *n)).collect();
            by_age.sort_unstable();
            for (_, n) in by_age.iter().take(self.tombs.len() - cap) {
                self.tombs.remove(n);
            }
        }
        let tombs = &self.tombs;
        self.dead.retain(|n, _| tombs.contains_key(n));
        if self.rates.len() > 4 * self.cfg.max_peers {
            self.rates.clear();
        }
    }

    /// Removes a peer and its counts, keeping a tombstone. `barred`: its incarnation never comes
    /// back (it said goodbye, or a newer incarnation replaced it).
    pub(super) fn drop_peer(&mut self, node: u64, now: Instant, barred: bool) {
        let Some(p) = self.peers.remove(&node) else {
            return;
        };
        self.release_held(&p.recover);
        self.membership += 1;
        self.repairs.cancel(p.addr);
        if p.observer {
            self.observers -= 1;
        }
        self.remote_topics -= p.table.len();
        let (_, mut agg) = self.aggregate();
        for (h, c) in p.table.map.iter() {
            agg.sub(h, c);
        }
        if !p.observer {
            let info = NodeInfo {
                node,
                addr: p.addr,
                found: None,
                incarnation: p.incarnation,
                last_heard: now.saturating_duration_since(p.last_heard),
                alive: false,
                converged: false,
                over_cap: false,
                topics: 0,
                table_bytes: 0,
                total: 0,
                received: p.received,
                lost: p.lost,
                rejected: p.rejected,
            };
            self.dead.insert(node, (info, now));
        }
        self.tombs.insert(
            node,
            Tomb {
                incarnation: p.incarnation,
                addr: p.addr,
                barred,
                last_seq: p.last_seq,
                requests_seen: p.requests_seen,
                time: p.time,
                heard: p.last_heard,
                until: now + self.cfg.tomb_ttl(),
            },
        );
    }

    /// The peers, and the aggregate borrowed apart from them.
    fn aggregate(&mut self) -> (&mut HashMap<u64, Peer>, Aggregate<'_>) {
        let agg = Aggregate {
            local: &self.table,
            remote: &mut self.remote,
            remote_topics: &mut self.remote_topics,
            names: &mut self.names,
            unnamed: &mut self.unnamed,
            pending_names: &mut self.pending_names,
            learned: &mut self.learned,
            newly_unnamed: &mut self.newly_unnamed,
        };
        (&mut self.peers, agg)
    }

    /// Sets peer `node`'s count of `h`.
    pub(super) fn peer_set(&mut self, node: u64, h: u64, c: u32) {
        let (peers, mut agg) = self.aggregate();
        if let Some(p) = peers.get_mut(&node) {
            agg.set(&mut p.table, h, c);
        }
    }

    /// Sets peer `node`'s counts of `entries`, in order.
    pub(super) fn peer_set_all(&mut self, node: u64, entries: &[wire::Entry]) {
        let (peers, mut agg) = self.aggregate();
        if let Some(p) = peers.get_mut(&node) {
            agg.set_all(&mut p.table, entries);
        }
    }
}

/// The hashes of `map` in `lo..=hi` that `listed` does not hold, in hash order. A range's
/// entries come sorted (a slice of the sender's table): the two sorted runs are walked side by
/// side (the rotating refresh's ranges, nearly all held already, were a binary search a hash:
/// about half of an idle 256 × 100k cluster's time); others are sorted first.
fn unlisted(map: &Counts, lo: u64, hi: u64, listed: &[wire::Entry]) -> Vec<u64> {
    let key = |e: &wire::Entry| e.hash.get();
    let range = map.range(lo, hi).map(|(h, _)| h);
    if listed.is_sorted_by_key(key) {
        return not_in(range, listed.iter().map(key));
    }
    let mut sorted: Vec<u64> = listed.iter().map(key).collect();
    sorted.sort_unstable();
    not_in(range, sorted.into_iter())
}

/// The hashes of `held` not in `listed`, both in ascending order.
fn not_in(held: impl Iterator<Item = u64>, listed: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut listed = listed.peekable();
    held.filter(|&h| {
        while listed.next_if(|&l| l < h).is_some() {}
        listed.peek() != Some(&h)
    })
    .collect()
}

impl Aggregate<'_> {
    /// A peer's count `c` of `h` leaves the aggregate.
    fn sub(&mut self, h: u64, c: u32) {
        if c != 0 && self.remote.sub(h, c) {
            self.unnamed.remove(&h);
            if !self.local.map.contains_key(&h) {
                self.names.remove(h);
            }
        }
    }

    /// A peer's count `c` of `h` joins the aggregate.
    fn add(&mut self, h: u64, c: u32) {
        if c != 0 && self.remote.add(h, c) && !self.names.contains_key(h) {
            match self.pending_names.get(h) {
                Some(n) => {
                    self.names.insert(h, n);
                    self.pending_names.remove(h);
                    self.learned.push_back(h);
                }
                None => {
                    if self.unnamed.insert(h) {
                        *self.newly_unnamed += 1;
                    }
                }
            }
        }
    }

    /// Sets a peer's counts of `entries` in its `table`, in order, and follows them here.
    ///
    /// Nearly all of it is waiting on cache misses: each entry is a search and a move in a
    /// bucket of the peer's table and a lookup in `remote` (a topic-sized table, which also
    /// marks what changed), none of them likely in cache. So an entry's place in the peer's
    /// table is prefetched `2 * AHEAD` entries before it is set, and, if the entry changes it
    /// (not the rotating refresh's, nearly all held already), its sum `AHEAD` entries before:
    /// the misses overlap, and the changes, made in order, find what they need in cache. (In
    /// chunks of 32, each prefetched whole before it was set, a chunk's first lookups waited
    /// on misses just asked for; with `learn_names` done so too, a lossless 256 × 100k run
    /// takes about 9 % less user CPU, `perf/RESULTS.md`.)
    fn set_all(&mut self, table: &mut Table, entries: &[wire::Entry]) {
        const AHEAD: usize = 8;
        for e in entries.iter().take(2 * AHEAD) {
            table.map.prefetch(e.hash.get());
        }
        let changes = |table: &Table, e: &wire::Entry| {
            table.map.get(&e.hash.get()).copied().unwrap_or(0) != e.count.get()
        };
        for e in entries.iter().take(AHEAD) {
            if changes(table, e) {
                self.remote.prefetch(e.hash.get());
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if let Some(next) = entries.get(i + 2 * AHEAD) {
                table.map.prefetch(next.hash.get());
            }
            if let Some(next) = entries.get(i + AHEAD)
                && changes(table, next)
            {
                self.remote.prefetch(next.hash.get());
            }
            self.set(table, e.hash.get(), e.count.get());
        }
    }

    /// Sets a peer's count of `h` in its `table` and follows it here.
    fn set(&mut self, table: &mut Table, h: u64, c: u32) {
        let before = table.len();
        let old = table.set(h, c);
        let after = table.len();
        *self.remote_topics = *self.remote_topics + after - before;
        if old == c {
            return;
        }
        if old != 0 && c != 0 {
            // A count that changes without leaving: the sum moves in one step (through zero,
            // a topic only one peer counts would lose its name and be asked for again).
            self.remote.replace(h, old, c);
        } else {
            self.sub(h, old);
            self.add(h, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The side-by-side walk answers as a set difference would, repeats in `listed`
        /// included.
        #[test]
        fn not_in_is_the_set_difference(
            held in proptest::collection::btree_set(0u64..200, 0..60),
            mut listed in proptest::collection::vec(0u64..220, 0..60),
        ) {
            listed.sort_unstable();
            let want: Vec<u64> = held.iter().copied().filter(|h| !listed.contains(h)).collect();
            prop_assert_eq!(super::not_in(held.into_iter(), listed.into_iter()), want);
        }
    }
}
