//! Fuzzes the cluster datagram decoder and the protocol state machine behind it.
//!
//! ```text
//! cargo install cargo-fuzz
//! cd fuzz && cargo +nightly fuzz run --sanitizer none decode -- -max_total_time=120
//! ```
//!
//! Three ways in, all on the same input, none of which may panic:
//!
//! a. the raw bytes to [`Seal::open`] (almost always rejected by the MAC, but the checks before
//!    it — length, magic, version — are exercised);
//! b. the raw bytes, and the two halves of a split at an input-chosen byte, to
//!    [`Protocol::handle_datagram`], then `handle_tick` and `poll_transmit` drained;
//! c. the input as a list of records, each the header choices and the body of a datagram built
//!    by the [`Encoder`] and sealed with the same [`Seal`]: the fuzzer gets past the MAC and
//!    reaches the body parsers and the protocol's state changes (peers, incarnations, sequence
//!    numbers, ranges, names, resync requests and replies, nacks — some aimed at this node, so
//!    that it repairs — repairs, and digest requests — some aimed at this node, so that it
//!    answers — digest replies, so that it reconciles, and parity symbols computed over the
//!    deltas and names the same run sent, so that it decodes).

#![no_main]

use std::collections::HashMap;
use std::mem::offset_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use headcount::cluster::protocol::{Clock, Config, Protocol};
use headcount::cluster::{erasure, wire};
use headcount::cluster::wire::{
    Body, CODED_HEAD, DIGEST_LEN, ENTRY_LEN, Encoder, FLAG_NAMES, FLAG_OBSERVER, FLAG_REPLY, GAP_LEN, Gap,
    HEADER_LEN, Header, Kind, MAX_FANOUT, RANGE_LEN, Seal, Stamp, TARGET_LEN, child_range, coded,
};
use libfuzzer_sys::fuzz_target;

/// This node: the protocol under test.
const ME: u64 = 1;
const MY_INC: u64 = 1;
const TICK: Duration = Duration::from_millis(100);

fn seal() -> &'static Seal {
    static SEAL: OnceLock<Seal> = OnceLock::new();
    SEAL.get_or_init(|| Seal::new("fuzz", b"fuzz key"))
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The protocol's wall clock at [`base`], in Unix milliseconds (fixed: runs replay exactly).
const UNIX_MS: u64 = 1_800_000_000_000;

/// The wall clock at `now`, as the protocol under test sees it.
fn unix_ms(now: Instant) -> u64 {
    UNIX_MS + now.saturating_duration_since(base()).as_millis() as u64
}

fn from(node: u64) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, node as u8), 7380))
}

/// A protocol with a small local table (so resync replies and refreshes have something in them).
fn protocol() -> Protocol {
    let mut cfg = Config::new(ME, MY_INC, TICK);
    // The clock is passed in, never read.
    cfg.clock = Clock {
        base: base(),
        unix_ms: UNIX_MS,
    };
    // Small enough that a fuzz input can reach the caps.
    cfg.max_peers = 4;
    cfg.max_observers = 2;
    cfg.max_topics_per_peer = 64;
    cfg.max_remote_topics = 160;
    let mut p = Protocol::new(cfg, seal().clone());
    for i in 0..5u64 {
        let name: Arc<str> = format!("room:{i}").into();
        p.set_local(
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i as u32 + 1,
            Some(&name),
        );
    }
    p
}

/// Drains what the protocol wants to send, checking that it only sends what it can itself read.
fn drain(p: &mut Protocol) {
    while let Some(t) = p.poll_transmit() {
        assert!(
            seal().open(&t.bytes).is_ok(),
            "the protocol sent a datagram it cannot open: {:?} {:?}",
            t.dest,
            t.bytes
        );
    }
}

/// Reads everything out of an opened datagram (the names iterator re-parses the body).
fn consume(bytes: &[u8]) -> usize {
    match seal().open(bytes) {
        Ok(d) => match d.body {
            Body::Empty => 0,
            Body::Entries(e) | Body::Range(_, _, e) | Body::Repair(_, _, e) => e
                .iter()
                .map(|e| (e.hash.get() ^ u64::from(e.count.get())) as usize & 1)
                .sum(),
            Body::Gaps(g) => {
                assert_eq!(g.len(), usize::from(d.header.count.get()));
                assert!(g.iter().all(|g| g.lo.get() <= g.hi.get()));
                g.len()
            }
            Body::Target {
                node,
                incarnation,
                request,
                names,
            } => {
                assert_eq!(names.len(), usize::from(d.header.count.get()));
                ((node ^ incarnation ^ request) as usize & 1) + names.len()
            }
            Body::Names(names) | Body::RepairNames(_, _, names) => {
                let want = usize::from(d.header.count.get());
                let mut got = 0;
                for (h, n) in names {
                    std::hint::black_box((h, n));
                    got += 1;
                }
                assert_eq!(
                    got, want,
                    "names iterator disagrees with the validated count"
                );
                got
            }
            Body::Ranges {
                node,
                incarnation,
                request,
                ranges,
            } => {
                assert_eq!(ranges.len(), usize::from(d.header.count.get()));
                assert!(!ranges.is_empty());
                assert!(ranges.iter().all(|r| r.lo.get() <= r.hi.get()));
                ((node ^ incarnation ^ request) as usize & 1) + ranges.len()
            }
            Body::Digests(lo, hi, children) => {
                let n = children.len();
                assert_eq!(n, usize::from(d.header.count.get()));
                assert!(lo <= hi && (2..=MAX_FANOUT).contains(&n));
                // The children cover the range exactly, in order.
                let kids: Vec<(u64, u64)> =
                    (0..n).filter_map(|i| child_range(lo, hi, n, i)).collect();
                assert_eq!(kids.first().map(|k| k.0), Some(lo));
                assert_eq!(kids.last().map(|k| k.1), Some(hi));
                assert!(kids.windows(2).all(|w| w[0].1.checked_add(1) == Some(w[1].0)));
                children
                    .iter()
                    .map(|c| (c.digest.get() ^ u64::from(c.topics.get())) as usize & 1)
                    .sum()
            }
            Body::Parity {
                lo,
                members,
                index,
                payload,
            } => {
                assert!(lo > 0 && lo <= d.header.seq.get());
                assert!(lo.checked_add(wire::BLOCK - 1).is_some());
                assert!(members != 0 && members >> wire::BLOCK == 0 && index < erasure::PARITY);
                assert!(payload.len() >= CODED_HEAD);
                payload.len() & 1
            }
            Body::Members(m) => {
                assert_eq!(m.len(), usize::from(d.header.count.get()));
                m.iter()
                    .map(|m| (m.node.get() ^ u64::from(m.addr().port())) as usize & 1)
                    .sum()
            }
        },
        Err(_) => 0,
    }
}

/// The peer totals the protocol reports must add up to its running remote total.
fn check(p: &Protocol, now: Instant) {
    let sum: u64 = p
        .nodes(now)
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.total)
        .sum();
    assert_eq!(
        sum,
        p.remote_total(),
        "remote total drifted from the peers' tables"
    );
}

/// How many names a names body holds, parsed the way the wire format says.
fn names_in(mut b: &[u8]) -> usize {
    let mut n = 0;
    while b.len() >= 9 {
        let len = usize::from(b[8]);
        if b.len() < 9 + len {
            break;
        }
        b = &b[9 + len..];
        n += 1;
    }
    n
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A sequence number near the interesting edges.
fn seq_of(b: u8) -> u64 {
    match b {
        0..=0xdf => u64::from(b),
        0xe0..=0xef => u64::from(b) << 32,
        _ => u64::MAX - u64::from(0xff - b),
    }
}

/// (c): the input as records of six bytes and a body, each built into a datagram with a valid
/// header and sealed:
///
/// - `kind`: the datagram kind (mod 12: 7 is a resync request built by the encoder, 8 a nack,
///   9 a repair, its body names when NAMES is set, 10 a digest request, 11 a digest reply);
///   bits 4 and 5 the OBSERVER and REPLY flags;
/// - `fb`: bits 0-2 the header flags (END, NAMES, STATE), bit 3 a heartbeat whose count is `misc`,
///   bits 4-5 the sender's clock (this node's, 20 s behind, 40 s ahead: outside the allowed
///   skew, or `dead_after` behind), bit 6 a tick of this node after the datagram, bit 7 junk in
///   the high flag byte;
/// - `who`: the sender (node 1 + who % 6: node 1 is this node), its incarnation and tick;
/// - `seq`: the sequence number (small, or near 2^32, or near u64::MAX), also a resync
///   request's number;
/// - `misc`: digest and table size declared, bit 6 a 4 s jump in time (with `len` 0), bit 7 a
///   resync request, a nack or a digest request aimed at this node (the nack's gaps from the
///   body, two bytes each: first sequence number and length; the digest request's ranges, two
///   bytes each: the top byte of the first hash and of the width), or a count that disagrees
///   with the body;
/// - `len`: the body is the next `4 × len` bytes (time also moves on by `len & 127` ms).
fn structured(data: &[u8]) {
    let mut p = protocol();
    let mut now = base();
    let mut r = Reader(data);
    let mut n = 0;
    // The coded form of every delta and names datagram built so far, by (node, seq).
    let mut sent: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    while let (Some(kind_byte), Some(fb), Some(who), Some(seq), Some(misc), Some(len)) =
        (r.byte(), r.byte(), r.byte(), r.byte(), r.byte(), r.byte())
    {
        n += 1;
        if n > 64 {
            break;
        }
        let kind = match kind_byte % 13 {
            0 => Kind::Delta,
            1 => Kind::Heartbeat,
            2 => Kind::Refresh,
            3 => Kind::ResyncRequest,
            4 => Kind::ResyncReply,
            5 => Kind::Goodbye,
            6 => Kind::Names,
            8 => Kind::Nack,
            9 => Kind::Repair,
            10 => Kind::DigestRequest,
            11 => Kind::DigestReply,
            12 => Kind::Parity,
            // A resync request aimed at this node, body and all built by the encoder.
            _ => Kind::ResyncRequest,
        };
        let aimed = matches!(
            kind,
            Kind::ResyncRequest | Kind::Nack | Kind::DigestRequest | Kind::Parity
        ) && misc & 0x80 != 0;
        // Peers 2..=6 (one more than max_peers), incarnations 0..=3; node 1 is this node.
        let node = 1 + u64::from(who % 6);
        let inc = u64::from((who >> 3) % 4);
        let tick_ms = match who >> 5 {
            0 => 0,
            1 => u32::MAX,
            t => u32::from(t) * 50,
        };
        let digest = u64::from(misc & 0x0f);
        let topics = u32::from(misc >> 4 & 0x07);
        let seq = seq_of(seq);
        // END, NAMES, STATE; now and then unknown flags in the high byte too.
        let flags = u16::from(fb & 0x07)
            | if kind_byte & 0x10 != 0 {
                FLAG_OBSERVER
            } else {
                0
            }
            | if kind_byte & 0x20 != 0 { FLAG_REPLY } else { 0 }
            | if fb & 0x80 != 0 {
                u16::from(fb) << 8
            } else {
                0
            };
        let body = r.take(usize::from(len) * 4).to_vec();
        // Time moves on by 0..=127 ms per record, or past dead-after.
        now += if misc & 0x40 != 0 && len == 0 {
            Duration::from_secs(4)
        } else {
            Duration::from_millis(u64::from(len & 0x7f))
        };

        let time = match (fb >> 4) & 3 {
            0 => unix_ms(now),
            1 => unix_ms(now) - 20_000,
            2 => unix_ms(now) + 40_000,
            _ => unix_ms(now) - 3_000,
        };
        let st = Stamp {
            seq,
            digest,
            topics,
            time,
        };
        let enc = Encoder::new(seal().cluster(), node, inc, tick_ms, 1400);
        let bytes = if aimed && kind == Kind::Nack {
            let gaps: Vec<Gap> = body
                .chunks_exact(2)
                .map(|g| {
                    let lo = seq_of(g[0]);
                    Gap::new(ME, lo, lo.saturating_add(u64::from(g[1])))
                })
                .collect();
            let mut d = enc.nacks(seal(), 0, &st, &gaps);
            d.pop().unwrap_or_else(|| enc.bare(seal(), Kind::Heartbeat, flags, &st))
        } else if aimed && kind == Kind::DigestRequest {
            let ranges: Vec<(u64, u64)> = body
                .chunks_exact(2)
                .map(|r| {
                    let lo = u64::from(r[0]) << 56;
                    (lo, lo.saturating_add(u64::from(r[1]) << 56 | 0xff_ffff))
                })
                .collect();
            let mut d = enc.digest_requests(seal(), flags, &st, (ME, MY_INC), &mut || seq, &ranges);
            d.truncate(1);
            d.pop().unwrap_or_else(|| enc.bare(seal(), Kind::Heartbeat, flags, &st))
        } else if aimed && kind == Kind::Parity {
            // A real parity symbol over this sender's earlier deltas and names the input
            // picks (those not sent count as absent): some decode, some decode garbage.
            let lo = seq_of(body.first().copied().unwrap_or(0)).max(1);
            let mut wide = [0u8; 16];
            if let Some(b) = body.get(1..15) {
                wide[..14].copy_from_slice(b);
            }
            // (Now and then a bit past the block: the encoder refuses it.)
            let stray = match body.get(15) {
                Some(&b) if b & 0x80 != 0 => 1 << (wire::BLOCK + u64::from(b & 15)),
                _ => 0,
            };
            let members = wire::Members::from_le_bytes(wide) | 1 | stray;
            let data: Vec<(usize, &[u8])> = (0..wire::BLOCK)
                .filter(|i| members & (1 << i) != 0)
                .filter_map(|i| sent.get(&(node, lo.wrapping_add(i))).map(|c| (i as usize, &c[..])))
                .collect();
            let index = usize::from(misc & 7);
            erasure::encode(index, &data)
                .filter(|p| p.len() >= CODED_HEAD)
                .and_then(|p| enc.parity(seal(), flags, &st, (lo, members), index, &p))
                .unwrap_or_else(|| enc.bare(seal(), Kind::Heartbeat, flags, &st))
        } else if aimed {
            enc.request(seal(), flags, &st, ME, MY_INC, seq)
        } else {
            let mut b = enc.bare(seal(), kind, flags, &st);
            b.truncate(HEADER_LEN);
            // The count the body holds, or (now and then) whatever the input says.
            let count = if kind == Kind::Heartbeat && fb & 0x08 != 0 {
                u16::from(misc)
            } else {
                let natural = match kind {
                    Kind::Delta => body.len() / ENTRY_LEN,
                    Kind::Refresh | Kind::ResyncReply => {
                        body.len().saturating_sub(RANGE_LEN) / ENTRY_LEN
                    }
                    Kind::Names => names_in(&body),
                    Kind::Nack => body.len() / GAP_LEN,
                    Kind::Repair if flags & FLAG_NAMES != 0 => {
                        names_in(body.get(RANGE_LEN..).unwrap_or_default())
                    }
                    Kind::Repair => body.len().saturating_sub(RANGE_LEN) / ENTRY_LEN,
                    Kind::DigestRequest => body.len().saturating_sub(TARGET_LEN) / RANGE_LEN,
                    Kind::DigestReply => body.len().saturating_sub(RANGE_LEN) / DIGEST_LEN,
                    Kind::Parity => usize::from(misc & 7),
                    _ => 0,
                };
                if misc & 0x80 != 0 {
                    natural.wrapping_add(usize::from(seq as u8 & 3)) as u16
                } else {
                    natural as u16
                }
            };
            let at = offset_of!(Header, count);
            b[at..at + 2].copy_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&body);
            seal().seal(&mut b);
            b
        };
        // A well-formed delta must open.
        if kind == Kind::Delta && misc & 0x80 == 0 && body.len() % ENTRY_LEN == 0 {
            assert!(
                seal().open(&bytes).is_ok(),
                "a well-formed delta was rejected"
            );
        }
        if let Some(c) = coded(&bytes) {
            sent.insert((node, seq), c);
        }
        consume(&bytes);
        let _ = p.handle_datagram(now, from(node), &bytes);
        check(&p, now);
        if fb & 0x40 != 0 {
            p.handle_tick(now);
            drain(&mut p);
            p.handle_timeout(now + TICK);
            drain(&mut p);
        }
        while p.poll_event().is_some() {}
        let _ = p.converged();
    }
    p.handle_tick(now);
    drain(&mut p);
    check(&p, now);
    p.goodbye(now);
    drain(&mut p);
}

fuzz_target!(|data: &[u8]| {
    // (a) The raw bytes.
    consume(data);

    // (b) The raw bytes, whole and split at an input-chosen byte, to a protocol.
    let mut p = protocol();
    let now = base();
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let (x, y) = data.split_at(split);
    for (i, part) in [data, x, y].into_iter().enumerate() {
        let _ = p.handle_datagram(
            now + Duration::from_millis(i as u64),
            from(2 + i as u64),
            part,
        );
    }
    p.handle_tick(now + TICK);
    drain(&mut p);
    check(&p, now + TICK);

    // (c) The input as the bodies of otherwise valid, sealed datagrams.
    structured(data);
});
