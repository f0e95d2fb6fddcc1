//! Engines over [`ChannelTransport`]s, carried by a test "switch" that loses, duplicates and
//! reorders datagrams on purpose: counts are exact once churn stops; full queues are counted and
//! repaired; a wrong key counts nothing; garbage never hurts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use headcount::{
    ChannelTransport, DeliverError, Destination, Engine, Error, PeerAddr, Presence, Reject,
};

const KEY: &str = "the cluster's key";
const TICK: Duration = Duration::from_millis(20);
const SETTLE: Duration = Duration::from_secs(10);

/// splitmix64: a seeded, dependency-free RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// How the switch mistreats datagrams (each delivery to each destination rolls separately).
#[derive(Clone, Copy)]
struct Faults {
    loss: f64,
    duplicate: f64,
    /// Held back for 1 to 8 rounds (so delivered behind later ones).
    delay: f64,
}

const CLEAN: Faults = Faults {
    loss: 0.0,
    duplicate: 0.0,
    delay: 0.0,
};

/// The application's network: node `i` is `PeerAddr(i)` to every other node.
struct Switch {
    nodes: Vec<ChannelTransport>,
    /// Node `i`'s outbound queue is not read while set (an application that stopped polling).
    paused: Vec<AtomicBool>,
    stop: AtomicBool,
    carried: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

impl Switch {
    fn start(
        nodes: Vec<ChannelTransport>,
        faults: Faults,
        seed: u64,
    ) -> (Arc<Switch>, JoinHandle<()>) {
        let sw = Arc::new(Switch {
            paused: nodes.iter().map(|_| AtomicBool::new(false)).collect(),
            nodes,
            stop: AtomicBool::new(false),
            carried: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        });
        let s = sw.clone();
        let t = std::thread::spawn(move || s.run(faults, seed));
        (sw, t)
    }

    fn run(&self, f: Faults, seed: u64) {
        let mut rng = Rng(seed);
        // (round due, to, from, bytes)
        let mut held: Vec<(u64, usize, usize, Vec<u8>)> = Vec::new();
        let mut round = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            round += 1;
            for (i, t) in self.nodes.iter().enumerate() {
                if self.paused[i].load(Ordering::Acquire) {
                    continue;
                }
                for d in t.drain() {
                    let to: Vec<usize> = match d.to {
                        Destination::All => (0..self.nodes.len()).filter(|&j| j != i).collect(),
                        Destination::Peer(PeerAddr(j)) => vec![j as usize],
                    };
                    for j in to {
                        if rng.chance(f.loss) {
                            self.lost.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if rng.chance(f.delay) {
                            self.delayed.fetch_add(1, Ordering::Relaxed);
                            held.push((round + 1 + rng.below(8), j, i, d.bytes.clone()));
                            continue;
                        }
                        self.deliver(j, i, &d.bytes);
                        if rng.chance(f.duplicate) {
                            self.duplicated.fetch_add(1, Ordering::Relaxed);
                            self.deliver(j, i, &d.bytes);
                        }
                    }
                }
            }
            let mut k = 0;
            while k < held.len() {
                if held[k].0 <= round {
                    let (_, to, from, bytes) = held.swap_remove(k);
                    self.deliver(to, from, &bytes);
                } else {
                    k += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn deliver(&self, to: usize, from: usize, bytes: &[u8]) {
        if let Some(t) = self.nodes.get(to) {
            // A full queue is the engine's business (counted there); a stopped one is fine.
            let _ = t.deliver(PeerAddr(from as u64), bytes);
            self.carried.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stop(&self, t: JoinHandle<()>) {
        self.stop.store(true, Ordering::Release);
        t.join().expect("switch thread");
    }
}

fn engine(t: &ChannelTransport, key: &str) -> Engine {
    Engine::builder()
        .shards(2)
        .tick(TICK)
        .cluster_key(key)
        .channel(t)
        .start()
        .expect("engine starts")
}

/// An engine ticking every `tick` that keeps a silent peer for a minute (longer than any wait
/// here: what drops a peer sooner is not `dead_after`).
fn patient(t: &ChannelTransport, tick: Duration) -> Engine {
    Engine::builder()
        .shards(2)
        .tick(tick)
        .cluster_key(KEY)
        .dead_after(Duration::from_secs(60))
        .channel(t)
        .start()
        .expect("engine starts")
}

/// Waits until every engine counts `expected` (per topic of `universe`, and in total).
fn wait_exact(engines: &[Engine], universe: &[String], expected: &HashMap<String, u64>) {
    let total: u64 = expected.values().sum();
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut wrong = Vec::new();
        for (i, e) in engines.iter().enumerate() {
            if e.total() != total {
                wrong.push(format!("engine {i}: total {} != {total}", e.total()));
            }
            for t in universe {
                let want = expected.get(t).copied().unwrap_or(0);
                let got = e.count_by_name(t);
                if got != want {
                    wrong.push(format!("engine {i}: {t} {got} != {want}"));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not exact {SETTLE:?} after the churn stopped: {wrong:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_engines_over_a_lossy_channel_count_exactly_after_churn() {
    let transports: Vec<_> = (0..3).map(|_| ChannelTransport::new(1024)).collect();
    let engines: Vec<Engine> = transports.iter().map(|t| engine(t, KEY)).collect();
    let faults = Faults {
        loss: 0.15,
        duplicate: 0.05,
        delay: 0.10,
    };
    let (sw, sw_thread) = Switch::start(transports, faults, 0x5eed_1234);

    let universe: Vec<String> = (0..24).map(|i| format!("room:{i}")).collect();
    let mut rng = Rng(42);
    let mut held: Vec<Vec<(usize, Presence)>> = (0..engines.len()).map(|_| Vec::new()).collect();
    let churn_until = Instant::now() + Duration::from_millis(1500);
    let mut ops = 0u64;
    while Instant::now() < churn_until {
        let e = rng.below(engines.len() as u64) as usize;
        if held[e].is_empty() || rng.chance(0.55) {
            let t = rng.below(universe.len() as u64) as usize;
            held[e].push((t, engines[e].join_by_name(&universe[t])));
        } else {
            let k = rng.below(held[e].len() as u64) as usize;
            drop(held[e].swap_remove(k)); // leaves
        }
        ops += 1;
        if ops.is_multiple_of(16) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (t, _) in held.iter().flatten() {
        *expected.entry(universe[*t].clone()).or_default() += 1;
    }
    assert!(expected.values().sum::<u64>() > 0, "the churn left users");
    wait_exact(&engines, &universe, &expected);

    // The switch did mistreat the traffic, and the engines noticed the holes and repaired them.
    assert!(sw.lost.load(Ordering::Relaxed) > 0);
    assert!(sw.duplicated.load(Ordering::Relaxed) > 0);
    assert!(sw.delayed.load(Ordering::Relaxed) > 0);
    let lost_seen: u64 = engines.iter().flat_map(|e| e.nodes()).map(|n| n.lost).sum();
    assert!(lost_seen > 0, "the engines saw sequence gaps");
    for e in &engines {
        let c = e.cluster_stats().expect("in a cluster");
        assert_eq!(c.peers_alive, 2, "{c:?}");
        assert_eq!(c.protocol.rejected(Reject::Mac), 0, "nothing was forged");
        // Peers are listed at their synthetic addresses.
        for n in e.nodes() {
            let p = PeerAddr::from_socket_addr(n.addr).expect("a channel peer's address");
            assert!(p.0 < 3);
        }
    }

    // Everyone leaves, on every engine: zero everywhere.
    held.clear();
    wait_exact(&engines, &universe, &HashMap::new());
    sw.stop(sw_thread);
}

#[test]
fn a_full_queue_is_counted_and_repaired() {
    let transports: Vec<_> = (0..2).map(|_| ChannelTransport::new(3)).collect();
    // Three datagrams for a queue of three before the engine even runs: one is refused.
    for _ in 0..3 {
        let _ = transports[1].deliver(PeerAddr(7), b"not a datagram");
    }
    assert_eq!(
        transports[1].deliver(PeerAddr(7), b"one too many"),
        Err(DeliverError::Full)
    );
    let engines: Vec<Engine> = transports.iter().map(|t| engine(t, KEY)).collect();
    let (sw, sw_thread) = Switch::start(transports, CLEAN, 1);
    let universe: Vec<String> = (0..200).map(|i| format!("topic:{i}")).collect();
    let _first = engines[0].join_by_name(&universe[0]);
    wait_exact(
        &engines,
        &universe,
        &HashMap::from([(universe[0].clone(), 1)]),
    );

    // Node 0's application stops polling while its users change a lot: its queue of three
    // overflows and the oldest datagrams go.
    sw.paused[0].store(true, Ordering::Release);
    let many: Vec<Presence> = universe
        .iter()
        .map(|t| engines[0].join_by_name(t))
        .collect();
    let deadline = Instant::now() + SETTLE;
    while engines[0]
        .cluster_stats()
        .expect("cluster")
        .transport_dropped_out
        == 0
    {
        assert!(Instant::now() < deadline, "no outbound drop counted");
        std::thread::sleep(TICK);
    }
    std::thread::sleep(TICK * 10);
    let c1 = engines[1].cluster_stats().expect("cluster");
    assert!(
        c1.transport_dropped_in >= 1,
        "the refused delivery is counted: {c1:?}"
    );
    assert!(c1.protocol.rejected(Reject::Length) + c1.protocol.rejected(Reject::Magic) >= 1);

    // Polling again: exact, though most of the burst was dropped.
    sw.paused[0].store(false, Ordering::Release);
    let mut expected: HashMap<String, u64> = universe.iter().map(|t| (t.clone(), 1)).collect();
    *expected.get_mut(&universe[0]).expect("topic 0") += 1;
    wait_exact(&engines, &universe, &expected);
    drop(many);
    sw.stop(sw_thread);
}

#[test]
fn a_peer_gone_leaves_at_once_and_comes_back_with_its_next_datagram() {
    let transports: Vec<_> = (0..2).map(|_| ChannelTransport::new(1024)).collect();
    // dead_after is a minute: whatever drops node 1's counts within SETTLE is `peer_gone`.
    let engines: Vec<Engine> = transports.iter().map(|t| patient(t, TICK)).collect();
    let gone_side = transports[0].clone();
    let (sw, sw_thread) = Switch::start(transports, CLEAN, 3);
    let universe = vec!["room".to_string()];
    let five: Vec<Presence> = (0..5).map(|_| engines[1].join_by_name("room")).collect();
    wait_exact(&engines, &universe, &HashMap::from([("room".into(), 5)]));

    // Node 1 falls silent (its application stops carrying its datagrams) and node 0's
    // application learns it is gone (an Erlang nodedown).
    sw.paused[1].store(true, Ordering::Release);
    std::thread::sleep(TICK * 3);
    gone_side.peer_gone(PeerAddr(1));
    let deadline = Instant::now() + SETTLE;
    while engines[0].count_by_name("room") != 0 || engines[0].total() != 0 {
        assert!(
            Instant::now() < deadline,
            "node 1's counts did not leave node 0 after peer_gone: {}",
            engines[0].count_by_name("room")
        );
        std::thread::sleep(TICK);
    }
    assert_eq!(
        engines[0]
            .cluster_stats()
            .expect("cluster")
            .protocol
            .peers_died,
        1
    );
    assert!(engines[0].nodes().iter().all(|n| !n.alive));

    // Not a ban: back on the wire, node 1 is admitted again and its users count again.
    sw.paused[1].store(false, Ordering::Release);
    wait_exact(&engines, &universe, &HashMap::from([("room".into(), 5)]));
    drop(five);
    wait_exact(&engines, &universe, &HashMap::new());
    sw.stop(sw_thread);
}

#[test]
fn a_peer_change_shows_when_its_datagram_arrives_not_at_the_next_tick() {
    let transports: Vec<_> = (0..2).map(|_| ChannelTransport::new(1024)).collect();
    // Node 1 ticks every 20 s: it sums, sends and publishes its feed only then (or on sync).
    let slow = Duration::from_secs(20);
    let engines: Vec<Engine> = transports
        .iter()
        .zip([TICK, slow])
        .map(|(t, tick)| patient(t, tick))
        .collect();
    let mut feed = engines[1].changes();
    let (sw, sw_thread) = Switch::start(transports, CLEAN, 4);
    let three: Vec<Presence> = (0..3).map(|_| engines[0].join_by_name("early")).collect();
    // Well before node 1's first tick: node 0's datagrams alone put the count in its view.
    let deadline = Instant::now() + SETTLE;
    while engines[1].count_by_name("early") != 3 || engines[1].total() != 3 {
        assert!(
            Instant::now() < deadline,
            "node 1 counts {} of node 0's 3 without a tick of its own",
            engines[1].count_by_name("early")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engines[1].stats().ticks, 0, "node 1 has not ticked yet");
    // Its feed lists the change with its next tick's batch.
    engines[1].sync();
    let mut seen = None;
    while let Some(headcount::FeedEvent::Changes(c)) = feed.try_recv() {
        for (name, count) in &c.changes {
            if &**name == "early" {
                assert!(seen.is_none(), "listed once per batch: {:?}", c.changes);
                seen = Some(*count);
            }
        }
    }
    assert_eq!(seen, Some(3));
    drop(three);
    sw.stop(sw_thread);
}

#[test]
fn a_wrong_key_counts_nothing_of_the_others() {
    let transports: Vec<_> = (0..4).map(|_| ChannelTransport::new(1024)).collect();
    let mut engines: Vec<Engine> = transports[..3].iter().map(|t| engine(t, KEY)).collect();
    let intruder = engine(&transports[3], "another key");
    let (sw, sw_thread) = Switch::start(transports, CLEAN, 2);
    let universe = vec!["lobby".to_string()];
    let _users: Vec<Presence> = engines.iter().map(|e| e.join_by_name("lobby")).collect();
    let _theirs = intruder.join_by_name("lobby");
    wait_exact(
        &engines,
        &universe,
        &HashMap::from([("lobby".to_string(), 3)]),
    );
    std::thread::sleep(TICK * 20);
    // Still exactly 3 on the keyed engines, 1 on the intruder (its own), and every datagram
    // across the key boundary was refused by the MAC.
    wait_exact(
        &engines,
        &universe,
        &HashMap::from([("lobby".to_string(), 3)]),
    );
    engines.push(intruder);
    let intruder = &engines[3];
    assert_eq!(intruder.count_by_name("lobby"), 1);
    assert_eq!(intruder.total(), 1);
    assert!(intruder.nodes().is_empty());
    for e in &engines {
        let c = e.cluster_stats().expect("cluster");
        assert!(c.protocol.rejected(Reject::Mac) > 0, "{c:?}");
    }
    sw.stop(sw_thread);
}

#[test]
fn garbage_never_panics_and_counts_stay_exact() {
    let transports: Vec<_> = (0..2).map(|_| ChannelTransport::new(4096)).collect();
    let engines: Vec<Engine> = transports.iter().map(|t| engine(t, KEY)).collect();
    let victim = transports[1].clone();
    // A few real datagrams of node 0, to mutate.
    let _u = engines[0].join_by_name("real");
    let mut real = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while real.len() < 8 {
        assert!(Instant::now() < deadline);
        if let Ok(d) = transports[0].recv_timeout(Duration::from_millis(100)) {
            real.push(d.bytes);
        }
    }
    let mut rng = Rng(99);
    for i in 0..20_000u64 {
        let from = PeerAddr(rng.below(4));
        let bytes: Vec<u8> = match i % 3 {
            0 => (0..rng.below(1500)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = real[rng.below(real.len() as u64) as usize].clone();
                let k = rng.below(b.len() as u64) as usize;
                b[k] ^= 1 << rng.below(8);
                b
            }
            _ => {
                let b = &real[rng.below(real.len() as u64) as usize];
                b[..rng.below(b.len() as u64) as usize].to_vec()
            }
        };
        match victim.deliver(from, &bytes) {
            Ok(()) | Err(DeliverError::Full) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        victim.deliver(PeerAddr(0), &vec![0; headcount::MAX_CHANNEL_DATAGRAM + 1]),
        Err(DeliverError::TooLarge)
    );
    // Then a clean network: the victim is alive, refused all of it, and counts exactly.
    let (sw, sw_thread) = Switch::start(transports, CLEAN, 3);
    let universe = vec!["real".to_string()];
    wait_exact(
        &engines,
        &universe,
        &HashMap::from([("real".to_string(), 1)]),
    );
    assert!(!engines[1].is_stopped());
    // Every one of the 20,001 was refused: by the engine (MAC, length, rate...) or at the
    // door (a full queue, over-long).
    let c = engines[1].cluster_stats().expect("cluster");
    assert!(
        c.protocol.rejected_total() + c.transport_dropped_in >= 20_001,
        "{c:?}"
    );
    sw.stop(sw_thread);
}

#[test]
fn the_builder_guards_a_channel() {
    let t = ChannelTransport::new(16);
    let refused = |r: Result<Engine, Error>, option: &str| match r {
        Err(Error::Config { option: o, .. }) => assert_eq!(o, option),
        other => panic!("expected a config error on {option}, got {other:?}"),
    };
    // Never loopback: a key, or insecure(true).
    refused(
        Engine::builder().shards(1).channel(&t).start(),
        "cluster_key",
    );
    refused(
        Engine::builder()
            .shards(1)
            .cluster_key(KEY)
            .channel(&t)
            .unicast("127.0.0.1:0".parse().unwrap(), [])
            .start(),
        "channel",
    );
    refused(
        Engine::builder()
            .shards(1)
            .cluster_key(KEY)
            .channel(&ChannelTransport::new(0))
            .start(),
        "channel",
    );
    let e = Engine::builder()
        .shards(1)
        .insecure(true)
        .channel(&t)
        .start()
        .expect("insecure(true) is explicit");
    assert_eq!(e.local_addr(), None);
    assert!(e.node_id().is_some());
    // One engine per transport.
    refused(
        Engine::builder()
            .shards(1)
            .cluster_key(KEY)
            .channel(&t)
            .start(),
        "channel",
    );
    e.shutdown();
    assert!(t.is_closed());
    // Its goodbye is the last datagram queued; then the transport reports the disconnection.
    let mut last = None;
    while let Ok(d) = t.try_recv() {
        last = Some(d);
    }
    assert_eq!(last.map(|d| d.to), Some(Destination::All));
    assert_eq!(
        t.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Disconnected)
    );
    assert_eq!(t.deliver(PeerAddr(1), b"late"), Err(DeliverError::Closed));
}

#[test]
fn async_recv_and_a_waker() {
    let t = ChannelTransport::new(64);
    let woken = Arc::new(AtomicU64::new(0));
    let w = woken.clone();
    t.set_waker(move || {
        w.fetch_add(1, Ordering::Relaxed);
    });
    let e = engine(&t, KEY);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let d = tokio::time::timeout(SETTLE, t.recv())
            .await
            .expect("a heartbeat within a few ticks")
            .expect("the engine runs");
        assert_eq!(d.to, Destination::All);
        // The engine calls the waker after it queued the batch: `recv` may have the datagram
        // first, so wait (bounded) for the call.
        let t0 = std::time::Instant::now();
        while woken.load(Ordering::Relaxed) == 0 {
            assert!(t0.elapsed() < SETTLE, "the waker was never called");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        e.shutdown();
        let mut n = 0;
        while tokio::time::timeout(SETTLE, t.recv())
            .await
            .expect("never hangs after the engine stopped")
            .is_some()
        {
            n += 1;
        }
        assert!(n >= 1, "the goodbye at least");
    });
}
