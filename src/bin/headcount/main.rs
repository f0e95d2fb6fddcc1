//! The `headcount` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod node;

/// Exact, cluster-wide counts of connected users per topic.
#[derive(Parser, Debug)]
#[command(name = "headcount", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a self-checking demo: worker threads join and leave a few hundred topics while the
    /// live counts print each tick; at the end every count is checked against the workers' ledger.
    Demo(demo::Args),
    /// Run one cluster node that holds N presences in a topic and prints what it counts each
    /// tick (for experiments and multi-process tests; `serve` is the server).
    Node(node::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Node(a) => node::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("headcount: {e}");
            ExitCode::from(2)
        }
    }
}
