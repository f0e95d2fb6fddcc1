//! The servers under load: `headcount serve` nodes or one `redis-server`, started as real
//! processes on loopback; their CPU time, RSS and wire bytes from /proc and INFO; and a checker
//! that reads every topic's count back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Target;
use crate::conns::{headcount_bin, rss};

pub struct Servers {
    pub target: Target,
    procs: Vec<Child>,
    pub addrs: Vec<SocketAddr>,
    clk_tck: f64,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut self.procs {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = p.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
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
        let bin = headcount_bin()?;
        let mut s = Servers {
            target: Target::Headcount,
            procs: Vec::new(),
            addrs: Vec::new(),
            clk_tck: clk_tck(),
        };
        for _ in 0..n {
            let mut child = Command::new(&bin)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let stderr = child.stderr.take().ok_or("no stderr")?;
            // Owned by `s` from here: killed on drop if anything below fails.
            s.procs.push(child);
            let mut lines = BufReader::new(stderr).lines();
            let addr = loop {
                let Some(Ok(line)) = lines.next() else {
                    return Err("headcount serve exited before listening".into());
                };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    break rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse().ok())
                        .ok_or("bad listen line")?;
                }
            };
            std::thread::spawn(move || {
                for l in lines.map_while(Result::ok) {
                    if l.contains("WARN") || l.contains("ERROR") {
                        eprintln!("serve: {l}");
                    }
                }
            });
            s.addrs.push(addr);
        }
        Ok(s)
    }

    /// One `redis-server` on loopback, nothing persisted.
    pub fn redis(target: Target, max_clients: usize) -> Result<Servers, String> {
        let port = free_port()?;
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
            clk_tck: clk_tck(),
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
        self.procs
            .iter()
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{}/stat", p.id()))
                    .ok()
                    .and_then(|s| {
                        // Fields after the parenthesised command name: utime is 14th, stime 15th.
                        let rest = s.rsplit_once(')')?.1;
                        let f: Vec<&str> = rest.split_whitespace().collect();
                        let u: f64 = f.get(11)?.parse().ok()?;
                        let st: f64 = f.get(12)?.parse().ok()?;
                        Some((u + st) / self.clk_tck)
                    })
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// Resident set size, summed over the servers.
    pub fn rss(&self) -> u64 {
        self.rss_each().iter().sum()
    }

    /// Resident set size of each server.
    pub fn rss_each(&self) -> Vec<u64> {
        self.procs.iter().map(|p| rss(p.id())).collect()
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
                let info = c.cmd(&["INFO", "cluster"]).ok()?.text();
                info.lines()
                    .find_map(|l| l.strip_prefix("bytes_sent:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }
}

/// A reply, as the checker needs it.
#[derive(Debug)]
pub enum Reply {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
    Status(String),
    Error(String),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            _ => String::new(),
        }
    }
    /// A count: an integer, a number in a bulk string, or nil (0).
    fn count(&self) -> Result<i64, String> {
        match self {
            Reply::Int(i) => Ok(*i),
            Reply::Bulk(None) => Ok(0),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b)
                .parse()
                .map_err(|e| format!("count {b:?}: {e}")),
            other => Err(format!("expected a count, got {other:?}")),
        }
    }
}

/// A blocking connection that reads counts back.
pub struct Checker {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Checker {
    pub fn connect(addr: SocketAddr) -> Result<Checker, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Checker {
            r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            w: s,
        })
    }

    fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.w.write_all(&b).map_err(|e| e.to_string())
    }

    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.send(args)?;
        self.read()
    }

    fn read(&mut self) -> Result<Reply, String> {
        let mut l = String::new();
        self.r.read_line(&mut l).map_err(|e| e.to_string())?;
        let l = l.trim_end();
        if l.is_empty() {
            return Err("connection closed".into());
        }
        let (k, rest) = l.split_at(1);
        let n = || rest.parse::<i64>().map_err(|e| format!("{l:?}: {e}"));
        Ok(match k {
            ":" => Reply::Int(n()?),
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            "$" => {
                let len = n()?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; len as usize + 2];
                    self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
                    b.truncate(len as usize);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => Reply::Array(
                (0..n()?.max(0))
                    .map(|_| self.read())
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(format!("unexpected reply {l:?}")),
        })
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
                        Reply::Array(v) => {
                            for r in v {
                                out.push(r.count()?);
                            }
                        }
                        // COUNT of a single topic answers an integer.
                        r => out.push(r.count()?),
                    }
                }
                Target::RedisSet => {
                    for n in &names {
                        self.send(&["SCARD", n])?;
                    }
                    for _ in &names {
                        out.push(self.read()?.count()?);
                    }
                }
            }
        }
        let total = match target {
            Target::Headcount => self.cmd(&["TOTAL"])?.count()?,
            _ => out.iter().sum(),
        };
        Ok((out, total))
    }
}
