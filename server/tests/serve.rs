//! `headcount serve` end to end: real processes on loopback, a RESP client written here, and
//! the real `redis-cli`, `redis-benchmark` and `promtool` where installed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Client, Server, V, info_field, proc_status_bytes, tool, unique_cluster, wait_count, wait_for,
};

fn standalone() -> Server {
    Server::start(&["--standalone"])
}

#[test]
fn join_count_leave_and_close() {
    let s = standalone();
    let mut a = s.connect();
    let mut b = s.connect();
    assert_eq!(a.cmd(&["PING"]), V::Simple("PONG".into()));
    assert_eq!(a.cmd(&["JOIN", "room:1", "room:2", "room:1"]).int(), 3);
    assert_eq!(b.cmd(&["JOIN", "room:1"]).int(), 1);
    assert!(wait_count(s.addr, "room:1", 3));
    assert_eq!(
        b.cmd(&["COUNT", "room:1", "room:2", "nobody"]),
        V::Array(vec![V::Int(3), V::Int(1), V::Int(0)])
    );
    assert_eq!(b.cmd(&["LCOUNT", "room:2"]).int(), 1);
    assert_eq!(b.cmd(&["TOTAL"]).int(), 4);
    assert_eq!(
        b.cmd(&["TOP", "2"]),
        V::Array(vec![
            V::Bulk(b"room:1".to_vec()),
            V::Int(3),
            V::Bulk(b"room:2".to_vec()),
            V::Int(1)
        ])
    );
    // LEAVE removes one presence per name held; names not held count nothing.
    assert_eq!(a.cmd(&["LEAVE", "room:1", "room:9", "room:2"]).int(), 2);
    assert!(wait_count(s.addr, "room:1", 2));
    assert!(wait_count(s.addr, "room:2", 0));
    // Closing a connection leaves everything it held.
    drop(a);
    assert!(wait_count(s.addr, "room:1", 1));
    assert_eq!(b.cmd(&["QUIT"]), V::Simple("OK".into()));
    assert!(b.closed());
    assert!(wait_count(s.addr, "room:1", 0));
    let mut c = s.connect();
    assert_eq!(c.cmd(&["TOTAL"]).int(), 0);
}

#[test]
fn pipelined_and_inline_requests() {
    let s = standalone();
    let mut c = s.connect();
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(
            format!(
                "*2\r\n$4\r\nJOIN\r\n${}\r\nt{i}\r\n",
                1 + i.to_string().len()
            )
            .as_bytes(),
        );
    }
    // Sent in odd-sized pieces: requests split anywhere must still parse.
    for chunk in batch.chunks(7) {
        c.send_raw(chunk);
    }
    for _ in 0..1000 {
        assert_eq!(c.read().int(), 1);
    }
    c.send_raw(b"PING\r\nJOIN  a   b\r\nECHO \"x y\"\r\n");
    assert_eq!(c.read(), V::Simple("PONG".into()));
    assert_eq!(c.read().int(), 2);
    assert_eq!(c.read(), V::Bulk(b"x y".to_vec()));
    assert!(wait_count(s.addr, "t999", 1));
}

#[test]
fn a_request_completed_by_a_later_write_is_answered() {
    let s = standalone();
    let mut c = s.connect();
    // One whole request, then half of the next; the rest comes alone, later. (A wrong resume
    // hint for the carried half would leave it unparsed for good.)
    c.send_raw(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nJOIN");
    assert_eq!(c.read(), V::Simple("PONG".into()));
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(b"\r\n$1\r\na\r\n");
    assert_eq!(c.read().int(), 1);
    // Split inside a bulk string's data and inside its length, too.
    c.send_raw(b"PING\r\n*2\r\n$4\r\nJO");
    assert_eq!(c.read(), V::Simple("PONG".into()));
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(b"IN\r\n$");
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(b"1\r\nb\r\n");
    assert_eq!(c.read().int(), 1);
}

#[test]
fn errors_and_limits() {
    let s = Server::start(&[
        "--standalone",
        "--max-topics-per-connection",
        "3",
        "--max-args",
        "8",
        "--max-arg-len",
        "300",
    ]);
    let mut c = s.connect();
    let e = c.cmd(&["FLUSHALL"]);
    assert_eq!(e, V::Err("ERR unknown command 'FLUSHALL'".into()));
    assert!(c.cmd(&["JOIN"]).str().contains("wrong number of arguments"));
    assert!(c.cmd(&["TOP", "x"]).is_err());
    assert!(c.cmd(&["TOP", "100000"]).str().contains("limited"));
    assert!(c.cmd(&["JOIN", ""]).str().contains("empty topic"));
    let long = "x".repeat(256);
    assert!(c.cmd(&["JOIN", &long]).str().contains("longer than 255"));
    assert_eq!(c.cmd(&["JOIN", "a", "b"]).int(), 2);
    // Over the per-connection cap: nothing of the command is joined.
    let e = c.cmd(&["JOIN", "c", "d"]);
    assert!(e.str().contains("too many presences"), "{e:?}");
    assert_eq!(c.cmd(&["JOIN", "c"]).int(), 1);
    // Still usable after every error above.
    assert_eq!(c.cmd(&["PING", "hi"]), V::Bulk(b"hi".to_vec()));
    assert!(wait_count(s.addr, "c", 1));

    // Too many arguments, too long an argument, garbage: an error, then the connection closes.
    for bad in [
        &b"*9\r\n"[..],
        b"*2\r\n$4\r\nJOIN\r\n$301\r\n",
        b"*1\r\n*1\r\n$1\r\na\r\n",
        b"*x\r\n",
        b"*1\r\n$2\r\nabc\r\n",
    ] {
        let mut d = s.connect();
        assert_eq!(d.cmd(&["JOIN", "held"]).int(), 1);
        d.send_raw(bad);
        let e = d.read();
        assert!(
            matches!(&e, V::Err(m) if m.starts_with("ERR Protocol error")),
            "{e:?}"
        );
        assert!(
            d.closed(),
            "closed after {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Each of those connections' presences left with it.
    assert!(wait_count(s.addr, "held", 0));
    // The nesting that crashes a recursive decoder: one error, one closed connection.
    let mut d = s.connect();
    d.send_raw(&b"*1\r\n".repeat(100_000));
    assert!(d.read().is_err());
    assert!(d.closed());
    // And the server is fine.
    assert_eq!(c.cmd(&["TOTAL"]).int(), 3);
}

#[test]
fn random_garbage_never_kills_a_worker() {
    let s = standalone();
    let mut seed = 0x1234_5678_9abc_def1u64;
    for _ in 0..200 {
        let mut d = s.connect();
        let n = (seed % 512) as usize + 1;
        let mut b = Vec::with_capacity(n);
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b.push(match seed % 8 {
                0 => b'*',
                1 => b'$',
                2 => b'\r',
                3 => b'\n',
                4 => b'0' + (seed >> 8) as u8 % 10,
                _ => (seed >> 16) as u8,
            });
        }
        d.send_raw(&b);
    }
    let mut c = s.connect();
    assert_eq!(c.cmd(&["PING"]), V::Simple("PONG".into()));
    assert_eq!(c.cmd(&["JOIN", "alive"]).int(), 1);
    assert!(wait_count(s.addr, "alive", 1));
}

#[test]
fn a_client_that_reads_late_gets_every_reply() {
    let s = standalone();
    let mut c = s.connect();
    assert_eq!(c.cmd(&["JOIN", "x"]).int(), 1);
    assert!(wait_count(s.addr, "x", 1));
    // 20,000 pipelined TOP requests written before any reply is read (like a client-side
    // pipeline): the kernel's socket buffers and the server's (up to the 256 KiB pause) hold
    // the replies, and every one is sent once the client reads.
    let req = b"*2\r\n$3\r\nTOP\r\n$1\r\n5\r\n".repeat(20_000);
    let mut w = std::net::TcpStream::connect(s.addr).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = {
        let mut w = w.try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&req).is_ok())
    };
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the server answers others.
    assert_eq!(c.cmd(&["TOTAL"]).int(), 1);
    // Then read everything: every reply arrives.
    let one = b"*2\r\n$1\r\nx\r\n:1\r\n".len();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < one * 20_000 {
        let n = w.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    assert_eq!(got, one * 20_000);
    assert!(writer.join().unwrap());
}

/// With `--max-output` below the 256 KiB pause, a client that stops reading is closed rather
/// than paused (with the default 16 MiB it is paused: see
/// `a_paused_client_gets_every_reply_in_order_once_it_reads`).
#[test]
fn a_client_that_never_reads_is_closed_at_max_output_and_its_presences_leave() {
    let s = Server::start(&["--standalone", "--max-output", "100000"]);
    let mut c = s.connect();
    // 100 topics, so that each `TOP 100` reply is about 2 kB.
    let names: Vec<String> = (0..100).map(|i| format!("topic-{i:03}")).collect();
    let mut join = vec!["JOIN"];
    join.extend(names.iter().map(String::as_str));
    assert_eq!(c.cmd(&join).int(), 100);
    assert!(wait_count(s.addr, "topic-099", 1));
    let mut w = std::net::TcpStream::connect(s.addr).unwrap();
    w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    w.write_all(b"*2\r\n$4\r\nJOIN\r\n$4\r\nheld\r\n").unwrap();
    assert!(wait_count(s.addr, "held", 1));
    // ~40 MB of replies requested and none read: far past what the kernel's socket buffers
    // absorb and the 100 kB limit, so the server closes this client.
    let req = b"*2\r\n$3\r\nTOP\r\n$3\r\n100\r\n".repeat(20_000);
    let _ = w.write_all(&req); // may fail once the server has closed: that is the point
    assert!(
        wait_count(s.addr, "held", 0),
        "the closed client's presence left"
    );
    let info = c.cmd(&["INFO", "clients"]).str();
    assert!(info.contains("output_limit_closes:1"), "{info}");
}

#[test]
fn a_flooding_client_does_not_starve_its_worker() {
    // One worker: the flooder and the other client share it.
    let s = Server::start(&["--standalone", "--workers", "1"]);
    let addr = s.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut f = std::net::TcpStream::connect(addr).unwrap();
            let junk = b"*0\r\n".repeat(16 * 1024); // empty requests: no replies at all
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if f.write_all(&junk).is_err() {
                    break;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Every PING is answered while the flood goes on (each read has a 10 s bound).
    let mut c = s.connect();
    for _ in 0..20 {
        assert_eq!(c.cmd(&["PING"]), V::Simple("PONG".into()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.join().unwrap();
}

#[test]
fn auth_hello_resp3_info_nodes_config() {
    let s = Server::start(&["--standalone", "--requirepass", "s3cret"]);
    let mut c = s.connect();
    assert_eq!(
        c.cmd(&["JOIN", "a"]),
        V::Err("NOAUTH Authentication required.".into())
    );
    assert!(c.cmd(&["AUTH", "wrong"]).str().starts_with("WRONGPASS"));
    assert!(c.cmd(&["HELLO", "3"]).str().starts_with("NOAUTH"));
    assert!(
        c.cmd(&["HELLO", "3", "AUTH", "bob", "s3cret"])
            .str()
            .starts_with("WRONGPASS")
    );
    // Before AUTH a request may carry only a few arguments (Redis's limits).
    let mut d = s.connect();
    let many: Vec<&str> = std::iter::once("PING").chain(["x"; 20]).collect();
    assert!(d.cmd(&many).str().contains("too many arguments"));
    assert!(d.closed());
    let hello = c.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]);
    let V::Map(fields) = hello else {
        panic!("HELLO 3 answers a map: {hello:?}")
    };
    assert!(fields.contains(&(V::Bulk(b"proto".to_vec()), V::Int(3))));
    assert_eq!(c.cmd(&["JOIN", "a"]).int(), 1);
    assert!(c.wait_count("a", 1));
    // RESP3 forms.
    assert!(matches!(c.cmd(&["TOP", "1"]), V::Map(m) if m.len() == 1));
    let info = c.cmd(&["INFO"]);
    let V::Text(info) = info else {
        panic!("INFO in RESP3 is verbatim text: {info:?}")
    };
    for key in [
        "# Server",
        "# Clients",
        "connected_clients:1",
        "presences:1",
        "ticks:",
        "cluster_enabled:0",
    ] {
        assert!(info.contains(key), "{key} in {info}");
    }
    assert!(matches!(c.cmd(&["CLIENT", "GETNAME"]), V::Null));
    let mut d = s.connect();
    assert_eq!(d.cmd(&["AUTH", "s3cret"]), V::Simple("OK".into()));
    let nodes = d.cmd(&["NODES"]);
    assert!(matches!(&nodes, V::Array(n) if n.len() == 1), "{nodes:?}");
    assert_eq!(d.cmd(&["CLIENT", "SETNAME", "x"]), V::Simple("OK".into()));
    let cfg = d.cmd(&["CONFIG", "GET", "appendonly"]);
    assert_eq!(
        cfg,
        V::Array(vec![
            V::Bulk(b"appendonly".to_vec()),
            V::Bulk(b"no".to_vec())
        ])
    );
    let info = d.cmd(&["INFO", "clients"]).str();
    assert!(
        info.contains("connected_clients:2") && !info.contains("# Server"),
        "{info}"
    );
}

#[test]
fn two_servers_count_each_others_users_and_goodbye_is_immediate() {
    let cluster = unique_cluster("pair");
    let args = ["--cluster", &cluster, "--dead-after", "30s"];
    let a = Server::start(&args);
    let b = Server::start(&args);
    let mut ca = a.connect();
    let mut cb = b.connect();
    assert_eq!(ca.cmd(&["JOIN", "lobby", "lobby"]).int(), 2);
    assert_eq!(cb.cmd(&["JOIN", "lobby"]).int(), 1);
    assert!(wait_count(a.addr, "lobby", 3), "a sees b's user");
    assert!(wait_count(b.addr, "lobby", 3), "b sees a's users");
    assert_eq!(ca.cmd(&["LCOUNT", "lobby"]).int(), 2);
    let nodes = cb.cmd(&["NODES"]);
    assert!(matches!(&nodes, V::Array(n) if n.len() == 2), "{nodes:?}");
    // Closing a connection on a reaches b too.
    drop(ca);
    assert!(wait_count(b.addr, "lobby", 1));
    let mut ca = a.connect();
    assert_eq!(ca.cmd(&["JOIN", "lobby"]).int(), 1);
    assert!(wait_count(b.addr, "lobby", 2));
    // SIGTERM: exit 0, and b drops a's counts at once (dead-after is 30 s here).
    let status = a.terminate().expect("serve exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(wait_count(b.addr, "lobby", 1), "goodbye reached b");
    drop(ca);
}

/// A node with a smaller `--max-topics` than a peer's table showed a total that was too low,
/// silently, and asked that peer for its table 39 times a second forever. Now it says so (INFO,
/// NODES, the log) and asks with backoff.
#[test]
fn a_peer_over_this_nodes_topic_cap_is_reported_and_asked_with_backoff() {
    let cluster = unique_cluster("cap");
    let big = Server::start(&["--cluster", &cluster]);
    let mut small = Server::start(&["--cluster", &cluster, "--max-topics", "1000"]);
    let mut clients = Vec::new();
    for part in 0..3 {
        let mut c = big.connect();
        let names: Vec<String> = (0..1000).map(|i| format!("t-{part}-{i}")).collect();
        let mut cmd = vec!["JOIN"];
        cmd.extend(names.iter().map(String::as_str));
        assert_eq!(c.cmd(&cmd).int(), 1000);
        clients.push(c);
    }
    let mut c = small.connect();
    assert!(
        common::wait_for(Duration::from_secs(10), || {
            (c.info("cluster", "peers_over_cap") == 1).then_some(())
        })
        .is_some(),
        "{}",
        c.cmd(&["INFO", "cluster"]).str()
    );
    // NODES: the peer's entry says over_cap 1.
    let nodes = c.cmd(&["NODES"]);
    let V::Array(entries) = &nodes else {
        panic!("{nodes:?}")
    };
    let flagged = entries.iter().any(|e| match e {
        V::Array(kv) => kv
            .chunks(2)
            .any(|p| p[0] == V::Bulk(b"over_cap".to_vec()) && p[1] == V::Int(1)),
        _ => false,
    });
    assert!(flagged, "{nodes:?}");
    // Over 3 s, with a 25 ms resync interval (50 ms ticks): at most a handful of requests.
    let before = c.info("cluster", "resync_requests");
    std::thread::sleep(Duration::from_secs(3));
    let asked = c.info("cluster", "resync_requests") - before;
    assert!(asked <= 10, "{asked} resync requests in 3 s");
    let warned = std::iter::from_fn(|| small.log.recv_timeout(Duration::from_secs(2)).ok())
        .any(|l| l.contains("more topics than this node"));
    assert!(warned, "the log says so");
    drop(clients);
    let _ = &mut small;
}

// --- outside tools ---

fn redis_cli(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_cli_round_trips() {
    let Some(_) = tool("redis-cli", "redis-tools") else {
        return;
    };
    let cluster = unique_cluster("cli");
    let a = Server::start(&["--cluster", &cluster]);
    let b = Server::start(&["--cluster", &cluster]);
    assert_eq!(redis_cli(a.addr, &["PING"]), "PONG");
    // One redis-cli session holding presences, fed commands on its standard input.
    let mut held = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &a.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    writeln!(stdin, "JOIN game:1 game:1 game:2").unwrap();
    stdin.flush().unwrap();
    let count = |addr, t: &str, want: &str| {
        wait_for(Duration::from_secs(10), || {
            (redis_cli(addr, &["COUNT", t]) == want).then_some(())
        })
        .is_some()
    };
    assert!(count(a.addr, "game:1", "2"));
    assert!(count(b.addr, "game:1", "2"), "the other server sees them");
    assert!(count(b.addr, "game:2", "1"));
    assert_eq!(redis_cli(b.addr, &["JOIN", "game:2"]), "1");
    // That redis-cli connection closed at once: its JOIN left with it.
    assert!(count(a.addr, "game:2", "1"));
    writeln!(stdin, "LEAVE game:1").unwrap();
    stdin.flush().unwrap();
    assert!(count(b.addr, "game:1", "1"));
    let top = redis_cli(a.addr, &["TOP", "5"]);
    assert_eq!(
        top.lines().collect::<Vec<_>>(),
        ["game:1", "1", "game:2", "1"]
    );
    // Closing the session leaves everything it held, on both servers.
    drop(stdin);
    let _ = held.wait();
    assert!(count(a.addr, "game:1", "0"));
    assert!(count(b.addr, "game:2", "0"));
    assert_eq!(redis_cli(b.addr, &["TOTAL"]), "0");
    assert!(redis_cli(a.addr, &["INFO", "cluster"]).contains("peers_alive:1"));
    assert!(redis_cli(a.addr, &["NOPE"]).contains("unknown command"));
}

#[test]
fn redis_benchmark_completes_without_errors() {
    let Some(_) = tool("redis-benchmark", "redis-tools") else {
        return;
    };
    let s = standalone();
    let port = s.addr.port().to_string();
    let run = |extra: &[&str]| {
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "-n",
                "20000",
                "-c",
                "20",
                "-r",
                "1000",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-benchmark");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "redis-benchmark {extra:?}: {text}");
        assert!(!text.to_lowercase().contains("error"), "{text}");
        assert!(text.contains("requests per second"), "{text}");
        text
    };
    run(&["-t", "ping"]);
    run(&["-P", "16", "JOIN", "room:__rand_int__"]);
    run(&["COUNT", "room:__rand_int__"]);
    // Every benchmark connection closed, so every presence left.
    assert!(wait_count(s.addr, "room:000000000001", 0));
    let mut c = s.connect();
    assert!(
        wait_for(Duration::from_secs(10), || (c.cmd(&["TOTAL"]).int() == 0)
            .then_some(()))
        .is_some()
    );
}

#[test]
fn promtool_accepts_the_metrics() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    // A free port for the endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let cluster = unique_cluster("metrics");
    let s = Server::start(&["--cluster", &cluster, "--metrics", &metrics]);
    let mut c = s.connect();
    assert_eq!(c.cmd(&["JOIN", "a \"quoted\" \\ topic", "b"]).int(), 2);
    assert!(wait_count(s.addr, "b", 1));
    let mut http = std::net::TcpStream::connect(&metrics).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    http.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for m in [
        "headcount_ticks_total",
        "headcount_tick_duration_seconds_bucket{le=\"+Inf\"}",
        "headcount_datagrams_sent_total",
        "headcount_datagrams_rejected_total{reason=\"mac\"}",
        "headcount_peers_alive 0",
        "headcount_converged 1",
        "headcount_topic_presences{topic=\"b\"} 1",
        "headcount_topic_presences{topic=\"a \\\"quoted\\\" \\\\ topic\"} 1",
    ] {
        assert!(body.contains(m), "{m} in\n{body}");
    }
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn accepted_connections_have_tcp_keepalive() {
    let Some(ss) = tool("ss", "iproute2") else {
        return;
    };
    let s = Server::start(&["--standalone", "--tcp-keepalive", "45s"]);
    let mut c = s.connect();
    assert_eq!(c.cmd(&["PING"]), V::Simple("PONG".into()));
    // The server's side of the connection: source port = the listening port.
    let out = Command::new(ss)
        .args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{}", s.addr.port()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("keepalive"),
        "ss shows a keepalive timer: {text}"
    );
}

// --- what one client may make the server hold, and how long it may keep it busy ---

/// `JOIN`s `names` on `c`, 1000 at a time, and waits until the last is counted.
fn join_all(c: &mut Client, addr: SocketAddr, names: &[String]) {
    for chunk in names.chunks(1000) {
        let mut join = vec!["JOIN"];
        join.extend(chunk.iter().map(String::as_str));
        assert_eq!(c.cmd(&join).int(), chunk.len() as i64);
    }
    assert!(wait_count(addr, names.last().unwrap(), 1));
}

/// The exact `TOP k` reply (RESP2) when every one of `names` (sorted) counts 1.
fn top_reply(names: &[String]) -> Vec<u8> {
    let mut r = format!("*{}\r\n", 2 * names.len()).into_bytes();
    for n in names {
        r.extend_from_slice(format!("${}\r\n{n}\r\n:1\r\n", n.len()).as_bytes());
    }
    r
}

fn top_request(k: usize) -> Vec<u8> {
    let k = k.to_string();
    format!("*2\r\n$3\r\nTOP\r\n${}\r\n{k}\r\n", k.len()).into_bytes()
}

/// Reads `len` bytes on another thread, counting them in `progress` as they come.
fn drain(
    mut r: TcpStream,
    len: usize,
    progress: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = Vec::with_capacity(len.min(64 << 20));
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < len {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    progress.store(got.len(), Ordering::Relaxed);
                }
            }
        }
        got
    })
}

/// The defect: unsent replies grew without bound, before AUTH too — 20 connections writing
/// `a\n` and never reading took the server from 28 MB to 1.18 GB. Now a client that is not
/// reading is paused at 256 KiB of unsent replies (closed at 16 KiB before AUTH).
#[test]
fn clients_that_never_read_their_replies_do_not_grow_the_server() {
    let s = Server::start(&["--standalone", "--requirepass", "pw"]);
    let pid = s.child.id();
    let addr = s.addr;
    let writers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut w = TcpStream::connect(addr).unwrap();
                let req = if i < 10 {
                    // Never authenticated: 1.85 M one-byte inline requests, 63 MB of errors.
                    b"a\n".repeat(1_850_000)
                } else {
                    // Authenticated: 40,000 INFOs, 60 MB of replies.
                    let mut r = b"AUTH pw\r\n".to_vec();
                    r.extend_from_slice(&b"INFO\r\n".repeat(40_000));
                    r
                };
                // Unauthenticated writers fail once closed; the others may stall once paused.
                w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let _ = w.write_all(&req);
                w
            })
        })
        .collect();
    let mut m = s.connect();
    assert_eq!(m.cmd(&["AUTH", "pw"]), V::Simple("OK".into()));
    const BOUND: u64 = 256 << 20;
    let mut peak = 0;
    let mut info = String::new();
    let settled = wait_for(Duration::from_secs(30), || {
        peak = proc_status_bytes(pid, "VmHWM").unwrap_or(0);
        if peak > BOUND {
            return Some(false);
        }
        info = m.cmd(&["INFO", "clients"]).str();
        let field = |k| info_field(&info, k).unwrap_or(-1);
        (field("output_limit_closes") == 10 && field("clients_paused_for_output") == 10)
            .then_some(true)
    });
    eprintln!("server peak RSS: {} MB", peak >> 20);
    assert!(
        peak <= BOUND,
        "server peak RSS {} MB with 20 clients not reading (bound {} MB)",
        peak >> 20,
        BOUND >> 20
    );
    assert_eq!(settled, Some(true), "{info}");
    // The ten authenticated ones are paused, each holding about the pause and one read.
    let held = info_field(&info, "client_buffer_bytes").unwrap();
    assert!(held < 10 * (1 << 20), "{info}");
    // Their INFOs do not hold up anyone else.
    assert_eq!(m.cmd(&["PING"]), V::Simple("PONG".into()));
    for w in writers {
        drop(w.join().unwrap());
    }
}

#[test]
fn a_paused_client_gets_every_reply_in_order_once_it_reads() {
    let s = standalone();
    let mut h = s.connect();
    let names: Vec<String> = (0..100).map(|i| format!("topic-{i:014}")).collect();
    join_all(&mut h, s.addr, &names);
    let top = top_reply(&names);
    // 20,000 × (ECHO i, TOP 100): 66 MB of replies, far past the kernel's socket buffers.
    let n = 20_000;
    let (mut req, mut want) = (Vec::new(), Vec::new());
    for i in 0..n {
        let e = i.to_string();
        req.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{e}\r\n", e.len()).as_bytes());
        req.extend_from_slice(&top_request(100));
        want.extend_from_slice(format!("${}\r\n{e}\r\n", e.len()).as_bytes());
        want.extend_from_slice(&top);
    }
    let mut r = TcpStream::connect(s.addr).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = {
        let mut w = r.try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&req).is_ok())
    };
    // The server stops reading it and holds a bounded backlog.
    let paused = wait_for(Duration::from_secs(20), || {
        (h.info("clients", "clients_paused_for_output") == 1).then_some(())
    });
    assert!(
        paused.is_some(),
        "the client that is not reading was paused"
    );
    let held = h.info("clients", "client_buffer_bytes");
    assert!(held < 1 << 20, "a paused client holds {held} bytes");
    // Meanwhile others are answered.
    assert_eq!(h.cmd(&["PING"]), V::Simple("PONG".into()));
    // Then it reads: every reply, in order.
    let mut got = vec![0u8; want.len()];
    r.read_exact(&mut got).unwrap();
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "replies differ at byte {at} of {}: got {:?}",
            want.len(),
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())])
        );
    }
    assert!(writer.join().unwrap());
    let resumed = wait_for(Duration::from_secs(10), || {
        (h.info("clients", "clients_paused_for_output") == 0
            && h.info("clients", "client_buffer_bytes") == 0)
            .then_some(())
    });
    assert!(resumed.is_some(), "no longer paused, no buffers held");
}

#[test]
fn before_auth_a_client_that_does_not_read_is_closed_early() {
    let s = Server::start(&["--standalone", "--requirepass", "pw"]);
    let mut m = s.connect();
    assert_eq!(m.cmd(&["AUTH", "pw"]), V::Simple("OK".into()));
    // A client that reads its errors before AUTH is answered, then authenticates.
    let mut ok = s.connect();
    ok.send_raw(&b"a\n".repeat(300));
    for _ in 0..300 {
        assert_eq!(ok.read(), V::Err("NOAUTH Authentication required.".into()));
    }
    assert_eq!(ok.cmd(&["AUTH", "pw"]), V::Simple("OK".into()));
    assert_eq!(ok.cmd(&["JOIN", "held"]).int(), 1);
    // One that does not read them is closed once 16 KiB of them are unsent.
    let mut w = TcpStream::connect(s.addr).unwrap();
    w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let wrote = w.write_all(&b"a\n".repeat(1_000_000)); // 34 MB of errors
    let counted = wait_for(Duration::from_secs(10), || {
        (m.info("clients", "output_limit_closes") == 1).then_some(())
    });
    assert!(counted.is_some(), "closed for its unsent replies");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let closed = loop {
        match w.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        closed.is_ok(),
        "the unauthenticated client was closed: {closed:?} after {got} bytes (write: {wrote:?})"
    );
    assert_eq!(m.info("clients", "clients_paused_for_output"), 0);
    assert!(
        ok.wait_count("held", 1),
        "the client that reads is still there"
    );
}

/// `--max-output` above the pause still closes a client whose one reply takes it past. (A
/// reply that leaves the queue between the pause and `--max-output` pauses the client instead:
/// which one happens depends on how much of the reply the socket took, so eight clients.)
#[test]
fn a_reply_past_max_output_closes_the_client() {
    let s = Server::start(&["--standalone", "--max-output", "300000"]);
    let mut m = s.connect();
    // 2000 topics of 200-byte names: each `TOP 2000` reply is 424 kB.
    let names: Vec<String> = (0..2000).map(|i| format!("{i:0200}")).collect();
    join_all(&mut m, s.addr, &names);
    let mut clients: Vec<Client> = (0..8)
        .map(|i| {
            let mut c = s.connect();
            assert_eq!(c.cmd(&["JOIN", "held"]).int(), 1, "client {i}");
            c
        })
        .collect();
    assert!(m.wait_count("held", 8));
    for c in &mut clients {
        c.send_raw(&top_request(2000).repeat(100));
    }
    let mut info = String::new();
    let settled = wait_for(Duration::from_secs(20), || {
        info = m.cmd(&["INFO", "clients"]).str();
        let closed = info_field(&info, "output_limit_closes").unwrap();
        let paused = info_field(&info, "clients_paused_for_output").unwrap();
        (closed + paused == 8).then_some(closed)
    });
    let closed = settled.unwrap_or_else(|| panic!("each client closed or paused: {info}"));
    assert!(closed >= 1, "{info}");
    // No queue got past --max-output.
    let held = info_field(&info, "client_buffer_bytes").unwrap();
    assert!(held <= 8 * (300_000 + 80 * 1024), "{info}");
    assert!(
        m.wait_count("held", 8 - closed),
        "the closed clients' presences left"
    );
}

#[test]
fn over_the_memory_budget_the_largest_holder_is_closed() {
    let s = Server::start(&[
        "--standalone",
        "--workers",
        "1",
        "--max-client-memory",
        "1048576",
        "--max-arg-len",
        "2000000",
    ]);
    let mut m = s.connect();
    // Paused: 40,000 INFOs (64 MB of replies, more than the kernel's socket buffers take)
    // unread, about 330 kB held.
    let mut paused = s.connect();
    assert_eq!(paused.cmd(&["JOIN", "held-paused"]).int(), 1);
    paused.send_raw(&b"INFO\r\n".repeat(40_000));
    let p = wait_for(Duration::from_secs(20), || {
        (m.info("clients", "clients_paused_for_output") == 1).then_some(())
    });
    assert!(p.is_some());
    // Partial: 2 kB of a request held.
    let mut partial = s.connect();
    assert_eq!(partial.cmd(&["JOIN", "held-partial"]).int(), 1);
    partial.send_raw(b"*2\r\n$4\r\nECHO\r\n$4000\r\n");
    partial.send_raw(&[b'x'; 2000]);
    // Largest: most of a 1.5 MB request, which takes everyone's buffers past the budget
    // while it arrives.
    let mut largest = s.connect();
    assert_eq!(largest.cmd(&["JOIN", "held-largest"]).int(), 1);
    assert!(m.wait_count("held-largest", 1));
    largest.send_raw(b"*2\r\n$4\r\nECHO\r\n$1500000\r\n");
    let mut w = largest.stream();
    w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = w.write_all(&vec![b'x'; 1_400_000]); // fails once closed
    assert!(
        m.wait_count("held-largest", 0),
        "the largest holder was closed"
    );
    assert_eq!(m.info("clients", "memory_limit_closes"), 1);
    assert_eq!(m.info("clients", "max_client_memory"), 1 << 20);
    assert!(m.info("clients", "client_buffer_bytes") <= 1 << 20);
    // The others are still there and served.
    assert!(m.wait_count("held-paused", 1));
    assert!(m.wait_count("held-partial", 1));
    partial.send_raw(&[b'x'; 2000]);
    partial.send_raw(b"\r\n");
    assert_eq!(partial.read(), V::Bulk(vec![b'x'; 4000]));
    for _ in 0..40_000 {
        assert!(matches!(paused.read(), V::Bulk(_)));
    }
    assert_eq!(paused.cmd(&["PING"]), V::Simple("PONG".into()));
}

/// A long pipeline of TOPs is served a bounded piece per turn: a PING from another client on
/// the same worker is answered before the pipeline is done.
#[test]
fn a_ping_is_answered_while_a_long_pipeline_is_served() {
    let s = Server::start(&["--standalone", "--workers", "1"]);
    let mut h = s.connect();
    let names: Vec<String> = (0..500).map(|i| format!("topic-{i:014}")).collect();
    join_all(&mut h, s.addr, &names);
    let n = 4000;
    let total = n * top_reply(&names).len(); // 62 MB
    let before = h.info("presence", "commands_processed");
    let p = TcpStream::connect(s.addr).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = drain(p.try_clone().unwrap(), total, progress.clone());
    let writer = {
        let mut w = p.try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&top_request(500).repeat(n)).is_ok())
    };
    let started = wait_for(Duration::from_secs(20), || {
        (progress.load(Ordering::Relaxed) >= 1 << 20).then_some(())
    });
    assert!(started.is_some(), "the pipeline is being answered");
    let mut q = s.connect();
    q.send_raw(b"PING\r\nINFO presence\r\n");
    assert_eq!(q.read(), V::Simple("PONG".into()));
    let done = info_field(&q.read().str(), "commands_processed").unwrap() - before;
    assert!(
        done < n as i64,
        "the PING waited for the whole pipeline ({done} commands answered before it)"
    );
    assert!(writer.join().unwrap());
    assert_eq!(reader.join().unwrap().len(), total, "every reply arrived");
}

#[test]
fn sigterm_stops_the_server_with_long_pipelines_queued() {
    let s = Server::start(&["--standalone", "--workers", "1"]);
    let addr = s.addr;
    let mut h = s.connect();
    let names: Vec<String> = (0..500).map(|i| format!("topic-{i:014}")).collect();
    join_all(&mut h, addr, &names);
    // One client reads its 20,000 TOPs (310 MB of replies); one never reads its own.
    let req = top_request(500).repeat(20_000);
    let reading = TcpStream::connect(addr).unwrap();
    reading
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = drain(reading.try_clone().unwrap(), usize::MAX, progress.clone());
    let writers: Vec<_> = [reading, TcpStream::connect(addr).unwrap()]
        .into_iter()
        .map(|mut w| {
            let req = req.clone();
            std::thread::spawn(move || {
                w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = w.write_all(&req);
            })
        })
        .collect();
    let started = wait_for(Duration::from_secs(20), || {
        (progress.load(Ordering::Relaxed) >= 1 << 20).then_some(())
    });
    assert!(started.is_some(), "the pipeline is being answered");
    let status = s
        .terminate_within(Duration::from_secs(10))
        .expect("serve exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn the_memory_budget_is_a_flag_and_a_config_key_with_a_clear_error() {
    let out = Command::new(common::BIN)
        .args(["serve", "--standalone", "--max-client-memory", "1000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--max-client-memory 1000: must be at least"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("hc-serve-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("headcount.toml");
    std::fs::write(&config, "max_client_memory = 2097152\n").unwrap();
    let s = Server::start(&["--standalone", "--config", config.to_str().unwrap()]);
    let mut c = s.connect();
    assert_eq!(c.info("clients", "max_client_memory"), 2 << 20);
    assert_eq!(c.info("clients", "max_output"), 16 << 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Defect: with `--max-topics 1000 --workers 2`, 20 connections joined 40 topics each and
/// closed; nothing was ever retired (an idle worker never published a newer epoch), and
/// `JOIN` of new topics failed "topic table is full" with TOTAL 0. Workers now park their
/// shards before they block.
#[test]
fn idle_workers_do_not_block_topic_retirement() {
    let s = Server::start(&[
        "--standalone",
        "--max-topics",
        "1000",
        "--retire-after",
        "1s",
    ]);
    for c in 0..20 {
        let mut cl = s.connect();
        let names: Vec<String> = (0..40).map(|i| format!("old-{c}-{i}")).collect();
        let mut cmd = vec!["JOIN"];
        cmd.extend(names.iter().map(String::as_str));
        assert_eq!(cl.cmd(&cmd).int(), 40);
    } // each connection closes here: its presences leave
    let mut c = s.connect();
    assert!(wait_count(s.addr, "old-0-0", 0));
    assert_eq!(c.cmd(&["TOTAL"]).int(), 0);
    // 800 topics at zero, retired after 1 s: room again for 600 new ones.
    let names: Vec<String> = (0..600).map(|i| format!("new-{i}")).collect();
    let mut cmd = vec!["JOIN"];
    cmd.extend(names.iter().map(String::as_str));
    let joined = common::wait_for(Duration::from_secs(20), || {
        let mut probe = s.connect();
        let v = probe.cmd(&cmd);
        (!v.is_err()).then(|| (v.int(), probe))
    });
    let (n, _held) = joined.expect("the zero topics were retired and their ids reused");
    assert_eq!(n, 600);
    assert!(c.info("engine", "retired") >= 400);
}
