//! `headcount watch`: joins the cluster as a passive observer (it counts nothing and no node
//! lists it) and shows, each tick, the cluster total, the busiest topics with a trend, and the
//! nodes table. A full-screen view on a terminal; `--once` and `--json` for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headcount::Engine;
use serde::Serialize;

use headcount_server::config::{Cluster, ClusterOptions, ConfigError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topics to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    top: u32,
    /// Print one snapshot and exit (after listening for --settle).
    #[arg(long)]
    once: bool,
    /// Print JSON (one object per snapshot, one per line).
    #[arg(long)]
    json: bool,
    /// With --once: how long to listen before the snapshot [default: until every peer heard is
    /// converged, at least 1s and at most dead-after].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    settle: Option<Duration>,
    /// Stop after this long [default: until Ctrl-C].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    cluster: ClusterOptions,
}

/// One topic line.
#[derive(Debug, Serialize)]
pub struct TopicLine {
    pub topic: String,
    pub count: u64,
    /// Change since the previous snapshot.
    pub delta: i64,
}

/// One node line.
#[derive(Debug, Serialize)]
pub struct NodeLine {
    pub id: String,
    pub addr: String,
    /// How this node found it: configured, dns, learned, multicast, custom.
    pub found: String,
    pub alive: bool,
    pub converged: bool,
    pub last_heard_ms: u64,
    pub topics: usize,
    pub total: u64,
    /// Datagrams lost, as a share of those expected.
    pub loss: f64,
}

/// What `watch` shows, once.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub total: u64,
    pub total_delta: i64,
    pub topics: Vec<TopicLine>,
    pub nodes: Vec<NodeLine>,
    pub converged: bool,
}

/// Builds snapshots and remembers the last one's counts for the trend.
#[derive(Default)]
pub struct Watcher {
    last: HashMap<String, u64>,
    last_total: Option<u64>,
}

impl Watcher {
    pub fn snapshot(&mut self, engine: &Engine, top: usize) -> Snapshot {
        let total = engine.total();
        let topics: Vec<TopicLine> = engine
            .top(top)
            .into_iter()
            .map(|(topic, count)| {
                let before = self.last.get(&topic).copied().unwrap_or(0);
                TopicLine {
                    delta: count as i64 - before as i64,
                    topic,
                    count,
                }
            })
            .collect();
        self.last = topics.iter().map(|t| (t.topic.clone(), t.count)).collect();
        let total_delta = total as i64 - self.last_total.unwrap_or(total) as i64;
        self.last_total = Some(total);
        let nodes: Vec<NodeLine> = engine
            .nodes()
            .into_iter()
            .map(|n| NodeLine {
                id: format!("{:016x}", n.node),
                addr: n.addr.to_string(),
                found: n.found.map_or("unknown", |f| f.as_str()).to_string(),
                alive: n.alive,
                converged: n.converged,
                last_heard_ms: n.last_heard.as_millis() as u64,
                topics: n.topics,
                total: n.total,
                loss: if n.received + n.lost == 0 {
                    0.0
                } else {
                    n.lost as f64 / (n.received + n.lost) as f64
                },
            })
            .collect();
        let converged = nodes.iter().all(|n| !n.alive || n.converged);
        Snapshot {
            total,
            total_delta,
            topics,
            nodes,
            converged,
        }
    }
}

/// A name fit for a terminal: control characters (escape sequences!) shown as `\u{…}`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn trend(d: i64) -> String {
    match d {
        0 => "  =".into(),
        d if d > 0 => format!("↑{d}"),
        d => format!("↓{}", -d),
    }
}

/// The snapshot as text (the terminal view, and `--once` without `--json`).
pub fn render(s: &Snapshot, title: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{title}\ncluster total {}  ({})   {}",
        s.total,
        trend(s.total_delta),
        if s.converged {
            "converged"
        } else {
            "converging…"
        }
    );
    let _ = writeln!(o, "\n{:<40} {:>12} {:>8}", "TOPIC", "COUNT", "TREND");
    for t in &s.topics {
        let name: String = printable(&t.topic).chars().take(40).collect();
        let _ = writeln!(o, "{name:<40} {:>12} {:>8}", t.count, trend(t.delta));
    }
    let _ = writeln!(
        o,
        "\n{:<16} {:<21} {:<10} {:<6} {:<9} {:>10} {:>7} {:>10} {:>6}",
        "NODE", "ADDR", "FOUND", "ALIVE", "CONVERGED", "LAST HEARD", "TOPICS", "TOTAL", "LOSS"
    );
    for n in &s.nodes {
        let _ = writeln!(
            o,
            "{:<16} {:<21} {:<10} {:<6} {:<9} {:>8}ms {:>7} {:>10} {:>5.1}%",
            n.id,
            n.addr,
            n.found,
            if n.alive { "yes" } else { "no" },
            if n.converged { "yes" } else { "no" },
            n.last_heard_ms,
            n.topics,
            n.total,
            n.loss * 100.0
        );
    }
    if s.nodes.is_empty() {
        o.push_str("(no nodes heard yet)\n");
    }
    o
}

/// Stops on SIGINT/SIGTERM: sets the flag.
pub fn stop_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

pub fn run(a: Args) -> Result<ExitCode, ConfigError> {
    let cluster = Cluster::new(&a.cluster);
    if cluster.transport.is_none() {
        return Err(ConfigError(
            "--standalone: watch needs a cluster to watch".into(),
        ));
    }
    let engine = cluster.builder()?.observer(true).shards(1).start()?;
    let tick = engine.tick_interval();
    let stop = stop_on_signal();
    let mut w = Watcher::default();
    let title = format!("headcount watch: {}", cluster.describe());
    if a.once {
        let dead_after = cluster.dead_after.unwrap_or(Duration::from_secs(3));
        let start = Instant::now();
        loop {
            std::thread::sleep(tick);
            let s = w.snapshot(&engine, a.top as usize);
            let waited = start.elapsed();
            let done = match a.settle {
                Some(d) => waited >= d,
                None => {
                    (waited >= Duration::from_secs(1)
                        && !s.nodes.is_empty()
                        && s.converged
                        && all_named(&engine, s.total))
                        || waited >= dead_after
                }
            };
            if done || stop.load(Ordering::Relaxed) {
                print(&s, a.json, &title, false);
                break;
            }
        }
    } else {
        let tty = std::io::stdout().is_terminal() && !a.json;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
            std::thread::sleep(tick.max(Duration::from_millis(100)));
            let s = w.snapshot(&engine, a.top as usize);
            if !print(&s, a.json, &title, tty) {
                break;
            }
        }
    }
    engine.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Whether every counted topic has a name here yet (names arrive apart from counts, so a
/// converged copy can still list fewer topics than it counts).
fn all_named(engine: &Engine, total: u64) -> bool {
    let named: u64 = engine
        .top(engine.stats().topics)
        .iter()
        .map(|(_, c)| c)
        .sum();
    named == total
}

/// Prints one snapshot; false when standard output is gone.
fn print(s: &Snapshot, json: bool, title: &str, tty: bool) -> bool {
    let mut out = std::io::stdout().lock();
    let r = if json {
        match serde_json::to_string(s) {
            Ok(j) => writeln!(out, "{j}"),
            Err(e) => writeln!(out, "{{\"error\":{:?}}}", e.to_string()),
        }
    } else if tty {
        // Home, clear, redraw: a steady full-screen view without a TUI framework.
        write!(out, "\x1b[H\x1b[2J{}(Ctrl-C to quit)", render(s, title))
    } else {
        writeln!(out, "{}", render(s, title))
    };
    r.and_then(|_| out.flush()).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_not_printed_raw() {
        let shown = super::printable("a\u{1b}]0;pwned\u{7}b");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with('a') && shown.ends_with('b'));
    }
}
