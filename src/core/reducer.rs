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
//! A topic whose count stayed zero for `retire_after` is retired in two phases. Phase one (at the
//! end of tick `t1`, after that tick's epoch store) bumps the id's generation: from then on, a join
//! through a handle made earlier fails. A join that checked the generation just before the bump
//! may still land: a *straggler*. Phase two, in a later tick `t2`, re-sums the topic: zero frees
//! the id for reuse, anything else revives the topic. It runs once [`quiet`], read after `t2`'s
//! epoch store, exceeds `t1`: when every core whose `joiner` is set is either
//!
//! - *moved on*: it published (`seen`, release) an epoch after `t1`. It loaded that epoch with
//!   acquire, and the reducer stored it after the bump; a core observes the epoch *before* it
//!   checks a generation, so its later joins fail. Its earlier joins are stored before `seen`, so
//!   the re-sum (after our acquire load of `seen`) sees them. Or
//! - *parked* ([`crate::Shard::park`]): our load of `parked` (SeqCst) reads `true`. The park's
//!   store of it (SeqCst, so a release) comes after every join the core made, so the re-sum sees
//!   them. Its next join or leave unparks first: it stores `parked = false` (SeqCst, `U`), loads
//!   the epoch (SeqCst, `L`), and only then checks a generation. In the single total order `S` of
//!   SeqCst operations, our epoch store `E` precedes our load `R` of `parked` (program order); `R`
//!   read `true`, so `U` comes after `R` (or `R` would read `U`'s value or a later one); so
//!   `E <S L`, and a SeqCst load cannot read a value older than a SeqCst store that precedes it in
//!   `S`: `L` returns `t2` or later and, acquiring it, sees the bump. The straggler's join fails.
//!
//! Cores with `joiner` 0 are skipped: nothing can join through them, and one that gets a handle
//! sets `joiner` (SeqCst) and then re-reads the epoch with an RMW, the same handshake with
//! `joiner` in place of `parked`. The loom models `loom_parked_*` (in `reducer/loom_tests.rs`)
//! check the parked case with the real [`quiet`], `Core::park` and `Core::observe`; weakening
//! either side of the handshake makes them fail.
//!
//! Bound: phase two runs in the first tick after `t1` at which every core that can join has
//! joined or left since `t1`'s epoch store, or is parked (a park before `t1` counts), or has no
//! handle any more. A worker that parks before it blocks never holds it up: an id is free for
//! reuse about `retire_after` plus three ticks after its topic's last leave. A worker that blocks
//! without parking holds up phase two (not the counts) until it joins or leaves again, or drops
//! its shard (the implicit shard of `Engine::join`: until its thread calls
//! `Engine::release_thread` or exits). Parking does not change counting: to the collector a
//! parked core is an idle one (see the staleness bound); the epoch a park publishes only lets it
//! stop watching the core's older topics sooner.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::hot::Hot;
use crate::core::sync::Ordering;
use crate::core::topic::{Retired, Topics};

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
    // Only the wrapped sum is meaningful; a negative one reads as zero.
    i64::from(s as i32).max(0)
}

/// The oldest epoch a core that may hold a straggling join has published (`u64::MAX` if none):
/// phase two may run for a retirement whose phase one ran in an earlier tick. Call it after this
/// tick's epoch store ([`Collector::collect`]); the argument is in the module docs, Retirement.
///
/// - A core nobody can join through (`joiner` 0) cannot hold a straggler; one that gets a handle
///   later re-reads the epoch with an RMW when it binds.
/// - A parked core holds none either: every join it made is ordered before its `parked` store,
///   which our load reads (so the re-sum sees them), and its next join unparks and re-reads the
///   epoch first (so it sees the new generation).
pub(crate) fn quiet(hot: &Hot) -> u64 {
    let mut quiet = u64::MAX;
    for core in hot.cores.iter() {
        let h = &core.hdr;
        // All three sequentially consistent or acquire: see `ShardPool::bind` in `shard.rs`
        // (`joiner`) and `Core::new_epoch` in `hot.rs` (`parked`) for the other side of each
        // handshake.
        if h.joiner.load(Ordering::SeqCst) != 0 && !h.parked.load(Ordering::SeqCst) {
            quiet = quiet.min(h.seen.load(Ordering::Acquire));
        }
    }
    quiet
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

/// The reducer's bookkeeping for one topic. All-zero is its initial state (count zero, not a
/// retirement candidate), so the table is allocated zeroed: see [`zeroed_state`].
#[derive(Debug, Default, Clone, Copy, zerocopy::FromZeros)]
struct TopicState {
    /// This node's count as of the last tick.
    local: u64,
    /// The cluster-wide count as of the last tick (what retirement looks at).
    cluster: u64,
    /// The tick at which its cluster count last became zero (0: not zero).
    zero_at: u64,
}

/// `n` initial (all-zero) [`TopicState`]s in zeroed memory, which the OS maps lazily: only the
/// pages of topics in use become resident. (`vec![TopicState::default(); n]` would write all
/// of it at start: 24 bytes a topic, 25 MB for the default `max_topics`.)
fn zeroed_state(n: usize) -> Vec<TopicState> {
    use zerocopy::FromZeros;
    TopicState::new_vec_zeroed(n).unwrap_or_else(|_| {
        let layout = std::alloc::Layout::array::<TopicState>(n).expect("capacity overflow");
        std::alloc::handle_alloc_error(layout)
    })
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
            state: zeroed_state(cap),
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
        // Phase two for topics whose phase one every core that can join has moved past (or is
        // parked): see the module docs, Retirement.
        let quiet = quiet(hot);
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

/// Model checks of the dirty tracking and of retirement's park rule: run with
/// `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests;
