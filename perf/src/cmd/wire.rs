//! `headcount-perf wire`: the datagram format's size (bytes per changed topic, the heartbeat)
//! and speed (encoding and decoding on one core, wall clock).

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use headcount::cluster::protocol::{Config, Protocol};
use headcount::cluster::sim::topic_hash;
use headcount::cluster::wire::{Body, Encoder, FLAG_END, Kind, Seal, Stamp};
use serde_json::{Value, json};

use crate::report::{print, round};

/// The tick of the measured node (the library's default).
const TICK: Duration = Duration::from_millis(100);

// `wire`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Measures and prints the datagram figures.
pub fn run(a: &Args) {
    print(a.json, &wire())
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
    fn wire_reports_sane_figures() {
        let v = wire_for(Duration::from_millis(20));
        assert_eq!(v["budget"], 1400);
        assert_eq!(v["entries_per_datagram"], 108);
        assert_eq!(v["heartbeat_bytes"], 80, "{v}");
        assert_eq!(v["delta_datagrams"], 93, "{v}");
        let b = v["bytes_per_changed_topic"].as_f64().unwrap();
        assert!((12.0..13.0).contains(&b), "{v}");
        assert!(v["encode_entries_per_s"].as_f64().unwrap() > 0.0);
        assert!(v["decode_entries_per_s"].as_f64().unwrap() > 0.0);
    }
}
