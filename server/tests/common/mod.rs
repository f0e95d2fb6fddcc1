//! Helpers for the tests that run the `headcount` binary: a `serve` process, a tiny RESP client,
//! and the outside-tool check (skip with a reason, or fail under `HEADCOUNT_REQUIRE_TOOLS=1`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_headcount");

/// A cluster name no other test (or process) uses.
pub fn unique_cluster(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether an outside tool is installed. When it is not: `None` after printing why the test is
/// skipped, or a panic when `HEADCOUNT_REQUIRE_TOOLS` is set (CI installs every tool).
pub fn tool(name: &str, package: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var_os("HEADCOUNT_REQUIRE_TOOLS").is_some() => {
            panic!("{name} is required (HEADCOUNT_REQUIRE_TOOLS is set): apt-get install {package}")
        }
        None => {
            eprintln!("SKIPPED: {name} not found (apt-get install {package} to run this test)");
            None
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `bound`.
pub fn wait_for<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `headcount serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Standard error lines, as they come.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `serve --listen 127.0.0.1:0 --workers 2 --tick 50ms` plus `args`, and waits for
    /// it to listen.
    pub fn start(args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--tick", "50ms"];
        if !args.contains(&"--workers") {
            all.extend(["--workers", "2"]);
        }
        all.extend(args);
        Server::spawn(&all)
    }

    /// Starts `headcount` with exactly `args` (a `serve` command line) and waits for it to listen.
    pub fn spawn(args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn headcount serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        return Server {
                            child,
                            addr,
                            log: rx,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "serve did not start listening: {:?}",
                        child.wait_with_output()
                    );
                }
            }
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = wait_for(Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        });
        if status.is_none() {
            let _ = self.child.kill();
        }
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP value as a test reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<V>),
    Map(Vec<(V, V)>),
    Bool(bool),
    Text(String),
}

impl V {
    pub fn int(&self) -> i64 {
        match self {
            V::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
    pub fn str(&self) -> String {
        match self {
            V::Simple(s) | V::Text(s) | V::Err(s) => s.clone(),
            V::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a string, got {other:?}"),
        }
    }
    pub fn is_err(&self) -> bool {
        matches!(self, V::Err(_))
    }
}

/// A blocking RESP client with a read timeout.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, args: &[&str]) {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.send_raw(&b);
    }

    pub fn cmd(&mut self, args: &[&str]) -> V {
        self.send(args);
        self.read()
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read a reply line");
        assert!(l.ends_with("\r\n"), "reply line {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    pub fn read(&mut self) -> V {
        let l = self.line();
        let (kind, rest) = l.split_at(1);
        match kind {
            "+" => V::Simple(rest.into()),
            "-" => V::Err(rest.into()),
            ":" => V::Int(rest.parse().unwrap()),
            "_" => V::Null,
            "#" => V::Bool(rest == "t"),
            "$" | "=" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return V::Null;
                }
                let mut b = vec![0; n as usize + 2];
                self.r.read_exact(&mut b).unwrap();
                b.truncate(n as usize);
                if kind == "=" {
                    V::Text(String::from_utf8_lossy(&b[4..]).into_owned())
                } else {
                    V::Bulk(b)
                }
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                V::Array((0..n).map(|_| self.read()).collect())
            }
            "%" => {
                let n: i64 = rest.parse().unwrap();
                V::Map((0..n).map(|_| (self.read(), self.read())).collect())
            }
            _ => panic!("unexpected reply line {l:?}"),
        }
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                // Closed with unread input in the server's buffer: a reset instead of a FIN.
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

/// `COUNT topic` on a fresh connection, until it reads `want` (bounded).
pub fn wait_count(addr: SocketAddr, topic: &str, want: i64) -> bool {
    Client::connect(addr).wait_count(topic, want)
}

impl Client {
    /// `COUNT topic` on this connection, until it reads `want` (bounded).
    pub fn wait_count(&mut self, topic: &str, want: i64) -> bool {
        wait_for(Duration::from_secs(10), || {
            (self.cmd(&["COUNT", topic]).int() == want).then_some(())
        })
        .is_some()
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`…), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A numeric field of an `INFO` reply (`key:value` lines).
pub fn info_field(info: &str, key: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

impl Client {
    /// Another handle on this connection's socket (for writes with a timeout, say).
    pub fn stream(&self) -> TcpStream {
        self.w.try_clone().unwrap()
    }

    /// A numeric field of `INFO section` on this connection.
    pub fn info(&mut self, section: &str, key: &str) -> i64 {
        let info = self.cmd(&["INFO", section]).str();
        info_field(&info, key).unwrap_or_else(|| panic!("{key} in {info}"))
    }
}

impl Server {
    /// Sends SIGTERM and waits at most `bound` for the exit status.
    pub fn terminate_within(mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_for(bound, || self.child.try_wait().ok().flatten())
    }
}
