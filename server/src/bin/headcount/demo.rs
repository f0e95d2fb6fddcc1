//! `headcount demo`: a three-node cluster on loopback multicast in this process, simulated users
//! churning over a long tail of topics on every node, the `watch` view while it runs, and a final
//! proof that every node's count of every topic equals what all the workers hold.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headcount::{Engine, Presence};

use crate::watch::{Watcher, render};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Number of topics (popularity falls off steeply: a long tail).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    topics: u32,
    /// Simulated users held at once, over all workers.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    users: u32,
    /// Cluster nodes (engines, in this process, talking over loopback multicast).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    nodes: u32,
    /// Worker threads per node, each with its own shard.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Reducer and gossip tick.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Multicast group and port.
    #[arg(long, default_value_t = headcount::DEFAULT_GROUP)]
    group: std::net::SocketAddrV4,
    /// Lines of top topics to show each tick.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

/// xorshift64*: a tiny, fast PRNG, enough for simulated users.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A long-tailed pick in 0..n: topic 0 is the most popular.
    fn long_tail(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((n as f64) * u * u * u) as usize % n
    }
}

fn worker(
    engine: &Engine,
    names: &[String],
    hold: usize,
    seed: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> Result<Vec<Presence>, headcount::Error> {
    let mut shard = engine.shard()?;
    let topics: Vec<_> = names.iter().map(|n| engine.topic(n)).collect();
    let mut rng = Rng(seed | 1);
    let mut held: Vec<Presence> = Vec::with_capacity(hold);
    while !stop.load(Ordering::Relaxed) {
        // A burst of churn, then a breath, so the demo does not take the machine over.
        for _ in 0..2_000 {
            let join = held.is_empty()
                || held.len() < hold / 2
                || (held.len() < hold && rng.next() & 1 == 0);
            if join {
                held.push(shard.join(topics[rng.long_tail(topics.len())]));
            } else {
                let i = (rng.next() % held.len() as u64) as usize;
                drop(held.swap_remove(i));
            }
        }
        ops.fetch_add(2_000, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(held)
}

/// Every node's count of every topic, and its total, against the ledger. Returns the number of
/// (node, topic) pairs that differ, after printing the first few.
fn check(engines: &[Engine], names: &[String], ledger: &[u64], print: bool) -> usize {
    let want_total: u64 = ledger.iter().sum();
    let mut wrong = 0;
    for (i, e) in engines.iter().enumerate() {
        for (name, &want) in names.iter().zip(ledger) {
            let got = e.count_by_name(name);
            if got != want {
                wrong += 1;
                if print && wrong <= 5 {
                    eprintln!("MISMATCH node {i} {name}: counted {got}, ledger {want}");
                }
            }
        }
        if e.total() != want_total {
            wrong += 1;
            if print {
                eprintln!(
                    "MISMATCH node {i} total: counted {}, ledger {want_total}",
                    e.total()
                );
            }
        }
    }
    wrong
}

/// Waits (a bounded time) until every node agrees with the ledger; returns how long it took.
fn wait_exact(
    engines: &[Engine],
    names: &[String],
    ledger: &[u64],
    bound: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        for e in engines {
            e.sync();
        }
        if check(engines, names, ledger, false) == 0 {
            return Some(start.elapsed());
        }
        if start.elapsed() > bound {
            check(engines, names, ledger, true);
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(a: Args) -> Result<ExitCode, headcount::Error> {
    // A cluster name of its own: another demo, or a `serve` on this machine, is not counted.
    let cluster = format!(
        "demo-{}-{:x}",
        std::process::id(),
        rand_seed() & 0xffff_ffff
    );
    // And a random key of its own, held only in this process: no other local process can
    // forge or read its counts.
    let key = format!("{:016x}{:016x}", rand_seed(), rand_seed().rotate_left(17));
    let start_node = |observer: bool| {
        Engine::builder()
            .shards(a.workers as usize)
            .tick(a.tick)
            .multicast(a.group)
            .cluster_name(&cluster)
            .cluster_key(&key)
            .observer(observer)
            .start()
    };
    let engines = (0..a.nodes)
        .map(|_| start_node(false))
        .collect::<Result<Vec<_>, _>>()?;
    // The watch view: a passive observer of the same cluster, exactly as `headcount watch`.
    let observer = start_node(true)?;
    let names: Arc<Vec<String>> = Arc::new((0..a.topics).map(|i| format!("room:{i}")).collect());
    let stop = crate::watch::stop_on_signal();
    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let threads = (a.nodes * a.workers) as usize;
    let hold = (a.users as usize).div_ceil(threads);

    println!(
        "headcount demo: {} nodes on multicast {} (cluster {cluster:?}), {} workers each, {} topics, \
         up to {} users churning for {:?}",
        a.nodes,
        a.group,
        a.workers,
        a.topics,
        hold * threads,
        a.duration
    );
    let mut handles = Vec::new();
    for (n, engine) in engines.iter().enumerate() {
        for w in 0..a.workers {
            let (engine, names, done, ops) =
                (engine.clone(), names.clone(), done.clone(), ops.clone());
            let seed = 0x9e37_79b9 * (n as u64 * 64 + w as u64 + 1);
            handles.push(std::thread::spawn(move || {
                worker(&engine, &names, hold, seed, &done, &ops)
            }));
        }
    }

    let tty = std::io::stdout().is_terminal();
    let mut watcher = Watcher::default();
    let start = Instant::now();
    let mut last_print = start;
    while start.elapsed() < a.duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(a.tick);
        let snap = watcher.snapshot(&observer, a.top);
        let title = format!(
            "headcount demo — {:.1}s of {:?}, {} join/leave ops so far (the watch view of the cluster)",
            start.elapsed().as_secs_f64(),
            a.duration,
            ops.load(Ordering::Relaxed)
        );
        if tty {
            print!("\x1b[H\x1b[2J{}", render(&snap, &title));
            let _ = std::io::stdout().flush();
        } else if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!("{}", render(&snap, &title));
        }
    }

    done.store(true, Ordering::Relaxed);
    let mut held: Vec<Vec<Presence>> = Vec::new();
    let mut node_of = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => {
                held.push(r?);
                node_of.push(i / a.workers as usize);
            }
            Err(_) => {
                eprintln!("headcount demo: a worker thread panicked");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let churn_time = start.elapsed();

    // The proof: every node's count of every topic equals the presences all workers still hold.
    let mut ledger = vec![0u64; names.len()];
    for (ps, &node) in held.iter().zip(&node_of) {
        for p in ps {
            let name = engines[node]
                .describe(p.topic())
                .map(|(n, _)| n)
                .unwrap_or_default();
            if let Some(i) = name
                .strip_prefix("room:")
                .and_then(|i| i.parse::<usize>().ok())
            {
                ledger[i] += 1;
            }
        }
    }
    let total: u64 = ledger.iter().sum();
    let bound = Duration::from_secs(10);
    let mut everyone = engines.clone();
    everyone.push(observer.clone());
    let exact = wait_exact(&everyone, &names, &ledger, bound);
    let ops = ops.load(Ordering::Relaxed);
    println!(
        "\nsummary: {ops} joins and leaves on {} nodes in {:.1}s ({:.0}/s); {} users held at the end",
        a.nodes,
        churn_time.as_secs_f64(),
        ops as f64 / churn_time.as_secs_f64(),
        total
    );
    for (i, e) in engines.iter().enumerate() {
        let s = e.stats();
        let c = e.cluster_stats().unwrap_or_default();
        println!(
            "  node {i} {:016x}: local {:>7}  cluster total {:>7}  peers {}/{} converged  ticks {} (longest {:?})  datagrams {} sent, {} received, {} rejected",
            e.node_id().unwrap_or(0),
            e.local_total(),
            e.total(),
            c.peers_converged,
            c.peers_alive,
            s.ticks,
            s.max_tick,
            c.protocol.sent,
            c.protocol.received,
            c.protocol.rejected_total()
        );
    }
    let after = {
        drop(held);
        let zero = vec![0u64; names.len()];
        wait_exact(&everyone, &names, &zero, bound)
    };
    for e in everyone {
        e.shutdown();
    }
    match (exact, after) {
        (Some(t), Some(t2)) => {
            println!(
                "EXACT: on all {} nodes (and the watcher), all {} topic counts and the total ({total}) \
                 matched the ledger {:.0?} after churn stopped; every count read 0 {:.0?} after every user left",
                a.nodes,
                names.len(),
                t,
                t2
            );
            Ok(ExitCode::SUCCESS)
        }
        (e, z) => {
            println!(
                "NOT EXACT within {bound:?}: {} with users held, {} after they left",
                if e.is_some() { "exact" } else { "differs" },
                if z.is_some() { "exact" } else { "differs" }
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
