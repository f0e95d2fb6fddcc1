//! Repair in proportion to loss.
//!
//! A receiver notes each gap in a peer's sequence numbers. When the peer's final digest
//! ([`FLAG_END`](crate::cluster::wire::FLAG_END)) then does not match its copy, it waits a random moment within
//! [`Config::nack_window`](super::Config::nack_window) and sends a **nack** to the group: the
//! gaps, by sequence number. Every other receiver hears it; one that misses only what was already
//! asked for, or (answered with parity) no more than another's first nack asked for, holds its
//! own nack back (suppression, as in SRM and PGM). The moments are drawn so that few receivers
//! draw early ones, however many there are: the first nacks reach the others before most of
//! them nack ([`Repairs::first_moment`]). The peer keeps the topics
//! of its recent deltas and names datagrams by sequence number ([`Repairs`]'s history) and
//! answers each missed datagram with a **repair** to the group: what it carried, with the counts
//! (or names) of now, once for every receiver that missed it; a run of sequence numbers that
//! carried no topics (heartbeats, refresh slices) is answered with one empty repair. A receiver
//! crosses each repaired range off its gaps, so a later nack asks only for what is still
//! missing. Only what was lost is sent again, not the table. A delta or names datagram is
//! answered with **parity** rather than itself where it can be (`parity.rs` sends it,
//! `recover.rs` decodes it): a block's worth of parity symbols as many as the worst-off
//! receiver lacks, each repairing a different loss at every receiver. (In a cluster that relays its
//! group datagrams along trees, see `relay.rs`, a relaying receiver nacks each sender
//! directly, twice, without waiting, and a repair goes directly to the one who asked, which
//! forwards it down its branch of the sender's tree: relayed from the root, it would take the
//! same lossy hops. Nothing stands in for a lost nack or repair there, so one asked for again
//! goes twice; and a receiver that knows gaps but not the sender's declaration nacks them once
//! the sender has been quiet an interval.)
//!
//! A receiver still missing something of a big table (over [`SMALL_TABLE`] datagrams) after a
//! round asks again once the round has had time to be answered: the peer's measured round trip
//! from nack to answer (`round_trip.rs`, kept as TCP keeps its retransmission timeout), and as
//! long again after the peer's last answer, which may still be coming through its bucket; at
//! least the nack window, at most a resync interval, which is also the wait until a round has
//! been timed, and the wait between a small table's rounds (each of which counts towards
//! fetching the table whole).
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
//! [`Encoder::fanout`](crate::cluster::wire::Encoder::fanout) equal children. The receiver compares each with its
//! copy over the same child and asks again for those that differ only (their entries outright
//! when most differ, or when its copy of one is empty). One wrong entry in 100,000 costs two
//! digest replies and a datagram of entries, not a megabyte. The digest of a range is the wrapping
//! sum of its entries' digest terms, computed by a scan when asked: nothing is kept per range.
//! A peer that answers no digest request ([`MAX_DIGEST_ROUNDS`] in a row) is asked for its whole
//! table, as is one whose copy here is empty (nothing to compare) or over a cap.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Protocol;

mod digest;
mod gaps;
mod nack;
mod parity;
pub(super) mod recover;
mod request;
pub(super) mod round_trip;
mod set_by;
mod step;
use crate::cluster::wire::{Gap, Members};
pub(super) use gaps::{Bid, add_asked, add_bid, add_gap, outbid, subtract};

/// Nack rounds for one peer before this node reconciles its copy by range digests (or asks for
/// the whole table) instead. For a peer whose table is reconciled by digests (over
/// [`SMALL_TABLE`] datagrams), a round that asks for less than every round before it (symbols
/// or repairs came) begins the count afresh: only rounds that bring nothing count.
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
/// Whole-table replies queued at once; a request past them is refused (`Reject::Budget`).
pub(super) const MAX_TABLE_REPLIES: usize = 16;
/// Repairs queued at most (a nack of a long history cannot make the queue, or the work to fill
/// it, grow without bound).
const MAX_QUEUE: usize = 1 << 16;
/// Names sent per step of a table reply's names phase.
const NAMES_STEP: usize = 64;
/// Resync intervals within which a direct nack for a datagram already sent its asker is that
/// asker asking again (the repair was lost): the repair then goes twice.
const REASKED: u32 = 2 * MAX_NACKS as u32;

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
    /// A nack sent to the group asked for it: its repair goes to the group (which serves the
    /// askers below too).
    to_group: bool,
    /// Who asked for it directly (relaying peers, by id and address): its repair goes to each
    /// of them, or to one above it in this node's tree, which forwards it down its branch.
    waiting: Vec<(u64, SocketAddr)>,
    /// Those of `waiting` who asked again after it was sent them: its repair to them was lost
    /// (or is late), and goes twice.
    twice: Vec<u64>,
    /// Who was sent it directly (or below one that was), and when: a nack from one of them
    /// soon after is a replay, or the same loss, not answered again within the nack window; a
    /// later one within [`REASKED`] asks again.
    served: Vec<(u64, Instant)>,
    /// Its coded form, what parity covers ([`wire::coded`](crate::cluster::wire::coded); none if it does not fit a parity
    /// datagram: it is repaired plainly).
    coded: Option<Box<[u8]>>,
    /// The first sequence number of its parity block.
    block: u64,
}

impl Sent {
    /// A nack from a relaying peer (`asker`: its id and address) sent directly for this
    /// datagram; `above`: the nodes above it in this node's tree. Returns whether it was sent
    /// the asker (or one above it) within `hold` of `now`: on its way, not answered again.
    ///
    /// A relaying peer's nack has no other asker to stand in for it when it is lost, and
    /// neither has a repair to it: asked again within `reasked` for what was sent it, this node
    /// sends that twice (one more loss then costs no round).
    fn ask_directly(
        &mut self,
        (a, addr): (u64, SocketAddr),
        above: &[u64],
        now: Instant,
        (hold, reasked): (Duration, Duration),
    ) -> bool {
        self.served
            .retain(|&(_, t)| now.saturating_duration_since(t) < reasked);
        let since = |n: u64| {
            self.served
                .iter()
                .rev()
                .find(|x| x.0 == n)
                .map(|x| now.saturating_duration_since(x.1))
        };
        let mut sent = since(a);
        // Sent just now to one above it, the repair is on its way down (then it counts as sent
        // the asker: if it asks again, that copy was lost).
        let through = above
            .iter()
            .filter_map(|&n| since(n).filter(|&d| d < hold))
            .min();
        if let Some(d) = through.filter(|_| sent.is_none()) {
            self.served.push((a, now.checked_sub(d).unwrap_or(now)));
            sent = Some(d);
        }
        let recent = sent.is_some_and(|d| d < hold);
        if !recent && !self.waiting.iter().any(|w| w.0 == a) {
            self.waiting.push((a, addr));
            if sent.is_some() {
                self.twice.push(a);
            }
        }
        recent
    }
}

/// A block of this node's history that has been answered with parity (`parity.rs`).
#[derive(Debug)]
struct Block {
    /// Its first sequence number.
    lo: u64,
    /// The members its parity covers (bit `i`: `lo + i`).
    members: Members,
    /// The next parity index.
    next: usize,
    /// Its symbols waiting for the bucket.
    queued: usize,
    /// The current round of first nacks: when it began, and the most any nack in it needed.
    round: Option<(Instant, usize)>,
    /// The current round of later nacks ([`crate::cluster::wire::FLAG_AGAIN`]) likewise: when
    /// it began, and the symbols it sent.
    again: Option<(Instant, usize, bool)>,
}

/// A repair waiting for the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// The delta or names datagram with this sequence number.
    Seq(u64),
    /// Sequence numbers that carried no topics; to one requester (this node relays), or to the
    /// group.
    Empty(u64, u64, Option<SocketAddr>),
    /// Parity symbol `index` of the block from `lo` over `members` (see `parity.rs`).
    Parity {
        lo: u64,
        members: Members,
        index: usize,
    },
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
    /// Blocks of the history answered with parity, oldest first (see `parity.rs`).
    blocks: VecDeque<Block>,
    /// Topics in `history`.
    kept: usize,
    /// The newest sequence number that left the history (0: none did).
    forgotten: u64,
    /// The parity block new history entries join: its first sequence number, and when the
    /// last entry joined it.
    open: Option<(u64, Instant)>,
    queue: VecDeque<Job>,
    /// Runs of sequence numbers without topics queued as empty repairs to the group, and when
    /// (a nack for one soon after is the same loss at another receiver: the repair serves it).
    empties: VecDeque<(u64, u64, Instant)>,
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
            blocks: VecDeque::new(),
            kept: 0,
            forgotten: 0,
            open: None,
            queue: VecDeque::new(),
            empties: VecDeque::new(),
            tables: VecDeque::new(),
            tokens: burst,
            at: now,
            wake: None,
            rng: seed | 1,
        }
    }

    /// The moment below `max` at which a receiver, one of up to `receivers` that may miss the
    /// same datagrams, sends its first nack of them: drawn from a truncated exponential density
    /// that rises towards `max` at rate ½ ln `receivers` (after Nonnenmacher and Biersack's
    /// timers for feedback from large groups). With moments drawn evenly, the receivers whose
    /// moment came before the first nack could reach them nacked all the same: their number
    /// grew with the group (at 256 nodes and 10 % loss, 27 first nacks of each sender's burst,
    /// against 4 at 64 nodes). Here few draw early moments, however many they are. (At the
    /// full rate ln `receivers` the first nacks were fewer still, but the first ones carry the
    /// largest need the peer answers in its first round: 256 nodes were exact a round later
    /// more often, `perf/RESULTS.md`.)
    pub(super) fn first_moment(&mut self, max: Duration, receivers: usize) -> Duration {
        let rate = (receivers.max(2) as f64).ln() / 2.0;
        let u = self.unit();
        max.mul_f64(((u * rate.exp_m1()).ln_1p() / rate).clamp(0.0, 1.0))
    }

    /// A random number in `[0, 1)`. (The state mixed: its own top bits, at nodes whose seeds
    /// differ in a few bits, drew moments alike enough that 256 nodes sent twice the nack
    /// bytes.)
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (super::open::spread(self.rng) >> 11) as f64 / (1u64 << 53) as f64
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

    /// The oldest sequence number the history can repair: every delta and names datagram
    /// from there on is in it (those before it were forgotten; a number in between that is not
    /// in it carried no topics, as before the first delta).
    fn oldest(&self) -> u64 {
        self.forgotten + 1
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

    /// The history entries from `lo` to `hi`, in order.
    fn span(&self, lo: u64, hi: u64) -> impl Iterator<Item = &Sent> {
        let i = self.history.partition_point(|s| s.seq < lo);
        self.history.range(i..).take_while(move |s| s.seq <= hi)
    }
}

/// Queues an empty repair of `lo..=hi` to `to`; to the group (`to` none), less what another
/// answered within `hold` ([`gaps::unrepaired`], `empties`).
fn queue_empty(
    queue: &mut VecDeque<Job>,
    empties: &mut VecDeque<(u64, u64, Instant)>,
    hold: (Instant, Duration),
    run: (u64, u64),
    to: Option<SocketAddr>,
) {
    if to.is_some() {
        queue.push_back(Job::Empty(run.0, run.1, to));
    } else {
        for (l, h) in gaps::unrepaired(empties, hold, run) {
            queue.push_back(Job::Empty(l, h, None));
        }
    }
}

/// The most the repair bucket holds: one burst (at most a second's rate), at least one
/// datagram.
pub(super) fn burst(cfg: &super::Config) -> f64 {
    (cfg.repair_burst.min(cfg.max_repair_rate.max(1) as usize) as f64).max(cfg.budget as f64)
}

impl Protocol {
    /// A live peer missed this node's sequence numbers `lo..=hi`: queue a repair of each delta
    /// and names datagram among them, and an empty one for each run of the others. A gap older
    /// than the history is answered by reconciling the whole range with that peer (`to`: its
    /// pinned address, once it is settled): the table itself if it is small, else the digests
    /// of its children, from which the peer asks for what differs.
    ///
    /// A nack a relaying peer sent directly (`direct`: its id) is answered to it directly
    /// (`to`), not along the tree from the root: that would take as many hops as the datagram
    /// it repairs, each a chance of loss, and reach every node when a few missed it. Only its
    /// own branch gets it too: the repair is marked for relaying, and the asker forwards it
    /// to its children in this node's tree, who missed the datagram with it (they hear this
    /// node's group datagrams through it). One sent to the group is answered to the group.
    pub(super) fn nacked(
        &mut self,
        now: Instant,
        to: Option<SocketAddr>,
        (lo, hi): (u64, u64),
        direct: Option<u64>,
    ) {
        let hold = self.cfg.nack_window;
        let reasked = self.cfg.resync_interval.max(hold) * REASKED;
        let direct = direct.zip(to);
        // The nodes above a direct asker in this node's tree: a repair sent one of them just
        // now reaches the asker through it.
        let above = match (direct, self.relay_k()) {
            (Some((node, _)), Some(k)) => self.relay_ancestors(node, k),
            _ => Vec::new(),
        };
        // (Sequence numbers begin at 1: there is no 0 to repair.)
        let lo = lo.max(1);
        let hi = hi.min(self.seq);
        if lo > hi {
            return;
        }
        let r = &mut self.repairs;
        let oldest = r.oldest();
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
                let run = (next, s.seq - 1);
                let to = direct.map(|d| d.1);
                queue_empty(&mut r.queue, &mut r.empties, (now, hold), run, to);
            }
            next = s.seq + 1;
            // A repair soon after the last to the same asker (or to the group) was for the same
            // loss, or a replayed nack.
            let recent = match direct {
                Some(asker) => s.ask_directly(asker, &above, now, (hold, reasked)),
                None => {
                    let recent = s
                        .repaired
                        .is_some_and(|t| now.saturating_duration_since(t) < hold);
                    s.to_group |= !recent;
                    recent
                }
            };
            if !s.queued && !recent {
                s.queued = true;
                r.queue.push_back(Job::Seq(s.seq));
            }
        }
        if next <= hi && r.queue.len() < MAX_QUEUE {
            queue_empty(
                &mut r.queue,
                &mut r.empties,
                (now, hold),
                (next, hi),
                direct.map(|d| d.1),
            );
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
}

#[cfg(test)]
mod tests;
