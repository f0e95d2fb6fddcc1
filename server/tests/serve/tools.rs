//! The outside tools: `redis-cli`, `redis-benchmark`, `promtool`, `ss`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Reply, Server, V, tool, unique_cluster, wait_count, wait_for};

use crate::standalone;

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
    // B's one-shot JOIN of game:2 may reach A a tick after its leave did not yet (a count of 2
    // for a moment): wait for the settled list rather than read it once.
    let want = ["game:1", "1", "game:2", "1"];
    let top = wait_for(Duration::from_secs(10), || {
        let top = redis_cli(a.addr, &["TOP", "5"]);
        (top.lines().collect::<Vec<_>>() == want).then_some(top)
    });
    assert!(top.is_some(), "TOP on A never settled to {want:?}");
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
