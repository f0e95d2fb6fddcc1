//! Deterministic simulation of the cluster protocol: many seeded runs of the sans-IO core over a
//! simulated network with loss, duplication, reordering, delay, crashes, restarts and partitions.

use std::time::Duration;

use headcount::cluster::sim::{Faults, Sim, topic_hash};

const TICK: Duration = Duration::from_millis(100);

fn hash(i: u64) -> u64 {
    topic_hash(i)
}

/// A burst of `joins` joins spread over nodes and `topics` topics (long-tailed).
fn burst(sim: &mut Sim, seed: u64, joins: u64, topics: u64) {
    sim.burst(seed, joins, topics);
}

fn settle(sim: &mut Sim) {
    sim.run_for(TICK * 3);
    assert!(
        sim.ticks_to_exact(100).is_some(),
        "did not converge: {:?}",
        &sim.mismatches()[..3.min(sim.mismatches().len())]
    );
}

#[test]
fn burst_without_loss_is_exact_within_one_tick_of_its_first_send() {
    for seed in 0..10 {
        let mut sim = Sim::new(16, seed, TICK, |_| {});
        sim.faults.delay = Duration::from_millis(1);
        settle(&mut sim);
        burst(&mut sim, seed, 100_000, 2_000);
        // Every node sends its changes on its next tick (within one tick), and they arrive 1 ms later.
        let t = sim.ticks_to_exact(3).expect("exact");
        assert!(t <= 2, "seed {seed}: took {t} ticks");
        sim.run_for(TICK * 2);
        assert!(sim.exact());
        for i in 0..sim.len() {
            assert!(
                sim.node(i).unwrap().converged(),
                "seed {seed}: node {i} not converged"
            );
        }
    }
}

#[test]
fn loss_duplication_and_reordering_converge_within_bound() {
    for (seed, loss) in (0..12).zip([0.1, 0.3].into_iter().cycle()) {
        let n = [3, 8, 16, 32][seed as usize % 4];
        let mut sim = Sim::new(n, seed, TICK, |_| {});
        sim.faults = Faults {
            loss,
            dup: 0.05,
            reorder: 0.2,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(150),
        };
        for round in 0..5 {
            burst(&mut sim, seed * 100 + round, 20_000, 500);
            sim.run_for(TICK * 2);
            // Churn: some leave.
            burst(&mut sim, seed * 100 + round + 50, 5_000, 500);
            sim.run_for(TICK);
        }
        // Faults stop: exact within the bound.
        sim.faults = Faults {
            delay: Duration::from_millis(2),
            ..Faults::default()
        };
        let bound = 10;
        let t = sim.ticks_to_exact(bound);
        assert!(
            t.is_some(),
            "seed {seed} loss {loss}: not exact within {bound} ticks after faults stopped: {:?}",
            &sim.mismatches()[..3.min(sim.mismatches().len())]
        );
    }
}

#[test]
fn ten_percent_loss_converges_in_three_ticks_with_resync() {
    let mut worst = 0;
    for seed in 0..20 {
        let mut sim = Sim::new(16, seed, TICK, |_| {});
        sim.faults = Faults {
            loss: 0.1,
            delay: Duration::from_millis(1),
            ..Faults::default()
        };
        settle(&mut sim);
        burst(&mut sim, seed, 100_000, 2_000);
        let t = sim.ticks_to_exact(30).expect("exact");
        worst = worst.max(t);
    }
    eprintln!("10% loss, 16 nodes, 20 seeds: worst {worst} ticks to exact");
    assert!(worst <= 3, "worst case {worst} ticks");
}

#[test]
fn silent_crash_leaves_every_view_within_dead_after_plus_a_tick() {
    for seed in 0..8 {
        let mut sim = Sim::new(5, seed, TICK, |c| c.dead_after = Duration::from_secs(1));
        sim.faults.delay = Duration::from_millis(1);
        burst(&mut sim, seed, 10_000, 100);
        settle(&mut sim);
        sim.crash(2);
        // Before dead-after: the others still count it (they cannot know).
        sim.run_for(Duration::from_millis(500));
        assert!(!sim.exact());
        sim.run_for(Duration::from_millis(500) + TICK + Duration::from_millis(2));
        assert!(sim.exact(), "seed {seed}: {:?}", &sim.mismatches()[..1]);
    }
}

#[test]
fn goodbye_removes_counts_within_one_tick() {
    for seed in 0..8 {
        let mut sim = Sim::new(5, seed, TICK, |_| {});
        sim.faults.delay = Duration::from_millis(1);
        burst(&mut sim, seed, 10_000, 100);
        settle(&mut sim);
        sim.stop(3);
        sim.run_for(Duration::from_millis(2));
        assert!(sim.exact(), "seed {seed}: goodbye not applied at once");
    }
}

#[test]
fn restart_with_new_incarnation_is_never_double_counted() {
    for seed in 0..8 {
        let mut sim = Sim::new(4, seed, TICK, |_| {});
        sim.faults = Faults {
            loss: 0.1,
            reorder: 0.3,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(300),
            ..Faults::default()
        };
        let h = hash(1);
        sim.set(0, h, 1000);
        sim.run_for(TICK * 20);
        sim.restart(0);
        sim.set(0, h, 7);
        for _ in 0..60 {
            sim.run_for(TICK / 4);
            for i in 1..4 {
                let v = sim.view(i, h);
                assert!(v <= 1000, "seed {seed}: node {i} double counted: {v}");
            }
        }
        sim.faults = Faults::default();
        assert!(sim.ticks_to_exact(10).is_some());
        assert_eq!(sim.view(1, h), 7);
    }
}

#[test]
fn partition_and_heal() {
    for seed in 0..6 {
        let n = 6;
        let mut sim = Sim::new(n, seed, TICK, |c| c.dead_after = Duration::from_secs(1));
        sim.faults.delay = Duration::from_millis(1);
        burst(&mut sim, seed, 10_000, 200);
        settle(&mut sim);
        sim.partition(&[0, 0, 0, 1, 1, 1]);
        sim.run_for(Duration::from_secs(2));
        // Each side now counts only itself.
        let h = hash(0);
        let side_a: u64 = (0..3).map(|i| sim.view(i, h)).max().unwrap_or(0);
        assert!(side_a <= sim.truth(h));
        // Changes on both sides while split.
        burst(&mut sim, seed + 99, 3_000, 200);
        sim.run_for(Duration::from_secs(1));
        sim.heal();
        let t = sim.ticks_to_exact(20);
        assert!(t.is_some(), "seed {seed}: not exact after heal");
    }
}

#[test]
fn sixty_four_nodes_with_loss() {
    for seed in 0..3 {
        let mut sim = Sim::new(64, seed, TICK, |_| {});
        sim.faults = Faults {
            loss: 0.2,
            dup: 0.02,
            reorder: 0.1,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(50),
        };
        burst(&mut sim, seed, 100_000, 1_000);
        sim.run_for(TICK * 5);
        sim.faults = Faults {
            delay: Duration::from_millis(1),
            ..Faults::default()
        };
        assert!(sim.ticks_to_exact(20).is_some(), "seed {seed}");
    }
}

/// `exact` finds a wrong copy whose error the totals hide (one count too high, another as much
/// too low), on any node, and agrees with `mismatches`.
#[test]
fn exact_finds_wrong_counts_that_keep_the_totals() {
    for seed in 0..4 {
        let mut sim = Sim::new(6, seed, TICK, |_| {});
        sim.faults.delay = Duration::from_millis(1);
        settle(&mut sim);
        for t in 0..50 {
            sim.set(0, hash(t), 3);
            sim.set(1 + (t as usize % 5), hash(t), 1);
        }
        settle(&mut sim);
        assert!(sim.exact() && sim.mismatches().is_empty());
        let i = 1 + seed as usize;
        sim.corrupt_copy_for_test(i, 0, hash(7 + seed), 4);
        sim.corrupt_copy_for_test(i, 0, hash(20 + seed), 2);
        assert!(!sim.exact(), "seed {seed}");
        let wrong: Vec<_> = sim.mismatches().iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(wrong, {
            let mut w = vec![(i, hash(7 + seed)), (i, hash(20 + seed))];
            w.sort_by_key(|&(_, h)| h);
            w
        });
        assert!(sim.ticks_to_exact(20).is_some(), "seed {seed}: not mended");
    }
}

/// Windows run on the second thread (`on_helper_thread`), over the whole test binary's runs.
static HELPED_WINDOWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn helped(on: bool) {
    if on {
        HELPED_WINDOWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A window's nodes handled on two threads (a spare core lent to the simulation) make the run
/// one thread makes: the same bytes from every node, deliveries, link drops and views, through
/// loss, duplication, reordering, link limits, and a unicast fan-out.
#[test]
fn a_run_on_two_threads_is_the_run_on_one() {
    use headcount::cluster::sim::Capacity;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const NODES: usize = 48;
    for seed in 0..3 {
        let run = |spare: usize| {
            let mut s = Sim::new(NODES, seed, TICK, |_| {});
            s.faults = Faults {
                loss: 0.05,
                dup: 0.02,
                reorder: 0.05,
                delay: Duration::from_millis(1),
                jitter: Duration::from_millis(2),
            };
            s.capacity = Capacity {
                egress_bytes_per_sec: 50_000_000,
                ingress_bytes_per_sec: 50_000_000,
                send_buffer: 65_536,
                recv_buffer: 65_536,
                unicast_fanout: seed == 2,
            };
            let cores = Arc::new(AtomicUsize::new(spare));
            s.spare_cores = Some(cores.clone());
            s.on_helper_thread = Some(helped);
            s.run_for(TICK * 3);
            s.burst(seed, 30_000, 2_000);
            s.run_for(TICK * 6);
            s.stop(5);
            s.run_for(TICK * 2);
            let views: Vec<u64> = (0..NODES)
                .flat_map(|i| (0..2_000).map(move |t| (i, hash(t))))
                .map(|(i, h)| s.view(i, h))
                .collect();
            let links: Vec<_> = (0..NODES).map(|i| s.link(i)).collect();
            assert_eq!(
                cores.load(Ordering::Relaxed),
                spare,
                "the core is given back"
            );
            (s.bytes_sent.clone(), s.delivered, links, views)
        };
        let before = HELPED_WINDOWS.load(Ordering::Relaxed);
        let one = run(0);
        let two = run(1);
        assert!(
            HELPED_WINDOWS.load(Ordering::Relaxed) > before,
            "seed {seed}: no window ran on two threads"
        );
        assert!(one.3.iter().any(|&v| v > 0) && one.1 > 0);
        assert!(one == two, "seed {seed}: the runs differ");
    }
}
