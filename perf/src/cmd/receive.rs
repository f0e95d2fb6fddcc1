//! `headcount-perf receive`: what one node's receive path costs per entry (one core, wall
//! clock): a node hearing `peers` peers' first announcements of their topics (new entries and
//! their names), then the same peers' rotating refresh of the same tables (entries it holds).
//! Every node pays this for every change of every peer: at 256 nodes of 4,000 topics each,
//! a million entries a burst.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use headcount::cluster::protocol::{Config, Outcome, Protocol, defaults};
use headcount::cluster::sim::{addr, topic_hash};
use headcount::cluster::wire::{Body, Kind, Seal};
use serde_json::{Value, json};

use crate::report::{print, round};

/// The tick of every node (the library's default).
const TICK: Duration = Duration::from_millis(100);

// `receive`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Peers the measured node hears.
    #[arg(long, default_value_t = 255)]
    peers: u64,
    /// Topics each peer counts.
    #[arg(long, default_value_t = 4_000)]
    topics: u64,
    /// The topics the peers' topics are drawn from (peers share topics as a cluster's do).
    #[arg(long, default_value_t = 100_000)]
    pool: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Measures and prints the receive figures.
pub fn run(a: &Args) {
    print(a.json, &receive(a.peers, a.topics, a.pool))
}

/// What each peer sends for one kind of tick, in the order a receiver hears it (peer by
/// peer, each peer's datagrams in order), with how many entries they carry.
struct Heard {
    datagrams: Vec<(SocketAddr, Arc<[u8]>)>,
    entries: u64,
}

/// Ticks every peer once at `at` and keeps the datagrams of the kinds `keep`.
fn tick_all(peers: &mut [Protocol], seal: &Seal, at: Instant, keep: &[Kind]) -> Heard {
    let mut heard = Heard {
        datagrams: Vec::new(),
        entries: 0,
    };
    for (i, p) in peers.iter_mut().enumerate() {
        p.handle_tick(at);
        while let Some(t) = p.poll_transmit() {
            let Ok(d) = seal.open(&t.bytes) else { continue };
            if !keep.contains(&d.kind) {
                continue;
            }
            if let Body::Entries(e) | Body::Range(_, _, e) = d.body {
                heard.entries += e.len() as u64;
            }
            heard.datagrams.push((addr(i), t.bytes.into()));
        }
    }
    heard
}

/// Hands `heard` to `node`, `step` apart; the wall-clock time it took and how many were not
/// applied.
fn feed(node: &mut Protocol, heard: &Heard, from: Instant, step: Duration) -> (Duration, u64) {
    let mut refused = 0;
    let start = Instant::now();
    for (k, (a, bytes)) in heard.datagrams.iter().enumerate() {
        let at = from + step * k as u32;
        if !matches!(node.handle_shared(at, *a, bytes), Outcome::Applied) {
            refused += 1;
        }
    }
    (start.elapsed(), refused)
}

/// - `ns_per_new_entry`: a delta's entry of a topic new to the peer's copy here, with the
///   names datagrams that come with them (every byte of the receive path: MAC, decoding,
///   the peer's table, the cluster sum, names), over the entries.
/// - `ns_per_held_entry`: one cycle of the rotating refresh at its full rate (as after a peer
///   appears), the same tables (every entry already held).
/// - `entries_new`, `entries_held`, `datagrams`: what was heard.
/// - `refused`: datagrams not applied (0 unless something is wrong with the measurement).
pub fn receive(peers: u64, topics: u64, pool: u64) -> Value {
    let seal = Seal::new("perf", b"perf key");
    let pool = pool.max(topics).max(1);
    let base = Instant::now();
    let mut senders: Vec<Protocol> = (1..=peers)
        .map(|i| {
            // The refresh at its full rate (as after a peer appears): the whole table in a
            // cycle.
            let mut c = Config::new(i, 1, TICK);
            c.idle_refresh = u32::MAX;
            Protocol::new(c, seal.clone())
        })
        .collect();
    let mut cfg = Config::new(peers + 1, 1, TICK);
    cfg.max_rate = u32::MAX;
    let mut node = Protocol::new(cfg, seal.clone());
    // Each peer counts `topics` topics of the pool, from its own place in it (the hashes
    // spread them over the hash space).
    for (i, p) in senders.iter_mut().enumerate() {
        for t in 0..topics {
            let topic = (i as u64 * 7919 + t) % pool;
            let name: Arc<str> = format!("room:{topic}").into();
            p.set_local(topic_hash(topic), 1 + (t % 5) as u32, Some(&name));
        }
    }
    // First ticks: heartbeats make the node know its peers; then the tables, new to it.
    let hello = tick_all(
        &mut senders,
        &seal,
        base,
        &[Kind::Heartbeat, Kind::Delta, Kind::Names],
    );
    let step = Duration::from_micros(1);
    let (new, mut refused) = feed(&mut node, &hello, base, step);
    let mut at = base + step * hello.datagrams.len() as u32;
    // The refresh: a tick's slice at a time, over a whole cycle.
    let (mut held, mut held_entries, mut datagrams) = (Duration::ZERO, 0u64, hello.datagrams.len());
    for _ in 0..defaults::REFRESH_CYCLE {
        at += TICK;
        let r = tick_all(&mut senders, &seal, at, &[Kind::Refresh]);
        let (t, n) = feed(&mut node, &r, at, step);
        held += t;
        refused += n;
        held_entries += r.entries;
        datagrams += r.datagrams.len();
    }
    let ns = |t: Duration, n: u64| round(t.as_nanos() as f64 / n.max(1) as f64, 1);
    json!({
        "peers": peers,
        "topics": topics,
        "pool": pool,
        "entries_new": hello.entries,
        "entries_held": held_entries,
        "datagrams": datagrams,
        "refused": refused,
        "ns_per_new_entry": ns(new, hello.entries),
        "ns_per_held_entry": ns(held, held_entries),
        "remote_total": node.remote_total(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_reports_sane_figures() {
        // 2,000 topics a peer: 19 datagrams, more than ten ticks of the idle refresh carry.
        let v = receive(4, 2_000, 4_000);
        assert_eq!(v["refused"], 0, "{v}");
        assert_eq!(v["entries_new"], 4 * 2_000, "{v}");
        assert_eq!(v["entries_held"], 4 * 2_000, "one refresh cycle: {v}");
        // Every peer counts 2,000 topics, 1 to 5 each (0..2000 % 5 + 1 sums to 6,000).
        assert_eq!(v["remote_total"], 4 * 6_000, "{v}");
        assert!(v["ns_per_new_entry"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["ns_per_held_entry"].as_f64().unwrap() > 0.0, "{v}");
    }
}
