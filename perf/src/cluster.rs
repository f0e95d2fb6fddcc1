//! Cluster figures: convergence of a simulated cluster after a burst of joins ([`converge`]) and
//! the datagram format's size and speed ([`wire`]).
//!
//! [`converge`] runs the seeded network simulator (`headcount::cluster::sim::Sim`, simulated
//! time): its tick and millisecond figures are simulated time, not wall-clock time, and do not
//! depend on the machine. [`wire`] times encoding and decoding on one core (wall clock).

use std::hint::black_box;
use std::time::{Duration, Instant};

use headcount::cluster::protocol::{Config, Protocol};
use headcount::cluster::sim::{Faults, Sim, topic_hash};
use headcount::cluster::wire::{Body, Encoder, FLAG_END, Kind, Seal, Stamp};
use serde_json::{Value, json};

/// The tick every simulated node runs.
const TICK: Duration = Duration::from_millis(100);
/// One-way delay of the simulated network.
const DELAY: Duration = Duration::from_millis(1);
/// The resolution of the milliseconds-to-exact measurement (simulated).
const STEP: Duration = Duration::from_millis(10);
/// A seed that is not exact after this many ticks counts as this many (and as `not_exact`).
const MAX_TICKS: u32 = 100;
/// Idle ticks over which the steady-state traffic is measured after convergence.
const IDLE_TICKS: u32 = 50;

/// A burst of `joins` joins spread over the nodes and `topics` long-tailed topics.
fn burst(sim: &mut Sim, seed: u64, joins: u64, topics: u64) {
    sim.burst(seed, joins, topics);
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn total_bytes(sim: &Sim) -> u64 {
    sim.bytes_sent.iter().sum()
}

fn resync_requests(sim: &Sim) -> u64 {
    (0..sim.len())
        .filter_map(|i| sim.node(i))
        .map(|p| p.stats().resync_requests)
        .sum()
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
}

fn run(nodes: usize, loss: f64, seed: u64, topics: u64, joins: u64) -> Run {
    let mut sim = Sim::new(nodes, seed, TICK, |_| {});
    sim.faults = Faults {
        loss,
        delay: DELAY,
        ..Faults::default()
    };
    // Settle: every node has heard every other (heartbeats), so the burst meets a formed cluster.
    sim.run_for(TICK * 3);
    let _ = sim.ticks_to_exact(MAX_TICKS);

    let (b0, r0, t0) = (total_bytes(&sim), resync_requests(&sim), sim.elapsed());
    burst(&mut sim, seed, joins, topics);
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

    let b1 = total_bytes(&sim);
    sim.run_for(TICK * IDLE_TICKS);
    let idle_bytes = total_bytes(&sim) - b1;
    Run {
        ms,
        window_bytes,
        window_ticks,
        burst_bytes,
        idle_bytes,
        resyncs,
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
/// - `bytes_per_node_per_tick`: every byte sent from the simulation's start (the idle settling
///   ticks, then the burst) until exact, per node and per simulated tick, averaged over seeds.
/// - `burst_bytes_per_node`: the bytes sent from the burst until exact, per node.
/// - `idle_bytes_per_node_per_tick`: over 50 idle ticks after convergence (heartbeats and the
///   rotating refresh of the now-full tables).
pub fn converge(nodes: usize, loss: f64, seeds: u64, topics: u64, joins: u64) -> Value {
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
    for seed in 0..seeds {
        let r = run(nodes, loss, seed, topics, joins);
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
        "ms_to_exact": worst(&ms) as u64,
        "ms_to_exact_median": median(&ms),
        "not_exact": not_exact,
        "bytes_per_node_per_tick": round(mean(&window), 1),
        "burst_bytes_per_node": round(mean(&burst_b), 1),
        "idle_bytes_per_node_per_tick": round(mean(&idle), 1),
        "resync_requests_median": median(&resyncs),
    })
}

/// Datagram size and speed figures. See [`wire_for`].
pub fn wire() -> Value {
    wire_for(Duration::from_millis(500))
}

/// - `bytes_per_changed_topic`: a [`Protocol`] with 10,000 `set_local` changes and one `handle_tick`;
///   the bytes of its delta datagrams (headers and tags included) / 10,000. The same tick's
///   refresh slices are not counted (they are in `tick_bytes_per_changed_topic`).
/// - `heartbeat_bytes`: the one datagram an empty node's first tick sends.
/// - `encode_entries_per_s`: full delta datagrams built and sealed by the [`Encoder`], one core,
///   for `time`.
/// - `decode_entries_per_s`: [`Seal::open`] (MAC verified) and every entry read, same.
pub fn wire_for(time: Duration) -> Value {
    let seal = Seal::new("perf", b"perf key");
    let cfg = Config::new(1, 1, TICK);
    let budget = cfg.budget;

    // Bytes per changed topic, through the protocol.
    const CHANGED: u64 = 10_000;
    let mut p = Protocol::new(cfg.clone(), seal.clone());
    for i in 0..CHANGED {
        p.set_local(topic_hash(i), (i % 1000) as u32 + 1, None);
    }
    p.handle_tick(Instant::now());
    let (mut delta_bytes, mut deltas, mut tick_bytes) = (0u64, 0u64, 0u64);
    while let Some(t) = p.poll_transmit() {
        tick_bytes += t.bytes.len() as u64;
        if seal.open(&t.bytes).is_ok_and(|d| d.kind == Kind::Delta) {
            delta_bytes += t.bytes.len() as u64;
            deltas += 1;
        }
    }

    // An idle tick: an empty node's heartbeat.
    let mut p = Protocol::new(cfg.clone(), seal.clone());
    p.handle_tick(Instant::now());
    let mut heartbeat = 0usize;
    while let Some(t) = p.poll_transmit() {
        if seal.open(&t.bytes).is_ok_and(|d| d.kind == Kind::Heartbeat) {
            heartbeat = t.bytes.len();
        }
    }

    // Encoding: full delta datagrams, sealed.
    let enc = Encoder::new(seal.cluster(), 2, 1, TICK.as_millis() as u32, budget);
    let per = enc.entries_per_datagram(Kind::Delta);
    let batches: Vec<Vec<(u64, u32)>> = (0..64u64)
        .map(|b| {
            (0..per as u64)
                .map(|i| (topic_hash(b * per as u64 + i), (i as u32 % 500) + 1))
                .collect()
        })
        .collect();
    let stamp = |seq: u64| Stamp {
        seq,
        digest: seq,
        topics: 0,
        time: 1_800_000_000_000,
    };
    let full = enc
        .entries(&seal, Kind::Delta, 0, &stamp(1), None, &batches[0])
        .len();
    let (mut n, mut seq, mut sink) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    while start.elapsed() < time || n == 0 {
        for b in &batches {
            seq += 1;
            let d = enc.entries(
                &seal,
                Kind::Delta,
                FLAG_END,
                &stamp(seq),
                None,
                black_box(b),
            );
            sink = sink.wrapping_add(black_box(d).len());
            n += 1;
        }
    }
    let encode_s = start.elapsed().as_secs_f64();
    let encode_rate = (n * per as u64) as f64 / encode_s;
    black_box(sink);

    // Decoding: verify the MAC and read every entry.
    let dgs: Vec<Vec<u8>> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| enc.entries(&seal, Kind::Delta, 0, &stamp(i as u64 + 1), None, b))
        .collect();
    let (mut n, mut entries, mut sum) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < time || n == 0 {
        for d in &dgs {
            if let Ok(g) = seal.open(black_box(d))
                && let Body::Entries(e) = g.body
            {
                for e in e {
                    sum = sum.wrapping_add(e.hash.get() ^ u64::from(e.count.get()));
                }
                entries += e.len() as u64;
            }
            n += 1;
        }
    }
    let decode_s = start.elapsed().as_secs_f64();
    let decode_rate = entries as f64 / decode_s;
    black_box(sum);

    json!({
        "budget": budget,
        "entries_per_datagram": per,
        "full_delta_bytes": full,
        "bytes_per_changed_topic": round(delta_bytes as f64 / CHANGED as f64, 3),
        "bytes_per_changed_topic_method": "Protocol: 10000 set_local changes, one handle_tick, bytes of the Delta datagrams (headers and tags included) / 10000",
        "delta_datagrams": deltas,
        "tick_bytes_per_changed_topic": round(tick_bytes as f64 / CHANGED as f64, 3),
        "heartbeat_bytes": heartbeat,
        "encode_entries_per_s": encode_rate.round(),
        "decode_entries_per_s": decode_rate.round(),
        "encode_datagrams_per_s": (encode_rate / per as f64).round(),
        "decode_datagrams_per_s": (decode_rate / per as f64).round(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converge_reports_sane_figures() {
        let v = converge(3, 0.1, 2, 50, 500);
        for k in [
            "nodes",
            "loss",
            "seeds",
            "ticks_to_exact",
            "ticks_to_exact_median",
            "ms_to_exact",
            "ms_to_exact_median",
            "bytes_per_node_per_tick",
            "idle_bytes_per_node_per_tick",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["nodes"], 3);
        assert_eq!(v["seeds"], 2);
        assert_eq!(v["not_exact"], 0, "{v}");
        let ticks = v["ticks_to_exact"].as_u64().unwrap();
        assert!((1..=u64::from(MAX_TICKS)).contains(&ticks), "{v}");
        let ms = v["ms_to_exact"].as_u64().unwrap();
        assert!(ms <= ticks * 100 && ms > (ticks - 1) * 100, "{v}");
        assert!(v["ms_to_exact_median"].as_f64().unwrap() <= ms as f64);
        // At least a heartbeat per node per tick.
        let idle = v["idle_bytes_per_node_per_tick"].as_f64().unwrap();
        assert!(idle >= 80.0, "{v}");
        assert!(
            v["bytes_per_node_per_tick"].as_f64().unwrap() >= 80.0,
            "{v}"
        );
    }

    #[test]
    fn wire_reports_sane_figures() {
        let v = wire_for(Duration::from_millis(20));
        assert_eq!(v["budget"], 1400);
        assert_eq!(v["entries_per_datagram"], 110);
        assert_eq!(v["heartbeat_bytes"], 80, "{v}");
        assert_eq!(v["delta_datagrams"], 91, "{v}");
        let b = v["bytes_per_changed_topic"].as_f64().unwrap();
        assert!((12.0..13.0).contains(&b), "{v}");
        assert!(v["encode_entries_per_s"].as_f64().unwrap() > 0.0);
        assert!(v["decode_entries_per_s"].as_f64().unwrap() > 0.0);
    }
}
