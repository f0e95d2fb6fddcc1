//! Three `headcount node` processes on loopback multicast: they converge; one killed with SIGKILL
//! leaves the others' counts within dead-after; restarted, it is counted again.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    lines: Receiver<String>,
    last: u64,
}

impl Proc {
    fn start(group: &str, join: u32) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_headcount"))
            .args([
                "node",
                "--group",
                group,
                "--cluster",
                "mp",
                "--topic",
                "room",
            ])
            .args([
                "--join",
                &join.to_string(),
                "--tick",
                "50ms",
                "--dead-after",
                "1s",
                "--duration",
                "60s",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("headcount node starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            last: 0,
        }
    }

    /// The latest count the node printed.
    fn count(&mut self) -> u64 {
        while let Ok(l) = self.lines.try_recv() {
            if let Some(c) = l
                .strip_prefix("count ")
                .and_then(|r| r.split(' ').next())
                .and_then(|c| c.parse().ok())
            {
                self.last = c;
            }
        }
        self.last
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn until(what: &str, limit: Duration, procs: &mut [Proc], want: u64) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if procs.iter_mut().all(|p| p.count() == want) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: Vec<u64> = procs.iter_mut().map(Proc::count).collect();
    panic!("{what}: wanted {want} on every node within {limit:?}, got {got:?}");
}

#[test]
fn kill_and_restart_a_node_process() {
    let port = 30_000 + (std::process::id() % 20_000) as u16;
    let group = format!("239.255.72.9:{port}");
    let mut procs = vec![
        Proc::start(&group, 1),
        Proc::start(&group, 2),
        Proc::start(&group, 3),
    ];
    until(
        "three processes converge",
        Duration::from_secs(30),
        &mut procs,
        6,
    );

    let mut killed = procs.pop().expect("three");
    killed.child.kill().expect("SIGKILL");
    let _ = killed.child.wait();
    let took = until(
        "a killed node's counts leave",
        Duration::from_secs(30),
        &mut procs,
        3,
    );
    eprintln!("SIGKILLed node dropped after {took:?} (dead-after 1s, tick 50ms)");
    // Not before dead-after: a silent node cannot be told from a slow one sooner.
    assert!(
        took >= Duration::from_millis(700),
        "dropped after only {took:?}"
    );

    procs.push(Proc::start(&group, 3));
    until(
        "the restarted node is counted again",
        Duration::from_secs(30),
        &mut procs,
        6,
    );
}
