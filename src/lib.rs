//! # headcount
//!
//! Exact counts of connected users, in total and per topic, at a few nanoseconds per join or
//! leave: no lock, no allocation and no shared cache line on the path a connection takes.
//!
//! Worker threads claim a [`Shard`] each and join topics through it; a [`Presence`] guard leaves
//! on drop (like monitoring a process and decrementing on `DOWN`). A reducer thread sums, each
//! tick, only the topics that changed, and publishes counts any thread can read lock-free.
//!
//! ```
//! use std::time::Duration;
//! use headcount::Engine;
//!
//! let engine = Engine::builder().shards(2).tick(Duration::from_millis(50)).start()?;
//! let room = engine.topic("room:42"); // intern once; `Topic` is Copy
//! let mut shard = engine.shard()?;    // one per worker thread
//! let alice = shard.join(room);       // +1: a relaxed store on the shard's own memory
//! let bob = shard.join_by_name("room:42");
//! engine.sync();                      // run a tick now (tests, scripts); normally it just ticks
//! assert_eq!(engine.count(room), 2);
//! drop(alice);                        // leaves on drop
//! engine.sync();
//! assert_eq!(engine.count_by_name("room:42"), 1);
//! assert_eq!(engine.top(10), vec![("room:42".to_string(), 1)]);
//! drop(bob);
//! engine.shutdown();
//! # Ok::<(), headcount::Error>(())
//! ```
//!
//! ## Guarantees
//!
//! - **Exact once settled**: after [`Engine::sync`], every count is joins minus leaves, whatever
//!   threads joined and wherever the guards were dropped.
//! - **Staleness**: counts are at most about one tick old; see the `reducer` module docs for the
//!   precise bound. No change waits for its topic to change again.
//! - **Bounded memory**: topics whose count stays zero for `retire_after` are retired and their
//!   ids reused. A [`Topic`] handle to a retired topic is *stale*: joins through it return
//!   [`Error::StaleTopic`] ([`Shard::try_join`], [`Engine::try_join`]) or count nothing and add
//!   one to [`Stats::stale_joins`] ([`Shard::join`], [`Engine::join`]); it never counts into
//!   another topic. Look the name up again. A worker that blocks (an event loop waiting for I/O)
//!   calls [`Shard::park`] first, so that it never holds up the reuse of ids.
//! - **Nothing silent**: a stale handle, a name over [`MAX_NAME_LEN`] bytes and a full topic
//!   table are each an [`Error`] from the `try_` forms; the infallible forms count them in
//!   [`Stats`] (`stale_joins`, `long_names`, `full_table`), and count an over-long name or a new
//!   name on a full table in [`Topic::OVERFLOW`] rather than nowhere
//!   (the overflow topic is listed, and named on peers, as [`OVERFLOW_NAME`]).
//!
//! ## Using headcount from async Rust
//!
//! Which join path fits depends on where your code runs:
//!
//! - **Thread-per-core** (your own pinned threads each with an event loop; glommio, monoio):
//!   claim a [`Shard`] per worker, join with [`Shard::join`], and call [`Shard::park`] before
//!   the loop blocks. This is the fastest path (no thread-local lookup at all); see
//!   `examples/thread_per_core.rs`.
//! - **Work-stealing runtimes** (tokio's multi-thread runtime, and anything on it: axum, hyper,
//!   tonic): a task moves between worker threads at any `.await`, so it cannot hold a `Shard`.
//!   Call [`Engine::join`] (or [`Engine::try_join_by_name`]) in the task and keep the
//!   [`Presence`] (it is `Send`) in the connection's state. Each worker thread owns a shard of
//!   its own: build the runtime with `Engine::bind_runtime` (feature `tokio`; or call
//!   [`Engine::bind_thread`], [`Engine::park_thread`] and [`Engine::release_thread`] from your
//!   runtime's thread hooks). Then a join counts on the shard of the worker it runs on, and a
//!   presence dropped after the task resumed elsewhere leaves on *that* worker's shard: a count
//!   is a sum over shards, so a presence need not leave where it joined. See
//!   `examples/axum_ws.rs`.
//! - **Single-threaded runtimes** (tokio's current-thread runtime, a `LocalSet`): just
//!   [`Engine::join`]; the thread claims a shard on its first join.
//!
//! **Shards and worker threads.** Give the engine one shard per thread that joins or leaves:
//! `.shards(n)` with `.worker_threads(n)`. A thread without a shard (every shard taken, or
//! claiming turned off) still counts exactly, through the *shared path*: atomic
//! read-modify-writes on memory every such thread writes. That costs several times a shard's
//! relaxed store, and more under contention (figures in `perf/RESULTS.md`, "Issue 11");
//! [`Stats::shared_ops`] counts how often it was taken.
//!
//! **Threads that should not keep a shard.** [`Engine::join`] claims a free shard for a thread
//! on its first join, and the thread keeps it until it exits. A thread that joined once and
//! will not again (the `#[tokio::main]` thread during start-up, a `spawn_blocking` closure)
//! should call [`Engine::release_thread`], or the shard a worker needed stays with it and
//! holds up the reuse of retired topic ids. With [`Builder::claim_on_join`] off, only threads
//! bound with [`Engine::bind_thread`] (or by `Engine::bind_runtime`) take shards at all.
//!
//! **Counts as a stream.** With the `tokio` feature, `engine.changes().into_async()` is an
//! async [`ChangeFeed`]: push "N online" to clients once per tick from a task, no bridge thread
//! (see Features).
//!
//! ## A transport of your own
//!
//! A cluster's nodes exchange datagrams over UDP multicast ([`Builder::multicast`]) or a unicast
//! peer list ([`Builder::unicast`]) — or over anything the application carries:
//! [`Builder::channel`] takes a [`ChannelTransport`], a `Send + Sync + Clone` handle out of which
//! the application takes the engine's datagrams (each for [`Destination::All`] or one peer),
//! and into which it [`deliver`](ChannelTransport::deliver)s the ones it receives, naming each
//! peer by a [`PeerAddr`] of its choosing. Erlang distribution, a message bus or in-memory
//! queues in tests then carry the cluster. Both directions are bounded and never block the
//! engine; what overflows is dropped, counted
//! ([`ClusterStats::transport_dropped_out`], [`ClusterStats::transport_dropped_in`]) and
//! repaired like a datagram lost on the network, and every datagram delivered meets the same
//! checks (MAC, replay, rate, caps) as one from a socket. A cluster key is required (or
//! [`Builder::insecure`]). See `examples/custom_transport.rs`.
//!
//! ## Layout
//!
//! Where each thing lives, from the worker's join to the datagram. The arrows point one way:
//! `engine` uses `core` and `cluster`; `cluster` uses neither; `core` uses nothing but `error`.
//!
//! - `src/core/`: the counting itself, with no sockets and no threads of its own.
//!   - `hot.rs`: the per-core slots, the shared core, topic generations, thread ids: all the hot
//!     path's unsafe code, addressed by `(id, generation)`.
//!   - `shard.rs`: [`Shard`] and [`Presence`], the pool of shards and per-thread bindings.
//!   - `topic.rs`: [`Topic`], name interning, [`wire_hash`], the table's side of retirement.
//!   - `reducer.rs`: the per-tick sum of what changed, the staleness bound, two-phase retirement
//!     (its loom models: `reducer/loom_tests.rs`).
//!   - `ring.rs` (a shard's dirty ring), `view.rs` (published counts, [`ChangeFeed`]), `sync.rs`
//!     (std's atomics, or loom's).
//! - `src/cluster/` ([`cluster`]): the datagram layouts and MAC (`wire`), the sans-IO protocol
//!   (`protocol`: the peer table and the cluster sums), a deterministic simulation (`sim`).
//! - `src/engine/`: `mod.rs` ([`Engine`] and its read API), `builder.rs` ([`Builder`], every
//!   default once: [`defaults`]), `driver.rs` (the engine thread, the only mio user: one tick as
//!   named steps), `net.rs` (the sockets, [`Transport`]), `channel.rs` ([`ChannelTransport`],
//!   the application's transport, and the engine's end of it), `link.rs` (the one of the two
//!   the engine thread sends and receives through), `stats.rs` ([`Stats`],
//!   [`ClusterStats`]), `cpu.rs` ([`cpus`], and the one pinning rule: the engine on the last
//!   CPU, workers on the others, [`pin_worker`]), `runtime.rs` (`Engine::bind_runtime`,
//!   feature `tokio`).
//! - `src/error.rs`: [`Error`].
//!
//! Beside this crate, in the same workspace: `server/` (crate `headcount-server`: the RESP
//! codec and client, the commands, `serve::run`, INFO and metrics, and the `headcount` binary
//! with `serve`, `watch` and `demo`), `perf/` (the perf harness and the criterion benches), and
//! `fuzz/` (the cargo-fuzz targets). `scripts/check-layout.py` keeps every crate free of import
//! cycles and of files over 600 lines.
//!
//! Every public item is re-exported here at the root; of the modules, only [`cluster`] is public
//! (for simulations, benchmarks and fuzzing).
//!
//! ## Features
//!
//! - `affinity` (default): count CPUs and pin threads with `core_affinity`.
//! - `tokio` (off by default): `AsyncChangeFeed`, the change feed for async code
//!   (`engine.changes().into_async()`), and `Engine::bind_runtime`, which gives each worker of
//!   a tokio runtime a shard. It depends on tokio's `sync` and `rt` features (headcount starts
//!   no runtime; the feed works in any flavour); without the feature nothing of tokio is built
//!   or run, and the engine thread does not signal anything more than the blocking feed's
//!   condvar.
//!
//! The async reader has the blocking one's semantics: it sees every tick's changes in order,
//! the engine keeps the last [`feed_capacity`](Builder::feed_capacity) ticks and never waits,
//! and a reader further behind gets one [`FeedEvent::Lagged`] with the number of ticks lost,
//! then resumes at the oldest kept tick. `recv` returns `None` once the engine stopped and all
//! was read; it is cancel-safe (use `tokio::time::timeout` for a bounded wait).
//!
#![cfg_attr(
    feature = "tokio",
    doc = r#"
```
use std::time::Duration;
use headcount::{Engine, FeedEvent};

# tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
let engine = Engine::builder().shards(2).tick(Duration::from_millis(20)).start()?;
let mut feed = engine.changes().into_async(); // from the next tick on
let alice = engine.join_by_name("room:42");
// Push "N online" to clients as counts change (here: until the first change).
while let Some(ev) = feed.recv().await {
    match ev {
        FeedEvent::Changes(tick) => {
            for (room, n) in &tick.changes {
                println!("{room}: {n} online");
            }
            break;
        }
        // Fell more than `feed_capacity` ticks behind: re-read the counts of interest.
        FeedEvent::Lagged { .. } => println!("room:42: {}", engine.count_by_name("room:42")),
    }
}
drop(alice);
drop(engine); // stops the engine: `recv` returns `None` once the rest is read
while feed.recv().await.is_some() {}
# Ok::<(), headcount::Error>(())
# }).unwrap();
```
"#
)]
//!
//! The bare library depends on no command-line, logging or serialization crate: those are the
//! server crate's.

#![deny(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![doc(test(attr(deny(warnings))))]

pub mod cluster;
mod core;
mod engine;
mod error;

#[cfg(feature = "tokio")]
pub use crate::core::async_feed::AsyncChangeFeed;
pub use crate::core::shard::{Presence, Shard};
pub use crate::core::topic::{OVERFLOW_NAME, Topic, wire_hash};
pub use crate::core::view::{ChangeFeed, FeedEvent, TickChanges};
pub use cluster::protocol::{Found, NodeInfo, ProtoStats};
pub use cluster::wire::Reject;
pub use engine::Engine;
pub use engine::builder::{Builder, DEFAULT_GROUP, defaults, node_id_for};
pub use engine::channel::{
    ChannelTransport, DeliverError, Destination, MAX_CHANNEL_DATAGRAM, Outgoing, PeerAddr,
};
pub use engine::cpu::{cpus, pin_worker};
pub use engine::net::Transport;
pub use engine::stats::{ClusterStats, Stats, TICK_BUCKETS};
pub use error::Error;

/// The longest topic name, in bytes, that the engine interns: the longest a cluster datagram can
/// carry ([`cluster::wire::MAX_WIRE_NAME`]), so that every interned topic is named on every peer.
///
/// A longer name is never interned: the `try_` forms ([`Engine::try_topic`],
/// [`Engine::try_join_by_name`], [`Shard::try_join_by_name`]) return [`Error::NameTooLong`]; the
/// infallible ones ([`Engine::topic`], [`Engine::join_by_name`], [`Shard::join_by_name`]) count
/// it into [`Topic::OVERFLOW`] and add one to [`Stats::long_names`]; reads by name
/// ([`Engine::lookup`], [`Engine::count_by_name`]) find nothing.
pub const MAX_NAME_LEN: usize = cluster::wire::MAX_WIRE_NAME;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
