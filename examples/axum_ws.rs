//! Chat rooms over WebSockets with axum: every open WebSocket is one user present in one room,
//! and every user is told "N online" — the room's count over the whole cluster — whenever it
//! changes.
//!
//! - `GET /ws/{room}` upgrades to a WebSocket. The connection holds a [`Presence`] in `room` for
//!   as long as it is open (a room name over 255 bytes gets `400 Bad Request`), and is sent
//!   `"N online"` text messages: the count when it connects, then each time it changes.
//! - `GET /count/{room}` answers the room's cluster-wide count as plain text.
//!
//! Two instances on one machine, found over loopback multicast with no other flag:
//!
//! ```sh
//! cargo run --example axum_ws -- --http 127.0.0.1:3000
//! cargo run --example axum_ws -- --http 127.0.0.1:3001
//! websocat ws://127.0.0.1:3000/ws/lobby     # "1 online" (maybe "0 online" first); Ctrl-C leaves
//! websocat ws://127.0.0.1:3001/ws/lobby     # both print "2 online"
//! curl http://127.0.0.1:3001/count/lobby    # 2
//! ```
//!
//! Where multicast is missing (most clouds), list the peers instead:
//! `--cluster-bind 127.0.0.1:7400 --peers 127.0.0.1:7401` on one instance and
//! `--cluster-bind 127.0.0.1:7401 --peers 127.0.0.1:7400` on the other. Off loopback the engine
//! refuses to run without `--key-file PATH` (the same secret on every instance).
//!
//! The shape to copy:
//!
//! - the runtime is built with [`Engine::bind_runtime`], with as many shards as worker threads
//!   and `claim_on_join(false)`: each worker thread owns a shard, so [`Engine::join`] in a
//!   handler and the drop of a [`Presence`] in any task count on the worker's own memory;
//! - one task reads the change feed ([`Engine::changes`], as an [`AsyncChangeFeed`]) and fans
//!   the counts out to the rooms that have connections here, through a `tokio::sync::watch`
//!   per room: a slow connection only ever skips to the newest count, it never holds up anyone;
//! - on Ctrl-C (or, with `--exit-on-stdin-close`, when standard input closes) the server stops
//!   accepting, closes every WebSocket with "going away", and stops the engine, which tells its
//!   peers to drop this instance's counts at once.
//!
//! Flags: `--http ADDR` (default 127.0.0.1:3000), `--workers N` (default: one per CPU),
//! `--cluster NAME` (default `axum-ws`), `--key-file PATH`, `--cluster-bind ADDR` with
//! `--peers ADDR[,ADDR…]` (unicast instead of multicast), `--exit-on-stdin-close`.
//!
//! The first line printed is `listening on http://ADDR` (useful with `--http 127.0.0.1:0`).
//! `tests/examples.rs` runs two instances of this file and checks every count against its
//! clients.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use headcount::{AsyncChangeFeed, Engine, FeedEvent, Presence};
use tokio::sync::{oneshot, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The loopback multicast group the instances find each other on: not `headcount serve`'s
/// ([`headcount::DEFAULT_GROUP`], port 7380), whose nodes would refuse these datagrams (another
/// cluster, another key) and log them.
const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 70, 77), 7381);

/// How one instance runs (the command line, parsed).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where HTTP listens (port 0: any free port).
    pub http: SocketAddr,
    /// Runtime worker threads, and as many shards.
    pub workers: usize,
    /// The engine's tick: counts are at most about this old.
    pub tick: Duration,
    /// Only instances with the same cluster name count each other.
    pub cluster: String,
    /// The cluster key (required off loopback).
    pub key_file: Option<PathBuf>,
    /// `Some(bind)`: unicast from `bind` to `peers`; `None`: loopback multicast.
    pub cluster_bind: Option<SocketAddr>,
    /// The other instances' `cluster_bind` addresses.
    pub peers: Vec<SocketAddr>,
    /// Also stop when standard input closes (for scripts that spawn the server).
    pub exit_on_stdin_close: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: SocketAddr::from(([127, 0, 0, 1], 3000)),
            workers: headcount::cpus(),
            tick: Duration::from_millis(100),
            cluster: "axum-ws".to_string(),
            key_file: None,
            cluster_bind: None,
            peers: Vec::new(),
            exit_on_stdin_close: false,
        }
    }
}

impl Config {
    /// Parses the flags listed in the module docs.
    pub fn from_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut c = Config::default();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--http" => c.http = parse(&flag, value()?)?,
                "--workers" => c.workers = parse(&flag, value()?)?,
                "--cluster" => c.cluster = value()?,
                "--key-file" => c.key_file = Some(value()?.into()),
                "--cluster-bind" => c.cluster_bind = Some(parse(&flag, value()?)?),
                "--peers" => {
                    for peer in value()?.split(',') {
                        c.peers.push(parse(&flag, peer.trim())?);
                    }
                }
                "--exit-on-stdin-close" => c.exit_on_stdin_close = true,
                _ => return Err(format!("unknown flag {flag} (see examples/axum_ws.rs)")),
            }
        }
        if c.cluster_bind.is_none() && !c.peers.is_empty() {
            return Err("--peers needs --cluster-bind".into());
        }
        Ok(c)
    }

    /// The engine this instance counts with.
    fn engine(&self) -> Result<Engine, headcount::Error> {
        let mut b = Engine::builder()
            .shards(self.workers)
            // Only the runtime's workers own shards (`bind_runtime` below): a stray thread
            // counts through the shared path instead of taking a shard a worker needs.
            .claim_on_join(false)
            .tick(self.tick)
            .cluster_name(&self.cluster);
        b = match self.cluster_bind {
            Some(bind) => b.unicast(bind, self.peers.iter().copied()),
            None => b.multicast(GROUP),
        };
        if let Some(path) = &self.key_file {
            b = b.cluster_key_file(path);
        }
        b.start()
    }
}

fn parse<T>(flag: &str, value: impl AsRef<str>) -> Result<T, String>
where
    T: std::str::FromStr<Err: std::fmt::Display>,
{
    let value = value.as_ref();
    value.parse().map_err(|e| format!("{flag} {value}: {e}"))
}

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("axum_ws: {e}");
            return ExitCode::from(2);
        }
    };
    let stdin_closed = config.exit_on_stdin_close.then(stdin_closed);
    let shutdown = async move {
        match stdin_closed {
            Some(closed) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = closed => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let listening = |addr| println!("listening on http://{addr}");
    match run(config, shutdown, listening) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum_ws: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when standard input reaches its end. Read on a plain thread: tokio's stdin runs on
/// the runtime's blocking pool, whose threads `bind_runtime` gives a shard too when one is free.
fn stdin_closed() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    rx
}

/// Runs one instance until `shutdown` resolves: starts the engine and a runtime whose workers
/// own its shards, serves HTTP, calls `listening` with the bound address once it accepts, and
/// shuts everything down in order.
pub fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(SocketAddr),
) -> Result<(), BoxError> {
    let engine = config.engine()?;
    let rt = engine
        .bind_runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers))
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(engine.clone(), config.http, shutdown, listening));
    // Drop every task still running (and the presences they hold), then stop the engine: its
    // goodbye makes every peer drop this instance's counts at once.
    rt.shutdown_timeout(Duration::from_secs(1));
    engine.shutdown();
    served
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    engine: Engine,
    rooms: Arc<Rooms>,
    /// Turns true when the server stops: open WebSockets close.
    stop: watch::Receiver<bool>,
}

async fn serve(
    engine: Engine,
    http: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(SocketAddr),
) -> Result<(), BoxError> {
    let rooms = Arc::new(Rooms::default());
    tokio::spawn(fan_out(
        engine.changes().into_async(),
        engine.clone(),
        rooms.clone(),
    ));
    let (stop_tx, stop) = watch::channel(false);
    let app = App {
        engine,
        rooms,
        stop,
    };
    let router = Router::new()
        .route("/ws/{room}", get(ws))
        .route("/count/{room}", get(count))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(http).await?;
    listening(listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    // HTTP is done; upgraded connections are not. Tell them, and give them a moment to send
    // their close frames: `closed` resolves once every connection dropped its `stop`.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), stop_tx.closed()).await;
    Ok(())
}

/// `GET /count/{room}`: the room's count over the whole cluster, as of the last tick.
async fn count(State(app): State<App>, Path(room): Path<String>) -> String {
    format!("{}\n", app.engine.count_by_name(&room))
}

/// `GET /ws/{room}`: joins the room before the upgrade, so that a bad name is a plain `400`.
async fn ws(
    State(app): State<App>,
    Path(room): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // On a runtime worker: the join counts on this worker's own shard.
    let presence = match app.engine.try_join_by_name(&room) {
        Ok(p) => p,
        Err(e @ headcount::Error::NameTooLong { .. }) => {
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    // If the upgrade fails, the closure is dropped, and the presence with it.
    upgrade.on_upgrade(move |socket| session(socket, app, room, presence))
}

/// One connection: pushes the room's count while the client stays.
async fn session(mut socket: WebSocket, app: App, room: String, presence: Presence) {
    let App {
        engine,
        rooms,
        mut stop,
    } = app;
    let mut counts = rooms.subscribe(&engine, &room);
    // The count now, then every change. Counts are as of the last tick (at most about one tick
    // old), so the first may not include this connection yet: "0 online", then "1 online".
    let mut n = *counts.borrow_and_update();
    loop {
        if socket
            .send(Message::Text(format!("{n} online").into()))
            .await
            .is_err()
        {
            break;
        }
        tokio::select! {
            changed = counts.changed() => match changed {
                Ok(()) => n = *counts.borrow_and_update(),
                Err(_) => break, // the rooms are gone: the server is going down
            },
            // Anything the client sends is ignored; ping, pong and the close handshake are
            // answered by the WebSocket layer. `None` or an error: the client is gone.
            () = recv_until_closed(&mut socket) => break,
            // It only ever turns true (or its sender is dropped): either way, stopping.
            _ = stop.changed() => {
                let bye = CloseFrame { code: close_code::AWAY, reason: "server stopping".into() };
                let _ = socket.send(Message::Close(Some(bye))).await;
                break;
            }
        }
    }
    drop(presence); // leaves the room (the next tick tells everyone)
    rooms.unsubscribe(&room, counts);
}

/// Reads from the client, ignoring what it sends, until the connection ends. Cancel-safe (a
/// message read before cancellation is ignored anyway).
async fn recv_until_closed(socket: &mut WebSocket) {
    while let Some(Ok(_)) = socket.recv().await {}
}

/// The rooms that have connections on this instance: a `watch` of the cluster-wide count each.
#[derive(Default)]
struct Rooms {
    map: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, engine: &Engine, room: &str) -> watch::Receiver<u64> {
        let mut map = self.lock();
        match map.get(room) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(engine.count_by_name(room));
                map.insert(room.to_string(), tx);
                rx
            }
        }
    }

    /// Forgets `room` when its last connection here is gone (under the lock, so that no
    /// `subscribe` can race with it).
    fn unsubscribe(&self, room: &str, counts: watch::Receiver<u64>) {
        drop(counts);
        let mut map = self.lock();
        if map.get(room).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(room);
        }
    }

    /// Sets `room`'s count to the engine's newest, telling its connections only if it moved.
    ///
    /// The newest, not the feed's: a room subscribed while the feed reader was a tick behind
    /// started from a newer count than the feed's, and must not go back. The engine publishes
    /// a tick's counts before its feed entry, so the newest is never older than the feed's.
    fn refresh(engine: &Engine, room: &str, tx: &watch::Sender<u64>) {
        let n = engine.count_by_name(room);
        tx.send_if_modified(|old| std::mem::replace(old, n) != n);
    }
}

/// The one reader of the change feed: hands each tick's changes to the rooms that have
/// connections here. Ends when the engine stops.
async fn fan_out(mut feed: AsyncChangeFeed, engine: Engine, rooms: Arc<Rooms>) {
    while let Some(event) = feed.recv().await {
        let map = rooms.lock();
        match event {
            FeedEvent::Changes(tick) => {
                for (room, _) in &tick.changes {
                    if let Some(tx) = map.get(&**room) {
                        Rooms::refresh(&engine, room, tx);
                    }
                }
            }
            // Fell more than `feed_capacity` ticks behind: some changes were dropped for this
            // reader. Re-read every room of interest.
            FeedEvent::Lagged { .. } => {
                for (room, tx) in map.iter() {
                    Rooms::refresh(&engine, room, tx);
                }
            }
        }
    }
}
