//! The hot path: per-core counter slots, the [`Shard`] a worker writes through, and the
//! [`Presence`] guard that leaves on drop.
//!
//! # Layout
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
//! to it, and the next change pushes again. No change is ever lost for good: see
//! `Collector` in `reducer.rs`, and its `loom_tests`, which model-check it.
//!
//! # Parking
//!
//! Topic retirement waits for every core that can join to publish an epoch newer than the
//! retirement's phase one; a worker blocked in its event loop publishes nothing. So a worker parks
//! its shard before it blocks ([`Shard::park`]), an extended quiescent state as in RCU: the core
//! publishes its epoch, raises `parked` (sequentially consistent), and forgets its local epoch so
//! that its next join or leave takes the cold path of [`Core::observe`], which lowers `parked`
//! (sequentially consistent) and then re-reads the epoch with a sequentially consistent load
//! before any generation check. The reducer skips parked cores when it decides whether phase two
//! may run; `reducer.rs` (Retirement) has the argument and the loom model.
//!
//! # Threads
//!
//! A core binds to the first thread that writes through it. A [`Presence`] dropped on that thread
//! decrements the core directly; dropped anywhere else (or after its shard was returned) it
//! decrements a shared core with atomic read-modify-writes: slower, still exact.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use crossbeam_utils::CachePadded;

use crate::error::Error;
use crate::ring::Ring;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering, zeroed_u32, zeroed_u64};
use crate::topic::{Topic, Topics};

/// The core index a [`Presence`] uses when it counted through the shared core.
pub(crate) const SHARED: u32 = u32::MAX;
/// The core index of a [`Presence`] that counted nothing (its topic handle was stale).
const INERT: u32 = u32::MAX - 1;
/// `local_e` of a core that is parked or never observed an epoch (epochs start at 1): the next
/// [`Core::observe`] takes its cold path and unparks.
const PARKED: u64 = 0;

// ---------------------------------------------------------------------------------------------
// Thread identity

static NEXT_TID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
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
    /// Owner-only writes: presences created here minus presences dropped here (wrapping).
    pub(crate) live: AtomicU64,
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
            // would not do (it may return an older epoch); see the loom model in `reducer.rs`.
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
        let slot = &self.slots[id as usize];
        let v = slot.load(Ordering::Relaxed);
        let count = (v as u32).wrapping_add(delta) as u64;
        let mark = e as u32;
        let old_mark = (v >> 32) as u32;
        slot.store(count | (u64::from(mark) << 32), Ordering::Relaxed);
        if old_mark != mark {
            self.report(id, e);
        }
        let l = &self.hdr.live;
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

/// Everything the hot path touches. Owned by a [`HotBox`]; a [`Presence`] points into it.
pub(crate) struct Hot {
    /// The reducer's tick number; see the module docs.
    pub(crate) epoch: CachePadded<AtomicU64>,
    /// The current generation of every topic id; a [`Topic`] handle with another one is stale.
    pub(crate) gens: Box<[AtomicU32]>,
    pub(crate) cores: Box<[Core]>,
    pub(crate) shared: SharedCore,
    pub(crate) stale_joins: AtomicU64,
}

impl Hot {
    pub(crate) fn new(cores: usize, capacity: usize, ring: usize) -> Hot {
        Hot {
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
    /// under the topic table's lock (see [`Topics::begin_retire`]).
    pub(crate) fn bump_generation(&self, id: u32) -> u32 {
        let g = self.gens[id as usize]
            .load(Ordering::SeqCst)
            .wrapping_add(1);
        self.gens[id as usize].store(g, Ordering::SeqCst);
        self.shared.set_generation(id, g);
        g
    }

    /// Presences created minus presences dropped, over every core (exact once writers are quiet).
    fn live(&self) -> u64 {
        let mut l = self.shared.live.load(Ordering::SeqCst);
        for c in self.cores.iter() {
            l = l.wrapping_add(c.hdr.live.load(Ordering::Acquire));
        }
        l
    }

    /// Joins `topic` through the shared core (generation checked in the same CAS as the add).
    fn join_shared(&self, topic: Topic) -> Result<u32, Error> {
        let id = topic.id();
        if (id as usize) >= self.gens.len() || !self.shared.join(id, topic.generation()) {
            return Err(Error::StaleTopic { id });
        }
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        Ok(SHARED)
    }

    /// Joins `topic` through core `c`, which the calling thread is bound to.
    /// Returns false (and counts nothing) when the handle is stale.
    #[inline]
    pub(crate) fn join_owned(&self, c: usize, topic: Topic) -> bool {
        let core = &self.cores[c];
        // Observe the epoch *before* checking the generation: see `reducer::Retirement`.
        let e = core.observe(&self.epoch);
        match self.gens.get(topic.id() as usize) {
            Some(g) if g.load(Ordering::Relaxed) == topic.generation() => {
                core.apply(e, topic.id(), 1, 1);
                true
            }
            _ => false,
        }
    }
}

/// Owns the [`Hot`] allocation. Dropping it frees the memory only when no [`Presence`] is left
/// (every presence's last access to it is the release store that ends its count); otherwise the
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
            // - No `Presence` is left: each one added 1 to `live` before it was handed out, and
            //   subtracts 1 with a release store (or a SeqCst RMW) as its very last access to the
            //   memory; we read every counter with acquire, so all those accesses happened before.
            // - No `Shard` or engine handle is left: they hold the `Arc` whose drop runs this.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pool of shards and per-thread bindings

/// The write side of an engine: the hot memory, the free cores, and the topic table.
pub(crate) struct ShardPool {
    pub(crate) hot: HotBox,
    free: Mutex<Vec<u32>>,
    pub(crate) topics: Topics,
}

impl ShardPool {
    pub(crate) fn new(hot: HotBox, claimable: usize, topics: Topics) -> ShardPool {
        // Pop order: core 0 first.
        let free = (0..claimable as u32).rev().collect();
        ShardPool {
            hot,
            free: Mutex::new(free),
            topics,
        }
    }

    fn claim(&self) -> Option<u32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        // Prefer a core no thread is bound to.
        let tid = tid();
        let pos = free.iter().rposition(|&c| {
            let b = self.hot.cores[c as usize].hdr.bound.load(Ordering::Relaxed);
            b == 0 || b == tid
        });
        match pos {
            Some(p) => Some(free.remove(p)),
            None => free.pop(),
        }
    }

    fn give_back(&self, core: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(core);
    }

    pub(crate) fn free_shards(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Binds core `c` to the calling thread for joining, if no other thread is bound to it; true
    /// when the thread owns it now.
    ///
    /// The calling thread must hold the only handle that can join through `c` (a `Shard`, or its
    /// implicit thread shard): that is what lets it take over `joiner`.
    fn bind(self: &Arc<Self>, c: u32, thread_shard: bool) -> bool {
        let me = tid();
        let hdr = &self.hot.cores[c as usize].hdr;
        let b = hdr.bound.load(Ordering::SeqCst);
        if b != me {
            // An unbound core is free to take. So is one bound to a thread that can no longer
            // write it: we hold the only handle, and no presence made on it is alive (each one's
            // last write is the release store of `live`), so that thread has nothing left to write.
            let free = b == 0 || hdr.live.load(Ordering::Acquire) == 0;
            let won = free
                && hdr
                    .bound
                    .compare_exchange(b, me, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
            if !won {
                // Bound to another thread, which can no longer join through it (we hold the only
                // handle): retirement need not wait for it.
                hdr.joiner.store(0, Ordering::SeqCst);
                return false;
            }
        }
        hdr.joiner.store(me, Ordering::SeqCst);
        // Read the newest epoch with an RMW (sequentially consistent, like the reducer's store of
        // the epoch and its loads of `joiner`): either the reducer sees `joiner` above, or this
        // thread's later loads see every retirement published before (see the `reducer` docs).
        // Also when the core was still bound to this thread: `joiner` may have been 0 meanwhile
        // (the shard was dropped on another thread), and the acquire load in `observe` alone
        // could return an epoch older than a retirement that went ahead without us.
        self.hot.epoch.fetch_add(0, Ordering::SeqCst);
        if b == me {
            return true;
        }
        BINDINGS.with(|bs| {
            let mut bs = bs.borrow_mut();
            // Forget bindings to engines that are gone.
            bs.0.retain(|b| b.pool.strong_count() > 0);
            bs.0.push(Binding {
                pool: Arc::downgrade(self),
                core: c,
                thread_shard,
            })
        });
        true
    }

    /// Unbinds core `c` if the calling thread owns it.
    fn unbind(&self, c: u32) {
        let me = tid();
        let hdr = &self.hot.cores[c as usize].hdr;
        // Nobody joins through this core any more: its handle is being dropped.
        hdr.joiner.store(0, Ordering::SeqCst);
        if hdr.bound.load(Ordering::Relaxed) == me {
            // Release: this thread's writes to the core are visible to whoever binds it next.
            hdr.bound.store(0, Ordering::Release);
            let _ = BINDINGS.try_with(|bs| {
                if let Ok(mut bs) = bs.try_borrow_mut() {
                    bs.0.retain(|b| !(b.core == c && std::ptr::eq(b.pool.as_ptr(), self)));
                }
            });
        }
    }

    /// Gives back the calling thread's implicit shard (see [`ShardPool::join_here`]), if any.
    pub(crate) fn release_thread(&self) {
        let me = tid();
        let found = BINDINGS.with(|bs| {
            let mut bs = bs.borrow_mut();
            let pos =
                bs.0.iter()
                    .position(|b| b.thread_shard && std::ptr::eq(b.pool.as_ptr(), self));
            pos.map(|p| bs.0.swap_remove(p).core)
        });
        if let Some(c) = found {
            let hdr = &self.hot.cores[c as usize].hdr;
            hdr.joiner.store(0, Ordering::SeqCst);
            if hdr.bound.load(Ordering::Relaxed) == me {
                hdr.bound.store(0, Ordering::Release);
            }
            self.give_back(c);
        }
    }

    /// Joins through the calling thread's own shard, claiming one on first use; through the
    /// shared core when no shard is free.
    pub(crate) fn join_here(self: &Arc<Self>, topic: Topic) -> Result<Presence, Error> {
        let found = BINDINGS.with(|bs| {
            bs.borrow()
                .0
                .iter()
                .find(|b| b.thread_shard && std::ptr::eq(b.pool.as_ptr(), Arc::as_ptr(self)))
                .map(|b| b.core)
        });
        let core = match found {
            Some(c) => Some(c),
            None => match self.claim() {
                Some(c) if self.bind(c, true) => Some(c),
                Some(c) => {
                    self.give_back(c);
                    None
                }
                None => None,
            },
        };
        match core {
            Some(c) => {
                if !self.hot.join_owned(c as usize, topic) {
                    return Err(Error::StaleTopic { id: topic.id() });
                }
                Ok(Presence::new(&self.hot, topic, c))
            }
            None => {
                let c = self.hot.join_shared(topic)?;
                Ok(Presence::new(&self.hot, topic, c))
            }
        }
    }
}

struct Binding {
    pool: Weak<ShardPool>,
    core: u32,
    /// A shard claimed by [`ShardPool::join_here`] for this thread: given back at thread exit.
    thread_shard: bool,
}

struct Bindings(Vec<Binding>);

impl Drop for Bindings {
    fn drop(&mut self) {
        for b in self.0.drain(..) {
            if let Some(pool) = b.pool.upgrade() {
                let hdr = &pool.hot.cores[b.core as usize].hdr;
                if b.thread_shard {
                    hdr.joiner.store(0, Ordering::SeqCst);
                }
                if hdr.bound.load(Ordering::Relaxed) == tid() {
                    hdr.bound.store(0, Ordering::Release);
                }
                if b.thread_shard {
                    pool.give_back(b.core);
                }
            }
        }
    }
}

thread_local! {
    static BINDINGS: RefCell<Bindings> = const { RefCell::new(Bindings(Vec::new())) };
}

// ---------------------------------------------------------------------------------------------
// Shard

/// A claimed shard: the handle a worker thread counts through.
///
/// `Send` (claim it anywhere, move it into its worker) but not `Sync`. The shard binds to the
/// first thread that joins through it; use it on that thread. From another thread it still counts
/// exactly, through a slower shared path. Dropping it returns it to the engine's pool.
pub struct Shard {
    pool: Arc<ShardPool>,
    core: u32,
    /// The `tid()` this handle last saw owning its core: the fast path's only check.
    owner: u64,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.core).finish()
    }
}

impl Shard {
    pub(crate) fn claim(pool: &Arc<ShardPool>, shards: usize) -> Result<Shard, Error> {
        let core = pool.claim().ok_or(Error::NoFreeShard { shards })?;
        Ok(Shard {
            pool: pool.clone(),
            core,
            owner: 0,
            _not_sync: PhantomData,
        })
    }

    /// This shard's index (0-based).
    pub fn index(&self) -> usize {
        self.core as usize
    }

    /// Joins `topic`: +1, no allocation, no lock. The returned guard leaves on drop.
    ///
    /// A stale handle (its topic was retired) counts nothing and returns an inert guard; use
    /// [`Shard::try_join`] to be told.
    #[inline]
    pub fn join(&mut self, topic: Topic) -> Presence {
        // The fast path builds the guard in place: no `Result` (whose error holds strings) is
        // returned through memory, which cost a store-forwarding stall per join.
        if self.owner == tid() && self.pool.hot.join_owned(self.core as usize, topic) {
            return Presence::new(&self.pool.hot, topic, self.core);
        }
        self.join_slow(topic)
    }

    #[cold]
    #[inline(never)]
    fn join_slow(&mut self, topic: Topic) -> Presence {
        match self.try_join(topic) {
            Ok(p) => p,
            Err(_) => {
                let stale = &self.pool.hot.stale_joins;
                stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Presence::inert(&self.pool.hot, topic)
            }
        }
    }

    /// Joins `topic`, or returns [`Error::StaleTopic`] when the handle's topic was retired
    /// (look the name up again with [`crate::Engine::topic`]).
    #[inline]
    pub fn try_join(&mut self, topic: Topic) -> Result<Presence, Error> {
        if self.owner == tid() {
            if !self.pool.hot.join_owned(self.core as usize, topic) {
                return Err(Error::StaleTopic { id: topic.id() });
            }
            return Ok(Presence::new(&self.pool.hot, topic, self.core));
        }
        self.try_join_unbound(topic)
    }

    #[cold]
    fn try_join_unbound(&mut self, topic: Topic) -> Result<Presence, Error> {
        if self.pool.bind(self.core, false) {
            self.owner = tid();
            return self.try_join(topic);
        }
        // The core is bound to another thread (this handle moved after its first use).
        let c = self.pool.hot.join_shared(topic)?;
        Ok(Presence::new(&self.pool.hot, topic, c))
    }

    /// Looks `name` up (a lock-free read), interning it if new, then joins it.
    pub fn join_by_name(&mut self, name: &str) -> Presence {
        let t = self.pool.topics.resolve(name, &self.pool.hot);
        self.join(t)
    }

    /// Tells the engine this shard's worker is about to go idle: call it before your event loop
    /// blocks (right before `epoll_wait`, a channel receive, a condition variable wait).
    ///
    /// Retired topic ids are reused only once every shard that can join has either moved past
    /// the retirement or parked; a shard that blocks without parking holds up the reuse of ids
    /// (the counts are not affected) until it joins or leaves again. Parking costs a few stores;
    /// the next join or leave on this thread unparks with one sequentially consistent handshake
    /// and is otherwise as fast as ever. Joins and leaves are allowed at any time: parking is
    /// never wrong, only skipping it delays retirement. Does nothing on a shard not yet used, or
    /// used from a thread other than the one it is bound to.
    pub fn park(&mut self) {
        if self.owner == tid() {
            let hot = &self.pool.hot;
            hot.cores[self.core as usize].park(&hot.epoch);
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.pool.unbind(self.core);
        self.pool.give_back(self.core);
    }
}

// ---------------------------------------------------------------------------------------------
// Presence

/// One user present in one topic; leaves (−1) when dropped, on any thread.
///
/// Dropped on the thread its shard is bound to, the leave is as cheap as the join; anywhere
/// else it goes through the engine's shared core (atomic read-modify-write), and the sum stays
/// exact either way. A presence may outlive its shard and even its engine.
#[must_use = "a Presence leaves its topic as soon as it is dropped"]
pub struct Presence {
    hot: NonNull<Hot>,
    id: u32,
    core: u32,
    generation: u32,
}

// SAFETY:
// - A `Presence` only reads and writes atomics in `Hot` (which is `Sync`), and `Hot` outlives
//   every presence (see `HotBox::drop`). Which core its drop writes is decided on the dropping
//   thread, by that thread's own identity, so moving it between threads is sound.
unsafe impl Send for Presence {}
// SAFETY: `&Presence` gives access to no state at all beyond its plain fields.
unsafe impl Sync for Presence {}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("topic", &self.topic())
            .field("counted", &(self.core != INERT))
            .finish()
    }
}

impl Presence {
    #[inline]
    fn new(hot: &HotBox, topic: Topic, core: u32) -> Presence {
        Presence {
            hot: hot.ptr,
            id: topic.id(),
            core,
            generation: topic.generation(),
        }
    }

    fn inert(hot: &HotBox, topic: Topic) -> Presence {
        Presence::new(hot, topic, INERT)
    }

    pub(crate) fn join_here(pool: &Arc<ShardPool>, topic: Topic) -> Presence {
        match pool.join_here(topic) {
            Ok(p) => p,
            Err(_) => {
                pool.hot
                    .stale_joins
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Presence::inert(&pool.hot, topic)
            }
        }
    }

    /// The topic this presence counts in.
    pub fn topic(&self) -> Topic {
        Topic::from_parts(self.id, self.generation)
    }

    /// True unless the join found a stale topic handle and counted nothing.
    pub fn is_counted(&self) -> bool {
        self.core != INERT
    }

    /// Leaves now (the same as dropping it).
    pub fn leave(self) {}
}

impl Drop for Presence {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `Hot` is freed only once no presence is left (see `HotBox::drop`), and this
        // presence still counts until the release store at the end of `apply` / `fetch_sub`.
        let hot = unsafe { self.hot.as_ref() };
        // `SHARED` and `INERT` are out of range: only a presence made on a core gets here.
        if let Some(core) = hot.cores.get(self.core as usize)
            && core.hdr.bound.load(Ordering::Relaxed) == tid()
        {
            let e = core.observe(&hot.epoch);
            core.apply(e, self.id, 1u32.wrapping_neg(), 1u64.wrapping_neg());
            return;
        }
        self.drop_slow(hot);
    }
}

impl Presence {
    /// Leaves through the shared core: dropped on a thread that does not own the presence's
    /// core, or made on the shared core. Nothing for an inert presence.
    #[cold]
    #[inline(never)]
    fn drop_slow(&self, hot: &Hot) {
        if self.core == INERT {
            return;
        }
        hot.shared.add(self.id, 1u32.wrapping_neg());
        hot.shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pool(cores: usize, cap: usize) -> Arc<ShardPool> {
        let hot = HotBox::new(Hot::new(cores, cap, 16));
        Arc::new(ShardPool::new(hot, cores, Topics::new(cap, 0)))
    }

    fn sum(hot: &Hot, id: u32) -> i64 {
        let mut s = hot.shared.count(id);
        for c in hot.cores.iter() {
            s = s.wrapping_add(c.count(id));
        }
        i64::from(s as i32)
    }

    #[test]
    fn join_drop_on_owner_and_elsewhere() {
        let p = pool(2, 64);
        let t = Topic::from_parts(5, 0);
        let mut s = Shard::claim(&p, 2).unwrap();
        let a = s.join(t);
        let b = s.join(t);
        assert_eq!(sum(&p.hot, 5), 2);
        drop(a);
        assert_eq!(sum(&p.hot, 5), 1);
        // Dropped on another thread: through the shared core.
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(sum(&p.hot, 5), 0);
        assert_eq!(p.hot.live(), 0);
    }

    #[test]
    fn presence_outliving_pool_is_safe_and_leaks() {
        let p = pool(1, 64);
        let t = Topic::from_parts(3, 0);
        let mut s = Shard::claim(&p, 1).unwrap();
        let a = s.join(t);
        drop(s);
        assert_eq!(sum(&p.hot, 3), 1);
        drop(a); // the shard was returned: counts through the shared core
        assert_eq!(sum(&p.hot, 3), 0);
        let mut s = Shard::claim(&p, 1).unwrap();
        let b = s.join(t);
        drop(s);
        drop(p); // live presence: the hot memory is kept, not freed
        drop(b);
    }

    #[test]
    fn stale_handles_count_nothing() {
        let p = pool(1, 64);
        let mut s = Shard::claim(&p, 1).unwrap();
        p.hot.gens[7].store(1, Ordering::SeqCst);
        let stale = Topic::from_parts(7, 0);
        assert!(matches!(
            s.try_join(stale),
            Err(Error::StaleTopic { id: 7 })
        ));
        let inert = s.join(stale);
        assert!(!inert.is_counted());
        assert!(
            s.try_join(Topic::from_parts(1_000, 0)).is_err(),
            "out of range is stale too"
        );
        let ok = s.join(Topic::from_parts(7, 1));
        assert_eq!(sum(&p.hot, 7), 1);
        drop((inert, ok));
        assert_eq!(sum(&p.hot, 7), 0);
    }

    #[test]
    fn moved_shard_counts_exactly_through_shared_path() {
        let p = pool(1, 64);
        let t = Topic::from_parts(1, 0);
        let mut s = Shard::claim(&p, 1).unwrap();
        let a = s.join(t); // binds to this thread
        let (s, b) = std::thread::spawn(move || {
            let mut s = s;
            let b = s.join(t);
            (s, b)
        })
        .join()
        .unwrap();
        assert_eq!(sum(&p.hot, 1), 2);
        assert_eq!(b.core, SHARED);
        drop((a, b, s));
        assert_eq!(sum(&p.hot, 1), 0);
    }

    #[test]
    fn claims_run_out_and_come_back() {
        let p = pool(2, 8);
        let a = Shard::claim(&p, 2).unwrap();
        let b = Shard::claim(&p, 2).unwrap();
        assert!(matches!(
            Shard::claim(&p, 2),
            Err(Error::NoFreeShard { shards: 2 })
        ));
        drop(a);
        let c = Shard::claim(&p, 2).unwrap();
        drop((b, c));
        assert_eq!(p.free_shards(), 2);
    }

    #[test]
    fn full_ring_asks_for_a_rescan_and_retries() {
        let p = pool(1, 64);
        let mut s = Shard::claim(&p, 1).unwrap();
        let keep: Vec<_> = (0..40).map(|i| s.join(Topic::from_parts(i, 0))).collect();
        let core = &p.hot.cores[0];
        assert!(core.hdr.overflows.load(Ordering::Acquire) > 0);
        let mut n = 0;
        core.ring.drain(|_| n += 1);
        assert_eq!(n, 16);
        // The marks are set anyway: a second change in the same epoch does not retry the push.
        let before = core.hdr.overflows.load(Ordering::Acquire);
        let again = s.join(Topic::from_parts(39, 0));
        assert_eq!(core.hdr.overflows.load(Ordering::Acquire), before);
        drop(again);
        drop(keep);
    }

    fn parked(p: &ShardPool, c: usize) -> bool {
        p.hot.cores[c].hdr.parked.load(Ordering::SeqCst)
    }

    #[test]
    fn park_then_join_and_leave_count_exactly() {
        let p = pool(2, 64);
        let t = Topic::from_parts(5, 0);
        let mut s = Shard::claim(&p, 2).unwrap();
        let c = s.index();
        let a = s.join(t);
        s.park();
        assert!(parked(&p, c));
        assert_eq!(
            crate::reducer::quiet(&p.hot),
            u64::MAX,
            "a parked core holds up nothing"
        );
        p.hot.epoch.store(2, Ordering::SeqCst); // a tick while parked
        let b = s.join(t);
        assert!(!parked(&p, c), "a join unparks");
        assert_eq!(p.hot.cores[c].hdr.seen.load(Ordering::Acquire), 2);
        assert_eq!(crate::reducer::quiet(&p.hot), 2);
        assert_eq!(sum(&p.hot, 5), 2);
        s.park();
        drop(a);
        assert!(!parked(&p, c), "a leave on the owner thread unparks too");
        assert_eq!(sum(&p.hot, 5), 1);
        s.park();
        s.park(); // twice is the same as once
        assert!(parked(&p, c));
        let again = s.join(t); // in the same epoch as the park
        assert_eq!(sum(&p.hot, 5), 2);
        drop((b, again));
        assert_eq!(sum(&p.hot, 5), 0);
        assert_eq!(p.hot.live(), 0);
    }

    #[test]
    fn stale_handle_after_park_and_retirement_is_rejected() {
        let p = pool(1, 64);
        let t = Topic::from_parts(7, 0);
        let mut s = Shard::claim(&p, 1).unwrap();
        drop(s.join(t));
        s.park();
        // Phase one in tick 2, phase two's check in tick 3: the parked core does not hold it up.
        p.hot.epoch.store(2, Ordering::SeqCst);
        let g = p.hot.bump_generation(7);
        p.hot.epoch.store(3, Ordering::SeqCst);
        assert!(crate::reducer::quiet(&p.hot) > 2);
        assert_eq!(sum(&p.hot, 7), 0);
        // The worker wakes up with its old handle.
        assert!(matches!(s.try_join(t), Err(Error::StaleTopic { id: 7 })));
        assert!(!s.join(t).is_counted());
        assert!(!parked(&p, 0));
        assert_eq!(crate::reducer::quiet(&p.hot), 3);
        assert_eq!(sum(&p.hot, 7), 0);
        let fresh = s.join(Topic::from_parts(7, g));
        assert!(fresh.is_counted());
        assert_eq!(sum(&p.hot, 7), 1);
    }

    #[test]
    fn park_on_an_unused_or_moved_shard_is_harmless() {
        let p = pool(1, 64);
        let t = Topic::from_parts(2, 0);
        let mut s = Shard::claim(&p, 1).unwrap();
        s.park(); // never used: bound to no thread
        assert!(!parked(&p, 0));
        let a = s.join(t);
        assert_eq!(crate::reducer::quiet(&p.hot), 1);
        // Moved to another thread while `a` lives: it counts through the shared core there, and
        // parking there leaves the core bound here alone.
        let s = std::thread::spawn(move || {
            let mut s = s;
            s.park();
            drop(s.join(t));
            s.park();
            s
        })
        .join()
        .unwrap();
        assert!(!parked(&p, 0));
        assert_eq!(sum(&p.hot, 2), 1);
        // A parked shard given back: its core holds up nothing, and the next owner unparks on
        // its first join.
        let mut s = s;
        s.park();
        drop(s);
        assert!(parked(&p, 0));
        assert_eq!(crate::reducer::quiet(&p.hot), u64::MAX);
        let mut s = Shard::claim(&p, 1).unwrap();
        let b = s.join(t);
        assert!(!parked(&p, 0));
        assert_eq!(sum(&p.hot, 2), 2);
        drop((a, b));
        assert_eq!(sum(&p.hot, 2), 0);
    }
}
