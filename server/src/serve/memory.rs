//! A worker's share of the memory budget: the bytes its connections' buffers hold, counted
//! per worker and in one shared counter whenever a connection's buffers change size at the
//! end of its turn (never for a connection without buffers); over `max_client_memory`, a
//! worker holding more than its share closes its largest holders first.

use super::conn::{Bufs, pause_at, shrink};
use super::worker::Worker;

impl Worker {
    /// Uncounts a connection's buffers that are going away.
    pub(super) fn release(&mut self, b: &Bufs) {
        if b.paused {
            self.stats.add(&self.stats.paused, u64::MAX);
        }
        if b.held > 0 {
            self.holders.swap_remove(b.slot);
            if let Some(&moved) = self.holders.get(b.slot)
                && let Some(mb) = self.conns.get_mut(moved).and_then(|c| c.bufs.as_mut())
            {
                mb.slot = b.slot;
            }
            self.account(0, b.held);
        }
    }

    /// Moves this worker's count (and the shared one) of bytes held in buffers from `was` to
    /// `now`.
    fn account(&mut self, now: usize, was: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = &self.shared.client_memory;
        if now > was {
            total.fetch_add(now - was, Relaxed);
        } else {
            total.fetch_sub(was - now, Relaxed);
        }
        self.buffered = self.buffered + now - was;
    }

    /// After a turn: gives back buffer memory no longer needed, counts what is held, updates
    /// the paused gauge, and enforces the memory budget if this connection grew. Nothing at all
    /// for a connection without buffers.
    pub(super) fn settle(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let pause = pause_at(&conn.session);
        let Some(b) = conn.bufs.as_deref_mut() else {
            return;
        };
        shrink(&mut b.input);
        shrink(&mut b.output);
        let paused = b.output.len() >= pause;
        if paused != b.paused {
            b.paused = paused;
            self.stats
                .add(&self.stats.paused, if paused { 1 } else { u64::MAX });
        }
        let capacity = b.input.capacity() + b.output.capacity();
        if capacity == 0 {
            if let Some(b) = conn.bufs.take() {
                self.release(&b);
            }
            return;
        }
        let now = size_of::<Bufs>() + capacity;
        let was = b.held;
        if now == was {
            return;
        }
        if was == 0 {
            b.slot = self.holders.len();
            self.holders.push(key);
        }
        b.held = now;
        self.account(now, was);
        if now > was && self.shared.over_budget() {
            self.evict();
        }
    }

    /// All clients' buffers are over the budget: if this worker holds more than its share,
    /// closes its largest holders until it does not, or the total is under the budget again.
    /// (When the total is over, some worker is over its share, so someone closes something.)
    pub(super) fn evict(&mut self) {
        let limit = self.shared.limits.max_client_memory;
        let share = limit / self.shared.workers;
        let done = |w: &Worker| w.buffered <= share || !w.shared.over_budget();
        if done(self) {
            return;
        }
        let mut by_size: Vec<(usize, usize)> = self
            .holders
            .iter()
            .filter_map(|&k| Some((self.conns.get(k)?.bufs.as_ref()?.held, k)))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let (mut closed, mut freed, mut largest) = (0u64, 0usize, 0usize);
        for (held, key) in by_size {
            if done(self) {
                break;
            }
            largest = largest.max(held);
            self.close(key);
            closed += 1;
            freed += held;
        }
        self.stats.add(&self.stats.memory_limit_closes, closed);
        if closed > 0
            && let Some(skipped) = self.memory_log.due()
        {
            tracing::warn!(
                closed,
                freed,
                largest,
                limit,
                earlier_unlogged = skipped,
                "closing the clients holding the most buffer memory: all clients' buffers \
                 exceed max_client_memory"
            );
        }
    }
}
