//! The command line: help for every subcommand, clear errors and a non-zero exit for bad flags
//! and config files, `demo` to completion, `watch --once --json` against a real cluster.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Reply, Server, Spawned, unique_cluster};

/// Runs the binary to its exit (killed after 60 s: a command that should fail at once must not
/// hang the test).
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run headcount");
    let id = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if start.elapsed() > Duration::from_secs(60) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &id.to_string()])
                        .status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = child.wait_with_output().expect("wait for headcount");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `args` fails with a non-zero status and a message containing every one of `want`.
fn fails(args: &[&str], want: &[&str]) {
    let o = run(args);
    let t = text(&o);
    assert!(!o.status.success(), "{args:?} should fail: {t}");
    for w in want {
        assert!(t.contains(w), "{args:?}: expected {w:?} in: {t}");
    }
}

#[test]
fn help_for_every_subcommand() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let t = text(&o);
    for sub in ["serve", "watch", "demo", "ping"] {
        assert!(t.contains(sub), "{sub} in {t}");
    }
    // `node` (a building block of the multi-process tests) is hidden, not gone.
    assert!(
        !t.lines().any(|l| l.trim_start().starts_with("node ")),
        "node is hidden: {t}"
    );
    for (sub, flags) in [
        (
            "serve",
            &[
                "--listen",
                "--workers",
                "--pin",
                "--tick",
                "--dead-after",
                "--group",
                "--interface",
                "--peers",
                "--cluster",
                "--key-file",
                "--insecure",
                "--requirepass",
                "--metrics",
                "--config",
                "--log-format",
            ][..],
        ),
        ("watch", &["--once", "--json", "--top", "--group"][..]),
        ("demo", &["--duration", "--nodes", "--topics"][..]),
        (
            "ping",
            &["--addr", "--password", "--timeout", "--config"][..],
        ),
        ("node", &["--group", "--join"][..]),
    ] {
        let o = run(&[sub, "--help"]);
        let t = text(&o);
        assert!(o.status.success(), "{sub} --help: {t}");
        for f in flags {
            assert!(t.contains(f), "{sub} --help mentions {f}: {t}");
        }
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    fails(&["serve", "--no-such-flag"], &["--no-such-flag"]);
    fails(&["serve", "--tick", "soon"], &["--tick", "soon"]);
    fails(
        &["serve", "--workers", "0", "--standalone"],
        &["--workers 0"],
    );
    fails(&["serve", "--listen", "nowhere"], &["--listen"]);
    fails(
        &["serve", "--log-format", "xml", "--standalone"],
        &["--log-format", "xml"],
    );
    fails(
        &["serve", "--listen", "0.0.0.0:0", "--standalone"],
        &["not a loopback address", "--requirepass"],
    );
    fails(
        &[
            "serve",
            "--group",
            "127.0.0.1:7380",
            "--listen",
            "127.0.0.1:0",
        ],
        &["group"],
    );
    fails(
        &[
            "serve",
            "--cluster",
            "x",
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            "/nonexistent/key",
        ],
        &["/nonexistent/key"],
    );
    fails(&["watch", "--standalone"], &["standalone"]);
    fails(&["demo", "--nodes", "0"], &["--nodes"]);
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("hc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_string_lossy().into_owned()
    };
    let typo = write("typo.toml", "listen = \"127.0.0.1:0\"\nwrokers = 2\n");
    fails(&["serve", "--config", &typo], &["typo.toml", "wrokers"]);
    let ty = write("type.toml", "workers = \"many\"\n");
    fails(&["serve", "--config", &ty], &["type.toml", "workers"]);
    let syntax = write("syntax.toml", "listen = \n");
    fails(&["serve", "--config", &syntax], &["syntax.toml"]);
    let dur = write("dur.toml", "tick = \"fast\"\n");
    fails(&["serve", "--config", &dur], &["tick", "fast"]);
    fails(
        &["serve", "--config", "/nonexistent/headcount.toml"],
        &["/nonexistent/headcount.toml"],
    );
    // A good file works, and a flag wins over it: the file's listen address is in use, the
    // flag's is free.
    let good = write(
        "good.toml",
        "listen = \"203.0.113.1:1\"\nstandalone = true\nworkers = 1\n",
    );
    let s = Spawned::start(&["--config", &good]);
    let mut c = s.connect();
    assert_eq!(c.cmd(&["PING"]), common::V::Simple("PONG".into()));
}

#[test]
fn ports_in_use_are_clear_errors() {
    let s = Server::start(&["--standalone"]);
    let addr = s.addr.to_string();
    fails(
        &["serve", "--standalone", "--listen", &addr],
        &[&addr, "in use"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    fails(
        &[
            "serve",
            "--standalone",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &metrics,
        ],
        &["--metrics", "in use"],
    );
}

#[test]
fn demo_runs_to_completion_and_proves_exactness() {
    let start = Instant::now();
    let o = run(&["demo", "--duration", "2s", "--users", "5000"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("EXACT: on all 3 nodes"), "{t}");
    assert!(t.contains("cluster total"), "the watch view is shown: {t}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn watch_once_json_sees_the_cluster_and_is_not_counted() {
    let cluster = unique_cluster("watch");
    let a = Server::start(&["--cluster", &cluster]);
    let b = Server::start(&["--cluster", &cluster]);
    let mut ca = a.connect();
    let mut cb = b.connect();
    assert_eq!(ca.cmd(&["JOIN", "stage", "stage", "pit"]).int(), 3);
    assert_eq!(cb.cmd(&["JOIN", "stage"]).int(), 1);
    assert!(ca.wait_count("stage", 3));
    assert!(cb.wait_count("stage", 3));
    let o = run(&[
        "watch",
        "--cluster",
        &cluster,
        "--once",
        "--json",
        "--tick",
        "50ms",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let line = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(v["total"], 4, "{v}");
    assert_eq!(v["topics"][0]["topic"], "stage", "{v}");
    assert_eq!(v["topics"][0]["count"], 3, "{v}");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["converged"], true, "{v}");
    // The observer never shows up in the servers' node lists.
    let nodes = ca.cmd(&["NODES"]);
    assert!(
        matches!(&nodes, common::V::Array(n) if n.len() == 2),
        "{nodes:?}"
    );
    // Text mode too.
    let o = run(&["watch", "--cluster", &cluster, "--once", "--tick", "50ms"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("cluster total 4") && t.contains("stage"), "{t}");
}

#[test]
fn demo_with_a_single_user_on_a_single_node() {
    let o = run(&["demo", "--users", "1", "--nodes", "1", "--duration", "1s"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("EXACT"), "{t}");
}

#[test]
fn demo_stops_early_on_ctrl_c_with_its_summary() {
    let child = Command::new(BIN)
        .args(["demo", "--duration", "120s", "--users", "3000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("EXACT"), "{t}");
    assert!(start.elapsed() < Duration::from_secs(60), "stopped early");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--standalone",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for line in std::iter::once(&first).chain(&rest) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
    }
    assert!(first.contains("listening on"), "{first}");
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
}

/// `ping` exits 1 with one line saying why, and 0 on PONG (the probe of deploy/).
fn ping_fails(args: &[&str], want: &[&str]) {
    let mut all = vec!["ping"];
    all.extend(args);
    let o = run(&all);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{all:?} should fail with 1: {t}");
    assert_eq!(t.lines().count(), 1, "one line: {t}");
    for w in want {
        assert!(t.contains(w), "{all:?}: expected {w:?} in: {t}");
    }
}

fn ping_ok(args: &[&str]) {
    let mut all = vec!["ping"];
    all.extend(args);
    let o = run(&all);
    let t = text(&o);
    assert!(o.status.success(), "{all:?}: {t}");
    assert!(t.starts_with("PONG from 127.0.0.1:"), "{t}");
}

#[test]
fn ping_answers_probes() {
    let open = Server::start(&["--standalone"]);
    let addr = open.addr.to_string();
    ping_ok(&["--addr", &addr]);
    let o = run(&["ping", "--addr", &addr, "--quiet"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));

    let locked = Server::start(&["--standalone", "--requirepass", "sesame"]);
    let laddr = locked.addr.to_string();
    ping_ok(&["--addr", &laddr, "--password", "sesame"]);
    ping_ok(&["--addr", &laddr, "--requirepass", "sesame"]);
    ping_fails(&["--addr", &laddr], &["NOAUTH", "--password"]);
    ping_fails(
        &["--addr", &laddr, "--password", "wrong"],
        &["AUTH refused", "WRONGPASS"],
    );
    ping_fails(&["--addr", &addr, "--password", "x"], &["AUTH refused"]);

    // The config file's listen (0.0.0.0 is pinged on loopback) and requirepass; flags win.
    let dir = std::env::temp_dir().join(format!("hc-ping-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("headcount.toml");
    let body = format!(
        "listen = \"0.0.0.0:{}\"\nrequirepass = \"sesame\"\n",
        locked.addr.port()
    );
    std::fs::write(&conf, body).unwrap();
    let conf = conf.to_string_lossy().into_owned();
    ping_ok(&["--config", &conf]);
    ping_fails(&["--config", &conf, "--password", "wrong"], &["WRONGPASS"]);
    fails(
        &["ping", "--config", "/nonexistent/headcount.toml"],
        &["/nonexistent/headcount.toml"],
    );

    // Nothing listening: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    ping_fails(&["--addr", &closed], &["connection refused", &closed]);
    ping_fails(&["--config", &conf, "--addr", &closed], &["refused"]);
    // A listener that never answers: the timeout, bounded.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let start = Instant::now();
    ping_fails(
        &["--addr", &silent_addr, "--timeout", "300ms"],
        &["no reply to PING within 300ms"],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    // Something else answering: the reply is shown.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    let answer = std::thread::spawn(move || {
        let (mut s, _) = other.accept().unwrap();
        let mut b = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut b);
        let _ = std::io::Write::write_all(&mut s, b"+HELLO\r\n");
    });
    ping_fails(
        &["--addr", &other_addr],
        &["PING answered +HELLO, not PONG"],
    );
    answer.join().unwrap();
    fails(&["ping", "--addr", "nowhere"], &["nowhere"]);
    fails(&["ping", "--timeout", "soon"], &["--timeout", "soon"]);
}

/// deploy/systemd's sample config passes serve's own parser and checks (deploy/check.sh checks
/// that the unit's LimitNOFILE follows its max_connections).
#[test]
fn deploy_sample_config_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/headcount.toml"
    );
    let (listen, s) = headcount_server::config::Settings::from_args(["--config", path])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(listen.ip().is_loopback(), "{listen}");
    assert_eq!(s.limits.max_connections, 100_000);
    assert!(s.cluster.describe().contains("unicast"), "{s:?}");
}
