//! Reconciling by range digests, both sides (see the parent module's docs): serving the
//! ranges a digest request asks for (entries, or the digests of a range's children), asking a
//! peer for ranges, and reading its digest replies.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::{Dest, Protocol};
use super::{FEW, RangeJob};
use crate::cluster::wire::{self, FLAG_END, FLAG_STATE, Kind, child_range};

impl Protocol {
    /// Queues `ranges` of this node's table for `to` (a digest request admitted): their entries
    /// (`entries`), or each reconciled (entries if few, else its children's digests).
    pub(in crate::cluster::protocol) fn serve_ranges(
        &mut self,
        now: Instant,
        to: SocketAddr,
        entries: bool,
        ranges: &[(u64, u64)],
    ) {
        let t = self.repairs.reply_to(to);
        for &(lo, hi) in ranges {
            t.add(if entries {
                RangeJob::Entries(lo, hi)
            } else {
                RangeJob::Reconcile(lo, hi)
            });
        }
        if t.done() {
            // Nothing waits for `to` (a request with no range): an empty answer would only
            // hold a place among the answers in progress.
            self.repairs.tables.retain(|t| t.to != to || !t.done());
        }
        self.pump_repairs(now);
    }

    /// Sends one datagram of range job `job` for `to`: a digest reply, or a slice of entries
    /// (what remains of the range waits, first in line).
    pub(super) fn range_step(&mut self, now: Instant, to: SocketAddr, job: RangeJob) {
        let per = self.enc.entries_per_datagram(Kind::ResyncReply);
        let (lo, hi) = match job {
            RangeJob::Entries(lo, hi) => (lo, hi),
            RangeJob::Reconcile(lo, hi) => {
                let fanout = self.enc.fanout();
                let many = self.table.map.range(lo, hi).nth(FEW * per).is_some();
                if many && fanout >= 2 {
                    let children: Vec<(u64, u32)> = (0..fanout)
                        .map(|i| {
                            child_range(lo, hi, fanout, i)
                                .map_or((0, 0), |(a, b)| self.table.range_digest(a, b))
                        })
                        .collect();
                    let st = self.stamp(now, self.sent_seq());
                    let d = self
                        .enc
                        .digest_reply(&self.seal, 0, &st, (lo, hi), &children);
                    self.stats.digest_replies += 1;
                    self.push(Dest::To(to), d);
                    return;
                }
                (lo, hi)
            }
        };
        let (_, to_hi, e) = self.slice(lo, hi, per);
        let more = to_hi < hi;
        let t = self.repairs.tables.front_mut().filter(|t| t.to == to);
        let last = match t {
            Some(t) => {
                if more {
                    t.ranges.push_front(RangeJob::Entries(to_hi + 1, hi));
                }
                t.done()
            }
            None => !more,
        };
        // The answer's last datagram says the digest is final, when no change waits: the
        // requester checks its copy again.
        let flags = if last && self.changed.is_empty() {
            FLAG_END
        } else {
            0
        };
        let d = self.enc.entries(
            &self.seal,
            Kind::ResyncReply,
            flags,
            &self.stamp(now, self.sent_seq()),
            Some((lo, to_hi)),
            &e,
        );
        self.push(Dest::To(to), d);
    }

    /// Asks peer `node` for `ranges` of its table: their entries (`entries`), or each
    /// reconciled. Nothing is sent to a peer not settled at its address.
    pub(in crate::cluster::protocol) fn ask_ranges(
        &mut self,
        now: Instant,
        node: u64,
        entries: bool,
        ranges: &[(u64, u64)],
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        if !p.settled() || ranges.is_empty() {
            return;
        }
        p.last_request = Some(now);
        if !entries {
            for &r in ranges {
                if !p.digests_asked.contains(&r) {
                    if p.digests_asked.len() >= super::super::peer::MAX_DIGESTS_ASKED {
                        p.digests_asked.pop_front();
                    }
                    p.digests_asked.push_back(r);
                }
            }
        }
        let (addr, inc) = (p.addr, p.incarnation);
        let st = self.stamp(now, self.sent_seq());
        let mut n = self.requests;
        let flags = if entries { FLAG_STATE } else { 0 };
        let dgs = self.enc.digest_requests(
            &self.seal,
            flags,
            &st,
            (node, inc),
            &mut || {
                n += 1;
                n
            },
            ranges,
        );
        self.requests = n;
        for d in dgs {
            self.stats.digest_requests += 1;
            self.push(Dest::To(addr), d);
        }
        // A request or its answer may be lost: look again after one interval.
        let at = now + self.cfg.resync_interval;
        super::super::wake_at(&mut self.wake, at);
    }

    /// A digest reply from peer `node` for `[lo, hi]`: the children whose digest or size
    /// differ from this node's copy are asked for again — their entries outright when most of
    /// them differ or this node's copy of one is empty, else each reconciled in turn.
    pub(in crate::cluster::protocol) fn on_digests(
        &mut self,
        now: Instant,
        node: u64,
        (lo, hi): (u64, u64),
        children: &[wire::Digest],
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        // A copy over a cap is incomplete whatever its digests say: it is asked for whole,
        // with backoff.
        if p.over_cap || p.observer {
            return;
        }
        // A range below the root only if this node asked for it, once: a replayed reply, or
        // one nobody asked for, would have it scan its copy and ask again. The root is taken
        // whenever it comes (a nack of a gap older than the peer's history is answered with it,
        // unasked, and it shows the peer's table of now, which may be ahead of what this copy
        // was last declared right against); its replays cost a scan, and what it makes this
        // node ask is within the peer's digest budget. Only an asked-for reply shows that the
        // peer answers (else it would never fall back to the whole table).
        match p.digests_asked.iter().position(|&r| r == (lo, hi)) {
            Some(i) => {
                p.digests_asked.remove(i);
                p.digest_rounds = 0;
            }
            None if (lo, hi) == (0, u64::MAX) => {}
            None => return,
        }
        let n = children.len();
        let mut fetch = Vec::new();
        let mut reconcile = Vec::new();
        for (i, c) in children.iter().enumerate() {
            // An empty child (a range narrower than its children) holds nothing.
            let Some((a, b)) = child_range(lo, hi, n, i) else {
                continue;
            };
            let mine = p.table.range_digest(a, b);
            if mine == (c.digest.get(), c.topics.get()) {
                continue;
            }
            // A child as wide as its parent would be asked for again and again.
            if mine.1 == 0 || (a, b) == (lo, hi) {
                fetch.push((a, b));
            } else {
                reconcile.push((a, b));
            }
        }
        if (fetch.len() + reconcile.len()) * 2 > n {
            // Most of the range differs: its entries cost about what reconciling it would, in
            // fewer round trips.
            fetch.append(&mut reconcile);
            fetch.sort_unstable();
        }
        self.ask_ranges(now, node, true, &fetch);
        self.ask_ranges(now, node, false, &reconcile);
    }
}
