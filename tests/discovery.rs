//! Dynamic membership over unicast: peers found by DNS, learned from their authenticated
//! datagrams, and learned from membership gossip (a node given only a seed peer learns the
//! rest); and what happens without a key (nothing is learned). All on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use headcount::{Engine, Found};

const KEY: &[u8] = b"discovery test key: 32 bytes ok!";

fn node(peers: &[SocketAddr], key: Option<&[u8]>, dns: Option<String>) -> Engine {
    let mut b = Engine::builder()
        .tick(Duration::from_millis(20))
        .max_topics(1 << 12)
        .cluster_name("discovery-test")
        .unicast("127.0.0.1:0".parse().unwrap(), peers.iter().copied());
    if let Some(k) = key {
        b = b.cluster_key(k);
    }
    if let Some(d) = dns {
        b = b.peers_dns(&d).dns_interval(Duration::from_millis(50));
    }
    b.start().expect("start")
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn found(e: &Engine, peer: &Engine) -> Option<Found> {
    let addr = peer.local_addr()?;
    e.nodes()
        .into_iter()
        .find(|n| n.alive && n.addr == addr)
        .and_then(|n| n.found)
}

#[test]
fn a_node_given_one_seed_learns_the_rest_with_a_key() {
    let a = node(&[], Some(KEY), None);
    let seed = a.local_addr().unwrap();
    let b = node(&[seed], Some(KEY), None);
    let c = node(&[seed], Some(KEY), None);
    let _pa = a.join_by_name("room");
    let _pb = (b.join_by_name("room"), b.join_by_name("room"));
    let _pc: Vec<_> = (0..3).map(|_| c.join_by_name("room")).collect();
    for (name, e) in [("a", &a), ("b", &b), ("c", &c)] {
        eventually(&format!("{name} counts all 6"), || {
            e.count_by_name("room") == 6
        });
    }
    // B and C were given only A: each learned the other (from gossip, then its datagrams).
    assert_eq!(found(&b, &c), Some(Found::Learned));
    assert_eq!(found(&c, &b), Some(Found::Learned));
    assert_eq!(found(&b, &a), Some(Found::Configured));
    assert_eq!(found(&a, &b), Some(Found::Learned), "A was given nobody");
    let st = b.cluster_stats().unwrap();
    assert_eq!((st.members_configured, st.members_learned), (1, 1));
}

#[test]
fn without_a_key_only_configured_peers_are_talked_to() {
    let a = node(&[], None, None);
    let seed = a.local_addr().unwrap();
    let b = node(&[seed], None, None);
    let c = node(&[seed], None, None);
    let _pb = b.join_by_name("room");
    let _pc = c.join_by_name("room");
    // A hears both (it admits datagrams, as before), but sends to nobody: it was given no peer
    // and learns none without a key; B and C never hear of each other.
    eventually("a counts b and c", || a.count_by_name("room") == 2);
    std::thread::sleep(Duration::from_millis(300)); // 15 ticks: gossip would have spread
    assert_eq!(b.count_by_name("room"), 1, "b learned c without a key");
    assert_eq!(c.count_by_name("room"), 1, "c learned b without a key");
    assert_eq!(b.cluster_stats().unwrap().members_learned, 0);
    assert_eq!(a.cluster_stats().unwrap().members_learned, 0);
}

#[test]
fn peers_found_by_dns_count_each_other_and_a_bad_name_is_counted_not_fatal() {
    let a = node(&[], Some(KEY), None);
    let port = a.local_addr().unwrap().port();
    // "localhost" lists 127.0.0.1 (and ::1, which an IPv4 socket skips).
    let b = node(&[], Some(KEY), Some(format!("localhost:{port}")));
    let _pa = a.join_by_name("x");
    let _pb = b.join_by_name("x");
    eventually("both count 2", || {
        a.count_by_name("x") == 2 && b.count_by_name("x") == 2
    });
    assert_eq!(found(&b, &a), Some(Found::Dns));
    let st = b.cluster_stats().unwrap();
    assert!(st.dns_resolutions >= 1 && st.members_dns == 1, "{st:?}");

    let c = node(&[], Some(KEY), Some("no-such-host.invalid:7380".into()));
    eventually("a failure is counted", || {
        c.cluster_stats().unwrap().dns_failures >= 1
    });
    assert!(c.dns_error().is_some());
    assert!(
        !c.is_stopped(),
        "a failed resolution never stops the engine"
    );
}

#[test]
fn bad_discovery_options_are_clear_errors() {
    let e = Engine::builder()
        .unicast("127.0.0.1:0".parse().unwrap(), [])
        .peers_dns("no-port")
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("peers_dns") && e.contains("port"), "{e}");
    let e = Engine::builder()
        .multicast(headcount::DEFAULT_GROUP)
        .peers_dns("h:1")
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("unicast"), "{e}");
    let e = Engine::builder()
        .unicast(
            "127.0.0.1:0".parse().unwrap(),
            ["[::1]:7380".parse().unwrap()],
        )
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv6"), "{e}");
}

#[test]
fn ipv6_unicast_on_the_loopback() {
    let bind: SocketAddr = "[::1]:0".parse().unwrap();
    let Ok(a) = Engine::builder()
        .tick(Duration::from_millis(20))
        .max_topics(1 << 12)
        .unicast(bind, [])
        .cluster_key(KEY)
        .start()
    else {
        println!("skipped: cannot bind [::1] here (no IPv6 loopback)");
        return;
    };
    let b = Engine::builder()
        .tick(Duration::from_millis(20))
        .max_topics(1 << 12)
        .unicast(bind, [a.local_addr().unwrap()])
        .cluster_key(KEY)
        .start()
        .unwrap();
    let _pa = a.join_by_name("v6");
    let _pb = b.join_by_name("v6");
    eventually("both count 2 over ::1", || {
        a.count_by_name("v6") == 2 && b.count_by_name("v6") == 2
    });
    assert!(a.local_addr().unwrap().is_ipv6());
}
