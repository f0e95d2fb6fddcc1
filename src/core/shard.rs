//! The write side a worker holds: the [`Shard`] it joins through, the [`Presence`] guard that
//! leaves on drop, and the pool of shards with the per-thread bindings behind them.
//!
//! The memory they write, and every line of unsafe code on the way, is in `hot.rs`; this module
//! decides which core a thread writes (a shard's core once the thread is bound to it, the shared
//! core otherwise) and turns topic handles into `(id, generation)` for it.
//!
//! A shard binds to the first thread that joins through it. A [`Presence`] dropped on that
//! thread decrements the shard's core directly; dropped anywhere else (or after its shard was
//! returned) it decrements the shared core with atomic read-modify-writes: slower, still exact.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};

use crate::core::hot::{Hold, HotBox, INERT, clear_home, home, set_home, tid};
use crate::core::sync::Ordering;
use crate::core::topic::{Topic, Topics};
use crate::error::Error;

// ---------------------------------------------------------------------------------------------
// The pool of shards and per-thread bindings

/// The write side of an engine: the hot memory, the free cores, and the topic table.
pub(crate) struct ShardPool {
    pub(crate) hot: HotBox,
    free: Mutex<Vec<u32>>,
    pub(crate) topics: Topics,
    /// Whether [`ShardPool::join_here`] claims a shard for a thread that has none.
    claim_on_join: std::sync::atomic::AtomicBool,
}

impl ShardPool {
    pub(crate) fn new(
        hot: HotBox,
        claimable: usize,
        topics: Topics,
        claim_on_join: bool,
    ) -> ShardPool {
        // Pop order: core 0 first.
        let free = (0..claimable as u32).rev().collect();
        ShardPool {
            hot,
            free: Mutex::new(free),
            topics,
            claim_on_join: std::sync::atomic::AtomicBool::new(claim_on_join),
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
            // write it: we hold the only handle (so it cannot join), no presence made on it is
            // alive (`live` counts them, and leaves elsewhere never lower it; each one's last
            // write is the release store of `live`), and it is not that thread's home (a home is
            // unbound by its thread before it is returned to the pool). See `hot.rs`, Threads.
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
        clear_home(&self.hot);
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

    /// The calling thread's implicit shard: its home, or one found in its bindings (made its
    /// home again), or, with `claim`, one claimed and bound now. `None` when the thread has none
    /// and none could be claimed.
    fn thread_shard(self: &Arc<Self>, claim: bool) -> Option<u32> {
        let me = tid();
        if let Some(c) = home(&self.hot, me) {
            return Some(c as u32);
        }
        let found = BINDINGS.with(|bs| {
            bs.borrow()
                .0
                .iter()
                .find(|b| b.thread_shard && std::ptr::eq(b.pool.as_ptr(), Arc::as_ptr(self)))
                .map(|b| b.core)
        });
        let core = match found {
            Some(c) => Some(c),
            None if !claim => None,
            None => match self.claim() {
                Some(c) if self.bind(c, true) => Some(c),
                Some(c) => {
                    self.give_back(c);
                    None
                }
                None => None,
            },
        };
        if let Some(c) = core {
            set_home(&self.hot, c);
        }
        core
    }

    /// Claims a shard for the calling thread now, as its implicit shard; its index. The one it
    /// has already, if any.
    pub(crate) fn bind_thread(self: &Arc<Self>, shards: usize) -> Result<usize, Error> {
        self.thread_shard(true)
            .map(|c| c as usize)
            .ok_or(Error::NoFreeShard { shards })
    }

    /// Parks the calling thread's implicit shard (see `Shard::park`), if it has one.
    pub(crate) fn park_thread(&self) {
        if let Some(c) = home(&self.hot, tid()) {
            self.hot.cores[c].park(&self.hot.epoch);
        }
    }

    /// Joins through the calling thread's own shard, claiming one on first use (unless claiming
    /// on join is off); through the shared core when the thread has none.
    #[inline]
    pub(crate) fn join_here(self: &Arc<Self>, topic: Topic) -> Result<Presence, Error> {
        let core = match home(&self.hot, tid()) {
            Some(c) => Some(c as u32),
            None => self.thread_shard(
                self.claim_on_join
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        };
        match core {
            Some(c) => {
                if !self
                    .hot
                    .join_owned(c as usize, topic.id(), topic.generation())
                {
                    return Err(Error::StaleTopic { id: topic.id() });
                }
                Ok(Presence::new(&self.hot, topic, c))
            }
            None => {
                let c = join_shared(&self.hot, topic)?;
                Ok(Presence::new(&self.hot, topic, c))
            }
        }
    }
}

/// Interns `name` and joins it with `join`, looking it up again (a few times) when its topic was
/// retired in between.
pub(crate) fn try_by_name(
    pool: &ShardPool,
    name: &str,
    mut join: impl FnMut(Topic) -> Result<Presence, Error>,
) -> Result<Presence, Error> {
    let mut last = None;
    for _ in 0..3 {
        let t = match pool.topics.lookup(name) {
            Some(t) => t,
            None => pool.topics.intern(name, &pool.hot)?,
        };
        match join(t) {
            Err(e @ Error::StaleTopic { .. }) => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or(Error::StaleTopic { id: 0 }))
}

/// Joins `topic` through the shared core; [`Error::StaleTopic`] when its handle is stale.
fn join_shared(hot: &HotBox, topic: Topic) -> Result<u32, Error> {
    hot.join_shared(topic.id(), topic.generation())
        .ok_or(Error::StaleTopic { id: topic.id() })
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
                    clear_home(&pool.hot);
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
        if self.owner == tid()
            && self
                .pool
                .hot
                .join_owned(self.core as usize, topic.id(), topic.generation())
        {
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
            if !self
                .pool
                .hot
                .join_owned(self.core as usize, topic.id(), topic.generation())
            {
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
        let c = join_shared(&self.pool.hot, topic)?;
        Ok(Presence::new(&self.pool.hot, topic, c))
    }

    /// Looks `name` up (a lock-free read), interning it if new, then joins it.
    ///
    /// Never fails: a name over [`crate::MAX_NAME_LEN`] bytes, or a new name when the topic table
    /// is full, is counted in [`crate::Topic::OVERFLOW`] (listed as `"(overflow)"`, named on
    /// peers too) and adds one to [`crate::Stats::long_names`] or [`crate::Stats::full_table`].
    /// [`Shard::try_join_by_name`] returns those as errors instead.
    pub fn join_by_name(&mut self, name: &str) -> Presence {
        let t = self.pool.topics.resolve(name, &self.pool.hot);
        self.join(t)
    }

    /// Looks `name` up, interning it if new, then joins it; [`Error::NameTooLong`] for a name
    /// over [`crate::MAX_NAME_LEN`] bytes, [`Error::TopicsFull`] when the table has no free id.
    /// A topic retired between the lookup and the join is looked up again.
    pub fn try_join_by_name(&mut self, name: &str) -> Result<Presence, Error> {
        let pool = self.pool.clone();
        try_by_name(&pool, name, |t| self.try_join(t))
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
    /// The count itself, and the leave on drop (in `hot.rs`, with the unsafe code it needs).
    hold: Hold,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("topic", &self.topic())
            .field("counted", &self.is_counted())
            .finish()
    }
}

impl Presence {
    #[inline]
    fn new(hot: &HotBox, topic: Topic, core: u32) -> Presence {
        Presence {
            hold: Hold::new(hot, topic.id(), topic.generation(), core),
        }
    }

    fn inert(hot: &HotBox, topic: Topic) -> Presence {
        Presence::new(hot, topic, INERT)
    }

    /// [`Engine::join`](crate::Engine::join): on the thread's home shard, the guard built in
    /// place (like [`Shard::join`]: a `Result` returned through memory costs a store-forwarding
    /// stall, which doubled the cost of a join); anything else out of line.
    #[inline]
    pub(crate) fn join_here(pool: &Arc<ShardPool>, topic: Topic) -> Presence {
        if let Some(c) = home(&pool.hot, tid())
            && pool.hot.join_owned(c, topic.id(), topic.generation())
        {
            return Presence::new(&pool.hot, topic, c as u32);
        }
        Presence::join_here_slow(pool, topic)
    }

    #[cold]
    #[inline(never)]
    fn join_here_slow(pool: &Arc<ShardPool>, topic: Topic) -> Presence {
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
        Topic::from_parts(self.hold.id(), self.hold.generation())
    }

    /// True unless the join found a stale topic handle and counted nothing.
    pub fn is_counted(&self) -> bool {
        self.hold.is_counted()
    }

    /// Leaves now (the same as dropping it).
    pub fn leave(self) {}
}

#[cfg(all(test, not(loom)))]
mod tests;
