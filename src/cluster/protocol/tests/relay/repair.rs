//! Repair while relaying. Nacks and repairs go directly between one asker and one sender, so no
//! other receiver's nack or repair stands in for a lost one: each is sent so that one loss costs
//! no round, and a repair goes down its asker's branch, which missed the datagram with it.

use super::*;

/// Node `i`'s nack of `gap` as a relaying node sends it, directly to node `j` (an index too),
/// stamped `now` with the number of its last datagram that left.
fn nack_to(net: &Net, i: usize, j: usize, now: Instant, gap: wire::Gap) -> Vec<u8> {
    let f = &net.nodes[i];
    let st = f.stamp(now, f.sent_seq());
    let mut nack = f
        .enc
        .nacks(&f.seal, wire::FLAG_PLAIN, &st, &[gap])
        .remove(0);
    f.mark_relayed(&mut nack, Dest::To(addr(j as u16 + 1)), 2);
    nack
}

/// Node `i`'s nack of node 1's datagram `seq`, to node 1 directly, stamped `now`.
fn direct_nack(net: &Net, i: usize, now: Instant, seq: u64) -> Vec<u8> {
    nack_to(net, i, 0, now, wire::Gap::new(1, seq, seq))
}

/// A formed 7-node cluster (fan-out 2) whose node 1 counted `topics` topics once and ticked,
/// 300 ms in: the network and that moment (nothing delivered).
fn burst(topics: u64) -> (Net, Instant) {
    let t0 = Instant::now();
    let mut net = formed(7, 2, t0);
    for h in 0..topics {
        net.nodes[0].set_local(h, 1, None);
    }
    let now = t0 + Duration::from_millis(300);
    net.nodes[0].handle_tick(now);
    (net, now)
}

/// Delivers `nack` to node 1 from node `i + 1`'s address at `at`; returns the repairs node 1
/// sends in the next 10 ms.
fn repairs_for(net: &mut Net, i: usize, at: Instant, nack: &[u8]) -> Vec<Transmit> {
    let a = &mut net.nodes[0];
    assert_eq!(
        a.handle_datagram(at, addr(i as u16 + 1), nack),
        Outcome::Applied
    );
    drain_paced(a, at, at + Duration::from_millis(10))
        .into_iter()
        .filter(|t| kind(&net.nodes[0], &t.bytes) == Kind::Repair)
        .collect()
}

/// Node `i + 1` asks node 1 again for `seq` an interval after `now` (the copy it was sent is
/// lost): the repair goes to it directly, twice.
fn asked_again_goes_twice(net: &mut Net, i: usize, now: Instant, seq: u64) {
    let later = now + net.nodes[i].config().resync_interval;
    let again = direct_nack(net, i, later, seq);
    let direct = repairs_for(net, i, later, &again);
    assert_eq!(direct.len(), 2, "{direct:?}");
    let to = Dest::To(addr(i as u16 + 1));
    assert!(direct.iter().all(|t| t.dest == to), "{direct:?}");
}

/// Runs node `i`'s timers from `now` until it nacks (for at most four resync intervals);
/// returns when, and its nacks.
fn first_nacks(net: &mut Net, i: usize, now: Instant) -> (Instant, Vec<Transmit>) {
    let f = &mut net.nodes[i];
    let every = f.config().resync_interval;
    let mut t = now;
    let mut nacks = Vec::new();
    while nacks.is_empty()
        && let Some(w) = f.poll_timeout().filter(|&w| w < now + 4 * every)
    {
        t = w.max(t);
        f.handle_timeout(t);
        let out = drain(f);
        nacks.extend(out.into_iter().filter(|x| kind(f, &x.bytes) == Kind::Nack));
    }
    (t, nacks)
}

#[test]
fn a_repair_asked_for_again_goes_twice() {
    let (mut net, now, _) = one_change();
    let seq = net.nodes[0].sent_seq();
    let nack = direct_nack(&net, 5, now, seq);
    let first = repairs_for(&mut net, 5, now, &nack);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dest, Dest::To(addr(6)));
    // The nack's second copy, just after the first: the repair is on its way.
    let soon = now + Duration::from_millis(1);
    assert!(repairs_for(&mut net, 5, soon, &nack).is_empty());
    // An interval later node 6 asks again: the repair was lost. It goes twice.
    asked_again_goes_twice(&mut net, 5, now, seq);
}

#[test]
fn a_repair_goes_down_its_askers_branch() {
    // Node 1's tree (7 nodes, fan-out 2): nodes 2 and 3 below it, 4 and 5 below node 2. Node 2
    // missed node 1's delta, and so did 4 and 5, which hear node 1 through node 2.
    let (mut net, now, _) = one_change();
    let seq = net.nodes[0].sent_seq();
    let nack = direct_nack(&net, 1, now, seq);
    let to2 = repairs_for(&mut net, 1, now, &nack);
    assert_eq!(to2.len(), 1);
    assert_eq!(to2[0].dest, Dest::To(addr(2)));
    let h = net.nodes[0].seal.open(&to2[0].bytes).expect("ours").header;
    assert_eq!(wire::relay_fanout(h.flags.get()), 2, "marked for relaying");
    assert_ne!(h.flags.get() & FLAG_DIRECT, 0, "and sent directly");
    // Node 4's nack, just after: the repair to node 2 brings it.
    let soon = now + Duration::from_millis(1);
    let nack4 = direct_nack(&net, 3, soon, seq);
    assert!(repairs_for(&mut net, 3, soon, &nack4).is_empty());
    // Node 2 forwards it to 4 and 5, whose copies it repairs.
    let b = &mut net.nodes[1];
    assert_eq!(
        b.handle_datagram(soon, addr(1), &to2[0].bytes),
        Outcome::Applied
    );
    // (What else it sends — it asks node 1 for topic 9's name — is not the repair's.)
    let fwd: Vec<Transmit> = drain(b)
        .into_iter()
        .filter(|t| kind(&net.nodes[1], &t.bytes) == Kind::Repair)
        .collect();
    let mut dests: Vec<Dest> = fwd.iter().map(|t| t.dest).collect();
    dests.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(dests, vec![Dest::To(addr(4)), Dest::To(addr(5))]);
    for t in &fwd {
        let Dest::To(a) = t.dest else { unreachable!() };
        let c = &mut net.nodes[usize::from(a.port()) - 1];
        assert_eq!(c.remote(9), 0);
        assert_eq!(c.handle_datagram(soon, addr(2), &t.bytes), Outcome::Applied);
        assert_eq!(c.remote(9), 1);
    }
    // Had node 4's copy been lost, it asks again an interval later: repaired directly, twice.
    asked_again_goes_twice(&mut net, 3, now, seq);
}

#[test]
fn a_direct_answer_says_which_relayed_datagrams_to_expect() {
    // Node 6 misses node 1's delta and its direct heartbeat, and hears only a nack node 1 sent it
    // directly, carrying node 1's last number. An interval later node 6 counts the datagrams up
    // to that number missed and nacks them to node 1 directly, twice (no other receiver's nack
    // stands in for a lost one). Before, it waited for node 1's next tick.
    let (mut net, now, _) = one_change();
    let seq = net.nodes[0].sent_seq();
    let nack = nack_to(&net, 0, 5, now, wire::Gap::new(5, 1, 1));
    let f = &mut net.nodes[5];
    assert_eq!(f.handle_datagram(now, addr(1), &nack), Outcome::Applied);
    f.handle_timeout(now);
    assert!(drain(f).is_empty(), "the relayed datagrams may still come");
    let every = f.config().resync_interval;
    let (t, nacks) = first_nacks(&mut net, 5, now);
    assert!(t >= now + every, "nacked at {:?}", t - now);
    assert_eq!(nacks.len(), 2, "{nacks:?}");
    assert!(nacks.iter().all(|x| x.dest == Dest::To(addr(1))));
    assert_eq!(nacks[0].bytes, nacks[1].bytes);
    let d = net.nodes[5].seal.open(&nacks[0].bytes).expect("ours");
    let Body::Gaps(g) = d.body else {
        panic!("not gaps")
    };
    assert!(
        g.iter()
            .any(|g| g.node.get() == 1 && g.lo.get() <= seq && seq <= g.hi.get()),
        "{:?}",
        g.iter()
            .map(|g| (g.node.get(), g.lo.get(), g.hi.get()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn gaps_of_a_peer_gone_quiet_are_nacked_without_its_declaration() {
    // Node 1's burst reaches node 6 (through node 3) with its first datagram and its last, the
    // one that declares, missing; its direct heartbeat is lost too. Node 6 knows the first is
    // missed but has no declaration to find its copy wrong by: once node 1 has been quiet for
    // an interval, it nacks it anyway. (Before, it waited for node 1's next tick.)
    let (mut net, now) = burst(300);
    let burst: Vec<Transmit> = drain_paced(&mut net.nodes[0], now, now + Duration::from_millis(90))
        .into_iter()
        .filter(|t| t.dest == Dest::To(addr(3)))
        .collect();
    let a = &net.nodes[0];
    let seq = |t: &Transmit| a.seal.open(&t.bytes).expect("ours").header.seq.get();
    assert!(burst.len() >= 3, "{} datagrams", burst.len());
    let first = seq(&burst[0]);
    let f = &mut net.nodes[5];
    for t in &burst[1..burst.len() - 1] {
        assert_eq!(f.handle_datagram(now, addr(3), &t.bytes), Outcome::Applied);
    }
    let every = f.config().resync_interval;
    let (at, nacks) = first_nacks(&mut net, 5, now);
    assert!(at >= now + every, "nacked at {:?}", at - now);
    assert!(!nacks.is_empty(), "no nack");
    let d = net.nodes[5].seal.open(&nacks[0].bytes).expect("ours");
    let Body::Gaps(g) = d.body else {
        panic!("not gaps")
    };
    assert!(
        g.iter()
            .any(|g| g.node.get() == 1 && g.lo.get() <= first && first <= g.hi.get())
    );
}

#[test]
fn a_paced_relaying_tick_stamps_its_answers_with_the_number_that_left() {
    // A relaying tick big enough to be paced: its direct heartbeat (without a number of its
    // own) is paced with its numbered datagrams. What this node sends meanwhile (a nack, an
    // answer) carries the number of the last that left; counting the heartbeat made it one
    // less, and a peer that had heard that datagram refused the nack as stale.
    let (mut net, now) = burst(4000);
    let a = &mut net.nodes[0];
    assert!(a.poll_timeout().is_some(), "the tick is paced");
    let left = drain(a);
    let last = left
        .iter()
        .filter(|t| t.dest == Dest::To(addr(2)))
        .map(|t| a.seal.open(&t.bytes).expect("ours").header)
        .filter(|h| h.flags.get() & FLAG_REPLY == 0)
        .map(|h| h.seq.get())
        .max()
        .expect("some left at once");
    assert_eq!(a.sent_seq(), last);
    // Node 2 heard them; node 1's nack now is fresh to it.
    for t in left.iter().filter(|t| t.dest == Dest::To(addr(2))) {
        net.nodes[1].handle_datagram(now, addr(1), &t.bytes);
    }
    let nack = nack_to(&net, 0, 1, now, wire::Gap::new(2, 1, 1));
    assert_eq!(
        net.nodes[1].handle_datagram(now, addr(1), &nack),
        Outcome::Applied
    );
}
