//! Coded repairs, the receiving side: holding a peer's delta and names datagrams while they may
//! be needed to decode its parity, decoding what was missed, and applying it without setting a
//! topic back.
//!
//! A receiver holds each peer's delta and names datagrams (their coded form) from a block's
//! length before its oldest gap on (with no gap, the last block's length of numbers; nothing
//! once the peer is quiet and its copy right). A parity datagram of a block whose members it
//! holds or lacks is kept; once it has as many as it lacks members, it decodes them and applies
//! those it missed as if they had come (those from before it began holding only complete the
//! block). A recovered datagram is older than what came
//! after it: a topic set since by a newer datagram (a later delta, a repair, a refresh slice or
//! reply covering it, even one stamped with its own number) keeps its newer count. For that,
//! while a peer has gaps, the topics each of its datagrams set are kept (bounded per peer and
//! over all peers; past a bound nothing is decoded for that peer until its copy is
//! right, and its gaps are nacked for plain repairs). Nothing is decoded of a peer over this
//! node's caps.
//!
//! Its nacks say what it still needs: the members it lacks (missed, crossed off since without
//! the datagram coming, or from before it began holding), and for a block whose parity it holds
//! some of, only as many as it lacks symbols (the sender sends that many new ones); for gaps
//! from before it began holding, or a block it cannot decode, plain repairs
//! ([`wire::FLAG_PLAIN`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::super::Protocol;
use super::set_by::SetBy;
use super::subtract;
use crate::cluster::erasure;
use crate::cluster::wire::{self, BLOCK, Body, Members};

/// Bytes of peers' datagrams and parity held for decoding, at most, over all peers: past it a
/// peer's are given up and its gaps repaired plainly. (A node holds up to a block of each
/// peer's datagrams: 255 peers bursting together fill ≈ 40 MB at [`BLOCK`] 112 and 1,400-byte
/// datagrams. At 32 MiB they overflowed it and went plain: 14.7 parity and 9 plain repairs a
/// node at 256 × 100k, 1 %, against 9.7 and 4.6.)
const HELD_BYTES: usize = 64 << 20;
/// The most one peer may hold of [`HELD_BYTES`] (one peer's long gap does not leave every other
/// peer to plain repairs).
const PEER_HELD_BYTES: usize = HELD_BYTES / 4;
/// Topics set (counted once per datagram that set them) tracked per peer while it has gaps
/// (see the module docs)...
const MAX_SET_AT: usize = 1 << 18;
/// ...and over all peers.
const ALL_SET_AT: usize = 1 << 21;
/// Nack ranges per peer for parity (more are left for a later round).
const MAX_CODED_RANGES: usize = 256;
/// Ranges set whole tracked per peer likewise.
const MAX_RANGES_AT: usize = 256;
/// Parity symbols held per peer.
const MAX_SYMBOLS: usize = 512;

/// Inclusive ranges of sequence numbers.
type Ranges = Vec<(u64, u64)>;

/// A held datagram: as it came (shared with whoever else keeps it), or recovered (its coded
/// form).
#[derive(Debug)]
enum Held {
    Sealed(Arc<[u8]>),
    Coded(Box<[u8]>),
}

impl Held {
    /// Its coded form ([`wire::coded`]).
    fn coded(&self) -> Cow<'_, [u8]> {
        match self {
            Held::Sealed(b) => Cow::Owned(wire::coded(b).unwrap_or_default()),
            Held::Coded(c) => Cow::Borrowed(c),
        }
    }

    /// What it counts against the held bytes.
    fn len(&self) -> usize {
        match self {
            Held::Sealed(b) => b.len(),
            Held::Coded(c) => c.len(),
        }
    }
}

/// What a receiver keeps of one peer for decoding its parity.
#[derive(Debug, Default)]
pub(in crate::cluster::protocol) struct Recover {
    /// Its delta and names datagrams, by sequence number.
    held: VecDeque<(u64, Held)>,
    /// Every delta and names datagram received with this sequence number or a later one is in
    /// `held` (`None`: none received yet).
    from: Option<u64>,
    /// Bytes in `held` and `symbols`.
    bytes: usize,
    /// Parity symbols received: block, members, index, symbol.
    symbols: Vec<(u64, Members, usize, Box<[u8]>)>,
    /// While it has gaps: the topics each datagram set...
    set_at: SetBy,
    /// ...and the hash ranges set whole since (sequence number, lo, hi).
    ranges_at: Vec<(u64, u64, u64)>,
    /// `set_at` or `ranges_at` overflowed: nothing is decoded until the peer's copy is right.
    blind: bool,
    /// Its sequence numbers this node missed, still missing or not (a gap crossed off by a
    /// plain repair, or by a copy found right, did not bring the datagram: decoding a block
    /// still needs it).
    pub(in crate::cluster::protocol) missed: Vec<(u64, u64)>,
    /// When its last delta or names datagram came (a peer quiet for four ticks begins a new
    /// block with its next: what is held of it can go).
    last_member: Option<Instant>,
}

impl Recover {
    /// Whether it holds parity symbols (of a block not decoded yet): what it asks for then is
    /// beyond them (a later round, [`wire::FLAG_AGAIN`]).
    pub(in crate::cluster::protocol) fn has_symbols(&self) -> bool {
        !self.symbols.is_empty()
    }

    /// Whether its datagram `seq` is held.
    fn holds(&self, seq: u64) -> bool {
        self.held.binary_search_by_key(&seq, |h| h.0).is_ok()
    }

    /// Whether its datagram `seq` is one a decode must find (not held: missed, or from before
    /// holding began).
    fn lacks(&self, seq: u64) -> bool {
        !self.holds(seq) && (self.from.is_none_or(|f| seq < f) || in_gaps(&self.missed, seq))
    }

    /// Whether a topic `h` set by datagram `seq` would set it back (a newer datagram set it).
    fn newer(&self, h: u64, seq: u64) -> bool {
        // (An answer stamped with the very number recovered carries counts of its sending,
        // newer than the datagram: that number was missed, so nothing else has it.)
        self.set_at.newer(h, seq)
            || self
                .ranges_at
                .iter()
                .any(|&(s, lo, hi)| s >= seq && (lo..=hi).contains(&h))
    }

    /// Splits a peer's gaps into those to nack for parity and those to nack for plain repairs;
    /// for a block whose parity this node holds some of, only as many missing members as it
    /// lacks symbols are kept (see the module docs).
    ///
    /// With `spare`, a block whose parity it holds some of is asked for one symbol more than it
    /// lacks.
    pub(in crate::cluster::protocol) fn split(
        &self,
        gaps: &[(u64, u64)],
        spare: bool,
    ) -> (Ranges, Ranges) {
        let Some(from) = self.from.filter(|_| !self.blind) else {
            return (Vec::new(), gaps.to_vec());
        };
        // What came before `from` is not held: plainly.
        let mut plain = subtract(gaps, &[(from, u64::MAX)]);
        let mut coded = if from <= 1 {
            gaps.to_vec()
        } else {
            subtract(gaps, &[(0, from - 1)])
        };
        // Missed before and crossed off since (not held): a block with a gap needs them too,
        // so the first round asks for those near the gaps.
        let near: Vec<(u64, u64)> = self
            .missed
            .iter()
            .filter(|&&(l, h)| {
                coded
                    .iter()
                    .any(|&(a, b)| l <= b.saturating_add(BLOCK) && a <= h.saturating_add(BLOCK))
            })
            .copied()
            .collect();
        for (l, h) in near.into_iter() {
            coded.extend(
                (l.max(from)..=h)
                    .filter(|&s| !self.holds(s))
                    .take(BLOCK as usize)
                    .map(|s| (s, s)),
            );
        }
        coded.sort_unstable();
        coded.dedup();
        let mut blocks: Vec<(u64, Members)> = self.symbols.iter().map(|s| (s.0, s.1)).collect();
        blocks.sort_unstable();
        blocks.dedup_by_key(|b| b.0);
        for (lo, members) in blocks {
            let have = self
                .symbols
                .iter()
                .filter(|s| s.0 == lo && s.1 == members)
                .count();
            // The members this node lacks: missed, or from before it began holding them (those
            // are decoded too, so they are asked for).
            let missing: Vec<u64> = (0..BLOCK)
                .filter(|i| members & (1 << i) != 0)
                .map(|i| lo + i)
                .filter(|&s| in_gaps(&coded, s) || self.lacks(s))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let span = (lo, lo.saturating_add(BLOCK - 1));
            let inside: Vec<(u64, u64)> = coded
                .iter()
                .filter_map(|&(l, h)| {
                    let (l, h) = (l.max(span.0), h.min(span.1));
                    (l <= h).then_some((l, h))
                })
                .collect();
            coded = subtract(&coded, &[span]);
            if have >= missing.len() {
                // Enough symbols and still missing: a member is neither held nor missed here.
                plain.extend(inside);
                continue;
            }
            // What is not this block's (another block's members, numbers that carried no
            // topics), and as many of its missing members as symbols are lacking.
            let ours: Vec<(u64, u64)> = (0..BLOCK)
                .filter(|i| members & (1 << i) != 0)
                .map(|i| (lo + i, lo + i))
                .collect();
            coded.extend(subtract(&inside, &ours));
            let have = if spare { have.saturating_sub(1) } else { have };
            coded.extend(missing[have..].iter().map(|&s| (s, s)));
        }
        let mut coded = super::gaps::merge(&coded);
        coded.truncate(MAX_CODED_RANGES);
        (coded, plain)
    }
}

/// Whether `seq` is in one of `gaps`.
fn in_gaps(gaps: &[(u64, u64)], seq: u64) -> bool {
    gaps.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq))
}

impl Protocol {
    /// Peer `node`'s numbered datagram `seq` came (of any kind): the first one sets where
    /// holding begins (its first, `seq` 1, has nothing before it).
    pub(in crate::cluster::protocol) fn heard_numbered(&mut self, node: u64, seq: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.recover.from.get_or_insert(if seq <= 1 { 0 } else { seq });
        }
    }

    /// Holds peer `node`'s delta or names datagram `seq` (as sealed) for decoding, within
    /// [`HELD_BYTES`] and [`PEER_HELD_BYTES`].
    pub(in crate::cluster::protocol) fn hold(
        &mut self,
        now: Instant,
        node: u64,
        seq: u64,
        sealed: Arc<[u8]>,
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let r = &mut p.recover;
        let held = Held::Sealed(sealed);
        let len = held.len();
        if self.held_bytes + len > HELD_BYTES || r.bytes + len > PEER_HELD_BYTES {
            // Given up: what it held, and every block up to this datagram.
            self.held_bytes -= r.bytes;
            r.held.clear();
            r.symbols.clear();
            r.bytes = 0;
            r.from = Some(seq.saturating_add(1));
            return;
        }
        r.bytes += len;
        self.held_bytes += len;
        r.held.push_back((seq, held));
        r.last_member = Some(now);
        let mut blocks: Vec<u64> = r
            .symbols
            .iter()
            .map(|s| s.0)
            .filter(|&lo| (lo..lo.saturating_add(BLOCK)).contains(&seq))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        for lo in blocks {
            self.retry_block(node, lo);
        }
    }

    /// Topics `hashes` of peer `node` were set by its datagram (or answer) `seq`: tracked while
    /// it has gaps.
    pub(in crate::cluster::protocol) fn note_set(
        &mut self,
        node: u64,
        seq: u64,
        hashes: impl Iterator<Item = u64>,
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let r = &mut p.recover;
        if p.gaps.is_empty() || r.blind {
            return;
        }
        self.set_at_len += r.set_at.note(seq, hashes);
        if r.set_at.len() > MAX_SET_AT || self.set_at_len > ALL_SET_AT {
            self.go_blind(node);
        }
    }

    /// Peer `node`'s tracking overflowed: dropped, and nothing of it decoded until its copy is
    /// right.
    fn go_blind(&mut self, node: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            let r = &mut p.recover;
            r.blind = true;
            self.set_at_len -= r.set_at.len();
            r.set_at = SetBy::default();
            r.ranges_at = Vec::new();
        }
    }

    /// Peer `node`'s hash range `lo..=hi` was set whole by its datagram `seq`: tracked while it
    /// has gaps.
    pub(in crate::cluster::protocol) fn note_range(
        &mut self,
        node: u64,
        seq: u64,
        lo: u64,
        hi: u64,
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let r = &mut p.recover;
        if p.gaps.is_empty() || r.blind {
            return;
        }
        if r.ranges_at.len() >= MAX_RANGES_AT {
            self.go_blind(node);
        } else {
            r.ranges_at.push((seq, lo, hi));
        }
    }

    /// After a datagram of peer `node` was applied: what it held more than a block before its
    /// oldest gap goes (with no gap, more than a block before its newest datagram; all of it
    /// when the peer is quiet and its copy right), and so does what was tracked for its gaps
    /// once there are none.
    pub(in crate::cluster::protocol) fn trim_held(&mut self, now: Instant, node: u64) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let quiet = p.gaps.is_empty()
            && p.converged()
            && p.recover
                .last_member
                .is_some_and(|t| now.saturating_duration_since(t) > p.tick * 4);
        let r = &mut p.recover;
        let keep = if quiet {
            r.last_member = None;
            p.last_seq.saturating_add(1)
        } else {
            let oldest = p.gaps.iter().map(|g| g.0).min().unwrap_or(p.last_seq);
            oldest.saturating_sub(BLOCK - 1)
        };
        while let Some((s, c)) = r.held.front()
            && *s < keep
        {
            r.bytes -= c.len();
            self.held_bytes -= c.len();
            r.held.pop_front();
        }
        if r.symbols.iter().any(|s| s.0 < keep) {
            let held = &mut self.held_bytes;
            r.symbols.retain(|s| {
                if s.0 < keep {
                    r.bytes -= s.3.len();
                    *held -= s.3.len();
                }
                s.0 >= keep
            });
        }
        if let Some(f) = r.from.as_mut() {
            *f = (*f).max(keep);
        }
        if r.missed.first().is_some_and(|m| m.0 < keep) {
            r.missed = subtract(&r.missed, &[(0, keep.saturating_sub(1))]);
        }
        if p.gaps.is_empty() {
            if !r.set_at.is_empty() {
                self.set_at_len -= r.set_at.len();
                r.set_at = SetBy::default();
            }
            r.ranges_at.clear();
            r.blind = false;
        }
    }

    /// Forgets what was held of a peer that is dropped.
    pub(in crate::cluster::protocol) fn release_held(&mut self, r: &Recover) {
        self.held_bytes -= r.bytes;
        self.set_at_len -= r.set_at.len();
    }

    /// A parity symbol of peer `node`'s block from `lo` over `members`: kept, and the block
    /// decoded once enough have come.
    pub(in crate::cluster::protocol) fn on_parity(
        &mut self,
        node: u64,
        (lo, members): (u64, Members),
        index: usize,
        payload: &[u8],
    ) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let r = &mut p.recover;
        if r.blind
            || p.over_cap
            || r.symbols.len() >= MAX_SYMBOLS
            || self.held_bytes + payload.len() > HELD_BYTES
            || r.symbols
                .iter()
                .any(|s| s.0 == lo && s.2 == index && s.1 == members)
            || !(0..BLOCK).any(|i| members & (1 << i) != 0 && in_gaps(&p.gaps, lo + i))
        {
            return;
        }
        // Symbols of an older bitmap of the block do not combine with this one.
        let held = &mut self.held_bytes;
        r.symbols.retain(|s| {
            let keep = s.0 != lo || s.1 == members;
            if !keep {
                r.bytes -= s.3.len();
                *held -= s.3.len();
            }
            keep
        });
        r.symbols.push((lo, members, index, payload.into()));
        r.bytes += payload.len();
        *held += payload.len();
        self.decode_block(node, lo, members);
    }

    /// Decodes peer `node`'s block from `lo` if every member is held or missed and enough
    /// symbols have come, and applies what it missed.
    fn decode_block(&mut self, node: u64, lo: u64, members: Members) {
        let Some(p) = self.peers.get(&node) else {
            return;
        };
        let r = &p.recover;
        if r.blind || p.over_cap {
            return;
        }
        let from = r.from.unwrap_or(u64::MAX);
        let mut held: Vec<(usize, usize)> = Vec::new();
        let mut missing: Vec<usize> = Vec::new();
        for i in (0..BLOCK as usize).filter(|&i| members & (1 << i) != 0) {
            let seq = lo + i as u64;
            if let Ok(k) = r.held.binary_search_by_key(&seq, |h| h.0) {
                held.push((i, k));
            } else if r.lacks(seq) || in_gaps(&p.gaps, seq) {
                // Missed (applied once decoded), or from before holding began (only decoded).
                missing.push(i);
            } else {
                // Neither here nor known missed (not come yet, or given up): not now.
                return;
            }
        }
        let symbols: Vec<(usize, &[u8])> = r
            .symbols
            .iter()
            .filter(|s| s.0 == lo && s.1 == members)
            .map(|s| (s.2, &*s.3))
            .collect();
        if symbols.len() < missing.len() {
            return;
        }
        let coded: Vec<(usize, Cow<[u8]>)> = held
            .iter()
            .map(|&(i, k)| (i, r.held[k].1.coded()))
            .collect();
        let known: Vec<(usize, &[u8])> = coded.iter().map(|(i, c)| (*i, &c[..])).collect();
        let out = erasure::decode(&symbols, &known, &missing);
        self.drop_symbols(node, lo);
        for (i, data) in missing.into_iter().zip(out.unwrap_or_default()) {
            let seq = lo + i as u64;
            let missed =
                seq >= from && self.peers.get(&node).is_some_and(|p| in_gaps(&p.gaps, seq));
            if missed {
                self.apply_recovered(node, seq, &data);
            }
            // Held from now on: a later round of the block (its members grown) needs it.
            self.hold_at(node, seq, data);
        }
    }

    /// Holds a recovered datagram `seq` of peer `node` (`data`: its coded form) in order.
    fn hold_at(&mut self, node: u64, seq: u64, data: Vec<u8>) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        let r = &mut p.recover;
        // Without the decode's zero padding (a later symbol of the block may be shorter).
        let len = data
            .get(3..5)
            .map_or(0, |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
        let data = &data[..(wire::CODED_HEAD + len).min(data.len())];
        if self.held_bytes + data.len() > HELD_BYTES {
            return;
        }
        if let Err(k) = r.held.binary_search_by_key(&seq, |h| h.0) {
            r.bytes += data.len();
            self.held_bytes += data.len();
            r.held.insert(k, (seq, Held::Coded(data.into())));
        }
    }

    /// Tries to decode peer `node`'s block from `lo` with the members of its newest symbol
    /// (a member that came after its symbols may complete it).
    fn retry_block(&mut self, node: u64, lo: u64) {
        let members = self
            .peers
            .get(&node)
            .and_then(|p| p.recover.symbols.iter().rev().find(|s| s.0 == lo))
            .map(|s| s.1);
        if let Some(m) = members {
            self.decode_block(node, lo, m);
        }
    }

    /// Forgets the symbols of peer `node`'s block from `lo`.
    fn drop_symbols(&mut self, node: u64, lo: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            let (r, held) = (&mut p.recover, &mut self.held_bytes);
            r.symbols.retain(|s| {
                if s.0 == lo {
                    r.bytes -= s.3.len();
                    *held -= s.3.len();
                }
                s.0 != lo
            });
        }
    }

    /// Applies peer `node`'s datagram `seq`, recovered from parity (`data`: its coded form),
    /// where it does not set a topic back.
    fn apply_recovered(&mut self, node: u64, seq: u64, data: &[u8]) {
        let Ok(body) = wire::uncode(data) else {
            return;
        };
        match body {
            Body::Entries(e) => {
                let Some(p) = self.peers.get(&node) else {
                    return;
                };
                let keep: Vec<wire::Entry> = e
                    .iter()
                    .filter(|x| !p.recover.newer(x.hash.get(), seq))
                    .copied()
                    .collect();
                self.note_set(node, seq, keep.iter().map(|x| x.hash.get()));
                self.peer_set_all(node, &keep);
            }
            Body::Names(n) => self.learn_names(n),
            _ => return,
        }
        self.stats.recovered += 1;
        self.repaired(node, seq, seq);
    }
}
