//! The `headcount` command-line tool: a thin shell over the `headcount_server` library (flags,
//! logging, signals), plus `watch`, `demo` and `ping`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use headcount_server::config::{self, ConfigError, ServeOptions, Settings};
use headcount_server::{Shutdown, logging, serve};

mod demo;
mod node;
mod ping;
mod watch;

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
    Serve(Box<ServeOptions>),
    /// Watch the cluster as a passive observer: total, busiest topics with a trend, and nodes.
    Watch(Box<watch::Args>),
    /// Run a self-checking demo: worker threads join and leave a few hundred topics while the
    /// live counts print each tick; at the end every count is checked against the workers' ledger.
    Demo(demo::Args),
    /// Send PING (after AUTH, with a password) to a running `serve`: exit 0 on PONG, 1 with
    /// one line saying why not. For readiness and liveness probes and HEALTHCHECK.
    Ping(ping::Args),
    /// Run one cluster node that holds N presences in a topic and prints what it counts each
    /// tick (for multi-process tests and experiments; `serve` is the server).
    #[command(hide = true)]
    Node(node::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` and `watch` read their flags again, with the config file's keys under them (the
    // first parse has checked the command line and answered --help).
    let rest = || std::env::args_os().skip(2);
    let res: Result<ExitCode, Box<dyn std::error::Error>> = match cli.cmd {
        Cmd::Serve(_) => serve_command(rest()).map_err(Into::into),
        Cmd::Watch(_) => config::parse_args("watch", rest())
            .and_then(watch::run)
            .map_err(Into::into),
        Cmd::Demo(a) => demo::run(a).map_err(Into::into),
        Cmd::Ping(a) => ping::run(a).map_err(Into::into),
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

/// `headcount serve`: serves until SIGTERM or SIGINT, then stops gracefully and exits 0.
fn serve_command(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<ExitCode, ConfigError> {
    let o: ServeOptions = config::parse_args("serve", args)?;
    let settings = Settings::new(&o)?;
    logging::init(settings.json_logs);
    // Watched from before the "listening" line is logged, so that a supervisor that signals as
    // soon as it sees it is never too early.
    let signals = watch_signals();
    let listeners = serve::bind(o.listen, settings.workers)?;
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    std::thread::Builder::new()
        .name("headcount-signals".into())
        .spawn(move || {
            let signal = wait_for_signal(signals);
            tracing::info!(
                signal,
                "stopping: closing listeners and connections, then saying goodbye"
            );
            trigger.trigger();
        })
        .map_err(|e| ConfigError(format!("signal thread: {e}")))?;
    serve::run(listeners, settings, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// Watches for SIGTERM and SIGINT from now on.
fn watch_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| tracing::error!(error = %e, "cannot watch for signals; serving until killed"))
        .ok()
}

/// Blocks until SIGTERM or SIGINT; returns its name.
fn wait_for_signal(signals: Option<signal_hook::iterator::Signals>) -> &'static str {
    match signals {
        Some(mut s) => match s.forever().next() {
            Some(signal_hook::consts::SIGINT) => "SIGINT",
            _ => "SIGTERM",
        },
        None => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
    }
}
