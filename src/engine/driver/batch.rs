//! One tick's changes for the change feed, built while the engine thread publishes counts in
//! the view.

use std::sync::Arc;

use crate::core::sync::Ordering;
use crate::core::view::{Feed, TickChanges};
use crate::engine::Inner;

/// One tick's batch for the change feed: the topics whose published cluster count changed.
pub(super) struct Batch {
    /// Whether anyone reads the feed (otherwise no batch is built).
    want: bool,
    pub(super) changes: Vec<(Arc<str>, u64)>,
    /// It holds changes published between ticks too (a topic may be listed twice).
    merged: bool,
}

impl Batch {
    pub(super) fn new(feed: &Arc<Feed>) -> Batch {
        Batch {
            want: feed.has_readers(),
            changes: Vec::new(),
            merged: false,
        }
    }

    /// Publishes `id`'s cluster count in the view, and lists it for the feed if it changed.
    pub(super) fn publish(&mut self, inner: &Inner, id: u32, count: u64) {
        // Only this thread writes the view: a plain load and store, no locked instruction.
        let slot = inner.view.cluster(id);
        if slot.load(Ordering::Relaxed) != count {
            slot.store(count, Ordering::Relaxed);
            if self.want
                && let Some(n) = inner.pool.topics.name(id)
            {
                self.changes.push((n.name, count));
            }
        }
    }

    /// Starts with the changes published since the last tick (the feed had readers then).
    pub(super) fn take_early(&mut self, early: &mut Vec<(Arc<str>, u64)>) {
        self.merged = !early.is_empty();
        if self.want {
            self.changes.append(early);
        }
        early.clear();
    }

    pub(super) fn send(mut self, feed: &Feed, tick: u64) {
        if self.merged {
            // A topic published between ticks and again now: its last count only.
            let mut seen = std::collections::HashSet::with_capacity(self.changes.len());
            let mut kept: Vec<(Arc<str>, u64)> = Vec::with_capacity(self.changes.len());
            for (name, count) in self.changes.into_iter().rev() {
                if seen.insert(name.clone()) {
                    kept.push((name, count));
                }
            }
            kept.reverse();
            self.changes = kept;
        }
        if !self.changes.is_empty() {
            feed.publish(TickChanges {
                tick,
                changes: self.changes,
            });
        }
    }
}
