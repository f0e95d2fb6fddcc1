//! `headcount-perf conns`: the memory a `headcount serve` process spends per client connection,
//! idle and holding one presence, from its resident set size — beside `redis-server` doing the
//! same with one `INCR`'d key per connection, when it is installed.
//!
//! The kernel's socket buffers are not in a process's RSS, so this is the server's own cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A server process under measurement; killed on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `headcount` binary beside this one (both are built into the same target directory).
pub fn headcount_bin() -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("headcount");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release --bin headcount)",
            bin.display()
        ))
    }
}

fn start_headcount() -> Result<Proc, String> {
    let mut child = Command::new(headcount_bin()?)
        .args([
            "serve",
            "--standalone",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("headcount serve: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or("headcount serve exited before listening")?
            .map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or("bad listen line")?;
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Proc { child, addr })
}

fn start_redis() -> Option<Proc> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
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
            "100000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Proc { child, addr })
}

/// Resident set size of `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sends `req` on every connection, then reads one reply line from each.
fn round(conns: &mut [TcpStream], req: impl Fn(usize) -> Vec<u8>) -> Result<(), String> {
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&req(i)).map_err(|e| e.to_string())?;
    }
    let mut b = [0u8; 64];
    for c in conns.iter_mut() {
        let n = c.read(&mut b).map_err(|e| e.to_string())?;
        if n == 0 || b[0] == b'-' {
            return Err(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&b[..n])
            ));
        }
    }
    Ok(())
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    b
}

/// Bytes per connection for one server: (idle, holding one presence / one key).
fn measure(p: &Proc, n: usize, join: &dyn Fn(usize) -> Vec<u8>) -> Result<(f64, f64), String> {
    std::thread::sleep(Duration::from_millis(500));
    let pid = p.child.id();
    let before = rss(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(p.addr).map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        conns.push(c);
    }
    // A PING each: every connection accepted, registered and answered once.
    round(&mut conns, |_| resp(&["PING"]))?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss(pid);
    round(&mut conns, join)?;
    std::thread::sleep(Duration::from_millis(500));
    let joined = rss(pid);
    Ok((
        (idle.saturating_sub(before)) as f64 / n as f64,
        (joined.saturating_sub(before)) as f64 / n as f64,
    ))
}

pub fn run(connections: usize, json_out: bool) -> Result<Value, String> {
    let hc = start_headcount()?;
    let topic = |i: usize| format!("room:{}", i % 1000);
    let (hc_idle, hc_joined) = measure(&hc, connections, &|i| resp(&["JOIN", &topic(i)]))?;
    drop(hc);
    let redis = match start_redis() {
        Some(r) => {
            let (idle, joined) = measure(&r, connections, &|i| resp(&["INCR", &topic(i)]))?;
            json!({ "idle_bytes_per_conn": idle, "one_key_bytes_per_conn": joined })
        }
        None => {
            if !json_out {
                eprintln!("redis-server not found: measuring headcount only");
            }
            Value::Null
        }
    };
    Ok(json!({
        "connections": connections,
        "headcount_idle_bytes_per_conn": hc_idle,
        "headcount_one_presence_bytes_per_conn": hc_joined,
        "redis": redis,
    }))
}
