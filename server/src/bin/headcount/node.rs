//! `headcount node`: one cluster node holding a fixed number of presences, printing what it
//! counts each tick. A building block for multi-process tests and quick experiments; `serve` is
//! the real server.

use std::io::{BufRead, Write};
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use headcount::Engine;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Multicast group and port.
    #[arg(long, default_value_t = headcount::DEFAULT_GROUP)]
    group: SocketAddrV4,
    /// Cluster name.
    #[arg(long, default_value = "headcount")]
    cluster: String,
    /// Topic to join.
    #[arg(long, default_value = "room")]
    topic: String,
    /// Presences to hold in it.
    #[arg(long, default_value_t = 1)]
    join: u32,
    /// Reducer tick.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Drop a silent peer after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    dead_after: Option<Duration>,
    /// Stop after this long (or when standard input closes).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

pub fn run(a: Args) -> Result<ExitCode, headcount::Error> {
    let mut b = Engine::builder()
        .shards(1)
        .tick(a.tick)
        .multicast(a.group)
        .cluster_name(&a.cluster);
    if let Some(d) = a.dead_after {
        b = b.dead_after(d);
    }
    let engine = b.start()?;
    let topic = engine.topic(&a.topic);
    let mut shard = engine.shard()?;
    let held: Vec<_> = (0..a.join).map(|_| shard.join(topic)).collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Standard input closing (the parent went away) stops the node gracefully.
        for _ in std::io::stdin().lock().lines() {}
        let _ = tx.send(());
    });
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    while start.elapsed() < a.duration {
        if rx.recv_timeout(a.tick).is_ok() {
            break;
        }
        let peers = engine.nodes().iter().filter(|n| n.alive).count();
        let line = format!(
            "count {} total {} peers {peers}",
            engine.count(topic),
            engine.total()
        );
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    drop(held);
    drop(shard);
    engine.shutdown();
    Ok(ExitCode::SUCCESS)
}
