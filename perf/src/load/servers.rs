//! The servers under load: `headcount serve` nodes or one `redis-server`, started as real
//! processes on loopback ([`Servers`]); their CPU time, RSS and wire bytes from /proc and INFO;
//! and a [`Checker`] that reads every topic's count back.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use headcount_server::resp::client::{Client, Value};

use crate::proc;

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
    /// The target [`Target::name`] calls `s`.
    pub fn parse(s: &str) -> Option<Target> {
        [Target::Headcount, Target::RedisIncr, Target::RedisSet]
            .into_iter()
            .find(|t| t.name() == s)
    }

    /// Its name in reports and on the load-client command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Headcount => "headcount",
            Target::RedisIncr => "redis-incr",
            Target::RedisSet => "redis-set",
        }
    }
}

/// Server processes of one [`Target`], stopped on drop.
pub struct Servers {
    /// What they are.
    pub target: Target,
    procs: Vec<Child>,
    /// Where they listen for clients, one per process.
    pub addrs: Vec<SocketAddr>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        proc::stop(&mut self.procs);
    }
}

impl Servers {
    /// `nodes` × `headcount serve` in one cluster of their own on loopback multicast.
    pub fn headcount(
        nodes: usize,
        workers: usize,
        tick: &str,
        counting: bool,
    ) -> Result<Servers, String> {
        let cluster = format!("load-{}", std::process::id());
        let workers = workers.to_string();
        let mut args = vec![
            "--workers",
            &workers,
            "--tick",
            tick,
            "--cluster",
            &cluster,
            "--max-topics-per-connection",
            "64",
        ];
        if !counting {
            // Same cluster, same engine thread: only the counting is missing.
            args.push("--no-count");
        }
        Servers::spawn_headcount(nodes, &args)
    }

    /// One `headcount serve --standalone` (no cluster sockets).
    pub fn headcount_standalone(workers: usize) -> Result<Servers, String> {
        Servers::spawn_headcount(1, &["--standalone", "--workers", &workers.to_string()])
    }

    /// `n` × `headcount serve --listen 127.0.0.1:0 <args>`, each waited for until it listens.
    fn spawn_headcount(n: usize, args: &[&str]) -> Result<Servers, String> {
        let mut s = Servers {
            target: Target::Headcount,
            procs: Vec::new(),
            addrs: Vec::new(),
        };
        for _ in 0..n {
            // Owned by `s` once started: stopped on drop if a later one fails.
            let (child, addr) = proc::spawn_serve(args)?;
            s.procs.push(child);
            s.addrs.push(addr);
        }
        Ok(s)
    }

    /// One `redis-server` on loopback, nothing persisted.
    pub fn redis(target: Target, max_clients: usize) -> Result<Servers, String> {
        let port = proc::free_port()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                &max_clients.to_string(),
                "--tcp-backlog",
                "4096",
                // Clients come from many 127.x addresses; protected mode admits only 127.0.0.1.
                "--protected-mode",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = Servers {
            target,
            procs: vec![child],
            addrs: vec![addr],
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// CPU seconds the servers have used, summed.
    pub fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(|p| proc::cpu_seconds(p.id())).sum()
    }

    /// Resident set size, summed over the servers.
    pub fn rss(&self) -> u64 {
        self.rss_each().iter().sum()
    }

    /// Resident set size of each server.
    pub fn rss_each(&self) -> Vec<u64> {
        self.procs.iter().map(|p| proc::rss(p.id())).collect()
    }

    /// Cluster bytes sent, summed over the nodes (headcount only).
    pub fn wire_bytes(&self) -> u64 {
        if self.target != Target::Headcount {
            return 0;
        }
        self.addrs
            .iter()
            .filter_map(|&a| {
                let mut c = Checker::connect(a).ok()?;
                let info = c.cmd(&["INFO", "cluster"]).ok()?.as_text()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("bytes_sent:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }
}

/// A blocking connection that reads counts back (the server crate's RESP [`Client`], with
/// errors as text).
pub struct Checker(Client);

impl Checker {
    /// Connects to `addr` (replies must come within 30 s).
    pub fn connect(addr: SocketAddr) -> Result<Checker, String> {
        let c = Client::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        c.set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Checker(c))
    }

    fn send(&mut self, args: &[&str]) -> Result<(), String> {
        self.0.send(args).map_err(|e| e.to_string())
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Value, String> {
        self.send(args)?;
        self.read()
    }

    fn read(&mut self) -> Result<Value, String> {
        self.0.read().map_err(|e| e.to_string())
    }

    /// Every topic's count (`t0`…) and the total, as this server reports them.
    pub fn counts(&mut self, target: Target, topics: usize) -> Result<(Vec<i64>, i64), String> {
        let mut out = Vec::with_capacity(topics);
        for chunk in (0..topics).collect::<Vec<_>>().chunks(1000) {
            let names: Vec<String> = chunk.iter().map(|t| format!("t{t}")).collect();
            match target {
                Target::Headcount | Target::RedisIncr => {
                    let mut args = vec![if target == Target::Headcount {
                        "COUNT"
                    } else {
                        "MGET"
                    }];
                    args.extend(names.iter().map(String::as_str));
                    match self.cmd(&args)? {
                        Value::Array(v) => {
                            for r in &v {
                                out.push(count(r)?);
                            }
                        }
                        // COUNT of a single topic answers an integer.
                        r => out.push(count(&r)?),
                    }
                }
                Target::RedisSet => {
                    for n in &names {
                        self.send(&["SCARD", n])?;
                    }
                    for _ in &names {
                        out.push(count(&self.read()?)?);
                    }
                }
            }
        }
        let total = match target {
            Target::Headcount => count(&self.cmd(&["TOTAL"])?)?,
            _ => out.iter().sum(),
        };
        Ok((out, total))
    }
}

/// A count: an integer (COUNT, TOTAL, SCARD), a number in a bulk string (MGET of an INCR'd
/// key), or nil (a key never INCR'd): 0.
fn count(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Null => Ok(0),
        Value::Bulk(b) => String::from_utf8_lossy(b)
            .parse()
            .map_err(|e| format!("count {b:?}: {e}")),
        other => Err(format!("expected a count, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_integers_numbers_and_nil() {
        assert_eq!(count(&Value::Int(7)), Ok(7));
        assert_eq!(count(&Value::Bulk(b"42".to_vec())), Ok(42));
        assert_eq!(count(&Value::Null), Ok(0));
        assert!(count(&Value::Bulk(b"4x".to_vec())).is_err());
        assert!(count(&Value::Error("ERR no".into())).is_err());
        assert!(count(&Value::Simple("OK".into())).is_err());
    }
}
