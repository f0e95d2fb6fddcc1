//! `headcount-perf`: headcount's perf harness. Measures, side by side, the hot path against the
//! baselines a user would otherwise write, the reducer's tick, a simulated cluster's
//! convergence, the wire format, and real `headcount serve` processes under load (against
//! `redis-server` too).
//!
//! ```text
//! headcount-perf hotpath [--json] [--topics N] [--threads N] [--ops N] [--reps N] [--tick-ms MS] …
//! headcount-perf async [--json] [--threads N] [--tasks N] [--ops N] [--topics N] [--seed S] …
//! headcount-perf reducer [--json] [--topics N] [--ticks N] [--shards 2,16] [--cases 0pct,1pct,…]
//! headcount-perf converge [--json] [--nodes N] [--loss P] [--seeds N] [--topics N] [--joins N]
//! headcount-perf wire [--json]
//! headcount-perf receive [--json] [--peers N] [--topics N] [--pool N]
//! headcount-perf failover [--json] [--nodes N] [--zones N] [--loss P] [--seeds N] [--graceful]
//! headcount-perf conns [--json] [--connections N]
//! headcount-perf load [--json] [--nodes N] [--workers N] [--connections N] [--topics N]
//!                     [--rate JOINS_PER_S] [--duration S] [--clients N] [--tick T]
//! headcount-perf baseline-redis [load's flags] [--plot FILE.svg]
//! headcount-perf overhead [load's flags] [--rounds N]
//! headcount-perf soak [load's flags] [--plot FILE.svg]
//! ```
//!
//! `hotpath` and `reducer` report the median of several repetitions; `hotpath` interleaves the
//! repetitions of the different implementations, so that a noisy neighbour disturbs them all
//! alike. The commands used for perf/RESULTS.md are listed there.
//!
//! # Layout
//!
//! This file only parses the command line and dispatches. Each subcommand is one file in
//! `cmd/` (its flags and its `run`). Beside them: `proc.rs` (spawning `headcount serve`, RSS and
//! CPU time from /proc), `report.rs` (printing, rounding, the median), and `load/`, the load
//! harness behind `load`, `baseline-redis`, `overhead` and `soak`. The RESP request encoder
//! and reply reader are the server crate's (`headcount_server::resp::client`). The workloads,
//! the PRNG and the counting allocator are in the crate's library (`lib.rs`: `rig`, `rng`,
//! `counting`), shared with the criterion benches in `perf/benches/`.

// (`converge`'s report is one `json!` object of more fields than the default limit expands.)
#![recursion_limit = "256"]

mod cmd;
mod load;
mod proc;
mod report;

use std::time::Duration;

use clap::{Parser, Subcommand};
use headcount_perf::counting::Counting;
use headcount_perf::rig;

/// Counts the allocations of the threads that ask (`hotpath`'s `allocs_per_op`).
#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(name = "headcount-perf", version, about = "headcount's perf harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join + leave through a pre-resolved topic, and by name, against a shared AtomicI64,
    /// Mutex<HashMap<String, i64>> and DashMap<String, i64>.
    Hotpath(cmd::hotpath::Args),
    /// Join + leave from tokio tasks (`engine.join`, a yield, the drop) on a runtime bound with
    /// `bind_runtime`, on a plain one and with no shard at all, beside thread-per-core shards;
    /// ns per pair per worker, the shared-path share, the share of presences that moved thread.
    Async(cmd::async_rt::Args),
    /// Reducer tick time with 0 %, 1 % and 100 % of the topics changed, at 2 and 16 shards.
    Reducer(cmd::reducer::Args),
    /// A simulated cluster (seeded, simulated time) after a burst of joins: ticks and
    /// milliseconds until every node is exact, and bytes per node per tick.
    Converge(cmd::converge::Args),
    /// A zoned simulated cluster whose zone speaker crashes (or stops): milliseconds until every
    /// view is exact, how long other zones miss the zone, whether any node counts it twice.
    Failover(cmd::failover::Args),
    /// The datagram format: bytes per changed topic, heartbeat size, encode and decode speed.
    Wire(cmd::wire::Args),
    /// One node's receive path: ns per entry heard from many peers, new to it and already held
    /// (the rotating refresh).
    Receive(cmd::receive::Args),
    /// Memory per client connection of `headcount serve` (idle, and holding one presence),
    /// beside redis-server (idle, and after one INCR) when installed.
    Conns(cmd::conns::Args),
    /// The seed's scenario: N `headcount serve` nodes, C client connections holding 1–3
    /// presences in Zipf topics, churn (reconnects, JOIN/LEAVE) at --rate joins/s (or a search
    /// for the highest rate with p99 ≤ 10 ms), then every node's counts checked.
    Load(load::scenario::LoadArgs),
    /// The same workload against headcount, redis-server with INCR/DECR, and redis-server with
    /// a set per topic; ratios of the sustained churn.
    BaselineRedis(cmd::baseline_redis::Args),
    /// CPU per op of `serve` counting vs `serve --no-count` (same commands, nothing counted).
    Overhead(cmd::overhead::Args),
    /// Load at a moderate rate for a long time: RSS over time, exact at the end.
    Soak(cmd::soak::Args),
    /// (Internal) one client process of the load harness; driven over stdin/stdout.
    #[command(hide = true)]
    LoadClient(load::client::Args),
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, through the cpu-time crate).
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn main() {
    #[cfg(unix)]
    let _ = rig::CPU_CLOCK.set(thread_cpu_time);
    match Cli::parse().cmd {
        Cmd::Hotpath(a) => cmd::hotpath::run(&a),
        Cmd::Async(a) => cmd::async_rt::run(&a),
        Cmd::Reducer(a) => cmd::reducer::run(&a),
        Cmd::Converge(a) => cmd::converge::run(&a),
        Cmd::Failover(a) => cmd::failover::run(&a),
        Cmd::Wire(a) => cmd::wire::run(&a),
        Cmd::Receive(a) => cmd::receive::run(&a),
        Cmd::Conns(a) => cmd::conns::run(&a),
        Cmd::Load(a) => cmd::load::run(&a),
        Cmd::BaselineRedis(a) => cmd::baseline_redis::run(&a),
        Cmd::Overhead(a) => cmd::overhead::run(&a),
        Cmd::Soak(a) => cmd::soak::run(&a),
        Cmd::LoadClient(a) => load::client::run(&a),
    }
}
