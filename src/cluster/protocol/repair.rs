//! Repair in proportion to loss.
//!
//! A receiver notes each gap in a peer's sequence numbers. When the peer's final digest
//! ([`FLAG_END`]) then does not match its copy, it waits a random moment within
//! [`Config::nack_window`](super::Config::nack_window) and sends a **nack** to the group: the
//! gaps, by sequence number. Every other receiver hears it; one that misses only what was already
//! asked for holds its own nack back (suppression, as in SRM and PGM). The peer keeps the topics
//! of its recent deltas and names datagrams by sequence number ([`Repairs`]'s history) and
//! answers each missed datagram with a **repair** to the group: what it carried, with the counts
//! (or names) of now, once for every receiver that missed it; a run of sequence numbers that
//! carried no topics (heartbeats, refresh slices) is answered with one empty repair. A receiver
//! crosses each repaired range off its gaps, so a later nack asks only for what is still
//! missing. Only what was lost is sent again, not the table.
//!
//! Everything sent in answer — repairs, and the whole-table replies to resync requests that
//! remain for what a nack cannot fix (a new peer, a gap older than the history, a copy still
//! wrong after [`MAX_NACKS`] rounds) — leaves through one token bucket:
//! [`Config::max_repair_rate`](super::Config::max_repair_rate) bytes a second, never more than
//! [`Config::repair_burst`](super::Config::repair_burst) at once, so an answer never floods the
//! socket buffers whose overflow caused the loss. A table reply is cut from the current table a
//! slice at a time as the bucket allows.
//!
//! A receiver whose copy of a peer's table is wrong and holds something — no gap known, a gap
//! older than the peer's history, nacks that did not help — does not ask for the whole table:
//! it **reconciles** by range digests. It asks for the whole hash range; the peer answers a range
//! holding few entries (at most [`FEW`] datagrams of them) with the entries, authoritative for the
//! range, and a bigger one with a **digest reply**: the digest and size of each of its
//! [`Encoder::fanout`](wire::Encoder::fanout) equal children. The receiver compares each with its
//! copy over the same child and asks again for those that differ only (their entries outright
//! when most differ, or when its copy of one is empty). One wrong entry in 100,000 costs two
//! digest replies and a datagram of entries, not a megabyte. The digest of a range is the wrapping
//! sum of its entries' digest terms, computed by a scan when asked: nothing is kept per range.
//! A peer that answers no digest request ([`MAX_DIGEST_ROUNDS`] in a row) is asked for its whole
//! table, as is one whose copy here is empty (nothing to compare) or over a cap.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Dest, Protocol};
use crate::cluster::wire::{self, FLAG_END, FLAG_STATE, Gap, Kind, child_range};

/// Nack rounds for one peer before this node reconciles its copy by range digests (or asks for
/// the whole table) instead.
pub(super) const MAX_NACKS: u8 = 4;
/// Digest requests for a peer's whole range, unanswered, before this node asks it for its whole
/// table instead.
pub(super) const MAX_DIGEST_ROUNDS: u8 = 4;
/// Digest requests answered per requester per resync interval (a reconciliation sends one per
/// differing range it drills into; more are refused as `Reject::Rate`).
pub(super) const DIGEST_REQUESTS: u32 = 32;
/// How many times the whole hash space one requester's digest requests may cover per resync
/// interval (a reconciliation asks for the root and, at each level below it, at most once the
/// space again; a million topics take four levels and the entries).
pub(super) const DIGEST_SCAN: u128 = 8;
/// A range asked to be reconciled is answered with its entries when they fit this many
/// datagrams, else with its children's digests.
pub(super) const FEW: usize = 2;
/// A peer's table of at most this many datagrams of entries is asked for whole rather than
/// reconciled: one round trip for about 20 kB, against rounds of digests that loss can each
/// delay by a resync interval (at 64 nodes × 2k topics and 10 % loss, reconciling small
/// tables made the worst case 4 ticks instead of 3).
pub(super) const SMALL_TABLE: usize = 16;
/// Ranges waiting per requester; past them a request's rest is dropped (its copy stays wrong, and
/// it asks again).
const MAX_RANGES: usize = 256;
/// Gaps kept per peer (more are merged into one).
const MAX_GAPS: usize = 32;
/// Others' nacks remembered per peer, for suppression.
const MAX_ASKED: usize = 64;
/// Whole-table replies queued at once; a request past them is refused (`Reject::Budget`).
pub(super) const MAX_TABLE_REPLIES: usize = 16;
/// Repairs queued at most (a nack of a long history cannot make the queue, or the work to fill
/// it, grow without bound).
const MAX_QUEUE: usize = 1 << 16;
/// Names sent per step of a table reply's names phase.
const NAMES_STEP: usize = 64;

/// The topics of a delta or names datagram this node sent, for repairs.
#[derive(Debug)]
struct Sent {
    seq: u64,
    /// Their names (a names datagram), or their counts (a delta).
    names: bool,
    hashes: Box<[u64]>,
    /// Waiting in the queue.
    queued: bool,
    /// When its repair last went out (a nack for it soon after is the same loss).
    repaired: Option<Instant>,
}

/// A repair waiting for the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// The delta or names datagram with this sequence number.
    Seq(u64),
    /// Sequence numbers that carried no topics.
    Empty(u64, u64),
}

/// A range asked for by a digest request (or the whole range, in answer to a nack of datagrams
/// older than the history), waiting for the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeJob {
    /// `[lo, hi]`'s entries when they are few, else its children's digests.
    Reconcile(u64, u64),
    /// `[lo, hi]`'s entries (a slice at a time: what remains of a range is queued again).
    Entries(u64, u64),
}

/// An answer to one requester in progress: the next hash of each phase of a whole-table reply
/// still to send, and the ranges digest requests asked for.
#[derive(Debug)]
struct TableReply {
    to: SocketAddr,
    state: Option<u64>,
    names: Option<u64>,
    /// The topics whose names were asked for (empty: all), in order.
    only: Vec<u64>,
    /// Ranges asked for (none while the whole table is on its way: it covers them).
    ranges: VecDeque<RangeJob>,
}

impl TableReply {
    fn new(to: SocketAddr) -> TableReply {
        TableReply {
            to,
            state: None,
            names: None,
            only: Vec::new(),
            ranges: VecDeque::new(),
        }
    }

    /// Nothing left to send.
    fn done(&self) -> bool {
        self.state.is_none() && self.names.is_none() && self.ranges.is_empty()
    }

    /// Queues `job`, unless the whole table is on its way, the same job already waits (a
    /// request sent again), or [`MAX_RANGES`] do.
    fn add(&mut self, job: RangeJob) {
        if self.state.is_none() && self.ranges.len() < MAX_RANGES && !self.ranges.contains(&job) {
            self.ranges.push_back(job);
        }
    }
}

/// The sending side of repair: the history of recent deltas and names, what waits to be sent
/// again, whole-table replies in progress, and the bucket they all share.
#[derive(Debug)]
pub(super) struct Repairs {
    /// Deltas and names datagrams sent, oldest first.
    history: VecDeque<Sent>,
    /// Topics in `history`.
    kept: usize,
    queue: VecDeque<Job>,
    tables: VecDeque<TableReply>,
    tokens: f64,
    at: Instant,
    /// When the bucket allows the next datagram of what waits.
    wake: Option<Instant>,
    rng: u64,
}

impl Repairs {
    pub(super) fn new(now: Instant, burst: f64, seed: u64) -> Repairs {
        Repairs {
            history: VecDeque::new(),
            kept: 0,
            queue: VecDeque::new(),
            tables: VecDeque::new(),
            tokens: burst,
            at: now,
            wake: None,
            rng: seed | 1,
        }
    }

    /// A random duration below `max` (nack jitter).
    pub(super) fn jitter(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let n = max.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(if n == 0 { 0 } else { self.rng % n })
    }

    /// When [`Protocol::pump_repairs`] has something to send that the bucket holds back.
    pub(super) fn wake(&self) -> Option<Instant> {
        self.wake
    }

    /// Whether an answer to `to` (a whole-table reply, ranges) is under way or may be queued.
    pub(super) fn table_room(&self, to: SocketAddr) -> bool {
        self.tables.len() < MAX_TABLE_REPLIES || self.tables.iter().any(|t| t.to == to)
    }

    /// Forgets the table replies to `to` (its peer was dropped: the address is no longer one
    /// that proved it is a live member).
    pub(super) fn cancel(&mut self, to: SocketAddr) {
        self.tables.retain(|t| t.to != to);
    }

    /// The answer in progress to `to`, a new one if there is none.
    fn reply_to(&mut self, to: SocketAddr) -> &mut TableReply {
        match self.tables.iter().position(|t| t.to == to) {
            Some(i) => &mut self.tables[i],
            None => {
                self.tables.push_back(TableReply::new(to));
                let last = self.tables.len() - 1;
                &mut self.tables[last]
            }
        }
    }

    /// Whether anything waits.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.tables.is_empty()
    }

    /// The history entry of `seq`.
    fn sent(&mut self, seq: u64) -> Option<&mut Sent> {
        let i = self.history.partition_point(|s| s.seq < seq);
        self.history.get_mut(i).filter(|s| s.seq == seq)
    }
}

/// The most the repair bucket holds: one burst (at most a second's rate), at least one
/// datagram.
pub(super) fn burst(cfg: &super::Config) -> f64 {
    (cfg.repair_burst.min(cfg.max_repair_rate.max(1) as usize) as f64).max(cfg.budget as f64)
}

/// `gaps` less every range in `asked` (both inclusive ranges; the result in order).
pub(super) fn subtract(gaps: &[(u64, u64)], asked: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(lo, hi) in gaps {
        let mut parts = vec![(lo, hi)];
        for &(a, b) in asked {
            parts = parts
                .into_iter()
                .flat_map(|(l, h)| {
                    let mut v = Vec::with_capacity(2);
                    if b < l || a > h {
                        v.push((l, h));
                    } else {
                        if a > l {
                            v.push((l, a - 1));
                        }
                        if b < h {
                            v.push((b + 1, h));
                        }
                    }
                    v
                })
                .collect();
        }
        out.extend(parts);
    }
    out
}

/// Adds the gap `lo..=hi` to a peer's list, merging everything once the list is full.
pub(super) fn add_gap(gaps: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    if gaps.len() >= MAX_GAPS {
        let first = gaps.first().map_or(lo, |g| g.0.min(lo));
        gaps.clear();
        gaps.push((first, hi));
    } else {
        gaps.push((lo, hi));
    }
}

/// Remembers another receiver's nack of `lo..=hi` (oldest forgotten first).
pub(super) fn add_asked(asked: &mut Vec<(u64, u64, Instant)>, lo: u64, hi: u64, now: Instant) {
    if asked.len() >= MAX_ASKED {
        asked.remove(0);
    }
    asked.push((lo, hi, now));
}

impl Protocol {
    /// Keeps the topics of the delta or names datagram `seq` for repairs, within
    /// [`Config::repair_history`](super::Config::repair_history) topics.
    pub(super) fn keep_sent(&mut self, seq: u64, names: bool, hashes: Vec<u64>) {
        let r = &mut self.repairs;
        r.kept += hashes.len();
        r.history.push_back(Sent {
            seq,
            names,
            hashes: hashes.into(),
            queued: false,
            repaired: None,
        });
        while r.kept > self.cfg.repair_history
            && let Some(s) = r.history.pop_front()
        {
            r.kept -= s.hashes.len();
        }
    }

    /// A live peer missed this node's sequence numbers `lo..=hi`: queue a repair of each delta
    /// and names datagram among them, and an empty one for each run of the others. A gap older
    /// than the history is answered by reconciling the whole range with that peer (`to`: its
    /// pinned address, once it is settled): the table itself if it is small, else the digests
    /// of its children, from which the peer asks for what differs.
    pub(super) fn nacked(&mut self, now: Instant, to: Option<SocketAddr>, lo: u64, hi: u64) {
        let hold = self.cfg.nack_window;
        let hi = hi.min(self.seq);
        if lo > hi {
            return;
        }
        let r = &mut self.repairs;
        let oldest = r.history.front().map_or(self.seq + 1, |s| s.seq);
        // The history has every delta and names datagram from `oldest` on; before it, the
        // table is all that is left, and the peer's copy is reconciled with it by range.
        if let Some(to) = to.filter(|&to| lo < oldest && r.table_room(to)) {
            r.reply_to(to).add(RangeJob::Reconcile(0, u64::MAX));
        }
        // What waits is bounded: past `MAX_QUEUE` jobs a nack's rest is left for the nack that
        // will come again (the requester's copy stays wrong until it is repaired).
        let mut next = lo.max(oldest);
        let start = r.history.partition_point(|s| s.seq < next);
        for s in r.history.range_mut(start..).take_while(|s| s.seq <= hi) {
            if r.queue.len() >= MAX_QUEUE {
                break;
            }
            if s.seq > next {
                r.queue.push_back(Job::Empty(next, s.seq - 1));
            }
            next = s.seq + 1;
            let recent = s
                .repaired
                .is_some_and(|t| now.saturating_duration_since(t) < hold);
            if !s.queued && !recent {
                s.queued = true;
                r.queue.push_back(Job::Seq(s.seq));
            }
        }
        if next <= hi && r.queue.len() < MAX_QUEUE {
            r.queue.push_back(Job::Empty(next, hi));
        }
        self.pump_repairs(now);
    }

    /// Queues this node's whole table and/or its names (all, or those of `only`) for `to` (a
    /// resync request admitted).
    pub(super) fn serve_resync(
        &mut self,
        now: Instant,
        to: SocketAddr,
        names: bool,
        state: bool,
        only: &[u64],
    ) {
        self.stats.resync_replies += 1;
        // Sorted and once each, whatever the request held: the names phase walks it in order.
        let mut only = only.to_vec();
        only.sort_unstable();
        only.dedup();
        // Already under way, it goes on (every slice is authoritative for its range, so a
        // reply that started earlier is as good as a new one); a phase not asked for before is
        // added.
        let t = self.repairs.reply_to(to);
        if state && t.state.is_none() {
            t.state = Some(0);
            // The whole table covers every range asked for.
            t.ranges.clear();
        }
        if names && t.names.is_none() {
            t.names = Some(0);
            t.only = only;
        }
        self.pump_repairs(now);
    }

    /// Queues `ranges` of this node's table for `to` (a digest request admitted): their entries
    /// (`entries`), or each reconciled (entries if few, else its children's digests).
    pub(super) fn serve_ranges(
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
    fn range_step(&mut self, now: Instant, to: SocketAddr, job: RangeJob) {
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
                    let st = self.stamp(now, self.seq);
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
        let e: Vec<(u64, u32)> = self.table.map.range(lo, hi).take(per + 1).collect();
        // Stop just before the first entry that did not fit (it is above `lo`: the hashes
        // before it are distinct and at least `lo`).
        let to_hi = if e.len() > per { e[per].0 - 1 } else { hi };
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
            &self.stamp(now, self.seq),
            Some((lo, to_hi)),
            &e[..e.len().min(per)],
        );
        self.push(Dest::To(to), d);
    }

    /// Asks peer `node` for `ranges` of its table: their entries (`entries`), or each
    /// reconciled. Nothing is sent to a peer not settled at its address.
    pub(super) fn ask_ranges(
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
                    if p.digests_asked.len() >= super::peer::MAX_DIGESTS_ASKED {
                        p.digests_asked.pop_front();
                    }
                    p.digests_asked.push_back(r);
                }
            }
        }
        let (addr, inc) = (p.addr, p.incarnation);
        let st = self.stamp(now, self.seq);
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
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// A digest reply from peer `node` for `[lo, hi]`: the children whose digest or size
    /// differ from this node's copy are asked for again — their entries outright when most of
    /// them differ or this node's copy of one is empty, else each reconciled in turn.
    pub(super) fn on_digests(
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

    /// Sends what waits — repairs, then table replies — while the bucket allows;
    /// when it does not, notes when it will ([`Protocol::poll_timeout`]).
    pub(super) fn pump_repairs(&mut self, now: Instant) {
        let rate = self.cfg.max_repair_rate.max(1) as f64;
        let burst = burst(&self.cfg);
        {
            let r = &mut self.repairs;
            let dt = now.saturating_duration_since(r.at).as_secs_f64();
            r.tokens = (r.tokens + dt * rate).min(burst);
            r.at = now;
            r.wake = None;
        }
        let full = self.cfg.budget as f64;
        while !self.repairs.idle() {
            if self.repairs.tokens < full {
                // (Never sooner than a microsecond: the wait must move time on.)
                let need = Duration::from_secs_f64((full - self.repairs.tokens) / rate);
                self.repairs.wake = Some(now + need.max(Duration::from_micros(1)));
                return;
            }
            let bytes = self.repair_step(now);
            self.stats.repair_bytes += bytes as u64;
            self.repairs.tokens -= bytes as f64;
        }
    }

    /// Sends one datagram's worth (a repair, or a step of a table reply) of what waits;
    /// returns the bytes queued.
    fn repair_step(&mut self, now: Instant) -> usize {
        let before = self.stats.bytes_sent;
        if let Some(job) = self.repairs.queue.pop_front() {
            // The last repair says the digest is final, when no change waits.
            let end = self.repairs.queue.is_empty() && self.changed.is_empty();
            let flags = if end { FLAG_END } else { 0 };
            let st = self.stamp(now, self.seq);
            let dgs = match job {
                Job::Empty(lo, hi) => vec![self.enc.repair(&self.seal, flags, &st, (lo, hi), &[])],
                Job::Seq(seq) => {
                    let Some(s) = self.repairs.sent(seq) else {
                        return 0;
                    };
                    s.queued = false;
                    s.repaired = Some(now);
                    let (names, hashes) = (s.names, s.hashes.clone());
                    if names {
                        let list: Vec<(u64, &str)> = hashes
                            .iter()
                            .map(|h| (*h, self.names.get(h).map_or("", |n| &**n)))
                            .filter(|(_, n)| !n.is_empty())
                            .collect();
                        let mut d = self.enc.repair_names(&self.seal, flags, &st, seq, list);
                        if d.is_empty() {
                            // None of them has a name here any more: an empty repair.
                            d.push(self.enc.repair(&self.seal, flags, &st, (seq, seq), &[]));
                        }
                        d
                    } else {
                        let entries: Vec<(u64, u32)> = hashes
                            .iter()
                            .map(|h| (*h, self.table.map.get(h).copied().unwrap_or(0)))
                            .collect();
                        vec![
                            self.enc
                                .repair(&self.seal, flags, &st, (seq, seq), &entries),
                        ]
                    }
                }
            };
            for d in dgs {
                self.stats.repairs_sent += 1;
                self.push(Dest::Group, d);
            }
        } else if let Some(t) = self.repairs.tables.front_mut() {
            let to = t.to;
            if let Some(lo) = t.state {
                let per = self.enc.entries_per_datagram(Kind::ResyncReply);
                let (l, hi, e) = self.slice(lo, per);
                let last = hi == u64::MAX;
                if let Some(t) = self.repairs.tables.front_mut() {
                    t.state = (!last).then(|| hi + 1);
                }
                let flags = if last { FLAG_END } else { 0 };
                let d = self.enc.entries(
                    &self.seal,
                    Kind::ResyncReply,
                    flags,
                    &self.stamp(now, self.seq),
                    Some((l, hi)),
                    &e,
                );
                self.push(Dest::To(to), d);
            } else if let Some(job) = t.ranges.pop_front() {
                self.range_step(now, to, job);
            } else if let Some(lo) = t.names {
                let hashes: Vec<u64> = if t.only.is_empty() {
                    self.table
                        .map
                        .range(lo, u64::MAX)
                        .take(NAMES_STEP + 1)
                        .map(|(h, _)| h)
                        .collect()
                } else {
                    // The names asked for, from `lo` on (`only` is sorted).
                    let at = t.only.partition_point(|&h| h < lo);
                    t.only[at..].iter().take(NAMES_STEP + 1).copied().collect()
                };
                let next = hashes.get(NAMES_STEP).copied();
                let step = &hashes[..hashes.len().min(NAMES_STEP)];
                if let Some(t) = self.repairs.tables.front_mut() {
                    t.names = next;
                }
                self.send_names(now, step, Some(to));
            }
            if self.repairs.tables.front().is_some_and(TableReply::done) {
                self.repairs.tables.pop_front();
            }
        }
        (self.stats.bytes_sent - before) as usize
    }

    /// The nacks due now: for each peer whose copy is wrong and whose gaps are known, the gaps
    /// that no other receiver asked for within the last resync interval (a peer whose gaps
    /// were all asked for is held back: the repair to the group serves it too).
    pub(super) fn send_nacks(&mut self, now: Instant, due: &[u64]) {
        let every = self.cfg.resync_interval;
        let mut list: Vec<Gap> = Vec::new();
        for &node in due {
            let Some(p) = self.peers.get_mut(&node) else {
                continue;
            };
            p.asked
                .retain(|a| now.saturating_duration_since(a.2) < every);
            let asked: Vec<(u64, u64)> = p.asked.iter().map(|a| (a.0, a.1)).collect();
            let left = subtract(&p.gaps, &asked);
            p.nack_at = None;
            p.last_request = Some(now);
            p.nacks += 1;
            if left.is_empty() {
                self.stats.nacks_suppressed += 1;
                continue;
            }
            list.extend(left.iter().map(|&(lo, hi)| Gap::new(node, lo, hi)));
        }
        if list.is_empty() {
            return;
        }
        self.stats.nacks_sent += 1;
        let st = self.stamp(now, self.seq);
        for d in self.enc.nacks(&self.seal, &st, &list) {
            self.push(Dest::Group, d);
        }
    }

    /// A nack from peer `requester`: this node's gaps are repaired, and the others' are
    /// remembered so that this node does not ask for them again meanwhile.
    pub(super) fn on_nack(&mut self, now: Instant, requester: u64, gaps: &[wire::Gap]) {
        let from = self
            .peers
            .get(&requester)
            .filter(|p| p.settled())
            .map(|p| p.addr);
        let oldest = self.repairs.history.front().map_or(self.seq + 1, |s| s.seq);
        // A gap older than the history is answered by reconciling the whole range, which scans
        // the table: that counts against the requester's digest budget, like a digest request
        // for the whole space (a replayed nack would otherwise have the table scanned at the
        // repair bucket's pace). Charged once per nack.
        let mut old_gap_to: Option<Option<SocketAddr>> = None;
        for g in gaps {
            let (node, lo, hi) = (g.node.get(), g.lo.get(), g.hi.get());
            if node == self.cfg.node {
                if !self.cfg.observer {
                    let to = if lo < oldest {
                        *old_gap_to.get_or_insert_with(|| {
                            from.filter(|_| self.charge_scan(now, requester, 1u128 << 64))
                        })
                    } else {
                        from
                    };
                    self.nacked(now, to, lo, hi);
                }
            } else if let Some(p) = self.peers.get_mut(&node) {
                add_asked(&mut p.asked, lo, hi, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_ranges() {
        assert_eq!(subtract(&[(1, 10)], &[]), vec![(1, 10)]);
        assert_eq!(subtract(&[(1, 10)], &[(1, 10)]), vec![]);
        assert_eq!(subtract(&[(1, 10)], &[(0, 20)]), vec![]);
        assert_eq!(subtract(&[(1, 10)], &[(4, 6)]), vec![(1, 3), (7, 10)]);
        assert_eq!(
            subtract(&[(1, 10), (20, 30)], &[(8, 22)]),
            vec![(1, 7), (23, 30)]
        );
        assert_eq!(subtract(&[(5, 5)], &[(6, 9), (0, 4)]), vec![(5, 5)]);
        assert_eq!(subtract(&[(0, u64::MAX)], &[(0, 0)]), vec![(1, u64::MAX)]);
    }

    /// A nack of everything, on a node with a long history of one-topic datagrams between
    /// heartbeats, queues a bounded number of repairs, and again. (It once scanned the queue
    /// for every empty run it added: quadratic in the history.)
    #[test]
    fn a_nack_of_a_long_history_queues_a_bounded_number() {
        use crate::cluster::protocol::{Config, Protocol};
        use crate::cluster::wire::Seal;
        let now = Instant::now();
        let mut c = Config::new(1, 1, Duration::from_millis(100));
        c.max_repair_rate = 1_000_000;
        let mut p = Protocol::new(c, Seal::new("p", b"k"));
        // Every other sequence number a delta (the others heartbeats: runs of empty repairs).
        for seq in (2..=200_000u64).step_by(2) {
            p.keep_sent(seq, false, vec![seq]);
        }
        p.seq = 200_000;
        for _ in 0..3 {
            p.nacked(now, None, 0, u64::MAX);
            assert!(
                p.repairs.queue.len() <= MAX_QUEUE,
                "{}",
                p.repairs.queue.len()
            );
        }
        // Each history entry is queued once however often it is asked for.
        let seqs: Vec<u64> = p
            .repairs
            .queue
            .iter()
            .filter_map(|j| match j {
                Job::Seq(s) => Some(*s),
                Job::Empty(..) => None,
            })
            .collect();
        let once: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        assert_eq!(once.len(), seqs.len(), "a datagram queued twice");
        while p.poll_transmit().is_some() {}
    }

    #[test]
    fn a_full_gap_list_merges() {
        let mut g = Vec::new();
        for i in 0..MAX_GAPS as u64 + 3 {
            add_gap(&mut g, 10 * i + 1, 10 * i + 2);
        }
        assert!(g.len() <= MAX_GAPS);
        assert_eq!(g.first().map(|x| x.0), Some(1));
        assert_eq!(g.last().map(|x| x.1), Some(10 * (MAX_GAPS as u64 + 2) + 2));
    }
}
