//! The NIF behind the `Headcount` Elixir module (`bindings/elixir/lib/headcount.ex`):
//! `Headcount.Native`'s functions.
//!
//! One engine per VM, started and stopped by the `Headcount` server process. The hot calls,
//! `join` and `leave`, are plain NIF calls on the calling scheduler thread: the engine's
//! `join` counts through that scheduler's own shard (claimed on its first join; the default
//! shard count is the number of schedulers), and the process's guard goes into the presence
//! table (`table.rs`), whose monitor ends it when the process exits.
//!
//! Every function returns a value for every input (atoms for the expected failures, which the
//! Elixir side turns into exceptions with a message); rustler turns a panic into an Erlang
//! exception rather than a VM crash, and no code here panics on input.

mod atoms;
mod config;
mod courier;
mod table;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use headcount::{ChannelTransport, Destination, Engine, Found, PeerAddr};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NewBinary, Term};

/// The running engine and what serves it.
struct Instance {
    engine: Engine,
    fingerprint: Vec<u8>,
    transport: Option<ChannelTransport>,
    out_waker: Mutex<Option<Arc<courier::OutWaker>>>,
    courier: courier::Courier,
}

/// The running instance; replaced only by `start` and `stop`.
static CURRENT: Mutex<Option<Arc<Instance>>> = Mutex::new(None);
/// Bumped by every `start` and `stop`: a scheduler's cached instance is stale when it differs.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of [`CURRENT`] and the generation it was read at: the hot calls read
    /// one shared word (never written while the engine runs) instead of taking a lock.
    static CACHED: RefCell<(u64, Option<Arc<Instance>>)> = const { RefCell::new((u64::MAX, None)) };
}

fn current() -> Option<Arc<Instance>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `f` with the running instance; `None` when none runs.
fn with<R>(f: impl FnOnce(&Instance) -> R) -> Option<R> {
    let generation = GENERATION.load(Ordering::Acquire);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != generation {
            // Read after the generation: a start or stop in between bumps it again, and the next
            // call reads anew.
            *c = (generation, current());
        }
        c.1.as_deref().map(f)
    })
}

/// A topic name as the engine takes it: UTF-8, at most 255 bytes.
fn topic_name<'a>(topic: &'a Binary<'_>) -> Option<&'a str> {
    let bytes = topic.as_slice();
    if bytes.len() > headcount::MAX_NAME_LEN {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

// ---- Lifecycle ---------------------------------------------------------------------------------

/// Starts the engine with `options` (a map from `Headcount.Options`), sending its per-tick
/// changes to `server`. `{:ok, :started}`; `{:ok, :attached}` if it runs already with the same
/// options (a restarted server); `{:error, :already_started}` if it runs with others;
/// `{:error, message}` if it cannot start (a port in use, a missing key file...).
#[rustler::nif(schedule = "DirtyIo")]
fn start<'a>(env: Env<'a>, options: Term<'a>, server: LocalPid) -> Term<'a> {
    let cfg = match config::decode(options) {
        Ok(c) => c,
        Err(e) => return (atoms::error(), e).encode(env),
    };
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = cur.as_ref() {
        if i.engine.is_stopped() {
            // Its thread ended (it cannot now, short of a bug): replaced, presences forgotten.
            *cur = None;
            GENERATION.fetch_add(1, Ordering::AcqRel);
            table::clear();
        } else if i.fingerprint == cfg.fingerprint {
            i.courier.redirect(server);
            return (atoms::ok(), atoms::attached()).encode(env);
        } else {
            return (atoms::error(), atoms::already_started()).encode(env);
        }
    }
    let fingerprint = cfg.fingerprint.clone();
    let transport = cfg.transport.clone();
    let engine = match cfg.start() {
        Ok(e) => e,
        Err(e) => return (atoms::error(), e).encode(env),
    };
    let courier = match courier::Courier::spawn(&engine, server) {
        Ok(c) => c,
        Err(e) => {
            engine.shutdown();
            return (atoms::error(), format!("cannot start a thread: {e}")).encode(env);
        }
    };
    *cur = Some(Arc::new(Instance {
        engine,
        fingerprint,
        transport,
        out_waker: Mutex::new(None),
        courier,
    }));
    GENERATION.fetch_add(1, Ordering::AcqRel);
    (atoms::ok(), atoms::started()).encode(env)
}

/// Stops the engine (a goodbye to the cluster, which drops this node's counts at once) and
/// forgets every presence. Returns the datagrams left for a `cluster: :erlang` transport to
/// carry (the goodbye among them; `[]` over UDP), or `:not_started`.
#[rustler::nif(schedule = "DirtyIo")]
fn stop(env: Env<'_>) -> Term<'_> {
    let taken = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
    GENERATION.fetch_add(1, Ordering::AcqRel);
    let Some(i) = taken else {
        return atoms::not_started().encode(env);
    };
    i.engine.shutdown();
    table::clear();
    match &i.transport {
        Some(t) => {
            t.clear_waker();
            datagrams(env, t)
        }
        None => Vec::<Term<'_>>::new().encode(env),
    }
}

/// The changes message was handled: the courier may send the next.
#[rustler::nif]
fn ack() -> Atom {
    with(|i| i.courier.ack()).map_or(atoms::not_started(), |_| atoms::ok())
}

// ---- Presences ---------------------------------------------------------------------------------

fn join_as(pid: &LocalPid, topic: &Binary<'_>) -> Atom {
    let Some(name) = topic_name(topic) else {
        return atoms::bad_topic();
    };
    with(|i| {
        table::join(pid, i.engine.join(i.engine.topic(name)));
        atoms::ok()
    })
    .unwrap_or(atoms::not_started())
}

/// The calling process joins `topic` until it leaves or exits.
#[rustler::nif]
fn join<'a>(env: Env<'a>, topic: Binary<'a>) -> Atom {
    join_as(&env.pid(), &topic)
}

/// `pid` (a local process) joins `topic` until it leaves or exits; `:not_local` for a pid of
/// another node, `:noproc` if it is not alive.
#[rustler::nif]
fn join_pid<'a>(env: Env<'a>, pid: Term<'a>, topic: Binary<'a>) -> Atom {
    match pid.decode::<LocalPid>() {
        // (A process that exits right after this check leaves as soon as the watcher finds
        // it gone.)
        Ok(p) if !env.is_process_alive(p) => atoms::noproc(),
        Ok(p) => join_as(&p, &topic),
        Err(_) => atoms::not_local(),
    }
}

fn leave_as<'a>(env: Env<'a>, pid: &LocalPid, topic: &Binary<'a>) -> Atom {
    let Some(name) = topic_name(topic) else {
        return atoms::bad_topic();
    };
    with(|i| match i.engine.lookup(name) {
        Some(t) if table::leave(env, pid, t) => atoms::ok(),
        _ => atoms::not_joined(),
    })
    .unwrap_or(atoms::not_started())
}

/// One presence of the calling process in `topic` leaves; `:not_joined` if it has none there.
#[rustler::nif]
fn leave<'a>(env: Env<'a>, topic: Binary<'a>) -> Atom {
    leave_as(env, &env.pid(), &topic)
}

/// One presence of `pid` in `topic` leaves.
#[rustler::nif]
fn leave_pid<'a>(env: Env<'a>, pid: Term<'a>, topic: Binary<'a>) -> Atom {
    match pid.decode::<LocalPid>() {
        Ok(p) => leave_as(env, &p, &topic),
        Err(_) => atoms::not_local(),
    }
}

/// The topics `pid` is present in, one entry per presence.
#[rustler::nif]
fn presences<'a>(env: Env<'a>, pid: Term<'a>) -> Term<'a> {
    let Ok(p) = pid.decode::<LocalPid>() else {
        return atoms::not_local().encode(env);
    };
    with(|i| {
        table::presences_of(&p)
            .into_iter()
            .filter_map(|t| i.engine.describe(t).map(|(name, _)| name.to_string()))
            .collect::<Vec<String>>()
            .encode(env)
    })
    .unwrap_or_else(|| atoms::not_started().encode(env))
}

// ---- Reads -------------------------------------------------------------------------------------

fn read<'a, T: Encoder>(env: Env<'a>, f: impl FnOnce(&Engine) -> T) -> Term<'a> {
    with(|i| f(&i.engine).encode(env)).unwrap_or_else(|| atoms::not_started().encode(env))
}

/// The cluster-wide count of `topic` as of the last tick.
#[rustler::nif]
fn count<'a>(env: Env<'a>, topic: Binary<'a>) -> Term<'a> {
    match topic_name(&topic) {
        Some(name) => read(env, |e| e.count_by_name(name)),
        None => atoms::bad_topic().encode(env),
    }
}

/// This node's count of `topic` as of the last tick.
#[rustler::nif]
fn count_local<'a>(env: Env<'a>, topic: Binary<'a>) -> Term<'a> {
    match topic_name(&topic) {
        Some(name) => read(env, |e| e.lookup(name).map_or(0, |t| e.local_count(t))),
        None => atoms::bad_topic().encode(env),
    }
}

/// The cluster-wide total.
#[rustler::nif]
fn total(env: Env<'_>) -> Term<'_> {
    read(env, Engine::total)
}

/// This node's total.
#[rustler::nif]
fn total_local(env: Env<'_>) -> Term<'_> {
    read(env, Engine::local_total)
}

/// The `k` largest topics, largest first.
#[rustler::nif]
fn top(env: Env<'_>, k: usize) -> Term<'_> {
    read(env, |e| e.top(k))
}

/// Runs a tick now and waits for it.
#[rustler::nif(schedule = "DirtyIo")]
fn sync(env: Env<'_>) -> Term<'_> {
    // Not through `with`: a dirty scheduler's cache would keep an instance alive for nothing.
    match current() {
        Some(i) => {
            i.engine.sync();
            atoms::ok().encode(env)
        }
        None => atoms::not_started().encode(env),
    }
}

#[derive(rustler::NifMap)]
struct NodeView {
    id: u64,
    addr: String,
    /// The transport's number for the peer (`cluster: :erlang`).
    peer: Option<u64>,
    found: Atom,
    alive: bool,
    converged: bool,
    topics: usize,
    total: u64,
    last_heard_ms: u64,
}

fn found(f: Option<Found>) -> Atom {
    match f {
        Some(Found::Configured) => atoms::configured(),
        Some(Found::Dns) => atoms::dns(),
        Some(Found::Learned) => atoms::learned(),
        Some(Found::Multicast) => atoms::multicast(),
        Some(Found::Custom) => atoms::custom(),
        _ => atoms::unknown(),
    }
}

/// The other nodes of the cluster, live and recently dead.
#[rustler::nif]
fn nodes(env: Env<'_>) -> Term<'_> {
    read(env, |e| {
        e.nodes()
            .into_iter()
            .map(|n| NodeView {
                id: n.node,
                addr: n.addr.to_string(),
                peer: PeerAddr::from_socket_addr(n.addr).map(|p| p.0),
                found: found(n.found),
                alive: n.alive,
                converged: n.converged,
                topics: n.topics,
                total: n.total,
                last_heard_ms: u64::try_from(n.last_heard.as_millis()).unwrap_or(u64::MAX),
            })
            .collect::<Vec<_>>()
    })
}

#[derive(rustler::NifMap)]
struct InfoView {
    node_id: Option<u64>,
    local_addr: Option<String>,
    shards: usize,
    tick_ms: u64,
    processes: usize,
    presences: usize,
    /// First joins whose process the watcher thread has not monitored yet (a backlog).
    pending_monitors: usize,
    topics: usize,
    /// Joins and leaves that went through the shared core (a thread without a shard).
    shared_ops: u64,
    free_shards: usize,
    dns_error: Option<String>,
}

/// The engine's settings and counters.
#[rustler::nif]
fn info(env: Env<'_>) -> Term<'_> {
    read(env, |e| {
        let s = e.stats();
        let (processes, presences) = table::size();
        InfoView {
            node_id: e.node_id(),
            local_addr: e.local_addr().map(|a| a.to_string()),
            shards: e.shards(),
            tick_ms: u64::try_from(e.tick_interval().as_millis()).unwrap_or(u64::MAX),
            processes,
            presences,
            pending_monitors: table::pending_monitors(),
            topics: s.topics,
            shared_ops: s.shared_ops,
            free_shards: s.free_shards,
            dns_error: e.dns_error(),
        }
    })
}

// ---- cluster: :erlang ---------------------------------------------------------------------------

fn transport<'a>(
    env: Env<'a>,
    f: impl FnOnce(&Instance, &ChannelTransport) -> Term<'a>,
) -> Term<'a> {
    with(|i| match &i.transport {
        Some(t) => f(i, t),
        None => atoms::no_transport().encode(env),
    })
    .unwrap_or_else(|| atoms::not_started().encode(env))
}

/// `pid` carries the datagrams from now on: it gets `:headcount_out` when some wait.
#[rustler::nif]
fn transport_attach<'a>(env: Env<'a>, pid: LocalPid) -> Term<'a> {
    transport(env, |i, t| {
        let w = courier::OutWaker::new(pid);
        *i.out_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
        t.set_waker(move || w.wake());
        atoms::ok().encode(env)
    })
}

/// The datagrams waiting: `[{:all | peer, binary}]`.
#[rustler::nif]
fn transport_take(env: Env<'_>) -> Term<'_> {
    transport(env, |i, t| {
        if let Some(w) = i
            .out_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.taking();
        }
        datagrams(env, t)
    })
}

fn datagrams<'a>(env: Env<'a>, t: &ChannelTransport) -> Term<'a> {
    let out: Vec<Term<'_>> = t
        .drain()
        .into_iter()
        .map(|o| {
            let mut bin = NewBinary::new(env, o.bytes.len());
            bin.as_mut_slice().copy_from_slice(&o.bytes);
            let bin: Term<'_> = Binary::from(bin).to_term(env);
            match o.to {
                Destination::All => (atoms::all(), bin).encode(env),
                Destination::Peer(p) => (p.0, bin).encode(env),
            }
        })
        .collect();
    out.encode(env)
}

/// A datagram from the peer numbered `peer`.
#[rustler::nif]
fn transport_deliver<'a>(env: Env<'a>, peer: u64, bytes: Binary<'a>) -> Term<'a> {
    transport(env, |_, t| {
        match t.deliver(PeerAddr(peer), bytes.as_slice()) {
            Ok(()) => atoms::ok().encode(env),
            Err(headcount::DeliverError::Full) => atoms::full().encode(env),
            Err(headcount::DeliverError::TooLarge) => atoms::too_large().encode(env),
            Err(_) => atoms::closed().encode(env),
        }
    })
}

/// The peer numbered `peer` is gone (its node went down): its counts leave now.
#[rustler::nif]
fn transport_gone(env: Env<'_>, peer: u64) -> Term<'_> {
    transport(env, |_, t| {
        t.peer_gone(PeerAddr(peer));
        atoms::ok().encode(env)
    })
}

rustler::init!("Elixir.Headcount.Native");
