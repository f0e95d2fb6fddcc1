//! `headcount serve` end to end on loopback: servers run in-process through `serve::run` (or, to
//! send SIGTERM, read the log or measure the process, as `headcount serve` processes), the
//! library's RESP client, and the real `redis-cli`, `redis-benchmark` and `promtool` where
//! installed.
//!
//! - `commands.rs`: the commands, pipelining, errors, AUTH and RESP3, two servers in a cluster;
//! - `tools.rs`: the outside tools (`redis-cli`, `redis-benchmark`, `promtool`, `ss`);
//! - `limits.rs`: what one client may make the server hold, and how long it may keep it busy.

#[path = "../common/mod.rs"]
mod common;

mod commands;
mod limits;
mod tools;

use common::Server;

fn standalone() -> Server {
    Server::start(&["--standalone"])
}
