//! All the hot path's memory and all its unsafe code: the per-core counter slots ([`Core`]), the
//! shared core every thread may write ([`SharedCore`]), the generations of topic ids, the owner
//! of that memory ([`HotBox`]), the count a presence holds in it ([`Hold`]), and thread ids.
//!
//! Everything here takes a topic as `(id, generation)`, never a `Topic`: the topic table
//! (`topic.rs`) and the shards (`shard.rs`) build on this module, and it knows neither.
//!
//! # Slots
//!
//! Every core (one per shard) owns a slot per topic: a 64-bit word whose low half is the core's
//! running count for that topic (wrapping; only the sum over cores means anything) and whose high
//! half is the epoch in which the core last reported that topic to the reducer. Only the thread the
//! core is *bound* to writes the core, with plain relaxed loads and stores: no lock, no locked
//! instruction, no line another core writes. The header (binding, epoch bookkeeping) is padded.
//!
//! # Dirty tracking
//!
//! The reducer bumps a global epoch every tick. On its first change to a topic in an epoch, a core
//! pushes `(topic, epoch)` onto its own SPSC ring (release); later changes in the same epoch only
//! store the slot. When a core first sees a new epoch it publishes it (`seen`, release). The reducer
//! drains the rings and keeps re-reading a drained topic until the core has published a later
//! epoch than the one the topic was pushed in — at that point every store of that epoch is visible
//! to it, and the next change pushes again. No change is ever lost for good: see `Collector` in
//! `reducer.rs`, and its loom models (`reducer/loom_tests.rs`), which model-check it.
//!
//! # Parking
//!
//! Topic retirement waits for every core that can join to publish an epoch newer than the
//! retirement's phase one; a worker blocked in its event loop publishes nothing. So a worker parks
//! its shard before it blocks (`Shard::park`), an extended quiescent state as in RCU: the core
//! publishes its epoch, raises `parked` (sequentially consistent), and forgets its local epoch so
//! that its next join or leave takes the cold path of [`Core::observe`], which lowers `parked`
//! (sequentially consistent) and then re-reads the epoch with a sequentially consistent load
//! before any generation check. The reducer skips parked cores when it decides whether phase two
//! may run; `reducer.rs` (Retirement) has the argument, `reducer/loom_tests.rs` the loom models.
//!
//! # Threads
//!
//! A core binds to the first thread that writes through it (the binding itself is in `shard.rs`);
//! only that thread writes it, and only that thread unbinds it again (with one exception, also in
//! `shard.rs`: a core whose owner can provably no longer write it).
//!
//! A [`Hold`] dropped on the thread its core is bound to decrements that core. Dropped on another
//! thread that has a *home* core in the same engine (the implicit thread shard of
//! `Engine::join`, see [`set_home`]), it decrements the home core instead: a count is a sum over
//! cores, so a presence need not leave where it joined. Anywhere else it decrements the shared
//! core with atomic read-modify-writes: slower, still exact.
//!
//! What a leave on another core does to the invariants:
//!
//! - *Counts*: a core's slot may wrap below zero; only the sum over cores is read, as before
//!   (the shared core's slots always could).
//! - *Retirement*: phase two frees an id only if its re-sum is zero. Every join that counted
//!   with the old generation is visible to that re-sum (`reducer.rs`, Retirement: its core moved
//!   on or parked, or has no handle left). A leave is a `-1` ordered after its own join, so
//!   whatever subset of leaves the re-sum sees, it reads at least the number of presences still
//!   alive: a zero means none is. A leave on another core changes nothing in this argument,
//!   which never asked where a leave happened.
//! - *Live presences*: every core has two counters, `live` (presences made on it minus those of
//!   them dropped on it) and `foreign` (minus the presences made elsewhere and dropped on it). The
//!   engine's memory is freed when the sum of all of them and the shared core's is zero (see
//!   [`HotBox`]); a core is handed over from a thread that can no longer join through it only
//!   when its own `live` is zero, which then means no presence made on it is alive, so that
//!   thread has nothing left to write there (a home core is never handed over: it is unbound
//!   by its own thread before it is returned).

use std::cell::Cell;
use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::core::ring::Ring;
use crate::core::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering, zeroed_u32, zeroed_u64};

/// The core index a [`Hold`] uses when it counted through the shared core.
pub(crate) const SHARED: u32 = u32::MAX;
/// The core index of a [`Hold`] that counted nothing (its topic handle was stale).
pub(crate) const INERT: u32 = u32::MAX - 1;
/// `local_e` of a core that is parked or never observed an epoch (epochs start at 1): the next
/// [`Core::observe`] takes its cold path and unparks.
const PARKED: u64 = 0;

// ---------------------------------------------------------------------------------------------
// Thread identity

static NEXT_TID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Numbers the [`Hot`]s of the process (never reused, never 0), so a thread's home survives no
/// engine: an address could be reused, a serial cannot.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
    /// The calling thread's home core: `(serial of its Hot, core index)`, `(0, 0)` for none.
    static HOME: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
}

/// A number unique to the calling thread for the life of the process (never reused, never 0).
#[inline]
pub(crate) fn tid() -> u64 {
    TID.with(|c| {
        let v = c.get();
        if v != 0 {
            v
        } else {
            let v = NEXT_TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.set(v);
            v
        }
    })
}

/// Makes core `core` of `hot` the calling thread's home: presences of `hot` dropped on this
/// thread leave there, and `Engine::join` joins there without a lookup. The thread must be bound
/// to the core as its thread shard (`shard.rs`); [`home`] re-checks the binding at every use.
pub(crate) fn set_home(hot: &Hot, core: u32) {
    HOME.with(|h| h.set((hot.serial, core)));
}

/// Forgets the calling thread's home if it is in `hot`.
pub(crate) fn clear_home(hot: &Hot) {
    let _ = HOME.try_with(|h| {
        if h.get().0 == hot.serial {
            h.set((0, 0));
        }
    });
}

/// The calling thread's home core in `hot`, if it has one and is still bound to it.
#[inline]
pub(crate) fn home(hot: &Hot, me: u64) -> Option<usize> {
    let (serial, core) = HOME.try_with(Cell::get).ok()?;
    if serial != hot.serial {
        return None;
    }
    let c = hot.cores.get(core as usize)?;
    (c.hdr.bound.load(Ordering::Relaxed) == me).then_some(core as usize)
}

// ---------------------------------------------------------------------------------------------
// Cores

/// A core's header: written by its owner thread, except `bound` (set by CAS when unbound).
#[derive(Default)]
pub(crate) struct Header {
    /// `tid()` of the thread that may write this core, 0 when unbound.
    pub(crate) bound: AtomicU64,
    /// Owner-only: the last epoch this core observed; [`PARKED`] after [`Core::park`].
    local_e: AtomicU64,
    /// The last epoch this core observed, published with release for the reducer.
    pub(crate) seen: AtomicU64,
    /// Owner-only writes: presences created here minus those of them dropped here (wrapping).
    pub(crate) live: AtomicU64,
    /// Owner-only writes: minus the presences created on other cores and dropped here, as the
    /// home core of the dropping thread (wrapping).
    pub(crate) foreign: AtomicU64,
    /// `tid()` of the thread that may *join* through this core (a shard handle or an implicit
    /// thread shard bound there), 0 if none. Topic retirement waits only for these cores.
    pub(crate) joiner: AtomicU64,
    /// Bumped (release) whenever a ring push failed; the reducer then rescans every topic until
    /// this core has moved past the epoch.
    pub(crate) overflows: AtomicU64,
    /// Set (sequentially consistent) by [`Core::park`], cleared by the owner's next
    /// [`Core::observe`] before it checks any generation: while set, retirement does not wait for
    /// this core. Written by the owner only; read by the reducer.
    pub(crate) parked: AtomicBool,
}

pub(crate) struct Core {
    pub(crate) hdr: CachePadded<Header>,
    pub(crate) slots: Box<[AtomicU64]>,
    pub(crate) ring: Ring,
}

impl Core {
    fn new(capacity: usize, ring: usize) -> Core {
        Core {
            hdr: CachePadded::new(Header::default()),
            slots: zeroed_u64(capacity),
            ring: Ring::new(ring),
        }
    }

    /// Owner only: loads the global epoch and, when it moved, publishes that this core has seen it.
    /// Returns the epoch to mark changes with (after a park: the one the handshake read).
    ///
    /// Acquire: whatever the reducer did before publishing the epoch (bumping topic generations)
    /// is visible to this core's later loads.
    #[inline]
    pub(crate) fn observe(&self, epoch: &AtomicU64) -> u64 {
        let e = epoch.load(Ordering::Acquire);
        if e != self.hdr.local_e.load(Ordering::Relaxed) {
            return self.new_epoch(epoch, e);
        }
        e
    }

    #[cold]
    #[inline(never)]
    fn new_epoch(&self, epoch: &AtomicU64, mut e: u64) -> u64 {
        if self.hdr.local_e.load(Ordering::Relaxed) == PARKED {
            // Unpark: the handshake with `reducer::quiet`. Both sequentially consistent, so in
            // their single total order either the reducer's load of `parked` comes after this
            // store (it sees the core unparked and waits for `seen` as usual), or it comes before,
            // and then so does its earlier store of the epoch: the load below returns that epoch
            // or a later one and, acquiring it, every generation bumped before it. An acquire load
            // would not do (it may return an older epoch): the loom models in
            // `reducer/loom_tests.rs` fail with one.
            self.hdr.parked.store(false, Ordering::SeqCst);
            e = epoch.load(Ordering::SeqCst);
        }
        self.hdr.local_e.store(e, Ordering::Relaxed);
        // Release: every slot store made in earlier epochs is visible to a reducer that sees `e`.
        self.hdr.seen.store(e, Ordering::Release);
        e
    }

    /// Owner only: marks the core quiescent until its next [`Core::observe`] (see the module docs,
    /// Parking). A few stores, one of them sequentially consistent.
    pub(crate) fn park(&self, epoch: &AtomicU64) {
        let e = epoch.load(Ordering::Acquire);
        // The next observe takes the cold path and unparks before it checks a generation.
        self.hdr.local_e.store(PARKED, Ordering::Relaxed);
        // Like `new_epoch`: this core has seen `e`, and its next change carries a newer mark than
        // any made before (the unpark re-reads an epoch at least `e`), so the collector may drop
        // what it watches for older epochs. Release: every slot store so far is visible with it.
        self.hdr.seen.store(e, Ordering::Release);
        // Sequentially consistent (a release too): a reducer that reads `true` sees every slot
        // store made before it, and orders its own epoch store before the unpark's store above.
        self.hdr.parked.store(true, Ordering::SeqCst);
    }

    /// Owner only: adds `delta` to topic `id` in epoch `e` (from [`Core::observe`]), pushes the
    /// topic to the ring on its first change in `e`, and adds `live` to the live-presence count.
    #[inline]
    pub(crate) fn apply(&self, e: u64, id: u32, delta: u32, live: u64) {
        self.apply_to(e, id, delta, live, &self.hdr.live);
    }

    /// Owner only: a leave (−1 to topic `id` in epoch `e`) of a presence made on another core.
    #[inline]
    pub(crate) fn leave_foreign(&self, e: u64, id: u32) {
        self.apply_to(
            e,
            id,
            1u32.wrapping_neg(),
            1u64.wrapping_neg(),
            &self.hdr.foreign,
        );
    }

    #[inline]
    fn apply_to(&self, e: u64, id: u32, delta: u32, live: u64, l: &AtomicU64) {
        let slot = &self.slots[id as usize];
        let v = slot.load(Ordering::Relaxed);
        let count = (v as u32).wrapping_add(delta) as u64;
        let mark = e as u32;
        let old_mark = (v >> 32) as u32;
        slot.store(count | (u64::from(mark) << 32), Ordering::Relaxed);
        if old_mark != mark {
            self.report(id, e);
        }
        // Release, and last: once the engine's teardown sees this, we no longer touch the core.
        l.store(
            l.load(Ordering::Relaxed).wrapping_add(live),
            Ordering::Release,
        );
    }

    #[cold]
    #[inline(never)]
    fn report(&self, id: u32, e: u64) {
        if !self.ring.push(u64::from(id) | ((e & 0xffff_ffff) << 32)) {
            // The ring is full: ask the reducer to rescan every topic of this core until it has
            // moved past this epoch. The mark stays set, so later changes stay on the fast path.
            let o = &self.hdr.overflows;
            o.store(o.load(Ordering::Relaxed) + 1, Ordering::Release);
        }
    }

    /// The core's count for `id` (any thread; relaxed).
    #[inline]
    pub(crate) fn count(&self, id: u32) -> u32 {
        self.slots[id as usize].load(Ordering::Relaxed) as u32
    }
}

/// The core every thread may write, with read-modify-writes, plus a two-level dirty bitmap.
///
/// Each word holds a topic's generation (high half) and its count (low half, wrapping). A join
/// adds only if the generation still matches its handle, in the same compare-and-swap, so a join
/// through a stale handle can never land in a reused id, not even for a moment.
pub(crate) struct SharedCore {
    pub(crate) counts: Box<[AtomicU64]>,
    /// One bit per topic the shared core ever counted (1M topics: 128 KiB, cache-resident),
    /// so the reducer reads a topic's shared count only if it can be nonzero.
    used: Box<[AtomicU64]>,
    pub(crate) bits: Box<[AtomicU64]>,
    pub(crate) summary: Box<[AtomicU64]>,
    pub(crate) live: AtomicU64,
    pub(crate) ops: AtomicU64,
}

impl SharedCore {
    fn new(capacity: usize) -> SharedCore {
        let words = capacity.div_ceil(64);
        SharedCore {
            counts: zeroed_u64(capacity),
            used: zeroed_u64(words),
            bits: zeroed_u64(words),
            summary: zeroed_u64(words.div_ceil(64)),
            live: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        }
    }

    /// Applies `f` to the word of `id` with a CAS loop; `None` from `f` gives up.
    fn update(&self, id: u32, f: impl Fn(u64) -> Option<u64>) -> bool {
        let i = id as usize;
        // Before the count changes (sequentially consistent, like the reducer's load of it).
        self.used[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
        let w = &self.counts[i];
        let mut v = w.load(Ordering::SeqCst);
        loop {
            let Some(n) = f(v) else { return false };
            match w.compare_exchange_weak(v, n, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(x) => v = x,
            }
        }
    }

    /// Marks `id` dirty. The count is written before the dirty bits, and the reducer clears the
    /// bits before it reads the count (all sequentially consistent RMWs), so a change is always
    /// either seen now or flagged for the next tick.
    fn mark(&self, id: u32) {
        let i = id as usize;
        self.bits[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
        self.summary[i / 4096].fetch_or(1 << ((i / 64) % 64), Ordering::SeqCst);
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// +1 to `id` if its generation is still `generation`.
    pub(crate) fn join(&self, id: u32, generation: u32) -> bool {
        let ok = self.update(id, |v| {
            ((v >> 32) as u32 == generation)
                .then(|| (v & !0xffff_ffff) | u64::from((v as u32).wrapping_add(1)))
        });
        if ok {
            self.mark(id);
        }
        ok
    }

    /// Adds `delta` (wrapping) to `id`'s count, whatever its generation.
    pub(crate) fn add(&self, id: u32, delta: u32) {
        self.update(id, |v| {
            Some((v & !0xffff_ffff) | u64::from((v as u32).wrapping_add(delta)))
        });
        self.mark(id);
    }

    /// Sets `id`'s generation (retirement), keeping its count.
    pub(crate) fn set_generation(&self, id: u32, generation: u32) {
        self.update(id, |v| {
            Some((u64::from(generation) << 32) | (v & 0xffff_ffff))
        });
    }

    /// The count of `id` (low half).
    pub(crate) fn count(&self, id: u32) -> u32 {
        let i = id as usize;
        if self.used[i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) == 0 {
            return 0;
        }
        self.counts[i].load(Ordering::SeqCst) as u32
    }
}

/// Everything the hot path touches. Owned by a [`HotBox`]; a [`Hold`] points into it.
pub(crate) struct Hot {
    /// Unique to this `Hot` in the process: what a thread's home refers to.
    serial: u64,
    /// The reducer's tick number; see the module docs.
    pub(crate) epoch: CachePadded<AtomicU64>,
    /// The current generation of every topic id; a topic handle with another one is stale.
    pub(crate) gens: Box<[AtomicU32]>,
    pub(crate) cores: Box<[Core]>,
    pub(crate) shared: SharedCore,
    pub(crate) stale_joins: AtomicU64,
}

impl Hot {
    pub(crate) fn new(cores: usize, capacity: usize, ring: usize) -> Hot {
        Hot {
            serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            epoch: CachePadded::new(AtomicU64::new(1)),
            gens: zeroed_u32(capacity),
            cores: (0..cores).map(|_| Core::new(capacity, ring)).collect(),
            shared: SharedCore::new(capacity),
            stale_joins: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.gens.len()
    }

    /// Retirement, phase one, on the hot side: bumps `id`'s generation, so that every handle made
    /// earlier is stale, in `gens` (read by the owner path after its epoch observation) and in
    /// the shared core (checked inside its CAS). Returns the new generation. Caller: the reducer,
    /// under the topic table's lock (see `Topics::begin_retire`).
    pub(crate) fn bump_generation(&self, id: u32) -> u32 {
        let g = self.gens[id as usize]
            .load(Ordering::SeqCst)
            .wrapping_add(1);
        self.gens[id as usize].store(g, Ordering::SeqCst);
        self.shared.set_generation(id, g);
        g
    }

    /// Presences created minus presences dropped, over every core (exact once writers are quiet).
    pub(crate) fn live(&self) -> u64 {
        let mut l = self.shared.live.load(Ordering::SeqCst);
        for c in self.cores.iter() {
            l = l.wrapping_add(c.hdr.live.load(Ordering::Acquire));
            l = l.wrapping_add(c.hdr.foreign.load(Ordering::Acquire));
        }
        l
    }

    /// Joins topic `id` of generation `generation` through the shared core (the generation is
    /// checked in the same CAS as the add). Returns the core index to hold ([`SHARED`]), or
    /// `None` (and counts nothing) when the handle is stale.
    pub(crate) fn join_shared(&self, id: u32, generation: u32) -> Option<u32> {
        if (id as usize) >= self.gens.len() || !self.shared.join(id, generation) {
            return None;
        }
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        Some(SHARED)
    }

    /// Joins topic `id` of generation `generation` through core `c`, which the calling thread is
    /// bound to. Returns false (and counts nothing) when the handle is stale.
    #[inline]
    pub(crate) fn join_owned(&self, c: usize, id: u32, generation: u32) -> bool {
        let core = &self.cores[c];
        // Observe the epoch *before* checking the generation: see `reducer.rs`, Retirement.
        let e = core.observe(&self.epoch);
        match self.gens.get(id as usize) {
            Some(g) if g.load(Ordering::Relaxed) == generation => {
                core.apply(e, id, 1, 1);
                true
            }
            _ => false,
        }
    }
}

/// Owns the [`Hot`] allocation. Dropping it frees the memory only when no [`Hold`] is left
/// (every hold's last access to it is the release store that ends its count); otherwise the
/// memory is leaked, so a presence that outlives its engine stays safe to drop.
pub(crate) struct HotBox {
    ptr: NonNull<Hot>,
}

// SAFETY:
// - `Hot` holds only atomics and boxes of atomics, which are `Send + Sync`; `HotBox` is a unique
//   owner of it like a `Box<Hot>`.
unsafe impl Send for HotBox {}
// SAFETY: as above; shared access is through `&Hot`, which is `Sync`.
unsafe impl Sync for HotBox {}

impl HotBox {
    pub(crate) fn new(hot: Hot) -> HotBox {
        HotBox {
            ptr: NonNull::from(Box::leak(Box::new(hot))),
        }
    }
}

impl std::ops::Deref for HotBox {
    type Target = Hot;
    fn deref(&self) -> &Hot {
        // SAFETY: `ptr` came from `Box::leak` and is freed only in `drop`, with `&mut self`.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for HotBox {
    fn drop(&mut self) {
        if self.live() == 0 {
            // SAFETY:
            // - `ptr` came from `Box::leak(Box::new(..))` and is freed only here, once.
            // - No `Hold` (the inside of a `Presence`) is left: each one added 1 to `live` before
            //   it was handed out, and subtracts 1 with a release store (or a SeqCst RMW) as its
            //   very last access to the memory; we read every counter with acquire, so all those
            //   accesses happened before.
            // - No `Shard` or engine handle is left: they hold the `Arc` whose drop runs this.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Holds

/// One unit counted in one topic of a [`Hot`]: the inside of a `Presence`. Dropping it takes the
/// unit back (−1), on any thread.
///
/// Dropped on the thread its core is bound to, or on a thread with a home core in the same
/// engine, the leave is as cheap as the join; anywhere else it goes through the shared core
/// (atomic read-modify-write), and the sum stays exact either way. A hold may outlive its shard
/// and even its engine (see [`HotBox`]).
pub(crate) struct Hold {
    hot: NonNull<Hot>,
    id: u32,
    /// The core it counted on, [`SHARED`], or [`INERT`].
    core: u32,
    generation: u32,
}

// SAFETY:
// - A `Hold` only reads and writes atomics in `Hot` (which is `Sync`), and `Hot` outlives every
//   hold (see `HotBox::drop`). Which core its drop writes is decided on the dropping thread, by
//   that thread's own identity, so moving it between threads is sound.
unsafe impl Send for Hold {}
// SAFETY: `&Hold` gives access to no state at all beyond its plain fields.
unsafe impl Sync for Hold {}

impl Hold {
    /// A hold of the unit just counted on core `core` (or [`SHARED`]) for topic `id` of
    /// generation `generation`; [`INERT`] for a join that counted nothing.
    #[inline]
    pub(crate) fn new(hot: &HotBox, id: u32, generation: u32, core: u32) -> Hold {
        Hold {
            hot: hot.ptr,
            id,
            core,
            generation,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// The core it counted on, [`SHARED`], or [`INERT`].
    #[cfg(test)]
    pub(crate) fn core(&self) -> u32 {
        self.core
    }

    /// False when the join found a stale handle and counted nothing.
    pub(crate) fn is_counted(&self) -> bool {
        self.core != INERT
    }

    /// Leaves on the dropping thread's home core, or through the shared core: dropped on a
    /// thread that does not own the hold's core, or made on the shared core. Nothing for an
    /// inert hold.
    #[inline(never)]
    fn drop_elsewhere(&self, hot: &Hot, me: u64) {
        if self.core == INERT {
            return;
        }
        if let Some(c) = home(hot, me) {
            let core = &hot.cores[c];
            let e = core.observe(&hot.epoch);
            core.leave_foreign(e, self.id);
            return;
        }
        hot.shared.add(self.id, 1u32.wrapping_neg());
        hot.shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Hold {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `Hot` is freed only once no hold is left (see `HotBox::drop`), and this hold
        // still counts until the release store at the end of `apply` / `fetch_sub`.
        let hot = unsafe { self.hot.as_ref() };
        let me = tid();
        // `SHARED` and `INERT` are out of range: only a hold made on a core gets here.
        if let Some(core) = hot.cores.get(self.core as usize)
            && core.hdr.bound.load(Ordering::Relaxed) == me
        {
            let e = core.observe(&hot.epoch);
            core.apply(e, self.id, 1u32.wrapping_neg(), 1u64.wrapping_neg());
            return;
        }
        self.drop_elsewhere(hot, me);
    }
}
