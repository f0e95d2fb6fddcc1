//! The reducer: once a tick, sum the slots of the topics that changed.
//!
//! Its cost follows what changed, not how many topics exist: it reads the cores' rings (topics
//! first changed this epoch), a short watch list per core (topics whose core may still change
//! them without pushing again), and the shared core's dirty summary words.
//!
//! # Staleness bound
//!
//! A change made by a core's owner thread is in the sum of the first tick that starts after the
//! change is visible to the reducer (in practice: after the owner's store leaves its store
//! buffer, nanoseconds), and at the latest in the first tick after the owner's next join or leave
//! in a later epoch, or after anything that orders it before the tick ([`crate::Engine::sync`]
//! from a thread the change happened-before). A change never waits for a topic to change again.
//! Changes through the shared core are in the next tick's sum. To keep idle workers cheap, the
//! watch list of a core that has not moved for 4 ticks is re-read every 16th tick (and on every
//! `sync`) instead of every tick; the practical bound (stores leave a store buffer in
//! nanoseconds) stays one tick.
//!
//! # Retirement
//!
//! A topic whose count stayed zero for `retire_after` is retired in two phases. Phase one (tick
//! `t1`) bumps the id's generation: from then on, a join through a handle made earlier fails. A
//! join that checked the generation just before the bump may still land; every core observes the
//! epoch *before* it checks a generation, and publishes the epochs it sees, so once every bound
//! core has published an epoch after `t1` (and unbound cores re-read the epoch with an RMW when
//! they bind), all such stragglers are visible. Phase two then re-sums the topic: zero frees the
//! id for reuse, anything else revives the topic. A claimed shard that stays idle holds up phase
//! two (not the counts): ids are reused only once it joins or leaves again, or is dropped
//! (for the implicit shard of `Engine::join`: once its thread calls `Engine::release_thread` or
//! exits).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::shard::Hot;
use crate::sync::Ordering;
use crate::topic::{Retired, Topics};

/// Collects the topics that changed since the last tick, over every core. Owned by the reducer.
pub(crate) struct Collector {
    /// Per core: `(topic, epoch)` drained earlier and still to be re-read.
    watch: Vec<Vec<(u32, u32)>>,
    /// Per core: the `overflows` value last acted on.
    overflow_seen: Vec<u64>,
    /// Per core: rescan every topic while the core's published epoch is at most this.
    rescan_until: Vec<u64>,
    /// Per core: its published epoch at the last tick, and for how many ticks it stayed.
    last_seen: Vec<u64>,
    idle: Vec<u32>,
    /// Per topic: the tick that last listed it (dedup within a tick).
    stamp: Vec<u32>,
    /// Scratch: the topics listed this tick.
    pub(crate) touched: Vec<u32>,
    pub(crate) rescans: u64,
}

/// `e32` widened to the u64 epoch nearest below `now`.
fn widen(now: u64, e32: u32) -> u64 {
    now.wrapping_sub(u64::from((now as u32).wrapping_sub(e32)))
}

impl Collector {
    pub(crate) fn new(cores: usize, capacity: usize) -> Collector {
        Collector {
            watch: vec![Vec::new(); cores],
            overflow_seen: vec![0; cores],
            rescan_until: vec![0; cores],
            last_seen: vec![0; cores],
            idle: vec![0; cores],
            stamp: vec![0; capacity],
            touched: Vec::new(),
            rescans: 0,
        }
    }

    #[inline]
    pub(crate) fn list(&mut self, tick: u64, id: u32) {
        let s = &mut self.stamp[id as usize];
        if *s != tick as u32 {
            *s = tick as u32;
            self.touched.push(id);
        }
    }

    /// Starts tick `tick`: publishes it as the new epoch, then lists every topic that may have
    /// changed into `self.touched`. `high_water`: one past the highest id in use (for rescans).
    pub(crate) fn collect(&mut self, hot: &Hot, tick: u64, high_water: u32, full: bool) {
        self.touched.clear();
        // Whatever this thread did before (generation bumps) is visible to a core that observes
        // the new epoch. Sequentially consistent: see `Reducer::tick`'s loads of `joiner`.
        hot.epoch.store(tick, Ordering::SeqCst);
        for (c, core) in hot.cores.iter().enumerate() {
            // Read `seen` before anything else of this core: a topic may be dropped from the watch
            // list only if the core had moved past its epoch *before* we read its slot.
            let seen = core.hdr.seen.load(Ordering::Acquire);
            if seen != self.last_seen[c] {
                self.last_seen[c] = seen;
                self.idle[c] = 0;
            } else {
                self.idle[c] = self.idle[c].saturating_add(1);
            }
            // A core that has not moved for a while (an idle worker, a dropped shard): its last
            // stores left its store buffer long ago, so re-read what it watches only every 16th
            // tick, and on every `sync`. (Never is not an option: nothing *orders* those stores
            // before us. Dropping the list when the core is released looked tempting; the loom
            // model found a new owner in the same epoch that relies on it.)
            let read = full || self.idle[c] < 4 || tick.is_multiple_of(16);
            let mut watch = std::mem::take(&mut self.watch[c]);
            if read {
                watch.retain(|&(id, e)| {
                    self.list(tick, id);
                    seen <= widen(tick, e)
                });
            }
            // A full ring: the core skipped pushes for this epoch, so every topic is re-read until
            // the core has moved past it (like the watch list, for all topics at once).
            let o = core.hdr.overflows.load(Ordering::Acquire);
            if o != self.overflow_seen[c] {
                self.overflow_seen[c] = o;
                self.rescan_until[c] = tick;
            }
            if self.rescan_until[c] != 0 && read {
                if seen > self.rescan_until[c] {
                    self.rescan_until[c] = 0;
                }
                self.rescans += 1;
                for id in 0..high_water {
                    self.list(tick, id);
                }
            }
            core.ring.drain(|v| {
                let (id, e) = (v as u32, (v >> 32) as u32);
                self.list(tick, id);
                if seen <= widen(tick, e) {
                    watch.push((id, e));
                }
            });
            watch.sort_unstable();
            watch.dedup();
            self.watch[c] = watch;
        }
        let sh = &hot.shared;
        for (w, word) in sh.summary.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut s = word.swap(0, Ordering::SeqCst);
            while s != 0 {
                let i = w * 64 + s.trailing_zeros() as usize;
                s &= s - 1;
                let mut b = sh.bits[i].swap(0, Ordering::SeqCst);
                while b != 0 {
                    let id = (i * 64) as u32 + b.trailing_zeros();
                    b &= b - 1;
                    self.list(tick, id);
                }
            }
        }
    }

    /// How many `(topic, core)` pairs the watch lists hold.
    pub(crate) fn watching(&self) -> usize {
        self.watch.iter().map(Vec::len).sum()
    }
}

/// The sum of every core's count for `id`, read now.
#[inline]
pub(crate) fn sum(hot: &Hot, id: u32) -> i64 {
    let mut s = hot.shared.count(id);
    for c in hot.cores.iter() {
        s = s.wrapping_add(c.count(id));
    }
    // Only the wrapped sum is meaningful; a negative one (more leaves than joins, which only
    // `Shard::add` misuse can cause) reads as zero.
    i64::from(s as i32).max(0)
}

/// One topic whose local count changed this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) id: u32,
    pub(crate) count: u64,
}

/// What one tick did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TickReport {
    pub(crate) listed: usize,
    pub(crate) changed: usize,
    pub(crate) retiring: usize,
    pub(crate) freed: usize,
    pub(crate) revived: usize,
}

/// The reducer's bookkeeping for one topic.
#[derive(Debug, Default, Clone, Copy)]
struct TopicState {
    /// This node's count as of the last tick.
    local: u64,
    /// The cluster-wide count as of the last tick (what retirement looks at).
    cluster: u64,
    /// The tick at which its cluster count last became zero (0: not zero).
    zero_at: u64,
}

pub(crate) struct Reducer {
    tick: u64,
    collector: Collector,
    /// Per topic, in one place (one cache miss per changed topic, not three).
    state: Vec<TopicState>,
    /// Topics that became zero, oldest first: `(id, tick, when)`.
    zeros: VecDeque<(u32, u64, Instant)>,
    /// Topics in phase one of retirement: `(id, generation set by phase one, its tick)`.
    dying: VecDeque<(u32, u32, u64)>,
    retire_after: Duration,
    /// Topics to re-sum next tick (a straggler revived them).
    recheck: Vec<u32>,
    /// Topics whose local count changed this tick, with their new local counts.
    pub(crate) changes: Vec<Change>,
    /// Ids interned since the last tick.
    pub(crate) new_ids: Vec<u32>,
    /// Ids freed by retirement this tick.
    pub(crate) freed: Vec<u32>,
    /// Sum of all local counts.
    pub(crate) total: u64,
}

impl Reducer {
    pub(crate) fn new(hot: &Hot, retire_after: Duration) -> Reducer {
        let cap = hot.capacity();
        Reducer {
            tick: hot.epoch.load(Ordering::Relaxed),
            collector: Collector::new(hot.cores.len(), cap),
            state: vec![TopicState::default(); cap],
            zeros: VecDeque::new(),
            dying: VecDeque::new(),
            retire_after,
            recheck: Vec::new(),
            changes: Vec::new(),
            new_ids: Vec::new(),
            freed: Vec::new(),
            total: 0,
        }
    }

    pub(crate) fn tick_number(&self) -> u64 {
        self.tick
    }

    pub(crate) fn rescans(&self) -> u64 {
        self.collector.rescans
    }

    pub(crate) fn watching(&self) -> usize {
        self.collector.watching()
    }

    /// This node's count of `id` as of the last tick.
    pub(crate) fn local(&self, id: u32) -> u64 {
        self.state[id as usize].local
    }

    /// Starts a tick at time `now`: lists new ids in `new_ids` (each a retirement candidate
    /// until its cluster count is set) and the topics whose local count changed in `changes`.
    /// `full`: an explicit `sync`, which re-reads every watched topic.
    pub(crate) fn sum(
        &mut self,
        hot: &Hot,
        topics: &Topics,
        now: Instant,
        full: bool,
    ) -> TickReport {
        self.tick += 1;
        let tick = self.tick;
        let mut rep = TickReport::default();
        self.changes.clear();
        self.new_ids.clear();
        self.freed.clear();

        topics.take_new(&mut self.new_ids);
        for &id in &self.new_ids {
            self.state[id as usize].cluster = 0;
            self.state[id as usize].zero_at = tick;
            self.zeros.push_back((id, tick, now));
        }

        self.collector.collect(hot, tick, topics.high_water(), full);
        for id in self.recheck.drain(..) {
            self.collector.list(tick, id);
        }
        rep.listed = self.collector.touched.len();
        for &id in &self.collector.touched {
            let new = sum(hot, id) as u64;
            let old = std::mem::replace(&mut self.state[id as usize].local, new);
            if new != old {
                self.total = self.total.wrapping_add(new).wrapping_sub(old);
                self.changes.push(Change { id, count: new });
            }
        }
        rep.changed = self.changes.len();
        rep
    }

    /// Records `id`'s cluster-wide count (local plus peers), for retirement.
    pub(crate) fn set_cluster(&mut self, id: u32, count: u64, now: Instant) {
        let i = id as usize;
        let old = std::mem::replace(&mut self.state[i].cluster, count);
        if count != 0 {
            self.state[i].zero_at = 0;
        } else if old != 0 {
            self.state[i].zero_at = self.tick;
            self.zeros.push_back((id, self.tick, now));
        }
    }

    /// Ends a tick: retirement. `remote(id)`: the peers' count of `id` now.
    pub(crate) fn retire(
        &mut self,
        hot: &Hot,
        topics: &Topics,
        now: Instant,
        remote: impl Fn(u32) -> u64,
        rep: &mut TickReport,
    ) {
        let tick = self.tick;
        // Phase two for topics whose phase one every core that can join has moved past. A core
        // nobody can join through (no handle bound to it) cannot hold a straggler; one that gets
        // a handle later re-reads the epoch with an RMW when it binds (sequentially consistent
        // with our epoch store and these loads, so one of the two sides sees the other).
        let mut quiet = u64::MAX;
        for core in hot.cores.iter() {
            if core.hdr.joiner.load(Ordering::SeqCst) != 0 {
                quiet = quiet.min(core.hdr.seen.load(Ordering::Acquire));
            }
        }
        while let Some(&(id, generation, t1)) = self.dying.front() {
            if quiet <= t1 {
                break;
            }
            self.dying.pop_front();
            let s = sum(hot, id) as u64;
            let r = remote(id);
            match topics.finish_retire(id, generation, s == 0 && r == 0) {
                Retired::Superseded => {}
                Retired::Freed => {
                    rep.freed += 1;
                    self.state[id as usize].zero_at = 0;
                    self.freed.push(id);
                }
                Retired::Revived => {
                    rep.revived += 1;
                    if s != self.state[id as usize].local {
                        // A straggler's join: the next tick counts it like any change.
                        self.recheck.push(id);
                    } else if s + r == 0 {
                        // Revived by a lookup: a candidate again.
                        self.state[id as usize].zero_at = tick;
                        self.zeros.push_back((id, tick, now));
                    }
                }
            }
        }

        // Phase one for topics whose cluster count stayed zero for `retire_after`.
        while let Some(&(id, at, when)) = self.zeros.front() {
            if now.saturating_duration_since(when) < self.retire_after {
                break;
            }
            self.zeros.pop_front();
            if self.state[id as usize].zero_at != at || self.state[id as usize].cluster != 0 {
                continue; // changed since
            }
            self.state[id as usize].zero_at = 0;
            if let Some(generation) = topics.begin_retire(id, hot) {
                self.dying.push_back((id, generation, tick));
            }
        }
        rep.retiring = self.dying.len();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn widen_inverts_truncation() {
        for now in [5u64, 1 << 32, (1 << 33) + 7, u64::MAX / 2] {
            for back in [0u64, 1, 1000, (1 << 31) - 1] {
                let Some(e) = now.checked_sub(back) else {
                    continue;
                };
                assert_eq!(widen(now, e as u32), e);
            }
        }
    }
}

/// Model checks of the dirty tracking: run with
/// `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// The reducer's view: per-topic sums as of its last tick.
    struct Mini {
        c: Collector,
        tick: u64,
        local: Vec<i64>,
    }

    impl Mini {
        fn new(hot: &Hot) -> Mini {
            Mini {
                c: Collector::new(hot.cores.len(), hot.capacity()),
                tick: hot.epoch.load(Ordering::Relaxed),
                local: vec![0; hot.capacity()],
            }
        }
        fn tick(&mut self, hot: &Hot) {
            self.tick += 1;
            self.c.collect(hot, self.tick, hot.capacity() as u32, false);
            for &id in &self.c.touched {
                self.local[id as usize] = sum(hot, id);
            }
        }
    }

    /// A worker's ops as `(topic, +1/-1)`; the owner's path exactly as `Shard::join` and
    /// `Presence::drop` run it.
    fn work(hot: &Hot, ops: &[(u32, i32)]) {
        let core = &hot.cores[0];
        // Bound like a shard's owner thread, and released at the end like a dropped shard.
        core.hdr.bound.store(1, Ordering::SeqCst);
        hot.epoch.fetch_add(0, Ordering::SeqCst);
        for &(id, d) in ops {
            let e = core.observe(&hot.epoch);
            core.apply(e, id, d as u32, 0);
        }
        core.hdr.bound.store(0, Ordering::Release);
    }

    fn check(ring: usize, ops: &'static [(u32, i32)], concurrent_ticks: usize) {
        loom::model(move || {
            let hot = Arc::new(Hot::new(1, 3, ring));
            let w = {
                let hot = hot.clone();
                loom::thread::spawn(move || work(&hot, ops))
            };
            let mut r = Mini::new(&hot);
            for _ in 0..concurrent_ticks {
                r.tick(&hot);
            }
            w.join().unwrap();
            // Everything the worker did happened before this tick: it must be exact now.
            r.tick(&hot);
            let mut truth = [0i64; 3];
            for &(id, d) in ops {
                truth[id as usize] += i64::from(d);
            }
            assert_eq!(&r.local[..], &truth[..], "a change was missed");
        });
    }

    #[test]
    fn loom_same_topic_twice_in_one_epoch_is_never_lost() {
        // The classic trap: the second join skips the push because the topic was already pushed
        // this epoch, while the reducer drains and reads concurrently.
        check(4, &[(1, 1), (1, 1)], 2);
    }

    #[test]
    fn loom_join_leave_join_across_ticks() {
        check(4, &[(0, 1), (1, 1), (0, -1), (1, 1)], 2);
    }

    #[test]
    fn loom_a_core_released_and_bound_again_loses_nothing() {
        // An owner releases the core (its watch list may then be dropped) and a new owner binds
        // it, possibly in the same epoch, and changes the same topic.
        loom::model(|| {
            let hot = Arc::new(Hot::new(1, 2, 4));
            let w = {
                let hot = hot.clone();
                loom::thread::spawn(move || {
                    work(&hot, &[(1, 1)]);
                    work(&hot, &[(1, 1)]);
                })
            };
            let mut r = Mini::new(&hot);
            r.tick(&hot);
            r.tick(&hot);
            w.join().unwrap();
            r.tick(&hot);
            assert_eq!(r.local[1], 2, "a change was missed");
        });
    }

    #[test]
    fn loom_ring_overflow_rescans() {
        // A ring of 2 entries and 3 topics: the third push fails and asks for a rescan.
        check(2, &[(0, 1), (1, 1), (2, 1), (2, 1)], 1);
    }
}
