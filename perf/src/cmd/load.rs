//! `headcount-perf load`: the seed's scenario end to end against `headcount serve` alone — N
//! nodes, C client connections holding 1–3 presences in Zipf topics, churn at `--rate` joins/s
//! (or a search for the highest rate with p99 ≤ 10 ms), then every node's counts checked.

use serde_json::{Value, json};

use crate::load::scenario::{LoadArgs, LoadOpts, run_target};
use crate::load::servers::Target;
use crate::report::{done, machine};

/// Runs the scenario and prints its figures, or the error (exit status 1).
pub fn run(a: &LoadArgs) {
    done(a.json, load(&a.opts()))
}

/// `load`: headcount alone.
pub fn load(o: &LoadOpts) -> Result<Value, String> {
    let mut v = run_target(o, Target::Headcount, true)?;
    v["machine"] = machine();
    v["nodes"] = json!(o.nodes);
    Ok(v)
}
