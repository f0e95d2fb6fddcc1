//! The `headcount` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod demo;
mod identity;
mod logging;
#[cfg(feature = "metrics")]
mod metrics;
mod node;
mod resp;
mod serve;
mod watch;
mod watchdog;

/// Exact, cluster-wide counts of connected users per topic.
#[derive(Parser, Debug)]
#[command(name = "headcount", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the Redis protocol (RESP2/RESP3): JOIN, LEAVE, COUNT, TOTAL, TOP… from any language.
    /// A connection's presences leave when it closes. Nodes on one network form a cluster.
    Serve(Box<serve::Args>),
    /// Watch the cluster as a passive observer: total, busiest topics with a trend, and nodes.
    Watch(Box<watch::Args>),
    /// Run a self-checking demo: worker threads join and leave a few hundred topics while the
    /// live counts print each tick; at the end every count is checked against the workers' ledger.
    Demo(demo::Args),
    /// Run one cluster node that holds N presences in a topic and prints what it counts each
    /// tick (for experiments and multi-process tests; `serve` is the server).
    Node(node::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res: Result<ExitCode, Box<dyn std::error::Error>> = match cli.cmd {
        Cmd::Serve(a) => serve::run(*a).map_err(Into::into),
        Cmd::Watch(a) => watch::run(*a).map_err(Into::into),
        Cmd::Demo(a) => demo::run(a).map_err(Into::into),
        Cmd::Node(a) => node::run(a).map_err(Into::into),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("headcount: {e}");
            ExitCode::from(2)
        }
    }
}
