//! `headcount-perf converge`: a simulated cluster (seeded network simulator,
//! `headcount::cluster::sim::Sim`) after a burst of joins: ticks and milliseconds until every
//! node is exact, and bytes per node per tick. The tick and millisecond figures are simulated
//! time, not wall-clock time, and do not depend on the machine.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use clap::Args as ClapArgs;
use headcount::cluster::sim::{Capacity, Faults, Sim};
use serde_json::{Value, json};

use crate::report::{median, print, round};
use headcount_perf::counting;

mod turns;

// `converge`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Probability that a datagram is lost, per receiver (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Seeds to run (the worst and the median are reported).
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// Topics in the burst (long-tailed).
    #[arg(long, default_value_t = 2000)]
    topics: u64,
    /// Joins in the burst, spread over the nodes.
    #[arg(long, default_value_t = 100_000)]
    joins: u64,
    /// Each node's uplink, bytes a second (0: unlimited; 125000000 is 1 Gbit/s).
    #[arg(long, default_value_t = 0)]
    egress: u64,
    /// Each node's downlink, bytes a second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    ingress: u64,
    /// Each node's socket send buffer, bytes (0: unlimited; Linux's default is 212992).
    #[arg(long, default_value_t = 0)]
    sndbuf: u64,
    /// Each node's socket receive buffer, bytes (0: unlimited; Linux's default is 212992).
    #[arg(long, default_value_t = 0)]
    rcvbuf: u64,
    /// No multicast: every group datagram leaves as a unicast copy per peer.
    #[arg(long)]
    unicast: bool,
    /// With --unicast: relay group datagrams along trees of this fan-out (the protocol's
    /// `relay_fanout`; 0: every node sends to every peer itself).
    #[arg(long, default_value_t = 0)]
    relay_fanout: usize,
    /// The burst's joins land on the first this many nodes only (0: all; 1: one hot node).
    #[arg(long, default_value_t = 0)]
    senders: usize,
    /// Plain repairs only, no parity (the protocol's `parity` off): the side-by-side baseline.
    #[arg(long)]
    no_parity: bool,
    /// Group the nodes in this many zones (0: a flat cluster): each node keeps its zone peers'
    /// tables and one table per other zone (`headcount::cluster::sim::Sim::zoned`).
    #[arg(long, default_value_t = 0)]
    zones: usize,
}

/// Checks the flags, runs [`converge`] and prints its figures.
pub fn run(a: &Args) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    crate::proc::keep_freed_memory();
    if !(0.0..1.0).contains(&a.loss) || a.nodes < 2 || a.nodes > 4096 || a.zones > a.nodes {
        eprintln!(
            "headcount-perf converge: --loss must be in [0, 1), --nodes in 2..=4096 and \
             --zones at most --nodes"
        );
        std::process::exit(2);
    }
    let cap = Capacity {
        egress_bytes_per_sec: a.egress,
        ingress_bytes_per_sec: a.ingress,
        send_buffer: a.sndbuf,
        recv_buffer: a.rcvbuf,
        unicast_fanout: a.unicast,
    };
    print(
        a.json,
        &converge(
            a.nodes,
            a.loss,
            a.seeds.max(1),
            a.topics,
            a.joins,
            Setup {
                cap,
                relay_fanout: a.relay_fanout,
                senders: a.senders,
                plain: a.no_parity,
                zones: a.zones,
            },
        ),
    )
}

/// The tick every simulated node runs.
const TICK: Duration = Duration::from_millis(100);
/// One-way delay of the simulated network.
const DELAY: Duration = Duration::from_millis(1);
/// The resolution of the milliseconds-to-exact measurement (simulated).
const STEP: Duration = Duration::from_millis(10);
/// A seed that is not exact after this many ticks counts as this many (and as `not_exact`).
const MAX_TICKS: u32 = 100;
/// Idle ticks over which the steady-state traffic is measured after convergence: one refresh
/// cycle (the whole table once), the period of the idle traffic. (It was 50: five cycles of
/// every receiver applying every peer's whole table, most of a 256-node run's wall-clock, for
/// the same average.)
const IDLE_TICKS: u32 = headcount::cluster::protocol::defaults::REFRESH_CYCLE;

/// How the simulated cluster is connected and where the burst lands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// Every node's links and socket buffers (`Capacity::default()`: unlimited).
    pub cap: Capacity,
    /// Every node's `relay_fanout` (0: none).
    pub relay_fanout: usize,
    /// The burst's joins land on the first this many nodes (0: all of them).
    pub senders: usize,
    /// Every node's `parity` off: plain repairs only.
    pub plain: bool,
    /// Zones (0: a flat cluster).
    pub zones: usize,
}

fn total_bytes(sim: &Sim) -> u64 {
    sim.bytes_sent.iter().sum()
}

/// Every running protocol: a node's, or both of a zoned node's.
fn protocols(sim: &Sim) -> impl Iterator<Item = &headcount::cluster::protocol::Protocol> {
    (0..sim.endpoints()).filter_map(|e| sim.endpoint(e))
}

fn resync_requests(sim: &Sim) -> u64 {
    protocols(sim).map(|p| p.stats().resync_requests).sum()
}

/// One seed's run.
struct Run {
    /// Simulated time from the burst to every node exact (`None`: not within [`MAX_TICKS`]).
    ms: Option<u64>,
    /// Bytes sent from the start (idle settling included) to exactness, and the simulated ticks.
    window_bytes: u64,
    window_ticks: f64,
    /// Bytes sent from the burst to exactness.
    burst_bytes: u64,
    /// Bytes sent over [`IDLE_TICKS`] idle ticks after convergence.
    idle_bytes: u64,
    /// Resync requests sent, cluster-wide, from the burst to exactness.
    resyncs: u64,
    /// The bytes loss forces any repair to send, burst to exactness ([`Sim::repair_floor`]):
    /// `None` without loss, or on a unicast fan-out (where one repair serves one receiver).
    floor: Option<u64>,
    /// The repair symbols an ideal repair in rounds sends for the same losses
    /// ([`Sim::ideal_repair_symbols`]), `None` where `floor` is.
    ideal: Option<u64>,
    /// Bytes sent answering resync requests, cluster-wide, from the burst to exactness.
    repair_bytes: u64,
    /// Plain repair and parity datagrams sent, datagrams recovered from parity, and nack bytes,
    /// cluster-wide, from the burst to exactness.
    repairs: [u64; 4],
    /// Datagrams full send and receive buffers dropped, cluster-wide, over the whole run.
    dropped: (u64, u64),
    /// The most bytes one node handed its socket in one tick.
    peak_per_tick: u64,
    /// Heap bytes the burst added (all protocol state, and the simulator's own), and the
    /// (peer, topic) entries every node holds of its peers' tables then.
    live_bytes: i64,
    peer_entries: u64,
    table_bytes: u64,
}

fn repair_bytes(sim: &Sim) -> u64 {
    protocols(sim).map(|p| p.stats().repair_bytes).sum()
}

/// Plain repairs sent, parity sent, datagrams recovered, nack bytes: cluster-wide.
fn repair_counts(sim: &Sim) -> [u64; 4] {
    protocols(sim).map(|p| p.stats()).fold([0; 4], |a, s| {
        [
            a[0] + s.repairs_sent,
            a[1] + s.parity_sent,
            a[2] + s.recovered,
            a[3] + s.nack_bytes,
        ]
    })
}

/// One seed's run: a burst of `joins` over `topics`; `idle`: also the idle ticks after
/// exactness and the memory they leave (a baseline needs only the burst's bytes);
/// `spare_cores`: the cores no run holds, which its busy windows may borrow.
fn run_seed(
    nodes: usize,
    loss: f64,
    seed: u64,
    (topics, joins): (u64, u64),
    setup: Setup,
    idle: bool,
    spare_cores: &Arc<AtomicUsize>,
) -> Run {
    let relay = setup.relay_fanout;
    let plain = setup.plain;
    let cfg = move |c: &mut headcount::cluster::protocol::Config| {
        c.relay_fanout = relay;
        c.parity = !plain;
    };
    let mut sim = if setup.zones > 0 {
        Sim::zoned(nodes, setup.zones, seed, TICK, cfg)
    } else {
        Sim::new(nodes, seed, TICK, cfg)
    };
    sim.faults = Faults {
        loss,
        delay: DELAY,
        ..Faults::default()
    };
    sim.capacity = setup.cap;
    sim.spare_cores = Some(spare_cores.clone());
    if idle {
        sim.on_helper_thread = Some(counting::helper_bytes);
    }
    // Settle: every node has heard every other (heartbeats), and the refresh at full rate that
    // new peers start is over, so the burst meets a formed cluster.
    sim.run_for(TICK * (IDLE_TICKS + 3));
    let _ = sim.ticks_to_exact(MAX_TICKS);

    let (b0, r0, t0) = (total_bytes(&sim), resync_requests(&sim), sim.elapsed());
    let p0 = repair_bytes(&sim);
    let c0 = repair_counts(&sim);
    if idle {
        counting::track_bytes(true);
    }
    let senders = if setup.senders == 0 {
        nodes
    } else {
        setup.senders
    };
    if loss > 0.0 && !setup.cap.unicast_fanout {
        sim.count_lost_data();
    }
    sim.burst_on(seed, joins, topics, senders);
    let limit = TICK * MAX_TICKS;
    let mut ms = None;
    loop {
        let dt = sim.elapsed() - t0;
        if sim.exact() {
            ms = Some(dt.as_millis() as u64);
            break;
        }
        if dt >= limit {
            break;
        }
        sim.run_for(STEP);
    }
    let window_bytes = total_bytes(&sim);
    let window_ticks = (sim.elapsed().as_secs_f64() / TICK.as_secs_f64()).max(1.0);
    let burst_bytes = window_bytes - b0;
    let resyncs = resync_requests(&sim) - r0;
    let repair = repair_bytes(&sim) - p0;
    let c1 = repair_counts(&sim);
    let repairs: [u64; 4] = std::array::from_fn(|i| c1[i] - c0[i]);
    let floor = sim.repair_floor();
    let ideal = sim.ideal_repair_symbols(seed);

    let b1 = total_bytes(&sim);
    if idle {
        sim.run_for(TICK * IDLE_TICKS);
    }
    let idle_bytes = total_bytes(&sim) - b1;
    // After the idle ticks nothing is in flight: what the burst left is tables.
    let live_bytes = counting::live_bytes();
    if idle {
        counting::track_bytes(false);
    }
    let now = std::time::Instant::now();
    let peers: Vec<_> = protocols(&sim)
        .flat_map(|p| p.nodes(now))
        .filter(|n| n.alive)
        .collect();
    let peer_entries: u64 = peers.iter().map(|n| n.topics as u64).sum();
    let table_bytes: u64 = peers.iter().map(|n| n.table_bytes as u64).sum();
    let links: Vec<_> = (0..sim.endpoints()).map(|e| sim.endpoint_link(e)).collect();
    Run {
        ms,
        window_bytes,
        window_ticks,
        burst_bytes,
        idle_bytes,
        resyncs,
        floor,
        ideal,
        repair_bytes: repair,
        repairs,
        dropped: (
            links.iter().map(|l| l.dropped_send).sum(),
            links.iter().map(|l| l.dropped_recv).sum(),
        ),
        peak_per_tick: links
            .iter()
            .map(|l| l.peak_bytes_per_tick)
            .max()
            .unwrap_or(0),
        live_bytes,
        peer_entries,
        table_bytes,
    }
}

/// Simulates `seeds` clusters of `nodes` nodes (tick 100 ms, one-way delay 1 ms, `loss` of every
/// delivery lost) that settle, then take a burst of `joins` joins over `topics` long-tailed
/// topics; measures the simulated time until every node's view of every topic is exact (checked
/// every 10 ms of simulated time) and the bytes sent.
///
/// - `ms_to_exact`: from the burst to exact, worst over seeds (`_median` too); a seed not exact
///   within 100 ticks counts as 100 ticks and in `not_exact`.
/// - `ticks_to_exact`: the same in whole ticks, rounded up (what `Sim::ticks_to_exact`, which
///   checks once per tick, reports).
/// - `ticks_after_lossless`: how much later than the same seed's lossless burst the run was
///   exact, in whole ticks rounded up, worst over seeds: the time loss costs. A burst bigger
///   than a node may send in one tick (`max_tick_datagrams`, the links' capacity) takes
///   several ticks to send even without loss; this is the time after that.
/// - `bytes_per_node_per_tick`: every byte sent from the simulation's start (the idle settling
///   ticks, then the burst) until exact, per node and per simulated tick, averaged over seeds.
/// - `burst_bytes_per_node`: the bytes sent from the burst until exact, per node.
/// - `idle_bytes_per_node_per_tick`: over 50 idle ticks after convergence (heartbeats and the
///   rotating refresh of the now-full tables).
/// - `bytes_vs_lossless`: the burst's bytes per node over those of the same seed's burst without
///   loss (same capacity), worst over seeds (`_median` too): what loss costs in bytes.
/// - `floor_vs_lossless`: the least any repair could cost, over the lossless burst, worst
///   over seeds (`_median` too): the lossless burst's bytes plus, for each sender, the most
///   bytes of its deltas and names any one receiver lost in the lossy run (`Sim::repair_floor`;
///   the least a sender repairing over multicast sends, with free feedback, a code as long as
///   the whole burst and no repair lost). It grows with the node count, as the worst of more
///   receivers' losses does. `null` without loss, or on a unicast fan-out.
/// - `bytes_vs_floor`: the burst's bytes over that least, seed by seed, worst over seeds
///   (`_median` too): what the repair costs beyond what loss forces.
/// - `ideal_parity_per_node`: the symbols an ideal repair in rounds would send for the same
///   losses (`Sim::ideal_repair_symbols`: each round, exactly as many as the neediest receiver
///   lacks, with free feedback; symbols lost as the run's loss says), per node, mean over
///   seeds: what `parity_per_node` is measured against. `null` where `floor_vs_lossless` is.
/// - `repair_bytes_per_node`: bytes sent answering resync requests, burst to exact, per node.
/// - `plain_repairs_per_node`, `parity_per_node`, `recovered_per_node`, `nack_bytes_per_node`:
///   repair datagrams and parity datagrams sent, peers' datagrams recovered from parity, and
///   bytes of nacks sent, burst to exact, per node.
/// - `peak_egress_bytes_per_tick`: the most bytes one node handed its socket in one tick window,
///   over the whole run (settling, burst, idle), worst over seeds.
/// - `dropped_send`, `dropped_recv`: datagrams full socket buffers dropped, cluster-wide, mean
///   over seeds (0 without `cap` limits).
/// - `sim_seconds_per_seed`: the wall-clock seconds one seed took to simulate, with its
///   lossless baseline run when `loss` > 0 (beside it or before it: `turns::pair`), worst
///   over seeds: a machine figure, unlike the rest.
/// - `bytes_per_peer_topic`: the heap bytes the burst added, over the (peer, topic) entries all
///   nodes then hold of their peers' tables, mean over seeds. Everything the burst allocated is
///   in it (each node's own table, its per-topic sums and names, the simulator's bookkeeping),
///   so it bounds the peer-table entry's cost from above, closer as nodes grow. `null` where
///   the counting allocator is not the global one.
/// - `peer_table_bytes_per_entry`: the heap bytes the peers' tables themselves take (their
///   buckets' capacity, as `NodeInfo::table_bytes` reports it), over their entries, mean over
///   seeds: the entry's own cost, which is what grows with nodes × topics.
/// - `other_bytes_per_node`: the rest of the heap the burst added, per node: what does not
///   grow with the peers (a node's own table, its per-topic sums and names, the simulator's
///   bookkeeping), mean over seeds. `null` with `bytes_per_peer_topic`.
///   It and `bytes_per_peer_topic` vary by a few hundred bytes a node from run to run when a
///   run's windows borrow a core (the simulator's event queues grow differently; what the
///   protocol holds does not).
/// - `peer_entries_per_node`: the (peer, topic) entries a node holds of its peers' tables after
///   the burst, mean over nodes and seeds: what its memory grows with (a zoned node's peers are
///   its zone peers and the other zones' nodes, of which only the speakers have tables).
/// - `zones`: `setup.zones` (0: a flat cluster). A zoned node's two endpoints each have a link
///   of their own (capacity limits apply to each), and `peak_egress_bytes_per_tick` is then
///   the busiest endpoint's.
///
/// `setup`: the links, relaying, and which nodes take the burst.
pub fn converge(
    nodes: usize,
    loss: f64,
    seeds: u64,
    topics: u64,
    joins: u64,
    setup: Setup,
) -> Value {
    let cap = setup.cap;
    let nodes = nodes.max(1);
    let seeds = seeds.max(1);
    let tick_ms = TICK.as_millis() as u64;
    let mut ms = Vec::new();
    let mut ticks = Vec::new();
    let mut not_exact = 0u64;
    let mut window = Vec::new();
    let mut burst_b = Vec::new();
    let mut idle = Vec::new();
    let mut resyncs = Vec::new();
    let mut vs_lossless = Vec::new();
    let mut floor_vs = Vec::new();
    let mut vs_floor = Vec::new();
    let mut ideal = Vec::new();
    let mut after_lossless = Vec::new();
    let mut repair = Vec::new();
    let mut counts = [0f64; 4];
    let mut peak = 0u64;
    let mut dropped = (0.0, 0.0);
    let mut wall = 0f64;
    let mut per_entry = Vec::new();
    let mut table_per_entry = Vec::new();
    let mut other_per_node = Vec::new();
    let mut entries = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for seed in 0..seeds {
        let started = std::time::Instant::now();
        // Without loss the run is its own lossless baseline (the simulation is seeded); with
        // loss the baseline runs beside it or before it (`turns::pair`).
        let run = |loss, idle, spare: &Arc<AtomicUsize>| {
            run_seed(nodes, loss, seed, (topics, joins), setup, idle, spare)
        };
        let (r, lossless) = if loss > 0.0 {
            let in_turn = turns::in_turn(nodes, setup.zones, setup.senders, topics, joins);
            let (r, b) = turns::pair(
                in_turn,
                cores,
                |s| run(0.0, false, s),
                |s| run(loss, true, s),
            );
            (r, (b.burst_bytes, b.ms))
        } else {
            let r = run(0.0, true, &turns::spare(cores, 1));
            let lossless = (r.burst_bytes, r.ms);
            (r, lossless)
        };
        if r.peer_entries > 0 {
            per_entry.push(r.live_bytes.max(0) as f64 / r.peer_entries as f64);
            table_per_entry.push(r.table_bytes as f64 / r.peer_entries as f64);
            other_per_node.push((r.live_bytes - r.table_bytes as i64).max(0) as f64 / nodes as f64);
        }
        entries.push(r.peer_entries as f64 / nodes as f64);
        wall = wall.max(started.elapsed().as_secs_f64());
        vs_lossless.push(r.burst_bytes as f64 / lossless.0.max(1) as f64);
        if let Some(f) = r.floor {
            let least = (lossless.0 + f).max(1) as f64;
            floor_vs.push(least / lossless.0.max(1) as f64);
            vs_floor.push(r.burst_bytes as f64 / least);
        }
        if let Some(i) = r.ideal {
            ideal.push(i as f64 / nodes as f64);
        }
        // What loss added to the time, in whole ticks (a lossy run ends on a step that the
        // lossless one may have needed part of).
        let base_ms = lossless.1.unwrap_or(u64::from(MAX_TICKS) * tick_ms);
        let lossy_ms = r.ms.unwrap_or(u64::from(MAX_TICKS) * tick_ms);
        after_lossless.push(lossy_ms.saturating_sub(base_ms).div_ceil(tick_ms) as f64);
        repair.push(r.repair_bytes as f64 / nodes as f64);
        for (c, n) in counts.iter_mut().zip(r.repairs) {
            *c += n as f64 / nodes as f64 / seeds as f64;
        }
        peak = peak.max(r.peak_per_tick);
        dropped.0 += r.dropped.0 as f64 / seeds as f64;
        dropped.1 += r.dropped.1 as f64 / seeds as f64;
        let m = r.ms.unwrap_or_else(|| {
            not_exact += 1;
            u64::from(MAX_TICKS) * tick_ms
        });
        ms.push(m as f64);
        ticks.push(m.div_ceil(tick_ms) as f64);
        window.push(r.window_bytes as f64 / nodes as f64 / r.window_ticks);
        burst_b.push(r.burst_bytes as f64 / nodes as f64);
        idle.push(r.idle_bytes as f64 / nodes as f64 / f64::from(IDLE_TICKS));
        resyncs.push(r.resyncs as f64);
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // A figure some runs do not have (no loss, a unicast fan-out, no counting allocator).
    let or_null = |v: &[f64], of: fn(&[f64]) -> f64, digits: i32| {
        if v.is_empty() {
            Value::Null
        } else {
            json!(round(of(v), digits))
        }
    };
    json!({
        "nodes": nodes,
        "loss": loss,
        "seeds": seeds,
        "topics": topics,
        "joins": joins,
        "tick_ms": tick_ms,
        "delay_ms": DELAY.as_millis() as u64,
        "step_ms": STEP.as_millis() as u64,
        "ticks_to_exact": worst(&ticks) as u64,
        "ticks_to_exact_median": median(&ticks),
        "ticks_after_lossless": worst(&after_lossless) as u64,
        "ms_to_exact": worst(&ms) as u64,
        "ms_to_exact_median": median(&ms),
        "not_exact": not_exact,
        "bytes_per_node_per_tick": round(mean(&window), 1),
        "burst_bytes_per_node": round(mean(&burst_b), 1),
        "idle_bytes_per_node_per_tick": round(mean(&idle), 1),
        "resync_requests_median": median(&resyncs),
        "bytes_vs_lossless": round(worst(&vs_lossless), 2),
        "bytes_vs_lossless_median": round(median(&vs_lossless), 2),
        "floor_vs_lossless": or_null(&floor_vs, worst, 3),
        "floor_vs_lossless_median": or_null(&floor_vs, median, 3),
        "bytes_vs_floor": or_null(&vs_floor, worst, 3),
        "bytes_vs_floor_median": or_null(&vs_floor, median, 3),
        "repair_bytes_per_node": round(mean(&repair), 1),
        "plain_repairs_per_node": round(counts[0], 1),
        "parity_per_node": round(counts[1], 1),
        "ideal_parity_per_node": or_null(&ideal, mean, 1),
        "recovered_per_node": round(counts[2], 1),
        "nack_bytes_per_node": round(counts[3], 1),
        "peak_egress_bytes_per_tick": peak,
        "dropped_send": round(dropped.0, 1),
        "dropped_recv": round(dropped.1, 1),
        "egress_bytes_per_sec": cap.egress_bytes_per_sec,
        "ingress_bytes_per_sec": cap.ingress_bytes_per_sec,
        "send_buffer": cap.send_buffer,
        "recv_buffer": cap.recv_buffer,
        "unicast": cap.unicast_fanout,
        "relay_fanout": setup.relay_fanout,
        "parity": !setup.plain,
        "senders": if setup.senders == 0 { nodes } else { setup.senders.min(nodes) },
        "sim_seconds_per_seed": round(wall, 2),
        "bytes_per_peer_topic": or_null(&per_entry, mean, 1),
        "peer_entries_per_node": round(mean(&entries), 1),
        "peer_table_bytes_per_entry": or_null(&table_per_entry, mean, 1),
        "other_bytes_per_node": or_null(&other_per_node, mean, 0),
        "zones": setup.zones,
    })
}

#[cfg(test)]
mod tests;
