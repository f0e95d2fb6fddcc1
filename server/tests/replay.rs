//! Replay and amplification over the wire: real `headcount serve` nodes on loopback multicast,
//! a keyed spy peer that captures every kind of datagram they send, and replays of those
//! captures (live sender, dead sender, restarted sender, foreign source address). The rule each
//! kind meets is written in `headcount::cluster::protocol`'s module docs.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Client, Reply, Spawned, unique_cluster};
use headcount::cluster::protocol::{Config, Protocol};
use headcount::cluster::wire::{Encoder, FLAG_NAMES, FLAG_STATE, Kind, Seal, Stamp};
use socket2::{Domain, Protocol as IpProto, SockAddr, Socket, Type};

const TICK: Duration = Duration::from_millis(50);

/// A multicast group and port of this test's own.
fn group(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 93, n),
        40_000 + (std::process::id() % 5_000) as u16 * 4 + u16::from(n),
    )
}

/// A key file of this test's own.
fn key_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hc-replay-{tag}-{}.key", std::process::id()));
    std::fs::write(&p, format!("replay test key {tag}")).unwrap();
    p
}

/// A free TCP port on loopback (for a node restarted on the same listen address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `serve` node of the test cluster on `listen`.
fn node(g: SocketAddrV4, cluster: &str, key: &Path, listen: &str) -> Spawned {
    Spawned::spawn(&[
        "serve",
        "--listen",
        listen,
        "--workers",
        "1",
        "--tick",
        "50ms",
        "--dead-after",
        "1s",
        "--group",
        &g.to_string(),
        "--cluster",
        cluster,
        "--key-file",
        key.to_str().unwrap(),
    ])
}

/// A datagram a node sent, as captured.
#[derive(Clone)]
struct Captured {
    kind: Kind,
    node: u64,
    bytes: Vec<u8>,
}

/// A keyed peer driven by the test: it takes part in the cluster (so the nodes answer its
/// requests), and keeps every datagram it receives, group and unicast.
struct Spy {
    proto: Protocol,
    seal: Seal,
    enc: Encoder,
    node: u64,
    incarnation: u64,
    requests: u64,
    sock: UdpSocket,
    group_rx: UdpSocket,
    group: SocketAddrV4,
    next_tick: Instant,
    captured: Vec<Captured>,
}

impl Spy {
    fn new(g: SocketAddrV4, cluster: &str, key: &Path) -> Spy {
        let key = std::fs::read(key).unwrap();
        let seal = Seal::new(cluster, &key);
        let node = 0x5eed_0000_0000_0001 ^ u64::from(std::process::id());
        let incarnation = 1;
        let mut cfg = Config::new(node, incarnation, TICK);
        cfg.dead_after = Duration::from_secs(1);
        let proto = Protocol::new(cfg.clone(), seal.clone());
        let enc = Encoder::new(seal.cluster(), node, incarnation, 50, cfg.budget);
        let r = Socket::new(Domain::IPV4, Type::DGRAM, Some(IpProto::UDP)).unwrap();
        r.set_reuse_address(true).unwrap();
        r.set_reuse_port(true).unwrap();
        r.bind(&SockAddr::from(g)).unwrap();
        r.join_multicast_v4(g.ip(), &Ipv4Addr::LOCALHOST).unwrap();
        r.set_multicast_all_v4(false).unwrap();
        r.set_recv_buffer_size(8 << 20).unwrap();
        r.set_nonblocking(true).unwrap();
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(IpProto::UDP)).unwrap();
        s.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        s.set_multicast_loop_v4(true).unwrap();
        s.set_recv_buffer_size(8 << 20).unwrap();
        s.set_nonblocking(true).unwrap();
        Spy {
            proto,
            seal,
            enc,
            node,
            incarnation,
            requests: 1 << 40,
            sock: s.into(),
            group_rx: r.into(),
            group: g,
            next_tick: Instant::now(),
            captured: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Runs the spy for `d`: receives (and captures), ticks, sends.
    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            let mut any = false;
            for s in [&self.group_rx, &self.sock] {
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    any = true;
                    if from == self.addr() {
                        continue;
                    }
                    if let Ok(dg) = self.seal.open(&buf[..n]) {
                        self.captured.push(Captured {
                            kind: dg.kind,
                            node: dg.header.node.get(),
                            bytes: buf[..n].to_vec(),
                        });
                    }
                    self.proto.handle_datagram(now, from, &buf[..n]);
                }
            }
            if now >= self.next_tick {
                self.proto.handle_tick(now);
                self.next_tick += TICK;
            }
            self.proto.handle_timeout(now);
            while let Some(t) = self.proto.poll_transmit() {
                let to = match t.dest {
                    headcount::cluster::protocol::Dest::Group => SocketAddr::V4(self.group),
                    headcount::cluster::protocol::Dest::To(a) => a,
                };
                let _ = self.sock.send_to(&t.bytes, to);
            }
            if now >= end {
                break;
            }
            if !any {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// The peers the spy knows: node id → (address, incarnation).
    fn peers(&self) -> BTreeMap<u64, (SocketAddr, u64)> {
        self.proto
            .nodes(Instant::now())
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| (n.node, (n.addr, n.incarnation)))
            .collect()
    }

    /// A genuine resync request from the spy to `node` (what a live peer sends after a loss).
    fn request(&mut self, node: u64, incarnation: u64, flags: u16) -> Vec<u8> {
        self.requests += 1;
        let st = Stamp {
            seq: 1,
            digest: 0,
            topics: 0,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        };
        let _ = (self.node, self.incarnation);
        self.enc
            .request(&self.seal, flags, &st, node, incarnation, self.requests)
    }

    fn kinds(&self, node: u64) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.captured.iter().filter(|c| c.node == node) {
            *m.entry(format!("{:?}", c.kind)).or_insert(0) += 1;
        }
        m
    }
}

/// A socket at an address no node has heard of, for replays; it counts what comes back.
struct Foreign(UdpSocket);

impl Foreign {
    fn new() -> Foreign {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        Foreign(s)
    }
    fn send(&self, bytes: &[u8], to: SocketAddr) {
        let _ = self.0.send_to(bytes, to);
    }
    fn received(&self) -> usize {
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        while let Ok((n, _)) = self.0.recv_from(&mut buf) {
            total += n;
        }
        total
    }
}

fn count(addr: SocketAddr, topic: &str) -> i64 {
    Client::connect(addr).cmd(&["COUNT", topic]).int()
}

fn until(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    common::wait_for(bound, || f().then_some(())).is_some()
}

/// Holds `n` presences in `topic` on `addr` (until dropped).
fn hold(addr: SocketAddr, topic: &str, n: usize) -> Client {
    let mut c = Client::connect(addr);
    for _ in 0..n {
        assert_eq!(c.cmd(&["JOIN", topic]).int(), 1);
    }
    c
}

fn cluster_info(addr: SocketAddr, field: &str) -> i64 {
    Client::connect(addr).info("cluster", field)
}

/// Every kind a live node sends, replayed from a foreign address (to the group, and to each
/// node's own address): nothing changes, nothing is sent back.
#[test]
fn every_kind_replayed_against_live_nodes_changes_nothing() {
    let g = group(1);
    let cluster = unique_cluster("replay-live");
    let key = key_file("live");
    let mut spy = Spy::new(g, &cluster, &key);
    let a = node(g, &cluster, &key, "127.0.0.1:0");
    let c = node(g, &cluster, &key, "127.0.0.1:0");
    let mut users = hold(a.addr, "r", 50);
    assert!(until(Duration::from_secs(10), || count(c.addr, "r") == 50));
    spy.pump(Duration::from_millis(600));
    let peers = spy.peers();
    assert_eq!(peers.len(), 2, "the spy is a live peer of both: {peers:?}");
    let a_node = spy
        .captured
        .iter()
        .find(|x| x.kind == Kind::Names)
        .map(|x| x.node)
        .expect("a's names of r");
    let (a_addr, a_inc) = peers[&a_node];
    let c_addr = peers
        .iter()
        .find(|(n, _)| **n != a_node)
        .map(|(_, v)| v.0)
        .unwrap();
    // A genuine request for a's table and names: its reply is captured too.
    let req = spy.request(a_node, a_inc, FLAG_STATE | FLAG_NAMES);
    spy.sock.send_to(&req, a_addr).unwrap();
    spy.pump(Duration::from_millis(300));
    let kinds = spy.kinds(a_node);
    for k in ["Delta", "Heartbeat", "Refresh", "Names", "ResyncReply"] {
        assert!(kinds.contains_key(k), "captured no {k}: {kinds:?}");
    }
    let mut captured: Vec<Vec<u8>> = spy
        .captured
        .iter()
        .filter(|x| x.node == a_node)
        .map(|x| x.bytes.clone())
        .collect();
    captured.push(req);
    // The counts move on: every capture is now stale.
    for _ in 0..20 {
        assert_eq!(users.cmd(&["LEAVE", "r"]).int(), 1);
    }
    assert!(until(Duration::from_secs(10), || count(c.addr, "r") == 30));
    let stale_before = cluster_info(c.addr, "rejected_stale");
    let foreign = Foreign::new();
    for _ in 0..3 {
        for d in &captured {
            foreign.send(d, SocketAddr::V4(g));
            foreign.send(d, c_addr);
            foreign.send(d, a_addr);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count(c.addr, "r"), 30, "a replay changed c's count");
        assert_eq!(count(a.addr, "r"), 30, "a replay changed a's count");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(foreign.received(), 0, "a node answered a replay");
    assert!(cluster_info(c.addr, "rejected_stale") > stale_before);
    assert_eq!(count(c.addr, "r"), 30);
}

/// Defect: captured datagrams of a SIGKILLed node, replayed every 100 ms after its peers
/// dropped it, brought its counts back for as long as the replay went on.
#[test]
fn a_dead_nodes_datagrams_never_bring_its_counts_back() {
    let g = group(2);
    let cluster = unique_cluster("replay-dead");
    let key = key_file("dead");
    let mut spy = Spy::new(g, &cluster, &key);
    let mut a = node(g, &cluster, &key, "127.0.0.1:0");
    let c = node(g, &cluster, &key, "127.0.0.1:0");
    let _users = hold(a.addr, "r", 500);
    assert!(until(Duration::from_secs(10), || count(c.addr, "r") == 500));
    spy.pump(Duration::from_millis(1500));
    let c_node = {
        let mut cl = Client::connect(c.addr);
        let _ = cl.cmd(&["PING"]);
        spy.peers()
    };
    assert_eq!(c_node.len(), 2);
    let a_dgs: Vec<Captured> = {
        // a's datagrams are the ones with counts of r (c counts nothing of its own).
        let a_node = spy
            .captured
            .iter()
            .find(|x| x.kind == Kind::Delta)
            .map(|x| x.node)
            .expect("a delta from a");
        spy.captured
            .iter()
            .filter(|x| x.node == a_node)
            .cloned()
            .collect()
    };
    assert!(a_dgs.len() > 20);
    a.child.kill().unwrap();
    let _ = a.child.wait();
    assert!(
        until(Duration::from_secs(10), || count(c.addr, "r") == 0),
        "c dropped the dead node"
    );
    let foreign = Foreign::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let d = &a_dgs[i % a_dgs.len()];
        i += 1;
        foreign.send(&d.bytes, SocketAddr::V4(g));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            count(c.addr, "r"),
            0,
            "replay {i} ({:?}) brought the dead node's counts back",
            d.kind
        );
    }
    assert_eq!(Client::connect(c.addr).cmd(&["TOTAL"]).int(), 0);
}

/// Defect: a node SIGKILLed and restarted on the same address was counted twice for
/// dead-after (every start had a new random node id). Its node id is now stable (derived from
/// the cluster, the host and the listen address), so the new incarnation replaces the old one at
/// once; and the old incarnation's datagrams, replayed, stay dead.
#[test]
fn a_restarted_node_replaces_its_old_counts_at_once() {
    let g = group(3);
    let cluster = unique_cluster("replay-restart");
    let key = key_file("restart");
    let mut spy = Spy::new(g, &cluster, &key);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut a = node(g, &cluster, &key, &listen);
    let c = node(g, &cluster, &key, "127.0.0.1:0");
    let users = hold(a.addr, "room", 100);
    assert!(until(Duration::from_secs(10), || count(c.addr, "room") == 100));
    spy.pump(Duration::from_millis(500));
    let old: Vec<Vec<u8>> = spy.captured.iter().map(|x| x.bytes.clone()).collect();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    drop(users);
    let a2 = node(g, &cluster, &key, &listen);
    let _users = hold(a2.addr, "room", 100);
    // From the restart on, c never counts both incarnations: at most 100, and 100 again soon.
    let start = Instant::now();
    let mut max = 0;
    let mut reached = false;
    while start.elapsed() < Duration::from_secs(3) {
        let n = count(c.addr, "room");
        max = max.max(n);
        reached |= n == 100;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(max <= 100, "the restart was double counted: {max}");
    assert!(reached, "the restarted node's users are counted");
    // The old incarnation's datagrams, replayed, are refused.
    let foreign = Foreign::new();
    for d in &old {
        foreign.send(d, SocketAddr::V4(g));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(c.addr, "room"), 100);
    assert_eq!(count(a2.addr, "room"), 100);
}

/// Defect: an 88-byte resync request, captured and re-sent from 20 foreign sockets, brought
/// back the whole table to each (2,863×), and made the node multicast all its names each time.
#[test]
fn a_captured_request_replayed_from_foreign_addresses_gets_nothing() {
    let g = group(4);
    let cluster = unique_cluster("replay-amp");
    let key = key_file("amp");
    let mut spy = Spy::new(g, &cluster, &key);
    let a = node(g, &cluster, &key, "127.0.0.1:0");
    // 5,000 topics with long names: a table of about 60 kB and names of about 200 kB.
    let mut clients = Vec::new();
    for part in 0..5 {
        let mut cl = Client::connect(a.addr);
        let names: Vec<String> = (0..1000)
            .map(|i| format!("a-topic-with-a-long-enough-name-{part}-{i:04}"))
            .collect();
        let mut cmd = vec!["JOIN"];
        cmd.extend(names.iter().map(String::as_str));
        assert_eq!(cl.cmd(&cmd).int(), 1000);
        clients.push(cl);
    }
    spy.pump(Duration::from_millis(1500));
    let peers = spy.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    let (&a_node, &(a_addr, a_inc)) = peers.iter().next().unwrap();
    // The spy's genuine request: answered to the spy, in full.
    let req = spy.request(a_node, a_inc, FLAG_STATE | FLAG_NAMES);
    spy.captured.clear();
    spy.sock.send_to(&req, a_addr).unwrap();
    spy.pump(Duration::from_millis(500));
    let reply: usize = spy
        .captured
        .iter()
        .filter(|x| matches!(x.kind, Kind::ResyncReply | Kind::Names))
        .map(|x| x.bytes.len())
        .sum();
    assert!(reply > 150_000, "the genuine reply: {reply} bytes");
    // The same bytes from 20 foreign sockets, three times each: nothing comes back, and no
    // names are multicast.
    spy.captured.clear();
    let foreign: Vec<Foreign> = (0..20).map(|_| Foreign::new()).collect();
    for _ in 0..3 {
        for f in &foreign {
            f.send(&req, a_addr);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    spy.pump(Duration::from_millis(500));
    let back: usize = foreign.iter().map(Foreign::received).sum();
    assert_eq!(back, 0, "{back} bytes sent to foreign addresses");
    let names: usize = spy
        .captured
        .iter()
        .filter(|x| x.kind == Kind::Names)
        .map(|x| x.bytes.len())
        .sum();
    assert_eq!(
        names, 0,
        "names multicast in answer to replays: {names} bytes"
    );
    // From the spy's own address: a request number already used.
    spy.sock.send_to(&req, a_addr).unwrap();
    spy.captured.clear();
    spy.pump(Duration::from_millis(300));
    assert!(
        !spy.captured.iter().any(|x| x.kind == Kind::ResyncReply),
        "a replayed request was answered"
    );
    assert!(cluster_info(a.addr, "rejected_not_peer") >= 60);
}
