//! Who holds which presences: a table from a process (its pid) to the [`Presence`] guards it
//! joined, and the monitor that ends them when the process exits.
//!
//! Resource objects ([`Watch`], one per shard) monitor every process that holds presences; the VM
//! calls their `down` when one exits (normal, crash, `:kill`), and `down` drops the process's guards, each a
//! leave. Nothing of the process is referenced from its heap: no garbage collection can end a
//! presence, and only the monitor can, exactly once, after the process is gone.
//!
//! The table is split into [`SHARDS`] mutex-guarded maps by pid, each on its own cache line: two
//! schedulers collide only when their processes hash to the same shard, and then for the few
//! nanoseconds of a map update. No lock of ours is held while calling into the VM (monitor,
//! demonitor): the VM may call `down` on another scheduler at any time, and `down` takes a
//! shard's lock.
//!
//! Monitoring a process is a call into the VM that costs more than the rest of a join together,
//! so the first join of a process leaves it to the watcher thread (later joins of the same
//! process only push a guard). The race that opens, a process that exits before or while its
//! monitor is made, is closed by the entry's [`State`]: `Pending` until the monitor exists; a
//! `down` that finds it pending marks it, a monitor that cannot be made (the process is gone)
//! fails, and either way the watcher then removes the entry.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crossbeam_utils::CachePadded;
use headcount::Presence;
use rustler::{Env, LocalPid, Monitor, Resource, ResourceArc};

/// Shards of the table (a power of two).
const SHARDS: usize = 64;

/// A resource object that monitors processes holding presences: one per shard of the table.
/// (The VM keeps a resource's monitors in one tree behind one mutex: one watcher for all
/// processes would make every first join of every scheduler wait on that mutex and walk a tree
/// of every monitored process.)
pub(crate) struct Watch;

#[rustler::resource_impl]
impl Resource for Watch {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _mon: Monitor) {
        // A monitor fires once, when its process is gone: whatever entry the pid has now (a
        // later join on its behalf may have made a new one) belongs to a dead process.
        let key = key(&pid);
        let dropped = {
            let mut shard = TABLE.shard(key);
            match shard.get_mut(&key) {
                Some(Entry {
                    state: State::Pending { down },
                    ..
                }) => {
                    *down = true;
                    None
                }
                Some(_) => shard.remove(&key),
                None => None,
            }
        };
        // Each guard's drop is its leave (outside the lock).
        drop(dropped);
    }
}

/// The watcher of the table shard a key is in, made on first use (after the resource type was
/// registered at load).
fn watch(key: Key) -> &'static ResourceArc<Watch> {
    static WATCH: OnceLock<Box<[ResourceArc<Watch>]>> = OnceLock::new();
    let all = WATCH.get_or_init(|| (0..SHARDS).map(|_| ResourceArc::new(Watch)).collect());
    &all[shard_of(key)]
}

enum State {
    /// Made by a first join; its monitor is being set up. `down`: the process exited meanwhile.
    Pending { down: bool },
    /// Monitored.
    Live(Monitor),
}

struct Entry {
    state: State,
    presences: Vec<Presence>,
}

/// A pid with its hash computed once (`LocalPid`'s own `Hash` calls into the VM each time).
#[derive(Clone, Copy)]
struct Key {
    hash: u64,
    pid: LocalPid,
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.hash == o.hash && self.pid == o.pid
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

type Map = HashMap<Key, Entry, foldhash::fast::RandomState>;

struct Table {
    shards: Box<[CachePadded<Mutex<Map>>]>,
}

impl Table {
    fn shard(&self, key: Key) -> MutexGuard<'_, Map> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn shard_of(key: Key) -> usize {
    (key.hash >> 58) as usize & (SHARDS - 1)
}

static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| Table {
    shards: (0..SHARDS)
        .map(|_| CachePadded::new(Mutex::new(Map::default())))
        .collect(),
});

/// A pid's key: the VM's hash of it (the same for the same process wherever it is computed),
/// mixed so that its high bits choose the shard.
fn key(pid: &LocalPid) -> Key {
    use std::hash::BuildHasher;
    static HASHER: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0x6863);
    Key {
        hash: HASHER.hash_one(pid),
        pid: *pid,
    }
}

/// Records `presence` as held by `pid` until it leaves or exits.
///
/// The first presence of a process needs a monitor, which costs the VM a microsecond or more
/// (a monitor structure, a reference, a signal to the process): that is made on the watcher
/// thread, off the caller's path. Until then the entry is `Pending`; if the process turns out to
/// be gone when its monitor is made, the watcher removes the entry (its presences leave), so a
/// presence never outlives its process by more than the watcher's delay (a millisecond or so).
pub(crate) fn join(pid: &LocalPid, presence: Presence) {
    let key = key(pid);
    {
        let mut shard = TABLE.shard(key);
        if let Some(e) = shard.get_mut(&key) {
            // Monitored, or waiting for its monitor.
            e.presences.push(presence);
            return;
        }
        shard.insert(
            key,
            Entry {
                state: State::Pending { down: false },
                presences: vec![presence],
            },
        );
    }
    watcher::enqueue(*pid);
}

/// The thread that makes the monitors of processes' first presences.
mod watcher {
    use std::sync::{Condvar, LazyLock, Mutex};
    use std::time::Duration;

    use rustler::LocalPid;

    use crate::table::{Entry, State, TABLE, key, watch};

    struct Queue {
        pids: Vec<LocalPid>,
        /// The watcher waits on the condvar (rather than polling): the next push wakes it.
        parked: bool,
        started: bool,
    }

    static QUEUE: LazyLock<(Mutex<Queue>, Condvar)> = LazyLock::new(|| {
        (
            Mutex::new(Queue {
                pids: Vec::new(),
                parked: false,
                started: false,
            }),
            Condvar::new(),
        )
    });

    /// While busy the watcher polls every [`POLL`] (a join then makes no system call); after
    /// [`IDLE_POLLS`] empty polls it parks until the next join wakes it.
    const POLL: Duration = Duration::from_millis(1);
    const IDLE_POLLS: u32 = 1000;

    pub(super) fn enqueue(pid: LocalPid) {
        let (q, cv) = &*QUEUE;
        let mut g = q.lock().unwrap_or_else(|e| e.into_inner());
        g.pids.push(pid);
        if !g.started {
            g.started = true;
            // If the thread cannot start, the entries stay pending: counted, and never left
            // by their process's exit. Nothing better is possible without a thread; say so.
            if let Err(e) = std::thread::Builder::new()
                .name("headcount-watcher".into())
                .spawn(run)
            {
                g.started = false;
                eprintln!("headcount: cannot start the watcher thread: {e}");
            }
        } else if g.parked {
            g.parked = false;
            cv.notify_one();
        }
    }

    /// First joins whose monitor is not made yet.
    pub(super) fn pending() -> usize {
        QUEUE.0.lock().unwrap_or_else(|e| e.into_inner()).pids.len()
    }

    fn run() {
        let (q, cv) = &*QUEUE;
        let mut batch = Vec::new();
        let mut idle = 0u32;
        loop {
            {
                let mut g = q.lock().unwrap_or_else(|e| e.into_inner());
                if g.pids.is_empty() && idle >= IDLE_POLLS {
                    g.parked = true;
                    while g.parked {
                        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                }
                std::mem::swap(&mut batch, &mut g.pids);
            }
            if batch.is_empty() {
                idle += 1;
                std::thread::sleep(POLL);
                continue;
            }
            idle = 0;
            for pid in batch.drain(..) {
                establish(&pid);
            }
        }
    }

    /// Monitors `pid` for its pending entry, or removes the entry if the process is gone.
    fn establish(pid: &LocalPid) {
        let key = key(pid);
        // No environment: this thread is not the VM's.
        let mon = watch(key).monitor(None, pid);
        let (gone, extra) = {
            let mut shard = TABLE.shard(key);
            match (shard.get_mut(&key), mon) {
                (
                    Some(Entry {
                        state: state @ State::Pending { down: false },
                        presences,
                    }),
                    Some(m),
                ) if !presences.is_empty() => {
                    *state = State::Live(m);
                    (None, None)
                }
                // Gone before the monitor (none made), or during it (`down` marked the entry),
                // or every presence already left: the entry goes.
                (
                    Some(Entry {
                        state: State::Pending { .. },
                        ..
                    }),
                    m,
                ) => (shard.remove(&key), m),
                // A second queued first join of a process whose entry was made again after a
                // stop, or no entry any more (a stop cleared the table): this monitor is extra.
                (_, m) => (None, m),
            }
        };
        drop(gone);
        if let Some(m) = extra {
            watch(key).demonitor(None, &m);
        }
    }
}

/// Ends one of `pid`'s presences in `topic`; false if it holds none there. A process left with
/// no presence is no longer monitored.
pub(crate) fn leave(env: Env<'_>, pid: &LocalPid, topic: headcount::Topic) -> bool {
    let key = key(pid);
    let (left, unwatch) = {
        let mut shard = TABLE.shard(key);
        let Some(e) = shard.get_mut(&key) else {
            return false;
        };
        let Some(i) = e.presences.iter().rposition(|p| p.topic() == topic) else {
            return false;
        };
        let left = e.presences.swap_remove(i);
        let unwatch = match e.state {
            State::Live(m) if e.presences.is_empty() => {
                shard.remove(&key);
                Some(m)
            }
            _ => None,
        };
        (left, unwatch)
    };
    drop(left);
    if let Some(m) = unwatch {
        // False if the process is exiting: its `down` then finds no entry (or a newer one of a
        // process that is gone anyway) and does nothing wrong.
        watch(key).demonitor(Some(env), &m);
    }
    true
}

/// The topics of `pid`'s presences (one per presence), in the order they were joined, except
/// after leaves.
pub(crate) fn presences_of(pid: &LocalPid) -> Vec<headcount::Topic> {
    let key = key(pid);
    TABLE
        .shard(key)
        .get(&key)
        .map(|e| e.presences.iter().map(Presence::topic).collect())
        .unwrap_or_default()
}

/// First joins waiting for the watcher to monitor their process.
pub(crate) fn pending_monitors() -> usize {
    watcher::pending()
}

/// Processes holding presences, and presences held.
pub(crate) fn size() -> (usize, usize) {
    let mut procs = 0;
    let mut held = 0;
    for s in TABLE.shards.iter() {
        let m = s.lock().unwrap_or_else(|e| e.into_inner());
        procs += m.len();
        held += m.values().map(|e| e.presences.len()).sum::<usize>();
    }
    (procs, held)
}

/// Forgets every presence (when the engine stops): each guard's drop is a leave on the stopped
/// engine. Monitors stay; when they fire they find no entry.
pub(crate) fn clear() {
    for s in TABLE.shards.iter() {
        let taken = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
        drop(taken);
    }
}
