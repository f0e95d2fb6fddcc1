//! `headcount serve`: a Redis-protocol (RESP) sidecar over one headcount engine.
//!
//! The shape to copy when linking headcount into your own latency-sensitive server:
//!
//! 1. Start one [`Engine`] with one shard per worker thread.
//! 2. Give each worker thread its own event loop, its own listener (`SO_REUSEPORT`: the kernel
//!    spreads connections over them) and its own claimed [`headcount::Shard`].
//! 3. Keep a connection's [`headcount::Presence`] guards with the connection: when it closes,
//!    dropping them leaves every topic it joined.
//! 4. Read counts from the engine anywhere (`count`, `total`, `top`): they are the cluster's.

mod commands;
mod worker;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use headcount::Engine;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Cluster, ClusterArgs, ConfigError, FileConfig};
use crate::resp;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to serve RESP on [default: 127.0.0.1:7379].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Worker threads, each with its own listener, event loop and shard [default: one per CPU].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Pin each worker (and the engine thread) to a CPU.
    #[arg(long)]
    pin: bool,
    /// Password clients must give with AUTH (or HELLO … AUTH).
    #[arg(long, value_name = "PASSWORD")]
    requirepass: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Topics listed with their counts in the metrics [default: 20].
    #[arg(long, value_name = "N")]
    metrics_top: Option<usize>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Most client connections at once [default: 1000000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Most presences one connection may hold [default: 10000].
    #[arg(long, value_name = "N")]
    max_topics_per_connection: Option<usize>,
    /// Most arguments in one command [default: 1024].
    #[arg(long, value_name = "N")]
    max_args: Option<usize>,
    /// Longest argument, in bytes [default: 4096].
    #[arg(long, value_name = "BYTES")]
    max_arg_len: Option<usize>,
    /// Unsent replies, in bytes, past which a client is closed. A client that stops reading is
    /// paused (neither read nor answered) at 256 KiB of them, so only one reply that large
    /// takes it past this [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    max_output: Option<usize>,
    /// Bytes all clients' buffers (partial requests and unsent replies) may hold together:
    /// past it, clients with unsent replies are not read and the largest holders are closed
    /// [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    max_client_memory: Option<usize>,
    /// TCP keepalive idle time: a client whose machine vanished without closing is detected
    /// (and its presences leave) about this long plus 30 s later; `0s` turns it off
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    tcp_keepalive: Option<Duration>,
    /// Topic table size: most topics known at once, local and remote [default: 1048576].
    #[arg(long, value_name = "N")]
    max_topics: Option<usize>,
    /// Parse and answer JOIN and LEAVE but count nothing: a baseline for measuring what
    /// counting costs (`headcount-perf overhead`). Not for production.
    #[arg(long)]
    no_count: bool,
    /// This node's id in the cluster: 16 hex digits, or any name (hashed). It must stay the same
    /// across restarts and differ between servers [default: derived from the cluster name, the
    /// host name and the listen address].
    #[arg(long, value_name = "ID|NAME")]
    node_id: Option<String>,
    /// How long a topic's count must stay zero before its id is reused [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retire_after: Option<Duration>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Limits on what one client may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request: resp::Limits,
    pub max_connections: usize,
    pub max_topics_per_connection: usize,
    pub max_output: usize,
    /// Bytes all connections' buffers may hold together.
    pub max_client_memory: usize,
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
}

/// Counters one worker writes and everyone may read. One writer each, so updates are a plain
/// load and store (no locked instruction), on a cache line no other worker writes.
#[derive(Default)]
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
    pub limits: Limits,
    pub password: Option<String>,
    pub listen: SocketAddr,
    pub workers: usize,
    pub started: Instant,
    /// False with `--no-count`: commands are parsed and answered, nothing is counted.
    pub counting: bool,
    /// Bytes held in all connections' buffers, over all workers. Each worker adds what its
    /// connections' buffers gain or lose at the end of a turn that changed their size.
    pub client_memory: CachePadded<AtomicUsize>,
    stats: Vec<Arc<CachePadded<WorkerStats>>>,
    stop: AtomicBool,
    settings: Vec<(&'static str, String)>,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
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

/// The least `--max-client-memory`: a few clients' worth of buffers.
const MIN_CLIENT_MEMORY: usize = 1 << 20;

/// The merged settings of `serve`.
#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    workers: usize,
    pin: bool,
    password: Option<String>,
    metrics: Option<SocketAddr>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    metrics_top: usize,
    json_logs: bool,
    limits: Limits,
    max_topics: usize,
    counting: bool,
    /// `--node-id` as given (`None`: derived once the listen address is known).
    node_id: Option<u64>,
    retire_after: Duration,
    cluster: Cluster,
}

fn settings(a: &Args) -> Result<Settings, ConfigError> {
    let f = FileConfig::load(a.cluster.config.as_deref())?;
    let cluster = Cluster::merge(&a.cluster, &f)?;
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7379)));
    let workers = a.workers.or(f.workers).unwrap_or_else(headcount::cpus);
    if !(1..=1024).contains(&workers) {
        return Err(ConfigError(format!(
            "--workers {workers}: must be between 1 and 1024"
        )));
    }
    let password = a.requirepass.clone().or_else(|| f.requirepass.clone());
    if password.as_deref() == Some("") {
        return Err(ConfigError("--requirepass: the password is empty".into()));
    }
    if !listen.ip().is_loopback() && password.is_none() && !cluster.insecure {
        return Err(ConfigError(format!(
            "--listen {listen} is not a loopback address: set --requirepass, or --insecure to \
             let anyone who can reach it change the counts"
        )));
    }
    let log_format = a
        .log_format
        .clone()
        .or_else(|| f.log_format.clone())
        .unwrap_or_else(|| "text".into());
    let json_logs = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            return Err(ConfigError(format!(
                "--log-format {other:?}: must be `text` or `json`"
            )));
        }
    };
    let positive = |name: &str, v: Option<usize>, file: Option<usize>, default: usize| {
        let v = v.or(file).unwrap_or(default);
        if v == 0 {
            Err(ConfigError(format!("--{name} 0: must be at least 1")))
        } else {
            Ok(v)
        }
    };
    let limits = Limits {
        request: resp::Limits {
            max_args: positive("max-args", a.max_args, f.max_args, 1024)?,
            max_arg_len: positive("max-arg-len", a.max_arg_len, f.max_arg_len, 4096)?,
        },
        max_connections: positive(
            "max-connections",
            a.max_connections,
            f.max_connections,
            1_000_000,
        )?,
        max_topics_per_connection: positive(
            "max-topics-per-connection",
            a.max_topics_per_connection,
            f.max_topics_per_connection,
            10_000,
        )?,
        // With pausing, only one reply can take a client past 256 KiB; the largest (TOP 10000
        // of 255-byte names) is under 3 MiB, so 16 MiB closes no client that reads.
        max_output: positive("max-output", a.max_output, f.max_output, 16 << 20)?,
        max_client_memory: a
            .max_client_memory
            .or(f.max_client_memory)
            .unwrap_or(1 << 30),
        keepalive: {
            let d = match a.tcp_keepalive {
                Some(d) => d,
                None => match &f.tcp_keepalive {
                    Some(s) => humantime::parse_duration(s).map_err(|e| {
                        ConfigError(format!("config key `tcp_keepalive`: {s:?}: {e}"))
                    })?,
                    None => Duration::from_secs(60),
                },
            };
            (!d.is_zero()).then_some(d)
        },
    };
    if limits.max_client_memory < MIN_CLIENT_MEMORY {
        return Err(ConfigError(format!(
            "--max-client-memory {}: must be at least {MIN_CLIENT_MEMORY} (1 MiB): it is shared \
             by every client's buffers",
            limits.max_client_memory
        )));
    }
    if limits.request.max_args > 1 << 20 || limits.request.max_arg_len > 512 << 20 {
        return Err(ConfigError(format!(
            "--max-args {} / --max-arg-len {}: at most 1048576 arguments of 512 MiB",
            limits.request.max_args, limits.request.max_arg_len
        )));
    }
    Ok(Settings {
        listen,
        workers,
        pin: a.pin || f.pin.unwrap_or(false),
        password,
        metrics: a.metrics.or(f.metrics),
        metrics_top: a.metrics_top.or(f.metrics_top).unwrap_or(20),
        json_logs,
        limits,
        max_topics: positive("max-topics", a.max_topics, f.max_topics, 1 << 20)?,
        counting: !a.no_count,
        node_id: match a.node_id.as_ref().or(f.node_id.as_ref()) {
            None => None,
            Some(v) => Some(crate::identity::parse_node_id(v).ok_or_else(|| {
                ConfigError(format!("--node-id {v:?}: give 16 hex digits or a name"))
            })?),
        },
        retire_after: match a.retire_after {
            Some(d) => d,
            None => match &f.retire_after {
                Some(v) => humantime::parse_duration(v)
                    .map_err(|e| ConfigError(format!("config key `retire_after`: {v:?}: {e}")))?,
                None => Duration::from_secs(30),
            },
        },
        cluster,
    })
}

/// One listener per worker on the same address (`SO_REUSEPORT`). The first is bound alone
/// first, without `SO_REUSEPORT`, so that an address another process already serves is an
/// error here instead of a silent split of its traffic.
fn listeners(addr: SocketAddr, n: usize) -> Result<Vec<StdListener>, ConfigError> {
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
    (0..n)
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

pub fn run(a: Args) -> Result<ExitCode, ConfigError> {
    let st = settings(&a)?;
    crate::logging::init(st.json_logs);
    run_with(st)
}

fn run_with(st: Settings) -> Result<ExitCode, ConfigError> {
    // Like Redis: take every descriptor the hard limit allows, for many idle connections.
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(nofile = n, "open-file limit");
    }
    let listeners = listeners(st.listen, st.workers)?;
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
        .shards(st.workers)
        .max_topics(st.max_topics)
        .retire_after(st.retire_after)
        .pin(st.pin)
        .start()?;
    let stats: Vec<_> = (0..st.workers)
        .map(|_| Arc::new(CachePadded::new(WorkerStats::default())))
        .collect();
    let settings = vec![
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("bind", listen.ip().to_string()),
        ("port", listen.port().to_string()),
        ("maxclients", st.limits.max_connections.to_string()),
        ("maxmemory-clients", st.limits.max_client_memory.to_string()),
        ("workers", st.workers.to_string()),
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
        workers: st.workers,
        started: Instant::now(),
        counting: st.counting,
        client_memory: CachePadded::new(AtomicUsize::new(0)),
        stats: stats.clone(),
        stop: AtomicBool::new(false),
        settings,
    });

    #[cfg(feature = "metrics")]
    let metrics = match st.metrics {
        Some(addr) => Some(crate::metrics::serve(addr, shared.clone(), st.metrics_top)?),
        None => None,
    };
    #[cfg(not(feature = "metrics"))]
    if st.metrics.is_some() {
        return Err(ConfigError(
            "--metrics: this build has no metrics (the `metrics` feature is off)".into(),
        ));
    }

    let signals = watch_signals();
    let cores = if st.pin { pin_targets() } else { Vec::new() };
    let mut wakers = Vec::new();
    let mut threads = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let poll = mio::Poll::new().map_err(|e| ConfigError(format!("worker {i}: {e}")))?;
        let waker = mio::Waker::new(poll.registry(), worker::WAKER)
            .map_err(|e| ConfigError(format!("worker {i}: {e}")))?;
        wakers.push(waker);
        let shard = engine.shard()?;
        let w = worker::Worker::new(
            poll,
            mio::net::TcpListener::from_std(l),
            shard,
            shared.clone(),
            stats[i].clone(),
        )
        .map_err(|e| ConfigError(format!("worker {i}: {e}")))?;
        let core = cores.get(i % cores.len().max(1)).copied();
        let t = std::thread::Builder::new()
            .name(format!("headcount-worker-{i}"))
            .spawn(move || {
                pin(core);
                w.run();
            })
            .map_err(|e| ConfigError(format!("worker {i}: {e}")))?;
        threads.push(t);
    }
    tracing::info!(
        %listen,
        workers = st.workers,
        cluster = %st.cluster.describe(),
        node = format!("{:016x}", engine.node_id().unwrap_or(0)),
        node_id_from = %node_from,
        key = %st.cluster.key_description(),
        auth = st.password.is_some(),
        "headcount serve: listening on {listen}"
    );
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    let watchdog = crate::watchdog::spawn(engine.clone(), watchdog_stop.clone());

    let signal = wait_for_signal(signals);
    tracing::info!(
        signal,
        "stopping: closing listeners and connections, then saying goodbye"
    );
    shared.stop.store(true, Ordering::Relaxed);
    watchdog_stop.store(true, Ordering::Relaxed);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    for w in &wakers {
        let _ = w.wake();
    }
    for t in threads {
        let _ = t.join();
    }
    #[cfg(feature = "metrics")]
    drop(metrics);
    // The goodbye: peers drop this node's counts at once instead of after dead-after.
    engine.shutdown();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Watches for SIGTERM and SIGINT from now on (before the "listening" line is logged, so that a
/// supervisor that signals as soon as it sees it is never too early).
fn watch_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| tracing::error!(error = %e, "cannot watch for signals; serving until killed"))
        .ok()
}

/// Blocks until SIGTERM or SIGINT; returns its name.
fn wait_for_signal(signals: Option<signal_hook::iterator::Signals>) -> &'static str {
    match signals {
        Some(mut s) => match s.forever().next() {
            Some(signal_hook::consts::SIGINT) => "SIGINT",
            _ => "SIGTERM",
        },
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

#[cfg(feature = "affinity")]
fn pin_targets() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

#[cfg(not(feature = "affinity"))]
fn pin_targets() -> Vec<()> {
    tracing::warn!("--pin: this build has no affinity support; not pinning");
    Vec::new()
}

#[cfg(feature = "affinity")]
fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(c) = core {
        core_affinity::set_for_current(c);
    }
}

#[cfg(not(feature = "affinity"))]
fn pin(_: Option<()>) {}
