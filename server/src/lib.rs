//! # headcount-server
//!
//! headcount's Redis-protocol server as a library: the RESP codec, the commands, the server
//! loop ([`serve::run`], which tests and programs run in-process), its metrics and its
//! settings. The `headcount` binary (`serve`, `watch`, `demo`) is a thin shell over it.
//!
//! ## Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`resp`] | the request parser, the reply writer, and [`resp::client`]: one request encoder and reply reader for tests and tools |
//! | `commands` | one table of the commands `serve` answers: name, arity, cost, handler |
//! | [`serve`] | [`serve::run`], [`serve::bind`] and [`serve::Shutdown`]; one worker thread per listener (`worker.rs`), its connections (`conn.rs`) and its share of the memory budget (`memory.rs`) |
//! | `shared` | what the workers share and the counters each one writes |
//! | `stats` | every statistic, walked once for each consumer: `info` renders `INFO`, `metrics` the Prometheus endpoint |
//! | [`config`] | the flags of `serve` and `watch`, each declared once; the config file's keys are the same flags |
//! | `identity` | a node's stable id and the default cluster key |
//! | `watchdog` | logs what the engine only counts (refused datagrams, peers over the caps) |
//! | [`logging`] | the binary's `tracing` subscriber |
//!
//! Arrows point one way: `serve` uses everything; `commands` uses `resp`, `shared` and `info`;
//! `info` and `metrics` use `stats`, which uses `shared`; nothing imports `serve`.
//!
//! ## Features
//!
//! - `affinity` (default): `serve --pin` pins worker threads and the engine thread.

#![deny(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod commands;
pub mod config;
mod identity;
mod info;
pub mod logging;
mod metrics;
pub mod resp;
pub mod serve;
mod shared;
mod shutdown;
mod stats;
mod watchdog;

pub use config::{ConfigError, Settings};
pub use serve::Shutdown;
