//! Sending what waits for the repair bucket, a datagram at a time (see the parent module's
//! docs): a repair (plain, empty or parity), or a step of a table reply (the whole table, the
//! ranges a digest request asked for, names).

use std::time::Instant;

use super::super::{Dest, Protocol};
use super::{Job, NAMES_STEP, TableReply};
use crate::cluster::wire::{self, FLAG_END, Kind};

impl Protocol {
    /// Sends one datagram's worth (a repair, or a step of a table reply) of what waits;
    /// returns the bytes queued.
    pub(super) fn repair_step(&mut self, now: Instant) -> usize {
        let before = self.stats.bytes_sent;
        if let Some(job) = self.repairs.queue.pop_front() {
            // The last repair says the digest is final, when no change waits.
            let end = self.repairs.queue.is_empty() && self.changed.is_empty();
            let mut flags = if end { FLAG_END } else { 0 };
            let st = self.stamp(now, self.sent_seq());
            let mut to = Vec::new();
            let dgs = match job {
                Job::Empty(lo, hi, dest) => {
                    to.extend(dest);
                    vec![self.enc.repair(&self.seal, flags, &st, (lo, hi), &[])]
                }
                Job::Parity { lo, members, index } => {
                    let r = &mut self.repairs;
                    let i = r.blocks.partition_point(|b| b.lo < lo);
                    if let Some(b) = r.blocks.get_mut(i).filter(|b| b.lo == lo) {
                        b.queued = b.queued.saturating_sub(1);
                    }
                    let Some(d) = self.parity_datagram(flags, &st, (lo, members), index) else {
                        return 0;
                    };
                    vec![d]
                }
                Job::Seq(seq) => {
                    let Some(s) = self.repairs.sent(seq) else {
                        return 0;
                    };
                    s.queued = false;
                    let mut askers = std::mem::take(&mut s.waiting);
                    let again = std::mem::take(&mut s.twice);
                    if std::mem::take(&mut s.to_group) {
                        // The group serves the direct askers too.
                        s.repaired = Some(now);
                        askers.clear();
                    }
                    let (names, hashes) = (s.names, s.hashes.clone());
                    let ids: Vec<u64> = askers.iter().map(|a| a.0).collect();
                    if let Some(k) = self.relay_k().filter(|_| !askers.is_empty()) {
                        // Marked for relaying, a repair goes down its asker's branch of this
                        // node's tree: an asker below another gets it from that one, unless
                        // it asks again (the way down lost it before).
                        askers.retain(|a| {
                            again.contains(&a.0)
                                || !self.relay_ancestors(a.0, k).iter().any(|n| ids.contains(n))
                        });
                        flags |= (k.min(255) as u16) << wire::RELAY_SHIFT;
                    }
                    if let Some(s) = self.repairs.sent(seq) {
                        s.served.retain(|x| !ids.contains(&x.0));
                        s.served.extend(ids.iter().map(|&a| (a, now)));
                    }
                    to = askers.iter().map(|a| a.1).collect();
                    to.extend(askers.iter().filter(|a| again.contains(&a.0)).map(|a| a.1));
                    if names {
                        let list: Vec<(u64, &str)> = hashes
                            .iter()
                            .map(|h| (*h, self.names.get(*h).unwrap_or("")))
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
                if matches!(job, Job::Parity { .. }) {
                    self.stats.parity_sent += 1;
                } else {
                    self.stats.repairs_sent += 1;
                }
                match to.split_last() {
                    None => self.push(Dest::Group, d),
                    Some((last, rest)) => {
                        for &a in rest {
                            self.push(Dest::To(a), d.clone());
                        }
                        self.push(Dest::To(*last), d);
                    }
                }
            }
        } else if let Some(t) = self.repairs.tables.front_mut() {
            let to = t.to;
            if let Some(lo) = t.state {
                let per = self.enc.entries_per_datagram(Kind::ResyncReply);
                let (l, hi, e) = self.slice(lo, u64::MAX, per);
                let last = hi == u64::MAX;
                if let Some(t) = self.repairs.tables.front_mut() {
                    t.state = (!last).then(|| hi + 1);
                }
                let flags = if last { FLAG_END } else { 0 };
                let d = self.enc.entries(
                    &self.seal,
                    Kind::ResyncReply,
                    flags,
                    &self.stamp(now, self.sent_seq()),
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
}
