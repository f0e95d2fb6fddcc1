//! Coded repairs, the sending side: a nack's gaps among this node's delta and names datagrams
//! are answered with parity ([`crate::cluster::erasure`]) instead of the datagrams themselves.
//!
//! The history is cut into blocks of at most [`wire::BLOCK`] sequence numbers: a block begins
//! with a delta or names datagram and takes those that follow within `BLOCK` numbers, unless
//! the node was quiet (no delta or names datagram) for more than two ticks in between, which
//! begins a new one (so a receiver may stop holding a quiet peer's datagrams). A block's
//! members are its delta and names datagrams whose coded form is kept; a block answered with
//! parity is closed (its members fixed, so every round's symbols combine). A nack missing `m`
//! members of a block is answered with `m` parity symbols of it, to the group; first nacks
//! from other receivers within the nack window (the same loss) add only what the largest of
//! them needs beyond what went out, so a block costs its worst receiver's loss, not the union
//! of everyone's. A receiver that holds some symbols already asks for what it still lacks
//! ([`wire::FLAG_AGAIN`]) and gets fresh symbols (new indices), less any still waiting for the
//! bucket; later nacks that come within a round trip (to their sender) of the first of them
//! likewise count what the largest of them needs (the symbols the first brought were on their
//! way to the others when they asked: answered one by one, a 256-node burst at 1 % loss cost
//! 3.1 later symbols a node where an ideal sender needs 0.2), plus one spare symbol a round
//! when a second asks (without it, at 10 % loss, the worst seeds were exact a tick later: the
//! second receiver's own symbols had been the first's spares). Gaps that are not members
//! (heartbeats, refresh slices, datagrams without a coded form), nacks that ask for plain
//! repairs ([`wire::FLAG_PLAIN`]: the receiver cannot decode them), direct nacks (this node
//! relays), and blocks out of parity indices, go the plain way.

use std::time::{Duration, Instant};

use super::super::Protocol;
use super::{Block, Job, MAX_QUEUE, Repairs, Sent, subtract};
use crate::cluster::erasure;
use crate::cluster::wire::{self, BLOCK, Members, Stamp};

/// Blocks answered with parity that are remembered (the oldest forgotten first: a nack for
/// one forgotten starts it again at index 0, whose symbols its receivers may hold already:
/// a wasted round, no harm).
const MAX_BLOCKS: usize = 1024;

impl Repairs {
    /// Closes the block from `lo` with `members` (its first parity is about to go: what this
    /// node sends next begins a new block); returns its index in `blocks`.
    fn close(&mut self, lo: u64, members: Members) -> usize {
        if self.blocks.len() >= MAX_BLOCKS {
            self.blocks.pop_front();
        }
        if self.open.is_some_and(|(o, _)| o == lo) {
            self.open = None;
        }
        let i = self.blocks.partition_point(|b| b.lo < lo);
        self.blocks.insert(
            i,
            Block {
                lo,
                members,
                next: 0,
                queued: 0,
                round: None,
                again: None,
            },
        );
        i
    }
}

impl Protocol {
    /// Keeps the topics of the delta or names datagram `seq` for repairs, within
    /// [`Config::repair_history`](super::Config::repair_history) topics.
    pub(in crate::cluster::protocol) fn keep_sent(
        &mut self,
        now: Instant,
        seq: u64,
        names: bool,
        hashes: Vec<u64>,
        coded: Option<Box<[u8]>>,
    ) {
        let r = &mut self.repairs;
        r.kept += hashes.len();
        // Its parity block (`parity.rs`): the open one, unless that is full or this node sent
        // no delta or names datagram for more than two ticks (receivers stop holding a quiet
        // peer's datagrams after four).
        let block = match r.open {
            Some((lo, at))
                if seq - lo < wire::BLOCK
                    && now.saturating_duration_since(at) <= self.cfg.tick * 2 =>
            {
                lo
            }
            _ => seq,
        };
        r.open = Some((block, now));
        r.history.push_back(Sent {
            seq,
            block,
            names,
            hashes: hashes.into(),
            queued: false,
            repaired: None,
            to_group: false,
            waiting: Vec::new(),
            twice: Vec::new(),
            served: Vec::new(),
            coded,
        });
        while r.kept > self.cfg.repair_history
            && let Some(s) = r.history.pop_front()
        {
            r.kept -= s.hashes.len();
            r.forgotten = s.seq;
        }
        let oldest = r.oldest();
        while r
            .blocks
            .front()
            .is_some_and(|b| b.lo + wire::BLOCK <= oldest)
        {
            r.blocks.pop_front();
        }
    }

    /// Answers with parity what `gaps` (this node's sequence numbers a peer nacked to the group)
    /// miss of its coded members; returns the gaps left for plain repairs. `again`: a later
    /// round's nack ([`wire::FLAG_AGAIN`]), with the round trip to its sender (see below).
    pub(in crate::cluster::protocol) fn code_nack(
        &mut self,
        now: Instant,
        gaps: &[(u64, u64)],
        again: Option<Duration>,
    ) -> Vec<(u64, u64)> {
        let (again, trip) = (again.is_some(), again.unwrap_or_default());
        let upto = self.sent_seq();
        // The members missed, per block (bounded: a nack of a long history is answered a
        // bounded part at a time, the rest plainly).
        let mut missed: Vec<(u64, Members)> = Vec::new();
        for &(lo, hi) in gaps {
            for s in self.repairs.span(lo, hi.min(upto)) {
                if s.coded.is_none() {
                    continue;
                }
                let b = s.block;
                if let Some((l, m)) = missed.last_mut()
                    && *l == b
                {
                    *m |= 1 << (s.seq - b);
                    continue;
                }
                if missed.len() >= MAX_BLOCKS {
                    break;
                }
                missed.push((b, 1 << (s.seq - b)));
            }
        }
        missed.sort_unstable_by_key(|m| m.0);
        missed.dedup_by(|b, a| {
            // (Gaps need not come in order: one block may have several entries.)
            let same = a.0 == b.0;
            if same {
                a.1 |= b.1;
            }
            same
        });
        let hold = self.cfg.nack_window;
        let mut coded: Vec<(u64, u64)> = Vec::new();
        for (lo, miss) in missed {
            // The members its parity covers: fixed by its first symbol (a block answered with
            // parity is closed: what this node sends next begins a new one), so that symbols of
            // every round combine.
            let kept = self
                .repairs
                .span(lo, (lo + BLOCK - 1).min(upto))
                .filter(|s| s.coded.is_some() && s.block == lo)
                .fold(0, |m: Members, s| m | 1 << (s.seq - lo));
            let r = &mut self.repairs;
            let known = r.blocks.binary_search_by_key(&lo, |b| b.lo).ok();
            let members = known.map_or(kept, |i| r.blocks[i].members);
            // A member that left the history cannot be coded any more: plainly, all of them.
            if members & !kept != 0 {
                continue;
            }
            let miss = miss & members;
            let need = miss.count_ones() as usize;
            if need == 0 || r.queue.len() + need > MAX_QUEUE {
                continue;
            }
            let i = match known {
                Some(i) => i,
                None => r.close(lo, members),
            };
            let b = &mut r.blocks[i];
            // First nacks of one round (within the nack window, from receivers that hold no
            // symbol yet) count what the largest of them needs. A later one (`FLAG_AGAIN`)
            // counted the symbols it holds, maybe this very round's: it gets new ones, however
            // recent the round — but later ones within a round trip of the first of them (sent
            // before its symbols could reach them) count what the largest needs, as first ones
            // do (one that had counted those symbols after all asks again a round later), and
            // the second of them gets one spare symbol for the round.
            // Symbols still waiting for the bucket have reached nobody: they serve any nack.
            let later = b
                .again
                .filter(|&(t, ..)| now.saturating_duration_since(t) < trip);
            let (extra, next_round) = match b.round {
                Some((t, n)) if !again && now.saturating_duration_since(t) < hold => {
                    (need.saturating_sub(n), Some((t, n.max(need))))
                }
                _ if again => match later {
                    Some((_, n, spared)) => {
                        let more = need.saturating_sub(n);
                        (if more == 0 && !spared { 1 } else { more }, b.round)
                    }
                    None => (need, b.round),
                },
                _ => (need, Some((now, need))),
            };
            let extra = extra.min(need.saturating_sub(b.queued));
            if again {
                b.again = Some(match later {
                    Some((t, n, spared)) => {
                        (t, n + extra, spared || extra > need.saturating_sub(n))
                    }
                    None => (now, extra, false),
                });
            }
            if b.next + extra > erasure::PARITY {
                // Out of indices: plain repairs for this block's gaps.
                continue;
            }
            b.round = next_round;
            for index in b.next..b.next + extra {
                r.queue.push_back(Job::Parity { lo, members, index });
            }
            b.next += extra;
            b.queued += extra;
            coded.extend(
                (0..BLOCK)
                    .filter(|i| miss & (1 << i) != 0)
                    .map(|i| (lo + i, lo + i)),
            );
        }
        if coded.is_empty() {
            return gaps.to_vec();
        }
        self.pump_repairs(now);
        subtract(gaps, &coded)
    }

    /// Parity symbol `index` of the block from `lo` over `members`, sealed (flags `flags`,
    /// stamp `st`); `None` if a member has left the history since it was asked for, or the
    /// block began more than `u16::MAX` sequence numbers ago (the wire cannot say where).
    pub(in crate::cluster::protocol) fn parity_datagram(
        &self,
        flags: u16,
        st: &Stamp,
        (lo, members): (u64, Members),
        index: usize,
    ) -> Option<Vec<u8>> {
        let mut data: Vec<(usize, &[u8])> = Vec::with_capacity(members.count_ones() as usize);
        for i in (0..BLOCK).filter(|i| members & (1 << i) != 0) {
            let s = self.repairs.span(lo + i, lo + i).next()?;
            data.push((i as usize, s.coded.as_deref()?));
        }
        let payload = erasure::encode(index, &data)?;
        self.enc
            .parity(&self.seal, flags, st, (lo, members), index, &payload)
    }

    /// The coded form of a delta or names datagram this node sends to the group, if parity can
    /// carry it.
    pub(in crate::cluster::protocol) fn coded(&self, bytes: &[u8]) -> Option<Box<[u8]>> {
        wire::coded(bytes)
            .filter(|c| c.len() <= self.enc.parity_room())
            .map(Into::into)
    }
}
