//! Helpers for the server's tests: a server run in-process through `serve::run` ([`Server`]), a
//! `headcount` process for the tests that must signal, kill or restart one, or read its log
//! ([`Spawned`]), a RESP client over the library's `resp::client` that panics on I/O errors
//! ([`Client`]), and the outside-tool check (skip with a reason, or fail under
//! `HEADCOUNT_REQUIRE_TOOLS=1`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use headcount_server::config::Settings;
use headcount_server::resp::client;
use headcount_server::{ConfigError, Shutdown, serve};

pub use headcount_server::resp::client::Value as V;

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

/// `serve`'s flags for a test server: a free loopback port, a 50 ms tick and 2 workers unless
/// `args` say otherwise, then `args`.
fn test_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--listen", "127.0.0.1:0", "--tick", "50ms"];
    if !args.contains(&"--workers") {
        all.extend(["--workers", "2"]);
    }
    all.extend(args);
    all
}

/// A server run in this process by `serve::run` on its own thread; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<(), ConfigError>>>,
}

impl Server {
    /// Runs `serve --listen 127.0.0.1:0 --workers 2 --tick 50ms` plus `args` (flags as on the
    /// command line, `--config` included).
    pub fn start(args: &[&str]) -> Server {
        Server::try_start(args).unwrap_or_else(|e| panic!("serve {args:?}: {e}"))
    }

    /// As [`Server::start`], or the settings' error.
    pub fn try_start(args: &[&str]) -> Result<Server, ConfigError> {
        let (listen, settings) = Settings::from_args(test_args(args))?;
        let listeners = serve::bind(listen, settings.workers)?;
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-serve-{}", addr.port()))
            .spawn(move || serve::run(listeners, settings, stop))
            .unwrap();
        // The listeners are listening: connections wait in their backlogs until the workers run.
        Ok(Server {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Stops the server (what SIGTERM does in the binary) and waits for `run` to return.
    pub fn stop(&mut self) -> Result<(), ConfigError> {
        self.shutdown.trigger();
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let done = wait_for(Duration::from_secs(20), || t.is_finished().then_some(()));
        assert!(
            done.is_some(),
            "serve::run did not return within 20 s of shutdown"
        );
        t.join().expect("serve::run panicked")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running `headcount serve` process; killed when dropped.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// Standard error lines, as they come.
    pub log: mpsc::Receiver<String>,
}

impl Spawned {
    /// Starts `serve --listen 127.0.0.1:0 --workers 2 --tick 50ms` plus `args`, and waits for
    /// it to listen.
    pub fn start(args: &[&str]) -> Spawned {
        let mut all = vec!["serve"];
        all.extend(test_args(args));
        Spawned::spawn(&all)
    }

    /// Starts `headcount` with exactly `args` (a `serve` command line) and waits for it to listen.
    pub fn spawn(args: &[&str]) -> Spawned {
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
                        return Spawned {
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

    /// Sends SIGTERM and waits at most `bound` for the exit status.
    pub fn terminate_within(mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_for(bound, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test reads a reply: panics where it is not what it expected.
pub trait Reply {
    fn int(&self) -> i64;
    fn str(&self) -> String;
    fn is_err(&self) -> bool;
}

impl Reply for V {
    fn int(&self) -> i64 {
        self.as_int()
            .unwrap_or_else(|| panic!("expected an integer, got {self:?}"))
    }
    fn str(&self) -> String {
        self.as_text()
            .unwrap_or_else(|| panic!("expected a string, got {self:?}"))
    }
    fn is_err(&self) -> bool {
        self.is_error()
    }
}

/// The library's blocking RESP client (10 s read timeout), panicking on I/O errors.
pub struct Client(client::Client);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client(client::Client::connect(addr).expect("connect"))
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.0.send_raw(bytes).unwrap();
    }

    pub fn send(&mut self, args: &[&str]) {
        self.0.send(args).unwrap();
    }

    pub fn cmd(&mut self, args: &[&str]) -> V {
        self.send(args);
        self.read()
    }

    pub fn read(&mut self) -> V {
        self.0.read().expect("read a reply")
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.0.reader().read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                // Closed with unread input in the server's buffer: a reset instead of a FIN.
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }

    /// `COUNT topic` on this connection, until it reads `want` (bounded).
    pub fn wait_count(&mut self, topic: &str, want: i64) -> bool {
        wait_for(Duration::from_secs(10), || {
            (self.cmd(&["COUNT", topic]).int() == want).then_some(())
        })
        .is_some()
    }

    /// Another handle on this connection's socket (for writes with a timeout, say).
    pub fn stream(&self) -> TcpStream {
        self.0.stream().unwrap()
    }

    /// A numeric field of `INFO section` on this connection.
    pub fn info(&mut self, section: &str, key: &str) -> i64 {
        let info = self.cmd(&["INFO", section]).str();
        info_field(&info, key).unwrap_or_else(|| panic!("{key} in {info}"))
    }
}

/// `COUNT topic` on a fresh connection, until it reads `want` (bounded).
pub fn wait_count(addr: SocketAddr, topic: &str, want: i64) -> bool {
    Client::connect(addr).wait_count(topic, want)
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
