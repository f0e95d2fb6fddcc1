//! Messages from the engine to Erlang processes, sent from threads the VM does not manage (the
//! only ones `enif_send` without a process environment may run on).
//!
//! - [`Courier`]: a thread that reads the engine's change feed every tick and sends the changes
//!   to the `Headcount` server process, which fans them out to subscribers. It sends one
//!   message at a time: until the server acknowledges it ([`Courier::ack`]), later ticks' changes
//!   are merged (a topic's latest count wins; counts are absolute), so a slow server costs
//!   memory bounded by the number of topics, never a growing mailbox, and never the engine.
//! - [`OutWaker`]: the waker of a `ChannelTransport` (`cluster: :erlang`): one
//!   `:headcount_out` message to the transport process when datagrams are queued, not another
//!   until it takes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use headcount::{ChangeFeed, Engine, FeedEvent};
use rustler::{Encoder, LocalPid, OwnedEnv};

use crate::atoms;

struct Shared {
    /// The process the changes go to (replaced when a restarted server attaches again).
    server: Mutex<LocalPid>,
    /// The server took the last message.
    ready: AtomicBool,
    stop: AtomicBool,
}

/// The change feed's courier thread; stops when dropped (within a tick).
pub(crate) struct Courier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Courier {
    pub(crate) fn spawn(engine: &Engine, server: LocalPid) -> std::io::Result<Courier> {
        let shared = Arc::new(Shared {
            server: Mutex::new(server),
            ready: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let engine = engine.clone();
        // Subscribed here, before the thread runs: a change published between `start`
        // returning and the thread's first instruction is in the feed, not lost (that race
        // made the binding's lag test fail about one run in ten on a busy machine).
        let feed = engine.changes();
        let thread = std::thread::Builder::new()
            .name("headcount-courier".into())
            .spawn(move || run(&engine, feed, &s))?;
        Ok(Courier {
            shared,
            thread: Some(thread),
        })
    }

    /// The server took the last message: the next may go.
    pub(crate) fn ack(&self) {
        self.shared.ready.store(true, Ordering::Release);
    }

    /// Changes go to `server` from now on (a restarted server attaching again).
    pub(crate) fn redirect(&self, server: LocalPid) {
        *self.shared.server.lock().unwrap_or_else(|e| e.into_inner()) = server;
        self.shared.ready.store(true, Ordering::Release);
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Not joined: the last handle may be dropped on a scheduler thread, which must not
        // wait for a tick. The thread exits at its next wake.
        drop(self.thread.take());
    }
}

fn run(engine: &Engine, mut feed: ChangeFeed, s: &Shared) {
    let wait = engine.tick_interval().max(Duration::from_millis(1));
    let mut pending: HashMap<Arc<str>, u64> = HashMap::new();
    let mut lagged = 0u64;
    let mut env = OwnedEnv::new();
    while !s.stop.load(Ordering::Acquire) {
        let mut next = feed.recv_timeout(wait);
        while let Some(ev) = next {
            match ev {
                FeedEvent::Changes(c) => {
                    for (name, count) in &c.changes {
                        pending.insert(name.clone(), *count);
                    }
                }
                FeedEvent::Lagged { missed } => lagged += missed,
            }
            next = feed.try_recv();
        }
        let stopped = engine.is_stopped();
        if (pending.is_empty() && lagged == 0) || !s.ready.swap(false, Ordering::AcqRel) {
            if stopped {
                // The feed is closed (its receives return at once): nothing more will come.
                return;
            }
            continue;
        }
        let server = *s.server.lock().unwrap_or_else(|e| e.into_inner());
        let sent = env.send_and_clear(&server, |env| {
            let list: Vec<(&str, u64)> = pending.iter().map(|(n, c)| (&**n, *c)).collect();
            (atoms::headcount_changes(), lagged, list).encode(env)
        });
        if sent.is_err() {
            if stopped {
                return;
            }
            // No such process (a server between crash and restart): keep the changes for the
            // next one, which attaches again.
            s.ready.store(true, Ordering::Release);
            continue;
        }
        pending.clear();
        lagged = 0;
    }
}

/// The `ChannelTransport` waker: tells the transport process datagrams wait, once per take.
pub(crate) struct OutWaker {
    notified: AtomicBool,
    to: LocalPid,
}

impl OutWaker {
    pub(crate) fn new(to: LocalPid) -> Arc<OutWaker> {
        Arc::new(OutWaker {
            notified: AtomicBool::new(false),
            to,
        })
    }

    /// Called by the engine thread after it queued datagrams.
    pub(crate) fn wake(&self) {
        // `set_waker` may call it once on the registering (scheduler) thread, where no message
        // can be sent this way: the transport process takes once after registering anyway.
        if rustler::thread::is_scheduler_thread() || self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        thread_local! {
            static ENV: std::cell::RefCell<OwnedEnv> = std::cell::RefCell::new(OwnedEnv::new());
        }
        let sent = ENV.with(|e| {
            e.borrow_mut()
                .send_and_clear(&self.to, |env| atoms::headcount_out().encode(env))
        });
        if sent.is_err() {
            self.notified.store(false, Ordering::Release);
        }
    }

    /// The transport process is about to take the datagrams: the next batch notifies again.
    pub(crate) fn taking(&self) {
        self.notified.store(false, Ordering::Release);
    }
}
