//! Relaying: a few nodes with `relay_fanout` 2 wired by hand (unicast: a group datagram is one
//! copy per other node).

use super::*;
use crate::cluster::wire::FLAG_DIRECT;

/// `n` nodes (ids 1..=n at `addr(1..=n)`) relaying with fan-out `k`.
struct Net {
    nodes: Vec<Protocol>,
    /// Datagrams each node handed to its socket (unicast copies counted one by one).
    sent: Vec<usize>,
}

impl Net {
    fn new(n: usize, k: usize) -> Net {
        let nodes = (1..=n as u64)
            .map(|i| {
                let mut c = Config::new(i, 1, Duration::from_millis(100));
                c.relay_fanout = k;
                Protocol::new(c, Seal::new("p", b"k"))
            })
            .collect();
        Net {
            nodes,
            sent: vec![0; n],
        }
    }

    /// Delivers everything queued, and what that queues, until nothing is left; `keep` says
    /// which (sender index, receiver index, bytes) deliveries happen. Returns the outcomes of
    /// each receiver.
    fn pump(&mut self, now: Instant, keep: impl Fn(usize, usize, &[u8]) -> bool) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                for t in drain(&mut self.nodes[i]) {
                    any = true;
                    let to: Vec<usize> = match t.dest {
                        Dest::Group => (0..self.nodes.len()).filter(|&j| j != i).collect(),
                        Dest::To(a) => vec![usize::from(a.port()) - 1],
                    };
                    self.sent[i] += to.len();
                    for j in to {
                        if keep(i, j, &t.bytes) {
                            self.nodes[j].handle_datagram(now, addr(i as u16 + 1), &t.bytes);
                        }
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// One tick of every node, delivered whole.
    fn tick(&mut self, now: Instant) {
        for p in &mut self.nodes {
            p.handle_tick(now);
        }
        self.pump(now, |_, _, _| true);
    }
}

/// A formed cluster of `n` relaying with fan-out `k`: every node heard every other directly
/// (heartbeats), so it knows their addresses.
fn formed(n: usize, k: usize, t0: Instant) -> Net {
    let mut net = Net::new(n, k);
    for i in 0..3 {
        net.tick(t0 + Duration::from_millis(100 * i));
    }
    for p in &net.nodes {
        assert_eq!(p.nodes(t0).len(), n - 1, "every node is a peer");
    }
    net
}

fn kind(p: &Protocol, bytes: &[u8]) -> Kind {
    p.seal.open(bytes).expect("ours").kind
}

#[test]
fn a_relayed_delta_reaches_every_node_once_from_k_copies() {
    let t0 = Instant::now();
    let (n, k) = (7, 2);
    let mut net = formed(n, k, t0);
    for h in 0..300u64 {
        net.nodes[0].set_local(h, 3, None);
    }
    let now = t0 + Duration::from_millis(300);
    net.nodes[0].handle_tick(now);
    let out = drain(&mut net.nodes[0]);
    let deltas: Vec<&Transmit> = out
        .iter()
        .filter(|t| kind(&net.nodes[0], &t.bytes) == Kind::Delta)
        .collect();
    assert!(!deltas.is_empty());
    // Each delta leaves as k unicast copies (to node 0's children: nodes 2 and 3), marked.
    let mut per: Vec<Dest> = Vec::new();
    for t in &deltas {
        if !per.contains(&t.dest) {
            per.push(t.dest);
        }
    }
    assert_eq!(per, vec![Dest::To(addr(2)), Dest::To(addr(3))]);
    assert_eq!(per.len(), k);
    let copies = deltas.len() as u64;
    for t in &deltas {
        let d = net.nodes[0].seal.open(&t.bytes).expect("ours");
        assert_eq!(wire::relay_fanout(d.header.flags.get()), k);
    }
    // Delivered (as node 0's socket would), then forwarded by the others: every node counts
    // every topic, and none refused a copy (each came once).
    for t in out {
        if let Dest::To(a) = t.dest {
            let j = usize::from(a.port()) - 1;
            net.nodes[j].handle_datagram(now, addr(1), &t.bytes);
        }
    }
    net.pump(now, |_, _, _| true);
    for (j, p) in net.nodes.iter().enumerate().skip(1) {
        assert_eq!(p.remote_total(), 900, "node {j}");
        assert_eq!(p.stats().rejected_total(), 0, "node {j}");
    }
    // Forwarded: the four nodes below nodes 2 and 3 got each delta from them.
    let relayed: u64 = net.nodes.iter().map(|p| p.stats().relayed).sum();
    assert_eq!(relayed, (n as u64 - 1 - k as u64) * copies / k as u64);
}

#[test]
fn heartbeats_go_to_every_peer_directly() {
    let t0 = Instant::now();
    let mut net = formed(7, 2, t0);
    net.nodes[0].handle_tick(t0 + Duration::from_millis(300));
    let out = drain(&mut net.nodes[0]);
    assert!(!out.is_empty());
    for t in &out {
        assert_eq!(kind(&net.nodes[0], &t.bytes), Kind::Heartbeat);
        assert_eq!(t.dest, Dest::Group);
        let d = net.nodes[0].seal.open(&t.bytes).expect("ours");
        assert_eq!(wire::relay_fanout(d.header.flags.get()), 0);
    }
}

#[test]
fn a_small_cluster_does_not_relay() {
    let t0 = Instant::now();
    // Fan-out 4, four peers: every node sends to every peer itself.
    let mut net = formed(5, 4, t0);
    net.nodes[0].set_local(1, 1, None);
    net.nodes[0].handle_tick(t0 + Duration::from_millis(300));
    for t in drain(&mut net.nodes[0]) {
        assert_eq!(t.dest, Dest::Group);
        let d = net.nodes[0].seal.open(&t.bytes).expect("ours");
        assert_eq!(wire::relay_fanout(d.header.flags.get()), 0);
    }
}

#[test]
fn a_relayed_datagram_keeps_its_senders_address_and_is_forwarded_once() {
    let t0 = Instant::now();
    let mut net = formed(7, 2, t0);
    net.nodes[0].set_local(9, 1, None);
    let now = t0 + Duration::from_millis(300);
    net.nodes[0].handle_tick(now);
    let delta = drain(&mut net.nodes[0])
        .into_iter()
        .find(|t| t.dest == Dest::To(addr(2)) && kind(&net.nodes[0], &t.bytes) == Kind::Delta)
        .expect("a delta to node 2");
    // Node 2 forwards it to its children in node 1's tree (nodes 4 and 5).
    assert_eq!(
        net.nodes[1].handle_datagram(now, addr(1), &delta.bytes),
        Outcome::Applied
    );
    let fwd = drain(&mut net.nodes[1]);
    let to: Vec<Dest> = fwd.iter().map(|t| t.dest).collect();
    assert_eq!(to, vec![Dest::To(addr(4)), Dest::To(addr(5))]);
    assert!(fwd.iter().all(|t| t.bytes == delta.bytes), "the same bytes");
    // A second copy is stale, and not forwarded again.
    assert_eq!(
        net.nodes[1].handle_datagram(now, addr(1), &delta.bytes),
        Outcome::Rejected(Reject::Stale)
    );
    assert!(drain(&mut net.nodes[1]).is_empty());
    // Node 4 hears it from node 2's address: node 1 stays where it was heard directly.
    net.nodes[3].handle_datagram(now, addr(2), &fwd[0].bytes);
    let info = net.nodes[3].nodes(now);
    let one = info.iter().find(|n| n.node == 1).expect("node 1");
    assert_eq!(one.addr, addr(1));
    assert_eq!(net.nodes[3].remote(9), 1);
}

#[test]
fn a_direct_answer_does_not_make_the_relayed_datagrams_before_it_missed() {
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(300);
    for direct in [true, false] {
        let mut net = formed(7, 2, t0);
        net.nodes[0].set_local(9, 1, None);
        net.nodes[0].handle_tick(now);
        let out = drain(&mut net.nodes[0]);
        let delta = out
            .iter()
            .find(|t| kind(&net.nodes[0], &t.bytes) == Kind::Delta)
            .expect("a delta");
        // A nack node 1 sends directly, carrying the number of the delta still on its way
        // through a relay.
        let a = &net.nodes[0];
        let seq = a.sent_seq();
        let mut nack = a
            .enc
            .nacks(&a.seal, &a.stamp(now, seq), &[wire::Gap::new(5, 1, 1)]);
        let mut nack = nack.remove(0);
        if direct {
            a.mark_relayed(&mut nack, Dest::To(addr(6)), 2);
            let d = a.seal.open(&nack).expect("sealed again");
            assert_ne!(d.header.flags.get() & FLAG_DIRECT, 0);
        }
        let c = &mut net.nodes[5];
        assert_eq!(c.handle_datagram(now, addr(1), &nack), Outcome::Applied);
        let late = c.handle_datagram(now, addr(2), &delta.bytes);
        if direct {
            assert_eq!(late, Outcome::Applied);
            assert_eq!(c.remote(9), 1);
        } else {
            // (Without the flag the nack's number says the delta was missed: refused when it
            // comes, then repaired.)
            assert_eq!(late, Outcome::Rejected(Reject::Stale));
        }
    }
}

#[test]
fn a_child_not_heard_directly_is_skipped_for_its_children() {
    let t0 = Instant::now();
    let mut net = formed(7, 2, t0);
    // Node 1 forgets node 2's address (as if it had heard it only through relays).
    net.nodes[0].peers.get_mut(&2).expect("node 2").addr_seen = 0;
    let to = net.nodes[0].relay_children(1, 2);
    // Node 2's children (4 and 5) take its place, after node 3.
    assert_eq!(to, vec![addr(4), addr(5), addr(3)]);
}
