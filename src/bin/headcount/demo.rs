//! `headcount demo`: one engine, simulated users churning over a long tail of topics, live counts
//! each tick, and a final proof that every count equals what the workers hold.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headcount::{Engine, Presence, Topic};

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
    /// Worker threads, each with its own shard (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Reducer tick.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    tick: Duration,
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
    topics: &[Topic],
    hold: usize,
    seed: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> Result<Vec<Presence>, headcount::Error> {
    let mut shard = engine.shard()?;
    let mut rng = Rng(seed | 1);
    let mut held: Vec<Presence> = Vec::with_capacity(hold);
    while !stop.load(Ordering::Relaxed) {
        // A burst of churn, then a breath, so the demo does not take the machine over.
        for _ in 0..2_000 {
            let join = held.len() < hold / 2 || (held.len() < hold && rng.next() & 1 == 0);
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

pub fn run(a: Args) -> Result<ExitCode, headcount::Error> {
    let workers = a.workers.map_or_else(headcount::cpus, |w| w as usize);
    let engine = Engine::builder().shards(workers).tick(a.tick).start()?;
    let topics: Vec<Topic> = (0..a.topics)
        .map(|i| engine.topic(&format!("room:{i}")))
        .collect();
    let topics = Arc::new(topics);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let hold = (a.users as usize).div_ceil(workers);

    println!(
        "headcount demo: {workers} workers, {} topics, up to {} users churning for {:?}, tick {:?}",
        a.topics,
        hold * workers,
        a.duration,
        a.tick
    );
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (engine, topics, stop, ops) =
                (engine.clone(), topics.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                worker(
                    &engine,
                    &topics,
                    hold,
                    0x9e37_79b9 * (w as u64 + 1),
                    &stop,
                    &ops,
                )
            })
        })
        .collect();

    let start = Instant::now();
    let mut last_ops = 0;
    let mut last = start;
    let mut out = std::io::stdout().lock();
    while start.elapsed() < a.duration {
        std::thread::sleep(a.tick);
        let now = Instant::now();
        let o = ops.load(Ordering::Relaxed);
        let rate = (o - last_ops) as f64 / now.duration_since(last).as_secs_f64();
        (last_ops, last) = (o, now);
        let s = engine.stats();
        let top: Vec<String> = engine
            .top(a.top)
            .into_iter()
            .map(|(n, c)| format!("{n}={c}"))
            .collect();
        let _ = writeln!(
            out,
            "{:>6.1}s  total {:>8}  ops/s {:>10.0}  tick {:>6.1?}  top: {}",
            start.elapsed().as_secs_f64(),
            engine.total(),
            rate,
            s.last_tick,
            top.join(" ")
        );
    }
    drop(out);

    stop.store(true, Ordering::Relaxed);
    let mut held = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => held.push(r?),
            Err(_) => {
                eprintln!("headcount demo: a worker thread panicked");
                return Ok(ExitCode::FAILURE);
            }
        }
    }

    // The proof: every count equals the presences the workers still hold.
    let mut ledger = vec![0u64; topics.len()];
    for p in held.iter().flatten() {
        ledger[p.topic().id() as usize - topics[0].id() as usize] += 1;
    }
    engine.sync();
    let mut wrong = 0;
    for (t, &want) in topics.iter().zip(&ledger) {
        let got = engine.count(*t);
        if got != want {
            wrong += 1;
            if wrong <= 5 {
                eprintln!("MISMATCH {t:?}: engine {got}, ledger {want}");
            }
        }
    }
    let total: u64 = ledger.iter().sum();
    let engine_total = engine.total();
    let s = engine.stats();
    println!(
        "\nsummary: {} ops in {:.1}s; {} ticks, longest {:?}; {} of {} topics exact; total {} (ledger {})",
        ops.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        s.ticks,
        s.max_tick,
        topics.len() - wrong,
        topics.len(),
        engine_total,
        total
    );
    drop(held);
    engine.sync();
    let after = engine.total();
    println!("after every user left: total {after}");
    engine.shutdown();
    if wrong == 0 && after == 0 && engine_total == total {
        println!("EXACT: every count matched the ledger");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "NOT EXACT: {wrong} topics differ; total {engine_total} vs ledger {total}; {after} after leaving"
        );
        Ok(ExitCode::FAILURE)
    }
}
