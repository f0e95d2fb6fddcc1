//! The commands, pipelining, errors, AUTH and RESP3, and two servers in a cluster.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{self, Reply, Server, Spawned, V, unique_cluster, wait_count};

use crate::standalone;

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
    assert_eq!(e, V::Error("ERR unknown command 'FLUSHALL'".into()));
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
            matches!(&e, V::Error(m) if m.starts_with("ERR Protocol error")),
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
        V::Error("NOAUTH Authentication required.".into())
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
    let mut a = Server::start(&args);
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
    // Stopping a (what SIGTERM does): run returns Ok, and b drops a's counts at once
    // (dead-after is 30 s here).
    a.stop().expect("serve stops cleanly");
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
    // A process: its log is read below.
    let mut small = Spawned::start(&["--cluster", &cluster, "--max-topics", "1000"]);
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
