//! `headcount-perf overhead`: CPU per op of `headcount serve` counting against
//! `serve --no-count` (the same commands parsed and answered, nothing counted), same rate,
//! interleaved.

use clap::Args as ClapArgs;
use serde_json::{Value, json};

use crate::load::scenario::{LoadArgs, LoadOpts, run_target};
use crate::load::servers::Target;
use crate::report::{done, machine};

// `overhead`'s flags (no doc comment: clap would take it for the subcommand's help).
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Counting/not-counting pairs to run (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Runs the pairs and prints the ratio, or the error (exit status 1).
pub fn run(a: &Args) {
    done(a.load.json, overhead(&a.load.opts(), a.rounds))
}

/// `overhead`: CPU per op of `serve` counting vs `serve --no-count`, same rate, interleaved.
pub fn overhead(o: &LoadOpts, rounds: usize) -> Result<Value, String> {
    let rate = o.rate.unwrap_or(20_000.0);
    let o = LoadOpts {
        rate: Some(rate),
        ..o.clone()
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..rounds.max(1) {
        for counting in [true, false] {
            let v = run_target(&o, Target::Headcount, counting)?;
            let us = v["cpu_us_per_op"].as_f64().unwrap_or(0.0);
            o.say(format!("counting={counting}: {us:.3} µs CPU per op"));
            if counting { &mut on } else { &mut off }.push((us, v));
        }
    }
    let med = |v: &[(f64, Value)]| {
        let mut x: Vec<f64> = v.iter().map(|p| p.0).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (a, b) = (med(&on), med(&off));
    let mut v = on[on.len() / 2].1.clone();
    v["machine"] = machine();
    v["cpu_us_per_op_counting"] = json!((a * 1000.0).round() / 1000.0);
    v["cpu_us_per_op_not_counting"] = json!((b * 1000.0).round() / 1000.0);
    v["overhead_ratio"] = json!(if b > 0.0 {
        ((a / b) * 1000.0).round() / 1000.0
    } else {
        0.0
    });
    v["runs_counting"] = json!(on.iter().map(|p| p.0).collect::<Vec<_>>());
    v["runs_not_counting"] = json!(off.iter().map(|p| p.0).collect::<Vec<_>>());
    Ok(v)
}
