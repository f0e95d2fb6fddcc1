//! The cluster: a sans-IO snapshot protocol over a fixed datagram format. Every node is its own
//! global counter: its count plus the latest count of every live peer.
//!
//! - [`wire`]: the datagram layouts (zerocopy), the seal (keyed MAC) and the encoder;
//! - [`protocol`]: one node's state machine: `handle_*` in, `poll_*` out, time passed in; no
//!   sockets (the engine's thread drives it over `net.rs`);
//! - [`erasure`]: the parity code repairs use (GF(2^8), Cauchy);
//! - [`sim`]: a seeded simulation of many nodes over a network with loss, duplication,
//!   reordering and partitions.
//!
//! Dependencies point one way: `sim` uses `protocol`, which uses `wire`.

pub mod erasure;
pub mod protocol;
pub mod sim;
pub mod wire;
