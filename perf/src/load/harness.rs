//! The load harness: servers plus client processes holding every connection ([`Harness`]),
//! driven phase by phase — open, churn at a rate (a [`Step`]'s figures), then check that every
//! server's counts equal the clients' ledger ([`Harness::wait_exact`]).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use headcount_server::resp::client;
use serde_json::{Value, json};

use super::phase::{Phase, Report};
use super::servers::{Checker, Servers};
use crate::proc;

/// Connections one client process holds at most (under this machine's open-file limit).
pub const PER_CLIENT_PROC: usize = 15_000;

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
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Servers plus the client processes holding every connection.
pub struct Harness {
    /// The servers under load.
    pub servers: Servers,
    w: Workload,
    clients: Vec<ClientProc>,
    /// Per topic: the presences the servers should hold (every client process's ledger summed).
    pub ledger: Vec<i64>,
    /// Connections that failed to open.
    pub setup_errors: u64,
    /// Seconds it took to open every connection.
    pub setup_secs: f64,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = writeln!(c.stdin, "{}", Phase::Stop.line());
            let _ = c.stdin.flush();
        }
        for c in &mut self.clients {
            proc::reap(&mut c.child, Instant::now() + Duration::from_secs(10));
        }
    }
}

/// Quantile `q` of a histogram of microseconds, in milliseconds (3 decimals).
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 1000.0 * 1000.0).round() / 1000.0
}

impl Harness {
    /// Starts the client processes and opens every connection (each joins its first topics).
    pub fn open(servers: Servers, w: Workload) -> Result<Harness, String> {
        let procs = w
            .connections
            .div_ceil(PER_CLIENT_PROC)
            .max(w.threads)
            .max(1);
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let addrs: Vec<String> = servers.addrs.iter().map(|a| a.to_string()).collect();
        let mut clients = Vec::new();
        for id in 0..procs {
            let mut child = Command::new(&me)
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
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("load-client: {e}"))?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
            clients.push(ClientProc {
                child,
                stdin,
                stdout,
            });
        }
        let mut harness = Harness {
            servers,
            ledger: vec![0; w.topics],
            w,
            clients,
            setup_errors: 0,
            setup_secs: 0.0,
        };
        let start = Instant::now();
        let reports = harness.phase(&Phase::Open)?;
        harness.setup_secs = start.elapsed().as_secs_f64();
        harness.setup_errors = reports.iter().map(|r| r.errors).sum();
        Ok(harness)
    }

    fn phase(&mut self, p: &Phase) -> Result<Vec<Report>, String> {
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
                        if let client::Value::Array(v) = c.cmd(&["TOP", "10000"])? {
                            let sum: i64 = v
                                .chunks(2)
                                .filter_map(|p| match &p[1] {
                                    client::Value::Int(i) => Some(*i),
                                    _ => None,
                                })
                                .sum();
                            let odd: Vec<String> = v
                                .chunks(2)
                                .filter_map(|p| match &p[0] {
                                    client::Value::Bulk(b) if !b.starts_with(b"t") => {
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
