//! Asking peers for what this node's copies of them lack: nacks for known gaps, range digests
//! or whole tables for the rest, and names (see the parent module's docs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::{Dest, Protocol, peer::Peer, wake_at};
use crate::cluster::wire::{FLAG_NAMES, FLAG_STATE, Kind};

/// The longest wait before asking a peer that is over a cap for its table again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Protocol {
    /// Asks for a resync every peer whose copy does not match what it declared (by range
    /// digests when its copy holds something, see [`super`]), and, when some
    /// counted topic has no name here, every peer for its names: soon (one resync interval)
    /// for topics that became unnamed since the last ask, rarely for the same ones again. A peer
    /// over a cap is asked with exponential backoff (its table cannot converge here).
    pub(in crate::cluster::protocol) fn request_where_needed(&mut self, now: Instant) {
        let every = self.cfg.resync_interval;
        let names_every = (every * 20).max(Duration::from_secs(5));
        let since = |t: Instant| now.saturating_duration_since(t);
        // Names lost with a peer's datagrams come back with their repairs: every peer is asked
        // for all its names only when none is being repaired.
        let has_unnamed = !self.unnamed.is_empty();
        let repairing = self.peers.values().any(|p| !p.gaps.is_empty());
        let ask_names = !self.unnamed.is_empty()
            && !repairing
            && self.names_asked.is_none_or(|t| {
                since(t) >= names_every || (self.newly_unnamed > 0 && since(t) >= every)
            });
        let mut wake: Option<Instant> = None;
        if ask_names {
            self.names_asked = Some(now);
            self.newly_unnamed = 0;
        } else if self.unnamed.is_empty() {
            self.newly_unnamed = 0;
        } else if self.newly_unnamed > 0
            && let Some(t) = self.names_asked
            && t + every > now
        {
            // Come back when the new names may be asked for. (Had that time passed, they would
            // have been asked for just now, unless repairs are under way: then the repairs'
            // answers bring this node back here.)
            wake = Some(t + every);
        }
        let mut want: Vec<(u64, SocketAddr, u64, bool, Vec<u64>)> = Vec::new();
        let mut nack: Vec<u64> = Vec::new();
        let mut round: Option<Duration> = None;
        let mut reconcile: Vec<u64> = Vec::new();
        // A budget too small for a digest request or reply (below 120 bytes) leaves whole tables.
        let fanout = self.enc.fanout();
        let per_entries = self.enc.entries_per_datagram(Kind::ResyncReply);
        let window = self.cfg.nack_window;
        let per_request = self.enc.names_per_request();
        let relaying = self.relay_k().is_some();
        let receivers = self.peers.len();
        let repairs = &mut self.repairs;
        let unnamed = &self.unnamed;
        for (&n, p) in self.peers.iter_mut() {
            if let Some(at) = overdue(p, now, every) {
                wake_at(&mut wake, at);
            }
            if p.observer || !p.settled() {
                continue;
            }
            // Behind: its copy here does not match what it declared final, or — relaying, the
            // declaration lost with the datagrams that would have brought the next one — it
            // has gone quiet for an interval with gaps known (a burst sends its datagrams a few
            // milliseconds apart, however long it lasts). (On multicast, the other receivers'
            // nacks bring repairs to the group, which declare; nacking there on silence made
            // the worst of 40 seeds at 16 × 100k, 10 % loss, 10 ms slower.)
            let pending = relaying && p.declared.is_none() && !p.gaps.is_empty();
            let quiet = pending && since(p.seq_at) >= every;
            if pending && !quiet {
                let at = p.seq_at + every;
                wake_at(&mut wake, at);
            }
            let behind = (p.declared.is_some() || quiet) && !p.converged();
            let big = p.big(per_entries);
            if behind && p.names_rounds && big {
                // The rounds spent so far were for names, while its counts were right: this
                // divergence gets rounds of its own. (While a topic stays unnamed — a name too
                // long to announce never comes — they stayed spent: every later loss of this
                // peer's went to digests. A small table is fetched whole in one round trip,
                // faster than rounds: there they stay spent; resetting them made 64 nodes in
                // 8 zones 50 ms slower at 10 % loss.)
                p.nacks = 0;
                p.least_need = None;
                p.names_rounds = false;
            }
            // Its counts are right here but names are missing, and this node missed some of
            // its datagrams: they may have held the names.
            // Only once the peer declared a final digest that its copy here matches: in the
            // middle of its burst (no declaration) more gaps may still come, and nacking them
            // every interval would spend the rounds before the burst ends (paced bursts last
            // most of each tick; the rounds ran out and every peer asked for whole tables).
            let names_gap = p.converged() && has_unnamed && !p.gaps.is_empty();
            if names_gap && p.nacks >= super::MAX_NACKS {
                // Nacked enough: the names are asked for whole, below.
                p.gaps.clear();
                continue;
            }
            // Nack rounds of a big table follow one another after the peer's measured round
            // trip (`round_trip.rs`); a request for digests or the table after an interval. A
            // small table's rounds each count towards asking for the table whole: an interval
            // apart, the other receivers' symbols have come first (at the round trip, 64 × 2k
            // at 10 % loss cost 1.51× the lossless bytes in one seed of 40, with three table
            // requests, against 1.46×).
            let nacking = big && !p.gaps.is_empty() && p.nacks < super::MAX_NACKS;
            let next = p.last_request.map(|t| {
                if p.over_cap {
                    t + p.backoff
                } else if nacking {
                    p.round_trip.next_round(t, window, every)
                } else {
                    t + every
                }
            });
            let due = next.is_none_or(|at| now >= at);
            if (behind || names_gap) && !due {
                let at = next.unwrap_or(now);
                wake_at(&mut wake, at);
            }
            let mut state = behind && due;
            let nackable = (state || (names_gap && due))
                && !p.gaps.is_empty()
                && !p.over_cap
                && p.nacks < super::MAX_NACKS;
            if nackable {
                // What this node missed of the peer is known: nack it, after a random moment
                // in which another receiver's nack for the same may come first.
                state = false;
                // (Relaying, each nack goes to its sender directly: no other receiver hears
                // it, or holds its own back for it, so it need not wait. A later round's
                // wait is no longer than the round trip: the round's other nacks have come.)
                let later = nacking && p.least_need.is_some();
                let at = *p.nack_at.get_or_insert_with(|| {
                    if relaying {
                        now
                    } else if later {
                        now + repairs.jitter(p.round_trip.later_window(window))
                    } else {
                        now + repairs.first_moment(window, receivers)
                    }
                });
                if at <= now {
                    let r = if nacking {
                        p.round_trip.wait(window, every)
                    } else {
                        every
                    };
                    round = Some(round.map_or(r, |x: Duration| x.min(r)));
                    nack.push(n);
                    p.names_rounds = names_gap;
                } else {
                    wake_at(&mut wake, at);
                }
            }
            // A copy that holds something is reconciled by range digests (a few rounds at
            // most: the peer may not answer them); an empty one (nothing to compare), one over
            // a cap, or a small table (a few datagrams: one round trip costs less than the
            // rounds of digests, each of which loss can delay) gets the whole table.
            if state
                && fanout > 0
                && p.table.len() > 0
                && big
                && !p.over_cap
                && p.digest_rounds < super::MAX_DIGEST_ROUNDS
            {
                state = false;
                p.digest_rounds += 1;
                reconcile.push(n);
            }
            // The names asked of this peer: those of the unnamed topics it counts.
            let mut only: Vec<u64> = Vec::new();
            if ask_names {
                only.extend(
                    unnamed
                        .iter()
                        .filter(|h| p.table.map.contains_key(h))
                        .take(per_request),
                );
                only.sort_unstable();
            }
            if !only.is_empty() || state {
                want.push((n, p.addr, p.incarnation, state, only));
            }
        }
        // A request, a nack or its answer may be lost: look again after one interval (a
        // round trip, for a nack).
        if let Some(r) = round {
            wake_at(&mut wake, now + r);
        }
        if want.iter().any(|w| w.3) {
            wake_at(&mut wake, now + every);
        }
        nack.sort_unstable();
        self.send_nacks(now, &nack);
        self.wake = wake;
        reconcile.sort_unstable();
        for node in reconcile {
            self.ask_ranges(now, node, false, &[(0, u64::MAX)]);
        }
        for (node, addr, inc, state, only) in want {
            if state && let Some(p) = self.peers.get_mut(&node) {
                p.last_request = Some(now);
                if p.over_cap {
                    p.backoff = (p.backoff * 2).clamp(every, MAX_BACKOFF);
                }
            }
            self.stats.resync_requests += 1;
            if state {
                self.stats.table_requests += 1;
            }
            self.requests += 1;
            let names = if only.is_empty() { 0 } else { FLAG_NAMES };
            let flags = names | if state { FLAG_STATE } else { 0 };
            let d = self.enc.request_names(
                &self.seal,
                flags,
                &self.stamp(now, self.sent_seq()),
                (node, inc, self.requests),
                &only,
            );
            self.push(Dest::To(addr), d);
        }
    }
}

/// A relaying peer's datagrams its direct heartbeat (or a direct answer) announced
/// (`Peer::marker`) that have not come within `every`: missed (lost, or this node is in a hole
/// of the peer's tree while views differ), a gap to nack like any, and the heartbeat's
/// declaration, or none, is the peer's. Returns when to look again if they may still come.
fn overdue(p: &mut Peer, now: Instant, every: Duration) -> Option<Instant> {
    let m = p.marker?;
    if p.last_seq >= m.seq {
        p.marker = None;
        return None;
    }
    if now.saturating_duration_since(m.at) < every {
        return Some(m.at + every);
    }
    p.lost += m.seq - p.last_seq;
    super::add_gap(&mut p.gaps, p.last_seq + 1, m.seq);
    super::add_gap(&mut p.recover.missed, p.last_seq + 1, m.seq);
    p.last_seq = m.seq;
    // What the peer declared before does not hold past what it missed (as for a datagram that
    // declares nothing): without a declaration of its own, the gaps are nacked once the peer
    // has been quiet an interval (`request_where_needed`).
    p.declared = m.declared;
    p.marker = None;
    None
}
