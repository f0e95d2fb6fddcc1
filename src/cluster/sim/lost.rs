//! What random loss took of the datagrams repair restores, by sender and receiver: the least
//! any repair must send again, and what an ideal repair in rounds would send.

use std::collections::BTreeMap;

use crate::cluster::wire::{FLAG_REPLY, Header, Kind};
use zerocopy::FromBytes;

/// Each sender's sequenced group datagrams (deltas and names: what nacks and parity repair)
/// that random loss took from each receiver, from when [`Sim::count_lost_data`](super::Sim::count_lost_data)
/// was last called.
#[derive(Debug)]
pub(super) struct LostData {
    /// Bytes and datagrams, by (sender, receiver): only the pairs that lost something (a
    /// matrix of every pair would take 200 MB at 4,096 nodes).
    lost: BTreeMap<(usize, usize), (u64, u32)>,
}

impl LostData {
    pub(super) fn new() -> LostData {
        LostData {
            lost: BTreeMap::new(),
        }
    }

    /// Counts a datagram of `len` bytes of `from`'s lost to `to`.
    pub(super) fn add(&mut self, from: usize, to: usize, len: usize) {
        let e = self.lost.entry((from, to)).or_default();
        e.0 += len as u64;
        e.1 += 1;
    }

    /// Each sender's losses, in order, receiver by receiver in order: (bytes, datagrams).
    fn by_sender(&self) -> Vec<Vec<(u64, u32)>> {
        let mut rows: Vec<Vec<(u64, u32)>> = Vec::new();
        let mut last = None;
        for (&(from, _), &v) in &self.lost {
            match rows.last_mut() {
                Some(row) if last == Some(from) => row.push(v),
                _ => rows.push(vec![v]),
            }
            last = Some(from);
        }
        rows
    }

    /// The sum over senders of the most bytes of the sender's any one receiver lost.
    pub(super) fn floor(&self) -> u64 {
        self.by_sender()
            .iter()
            .map(|row| row.iter().map(|v| v.0).max().unwrap_or(0))
            .sum()
    }

    /// The symbols an ideal repair in rounds sends, summed over senders: each round the
    /// sender knows exactly what every receiver still lacks (free, lossless feedback) and
    /// sends as many symbols as the neediest lacks, any of which repairs any one loss; each
    /// symbol is lost at each receiver with probability `loss`, drawn from `seed`. (A model
    /// on the losses the run drew, not a run: what the protocol's parity is measured against.)
    pub(super) fn ideal_symbols(&self, loss: f64, seed: u64) -> u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut kept = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 >= loss
        };
        let mut total = 0u64;
        for row in self.by_sender() {
            let mut need: Vec<u32> = row.iter().map(|v| v.1).collect();
            // Bounded: at loss 0.99 a round still brings a symbol to a receiver now and then.
            for _ in 0..10_000 {
                let Some(&k) = need.iter().max() else { break };
                total += u64::from(k);
                for n in &mut need {
                    let got = (0..k).filter(|_| kept()).count() as u32;
                    *n = n.saturating_sub(got);
                }
                need.retain(|&n| n > 0);
            }
        }
        total
    }
}

/// Whether `bytes` are a sequenced group datagram that repair restores: a delta or names,
/// not sent in answer to anything.
pub(super) fn repaired_kind(bytes: &[u8]) -> bool {
    Header::ref_from_prefix(bytes).is_ok_and(|(h, _)| {
        matches!(Kind::from_u8(h.kind), Some(Kind::Delta | Kind::Names))
            && h.flags.get() & FLAG_REPLY == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::HEADER_LEN;
    use zerocopy::{FromZeros, IntoBytes};

    #[test]
    fn the_floor_is_each_senders_worst_receivers_loss() {
        let mut l = LostData::new();
        assert_eq!(l.floor(), 0);
        l.add(0, 1, 100);
        l.add(0, 2, 300);
        l.add(0, 2, 50);
        l.add(1, 0, 50);
        l.add(1, 2, 60);
        assert_eq!(l.floor(), 350 + 60);
    }

    #[test]
    fn an_ideal_repair_sends_the_worst_loss_and_what_its_symbols_lose() {
        let mut l = LostData::new();
        for _ in 0..5 {
            l.add(0, 1, 1_000);
        }
        for _ in 0..3 {
            l.add(0, 2, 1_000);
        }
        l.add(3, 1, 1_000);
        // Without loss of symbols, one round of the worst receiver's need a sender.
        assert_eq!(l.ideal_symbols(0.0, 1), 5 + 1);
        // Lost symbols cost more rounds: never fewer than that, the same for a seed.
        let lossy = l.ideal_symbols(0.5, 7);
        assert!(lossy > 6, "{lossy}");
        assert_eq!(lossy, l.ideal_symbols(0.5, 7));
        // Over many draws, about what the loss takes: at 50 %, the worst of 5 takes ≈ 10+.
        let mean = (0..200).map(|s| l.ideal_symbols(0.5, s)).sum::<u64>() as f64 / 200.0;
        assert!((10.0..20.0).contains(&mean), "{mean}");
        // Nothing lost, nothing sent.
        assert_eq!(LostData::new().ideal_symbols(0.5, 1), 0);
    }

    #[test]
    fn repair_restores_sequenced_deltas_and_names_only() {
        let datagram = |kind: Kind, flags: u16| {
            let mut h = Header::new_zeroed();
            h.kind = kind as u8;
            h.flags.set(flags);
            let mut b = h.as_bytes().to_vec();
            b.resize(HEADER_LEN + 16, 0);
            b
        };
        assert!(repaired_kind(&datagram(Kind::Delta, 0)));
        assert!(repaired_kind(&datagram(Kind::Names, 0)));
        // A repair is a delta sent in answer: not counted (what it restores was).
        assert!(!repaired_kind(&datagram(Kind::Delta, FLAG_REPLY)));
        for k in [Kind::Heartbeat, Kind::Refresh, Kind::Nack, Kind::Parity] {
            assert!(!repaired_kind(&datagram(k, 0)), "{k:?}");
        }
        assert!(!repaired_kind(&[1, 2, 3]));
    }
}
