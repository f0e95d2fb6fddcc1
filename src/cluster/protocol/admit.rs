//! Admission: whether a received datagram may change anything, by the rules of the module docs
//! (rate, seal, clock, identity, incarnation and tombstones, freshness, caps, resync requests).
//!
//! Admission decides; [`super::apply`] and [`super::send`] act. What admission itself changes is
//! only the bookkeeping its rules need: the rate buckets, a request number and
//! reply time used, and the peer entry of a sender it lets in (a new node, one revived from its
//! tombstone, or a restart, which drops the old incarnation's counts at once).

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::peer::{Peer, Table};
use super::{Outcome, Protocol};
use crate::cluster::wire::{
    self, Body, FLAG_NAMES, FLAG_OBSERVER, FLAG_REPLY, FLAG_STATE, Kind, Reject,
};

/// A token bucket: datagrams per source address.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

/// What an admitted datagram is for.
#[derive(Debug)]
pub(super) enum Admitted<'a> {
    /// This node's own datagram (multicast loops back): nothing to do.
    Own,
    /// A datagram of a peer (in the peer table now, unless it is a goodbye), to apply whole.
    Update(wire::Datagram<'a>),
    /// A resync request to answer, to its sender only: its table (`state`), its names, or both.
    Request {
        /// Send the names.
        names: bool,
        /// Send the table.
        state: bool,
        /// The topics whose names are asked for (empty: all).
        only: Vec<u64>,
    },
    /// A digest request to answer, to its sender only: hash ranges of this node's table.
    Ranges {
        /// Their entries (else each reconciled: entries if few, else its children's digests).
        entries: bool,
        /// The ranges (each `lo <= hi`).
        ranges: Vec<(u64, u64)>,
    },
}

impl Protocol {
    /// One received datagram (`shared`: the same bytes, held shared; `checked`: their tag,
    /// checked already): admitted, then applied or answered.
    pub(super) fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        shared: Option<&Arc<[u8]>>,
        checked: Option<&wire::Checked>,
    ) -> Outcome {
        match self.admit(now, from, bytes, checked) {
            Ok(Admitted::Own) => Outcome::Own,
            Ok(Admitted::Update(d)) => {
                self.stats.received += 1;
                self.forward(d.header, bytes);
                let raw = || shared.cloned().unwrap_or_else(|| bytes.into());
                self.apply(now, from, d, raw);
                Outcome::Applied
            }
            Ok(Admitted::Request { names, state, only }) => {
                self.stats.received += 1;
                self.serve_resync(now, from, names, state, &only);
                Outcome::Applied
            }
            Ok(Admitted::Ranges { entries, ranges }) => {
                self.stats.received += 1;
                self.serve_ranges(now, from, entries, &ranges);
                Outcome::Applied
            }
            Err(r) => {
                // From a peer, authentic and fresh, refused for this node's caps: the nodes below
                // it in the sender's tree still get it. (A sender refused as one peer too many
                // is in no tree here: nothing to forward.)
                if r == Reject::TooManyTopics
                    && let Ok(d) = self.seal.open_with(bytes, checked)
                {
                    self.forward(d.header, bytes);
                }
                Outcome::Rejected(r)
            }
        }
    }

    /// Rules 1 to 8 for one received datagram. A rejection is counted (and charged to the
    /// sender's node when it is known).
    pub(super) fn admit<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
        checked: Option<&wire::Checked>,
    ) -> Result<Admitted<'a>, Reject> {
        if !self.rate_ok(from, now) {
            return Err(self.reject(Reject::Rate, None));
        }
        let d = match self.seal.open_with(bytes, checked) {
            Ok(d) => d,
            Err(r) => return Err(self.reject(r, None)),
        };
        let h = d.header;
        let (node, inc, time) = (h.node.get(), h.incarnation.get(), h.time.get());
        if node == self.cfg.node {
            return match inc.cmp(&self.cfg.incarnation) {
                Ordering::Equal => Ok(Admitted::Own),
                // Another process with this id: a newer one, or an older one still sending
                // after this one started. (Before that: its leftovers, or a replay.)
                Ordering::Greater => Err(self.reject(Reject::NodeId, None)),
                Ordering::Less if time >= self.cfg.clock.unix_ms => {
                    Err(self.reject(Reject::NodeId, None))
                }
                Ordering::Less => Err(self.reject(Reject::Incarnation, None)),
            };
        }
        if self.cfg.zone != 0 && super::zone_of(node) == self.cfg.zone {
            // A zone mate, in the cross-zone group: what it says here is the zone's sum, which
            // this node already has from the zone's own group.
            return Err(self.reject(Reject::Zone, None));
        }
        let here = self.cfg.clock.unix_ms(now);
        if here.abs_diff(time) > self.cfg.max_clock_skew.as_millis() as u64 {
            return Err(self.reject(Reject::Clock, Some(node)));
        }
        if let Body::Target {
            node: target,
            incarnation: target_inc,
            request,
            names,
        } = d.body
        {
            let r = self.admit_request(now, from, &d, target, target_inc, request);
            return r.map(|a| match a {
                Admitted::Request {
                    names: n, state, ..
                } => Admitted::Request {
                    names: n,
                    state,
                    only: names.iter().map(|h| h.get()).collect(),
                },
                other => other,
            });
        }
        if let Body::Ranges {
            node: target,
            incarnation: target_inc,
            request,
            ranges,
        } = d.body
        {
            let entries = h.flags.get() & FLAG_STATE != 0;
            let ranges: Vec<(u64, u64)> = ranges.iter().map(|r| (r.lo.get(), r.hi.get())).collect();
            // Reconciling a range scans it, and asking for its entries sends them all: what a
            // request costs grows with the width of the ranges it asks for.
            let scan = ranges.iter().map(|&(lo, hi)| u128::from(hi - lo) + 1).sum();
            self.admit_digest_request(now, from, &d, (target, target_inc, request), scan)?;
            return Ok(Admitted::Ranges { entries, ranges });
        }
        if let Err(r) = self.admit_sender(now, from, &d) {
            return Err(self.reject(r, Some(node)));
        }
        Ok(Admitted::Update(d))
    }

    /// Rule 1: the per-source rate.
    fn rate_ok(&mut self, from: SocketAddr, now: Instant) -> bool {
        let max = f64::from(self.cfg.max_rate);
        let b = self.rates.entry(from).or_insert(Bucket {
            tokens: max,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * max).min(max);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a rejection (against peer `node` too, when it is one); returns it.
    fn reject(&mut self, r: Reject, node: Option<u64>) -> Reject {
        self.stats.rejected[r.index()] += 1;
        if let Some(p) = node.and_then(|n| self.peers.get_mut(&n)) {
            p.rejected += 1;
        }
        r
    }

    /// Rules 5 to 7 for a datagram that is not a request: on success the sender is a peer (new,
    /// revived from its tombstone, or replacing an older incarnation) and the datagram may be
    /// applied whole.
    fn admit_sender(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: &wire::Datagram,
    ) -> Result<(), Reject> {
        let h = d.header;
        let (node, inc, seq, time) = (h.node.get(), h.incarnation.get(), h.seq.get(), h.time.get());
        let reply = matches!(
            d.kind,
            Kind::ResyncReply | Kind::Nack | Kind::Repair | Kind::DigestReply
        ) || h.flags.get() & FLAG_REPLY != 0;
        let observer = d.kind == Kind::Heartbeat && h.flags.get() & FLAG_OBSERVER != 0;
        let relayed = wire::relay_fanout(h.flags.get()) != 0;
        let mut revived = None;
        if let Some(t) = self.tombs.get(&node).copied() {
            if inc < t.incarnation || (inc == t.incarnation && t.barred) {
                return Err(Reject::Incarnation);
            }
            if inc == t.incarnation {
                // Dropped for silence: back only if this was sent after the drop, by the
                // sender's clock as far as ours moved since we last heard it.
                let moved = now.saturating_duration_since(t.heard).as_millis() as u64;
                let slack = (self.cfg.dead_after / 2).as_millis() as u64;
                if seq <= t.last_seq || time.saturating_add(slack) < t.time.saturating_add(moved) {
                    return Err(Reject::Stale);
                }
                revived = Some(t);
            }
        }
        match self.peers.get(&node) {
            Some(p) if inc < p.incarnation => return Err(Reject::Incarnation),
            Some(p) if inc > p.incarnation => {
                // A restart: the old process's counts go, whole, and its incarnation is barred.
                self.drop_peer(node, now, true);
                self.dead.remove(&node);
            }
            Some(p) => {
                let fresh = if reply {
                    seq >= p.last_seq
                } else {
                    seq > p.last_seq
                };
                if !fresh {
                    return Err(Reject::Stale);
                }
                if p.observer != observer && d.kind != Kind::Goodbye {
                    return Err(Reject::Malformed);
                }
                let r = self.check_caps(node, d);
                if r.is_err()
                    && let Some(p) = self.peers.get_mut(&node)
                    && p.addr == from
                    && seq > p.refused_seq
                {
                    // Authentic and fresh from its address, only too big for this node: the
                    // peer is alive. (A tick's datagram may be all it sent: a refresh slice
                    // refused alone would make it look dead, and its counts leave.) Once per
                    // sequence number: a refused datagram leaves `last_seq` as it was, and
                    // its bytes replayed must not keep a stopped peer alive.
                    p.refused_seq = seq;
                    p.last_heard = now;
                }
                return r;
            }
            None => {}
        }
        // A node this one does not know (any more): a tombstone of an older incarnation is
        // superseded; one of this incarnation was checked above.
        if let Some(t) = self.tombs.get(&node)
            && (revived.is_some() || inc > t.incarnation)
        {
            self.tombs.remove(&node);
            self.dead.remove(&node);
        }
        if d.kind == Kind::Goodbye {
            return Ok(());
        }
        if observer {
            if self.observers >= self.cfg.max_observers {
                return Err(Reject::TooManyPeers);
            }
        } else if self.peers.len() - self.observers >= self.cfg.max_peers {
            return Err(Reject::TooManyPeers);
        }
        let (last_seq, requests_seen) = match revived {
            Some(t) => (t.last_seq, t.requests_seen),
            None if reply => (seq, 0),
            None => (seq.saturating_sub(1), 0),
        };
        // A new peer: tell every peer about it at the next tick (membership gossip), and
        // refresh this node's table at the full rate for a cycle (the peer lacks it; on
        // multicast, so do all the others that appeared with it, and one refresh serves them).
        self.members_due = 0;
        self.membership += 1;
        self.refresh_full = self.cfg.refresh_cycle;
        self.peers.insert(
            node,
            Peer {
                addr: revived.map_or(from, |t| t.addr),
                addr_seen: 0,
                // Let in by a datagram a relay forwarded: `from` is the relay's, and the first
                // datagram heard from the peer itself moves the address there.
                addr_heard: if relayed && revived.is_none() {
                    now.checked_sub(self.cfg.dead_after).unwrap_or(now)
                } else {
                    now
                },
                incarnation: inc,
                last_seq,
                seq_at: now,
                last_heard: now,
                refused_seq: 0,
                tick: Duration::from_millis(u64::from(h.tick_ms.get())),
                table: Table::default(),
                declared: None,
                received: 0,
                lost: 0,
                rejected: 0,
                last_request: None,
                observer,
                time,
                requests_seen,
                last_reply: [None, None],
                over_cap: false,
                backoff: Duration::ZERO,
                gaps: Vec::new(),
                nack_at: None,
                nacks: 0,
                least_need: None,
                names_rounds: false,
                asked: Vec::new(),
                bids: Vec::new(),
                digest_rounds: 0,
                digests_served: (0, 0, now),
                digests_asked: std::collections::VecDeque::new(),
                direct_time: 0,
                marker: None,
                recover: Default::default(),
                round_trip: Default::default(),
            },
        );
        if observer {
            self.observers += 1;
        }
        self.check_caps(node, d)
    }

    /// Rule 7, before any change: a datagram is applied whole or not at all. Counts only when
    /// the datagram could reach a cap.
    fn check_caps(&mut self, node: u64, d: &wire::Datagram) -> Result<(), Reject> {
        let (cap, global) = (self.cfg.max_topics_per_peer, self.cfg.max_remote_topics);
        let Some(p) = self.peers.get(&node) else {
            return Ok(());
        };
        let over = match &d.body {
            Body::Entries(e) | Body::Range(_, _, e)
                if p.table.len() + e.len() > cap || self.remote_topics + e.len() > global =>
            {
                let new = e
                    .iter()
                    .filter(|e| e.count.get() != 0 && !p.table.map.contains_key(&e.hash.get()))
                    .count();
                p.table.len() + new > cap || self.remote_topics + new > global
            }
            _ => false,
        };
        if over {
            let p = self.peers.get_mut(&node).expect("checked above");
            if !p.over_cap {
                p.over_cap = true;
                p.backoff = self.cfg.resync_interval;
            }
            return Err(Reject::TooManyTopics);
        }
        Ok(())
    }

    /// Rule 8: a resync request is answered only for a live member at its own address, once per
    /// request number, within the per-requester interval, and while whole-table replies in
    /// progress leave room for one more (they all share the repair bucket).
    fn admit_request<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: &wire::Datagram,
        target: u64,
        target_inc: u64,
        request: u64,
    ) -> Result<Admitted<'a>, Reject> {
        let h = d.header;
        let requester = self.admit_requester(from, d, target, target_inc, request)?;
        let every = self.cfg.resync_interval;
        let Some(p) = self.peers.get_mut(&requester) else {
            return Err(self.reject(Reject::NotPeer, None));
        };
        let f = h.flags.get();
        let due =
            |i: usize| p.last_reply[i].is_none_or(|t| now.saturating_duration_since(t) >= every);
        let state = f & FLAG_STATE != 0 && due(0);
        let names = f & FLAG_NAMES != 0 && due(1);
        if !state && !names {
            return Err(self.reject(Reject::Rate, Some(requester)));
        }
        if !self.repairs.table_room(from) {
            return Err(self.reject(Reject::Budget, Some(requester)));
        }
        if let Some(p) = self.peers.get_mut(&requester) {
            if state {
                p.last_reply[0] = Some(now);
            }
            if names {
                p.last_reply[1] = Some(now);
            }
        }
        Ok(Admitted::Request {
            names,
            state,
            only: Vec::new(),
        })
    }

    /// Rule 8's identity checks, common to resync and digest requests: aimed at this node (not
    /// an observer) and its incarnation, from a live peer at its settled address, with a request
    /// number it has not used (recorded). Returns the requester.
    fn admit_requester(
        &mut self,
        from: SocketAddr,
        d: &wire::Datagram,
        target: u64,
        target_inc: u64,
        request: u64,
    ) -> Result<u64, Reject> {
        let h = d.header;
        let requester = h.node.get();
        if target != self.cfg.node || self.cfg.observer {
            return Err(self.reject(Reject::NotPeer, None));
        }
        if target_inc != self.cfg.incarnation {
            return Err(self.reject(Reject::Incarnation, None));
        }
        let Some(p) = self.peers.get_mut(&requester) else {
            return Err(self.reject(Reject::NotPeer, None));
        };
        if p.incarnation != h.incarnation.get() || p.addr != from || !p.settled() {
            return Err(self.reject(Reject::NotPeer, Some(requester)));
        }
        if request <= p.requests_seen {
            return Err(self.reject(Reject::Stale, Some(requester)));
        }
        p.requests_seen = request;
        Ok(requester)
    }

    /// Counts a digest answer for peer `requester` against its budget for this resync
    /// interval (see [`Protocol::admit_digest_request`]): false, and nothing counted, if it
    /// would pass [`DIGEST_REQUESTS`](super::repair::DIGEST_REQUESTS) answers or `scan` more
    /// of the hash space than [`DIGEST_SCAN`](super::repair::DIGEST_SCAN) times it.
    pub(super) fn charge_scan(&mut self, now: Instant, requester: u64, scan: u128) -> bool {
        let every = self.cfg.resync_interval;
        let Some(p) = self.peers.get_mut(&requester) else {
            return false;
        };
        let (served, scanned, since) = &mut p.digests_served;
        if now.saturating_duration_since(*since) >= every {
            *served = 0;
            *scanned = 0;
            *since = now;
        }
        let space = 1u128 << 64;
        if *served >= super::repair::DIGEST_REQUESTS
            || *scanned + scan > super::repair::DIGEST_SCAN * space
        {
            return false;
        }
        *served += 1;
        *scanned += scan;
        true
    }

    /// Rule 8 for a digest request: the identity checks; per requester per resync interval, at
    /// most [`DIGEST_REQUESTS`](super::repair::DIGEST_REQUESTS) requests (a reconciliation
    /// sends several in a row, one per range it drills into) for at most
    /// [`DIGEST_SCAN`](super::repair::DIGEST_SCAN) times the hash space (`scan`: the width of
    /// the ranges this one asks for; answering scans them, so a peer cannot have this node scan
    /// or send its table in a loop); and room for the answer beside the others in progress.
    fn admit_digest_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: &wire::Datagram,
        (target, target_inc, request): (u64, u64, u64),
        scan: u128,
    ) -> Result<(), Reject> {
        let requester = self.admit_requester(from, d, target, target_inc, request)?;
        if !self.peers.contains_key(&requester) {
            return Err(self.reject(Reject::NotPeer, None));
        }
        if !self.charge_scan(now, requester, scan) {
            return Err(self.reject(Reject::Rate, Some(requester)));
        }
        if !self.repairs.table_room(from) {
            return Err(self.reject(Reject::Budget, Some(requester)));
        }
        Ok(())
    }
}
