//! Thread per core: one worker thread per CPU, each pinned, each with its own event loop and its
//! own claimed [`Shard`], so that every join and leave is a store on that core's own memory.
//! This is the shape `headcount serve` has (with mio and sockets); here the connections are
//! simulated, so that the example runs anywhere and checks itself.
//!
//! ```sh
//! cargo run --release --example thread_per_core                # --workers N --seconds S
//! ```
//!
//! - The engine thread is pinned to the last CPU ([`Builder::pin`](headcount::Builder::pin)),
//!   and worker `i` to one of the others with [`headcount::pin_worker`]`(i)`: the one rule, so
//!   that no worker lands on the engine's CPU by accident.
//! - Each worker gets a shard claimed on the main thread ([`Engine::shard`]: an error there is
//!   found at start-up) and moved in; the shard binds to the worker on its first join.
//! - A worker's loop takes the events that are ready, and calls [`Shard::park`] right before it
//!   blocks waiting for more (in a real server: before `epoll_wait`), so that an idle worker
//!   never holds up the reuse of retired topic ids.
//! - A connection's [`Presence`] lives in the worker's slab, at the connection's index (as a
//!   mio `Token` would be): a disconnect drops it, which leaves the room.
//! - A generator thread plays the network: it connects users to rooms (a long tail: a few busy
//!   rooms, many quiet ones) and disconnects them, at random, on every worker, and keeps a
//!   ledger of who is where.
//!
//! The main thread prints the busiest rooms ([`Engine::top`]) while it runs. Then it checks
//! every room's count ([`Engine::count_by_name`]) against the generator's ledger, disconnects
//! everyone and checks that every count is zero. It exits non-zero if anything differs.

use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use headcount::{Engine, Error, Presence, Shard, Topic};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker threads (and shards).
    pub workers: usize,
    /// How long users come and go.
    pub duration: Duration,
    /// Rooms `room:0`, `room:1`…
    pub rooms: usize,
    /// About how many users are connected at a time.
    pub users: usize,
    /// The engine's tick.
    pub tick: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // One CPU for the engine, one worker on each of the others.
            workers: headcount::cpus().saturating_sub(1).max(1),
            duration: Duration::from_secs(3),
            rooms: 100,
            users: 10_000,
            tick: Duration::from_millis(100),
        }
    }
}

fn main() -> ExitCode {
    let mut settings = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--workers", Some(n)) if n > 0 => settings.workers = n as usize,
            ("--seconds", Some(s)) => settings.duration = Duration::from_secs(s),
            _ => {
                eprintln!("usage: thread_per_core [--workers N] [--seconds S]");
                return ExitCode::from(2);
            }
        }
    }
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thread_per_core: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the network tells a worker.
enum Event {
    /// A new connection, at index `conn` of the worker's slab, joins `room`.
    Connect { conn: usize, room: usize },
    /// The connection at `conn` closed.
    Disconnect { conn: usize },
    /// Answer once every event before this one is handled.
    Flush(SyncSender<()>),
}

/// Runs the simulation and checks it; `Err` says what differed.
pub fn run(s: &Settings) -> Result<(), String> {
    let engine = Engine::builder()
        .shards(s.workers)
        .tick(s.tick)
        .pin(true)
        .start()
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = (0..s.rooms).map(|r| format!("room:{r}")).collect();

    let mut inboxes = Vec::new();
    let mut workers = Vec::new();
    for i in 0..s.workers {
        let shard = engine.shard().map_err(|e| e.to_string())?;
        // Bounded: a worker that falls behind slows the network down instead of queueing.
        let (tx, rx) = mpsc::sync_channel(1024);
        let (engine, names) = (engine.clone(), names.clone());
        inboxes.push(tx);
        workers.push(thread::spawn(move || worker(i, engine, shard, &names, rx)));
    }
    println!(
        "{} workers, {} rooms, ~{} users for {:?}",
        s.workers, s.rooms, s.users, s.duration
    );

    let (rooms, users, duration) = (s.rooms, s.users, s.duration);
    let network = thread::spawn(move || Network::new(inboxes, rooms).run(users, duration));
    let start = Instant::now();
    while !network.is_finished() {
        thread::sleep(s.tick * 5);
        let top: Vec<String> = engine
            .top(3)
            .iter()
            .map(|(room, n)| format!("{room} {n}"))
            .collect();
        println!(
            "{:>5.1}s  {} online; busiest: {}",
            start.elapsed().as_secs_f64(),
            engine.total(),
            top.join(", ")
        );
    }
    let network = network.join().map_err(|_| "the network thread panicked")?;

    // Every event the network sent is handled (each worker answered its flush), then one tick
    // sums them all: the counts must be the ledger's, exactly.
    if let Err(e) = network.flush() {
        stop(network, workers)?; // a worker's own error, if it stopped on one
        return Err(e);
    }
    engine.sync();
    check(&engine, &names, &network.ledger, "while connected")?;
    println!(
        "exact: {} users in {} rooms, as the network's ledger says ({} events)",
        network.ledger.iter().sum::<u64>(),
        s.rooms,
        network.events
    );

    stop(network, workers)?;
    engine.sync();
    check(&engine, &names, &vec![0; s.rooms], "after everyone left")?;
    println!("exact: 0 online after everyone left");
    engine.shutdown();
    Ok(())
}

/// Everyone disconnects: closing its inbox stops a worker, and dropping its slab leaves every
/// room. Waits for every worker.
fn stop(network: Network, workers: Vec<JoinHandle<Result<(), Error>>>) -> Result<(), String> {
    drop(network);
    for w in workers {
        w.join()
            .map_err(|_| "a worker panicked")?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Every room's count and the total against `expected`.
fn check(engine: &Engine, names: &[String], expected: &[u64], when: &str) -> Result<(), String> {
    for (name, &want) in names.iter().zip(expected) {
        let got = engine.count_by_name(name);
        if got != want {
            return Err(format!(
                "{when}: {name} counts {got}, the ledger says {want}"
            ));
        }
    }
    let want: u64 = expected.iter().sum();
    match engine.total() {
        got if got == want => Ok(()),
        got => Err(format!(
            "{when}: the total is {got}, the ledger says {want}"
        )),
    }
}

/// One worker: its own event loop, its own shard, its connections' presences.
fn worker(
    i: usize,
    engine: Engine,
    mut shard: Shard,
    names: &[String],
    events: Receiver<Event>,
) -> Result<(), Error> {
    if !headcount::pin_worker(i) {
        eprintln!("worker {i}: not pinned (CPUs unknown, or no `affinity` feature)");
    }
    // Intern once; a handle goes stale if its room stays empty for `retire_after` (30 s), and
    // is then looked up again.
    let mut topics: Vec<Topic> = names
        .iter()
        .map(|n| engine.try_topic(n))
        .collect::<Result<_, _>>()?;
    let mut slab: Vec<Option<Presence>> = Vec::new();
    loop {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty) => {
                // About to block: park first.
                shard.park();
                match events.recv() {
                    Ok(event) => event,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match event {
            Event::Connect { conn, room } => {
                let presence = match shard.try_join(topics[room]) {
                    Err(Error::StaleTopic { .. }) => {
                        topics[room] = engine.try_topic(&names[room])?;
                        shard.try_join(topics[room])?
                    }
                    joined => joined?,
                };
                if slab.len() <= conn {
                    slab.resize_with(conn + 1, || None);
                }
                slab[conn] = Some(presence);
            }
            Event::Disconnect { conn } => slab[conn] = None,
            Event::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    Ok(()) // the slab drops here: every connection still open leaves
}

/// The simulated network: connects and disconnects users on every worker, and remembers where
/// everyone is.
struct Network {
    inboxes: Vec<SyncSender<Event>>,
    /// Per worker: its open connections `(slab index, room)`, and its free slab indexes.
    open: Vec<Vec<(usize, usize)>>,
    free: Vec<Vec<usize>>,
    /// Per room: how many users are in it.
    ledger: Vec<u64>,
    events: u64,
    rng: u64,
}

impl Network {
    fn new(inboxes: Vec<SyncSender<Event>>, rooms: usize) -> Network {
        let workers = inboxes.len();
        Network {
            inboxes,
            open: vec![Vec::new(); workers],
            free: vec![Vec::new(); workers],
            ledger: vec![0; rooms],
            events: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// xorshift64: random enough, and the same on every run.
    fn random(&mut self, below: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % below as u64) as usize
    }

    /// Users come and go for `duration`; about `users` are connected at a time.
    fn run(mut self, users: usize, duration: Duration) -> Network {
        let deadline = Instant::now() + duration;
        let mut online = 0;
        while Instant::now() < deadline {
            for _ in 0..1024 {
                let w = self.random(self.inboxes.len());
                // Connect more often below `users` online, disconnect more often above.
                if self.random(2 * users) >= online || self.open[w].is_empty() {
                    let rooms = self.ledger.len();
                    // The long tail: low-numbered rooms are much busier.
                    let room = self.random(rooms) * self.random(rooms) / rooms;
                    let conn = self.free[w].pop().unwrap_or(self.open[w].len());
                    self.open[w].push((conn, room));
                    self.ledger[room] += 1;
                    online += 1;
                    self.send(w, Event::Connect { conn, room });
                } else {
                    let i = self.random(self.open[w].len());
                    let (conn, room) = self.open[w].swap_remove(i);
                    self.free[w].push(conn);
                    self.ledger[room] -= 1;
                    online -= 1;
                    self.send(w, Event::Disconnect { conn });
                }
            }
        }
        self
    }

    fn send(&mut self, worker: usize, event: Event) {
        self.events += 1;
        // Fails only if the worker stopped, which `run` reports when it joins it.
        let _ = self.inboxes[worker].send(event);
    }

    /// Waits (bounded) until every worker has handled every event sent so far.
    fn flush(&self) -> Result<(), String> {
        for (i, inbox) in self.inboxes.iter().enumerate() {
            let (done, handled) = mpsc::sync_channel(1);
            let answered = inbox.send(Event::Flush(done)).is_ok()
                && handled.recv_timeout(Duration::from_secs(10)).is_ok();
            if !answered {
                return Err(format!("worker {i} did not handle its events"));
            }
        }
        Ok(())
    }
}
