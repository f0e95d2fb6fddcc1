//! The counting core: the memory workers write, the topic table, the reducer that sums what
//! changed, and the published counts. No sockets, no clock reads of its own, no threads: the
//! engine (`crate::engine`) drives it, and nothing here knows about the engine or the cluster.
//!
//! The arrows point one way (a module uses only those listed after it):
//!
//! - `shard`: [`Shard`](crate::Shard) and [`Presence`](crate::Presence), the pool of shards and
//!   per-thread bindings. Uses `hot`, `topic`.
//! - `reducer`: once a tick, sums the topics that changed; staleness bound; two-phase retirement
//!   (its loom models are in `reducer/loom_tests.rs`). Uses `hot`, `topic`.
//! - `topic`: names interned into dense ids, wire hashes, the retirement bookkeeping of the
//!   table. Uses `hot` (a retirement bumps the id's generation there).
//! - `hot`: the per-core slots, the shared core, generations, the memory's owner, thread ids:
//!   every line of the hot path's unsafe code. Takes `(id, generation)`, never a topic handle.
//!   Uses `ring`, `sync`.
//! - `async_feed` (feature `tokio`): the change feed's async reader. Uses `view`.
//! - `view`: the counts the engine publishes each tick and the change feed. Uses `sync`.
//! - `ring`: the bounded SPSC ring a core reports dirty topics through. Uses `sync`.
//! - `sync`: std's atomics, or loom's under `--cfg loom`.

#[cfg(feature = "tokio")]
pub(crate) mod async_feed;
pub(crate) mod hot;
pub(crate) mod reducer;
pub(crate) mod ring;
pub(crate) mod shard;
pub(crate) mod sync;
pub(crate) mod topic;
pub(crate) mod view;
