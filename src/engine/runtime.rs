//! Binding a tokio runtime's worker threads to shards (feature `tokio`).

use crate::engine::Engine;

impl Engine {
    /// Sets up a tokio runtime builder so that each of its worker threads owns a shard: the
    /// shard is claimed when the thread starts ([`Engine::bind_thread`], and again when it wakes
    /// up if it found none free at start), parked whenever the worker goes idle
    /// ([`Engine::park_thread`]) and given back when it stops ([`Engine::release_thread`]).
    /// Then [`Engine::join`] in a task joins on the worker's own shard, and a presence dropped
    /// on any worker leaves on that worker's shard: the shared path is left to threads outside
    /// the runtime.
    ///
    /// Give the engine one shard per worker (`.shards(n)` and `.worker_threads(n)`). tokio runs
    /// `on_thread_start` on the threads of its blocking pool too (`spawn_blocking`, file and
    /// stdin I/O), and gives no way to tell them from workers there: such a thread takes a free
    /// shard like a worker and keeps it until it exits (after 10 s idle, by default). The
    /// workers start while the runtime is built, so they normally bind first; one that finds
    /// every shard taken counts through the shared path and tries again each time it wakes.
    /// Spare shards (more shards than workers) are what blocking threads take. `shared_ops` in
    /// [`crate::Stats`] shows whether it happens.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let workers = 4;
    /// let engine = headcount::Engine::builder().shards(workers).start()?;
    /// let rt = engine
    ///     .bind_runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(workers))
    ///     .enable_all()
    ///     .build()?;
    /// rt.block_on(async {
    ///     let room = engine.topic("room:1");
    ///     let p = engine.join(room);
    ///     tokio::task::yield_now().await;
    ///     drop(p);
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn bind_runtime<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        let (start, wake, park, stop) = (self.clone(), self.clone(), self.clone(), self.clone());
        builder
            .on_thread_start(move || {
                // None free: the thread counts through the shared core (exact) and tries again
                // when it next wakes up.
                let _ = start.bind_thread();
            })
            .on_thread_unpark(move || {
                let _ = wake.bind_thread();
            })
            .on_thread_park(move || park.park_thread())
            .on_thread_stop(move || stop.release_thread())
    }
}
