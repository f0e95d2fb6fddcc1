//! Nacks, both sides (see the parent module's docs): sending the gaps this node missed of its
//! peers (held back when another receiver already asked for them; while this node relays, to
//! each sender directly), and answering the gaps others missed of this node.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::{Dest, Protocol};
use super::{Bid, Gap, add_asked, add_bid, outbid, subtract};
use crate::cluster::wire;

impl Protocol {
    /// The nacks due now: for each peer whose copy is wrong and whose gaps are known, the gaps
    /// that no other receiver asked for within the last resync interval (a peer whose gaps
    /// were all asked for is held back: the repair to the group serves it too).
    pub(in crate::cluster::protocol) fn send_nacks(&mut self, now: Instant, due: &[u64]) {
        let every = self.cfg.resync_interval;
        let per_entries = self.enc.entries_per_datagram(wire::Kind::ResyncReply);
        // Gaps to be answered with parity, and gaps for plain repairs (see `recover.rs`). The
        // first are held back only when another receiver asked for all of them: parity is sent
        // for the largest loss asked for, and one that asked for less would leave this node
        // short.
        let mut coded: Vec<Gap> = Vec::new();
        let mut again: Vec<Gap> = Vec::new();
        let mut list: Vec<Gap> = Vec::new();
        for &node in due {
            let Some(p) = self.peers.get_mut(&node) else {
                continue;
            };
            p.asked
                .retain(|a| now.saturating_duration_since(a.2) < every);
            let asked: Vec<(u64, u64)> = p.asked.iter().map(|a| (a.0, a.1)).collect();
            let (mut by_parity, plain) = if self.cfg.parity {
                p.recover.split(&p.gaps, false)
            } else {
                (Vec::new(), p.gaps.clone())
            };
            let left = subtract(&plain, &asked);
            let need = seqs(&by_parity).saturating_add(seqs(&plain));
            // Where giving up on nacks means reconciling by range digests (see below), a round
            // after one that brought nothing (it needs no less than the least yet) asks for a
            // spare symbol of each block it holds symbols of: one more loss then costs no
            // round.
            let big = p.big(per_entries);
            if big && self.cfg.parity && p.least_need.is_some_and(|l| need >= l) {
                by_parity = p.recover.split(&p.gaps, true).0;
            }
            // A first nack is held back where other receivers asked for each number it misses,
            // or one of them for as many of a block (`outbid`). A later round asks for symbols
            // beyond those it counted: another's nack may be answered by the very symbols it
            // counted, so it is never held back. (Held back for a later nack that asked as
            // many, 256 nodes at 10 % loss sent a third fewer nack bytes but were exact up to
            // 80 ms later.)
            let later = p.nacks > 0 || p.recover.has_symbols();
            p.bids
                .retain(|b| now.saturating_duration_since(b.at) < every);
            if !later && (subtract(&by_parity, &asked).is_empty() || outbid(&by_parity, &p.bids)) {
                by_parity.clear();
            }
            p.nack_at = None;
            p.last_request = Some(now);
            // A round that asks for less than every round before it follows one that was
            // answered: where giving up on nacks means reconciling by range digests (rounds
            // of round trips, each of which loss can delay an interval), only rounds that
            // bring nothing count. A small table is fetched whole in one round trip instead:
            // there every round counts (more rounds made 256 × 2k slower at 10 % loss).
            match p.least_need {
                Some(l) if need >= l => {}
                least => {
                    if least.is_some() && big {
                        p.nacks = 0;
                    }
                    p.least_need = Some(need);
                }
            }
            p.nacks += 1;
            if left.is_empty() && by_parity.is_empty() {
                self.stats.nacks_suppressed += 1;
                continue;
            }
            p.round_trip
                .asked(now, left.iter().chain(&by_parity).copied());
            let to = if later { &mut again } else { &mut coded };
            to.extend(by_parity.iter().map(|&(lo, hi)| Gap::new(node, lo, hi)));
            list.extend(left.iter().map(|&(lo, hi)| Gap::new(node, lo, hi)));
        }
        if list.is_empty() && coded.is_empty() && again.is_empty() {
            return;
        }
        self.stats.nacks_sent += 1;
        let before = self.stats.bytes_sent;
        let st = self.stamp(now, self.sent_seq());
        if self.relay_k().is_none() {
            for (flags, gaps) in [(0, &coded), (wire::FLAG_AGAIN, &again)] {
                for d in self.enc.nacks(&self.seal, flags, &st, gaps) {
                    self.push(Dest::Group, d);
                }
            }
        } else {
            // (Direct nacks are answered plainly.)
            list.append(&mut coded);
            list.append(&mut again);
        }
        let plain = wire::FLAG_PLAIN;
        if self.relay_k().is_some() {
            // Relayed, a nack would take as many hops as the repair it asks for, each a chance
            // of loss: to each sender directly, at its settled address (the others' nacks are
            // not heard then; the sender answers each asker). Gaps of a sender whose address is
            // not settled yet go to the group (along the tree) as before. A direct nack goes
            // twice: no other receiver's nack stands in for it when it is lost, and a lost one
            // cost a resync interval (the sender answers the second copy only if the first was
            // lost: what it has queued or just sent is not sent again).
            list.sort_unstable_by_key(|g| g.node.get());
            let mut group = Vec::new();
            for chunk in list.chunk_by(|a, b| a.node.get() == b.node.get()) {
                let to = self.peers.get(&chunk[0].node.get());
                match to.filter(|p| p.settled()).map(|p| p.addr) {
                    Some(addr) => {
                        for d in self.enc.nacks(&self.seal, plain, &st, chunk) {
                            self.push(Dest::To(addr), d.clone());
                            self.push(Dest::To(addr), d);
                        }
                    }
                    None => group.extend_from_slice(chunk),
                }
            }
            list = group;
        }
        for d in self.enc.nacks(&self.seal, plain, &st, &list) {
            self.push(Dest::Group, d);
        }
        self.stats.nack_bytes += self.stats.bytes_sent - before;
    }

    /// A nack from peer `requester`: this node's gaps are repaired (to the requester if it sent
    /// the nack directly, `direct`, else to the group), and the others' are remembered so that
    /// this node does not ask for them again meanwhile.
    pub(in crate::cluster::protocol) fn on_nack(
        &mut self,
        now: Instant,
        requester: u64,
        gaps: &[wire::Gap],
        direct: bool,
        flags: u16,
    ) {
        let from = self
            .peers
            .get(&requester)
            .filter(|p| p.settled())
            .map(|p| p.addr);
        let oldest = self.repairs.oldest();
        // A gap older than the history is answered by reconciling the whole range, which scans
        // the table: that counts against the requester's digest budget, like a digest request
        // for the whole space (a replayed nack would otherwise have the table scanned at the
        // repair bucket's pace). Charged once per nack.
        let mut old_gap_to: Option<Option<SocketAddr>> = None;
        let mut own: Vec<(u64, u64)> = Vec::new();
        // A first nack to the group for parity bids for each peer it names: how many of its
        // numbers, and where (see `outbid`).
        let first = !direct && flags & (wire::FLAG_PLAIN | wire::FLAG_AGAIN) == 0;
        let mut bids: Vec<(u64, Bid)> = Vec::new();
        for g in gaps {
            let (node, lo, hi) = (g.node.get(), g.lo.get(), g.hi.get());
            if node == self.cfg.node {
                own.push((lo, hi));
            } else if let Some(p) = self.peers.get_mut(&node) {
                add_asked(&mut p.asked, lo, hi, now);
                if first && lo <= hi {
                    let count = (hi - lo).saturating_add(1);
                    match bids.iter_mut().find(|b| b.0 == node) {
                        Some((_, b)) => {
                            b.lo = b.lo.min(lo);
                            b.hi = b.hi.max(hi);
                            b.count = b.count.saturating_add(count);
                        }
                        None => bids.push((
                            node,
                            Bid {
                                lo,
                                hi,
                                count,
                                at: now,
                            },
                        )),
                    }
                }
            }
        }
        for (node, bid) in bids {
            if let Some(p) = self.peers.get_mut(&node) {
                add_bid(&mut p.bids, bid);
            }
        }
        if self.cfg.observer || own.is_empty() {
            return;
        }
        // A group nack is answered with parity where it can be (`parity.rs`); the rest, and
        // every direct nack (this node relays), plainly.
        let plain = flags & wire::FLAG_PLAIN != 0;
        if !direct && !plain && self.cfg.parity && self.relay_k().is_none() {
            // A later round's nack: the round trip to its sender bounds when it cannot have
            // had the symbols another's later nack just brought (this node's estimate as a
            // receiver of that sender's repairs).
            let again = (flags & wire::FLAG_AGAIN != 0).then(|| {
                let window = self.cfg.nack_window;
                self.peers
                    .get(&requester)
                    .map_or(window, |p| p.round_trip.later_window(window))
            });
            own = self.code_nack(now, &own, again);
        }
        for (lo, hi) in own {
            let to = if lo < oldest {
                *old_gap_to.get_or_insert_with(|| {
                    from.filter(|_| self.charge_scan(now, requester, 1u128 << 64))
                })
            } else {
                from
            };
            self.nacked(now, to, (lo, hi), direct.then_some(requester));
        }
    }
}

/// Sequence numbers in inclusive ranges `gaps`.
fn seqs(gaps: &[(u64, u64)]) -> u64 {
    gaps.iter()
        .map(|&(lo, hi)| (hi - lo).saturating_add(1))
        .fold(0, u64::saturating_add)
}
