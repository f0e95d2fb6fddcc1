//! `headcount serve` end to end: real processes on loopback, a RESP client written here, and
//! the real `redis-cli`, `redis-benchmark` and `promtool` where installed.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, V, tool, unique_cluster, wait_count, wait_for};

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
    // pipeline): the server buffers the replies (up to --max-output) and sends them all.
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
