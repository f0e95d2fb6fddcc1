//! Issue 12: peer discovery through a real DNS server. `dnsmasq` serves `headcount.test` (one A
//! record per node) in a network namespace of its own; three `headcount serve` processes, each in
//! its own namespace on one bridge, are given only `--peers-dns headcount.test:7380` and must
//! count each other's users exactly; a fourth node added to DNS (the hosts file rewritten,
//! dnsmasq sent SIGHUP) is counted everywhere, and a node removed from DNS and SIGKILLed leaves
//! every count within dead-after. All of it twice: with a cluster key (peers are also learned
//! from authenticated datagrams and gossip, so a new node is known as soon as it speaks), then
//! with `--insecure` (nothing learned: DNS alone, so within a `--dns-interval`). Prints the times
//! (`dns-timings-ms` lines); `perf/RESULTS.md` ("Issue 12") keeps them.
//!
//! Needs root, `ip` with `ip netns` (iproute2) and `dnsmasq` (dnsmasq-base): prints `SKIPPED`
//! and passes without them, fails instead under `HEADCOUNT_REQUIRE_TOOLS=1`. Every address is
//! on a bridge this test creates (10.77.X.0/24, X free on this host); namespaces, links, the
//! processes and `/etc/netns/<ns>` go on drop, panics included; the processes die with the test
//! even when it is SIGKILLed (util-linux's `setpriv --pdeathsig`), and the namespaces and links
//! of a test process that died are removed at the next start.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headcount_server::resp::client::{Client, Value};

const NAME: &str = "headcount.test";
const PASSWORD: &str = "hc-dns-test";
const TOPIC: &str = "room";
const TICK: Duration = Duration::from_millis(100);
const DEAD_AFTER: Duration = Duration::from_secs(2);
const DNS_INTERVAL: Duration = Duration::from_secs(1);
/// The longest any one wait in this test may take.
const WAIT: Duration = Duration::from_secs(15);
/// Namespace names: `hc-dns-<pid>-<role>`; link names (15 bytes at most): `hcdns<pid><role>`.
const NS_PREFIX: &str = "hc-dns-";
const LINK_PREFIX: &str = "hcdns";

/// Skips (printing why) or, under `HEADCOUNT_REQUIRE_TOOLS`, fails.
fn skip(why: &str) {
    if std::env::var_os("HEADCOUNT_REQUIRE_TOOLS").is_some() {
        panic!("dns test cannot run (HEADCOUNT_REQUIRE_TOOLS is set): {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// An executable on PATH, or in /usr/sbin and /sbin (dnsmasq's home, off some users' PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/sbin".into()]);
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Uid:"))?;
            l.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Runs a command to completion: its stdout, or the error with its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends a signal through the shell's builtin `kill` (no procps needed).
fn signal(pid: u32, sig: &str) {
    let _ = run("sh", &["-c", &format!("kill -{sig} {pid}")]);
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The test process id in a namespace or link name of ours, if it is one.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let digits: String = name
        .strip_prefix(prefix)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Removes everything of test process `pid`: the processes in its namespaces, the namespaces,
/// their `/etc/netns` directories, its links (the bridge, the host ends of the veths), its
/// temporary directory.
fn remove_all_of(pid: u32) {
    let namespaces = run("ip", &["netns", "list"]).unwrap_or_default();
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if owner_pid(ns, NS_PREFIX) != Some(pid) {
            continue;
        }
        // A process left in a namespace keeps it (and its links) alive after `netns del`.
        for p in run("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .lines()
        {
            if let Ok(p) = p.trim().parse::<u32>() {
                signal(p, "KILL");
            }
        }
        let _ = run("ip", &["netns", "del", ns]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
    }
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for l in links.lines() {
        let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        if owner_pid(name, LINK_PREFIX) == Some(pid) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{NS_PREFIX}{pid}")));
}

/// Removes what test processes that are gone left behind.
fn remove_leftovers() {
    let mut pids = Vec::new();
    for l in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
        pids.extend(
            l.split_whitespace()
                .next()
                .and_then(|n| owner_pid(n, NS_PREFIX)),
        );
    }
    for l in run("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
    {
        pids.extend(l.split(": ").nth(1).and_then(|n| owner_pid(n, LINK_PREFIX)));
    }
    pids.sort_unstable();
    pids.dedup();
    for p in pids {
        if p != std::process::id() && !pid_alive(p) {
            eprintln!("removing the namespaces and links left by test process {p}");
            remove_all_of(p);
        }
    }
}

/// A third octet X such that nothing on this host uses 10.77.X.0/24.
fn free_subnet() -> u8 {
    let used = format!(
        "{}\n{}",
        run("ip", &["-br", "addr"]).unwrap_or_default(),
        run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default()
    );
    let start = std::process::id() % 150;
    (0..150u32)
        .map(|i| (100 + (start + i) % 150) as u8)
        .find(|x| !used.contains(&format!("10.77.{x}.")))
        .expect("a free 10.77.X.0/24")
}

/// The bridge, the namespaces and their resolv.conf: all removed on drop.
struct Net {
    pid: u32,
    subnet: u8,
    bridge: String,
    dir: PathBuf,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("{NS_PREFIX}{}-{role}", self.pid)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// The bridge with .1 in this namespace (the test's route to the nodes).
    fn create() -> Result<Net, String> {
        let pid = std::process::id();
        let subnet = free_subnet();
        let bridge = format!("{LINK_PREFIX}{pid}br");
        let dir = std::env::temp_dir().join(format!("{NS_PREFIX}{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let net = Net {
            pid,
            subnet,
            bridge: bridge.clone(),
            dir,
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let cidr = format!("{}/24", net.addr(1));
        run("ip", &["addr", "add", &cidr, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// Namespace `role` at 10.77.X.`host` on the bridge, resolving through `dns`.
    fn add_ns(&self, role: &str, host: u8, dns: Ipv4Addr) -> Result<String, String> {
        let ns = self.ns(role);
        let (outer, inner) = (
            format!("{LINK_PREFIX}{}h{host}", self.pid),
            format!("{LINK_PREFIX}{}n{host}", self.pid),
        );
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &outer, "master", &self.bridge, "up"])?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        let cidr = format!("{}/24", self.addr(host));
        for args in [
            vec!["link", "set", inner.as_str(), "name", "eth0"],
            vec!["addr", "add", cidr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", ns.as_str()];
            all.extend(args);
            run("ip", &all)?;
        }
        // `ip netns exec` bind-mounts this over /etc/resolv.conf.
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {dns}\noptions timeout:1 attempts:2\n"),
        )
        .map_err(|e| e.to_string())?;
        Ok(ns)
    }

    /// `getent ahosts NAME` run in namespace `ns`: the addresses it resolves to, sorted.
    fn resolve_in(&self, ns: &str) -> Vec<Ipv4Addr> {
        let out = run("ip", &["netns", "exec", ns, "getent", "ahostsv4", NAME]);
        let mut v: Vec<Ipv4Addr> = out
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_all_of(self.pid);
        // Only if empty: another test's namespaces may have theirs there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// A process run in a namespace (`ip netns exec` execs it: same pid), its output kept; killed
/// on drop, its output printed if the test is failing.
struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, ns: &str, program: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        // Killed with the test (SIGKILL included) where util-linux's setpriv is there; else
        // the next run removes it (`remove_leftovers`).
        if let Some(setpriv) = find_tool("setpriv") {
            cmd.arg(setpriv).args(["--pdeathsig", "KILL", "--"]);
        }
        let mut child = cmd
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: ip netns exec {program}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Waits (bounded) for an output line containing `needle`.
    fn wait_line(&mut self, needle: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before printing {needle:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} did not print {needle:?} within {WAIT:?}", self.name);
    }

    fn lines(&self, filter: impl Fn(&str) -> bool) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| filter(l)).cloned().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} output:", self.name);
            for l in self.log.lock().unwrap().iter().rev().take(60).rev() {
                eprintln!("  {l}");
            }
        }
    }
}

fn connect(addr: SocketAddr) -> Client {
    let mut c = Client::connect_timeout(addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let ok = c.cmd(&["AUTH", PASSWORD]).expect("AUTH");
    assert_eq!(ok, Value::Simple("OK".into()), "AUTH on {addr}");
    c
}

/// A node: its serve process, the connections holding its users, a connection for queries.
struct Node {
    index: u8,
    ip: Ipv4Addr,
    users: i64,
    probe: Client,
    _holders: Vec<Client>,
    proc: Proc,
}

impl Node {
    fn cmd(&mut self, args: &[&str]) -> Value {
        self.probe
            .cmd(args)
            .unwrap_or_else(|e| panic!("node {} {args:?}: {e}", self.index))
    }

    fn count(&mut self) -> i64 {
        let v = self.cmd(&["COUNT", TOPIC]);
        v.as_int().unwrap_or_else(|| panic!("COUNT: {v:?}"))
    }

    fn info(&mut self, key: &str) -> i64 {
        let v = self.cmd(&["INFO", "cluster"]);
        let text = v.as_text().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in INFO cluster: {text}"))
    }

    /// `NODES`: every entry's fields as text (maps, or RESP2's flat key-value arrays).
    fn nodes(&mut self) -> Vec<Vec<(String, String)>> {
        let text = |v: &Value| match v {
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => i64::from(*b).to_string(),
            v => v.as_text().unwrap_or_else(|| format!("{v:?}")),
        };
        let Value::Array(entries) = self.cmd(&["NODES"]) else {
            panic!("NODES is not an array");
        };
        let pairs = |e: &Value| -> Vec<(String, String)> {
            match e {
                Value::Map(kv) => kv.iter().map(|(k, v)| (text(k), text(v))).collect(),
                Value::Array(flat) => flat
                    .chunks(2)
                    .map(|kv| (text(&kv[0]), text(&kv[1])))
                    .collect(),
                v => panic!("a NODES entry: {v:?}"),
            }
        };
        entries.iter().map(pairs).collect()
    }

    /// The peers in `NODES` (not self): (addr, found, alive: "1" or "0").
    fn peers(&mut self) -> Vec<(String, String, String)> {
        let field = |e: &[(String, String)], k: &str| {
            let v = e.iter().find(|(key, _)| key == k);
            v.map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let mut v: Vec<_> = self
            .nodes()
            .iter()
            .filter(|e| field(e, "found") != "self")
            .map(|e| (field(e, "addr"), field(e, "found"), field(e, "alive")))
            .collect();
        v.sort();
        v
    }
}

/// Starts node `index` at 10.77.X.(10 + index) with only `--peers-dns`: with the cluster key
/// (peers are also learned from authenticated datagrams and gossip), or `--insecure` without one
/// (nothing is learned: DNS alone finds peers).
fn spawn_serve(net: &Net, index: u8, key: Option<&Path>, cluster: &str) -> Proc {
    let ns = net.ns(&format!("n{index}"));
    let (dns, interval, tick, dead) = (
        format!("{NAME}:7380"),
        format!("{}ms", DNS_INTERVAL.as_millis()),
        format!("{}ms", TICK.as_millis()),
        format!("{}ms", DEAD_AFTER.as_millis()),
    );
    // Every node listens on 0.0.0.0:7379 on the same host name: only their network namespaces
    // tell their default node ids apart (no --node-id: were the ids the same, each node would
    // refuse the others' datagrams and no count would ever be exact).
    let mut args = vec![
        "serve",
        "--listen",
        "0.0.0.0:7379",
        "--requirepass",
        PASSWORD,
        "--workers",
        "1",
        "--cluster-bind",
        "0.0.0.0:7380",
        "--peers-dns",
        &dns,
        "--dns-interval",
        &interval,
        "--tick",
        &tick,
        "--dead-after",
        &dead,
        "--cluster",
        cluster,
    ];
    match key {
        Some(k) => args.extend(["--key-file", k.to_str().unwrap()]),
        None => args.push("--insecure"),
    }
    Proc::spawn(
        &format!("{cluster} node {index}"),
        &ns,
        env!("CARGO_BIN_EXE_headcount"),
        &args,
    )
}

/// Waits for a spawned serve to listen, then joins its users (node i holds i users, one
/// connection each).
fn ready(net: &Net, index: u8, mut proc: Proc) -> Node {
    proc.wait_line("listening on");
    let ip = net.addr(10 + index);
    let addr = SocketAddr::from((ip, 7379));
    let users = i64::from(index);
    let holders = (0..users)
        .map(|_| {
            let mut c = connect(addr);
            let v = c.cmd(&["JOIN", TOPIC]).expect("JOIN");
            assert_eq!(v.as_int(), Some(1), "JOIN on node {index}: {v:?}");
            c
        })
        .collect();
    Node {
        index,
        ip,
        users,
        probe: connect(addr),
        _holders: holders,
        proc,
    }
}

/// Waits until `COUNT` on every node reads `want`: the time it took from `t0`.
fn until_exact(what: &str, nodes: &mut [Node], want: i64, t0: Instant) -> Duration {
    loop {
        if nodes.iter_mut().all(|n| n.count() == want) {
            return t0.elapsed();
        }
        if t0.elapsed() > WAIT {
            let got: Vec<(u8, i64)> = nodes.iter_mut().map(|n| (n.index, n.count())).collect();
            for n in nodes.iter_mut() {
                let peers = n.peers();
                eprintln!("node {} NODES peers: {peers:?}", n.index);
            }
            panic!("{what}: wanted {want} on every node within {WAIT:?}, got {got:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until `ok` holds for every node's `NODES` peers.
fn until_peers(what: &str, nodes: &mut [Node], ok: impl Fn(&[(String, String, String)]) -> bool) {
    let t0 = Instant::now();
    loop {
        let all: Vec<_> = nodes.iter_mut().map(|n| (n.index, n.peers())).collect();
        if all.iter().all(|(_, p)| ok(p)) {
            return;
        }
        assert!(t0.elapsed() < WAIT, "{what} within {WAIT:?}: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// dnsmasq's hosts file and process.
struct Dns {
    hosts: PathBuf,
    pid: u32,
}

impl Dns {
    /// Writes the hosts file (one A record per address), has dnsmasq re-read it (SIGHUP), and
    /// waits until node 1's namespace resolves exactly those addresses.
    fn publish(&self, net: &Net, addrs: &[Ipv4Addr]) {
        let text: String = addrs.iter().map(|a| format!("{a} {NAME}\n")).collect();
        std::fs::write(&self.hosts, text).expect("write the hosts file");
        signal(self.pid, "HUP");
        let mut want = addrs.to_vec();
        want.sort();
        let probe_ns = net.ns("n1");
        let t0 = Instant::now();
        while net.resolve_in(&probe_ns) != want {
            assert!(
                t0.elapsed() < WAIT,
                "{probe_ns} resolves {NAME} to {:?}, not {want:?}",
                net.resolve_in(&probe_ns)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What one scenario measured.
struct Timings {
    initial: Duration,
    added: Duration,
    killed: Duration,
}

/// Three nodes converge; a fourth, added to DNS, is counted everywhere; one removed from DNS and
/// SIGKILLed leaves every count. `key`: see [`spawn_serve`].
fn scenario(net: &Net, dns: &Dns, key: Option<&Path>, cluster: &str) -> Timings {
    let tag = if key.is_some() { "keyed" } else { "insecure" };
    let first: Vec<Ipv4Addr> = (1..=3).map(|i| net.addr(10 + i)).collect();
    dns.publish(net, &first);

    // 1. Three nodes, started together, each knowing only the DNS name.
    let t0 = Instant::now();
    let procs: Vec<Proc> = (1..=3).map(|i| spawn_serve(net, i, key, cluster)).collect();
    let mut nodes: Vec<Node> = procs
        .into_iter()
        .zip(1u8..)
        .map(|(p, i)| ready(net, i, p))
        .collect();
    let joined = t0.elapsed();
    let want: i64 = nodes.iter().map(|n| n.users).sum();
    let initial = until_exact("three nodes converge", &mut nodes, want, t0);
    eprintln!(
        "[{tag}] initial convergence of 3 nodes: {initial:?} from starting them ({:?} after the \
         last user joined)",
        initial - joined
    );

    // 2. A fourth node: into DNS first, then started.
    let mut four = first.clone();
    four.push(net.addr(14));
    dns.publish(net, &four);
    let t0 = Instant::now();
    let p = spawn_serve(net, 4, key, cluster);
    nodes.push(ready(net, 4, p));
    let want: i64 = nodes.iter().map(|n| n.users).sum();
    let added = until_exact("the added node is counted everywhere", &mut nodes, want, t0);
    eprintln!("[{tag}] node added -> exact on all 4: {added:?} from starting it");
    let bound = DNS_INTERVAL + Duration::from_secs(3);
    assert!(
        added <= bound,
        "node 4 counted everywhere after {added:?} (bound {bound:?})"
    );
    // Peers first heard (learned) are marked found by DNS at the next resolution.
    until_peers(
        "every node lists 3 alive peers found by dns",
        &mut nodes,
        |p| p.len() == 3 && p.iter().all(|(_, f, a)| f == "dns" && a == "1"),
    );
    for n in nodes.iter_mut() {
        let (res, members) = (n.info("dns_resolutions"), n.info("members_dns"));
        assert!(res > 0, "node {}: dns_resolutions {res}", n.index);
        assert_eq!(members, 4, "node {}: members_dns", n.index);
        assert_eq!(
            n.info("members_learned"),
            0,
            "node {}: members_learned",
            n.index
        );
    }

    // 3. Node 2 leaves DNS, then is SIGKILLed: dropped everywhere after dead-after.
    let mut gone = nodes.remove(1);
    let rest: Vec<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
    dns.publish(net, &rest);
    let gone_addr = format!("{}:7380", gone.ip);
    let t0 = Instant::now();
    gone.proc.child.kill().expect("SIGKILL node 2");
    let _ = gone.proc.child.wait();
    let want: i64 = nodes.iter().map(|n| n.users).sum();
    let killed = until_exact("the killed node leaves every count", &mut nodes, want, t0);
    eprintln!(
        "[{tag}] node killed -> dropped everywhere: {killed:?} (dead-after {DEAD_AFTER:?}, tick \
         {TICK:?})"
    );
    let bound = DEAD_AFTER + TICK + Duration::from_millis(1500);
    assert!(
        killed <= bound,
        "dropped after {killed:?} (bound {bound:?})"
    );
    assert!(
        killed >= DEAD_AFTER - TICK * 5,
        "dropped after only {killed:?}: sooner than dead-after"
    );
    // A dropped peer stays in NODES as dead (alive 0) while its tombstone lasts; the others are
    // alive, found by DNS.
    until_peers("node 2 dead in every NODES", &mut nodes, |p| {
        let (dead, live): (Vec<_>, Vec<_>) = p.iter().partition(|(a, _, _)| *a == gone_addr);
        live.len() == 2
            && live.iter().all(|(_, f, al)| f == "dns" && al == "1")
            && dead.iter().all(|(_, _, al)| al == "0")
    });
    // Its address goes too: gone from DNS and silent for dead-after.
    let t1 = Instant::now();
    for n in nodes.iter_mut() {
        while n.info("members_dns") != 3 {
            assert!(
                t1.elapsed() < WAIT,
                "node {}: node 2's address kept",
                n.index
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The dead node, its address dropped from the member list, still says how it was found.
    until_peers("node 2 still listed as found by dns", &mut nodes, |p| {
        let dead: Vec<_> = p.iter().filter(|(a, _, _)| *a == gone_addr).collect();
        !dead.is_empty() && dead.iter().all(|(_, f, _)| f == "dns")
    });
    for n in nodes.iter_mut() {
        assert_eq!(
            n.info("dns_failures"),
            0,
            "node {}: failed DNS resolutions",
            n.index
        );
        let warnings = n.proc.lines(|l| l.contains("WARN") || l.contains("ERROR"));
        assert!(
            warnings.is_empty(),
            "node {} logged: {warnings:#?}",
            n.index
        );
    }
    // What node 1 refused, for the record (its own datagrams come back to it through DNS).
    let info = nodes[0]
        .cmd(&["INFO", "cluster"])
        .as_text()
        .unwrap_or_default();
    let refused: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("rejected_") || l.starts_with("datagrams_"))
        .filter(|l| !l.ends_with(":0"))
        .collect();
    eprintln!("[{tag}] node 1: {}", refused.join(" "));
    Timings {
        initial,
        added,
        killed,
    }
}

#[test]
fn nodes_found_through_a_real_dns_server() {
    if !is_root() {
        return skip("not root (network namespaces need root)");
    }
    if find_tool("ip").is_none() {
        return skip("ip not found (apt-get install iproute2)");
    }
    let Some(dnsmasq) = find_tool("dnsmasq") else {
        return skip("dnsmasq not found (apt-get install dnsmasq-base)");
    };
    if find_tool("getent").is_none() {
        return skip("getent not found (apt-get install libc-bin)");
    }
    remove_leftovers();
    let net = match Net::create() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot create a bridge: {e}")),
    };
    let dns_ip = net.addr(2);
    let dns_ns = match net.add_ns("dns", 2, dns_ip) {
        Ok(ns) => ns,
        Err(e) => return skip(&format!("cannot create a network namespace: {e}")),
    };
    for i in 1..=4u8 {
        net.add_ns(&format!("n{i}"), 10 + i, dns_ip)
            .unwrap_or_else(|e| panic!("namespace n{i}: {e}"));
    }
    // Safety: the nodes are reached through the bridge, never through another interface.
    let route = run("ip", &["route", "get", &net.addr(11).to_string()]).unwrap_or_default();
    assert!(
        route.contains(&format!("dev {} ", net.bridge)),
        "10.77.{}.0/24 is not routed to {}: {route}",
        net.subnet,
        net.bridge
    );
    eprintln!(
        "subnet 10.77.{}.0/24 on bridge {}; DNS at {dns_ip}",
        net.subnet, net.bridge
    );

    let hosts = net.dir.join("hosts");
    std::fs::write(&hosts, "").unwrap();
    let pid_file = net.dir.join("dnsmasq.pid");
    let dns_args = [
        "--keep-in-foreground".to_string(),
        "--log-facility=-".into(),
        "--conf-file=/dev/null".into(),
        "--user=root".into(),
        // Root throughout: a changed group id would clear the parent-death signal.
        "--group=root".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--addn-hosts={}", hosts.display()),
        // Answers for .test only from here: an AAAA query gets NODATA, not REFUSED.
        "--local=/test/".into(),
        format!("--listen-address={dns_ip}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--log-queries".into(),
        format!("--pid-file={}", pid_file.display()),
    ];
    let dns_args: Vec<&str> = dns_args.iter().map(String::as_str).collect();
    let mut dnsmasq = Proc::spawn("dnsmasq", &dns_ns, dnsmasq.to_str().unwrap(), &dns_args);
    dnsmasq.wait_line("read ");
    let dnsmasq_pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(dnsmasq.child.id());
    let dns = Dns {
        hosts,
        pid: dnsmasq_pid,
    };
    let key = net.dir.join("cluster.key");
    std::fs::write(&key, format!("dns-test-key-{}", net.pid)).unwrap();

    // With the cluster key (peers also learned from datagrams), then with DNS alone.
    let keyed = scenario(&net, &dns, Some(&key), &format!("dns-{}-keyed", net.pid));
    let insecure = scenario(&net, &dns, None, &format!("dns-{}-insecure", net.pid));
    let queries = dnsmasq.lines(|l| l.contains("query[A]")).len();
    eprintln!("dnsmasq answered {queries} A queries");
    for (tag, t) in [("keyed", keyed), ("insecure", insecure)] {
        eprintln!(
            "dns-timings-ms {tag} initial={} added={} killed={}",
            t.initial.as_millis(),
            t.added.as_millis(),
            t.killed.as_millis()
        );
    }
}
