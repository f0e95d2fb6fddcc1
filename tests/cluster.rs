//! Real sockets on loopback: engines in one process form a cluster over multicast and over
//! unicast, converge, and drop a node that leaves.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use headcount::{Builder, Engine, Error};

const TICK: Duration = Duration::from_millis(50);

/// A multicast group and port of its own per test, so tests running in parallel stay apart.
fn group(n: u8) -> SocketAddrV4 {
    let port = 20_000 + (std::process::id() % 20_000) as u16 + u16::from(n) * 7;
    SocketAddrV4::new(Ipv4Addr::new(239, 255, 71, n), port)
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

fn node(b: headcount::Builder) -> Engine {
    b.shards(1)
        .tick(TICK)
        .dead_after(Duration::from_millis(600))
        .start()
        .expect("engine starts")
}

#[test]
fn three_engines_over_loopback_multicast_converge_and_a_goodbye_drops_counts() {
    let g = group(1);
    let engines: Vec<Engine> = (0..3)
        .map(|_| node(Engine::builder().multicast(g).cluster_name("t1")))
        .collect();
    let mut shards: Vec<_> = engines.iter().map(|e| e.shard().unwrap()).collect();
    let mut held = Vec::new();
    for (i, s) in shards.iter_mut().enumerate() {
        for _ in 0..=i {
            held.push(s.join_by_name("room:1"));
        }
        held.push(s.join_by_name(&format!("only-on-{i}")));
    }
    // 1 + 2 + 3 in room:1, and one in each node's own topic.
    for e in &engines {
        eventually("every node counts every node", || {
            e.count_by_name("room:1") == 6 && e.total() == 9
        });
        for i in 0..3 {
            eventually("topics only a peer has are listed by name", || {
                e.count_by_name(&format!("only-on-{i}")) == 1
            });
        }
        assert_eq!(
            e.local_count(e.lookup("room:1").unwrap()),
            e.local_count(e.topic("room:1"))
        );
    }
    eventually("peers converged", || {
        engines.iter().all(|e| {
            let n = e.nodes();
            n.len() == 2 && n.iter().all(|p| p.alive && p.converged)
        })
    });
    // A graceful stop: the others drop its counts at once (well before dead-after).
    let gone = engines[2].clone();
    drop(shards.pop());
    gone.shutdown();
    let t0 = Instant::now();
    for e in &engines[..2] {
        eventually("a goodbye removes the node's counts", || {
            e.count_by_name("room:1") == 3
        });
    }
    assert!(
        t0.elapsed() < Duration::from_millis(600),
        "took {:?}: not the goodbye",
        t0.elapsed()
    );
    drop(held);
}

/// `n` engines on reserved loopback ports, each with the others as its unicast peers, a
/// cluster key, and whatever `cfg` adds.
fn unicast_cluster(n: usize, cfg: impl Fn(Builder) -> Builder) -> Vec<Engine> {
    let ports: Vec<SocketAddr> = (0..n)
        .map(|_| {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    (0..n)
        .map(|i| {
            let peers = ports.iter().copied().filter(|p| *p != ports[i]);
            node(cfg(Engine::builder()
                .unicast(ports[i], peers)
                .cluster_key(b"secret")))
        })
        .collect()
}

#[test]
fn unicast_peers_converge() {
    let engines = unicast_cluster(3, |b| b.cluster_name("t2"));
    let _p: Vec<_> = engines.iter().map(|e| e.join_by_name("lobby")).collect();
    for e in &engines {
        eventually("unicast cluster counts everyone", || {
            e.count_by_name("lobby") == 3
        });
    }
}

#[test]
fn a_relayed_unicast_cluster_converges() {
    // Five nodes relaying with fan-out 2: with four peers each, every node's datagrams travel
    // a tree (two copies from the sender, the rest forwarded).
    let engines = unicast_cluster(5, |b| b.cluster_name("relay").relay_fanout(2));
    let _p: Vec<_> = engines
        .iter()
        .enumerate()
        .flat_map(|(i, e)| (0..=i).map(move |_| e.join_by_name("lobby")))
        .collect();
    for e in &engines {
        eventually("a relayed cluster counts everyone", || {
            e.count_by_name("lobby") == 15
        });
    }
    eventually("datagrams were relayed", || {
        engines
            .iter()
            .filter_map(|e| e.cluster_stats())
            .map(|c| c.protocol.relayed)
            .sum::<u64>()
            > 0
    });
}

#[test]
fn other_cluster_or_key_is_not_counted() {
    let g = group(2);
    let a = node(
        Engine::builder()
            .multicast(g)
            .cluster_name("t3")
            .cluster_key(b"k1"),
    );
    let b = node(
        Engine::builder()
            .multicast(g)
            .cluster_name("t3")
            .cluster_key(b"k2"),
    );
    let c = node(
        Engine::builder()
            .multicast(g)
            .cluster_name("other")
            .cluster_key(b"k1"),
    );
    let _p = (
        a.join_by_name("x"),
        b.join_by_name("x"),
        c.join_by_name("x"),
    );
    eventually("rejections counted", || {
        a.cluster_stats()
            .is_some_and(|s| s.protocol.rejected_total() > 0)
    });
    std::thread::sleep(TICK * 4);
    a.sync();
    assert_eq!(
        a.count_by_name("x"),
        1,
        "counted a node with another key or cluster"
    );
    assert!(a.nodes().is_empty());
}

#[test]
fn bad_cluster_configuration_is_a_clear_error() {
    let e = Engine::builder()
        .multicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7380))
        .start()
        .unwrap_err();
    assert!(
        e.to_string().contains("multicast group") && e.to_string().contains("10.0.0.1"),
        "{e}"
    );

    let e = Engine::builder()
        .interface(Ipv4Addr::LOCALHOST)
        .start()
        .unwrap_err();
    assert!(e.to_string().contains("interface"), "{e}");

    let e = Engine::builder()
        .multicast(group(3))
        .cluster_key_file("/nonexistent/key")
        .start()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Config {
                option: "cluster_key_file",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/key"), "{e}");

    // Repair pacing: a burst smaller than one datagram, or absurdly large, is refused.
    for burst in [100, 1 << 30] {
        let e = Engine::builder()
            .multicast(group(3))
            .repair_burst(burst)
            .start()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    option: "repair_burst",
                    ..
                }
            ) && e.to_string().contains(&burst.to_string()),
            "{e}"
        );
    }

    // A relay tree needs two children at least, and the fan-out fits the header's byte.
    for k in [1, 256] {
        let e = Engine::builder()
            .multicast(group(3))
            .relay_fanout(k)
            .start()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    option: "relay_fanout",
                    ..
                }
            ),
            "{e}"
        );
    }

    // No key on a non-loopback network: refused unless insecure.
    let b = || {
        Engine::builder().unicast(
            "0.0.0.0:0".parse().unwrap(),
            ["192.0.2.1:7380".parse().unwrap()],
        )
    };
    let e = b().start().unwrap_err();
    assert!(e.to_string().contains("without a key"), "{e}");

    // A unicast port in use.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Engine::builder().unicast(addr, []).start().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Net {
                option: "unicast bind",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    // An interface address this host does not have.
    let e = Engine::builder()
        .multicast(group(5))
        .interface(Ipv4Addr::new(192, 0, 2, 77))
        .insecure(true)
        .start()
        .unwrap_err();
    assert!(e.to_string().contains("192.0.2.77"), "{e}");

    let e = Engine::builder()
        .multicast(group(4))
        .payload_budget(10)
        .start()
        .unwrap_err();
    assert!(e.to_string().contains("payload_budget"), "{e}");
}

/// The name limit's boundary on a real cluster: a name of exactly [`headcount::MAX_NAME_LEN`]
/// bytes is named on the peer; a longer one is counted in the overflow topic, which the peer
/// names too, so the peer's counts by name add up to its total.
#[test]
fn a_name_at_the_limit_is_named_on_the_peer() {
    let g = group(6);
    let a = node(Engine::builder().multicast(g).cluster_name("t6"));
    let b = node(Engine::builder().multicast(g).cluster_name("t6"));
    let edge = "n".repeat(headcount::MAX_NAME_LEN);
    let long = "n".repeat(headcount::MAX_NAME_LEN + 1);
    let mut shard = a.shard().unwrap();
    let mut held: Vec<_> = (0..3).map(|_| shard.join_by_name(&edge)).collect();
    held.extend((0..2).map(|_| shard.join_by_name(&long)));
    assert_eq!(a.stats().long_names, 2);
    eventually("the peer counts the 255-byte name by name", || {
        b.total() == 5 && b.count_by_name(&edge) == 3
    });
    eventually("the peer names the overflow topic", || {
        b.count_by_name(headcount::OVERFLOW_NAME) == 2
    });
    assert_eq!(b.count_by_name(&long), 0);
    drop(held);
    eventually("leaves reach the peer", || b.total() == 0);
}
