//! `headcount-perf conns`: the memory a `headcount serve` process spends per client connection,
//! idle and holding one presence, from its resident set size — beside `redis-server` doing the
//! same with one `INCR`'d key per connection, when it is installed.
//!
//! The kernel's socket buffers are not in a process's RSS, so this is the server's own cost.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::load::{Servers, Target};

/// The `headcount` binary beside this one (both are built into the same target directory).
pub fn headcount_bin() -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("headcount");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p headcount-server)",
            bin.display()
        ))
    }
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
fn measure(p: &Servers, n: usize, join: &dyn Fn(usize) -> Vec<u8>) -> Result<(f64, f64), String> {
    std::thread::sleep(Duration::from_millis(500));
    let before = p.rss();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(p.addrs[0]).map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        conns.push(c);
    }
    // A PING each: every connection accepted, registered and answered once.
    round(&mut conns, |_| resp(&["PING"]))?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = p.rss();
    round(&mut conns, join)?;
    std::thread::sleep(Duration::from_millis(500));
    let joined = p.rss();
    Ok((
        (idle.saturating_sub(before)) as f64 / n as f64,
        (joined.saturating_sub(before)) as f64 / n as f64,
    ))
}

pub fn run(connections: usize, json_out: bool) -> Result<Value, String> {
    let hc = Servers::headcount_standalone(2)?;
    let topic = |i: usize| format!("room:{}", i % 1000);
    let (hc_idle, hc_joined) = measure(&hc, connections, &|i| resp(&["JOIN", &topic(i)]))?;
    drop(hc);
    let redis = match Servers::redis(Target::RedisIncr, 100_000.max(connections + 1000)) {
        Ok(r) => {
            let (idle, joined) = measure(&r, connections, &|i| resp(&["INCR", &topic(i)]))?;
            json!({ "idle_bytes_per_conn": idle, "one_key_bytes_per_conn": joined })
        }
        Err(e) => {
            if !json_out {
                eprintln!("{e}: measuring headcount only");
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
