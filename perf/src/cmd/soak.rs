//! `headcount-perf soak`: the `load` workload at a moderate rate for a long time (10 minutes
//! unless `--duration` says otherwise), sampling the servers' RSS every second; exact at the end,
//! and RSS flat after warm-up.

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde_json::{Value, json};

use crate::load::harness::{Harness, PER_CLIENT_PROC, Step};
use crate::load::plot;
use crate::load::scenario::{LoadArgs, LoadOpts};
use crate::load::servers::Servers;
use crate::proc::raise_nofile;
use crate::report::{done, machine};

// `soak`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Write the RSS-over-time plot here (SVG).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

/// Runs the soak and prints its figures, or the error (exit status 1).
pub fn run(a: &Args) {
    let mut o = a.load.opts();
    if a.load.duration == 10.0 {
        o.duration = Duration::from_secs(600);
    }
    done(a.load.json, soak(&o, a.plot.as_deref()))
}

/// `soak`: churn at a moderate rate for a long time, sampling RSS; exact at the end.
pub fn soak(o: &LoadOpts, plot_path: Option<&std::path::Path>) -> Result<Value, String> {
    let rate = o.rate.unwrap_or(10_000.0);
    raise_nofile(PER_CLIENT_PROC as u64 + 1000)?;
    let servers = Servers::headcount(o.nodes, o.workers, &o.tick, true)?;
    let mut harness = Harness::open(servers, o.workload())?;
    let start = Instant::now();
    let slice = Duration::from_secs(1).min(o.duration);
    let mut samples: Vec<(f64, u64)> = vec![(0.0, harness.servers.rss())];
    let mut steps = Vec::new();
    while start.elapsed() < o.duration {
        let s = harness.churn(rate, slice)?;
        samples.push((start.elapsed().as_secs_f64(), harness.servers.rss()));
        steps.push(s);
    }
    let exact_ms = harness.wait_exact(Duration::from_secs(10))?;
    // Flat after warm-up: the last fifth's RSS against the second fifth's.
    let n = samples.len();
    let warm = samples[(n / 5).max(1).min(n - 1)..(2 * n / 5).max(2).min(n)]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let end = samples[(4 * n / 5).min(n - 1)..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let growth = if warm > 0 {
        end as f64 / warm as f64 - 1.0
    } else {
        0.0
    };
    if let Some(p) = plot_path {
        plot::rss_over_time(p, &samples)?;
    }
    let errors: u64 = harness.setup_errors + steps.iter().map(|s| s.errors).sum::<u64>();
    let p99 = steps.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
    let mean = |f: fn(&Step) -> f64| steps.iter().map(f).sum::<f64>() / steps.len().max(1) as f64;
    let med = |f: fn(&Step) -> f64| {
        let mut x: Vec<f64> = steps.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(json!({
        "machine": machine(),
        "nodes": o.nodes,
        "connections": o.connections,
        "duration_s": o.duration.as_secs_f64(),
        "target_joins_per_s": rate,
        "churn_ops_per_s": mean(|s| s.churn_ops_per_s).round(),
        "join_p99_ms_worst_second": p99,
        "join_p50_ms": med(|s| s.p50_ms),
        "join_p99_ms": med(|s| s.p99_ms),
        "join_p999_ms": med(|s| s.p999_ms),
        "cpu_percent": (mean(|s| s.cpu_percent) * 10.0).round() / 10.0,
        "wire_bytes_per_node_per_s": mean(|s| s.wire_bytes_per_node_per_s).round(),
        "exact": exact_ms.is_some(),
        "time_to_exact_ms": exact_ms,
        "errors": errors,
        "rss_bytes": harness.servers.rss(),
        "rss_after_warmup_bytes": warm,
        "rss_at_end_bytes": end,
        "rss_growth_after_warmup": (growth * 10000.0).round() / 10000.0,
        "flat_within_1_percent": growth.abs() <= 0.01,
        "rss_samples": samples.iter().map(|s| json!([ (s.0 * 10.0).round() / 10.0, s.1 ])).collect::<Vec<_>>(),
    }))
}
