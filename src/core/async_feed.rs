//! The change feed for async code (feature `tokio`): [`AsyncChangeFeed`], the same reader as
//! [`ChangeFeed`] with an `async` [`recv`](AsyncChangeFeed::recv).
//!
//! No thread and no polling: the engine thread, after it appends a tick's changes (and when it
//! stops), calls `notify_waiters` on the feed's `tokio::sync::Notify`; a waiting `recv` creates
//! its `Notified` future *before* it looks at the queue, so a publish between the look and the
//! `.await` still wakes it.

use std::sync::Arc;

use crate::core::view::{ChangeFeed, Feed, FeedEvent};

/// An async reader of the per-tick change feed: `engine.changes().into_async()` (feature
/// `tokio`).
///
/// It reads the same queue as a [`ChangeFeed`] and has the same semantics:
///
/// - it starts with the tick after it subscribed, and sees every tick's changes in order;
/// - **lag**: the engine keeps the last [`feed_capacity`](crate::Builder::feed_capacity) ticks
///   and never waits for readers. A reader further behind gets one [`FeedEvent::Lagged`] with
///   the number of ticks it lost, then resumes at the oldest tick kept (re-read the counts it
///   cares about, e.g. with [`Engine::count_by_name`](crate::Engine::count_by_name));
/// - once the engine stopped (its last clone dropped, or [`Engine::shutdown`](crate::Engine::shutdown))
///   and everything kept was read, [`recv`](Self::recv) returns `None`.
///
/// [`recv`](Self::recv) is cancel-safe: dropping it before it completes (in `tokio::select!`, or
/// under `tokio::time::timeout`, the async form of [`ChangeFeed::recv_timeout`]) loses no
/// event. It needs no particular runtime flavour: it is woken through a `tokio::sync::Notify`.
///
/// There is no `Stream` impl (it would add a dependency and a boxed future); for one, wrap it,
/// e.g. `futures::stream::unfold(feed, |mut f| async move { f.recv().await.map(|e| (e, f)) })`.
pub struct AsyncChangeFeed {
    feed: ChangeFeed,
    /// The queue `feed` reads, for its `Notify` (a separate field, so that waiting on it and
    /// taking from `feed` borrow different fields).
    shared: Arc<Feed>,
}

impl std::fmt::Debug for AsyncChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncChangeFeed")
            .field("feed", &self.feed)
            .finish()
    }
}

impl ChangeFeed {
    /// This reader, for async code (feature `tokio`): the same position in the feed, with an
    /// `async` [`recv`](AsyncChangeFeed::recv).
    pub fn into_async(self) -> AsyncChangeFeed {
        let shared = self.shared().clone();
        AsyncChangeFeed { feed: self, shared }
    }
}

impl AsyncChangeFeed {
    /// Waits for the next event; `None` once the engine stopped and everything was read.
    ///
    /// Cancel-safe: an event is taken from the queue only when this returns it.
    pub async fn recv(&mut self) -> Option<FeedEvent> {
        loop {
            // Registered from its creation on: a `notify_waiters` after this line wakes it even
            // though it is polled only below, so no publish can fall between the look and the
            // wait.
            let notified = self.shared.notify.notified();
            match self.feed.try_next() {
                (Some(ev), _) => return Some(ev),
                (None, true) => return None,
                (None, false) => notified.await,
            }
        }
    }

    /// The next event if one is ready (does not wait).
    pub fn try_recv(&mut self) -> Option<FeedEvent> {
        self.feed.try_recv()
    }

    /// Back to the blocking reader, at the same position.
    pub fn into_blocking(self) -> ChangeFeed {
        self.feed
    }
}
