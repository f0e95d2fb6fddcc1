//! Fuzzes the cluster protocol with whole sequences of datagrams: the input is a script run on a
//! small cluster of 2 to 4 [`Protocol`]s over a simulated network that the script controls.
//!
//! ```text
//! cd fuzz && mkdir -p corpus/protocol
//! cargo +nightly fuzz run --sanitizer none protocol corpus/protocol seeds/protocol -- -max_total_time=600
//! HEADCOUNT_FUZZ_TRACE=1 cargo +nightly fuzz run --sanitizer none protocol artifacts/protocol/crash-…
//! ```
//!
//! The script's operations: local count changes (with names now and then), ticks of one node
//! or all, time moving on (a little, or past the time a silent peer is dropped), delivering
//! what one node queued for another with a fault chosen by the input (none, drop, duplicate,
//! reorder, corrupt, truncate, keep a copy to replay later, deliver from a foreign address),
//! replays from that pool (from the original or a foreign address), datagrams sealed with
//! another key, resync timeouts, crashes (no goodbye), restarts (the same node id, a higher
//! incarnation, an empty table) and goodbyes. Time is passed in, never read.
//!
//! Checked after every step, on every live node:
//!
//! - no panic;
//! - `remote_total()` is the sum of the alive peers' totals in `nodes(now)`, and the sum of
//!   `remote(h)` over every topic any node ever counts (nothing else can pass the MAC);
//! - what `poll_event` reported (`Event::RemoteChanged`), applied to a mirror, equals `remote(h)`;
//! - every datagram it sends opens with the shared seal, carries its own node id and
//!   incarnation, and fits the configured budget;
//! - amplification: the bytes it sends to an address that never sent it a genuine datagram (a
//!   foreign address: only replays and forgeries come from there) are at most the bytes it
//!   received from that address. One exception, the limit of what the protocol can know without
//!   a return-routability handshake: an address that won the race against a node's own copies
//!   twice (an on-path attacker that intercepts fresh datagrams and delivers them first; or
//!   replays one that the receiver had not had yet, which it admits as new) is, for the
//!   receiver, that node's path, and may be sent requests, replies and relayed copies.
//!
//! At the end, after a fault-free settling phase (in-flight datagrams are lost, then every live
//! node ticks and everything is delivered for longer than `dead_after` plus two refresh
//! cycles), every live node's view is exact: for each topic, `remote(h)` is the sum of the
//! other live nodes' local counts; each is converged; its alive peers are exactly the other live
//! nodes at their current incarnations (crashed ones were dropped).
//!
//! `HEADCOUNT_FUZZ_SKIP`, a comma-separated list, steps around known bugs to look for others:
//! `amplification` turns that check off; `foreign-first` delivers an intercepted datagram from
//! its sender before the copy from a foreign address (so the copy is only ever a replay).
//!
//! The first bytes choose the cluster: 2 to 4 nodes, the datagram budget, the refresh cycle, and
//! now and then clock skews between nodes, a small per-tick datagram budget (a backlog), a
//! small repair budget, an observer, and relaying (fan-out 2: four nodes relay).
//!
//! The glue to the protocol's API is kept in [`config`], [`protocol`] and [`forge`].

#![no_main]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use headcount::cluster::protocol::{Clock, Config, Dest, Event, Outcome, Protocol};
use headcount::cluster::wire::{MIN_BUDGET, Seal, TAG_LEN, relay_fanout};
use libfuzzer_sys::fuzz_target;

const TICK: Duration = Duration::from_millis(100);
/// Most operations per input.
const MAX_OPS: usize = 400;
/// Most datagrams waiting on one link (the oldest are lost beyond it).
const MAX_QUEUE: usize = 256;
/// Most datagrams kept for replays.
const MAX_POOL: usize = 32;

/// Every topic hash a node may count: the edges of the hash space and spread-out values (so
/// that refresh slices split the table in different places).
const TOPICS: [u64; 12] = [
    0,
    1,
    u64::MAX,
    u64::MAX - 1,
    0x8000_0000_0000_0000,
    0x9e37_79b9_7f4a_7c15,
    0x3c6e_f372_fe94_f82a,
    0xdaa6_6d2c_7ddf_743f,
    0x78dd_e6e5_fd29_f054,
    0x1715_609f_7c74_6c69,
    0xb54c_da59_fbbe_e87e,
    0x5384_5413_7b09_6493,
];

// ---- Glue: the only code that knows how a protocol is configured and built. ----------------

/// Choices the input makes once per run.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    budget: usize,
    refresh_cycle: u32,
    /// How far each node slot's wall clock is ahead of true time.
    skew: [Duration; 4],
    /// A slot whose processes are passive observers (they count nothing).
    observer: Option<usize>,
    max_tick_datagrams: usize,
    max_repair_rate: u64,
    /// Every node relays with fan-out 2 (four nodes have three peers each: their group
    /// datagrams travel trees; with fewer, each sends to all).
    relay: bool,
}

/// The wall clock at [`base`], in Unix milliseconds (fixed, so that runs replay exactly).
const UNIX_MS: u64 = 1_800_000_000_000;

/// The settings of the process started at `now` in slot `slot` (its clock read then).
fn config(slot: usize, node: u64, incarnation: u64, k: &Knobs, now: Instant) -> Config {
    let mut c = Config::new(node, incarnation, TICK);
    c.clock = Clock {
        base: now,
        unix_ms: UNIX_MS + (now - base() + k.skew[slot]).as_millis() as u64,
    };
    c.budget = k.budget;
    c.refresh_cycle = k.refresh_cycle;
    c.observer = k.observer == Some(slot);
    c.max_tick_datagrams = k.max_tick_datagrams;
    c.max_repair_rate = k.max_repair_rate;
    c.relay_fanout = if k.relay { 2 } else { 0 };
    // Short, so that scripts reach it and settling is quick.
    c.dead_after = Duration::from_secs(1);
    // Room for every node id a script uses and every topic.
    c.max_peers = 8;
    c.max_topics_per_peer = 64;
    c
}

fn protocol(cfg: Config) -> Protocol {
    Protocol::new(cfg, seal().clone())
}

/// A datagram sealed with a key the cluster does not have: `model` (some real datagram) with a
/// header byte changed by `how`, re-sealed with the outsider's key.
fn forge(model: &[u8], how: u8) -> Vec<u8> {
    let mut b = model[..model.len().saturating_sub(TAG_LEN)].to_vec();
    if let Some(x) = b.get_mut(usize::from(how) % 40) {
        *x ^= how | 1;
    }
    outsider().seal(&mut b);
    b
}

// ---------------------------------------------------------------------------------------------

fn seal() -> &'static Seal {
    static SEAL: OnceLock<Seal> = OnceLock::new();
    SEAL.get_or_init(|| Seal::new("fuzz", b"fuzz key"))
}

/// Same cluster name, another key.
fn outsider() -> &'static Seal {
    static SEAL: OnceLock<Seal> = OnceLock::new();
    SEAL.get_or_init(|| Seal::new("fuzz", b"not the key"))
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HEADCOUNT_FUZZ_TRACE").is_some())
}

/// Whether `HEADCOUNT_FUZZ_SKIP` (a comma-separated list) names this known bug.
fn skip(what: &str) -> bool {
    static SKIP: OnceLock<String> = OnceLock::new();
    SKIP.get_or_init(|| std::env::var("HEADCOUNT_FUZZ_SKIP").unwrap_or_default())
        .split(',')
        .any(|s| s.trim() == what)
}

macro_rules! trace {
    ($($t:tt)*) => {
        if tracing() {
            eprintln!($($t)*);
        }
    };
}

fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, 1 + i as u8),
        7380,
    ))
}

/// Addresses no node has: replays and forgeries come from there.
fn foreign(k: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1 + k % 3), 7380))
}

fn is_foreign(a: &SocketAddr) -> bool {
    matches!(a, SocketAddr::V4(v) if v.ip().octets()[..3] == [192, 0, 2])
}

/// A topic's name (the same on every node; one too long to fit a small budget).
fn name_of(k: usize) -> Arc<str> {
    if k == 11 {
        "x".repeat(250).into()
    } else {
        format!("room:{k}").into()
    }
}

/// One node slot: its current process (if up) and what the harness knows about it.
struct Node {
    id: u64,
    incarnation: u64,
    p: Option<Protocol>,
    /// The process's local counts.
    local: BTreeMap<u64, u32>,
    /// Per address, this process's bytes received from it and sent to it (unicast).
    received: HashMap<SocketAddr, u64>,
    sent: HashMap<SocketAddr, u64>,
    /// Per foreign address, the intercepted datagrams it delivered to this process before their
    /// originals (an on-path attacker winning the race).
    raced: HashMap<SocketAddr, u32>,
    /// The peer sums as `poll_event` reported them.
    mirror: HashMap<u64, u64>,
}

impl Node {
    /// A new process in this slot (at the slot's current incarnation), started at `now`.
    fn start(&mut self, k: &Knobs, now: Instant) {
        let slot = self.id as usize - 1;
        self.p = Some(protocol(config(slot, self.id, self.incarnation, k, now)));
        self.local.clear();
        self.received.clear();
        self.sent.clear();
        self.mirror.clear();
    }
}

struct Sim {
    now: Instant,
    knobs: Knobs,
    nodes: Vec<Node>,
    /// Datagrams in flight from node `i` to node `j`: `links[i * n + j]`.
    links: Vec<VecDeque<Vec<u8>>>,
    /// Copies kept for replays, with the address they came from.
    pool: Vec<(SocketAddr, Vec<u8>)>,
}

impl Sim {
    fn new(n: usize, knobs: Knobs) -> Sim {
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: 1 + i as u64,
                incarnation: 1,
                p: None,
                local: BTreeMap::new(),
                received: HashMap::new(),
                sent: HashMap::new(),
                raced: HashMap::new(),
                mirror: HashMap::new(),
            })
            .collect();
        for node in &mut nodes {
            node.start(&knobs, base());
        }
        Sim {
            now: base(),
            knobs,
            nodes,
            links: vec![VecDeque::new(); n * n],
            pool: Vec::new(),
        }
    }

    fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Takes what node `i` wants to send, checks it, and puts it on the links.
    fn collect(&mut self, i: usize) {
        let n = self.n();
        let budget = self.knobs.budget.max(MIN_BUDGET);
        let node = &mut self.nodes[i];
        let Some(p) = node.p.as_mut() else { return };
        while let Some(t) = p.poll_transmit() {
            let len = t.bytes.len();
            match seal().open(&t.bytes) {
                // (A relay forwards its peers' datagrams as they are, unicast.)
                Ok(d) if relay_fanout(d.header.flags.get()) > 0 && t.dest != Dest::Group => {}
                Ok(d) => {
                    assert_eq!(
                        (d.header.node.get(), d.header.incarnation.get()),
                        (node.id, node.incarnation),
                        "a datagram with another sender's id or incarnation"
                    );
                }
                Err(r) => panic!("node {} sent a datagram that does not open: {r:?}", node.id),
            }
            assert!(
                len <= budget,
                "node {} sent {len} bytes, budget {budget}",
                node.id
            );
            let to: Vec<usize> = match t.dest {
                Dest::Group => (0..n).filter(|&j| j != i).collect(),
                Dest::To(addr) => {
                    *node.sent.entry(addr).or_default() += len as u64;
                    (0..n).filter(|&j| j != i && node_addr(j) == addr).collect()
                }
            };
            trace!("  {} sends {len} bytes to {:?}", node.id, t.dest);
            for j in to {
                let q = &mut self.links[i * n + j];
                if q.len() == MAX_QUEUE {
                    q.pop_front();
                }
                q.push_back(t.bytes.clone());
            }
        }
    }

    fn collect_all(&mut self) {
        for i in 0..self.n() {
            self.collect(i);
        }
    }

    /// Node `j` receives `bytes` from `from`.
    fn deliver(&mut self, j: usize, from: SocketAddr, bytes: &[u8]) -> Option<Outcome> {
        let now = self.now;
        let node = &mut self.nodes[j];
        let p = node.p.as_mut()?;
        *node.received.entry(from).or_default() += bytes.len() as u64;
        let o = p.handle_datagram(now, from, bytes);
        trace!("  {} <- {from} {} bytes: {o:?}", node.id, bytes.len());
        self.collect(j);
        Some(o)
    }

    /// Delivers the front of every link, without faults, until nothing is in flight. False if
    /// that does not happen within `max` datagrams.
    fn flush(&mut self, max: usize) -> bool {
        let n = self.n();
        let mut budget = max;
        loop {
            let mut any = false;
            for i in 0..n {
                for j in 0..n {
                    if let Some(b) = self.links[i * n + j].pop_front() {
                        if budget == 0 {
                            return false;
                        }
                        budget -= 1;
                        any = true;
                        self.deliver(j, node_addr(i), &b);
                    }
                }
            }
            if !any {
                return true;
            }
        }
    }

    fn tick(&mut self, i: usize) {
        let now = self.now;
        if let Some(p) = self.nodes[i].p.as_mut() {
            p.handle_tick(now);
            p.handle_timeout(now);
        }
        self.collect(i);
    }

    /// The per-step invariants, on every live node.
    fn check(&mut self) {
        let now = self.now;
        let amp = !skip("amplification");
        for node in &mut self.nodes {
            let Some(p) = node.p.as_mut() else { continue };
            let alive: u64 = p
                .nodes(now)
                .iter()
                .filter(|n| n.alive)
                .map(|n| n.total)
                .sum();
            assert_eq!(
                alive,
                p.remote_total(),
                "node {}: remote total drifted from the peers' totals",
                node.id
            );
            let by_topic: u64 = TOPICS.iter().map(|&h| p.remote(h)).sum();
            assert_eq!(
                by_topic,
                p.remote_total(),
                "node {}: remote total is not the sum over topics",
                node.id
            );
            while let Some(e) = p.poll_event() {
                if let Event::RemoteChanged { hash, sum } = e {
                    node.mirror.insert(hash, sum);
                }
            }
            for &h in &TOPICS {
                assert_eq!(
                    node.mirror.get(&h).copied().unwrap_or(0),
                    p.remote(h),
                    "node {}: the change feed missed a change of {h:#x}",
                    node.id
                );
            }
            let _ = p.converged();
            if amp {
                for (addr, &out) in &node.sent {
                    let got = node.received.get(addr).copied().unwrap_or(0);
                    // An address that won the race with a node's fresh datagrams twice is that
                    // node's path as far as the receiver can tell (the protocol pins a peer's
                    // address and sends only to one heard from twice); see the module docs.
                    let path = node.raced.get(addr).copied().unwrap_or(0) >= 2;
                    assert!(
                        !is_foreign(addr) || out <= got || path,
                        "amplification: node {} sent {out} bytes to {addr}, which never sent it \
                         a genuine datagram and sent it only {got} bytes",
                        node.id
                    );
                }
            }
        }
    }

    /// Loses what is in flight, then runs the cluster without faults for long enough that
    /// everything live converges and everything crashed is dropped; then checks exactness.
    fn settle(&mut self) {
        trace!("settling");
        for q in &mut self.links {
            q.clear();
        }
        let cfg = config(0, 1, 1, &self.knobs, self.now);
        // Past dead_after, two refresh cycles, and a backlog of every topic and name sent one
        // datagram a tick.
        let span =
            cfg.dead_after + TICK * (2 * self.knobs.refresh_cycle + 2 * TOPICS.len() as u32 + 10);
        let rounds = span.as_millis().div_ceil(TICK.as_millis());
        for _ in 0..rounds {
            self.now += TICK;
            for i in 0..self.n() {
                self.tick(i);
            }
            assert!(
                self.flush(100_000),
                "the cluster keeps sending without faults"
            );
            self.check();
        }
        let now = self.now;
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(p) = node.p.as_ref() else { continue };
            // The other live nodes that count (not observers).
            let others: Vec<&Node> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|&(j, o)| j != i && o.p.is_some() && self.knobs.observer != Some(j))
                .map(|(_, o)| o)
                .collect();
            for &h in &TOPICS {
                let want: u64 = others
                    .iter()
                    .map(|o| u64::from(o.local.get(&h).copied().unwrap_or(0)))
                    .sum();
                assert_eq!(
                    p.remote(h),
                    want,
                    "node {}: after settling, remote({h:#x}) is not the other live nodes' sum",
                    node.id
                );
            }
            let alive: Vec<(u64, u64)> = p
                .nodes(now)
                .iter()
                .filter(|n| n.alive)
                .map(|n| (n.node, n.incarnation))
                .collect();
            let want: Vec<(u64, u64)> = others.iter().map(|o| (o.id, o.incarnation)).collect();
            assert_eq!(
                alive, want,
                "node {}: after settling, its alive peers are not the live nodes",
                node.id
            );
            assert!(
                p.converged(),
                "node {}: not converged after settling",
                node.id
            );
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// One operation of the script; `None` when the input ends.
fn step(sim: &mut Sim, r: &mut Reader) -> Option<()> {
    let n = sim.n();
    let op = r.byte()?;
    match op % 16 {
        // A local count changes (0 removes; now and then a huge count; with its name or not).
        0..=2 => {
            let (a, c) = (r.byte()?, r.byte()?);
            let i = usize::from(a) % n;
            let k = usize::from(a >> 2) % TOPICS.len();
            let count = match c {
                0xf8.. => u32::MAX - u32::from(c & 7),
                _ => u32::from(c % 8),
            };
            let name = (op & 0x80 != 0).then(|| name_of(k));
            let node = &mut sim.nodes[i];
            if sim.knobs.observer == Some(i) {
                // Observers count nothing.
                return Some(());
            }
            if let Some(p) = node.p.as_mut() {
                trace!("{} set {:#x} = {count}", node.id, TOPICS[k]);
                p.set_local(TOPICS[k], count, name.as_ref());
                if count == 0 {
                    node.local.remove(&TOPICS[k]);
                } else {
                    node.local.insert(TOPICS[k], count);
                }
            }
        }
        // One node ticks.
        3 | 4 => {
            let i = usize::from(op >> 4) % n;
            trace!("{} ticks", i + 1);
            sim.tick(i);
        }
        // Every node ticks.
        5 => {
            trace!("all tick");
            for i in 0..n {
                sim.tick(i);
            }
        }
        // Time moves on: up to a second, or past the time a silent peer is dropped.
        6 => {
            let b = r.byte()?;
            let dt = if b == 0xff {
                config(0, 1, 1, &sim.knobs, sim.now).dead_after + TICK * 5
            } else {
                Duration::from_millis(u64::from(b) * 4)
            };
            sim.now += dt;
            trace!("time +{dt:?}");
        }
        // What node `i` queued for node `j`, delivered with a fault.
        7..=10 => {
            let (l, f) = (r.byte()?, r.byte()?);
            let i = usize::from(l) % n;
            let j = (i + 1 + usize::from(l >> 4) % (n - 1)) % n;
            let q = &mut sim.links[i * n + j];
            if q.is_empty() {
                return Some(());
            }
            let from = node_addr(i);
            trace!("{} -> {} fault {}", i + 1, j + 1, f % 8);
            match f % 8 {
                // Lost.
                2 => {
                    q.pop_front();
                }
                // Duplicated: delivered now and again later.
                3 => {
                    let b = q.pop_front()?;
                    q.push_back(b.clone());
                    sim.deliver(j, from, &b);
                }
                // Reordered: a later one overtakes.
                4 => {
                    let k = usize::from(f >> 3) % q.len();
                    let b = q.remove(k)?;
                    sim.deliver(j, from, &b);
                }
                // Corrupted: a bit flipped, or cut short.
                5 => {
                    let mut b = q.pop_front()?;
                    let at = usize::from(r.byte()?) * 8 + usize::from(f >> 5);
                    if f & 0x10 != 0 {
                        b.truncate(at % b.len());
                    } else {
                        let bit = at % (b.len() * 8);
                        b[bit / 8] ^= 1 << (bit % 8);
                    }
                    sim.deliver(j, from, &b);
                }
                // Delivered, and a copy kept for a replay later.
                6 => {
                    let b = q.pop_front()?;
                    if sim.pool.len() == MAX_POOL {
                        sim.pool.remove(0);
                    }
                    sim.pool.push((from, b.clone()));
                    sim.deliver(j, from, &b);
                }
                // Intercepted and delivered from a foreign address first (and now and then the
                // original too, after it).
                7 => {
                    let b = q.pop_front()?;
                    if skip("foreign-first") {
                        // Only as a replay, after the original.
                        sim.deliver(j, from, &b);
                    } else {
                        *sim.nodes[j].raced.entry(foreign(f >> 3)).or_default() += 1;
                    }
                    sim.deliver(j, foreign(f >> 3), &b);
                    if f & 0x80 != 0 {
                        sim.deliver(j, from, &b);
                    }
                    if sim.pool.len() < MAX_POOL {
                        sim.pool.push((from, b));
                    }
                }
                // Delivered as sent.
                _ => {
                    let b = q.pop_front()?;
                    sim.deliver(j, from, &b);
                }
            }
        }
        // Everything in flight, delivered without faults.
        11 => {
            trace!("flush");
            sim.flush(10_000);
        }
        // A crash (no goodbye), a restart (a new process: a higher incarnation, an empty
        // table), or a goodbye (and the process ends).
        12 => {
            let a = r.byte()?;
            let i = usize::from(a) % n;
            let node = &mut sim.nodes[i];
            match (a >> 2) % 3 {
                0 => {
                    trace!("{} crashes", node.id);
                    node.p = None;
                }
                1 => {
                    node.incarnation += 1 + u64::from(a >> 6);
                    trace!("{} restarts as incarnation {}", node.id, node.incarnation);
                    let knobs = sim.knobs;
                    node.start(&knobs, sim.now);
                }
                _ => {
                    if let Some(p) = node.p.as_mut() {
                        trace!("{} says goodbye", node.id);
                        p.goodbye(sim.now);
                    }
                    sim.collect(i);
                    sim.nodes[i].p = None;
                }
            }
        }
        // A replay of a kept datagram, from where it came or from a foreign address.
        13 => {
            let b = r.byte()?;
            if sim.pool.is_empty() {
                return Some(());
            }
            let (orig, bytes) = sim.pool[usize::from(b) % sim.pool.len()].clone();
            let j = usize::from(b >> 5) % n;
            let from = if op & 0x80 != 0 { foreign(b) } else { orig };
            trace!("replay to {} from {from}", j + 1);
            if from != node_addr(j) {
                let o = sim.deliver(j, from, &bytes);
                // Kept datagrams reach some nodes late (a relayed one, or one still queued for
                // this node): one this node admits as new is, for it, intercepted and delivered
                // first from elsewhere — a race, as in fault 7.
                if is_foreign(&from) && o == Some(Outcome::Applied) {
                    *sim.nodes[j].raced.entry(from).or_default() += 1;
                }
            }
        }
        // A forgery: a real datagram changed and sealed with another key, from a foreign
        // address or a node's.
        14 => {
            let (b, how) = (r.byte()?, r.byte()?);
            let model = sim
                .pool
                .first()
                .map(|(_, d)| d.clone())
                .or_else(|| sim.links.iter().find_map(|q| q.front().cloned()));
            let Some(model) = model else {
                return Some(());
            };
            let j = usize::from(b) % n;
            let from = if b & 0x80 != 0 {
                foreign(b >> 2)
            } else {
                node_addr((j + 1) % n)
            };
            trace!("forgery to {} from {from}", j + 1);
            sim.deliver(j, from, &forge(&model, how));
        }
        // Time moves on to when node `i` asked to be woken (if within a second); timeouts run.
        _ => {
            let i = usize::from(op >> 4) % n;
            let now = sim.now;
            if let Some(w) = sim.nodes[i].p.as_ref().and_then(|p| p.poll_timeout())
                && w > now
                && w - now <= Duration::from_secs(1)
            {
                sim.now = w;
            }
            trace!("timeouts at {:?}", sim.now - base());
            for k in 0..n {
                let now = sim.now;
                if let Some(p) = sim.nodes[k].p.as_mut() {
                    p.handle_timeout(now);
                }
            }
            sim.collect_all();
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let Some(b) = r.byte() else { return };
    let n = 2 + usize::from(b % 3);
    // Clocks: all true, or each slot ahead by 0 to 0.75 s.
    let skews = if b & 0x40 != 0 {
        r.byte().unwrap_or(0)
    } else {
        0
    };
    // Now and then: a small per-tick datagram budget (a backlog), a small repair budget, an
    // observer in the last slot.
    let e = if b & 0x80 != 0 {
        r.byte().unwrap_or(0)
    } else {
        0
    };
    let defaults = Config::new(1, 1, TICK);
    let knobs = Knobs {
        budget: [MIN_BUDGET, MIN_BUDGET + 13, 300, 1400][usize::from(b >> 2) & 3],
        refresh_cycle: 1 + u32::from(b >> 4) % 4,
        skew: std::array::from_fn(|i| Duration::from_millis(250 * u64::from(skews >> (2 * i) & 3))),
        observer: (e & 0x10 != 0 && n >= 3).then_some(n - 1),
        max_tick_datagrams: match e & 3 {
            0 => defaults.max_tick_datagrams,
            t => usize::from(t),
        },
        max_repair_rate: [defaults.max_repair_rate, 2000, 500, 100][usize::from(e >> 2) & 3],
        relay: e & 0x20 != 0,
    };
    trace!("{n} nodes, {knobs:?}");
    let mut sim = Sim::new(n, knobs);
    for _ in 0..MAX_OPS {
        if step(&mut sim, &mut r).is_none() {
            break;
        }
        sim.check();
    }
    sim.settle();
});
