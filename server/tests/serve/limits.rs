//! What one client may make the server hold, and how long it may keep it busy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{
    self, Client, Reply, Server, Spawned, V, info_field, proc_status_bytes, wait_count, wait_for,
};

use crate::standalone;

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
    // A process: its peak RSS is the measure.
    let s = Spawned::start(&["--standalone", "--requirepass", "pw"]);
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
        assert_eq!(
            ok.read(),
            V::Error("NOAUTH Authentication required.".into())
        );
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
    let s = Spawned::start(&["--standalone", "--workers", "1"]);
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
    // The retired counter is published at the end of the tick whose retirement freed the ids,
    // so a JOIN may reuse them just before INFO shows them: wait for it (bounded).
    let retired = common::wait_for(Duration::from_secs(5), || {
        let r = c.info("engine", "retired");
        (r >= 400).then_some(r)
    });
    assert!(retired.is_some(), "INFO engine retired stayed under 400");
}
