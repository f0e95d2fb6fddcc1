//! `headcount-perf baseline-redis`: the `load` workload against headcount, redis-server with
//! INCR/DECR per topic, and redis-server with a set per topic; ratios of the sustained churn,
//! and p99 and CPU per op at the highest rate all three sustained.

use clap::Args as ClapArgs;
use serde_json::{Value, json};

use crate::load::plot;
use crate::load::scenario::{LoadArgs, LoadOpts, run_target};
use crate::load::servers::Target;
use crate::report::{done, machine};

// `baseline-redis`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Write the p99-vs-churn plot here (SVG).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

/// Runs the three targets and prints the comparison, or the error (exit status 1).
pub fn run(a: &Args) {
    done(a.load.json, baseline(&a.load.opts(), a.plot.as_deref()))
}

/// `baseline-redis`: headcount, Redis INCR/DECR and Redis sets, same workload.
pub fn baseline(o: &LoadOpts, plot_path: Option<&std::path::Path>) -> Result<Value, String> {
    let hc = run_target(o, Target::Headcount, true)?;
    let incr = run_target(o, Target::RedisIncr, true)?;
    let set = run_target(o, Target::RedisSet, true)?;
    let rate = |v: &Value| v["joins_per_s"].as_f64().unwrap_or(0.0);
    let max = |v: &Value| v["max_sustained_joins_per_s"].as_f64().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let (vs_incr, vs_set) = if o.rate.is_some() {
        (ratio(rate(&hc), rate(&incr)), ratio(rate(&hc), rate(&set)))
    } else {
        (ratio(max(&hc), max(&incr)), ratio(max(&hc), max(&set)))
    };
    if let Some(p) = plot_path {
        plot::latency_vs_rate(p, &[&hc, &incr, &set])?;
    }
    // p99 and CPU per op at the highest ladder rate every target ran and sustained.
    let sustained_rates = |v: &Value| -> Vec<f64> {
        v["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter(|st| {
                        st["join_p99_ms"].as_f64().unwrap_or(f64::MAX) <= 10.0
                            && st["errors"].as_u64() == Some(0)
                    })
                    .filter_map(|st| st["target_joins_per_s"].as_f64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b, c) = (
        sustained_rates(&hc),
        sustained_rates(&incr),
        sustained_rates(&set),
    );
    let common = a
        .iter()
        .copied()
        .filter(|r| b.contains(r) && c.contains(r))
        .fold(0.0, f64::max);
    let at = |v: &Value| {
        v["steps"].as_array().and_then(|s| {
            s.iter()
                .rfind(|st| st["target_joins_per_s"].as_f64() == Some(common))
                .map(|st| json!({"join_p99_ms": st["join_p99_ms"], "cpu_us_per_op": st["cpu_us_per_op"], "cpu_percent": st["cpu_percent"]}))
        })
    };
    let at_common = json!({
        "joins_per_s": common,
        "headcount": at(&hc),
        "redis_incr": at(&incr),
        "redis_set": at(&set),
    });
    let mut v = hc.clone();
    v["at_common_rate"] = at_common;
    v["machine"] = machine();
    v["nodes"] = json!(o.nodes);
    v["redis_note"] =
        json!("redis-server is one process on one node; headcount runs --nodes processes");
    v["redis_incr_churn_ops_per_s"] = incr["churn_ops_per_s"].clone();
    v["redis_set_churn_ops_per_s"] = set["churn_ops_per_s"].clone();
    v["redis_incr"] = incr;
    v["redis_set"] = set;
    v["vs_incr"] = json!(vs_incr);
    v["vs_set"] = json!(vs_set);
    Ok(v)
}
