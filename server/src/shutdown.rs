//! [`Shutdown`]: the handle that stops a running server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Stops a running server: clone it, hand one to `serve::run`, and call [`Shutdown::trigger`]
/// on another (from a signal handler's thread, a test, or your own server's shutdown path).
/// Triggering is final; triggering before `run` starts makes it return at once.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stop: AtomicBool,
    /// Called when triggered (the workers' wakers; kept as long as the handle), and a
    /// condition to wait on.
    wake: Mutex<Vec<Box<dyn Fn() + Send>>>,
    done: Condvar,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl Shutdown {
    /// A handle not triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stops the server: the workers stop at their next turn boundary, close their listeners
    /// and connections (their presences leave), and the engine says goodbye to the cluster.
    pub fn trigger(&self) {
        {
            let w = self
                .inner
                .wake
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.inner.stop.store(true, Ordering::SeqCst);
            // Kept, not dropped: a worker's waker closed right after waking it could take the
            // wakeup with it (closing an eventfd drops its pending event from the poll).
            for wake in w.iter() {
                wake();
            }
        }
        self.inner.done.notify_all();
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }

    /// Runs `wake` when triggered (at once if it already was).
    pub(crate) fn on_trigger(&self, wake: impl Fn() + Send + 'static) {
        let mut w = self
            .inner
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.inner.stop.load(Ordering::SeqCst) {
            wake();
        }
        w.push(Box::new(wake));
    }

    /// Blocks until triggered.
    pub(crate) fn wait(&self) {
        let mut w = self
            .inner
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !self.inner.stop.load(Ordering::SeqCst) {
            w = self
                .inner
                .done
                .wait(w)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
