//! The server: [`run`] serves RESP on the listeners it is given until its [`Shutdown`] is
//! triggered. `headcount serve` is a thin shell over it (flags, logging, signals); tests and
//! programs that embed the server call it in-process.
//!
//! ```
//! use headcount_server::config::Settings;
//! use headcount_server::resp::client::{Client, Value};
//! use headcount_server::serve::{self, Shutdown};
//!
//! let (listen, settings) =
//!     Settings::from_args(["--standalone", "--listen", "127.0.0.1:0", "--workers", "1"])?;
//! let listeners = serve::bind(listen, settings.workers)?;
//! let addr = listeners[0].local_addr()?;
//! let shutdown = Shutdown::new();
//! let stop = shutdown.clone();
//! let server = std::thread::spawn(move || serve::run(listeners, settings, stop));
//!
//! let mut c = Client::connect(addr)?;
//! assert_eq!(c.cmd(&["JOIN", "room:1"])?, Value::Int(1));
//! shutdown.trigger();
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it is built, and the shape to follow when linking headcount into your own
//! latency-sensitive server:
//!
//! 1. Start one [`headcount::Engine`] with one shard per worker thread.
//! 2. Give each worker thread its own event loop, its own listener (`SO_REUSEPORT`: the kernel
//!    spreads connections over them) and its own claimed [`headcount::Shard`] (`worker.rs`).
//! 3. Keep a connection's [`headcount::Presence`] guards with the connection: when it closes,
//!    dropping them leaves every topic it joined (`conn.rs`).
//! 4. Read counts from the engine anywhere (`count`, `total`, `top`): they are the cluster's.

mod conn;
mod memory;
mod worker;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use socket2::{Domain, Protocol, Socket, Type};

pub use crate::shutdown::Shutdown;

use crate::config::{ConfigError, Settings};
use crate::shared::{Shared, WorkerStats};

/// One listener per worker on the same address (`SO_REUSEPORT`), for [`run`]. The first is
/// bound alone first, without `SO_REUSEPORT`, so that an address another process already
/// serves is an error here instead of a silent split of its traffic. Port 0 binds a free port
/// (the same for every listener).
pub fn bind(addr: SocketAddr, n: usize) -> Result<Vec<StdListener>, ConfigError> {
    let in_use = |e: std::io::Error| ConfigError(format!("--listen {addr}: {e}"));
    let domain = Domain::for_address(addr);
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(in_use)?;
    probe.set_reuse_address(true).map_err(in_use)?;
    probe.bind(&addr.into()).map_err(in_use)?;
    let addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    drop(probe);
    (0..n.max(1))
        .map(|_| {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(in_use)?;
            s.set_reuse_address(true).map_err(in_use)?;
            s.set_reuse_port(true).map_err(in_use)?;
            s.set_nonblocking(true).map_err(in_use)?;
            s.bind(&addr.into()).map_err(in_use)?;
            s.listen(4096).map_err(in_use)?;
            Ok(s.into())
        })
        .collect()
}

/// Serves RESP on `listeners` (one worker thread each, whatever `settings.workers` says: see
/// [`bind`]) with `settings`, until
/// `shutdown` is triggered; then closes the listeners and every connection (their presences
/// leave), says goodbye to the cluster (peers drop this node's counts at once) and returns.
///
/// Logs through `tracing` (`headcount serve: listening on ADDR` once it serves); installs no
/// subscriber and no signal handler: that is the caller's (the `headcount` binary's) business.
pub fn run(
    listeners: Vec<StdListener>,
    settings: Settings,
    shutdown: Shutdown,
) -> Result<(), ConfigError> {
    let st = settings;
    if listeners.is_empty() {
        return Err(ConfigError("serve::run: no listener".into()));
    }
    let workers = listeners.len();
    // Like Redis: take every descriptor the hard limit allows, for many idle connections.
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(nofile = n, "open-file limit");
    }
    let listen = listeners[0]
        .local_addr()
        .map_err(|e| ConfigError(format!("--listen: {e}")))?;
    // A stable identity: a restart replaces this node's old counts on every peer at once.
    let (node_id, node_from) = match st.node_id {
        Some(id) => (id, "--node-id".to_string()),
        None => crate::identity::default_node_id(&st.cluster.name, listen),
    };
    let engine = st
        .cluster
        .builder()?
        .node_id(node_id)
        .shards(workers)
        .max_topics(st.max_topics)
        .retire_after(st.retire_after)
        .pin(st.pin)
        .start()?;
    let stats: Vec<_> = (0..workers)
        .map(|_| Arc::new(CachePadded::new(WorkerStats::default())))
        .collect();
    let config_pairs = vec![
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("bind", listen.ip().to_string()),
        ("port", listen.port().to_string()),
        ("maxclients", st.limits.max_connections.to_string()),
        ("maxmemory-clients", st.limits.max_client_memory.to_string()),
        ("workers", workers.to_string()),
        (
            "tick",
            humantime::format_duration(engine.tick_interval()).to_string(),
        ),
        ("cluster", st.cluster.describe()),
    ];
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        limits: st.limits,
        password: st.password.clone(),
        listen,
        workers,
        started: Instant::now(),
        counting: st.counting,
        client_memory: CachePadded::new(AtomicUsize::new(0)),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        settings: config_pairs,
    });
    let metrics = match st.metrics {
        Some(addr) => Some(crate::metrics::serve(addr, shared.clone(), st.metrics_top)?),
        None => None,
    };

    let mut threads = Vec::new();
    let started = (|| {
        for (i, l) in listeners.into_iter().enumerate() {
            let failed = |e: std::io::Error| ConfigError(format!("worker {i}: {e}"));
            let poll = mio::Poll::new().map_err(failed)?;
            let waker = mio::Waker::new(poll.registry(), worker::WAKER).map_err(failed)?;
            shutdown.on_trigger(move || {
                let _ = waker.wake();
            });
            let w = worker::Worker::new(
                poll,
                mio::net::TcpListener::from_std(l),
                engine.shard()?,
                shared.clone(),
                stats[i].clone(),
            )
            .map_err(failed)?;
            let pin = st.pin;
            let t = std::thread::Builder::new()
                .name(format!("headcount-worker-{i}"))
                .spawn(move || {
                    // Off the engine's CPU (headcount's one pinning rule).
                    if pin && !headcount::pin_worker(i) {
                        tracing::warn!("--pin: could not pin worker {i}; running unpinned");
                    }
                    w.run();
                })
                .map_err(failed)?;
            threads.push(t);
        }
        Ok::<(), ConfigError>(())
    })();
    if let Err(e) = started {
        // Stop the workers that did start, before the error goes up.
        shutdown.trigger();
        for t in threads {
            let _ = t.join();
        }
        engine.shutdown();
        return Err(e);
    }
    tracing::info!(
        %listen,
        workers,
        cluster = %st.cluster.describe(),
        node = format!("{:016x}", engine.node_id().unwrap_or(0)),
        node_id_from = %node_from,
        key = %st.cluster.key_description(),
        auth = st.password.is_some(),
        "headcount serve: listening on {listen}"
    );
    let watchdog = crate::watchdog::spawn(engine.clone(), shutdown.clone());

    shutdown.wait();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    for t in threads {
        let _ = t.join();
    }
    drop(metrics);
    // The goodbye: peers drop this node's counts at once instead of after dead-after.
    engine.shutdown();
    tracing::info!("stopped");
    Ok(())
}
