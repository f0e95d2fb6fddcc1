//! Everything this node sends: each tick's deltas (with the names of new topics), refresh slices
//! and heartbeats; resync replies (the table, the names); the goodbye. (What this node asks
//! of its peers is `repair/request.rs`.)
//! Datagrams are queued here and taken by [`Protocol::poll_transmit`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use zerocopy::FromBytes;

use super::{Dest, Protocol, Transmit, relay};
use crate::cluster::wire::{self, FLAG_END, FLAG_OBSERVER, FLAG_REPLY, Kind, Stamp};

/// A datagram planned for this tick: kind, refresh range, entries.
type Planned = (Kind, Option<(u64, u64)>, Vec<(u64, u32)>);

impl Protocol {
    /// Queues a datagram.
    pub(super) fn push(&mut self, dest: Dest, mut bytes: Vec<u8>) {
        if let Some(k) = self.relay_k() {
            self.mark_relayed(&mut bytes, dest, k);
        }
        self.stats.sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push_back(Transmit { dest, bytes });
    }

    /// The sequence number of the last group datagram handed to the socket: what answers,
    /// nacks and requests carry. Not the last one numbered: a backlog tick's paced datagrams
    /// (the last numbered, consecutively) are still to leave, and a peer that heard a higher
    /// number first would count them missed and refuse them as stale when they come. (Counting
    /// a relaying tick's paced direct heartbeat too made peers refuse its nacks as stale.)
    pub(super) fn sent_seq(&self) -> u64 {
        self.seq - self.paced_numbered
    }

    /// The sequence number of the next group datagram.
    fn next_seq(&mut self) -> u64 {
        // Paced datagrams hold the last numbers (see `sent_seq`): a new one goes after them.
        debug_assert!(self.paced.is_empty(), "numbering past paced datagrams");
        self.seq += 1;
        self.seq
    }

    /// The size of this node's table, as a header carries it.
    fn topics(&self) -> u32 {
        self.table.len().min(u32::MAX as usize) as u32
    }

    /// The header fields of a datagram sent now with sequence number `seq`.
    pub(super) fn stamp(&self, now: Instant, seq: u64) -> Stamp {
        Stamp {
            seq,
            digest: self.table.digest,
            topics: self.topics(),
            time: self.cfg.clock.unix_ms(now),
        }
    }

    /// Names datagrams for those of `hashes` whose names this node knows. To the group, each
    /// with a sequence number of its own (kept for repairs); or, in reply to a request (`to`),
    /// unicast with the current sequence number and [`FLAG_REPLY`]. Returns how many datagrams
    /// it queued.
    pub(super) fn send_names(
        &mut self,
        now: Instant,
        hashes: &[u64],
        to: Option<SocketAddr>,
    ) -> usize {
        let list: Vec<(u64, &str)> = hashes
            .iter()
            .filter_map(|h| self.names.get(*h).map(|n| (*h, n)))
            .collect();
        if list.is_empty() {
            return 0;
        }
        let st = self.stamp(now, self.sent_seq());
        let mut seq = self.seq;
        let first = seq + 1;
        let is_reply = to.is_some();
        let mut next = || {
            if !is_reply {
                seq += 1;
            }
            seq
        };
        let flags = if is_reply { FLAG_REPLY } else { 0 };
        let dgs = self.enc.names_each(&self.seal, flags, &mut next, &st, list);
        self.seq = seq;
        let n = dgs.len();
        let dest = to.map_or(Dest::Group, Dest::To);
        for (i, (d, hashes)) in dgs.into_iter().enumerate() {
            if !is_reply {
                let coded = self.coded(&d);
                self.keep_sent(now, first + i as u64, true, hashes, coded);
            }
            self.push(dest, d);
        }
        n
    }

    /// A tick's datagrams: names and deltas of what changed (within the per-tick budget),
    /// refresh slices, or a heartbeat; then the resync requests that are due. The last datagram
    /// is flagged [`FLAG_END`] when no change waits for a later tick.
    pub(super) fn send_tick(&mut self, now: Instant) {
        if self.cfg.observer {
            // Observers count nothing; a heartbeat makes them known, so their requests are
            // answered.
            self.changed.clear();
            self.queued.clear();
            self.new_names.clear();
            let seq = self.next_seq();
            let d = self.enc.bare(
                &self.seal,
                Kind::Heartbeat,
                FLAG_END | FLAG_OBSERVER,
                &self.stamp(now, seq),
            );
            self.push(Dest::Group, d);
            self.request_where_needed(now);
            return;
        }
        // What is left of the last tick goes first: sequence numbers stay in order.
        self.release_paced(None);
        self.send_members(now);
        let first = self.out.len();
        let mut budget = self.cfg.max_tick_datagrams.max(1);
        // Counts, or changes to send: this tick is not one of an empty node's quiet ones.
        let counting = self.table.len() > 0 || !self.changed.is_empty();

        // What changed, oldest first: each topic's name (when new here), then its count.
        let per = self.enc.entries_per_datagram(Kind::Delta);
        let room = self.enc.budget() - wire::HEADER_LEN - wire::TAG_LEN;
        // What this tick can send goes in hash order (the oldest changes still go first): a
        // receiver keeps this node's table as sorted runs, which then grow at their ends where
        // changes in any order would move their later entries up (a fifth of a simulated
        // 64-node burst's time went to such moves).
        let going = budget.saturating_mul(per).min(self.changed.len());
        self.changed.make_contiguous()[..going].sort_unstable();
        while budget > 0 && !self.changed.is_empty() {
            let n = per.min(self.changed.len());
            // The names this chunk announces must fit the budget with its delta (the first
            // chunk of a tick always goes, so a tick always makes progress).
            let name_bytes: usize = self
                .changed
                .range(..n)
                .filter(|h| self.new_names.contains(h))
                .filter_map(|h| self.names.get(*h))
                .map(|name| 9 + name.len())
                .sum();
            if name_bytes.div_ceil(room) + 1 > budget && budget < self.cfg.max_tick_datagrams {
                break;
            }
            let hashes: Vec<u64> = self.changed.drain(..n).collect();
            let mut announce = Vec::new();
            let mut entries = Vec::with_capacity(n);
            for h in hashes {
                self.queued.remove(&h);
                let c = self.table.map.get(&h).copied().unwrap_or(0);
                if self.new_names.remove(&h) && c != 0 {
                    announce.push(h);
                }
                entries.push((h, c));
            }
            budget = budget.saturating_sub(self.send_names(now, &announce, None));
            let seq = self.next_seq();
            let d = self.enc.entries(
                &self.seal,
                Kind::Delta,
                0,
                &self.stamp(now, seq),
                None,
                &entries,
            );
            let coded = self.coded(&d);
            self.push(Dest::Group, d);
            self.keep_sent(
                now,
                seq,
                false,
                entries.iter().map(|e| e.0).collect(),
                coded,
            );
            budget = budget.saturating_sub(1);
        }

        // The rotating refresh: the whole table every `refresh_cycle` ticks while a peer may
        // lack it (one appeared: new, restarted or back), at most `idle_refresh` datagrams a tick
        // otherwise. Not while changes wait: a slice would list topics whose names peers have
        // not been sent yet, and the backlog carries their counts anyway.
        let mut batch: Vec<Planned> = Vec::new();
        let per_r = self.enc.entries_per_datagram(Kind::Refresh);
        let dgrams = self.table.len().div_ceil(per_r).max(1) as f64;
        if self.changed.is_empty() {
            let full = dgrams / f64::from(self.cfg.refresh_cycle.max(1));
            self.refresh_credit += if self.refresh_full > 0 {
                full
            } else {
                full.min(f64::from(self.cfg.idle_refresh))
            };
        }
        self.refresh_full = self.refresh_full.saturating_sub(1);
        while self.refresh_credit >= 1.0 {
            self.refresh_credit -= 1.0;
            let (lo, hi, e) = self.slice(self.cursor, u64::MAX, per_r);
            self.cursor = hi.wrapping_add(1);
            batch.push((Kind::Refresh, Some((lo, hi)), e));
        }
        for (kind, range, e) in batch {
            let seq = self.next_seq();
            let d = self
                .enc
                .entries(&self.seal, kind, 0, &self.stamp(now, seq), range, &e);
            self.push(Dest::Group, d);
        }

        // A quiet tick (nothing else to send) sends a heartbeat. Every tick, but for a node
        // with an empty table and no change to send: for the first `empty_heartbeat_every`
        // ticks after its last change went out (so that the loss of its last datagrams, those
        // that emptied its table, shows at once), then every `empty_heartbeat_every` ticks.
        let quiet = self.out.len() == first;
        self.quiet_ticks = if counting {
            0
        } else {
            self.quiet_ticks.saturating_add(1)
        };
        self.beat_ticks = self.beat_ticks.saturating_add(1);
        let every = self.cfg.empty_heartbeat_every.max(1);
        if quiet && (self.quiet_ticks <= every || self.beat_ticks >= every) {
            self.beat_ticks = 0;
            let seq = self.next_seq();
            let flags = if self.changed.is_empty() { FLAG_END } else { 0 };
            let d = self
                .enc
                .bare(&self.seal, Kind::Heartbeat, flags, &self.stamp(now, seq));
            self.push(Dest::Group, d);
        } else if !quiet {
            self.beat_ticks = 0;
            if self.changed.is_empty() {
                // The tick's last datagram says the digest is final. (All of them are ours
                // and sealed just now: set the flag and seal again.)
                if let Some(last) = self.out.back_mut() {
                    self.seal.reflag(&mut last.bytes, |f| f | FLAG_END);
                }
            }
        }
        if self.relay_k().is_some() {
            self.send_direct_heartbeat(now);
        }
        self.pace_tick(now, first);
        self.request_where_needed(now);
    }

    /// Spreads a backlog tick (one that leaves changes for the next: a burst bigger than
    /// [`Config::max_tick_datagrams`](super::Config::max_tick_datagrams)) over nine tenths of
    /// the tick, past its first [`Config::repair_burst`](super::Config::repair_burst) bytes.
    /// Handed to the socket at once, such ticks from many peers together overflow the send
    /// buffer and the receivers' buffers, and the loss costs repairs; spread, they fit any link
    /// that carries the cluster's ticks at all. (A tick that ends a burst leaves at once: its
    /// last datagram makes the peers exact, and pacing it would only delay that; unless it is
    /// bigger than [`Config::max_unpaced_tick`](super::Config::max_unpaced_tick), a socket
    /// buffer: handed over at once, most of it is dropped on a 1 Gbit/s link. Unless this
    /// node relays: then each datagram leaves as one copy per child, and so does every peer's it
    /// forwards, so a tick whose copies pass `repair_burst` is spread too. Paced at the
    /// uplink's rate instead, 256 nodes relaying a burst at once overflowed their send buffers
    /// with what they forwarded: 14k drops and 356 table requests instead of none.)
    pub(super) fn pace_tick(&mut self, now: Instant, first: usize) {
        let burst = self.cfg.repair_burst.max(1);
        // (A relayed datagram leaves as one copy per child: so many bytes in the buffers.)
        let size = |t: &Transmit| t.bytes.len() * relay::copies(t);
        let total: usize = self.out.iter().skip(first).map(size).sum();
        // What leaves at once: a tick that ends a burst of a node that does not relay, up to a
        // socket buffer; any other, its first `repair_burst` bytes.
        let at_once = if self.changed.is_empty() && self.relay_k().is_none() {
            burst.max(self.cfg.max_unpaced_tick)
        } else {
            burst
        };
        if total <= at_once || self.cfg.tick.is_zero() {
            return;
        }
        let mut at = first;
        let mut upfront = 0;
        while at < self.out.len() && upfront + size(&self.out[at]) <= burst {
            upfront += size(&self.out[at]);
            at += 1;
        }
        let spread = (self.cfg.tick * 9 / 10).as_secs_f64();
        let rest = (total - upfront) as f64;
        let mut done = 0;
        let later: Vec<Transmit> = self.out.drain(at..).collect();
        for t in later {
            // Each leaves when the bytes up to its end are due at the rate that ends the
            // tick's sends with the spread.
            done += size(&t);
            let due = now + Duration::from_secs_f64(spread * done as f64 / rest);
            self.paced_numbered += u64::from(numbered(&t));
            self.paced.push_back((due, t));
        }
    }

    /// Hands the paced datagrams that are due by `now` (all of them: `None`) to `out`.
    pub(super) fn release_paced(&mut self, now: Option<Instant>) {
        while let Some((due, _)) = self.paced.front() {
            if now.is_some_and(|now| *due > now) {
                break;
            }
            let (_, t) = self.paced.pop_front().expect("front");
            self.paced_numbered -= u64::from(numbered(&t));
            self.out.push_back(t);
        }
    }

    /// Membership gossip, when it is due: the live peers this node hears (not observers), with
    /// their addresses, to the group.
    fn send_members(&mut self, now: Instant) {
        if !self.cfg.gossip_members {
            return;
        }
        if self.members_due > 0 {
            self.members_due -= 1;
            return;
        }
        self.members_due = super::defaults::MEMBERS_EVERY - 1;
        let mut list: Vec<wire::Member> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.observer && p.addr_seen > 0)
            .map(|(&n, p)| wire::Member::new(n, p.addr))
            .collect();
        if list.is_empty() {
            return;
        }
        list.sort_unstable_by_key(|m| m.node.get());
        let st = self.stamp(now, self.sent_seq());
        let mut seq = self.seq;
        let ds = self.enc.members(
            &self.seal,
            &mut || {
                seq += 1;
                seq
            },
            &st,
            &list,
        );
        self.seq = seq;
        for d in ds {
            self.push(Dest::Group, d);
        }
    }

    /// The slice of the local table's range `[lo, hi]` starting at `lo`: up to `n` entries and
    /// the range they cover (to `hi` if the range ends first).
    pub(super) fn slice(&self, lo: u64, hi: u64, n: usize) -> (u64, u64, Vec<(u64, u32)>) {
        let mut e: Vec<(u64, u32)> = self.table.map.range(lo, hi).take(n + 1).collect();
        if e.len() > n {
            // Stop just before the first entry that did not fit (it is above `lo`: the hashes
            // before it are distinct and at least `lo`).
            let end = e[n].0 - 1;
            e.truncate(n);
            (lo, end, e)
        } else {
            (lo, hi, e)
        }
    }

    /// A goodbye: peers drop this node's counts at once.
    pub(super) fn send_goodbye(&mut self, now: Instant) {
        let seq = self.next_seq();
        let d = self
            .enc
            .bare(&self.seal, Kind::Goodbye, FLAG_END, &self.stamp(now, seq));
        self.push(Dest::Group, d);
    }
}

/// Whether `t` carries a sequence number of its own: a group datagram that is not an answer
/// ([`FLAG_REPLY`]: it carries the sender's current number).
fn numbered(t: &Transmit) -> bool {
    t.dest == Dest::Group
        && wire::Header::ref_from_prefix(&t.bytes)
            .is_ok_and(|(h, _)| h.flags.get() & FLAG_REPLY == 0)
}
