//! What every worker of a running server shares (read-mostly), and the counters each worker
//! writes: the state that the commands, INFO and the metrics read. It imports nothing of
//! `serve`, so that everything reading it can be imported by `serve` without a cycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_utils::CachePadded;
use headcount::Engine;

use crate::config::ClientLimits;
use crate::shutdown::Shutdown;

/// Counters one worker writes and everyone may read. One writer each, so updates are a plain
/// load and store (no locked instruction), on a cache line no other worker writes.
#[derive(Default, Debug)]
pub struct WorkerStats {
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub accept_errors: AtomicU64,
    pub commands: AtomicU64,
    pub presences: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub output_limit_closes: AtomicU64,
    /// Connections closed because all clients' buffers were over `max_client_memory`.
    pub memory_limit_closes: AtomicU64,
    /// Connections paused now because their unsent replies reached the pause (a gauge).
    pub paused: AtomicU64,
}

impl WorkerStats {
    /// Adds `n` (wrapping: adding `u64::MAX` subtracts one). Only the owning worker calls this.
    pub fn add(&self, c: &AtomicU64, n: u64) {
        if n != 0 {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }
}

/// The sums of every worker's [`WorkerStats`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub connections: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub accept_errors: u64,
    pub commands: u64,
    pub presences: u64,
    pub protocol_errors: u64,
    pub output_limit_closes: u64,
    pub memory_limit_closes: u64,
    pub paused: u64,
}

/// What every worker shares (read-mostly).
pub struct Shared {
    pub engine: Engine,
    pub limits: ClientLimits,
    pub password: Option<String>,
    pub listen: SocketAddr,
    pub workers: usize,
    pub started: Instant,
    /// False with `--no-count`: commands are parsed and answered, nothing is counted.
    pub counting: bool,
    /// Bytes held in all connections' buffers, over all workers. Each worker adds what its
    /// connections' buffers gain or lose at the end of a turn that changed their size.
    pub client_memory: CachePadded<AtomicUsize>,
    pub stats: Vec<Arc<CachePadded<WorkerStats>>>,
    pub shutdown: Shutdown,
    /// `CONFIG GET` answers beyond the defaults stock tools ask about.
    pub settings: Vec<(&'static str, String)>,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Bytes held in all connections' buffers now.
    pub fn client_memory(&self) -> usize {
        self.client_memory.load(Ordering::Relaxed)
    }

    /// All connections' buffers hold more than `max_client_memory`.
    pub fn over_budget(&self) -> bool {
        self.client_memory() > self.limits.max_client_memory
    }

    pub fn worker_totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.stats {
            let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.connections = t.connections.wrapping_add(r(&s.connections));
            t.accepted += r(&s.accepted);
            t.rejected += r(&s.rejected);
            t.accept_errors += r(&s.accept_errors);
            t.commands += r(&s.commands);
            t.presences = t.presences.wrapping_add(r(&s.presences));
            t.protocol_errors += r(&s.protocol_errors);
            t.output_limit_closes += r(&s.output_limit_closes);
            t.memory_limit_closes += r(&s.memory_limit_closes);
            t.paused = t.paused.wrapping_add(r(&s.paused));
        }
        t
    }

    /// Open connections over all workers.
    pub fn connections(&self) -> usize {
        self.worker_totals().connections as usize
    }

    /// `CONFIG GET` answers: what stock tools ask about, then this server's settings.
    pub fn config_pairs(&self) -> Vec<(&'static str, &str)> {
        self.settings
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect()
    }
}
