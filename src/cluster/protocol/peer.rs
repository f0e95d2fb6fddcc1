//! What this node keeps of each peer: its table of counts with their digest ([`Table`]), its
//! sequence, address and repair state ([`Peer`]), and what is remembered of a dropped one
//! ([`Tomb`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Ranges kept per peer whose digest reply is awaited.
pub(super) const MAX_DIGESTS_ASKED: usize = 64;

/// The order-independent digest term of one `(hash, count)` entry (splitmix64 finalizer).
#[inline]
pub fn mix(hash: u64, count: u32) -> u64 {
    super::open::spread(hash ^ u64::from(count).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Fresh datagrams a peer must have sent from its address before this node sends it requests or
/// answers its requests there.
pub(super) const SETTLED: u32 = 2;

/// A table of absolute counts by topic hash with its running digest.
#[derive(Debug, Default, Clone)]
pub(super) struct Table {
    pub(super) map: Counts,
    pub(super) digest: u64,
    /// The sum of the counts (kept as the table changes: a peer's total is read every tick).
    pub(super) sum: u64,
}

impl Table {
    /// Sets `hash` to `count` (0 removes); returns the old count.
    pub(super) fn set(&mut self, hash: u64, count: u32) -> u32 {
        let old = self.map.set(hash, count);
        if old != 0 {
            self.digest = self.digest.wrapping_sub(mix(hash, old));
        }
        if count != 0 {
            self.digest = self.digest.wrapping_add(mix(hash, count));
        }
        self.sum = self.sum - u64::from(old) + u64::from(count);
        old
    }
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The digest and size of the entries with hashes in `lo..=hi`: the digest is additive, so
    /// a range's is the wrapping sum of its entries' terms (a scan of the range). Two tables
    /// agree on a range exactly when these agree (barring a 64-bit collision).
    pub(super) fn range_digest(&self, lo: u64, hi: u64) -> (u64, u32) {
        self.map.range(lo, hi).fold((0u64, 0u32), |(d, n), (h, c)| {
            (d.wrapping_add(mix(h, c)), n.saturating_add(1))
        })
    }
}

/// Entries a bucket of [`Counts`] holds on average before the buckets double.
const BUCKET: usize = 192;

/// Counts by topic hash, in hash order, in about 13–14 bytes an entry (every node keeps every
/// peer's table: this is what a cluster's memory grows with). The hashes are spread evenly
/// (keyed hashes), so they are bucketed by their top bits, each bucket a sorted run of hashes
/// beside a run of counts (12 bytes an entry, no per-entry pointers), grown a quarter at a
/// time; the buckets double as the table grows. Lookups and changes cost a binary search and a
/// move within one bucket of a few hundred entries; ranges come out in hash order.
#[derive(Debug, Clone)]
pub(super) struct Counts {
    buckets: Vec<Bucket>,
    /// `buckets.len() == 1 << bits`.
    bits: u32,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    keys: Vec<u64>,
    vals: Vec<u32>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            buckets: vec![Bucket::default()],
            bits: 0,
            len: 0,
        }
    }
}

impl Counts {
    fn index(&self, hash: u64) -> usize {
        if self.bits == 0 {
            0
        } else {
            (hash >> (64 - self.bits)) as usize
        }
    }

    /// How many hashes have a count.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The count of `hash`, if it has one.
    pub(super) fn get(&self, hash: &u64) -> Option<&u32> {
        let b = &self.buckets[self.index(*hash)];
        find(&b.keys, *hash, self.bits).ok().map(|i| &b.vals[i])
    }

    /// Starts loading the key and count where a search for `hash` starts into the cache (see
    /// `Aggregate::set_all` in `apply.rs`).
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        let b = &self.buckets[self.index(hash)];
        if !b.keys.is_empty() {
            let at = guess(hash, self.bits, b.keys.len());
            super::open::prefetch(&b.keys[at]);
            super::open::prefetch(&b.vals[at]);
        }
    }

    /// Whether `hash` has a count.
    pub(super) fn contains_key(&self, hash: &u64) -> bool {
        self.get(hash).is_some()
    }

    /// Sets `hash` to `count` (0 removes); returns the old count (0: none).
    pub(super) fn set(&mut self, hash: u64, count: u32) -> u32 {
        let i = self.index(hash);
        let b = &mut self.buckets[i];
        match find(&b.keys, hash, self.bits) {
            Ok(at) if count == 0 => {
                b.keys.remove(at);
                self.len -= 1;
                let old = b.vals.remove(at);
                if b.keys.capacity() > 16 && b.keys.len() < b.keys.capacity() * 3 / 4 {
                    b.keys.shrink_to(b.keys.len() + b.keys.len() / 8);
                    b.vals.shrink_to(b.vals.len() + b.vals.len() / 8);
                }
                if self.bits > 0 && self.len < (BUCKET << self.bits) / 8 {
                    self.merge();
                }
                old
            }
            Ok(at) => std::mem::replace(&mut b.vals[at], count),
            Err(_) if count == 0 => 0,
            Err(at) => {
                if b.keys.len() == b.keys.capacity() {
                    // Grow by a quarter, not double: the slack stays small (but by 16 at least:
                    // each growth is a copy, and a filling table's small buckets would grow
                    // every few entries).
                    let more = (b.keys.len() / 4).max(16);
                    b.keys.reserve_exact(more);
                    b.vals.reserve_exact(more);
                }
                b.keys.insert(at, hash);
                b.vals.insert(at, count);
                self.len += 1;
                if self.len > BUCKET << self.bits && self.bits < 24 {
                    self.split();
                }
                0
            }
        }
    }

    /// The table is about to hold about `n` entries (a peer's declared size): if that is more
    /// than its buckets are for, they split now to as many as `n` calls for, and each gets room
    /// for its share. Filled from empty one datagram at a time, a 4k-entry table otherwise split
    /// five times and grew its buckets ≈ 700 times, copying its entries ≈ 15 times over (at
    /// 256 × 100k, an eighth of the simulator's time was the allocator). The caller bounds `n`
    /// (what the table may hold at most).
    pub(super) fn expect(&mut self, n: usize) {
        let mut bits = self.bits;
        while n > BUCKET << bits && bits < 24 {
            bits += 1;
        }
        if bits == self.bits {
            return;
        }
        while self.bits < bits {
            self.split();
        }
        let share = n >> bits;
        for b in &mut self.buckets {
            if b.keys.len() < share {
                b.keys.reserve_exact(share - b.keys.len());
                b.vals.reserve_exact(share - b.vals.len());
            }
        }
    }

    /// Doubles the buckets: each splits in two by its next hash bit (its hashes are sorted,
    /// so the split is one search).
    fn split(&mut self) {
        let bit = 63 - self.bits;
        let mut next = Vec::with_capacity(self.buckets.len() * 2);
        for mut b in std::mem::take(&mut self.buckets) {
            let at = b.keys.partition_point(|&k| k >> bit & 1 == 0);
            let hi = Bucket {
                keys: b.keys.split_off(at),
                vals: b.vals.split_off(at),
            };
            b.keys.shrink_to(b.keys.len() + b.keys.len() / 4);
            b.vals.shrink_to(b.vals.len() + b.vals.len() / 4);
            next.push(b);
            next.push(hi);
        }
        self.buckets = next;
        self.bits += 1;
    }

    /// Halves the buckets: each pair, neighbours in hash order, becomes one.
    fn merge(&mut self) {
        let mut next = Vec::with_capacity(self.buckets.len() / 2);
        let mut it = std::mem::take(&mut self.buckets).into_iter();
        while let (Some(mut a), Some(b)) = (it.next(), it.next()) {
            a.keys.extend_from_slice(&b.keys);
            a.vals.extend_from_slice(&b.vals);
            a.keys.shrink_to(a.keys.len() + a.keys.len() / 8);
            a.vals.shrink_to(a.vals.len() + a.vals.len() / 8);
            next.push(a);
        }
        self.buckets = next;
        self.bits -= 1;
    }

    /// The entries with hashes in `lo..=hi`, in hash order.
    pub(super) fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let (a, z) = (self.index(lo), self.index(hi.max(lo)));
        self.buckets[a..=z].iter().flat_map(move |b| {
            let s = b.keys.partition_point(|&k| k < lo);
            let e = b.keys.partition_point(|&k| k <= hi);
            let e = e.max(s);
            b.keys[s..e]
                .iter()
                .copied()
                .zip(b.vals[s..e].iter().copied())
        })
    }

    /// Every entry, in hash order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.range(0, u64::MAX)
    }

    /// Heap bytes held (for the memory figures).
    pub(super) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self
                .buckets
                .iter()
                .map(|b| b.keys.capacity() * 8 + b.vals.capacity() * 4)
                .sum::<usize>()
    }
}

/// Where `hash` would be among `n` evenly spread hashes of its bucket (`1 << bits` buckets):
/// its bits below the bucket's, as a fraction of the bucket's span, times `n` (below `n`).
fn guess(hash: u64, bits: u32, n: usize) -> usize {
    ((u128::from(hash << bits) * n as u128) >> 64) as usize
}

/// Where `hash` is in `keys`, the sorted, distinct hashes of a bucket of a table with
/// `1 << bits` buckets: what [`slice::binary_search`] answers (with distinct keys the answer is
/// the same). The hashes are spread evenly, so the search starts where `hash` would be were
/// the bucket's evenly spaced, and widens from there in doubling steps (at most twice a binary
/// search's probes whatever the keys): on a cold bucket of a few hundred it reads one or two
/// cache lines where a binary search waits on eight or so in turn.
pub(super) fn find(keys: &[u64], hash: u64, bits: u32) -> Result<usize, usize> {
    let n = keys.len();
    if n == 0 {
        return Err(0);
    }
    let guess = guess(hash, bits, n);
    let (lo, hi) = if keys[guess] < hash {
        // Above the guess: widen upwards until a key is not below `hash`.
        let (mut lo, mut step) = (guess + 1, 1);
        loop {
            let probe = guess + step;
            if probe >= n {
                break (lo, n);
            }
            if keys[probe] >= hash {
                break (lo, probe + 1);
            }
            lo = probe + 1;
            step *= 2;
        }
    } else {
        // At or below the guess: widen downwards until a key is below `hash`.
        let (mut hi, mut step) = (guess + 1, 1);
        loop {
            if step > guess {
                break (0, hi);
            }
            let probe = guess - step;
            if keys[probe] < hash {
                break (probe + 1, hi);
            }
            hi = probe + 1;
            step *= 2;
        }
    };
    match keys[lo..hi].binary_search(&hash) {
        Ok(i) => Ok(lo + i),
        Err(i) => Err(lo + i),
    }
}

#[derive(Debug)]
pub(super) struct Peer {
    /// Where its datagrams come from: pinned for the incarnation (see [`Peer::heard_from`]).
    pub(super) addr: SocketAddr,
    /// Fresh datagrams heard from `addr` (saturating), and when the last one was.
    pub(super) addr_seen: u32,
    pub(super) addr_heard: Instant,
    pub(super) incarnation: u64,
    pub(super) last_seq: u64,
    /// When a numbered datagram last moved `last_seq` on: gaps known of a peer that has been
    /// quiet since for a resync interval are nacked without its final declaration, which may
    /// have been lost with them.
    pub(super) seq_at: Instant,
    pub(super) last_heard: Instant,
    /// The highest sequence number of its datagrams refused for a cap: each newer one says it
    /// is alive (they leave `last_seq` where it was: the same bytes again are not newer).
    pub(super) refused_seq: u64,
    pub(super) tick: Duration,
    pub(super) table: Table,
    /// The digest and size the peer last declared final (a
    /// [`FLAG_END`](crate::cluster::wire::FLAG_END) datagram).
    pub(super) declared: Option<(u64, u32)>,
    pub(super) received: u64,
    pub(super) lost: u64,
    pub(super) rejected: u64,
    /// When this node last asked it for a resync.
    pub(super) last_request: Option<Instant>,
    /// A passive observer: no table, never counted or listed.
    pub(super) observer: bool,
    /// The latest `time` it sent.
    pub(super) time: u64,
    /// The highest request number accepted from it.
    pub(super) requests_seen: u64,
    /// When this node last sent it its table, and its names, in answer to a request (each
    /// at most once per resync interval: a names request does not hold up a table request).
    pub(super) last_reply: [Option<Instant>; 2],
    /// Its table went over a cap here: what this node counts of it is incomplete.
    pub(super) over_cap: bool,
    /// While over a cap: the wait before asking it for its table again (doubles each time).
    pub(super) backoff: Duration,
    /// Its sequence numbers this node missed since its copy was last right (inclusive ranges).
    pub(super) gaps: Vec<(u64, u64)>,
    /// When this node nacks them (a random moment after its copy was found wrong).
    pub(super) nack_at: Option<Instant>,
    /// Nack rounds since its copy was last right, or since a round asked for less than every
    /// round before it.
    pub(super) nacks: u8,
    /// The fewest sequence numbers a nack round asked of it since its copy was last right
    /// (`None`: no round yet). A round that asks for fewer made progress (symbols or repairs
    /// came): for a table reconciled by digests, the rounds count afresh (see
    /// [`MAX_NACKS`](super::repair::MAX_NACKS)). Each reset takes a new low, so they are
    /// bounded by what the first round asked.
    pub(super) least_need: Option<u64>,
    /// The last nack round was for names its gaps may have held, sent while its counts were
    /// right here: when its counts go wrong next, their rounds begin afresh.
    pub(super) names_rounds: bool,
    /// Its sequence numbers other receivers nacked, and when (this node does not ask again).
    pub(super) asked: Vec<(u64, u64, Instant)>,
    /// Other receivers' first nacks of it for parity, as counts (see [`super::repair::outbid`]).
    pub(super) bids: Vec<super::repair::Bid>,
    /// Digest requests for its whole range sent since its copy was last right or it last sent
    /// a digest reply: past [`MAX_DIGEST_ROUNDS`](super::repair::MAX_DIGEST_ROUNDS) this node
    /// asks for its whole table instead (a peer that does not answer them, an older version).
    pub(super) digest_rounds: u8,
    /// Its digest requests answered in the current resync interval, the width of the hash
    /// space they asked this node to reconcile (what answering them scans), and when that
    /// interval began.
    pub(super) digests_served: (u32, u128, Instant),
    /// The ranges this node asked the peer to reconcile and has no digest reply for yet
    /// (at most [`MAX_DIGESTS_ASKED`], oldest dropped): a digest reply for another range (a
    /// replay, or one nobody asked for) is ignored.
    pub(super) digests_asked: std::collections::VecDeque<(u64, u64)>,
    /// The newest sender clock of its unnumbered direct heartbeats (a relaying peer's): only a
    /// newer one counts for its address (a replay is not newer).
    pub(super) direct_time: u64,
    /// What its last unnumbered direct heartbeat said before its relayed datagrams came: its
    /// last number and declaration, and when. If they have not come an interval later, they
    /// are missed (this node may be in a hole of its tree, or they were lost): see
    /// `Protocol::overdue`.
    pub(super) marker: Option<Marker>,
    /// What this node holds of it to decode its parity (`repair/recover.rs`).
    pub(super) recover: super::repair::recover::Recover,
    /// How long it takes to answer this node's nacks: the wait between nack rounds.
    pub(super) round_trip: super::repair::round_trip::RoundTrip,
}

/// A relaying peer's last number and declaration, heard directly before its relayed datagrams.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marker {
    pub(super) seq: u64,
    /// Its digest and size, if it declared them (no change waited for a later tick).
    pub(super) declared: Option<(u64, u32)>,
    pub(super) at: Instant,
}

impl Peer {
    /// Notes that its numbered datagrams have reached `seq` (`declared`: what it declared with
    /// it), as something it sent directly says before its relayed datagrams come: those not
    /// come an interval after the first such news still pending are missed ([`Marker`]).
    pub(super) fn expect(&mut self, seq: u64, declared: Option<(u64, u32)>, now: Instant) {
        if seq > self.last_seq && self.marker.is_none_or(|m| m.seq < seq) {
            // (A marker whose datagrams all came is spent: its time says nothing.)
            let at = self
                .marker
                .filter(|m| m.seq > self.last_seq)
                .map_or(now, |m| m.at);
            self.marker = Some(Marker { seq, declared, at });
        }
    }

    /// Notes a fresh, authentic datagram of this peer from `from`. The address stays pinned:
    /// a copy of a fresh datagram that reaches this node first from elsewhere (a replay racing
    /// the original, an interception) must not redirect what this node sends to the peer. Only
    /// when the pinned address has been silent for `quiet` does the address move (a real
    /// change of address within one incarnation, such as a NAT rebinding).
    pub(super) fn heard_from(&mut self, from: SocketAddr, now: Instant, quiet: Duration) {
        if from == self.addr {
            self.addr_seen = self.addr_seen.saturating_add(1);
            self.addr_heard = now;
        } else if now.saturating_duration_since(self.addr_heard) > quiet {
            self.addr = from;
            self.addr_seen = 1;
            self.addr_heard = now;
        }
    }

    /// Whether this node may send to the peer's address: it has heard the peer there at least
    /// [`SETTLED`] times (a single replayed or intercepted datagram does not make an address).
    pub(super) fn settled(&self) -> bool {
        self.addr_seen >= SETTLED
    }

    pub(super) fn converged(&self) -> bool {
        self.observer || self.declared == Some((self.table.digest, self.table.len() as u32))
    }
    pub(super) fn total(&self) -> u64 {
        self.table.sum
    }

    /// Whether its table is over [`SMALL_TABLE`](super::repair::SMALL_TABLE) datagrams of
    /// `per` entries (its copy here, or what it declares, whichever is larger): a copy that
    /// holds something is then reconciled by range digests rather than fetched whole, and
    /// nack rounds that bring something do not count towards that.
    pub(super) fn big(&self, per: usize) -> bool {
        let size = self
            .table
            .len()
            .max(self.declared.map_or(0, |d| d.1 as usize));
        size > super::repair::SMALL_TABLE * per
    }
}

/// What is remembered of a dropped node.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tomb {
    pub(super) incarnation: u64,
    /// Its address: a revived node is pinned there again.
    pub(super) addr: SocketAddr,
    /// This incarnation never comes back (it said goodbye, or a newer one replaced it).
    pub(super) barred: bool,
    pub(super) last_seq: u64,
    pub(super) requests_seen: u64,
    /// The last `time` it sent, and when it was last heard here.
    pub(super) time: u64,
    pub(super) heard: Instant,
    pub(super) until: Instant,
}
