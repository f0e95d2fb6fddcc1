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
//!   [`Error::StaleTopic`] ([`Shard::try_join`]) or count nothing ([`Shard::join`]); it never
//!   counts into another topic. Look the name up again. A worker that blocks (an event loop
//!   waiting for I/O) calls [`Shard::park`] first, so that it never holds up the reuse of ids.
//!
//! ## Features
//!
//! - `affinity` (default): count CPUs and pin the engine thread with `core_affinity`.

#![deny(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![doc(test(attr(deny(warnings))))]

pub mod cluster;
mod engine;
mod error;
mod net;
mod reducer;
mod ring;
mod shard;
mod sync;
mod topic;
mod view;

pub use cluster::protocol::{NodeInfo, ProtoStats};
pub use cluster::wire::Reject;
pub use engine::{
    Builder, ClusterStats, DEFAULT_GROUP, Engine, Stats, TICK_BUCKETS, cpus, node_id_for,
};
pub use error::Error;
pub use net::Transport;
pub use shard::{Presence, Shard};
pub use topic::{OVERFLOW_NAME, Topic, wire_hash};
pub use view::{ChangeFeed, FeedEvent, TickChanges};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
