//! `headcount-perf conns`: the memory a `headcount serve` process spends per client connection,
//! idle and holding one presence, from its resident set size — beside `redis-server` doing the
//! same with one `INCR`'d key per connection, when it is installed.
//!
//! The kernel's socket buffers are not in a process's RSS, so this is the server's own cost.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::Args as ClapArgs;
use headcount_server::resp::client::{self, encode_request, read_reply};
use serde_json::{Value, json};

use crate::load::servers::{Servers, Target};
use crate::report::print;

// `conns`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Client connections to open (mind `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

/// Measures and prints, or prints the error (exit status 1).
pub fn run(a: &Args) {
    match measure_both(a.connections.max(1), a.json) {
        Ok(v) => print(a.json, &v),
        Err(e) => {
            eprintln!("headcount-perf conns: {e}");
            std::process::exit(1);
        }
    }
}

/// Sends the request `req(i)` on every connection `i`, then reads one reply from each.
fn round(conns: &mut [TcpStream], req: impl Fn(usize, &mut Vec<u8>)) -> Result<(), String> {
    let mut out = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        out.clear();
        req(i, &mut out);
        c.write_all(&out).map_err(|e| e.to_string())?;
    }
    for c in conns.iter() {
        // One reply is outstanding and nothing follows it: the reader may go with it.
        let reply = read_reply(&mut BufReader::new(c)).map_err(|e| e.to_string())?;
        if let client::Value::Error(e) = reply {
            return Err(format!("unexpected reply {e:?}"));
        }
    }
    Ok(())
}

/// Bytes per connection for one server: (idle, holding one presence / one key).
fn measure(
    p: &Servers,
    n: usize,
    join: &dyn Fn(usize, &mut Vec<u8>),
) -> Result<(f64, f64), String> {
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
    round(&mut conns, |_, out| encode_request(out, &[b"PING"]))?;
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

/// headcount, then redis-server when installed: bytes per connection, idle and holding one
/// presence (one key).
fn measure_both(connections: usize, json_out: bool) -> Result<Value, String> {
    let hc = Servers::headcount_standalone(2)?;
    let topic = |i: usize| format!("room:{}", i % 1000);
    let (hc_idle, hc_joined) = measure(&hc, connections, &|i, out| {
        encode_request(out, &["JOIN", topic(i).as_str()])
    })?;
    drop(hc);
    let redis = match Servers::redis(Target::RedisIncr, 100_000.max(connections + 1000)) {
        Ok(r) => {
            let (idle, joined) = measure(&r, connections, &|i, out| {
                encode_request(out, &["INCR", topic(i).as_str()])
            })?;
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
