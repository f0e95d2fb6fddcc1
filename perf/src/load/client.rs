//! The load generator's client processes (`headcount-perf load-client`, one per 15,000
//! connections: a process may hold only so many sockets). Each runs one thread that owns a share
//! of the simulated users ([`super::users`]), and runs the phases the parent sends it over
//! standard input: open every connection and join its first topics, churn at a given rate,
//! drain, report (a JSON line on standard output). See [`super::phase`].

use std::io::Write;
use std::sync::mpsc;

use clap::Args as ClapArgs;

use super::phase::{Phase, Report};
use super::servers::Target;
use super::users::{Config, Users};
use crate::proc::raise_nofile;

// The hidden `load-client` subcommand's flags, set by the harness (no doc comment: clap would
// take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    #[arg(long)]
    id: usize,
    #[arg(long)]
    procs: usize,
    #[arg(long)]
    target: String,
    #[arg(long)]
    servers: String,
    #[arg(long)]
    topics: usize,
    #[arg(long)]
    conns: usize,
    #[arg(long)]
    seed: u64,
}

/// `headcount-perf load-client …`: runs one client process (started by
/// [`super::harness::Harness::open`]) until told to stop; exit status 1 on error.
pub fn run(a: &Args) {
    if let Err(e) = client_main(a) {
        eprintln!("headcount-perf load-client: {e}");
        std::process::exit(1);
    }
}

fn client_main(a: &Args) -> Result<(), String> {
    raise_nofile((a.conns / a.procs.max(1)) as u64 + 1000)?;
    let servers = a
        .servers
        .split(',')
        .map(|s| s.parse().map_err(|e| format!("server {s:?}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    serve_stdio(Config {
        id: a.id,
        threads: a.procs,
        target: Target::parse(&a.target).ok_or(format!("unknown target {:?}", a.target))?,
        servers,
        topics: a.topics,
        conns: a.conns,
        seed: a.seed,
    })
}

/// A client process: phases as lines on standard input, reports as JSON lines on standard
/// output (the parent runs several, as one process may hold only so many sockets).
fn serve_stdio(cfg: Config) -> Result<(), String> {
    use std::io::BufRead;
    let (ptx, prx) = mpsc::channel();
    let (rtx, rrx) = mpsc::channel();
    let t = std::thread::spawn(move || client_thread(cfg, prx, rtx));
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let phase = Phase::parse(&line).ok_or(format!("bad phase line {line:?}"))?;
        let stop = matches!(phase, Phase::Stop);
        ptx.send(phase).map_err(|_| "client thread died")?;
        if stop {
            break;
        }
        let r = rrx.recv().map_err(|_| "client thread died")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", r.to_json()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    drop(ptx);
    let _ = t.join();
    Ok(())
}

/// Runs a client thread: phases come on `rx`, reports go to `tx`.
fn client_thread(cfg: Config, rx: mpsc::Receiver<Phase>, tx: mpsc::Sender<Report>) {
    let mut users = Users::new(cfg);
    while let Ok(phase) = rx.recv() {
        match phase {
            Phase::Open => users.open_all(),
            Phase::Churn {
                joins_per_s,
                duration,
            } => users.churn(joins_per_s, duration),
            Phase::Stop => {
                users.close_all();
                return;
            }
        }
        if tx.send(users.report()).is_err() {
            return;
        }
    }
}
