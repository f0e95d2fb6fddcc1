//! The seed's scenario end to end: many client connections, each holding 1–3 presences in
//! long-tailed topics, churning (connections closing and reopening, JOIN/LEAVE on open ones)
//! against real `headcount serve` processes — or against `redis-server` doing what teams do
//! today (INCR/DECR per topic, or a set per topic) — with every count checked at the end.
//!
//! Subcommands: `load`, `baseline-redis`, `overhead`, `soak` (see `main.rs`).

mod client;
mod plot;
mod servers;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use client::{Client, Phase, Report};
use servers::Checker;
pub use servers::Servers;

use crate::proc::{self, raise_nofile};
use crate::resp::Reply;

/// What the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `headcount serve`: JOIN/LEAVE; closing a connection leaves.
    Headcount,
    /// `redis-server`, INCR/DECR per topic; the client DECRs what it held before closing.
    RedisIncr,
    /// `redis-server`, SADD/SREM of a member per topic, SCARD to count.
    RedisSet,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        [Target::Headcount, Target::RedisIncr, Target::RedisSet]
            .into_iter()
            .find(|t| t.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Headcount => "headcount",
            Target::RedisIncr => "redis-incr",
            Target::RedisSet => "redis-set",
        }
    }
}

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct Workload {
    pub connections: usize,
    pub topics: usize,
    /// Client processes (at least one per [`PER_CLIENT_PROC`] connections).
    pub threads: usize,
    pub seed: u64,
}

/// One churn step's figures.
#[derive(Debug, Clone)]
pub struct Step {
    pub target_joins_per_s: f64,
    pub joins_per_s: f64,
    pub churn_ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub behind: u64,
    pub cpu_percent: f64,
    pub cpu_us_per_op: f64,
    pub wire_bytes_per_node_per_s: f64,
}

impl Step {
    /// Sustained: within 95 % of the rate asked, p99 ≤ 10 ms, no error.
    pub fn sustained(&self) -> bool {
        self.joins_per_s >= 0.95 * self.target_joins_per_s
            && self.p99_ms <= 10.0
            && self.errors == 0
    }
    pub fn json(&self) -> Value {
        json!({
            "target_joins_per_s": self.target_joins_per_s.round(),
            "joins_per_s": self.joins_per_s.round(),
            "churn_ops_per_s": self.churn_ops_per_s.round(),
            "join_p50_ms": self.p50_ms,
            "join_p99_ms": self.p99_ms,
            "join_p999_ms": self.p999_ms,
            "errors": self.errors,
            "behind": self.behind,
            "cpu_percent": (self.cpu_percent * 10.0).round() / 10.0,
            "cpu_us_per_op": (self.cpu_us_per_op * 1000.0).round() / 1000.0,
            "wire_bytes_per_node_per_s": self.wire_bytes_per_node_per_s.round(),
        })
    }
}

/// A client process of this harness (`headcount-perf load-client`), holding its share of the
/// connections.
struct ClientProc {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// Servers plus the client processes holding every connection.
pub struct Rig {
    pub servers: Servers,
    w: Workload,
    clients: Vec<ClientProc>,
    pub ledger: Vec<i64>,
    pub setup_errors: u64,
    pub setup_secs: f64,
}

impl Drop for Rig {
    fn drop(&mut self) {
        use std::io::Write;
        for c in &mut self.clients {
            let _ = writeln!(c.stdin, "{}", Phase::Stop.line());
            let _ = c.stdin.flush();
        }
        for c in &mut self.clients {
            proc::reap(&mut c.child, Instant::now() + Duration::from_secs(10));
        }
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// Connections one client process holds at most (under this machine's open-file limit).
pub const PER_CLIENT_PROC: usize = 15_000;

/// The child side of [`Rig`]: `headcount-perf load-client …`.
pub fn client_main(
    id: usize,
    procs: usize,
    target: &str,
    servers: &str,
    topics: usize,
    conns: usize,
    seed: u64,
) -> Result<(), String> {
    raise_nofile((conns / procs.max(1)) as u64 + 1000)?;
    let servers = servers
        .split(',')
        .map(|a| a.parse().map_err(|e| format!("server {a:?}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    client::serve_stdio(Client {
        id,
        threads: procs,
        target: Target::parse(target).ok_or(format!("unknown target {target:?}"))?,
        servers,
        topics,
        conns,
        seed,
    })
}

impl Rig {
    /// Starts the client processes and opens every connection (each joins its first topics).
    pub fn open(servers: Servers, w: Workload) -> Result<Rig, String> {
        let procs = w
            .connections
            .div_ceil(PER_CLIENT_PROC)
            .max(w.threads)
            .max(1);
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let addrs: Vec<String> = servers.addrs.iter().map(|a| a.to_string()).collect();
        let mut clients = Vec::new();
        for id in 0..procs {
            let mut child = std::process::Command::new(&me)
                .args([
                    "load-client",
                    "--id",
                    &id.to_string(),
                    "--procs",
                    &procs.to_string(),
                    "--target",
                    servers.target.name(),
                    "--servers",
                    &addrs.join(","),
                    "--topics",
                    &w.topics.to_string(),
                    "--conns",
                    &w.connections.to_string(),
                    "--seed",
                    &(w.seed.wrapping_mul(id as u64 + 1) ^ 0x9e37_79b9_7f4a_7c15).to_string(),
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("load-client: {e}"))?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
            clients.push(ClientProc {
                child,
                stdin,
                stdout,
            });
        }
        let mut rig = Rig {
            servers,
            ledger: vec![0; w.topics],
            w,
            clients,
            setup_errors: 0,
            setup_secs: 0.0,
        };
        let start = Instant::now();
        let reports = rig.phase(&Phase::Open)?;
        rig.setup_secs = start.elapsed().as_secs_f64();
        rig.setup_errors = reports.iter().map(|r| r.errors).sum();
        Ok(rig)
    }

    fn phase(&mut self, p: &Phase) -> Result<Vec<Report>, String> {
        use std::io::{BufRead, Write};
        for c in &mut self.clients {
            writeln!(c.stdin, "{}", p.line()).map_err(|e| format!("a client process died: {e}"))?;
            c.stdin.flush().map_err(|e| e.to_string())?;
        }
        let mut reports = Vec::new();
        for c in &mut self.clients {
            let mut line = String::new();
            c.stdout
                .read_line(&mut line)
                .map_err(|e| format!("a client process failed: {e}"))?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("a client process reported {line:?}: {e}"))?;
            reports.push(Report::from_json(&v)?);
        }
        let mut ledger = vec![0i64; self.w.topics];
        for r in &reports {
            for (l, v) in ledger.iter_mut().zip(&r.ledger) {
                *l += v;
            }
        }
        self.ledger = ledger;
        Ok(reports)
    }

    /// Churns at `joins_per_s` (and as many leaves) for `duration`, then drains.
    pub fn churn(&mut self, joins_per_s: f64, duration: Duration) -> Result<Step, String> {
        let cpu0 = self.servers.cpu_seconds();
        let wire0 = self.servers.wire_bytes();
        let start = Instant::now();
        let per = joins_per_s / self.clients.len() as f64;
        let reports = self.phase(&Phase::Churn {
            joins_per_s: per,
            duration,
        })?;
        let wall = start.elapsed().as_secs_f64();
        let cpu = self.servers.cpu_seconds() - cpu0;
        let wire = self.servers.wire_bytes().saturating_sub(wire0);
        let mut h =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
        for r in &reports {
            let _ = h.add(&r.latency);
        }
        let joins: u64 = reports.iter().map(|r| r.joins).sum();
        let leaves: u64 = reports.iter().map(|r| r.leaves).sum();
        let secs = duration.as_secs_f64();
        let nodes = self.servers.addrs.len() as f64;
        Ok(Step {
            target_joins_per_s: joins_per_s,
            joins_per_s: joins as f64 / secs,
            churn_ops_per_s: (joins + leaves) as f64 / secs,
            p50_ms: ms(&h, 0.5),
            p99_ms: ms(&h, 0.99),
            p999_ms: ms(&h, 0.999),
            errors: reports.iter().map(|r| r.errors).sum(),
            behind: reports.iter().map(|r| r.behind).sum(),
            cpu_percent: cpu / wall * 100.0,
            cpu_us_per_op: if joins + leaves == 0 {
                0.0
            } else {
                cpu * 1e6 / (joins + leaves) as f64
            },
            wire_bytes_per_node_per_s: wire as f64 / wall / nodes,
        })
    }

    /// Waits (bounded) until every server's count of every topic, and its total, equal the
    /// ledger; returns the milliseconds that took, or `None`.
    pub fn wait_exact(&self, bound: Duration) -> Result<Option<f64>, String> {
        let start = Instant::now();
        let want_total: i64 = self.ledger.iter().sum();
        let mut checkers = self
            .servers
            .addrs
            .iter()
            .map(|&a| Checker::connect(a))
            .collect::<Result<Vec<_>, _>>()?;
        loop {
            let mut exact = true;
            let mut first_diff = String::new();
            for (n, c) in checkers.iter_mut().enumerate() {
                let (counts, total) = c.counts(self.servers.target, self.w.topics)?;
                if total != want_total {
                    exact = false;
                    first_diff = format!("node {n}: total {total}, ledger {want_total}");
                }
                let diffs: Vec<String> = (0..counts.len())
                    .filter(|&t| counts[t] != self.ledger[t])
                    .take(5)
                    .map(|t| format!("t{t} counted {}, ledger {}", counts[t], self.ledger[t]))
                    .collect();
                if !diffs.is_empty() {
                    exact = false;
                    first_diff = format!(
                        "node {n} (total {total}, ledger {want_total}): {}",
                        diffs.join("; ")
                    );
                }
            }
            if exact {
                return Ok(Some(start.elapsed().as_secs_f64() * 1000.0));
            }
            if start.elapsed() > bound {
                eprintln!("not exact after {bound:?}: {first_diff}");
                // A diagnostic: each server's own view (INFO presence, the sum of TOP).
                if std::env::var_os("LOAD_DEBUG").is_some() {
                    for (n, c) in checkers.iter_mut().enumerate() {
                        let info = c.cmd(&["INFO", "presence"])?;
                        eprintln!("node {n}: {info:?}");
                        if let Reply::Array(v) = c.cmd(&["TOP", "10000"])? {
                            let sum: i64 = v
                                .chunks(2)
                                .filter_map(|p| match &p[1] {
                                    Reply::Int(i) => Some(*i),
                                    _ => None,
                                })
                                .sum();
                            let odd: Vec<String> = v
                                .chunks(2)
                                .filter_map(|p| match &p[0] {
                                    Reply::Bulk(Some(b)) if !b.starts_with(b"t") => {
                                        Some(String::from_utf8_lossy(b).into_owned())
                                    }
                                    _ => None,
                                })
                                .collect();
                            eprintln!(
                                "node {n}: top sum {sum}, entries {}, odd {odd:?}",
                                v.len() / 2
                            );
                        }
                    }
                }
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Settings shared by the subcommands.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    pub nodes: usize,
    pub workers: usize,
    pub connections: usize,
    pub topics: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub threads: usize,
    pub tick: String,
    pub quiet: bool,
}

impl LoadOpts {
    fn workload(&self) -> Workload {
        Workload {
            connections: self.connections,
            topics: self.topics,
            threads: self.threads,
            seed: 0x5eed,
        }
    }
    fn say(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", s.as_ref());
        }
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "note": "the harness and every server share this machine",
    })
}

/// Rates tried when searching for the maximum sustained churn (joins per second).
const LADDER: [f64; 12] = [
    5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0, 60_000.0, 75_000.0, 90_000.0,
    110_000.0, 130_000.0, 160_000.0,
];

/// Runs the workload against one target: open, then either churn at `rate` or climb the
/// ladder until a step is not sustained; then check exactness.
fn run_target(o: &LoadOpts, target: Target, counting: bool) -> Result<Value, String> {
    let nofile = raise_nofile(PER_CLIENT_PROC as u64 + 1000)?;
    let per_server = match target {
        Target::Headcount => o.connections.div_ceil(o.nodes),
        _ => o.connections,
    };
    if per_server + 200 > nofile as usize {
        return Err(format!(
            "each server process would hold {per_server} connections, but the open-file limit \
             here is {nofile} (the hard limit; raising it needs CAP_SYS_RESOURCE): use more \
             --nodes or fewer --connections"
        ));
    }
    let servers = match target {
        Target::Headcount => Servers::headcount(o.nodes, o.workers, &o.tick, counting)?,
        t => Servers::redis(t, o.connections + 1000)?,
    };
    o.say(format!(
        "{}: opening {} connections to {} server(s)…",
        target.name(),
        o.connections,
        servers.addrs.len()
    ));
    let mut rig = Rig::open(servers, o.workload())?;
    o.say(format!(
        "{}: {} connections open in {:.1}s ({} errors); {} presences",
        target.name(),
        o.connections,
        rig.setup_secs,
        rig.setup_errors,
        rig.ledger.iter().sum::<i64>()
    ));
    let mut steps = Vec::new();
    let mut best: Option<Step> = None;
    match o.rate {
        Some(r) => {
            let s = rig.churn(r, o.duration)?;
            o.say(format!("{}: {}", target.name(), s.json()));
            best = Some(s.clone());
            steps.push(s);
        }
        None => {
            for &r in &LADDER {
                let mut s = rig.churn(r, o.duration)?;
                o.say(format!("{}: {}", target.name(), s.json()));
                if !s.sustained() && s.errors == 0 {
                    // One retry at the same rate: a noisy neighbour should not end the climb.
                    steps.push(s);
                    s = rig.churn(r, o.duration)?;
                    o.say(format!("{} (retry): {}", target.name(), s.json()));
                }
                let ok = s.sustained();
                steps.push(s.clone());
                if !ok {
                    break;
                }
                best = Some(s);
            }
        }
    }
    let exact_ms = if counting {
        rig.wait_exact(Duration::from_secs(10))?
    } else {
        None
    };
    let rss_each = rig.servers.rss_each();
    let rss: u64 = rss_each.iter().sum();
    let last = steps.last().cloned();
    let shown = best.clone().or(last).ok_or("no churn step ran")?;
    let errors = rig.setup_errors + steps.iter().map(|s| s.errors).sum::<u64>();
    let mut v = json!({
        "target": target.name(),
        "servers": rig.servers.addrs.len(),
        "connections": o.connections,
        "topics": o.topics,
        "presences": rig.ledger.iter().sum::<i64>(),
        "setup_s": (rig.setup_secs * 10.0).round() / 10.0,
        "exact": exact_ms.is_some(),
        "time_to_exact_ms": exact_ms.map(|m| (m * 10.0).round() / 10.0),
        "errors": errors,
        "rss_bytes": rss,
        "rss_bytes_per_node": rss_each,
        "max_sustained_joins_per_s": best.as_ref().map_or(0.0, |b| b.joins_per_s.round()),
        "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
    });
    if let (Some(m), Value::Object(shown)) = (v.as_object_mut(), shown.json()) {
        for (k, x) in shown {
            m.entry(k).or_insert(x);
        }
    }
    Ok(v)
}

/// `load`: headcount alone.
pub fn load(o: &LoadOpts) -> Result<Value, String> {
    let mut v = run_target(o, Target::Headcount, true)?;
    v["machine"] = machine();
    v["nodes"] = json!(o.nodes);
    Ok(v)
}

/// `baseline-redis`: headcount, Redis INCR/DECR and Redis sets, same workload.
pub fn baseline(o: &LoadOpts, plot_path: Option<&std::path::Path>) -> Result<Value, String> {
    let hc = run_target(o, Target::Headcount, true)?;
    let incr = run_target(o, Target::RedisIncr, true)?;
    let set = run_target(o, Target::RedisSet, true)?;
    let rate = |v: &Value| v["joins_per_s"].as_f64().unwrap_or(0.0);
    let max = |v: &Value| v["max_sustained_joins_per_s"].as_f64().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let (vs_incr, vs_set) = if o.rate.is_some() {
        (ratio(rate(&hc), rate(&incr)), ratio(rate(&hc), rate(&set)))
    } else {
        (ratio(max(&hc), max(&incr)), ratio(max(&hc), max(&set)))
    };
    if let Some(p) = plot_path {
        plot::latency_vs_rate(p, &[&hc, &incr, &set])?;
    }
    // p99 and CPU per op at the highest ladder rate every target ran and sustained.
    let sustained_rates = |v: &Value| -> Vec<f64> {
        v["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter(|st| {
                        st["join_p99_ms"].as_f64().unwrap_or(f64::MAX) <= 10.0
                            && st["errors"].as_u64() == Some(0)
                    })
                    .filter_map(|st| st["target_joins_per_s"].as_f64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b, c) = (
        sustained_rates(&hc),
        sustained_rates(&incr),
        sustained_rates(&set),
    );
    let common = a
        .iter()
        .copied()
        .filter(|r| b.contains(r) && c.contains(r))
        .fold(0.0, f64::max);
    let at = |v: &Value| {
        v["steps"].as_array().and_then(|s| {
            s.iter()
                .rfind(|st| st["target_joins_per_s"].as_f64() == Some(common))
                .map(|st| json!({"join_p99_ms": st["join_p99_ms"], "cpu_us_per_op": st["cpu_us_per_op"], "cpu_percent": st["cpu_percent"]}))
        })
    };
    let at_common = json!({
        "joins_per_s": common,
        "headcount": at(&hc),
        "redis_incr": at(&incr),
        "redis_set": at(&set),
    });
    let mut v = hc.clone();
    v["at_common_rate"] = at_common;
    v["machine"] = machine();
    v["nodes"] = json!(o.nodes);
    v["redis_note"] =
        json!("redis-server is one process on one node; headcount runs --nodes processes");
    v["redis_incr_churn_ops_per_s"] = incr["churn_ops_per_s"].clone();
    v["redis_set_churn_ops_per_s"] = set["churn_ops_per_s"].clone();
    v["redis_incr"] = incr;
    v["redis_set"] = set;
    v["vs_incr"] = json!(vs_incr);
    v["vs_set"] = json!(vs_set);
    Ok(v)
}

/// `overhead`: CPU per op of `serve` counting vs `serve --no-count`, same rate, interleaved.
pub fn overhead(o: &LoadOpts, rounds: usize) -> Result<Value, String> {
    let rate = o.rate.unwrap_or(20_000.0);
    let o = LoadOpts {
        rate: Some(rate),
        ..o.clone()
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..rounds.max(1) {
        for counting in [true, false] {
            let v = run_target(&o, Target::Headcount, counting)?;
            let us = v["cpu_us_per_op"].as_f64().unwrap_or(0.0);
            o.say(format!("counting={counting}: {us:.3} µs CPU per op"));
            if counting { &mut on } else { &mut off }.push((us, v));
        }
    }
    let med = |v: &[(f64, Value)]| {
        let mut x: Vec<f64> = v.iter().map(|p| p.0).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (a, b) = (med(&on), med(&off));
    let mut v = on[on.len() / 2].1.clone();
    v["machine"] = machine();
    v["cpu_us_per_op_counting"] = json!((a * 1000.0).round() / 1000.0);
    v["cpu_us_per_op_not_counting"] = json!((b * 1000.0).round() / 1000.0);
    v["overhead_ratio"] = json!(if b > 0.0 {
        ((a / b) * 1000.0).round() / 1000.0
    } else {
        0.0
    });
    v["runs_counting"] = json!(on.iter().map(|p| p.0).collect::<Vec<_>>());
    v["runs_not_counting"] = json!(off.iter().map(|p| p.0).collect::<Vec<_>>());
    Ok(v)
}

/// `soak`: churn at a moderate rate for a long time, sampling RSS; exact at the end.
pub fn soak(o: &LoadOpts, plot_path: Option<&std::path::Path>) -> Result<Value, String> {
    let rate = o.rate.unwrap_or(10_000.0);
    raise_nofile(PER_CLIENT_PROC as u64 + 1000)?;
    let servers = Servers::headcount(o.nodes, o.workers, &o.tick, true)?;
    let mut rig = Rig::open(servers, o.workload())?;
    let start = Instant::now();
    let slice = Duration::from_secs(1).min(o.duration);
    let mut samples: Vec<(f64, u64)> = vec![(0.0, rig.servers.rss())];
    let mut steps = Vec::new();
    while start.elapsed() < o.duration {
        let s = rig.churn(rate, slice)?;
        samples.push((start.elapsed().as_secs_f64(), rig.servers.rss()));
        steps.push(s);
    }
    let exact_ms = rig.wait_exact(Duration::from_secs(10))?;
    // Flat after warm-up: the last fifth's RSS against the second fifth's.
    let n = samples.len();
    let warm = samples[(n / 5).max(1).min(n - 1)..(2 * n / 5).max(2).min(n)]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let end = samples[(4 * n / 5).min(n - 1)..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let growth = if warm > 0 {
        end as f64 / warm as f64 - 1.0
    } else {
        0.0
    };
    if let Some(p) = plot_path {
        plot::rss_over_time(p, &samples)?;
    }
    let errors: u64 = rig.setup_errors + steps.iter().map(|s| s.errors).sum::<u64>();
    let p99 = steps.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
    let mean = |f: fn(&Step) -> f64| steps.iter().map(f).sum::<f64>() / steps.len().max(1) as f64;
    let med = |f: fn(&Step) -> f64| {
        let mut x: Vec<f64> = steps.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(json!({
        "machine": machine(),
        "nodes": o.nodes,
        "connections": o.connections,
        "duration_s": o.duration.as_secs_f64(),
        "target_joins_per_s": rate,
        "churn_ops_per_s": mean(|s| s.churn_ops_per_s).round(),
        "join_p99_ms_worst_second": p99,
        "join_p50_ms": med(|s| s.p50_ms),
        "join_p99_ms": med(|s| s.p99_ms),
        "join_p999_ms": med(|s| s.p999_ms),
        "cpu_percent": (mean(|s| s.cpu_percent) * 10.0).round() / 10.0,
        "wire_bytes_per_node_per_s": mean(|s| s.wire_bytes_per_node_per_s).round(),
        "exact": exact_ms.is_some(),
        "time_to_exact_ms": exact_ms,
        "errors": errors,
        "rss_bytes": rig.servers.rss(),
        "rss_after_warmup_bytes": warm,
        "rss_at_end_bytes": end,
        "rss_growth_after_warmup": (growth * 10000.0).round() / 10000.0,
        "flat_within_1_percent": growth.abs() <= 0.01,
        "rss_samples": samples.iter().map(|s| json!([ (s.0 * 10.0).round() / 10.0, s.1 ])).collect::<Vec<_>>(),
    }))
}
