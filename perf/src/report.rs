//! Reporting, shared by the subcommands: printing a result (one JSON line with `--json`, pretty
//! JSON without), rounding, the median, and a description of the machine.

use serde_json::{Value, json};

/// Prints `v`: one line with `json`, indented otherwise.
pub fn print(json: bool, v: &Value) {
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// Prints a harness result, or its error (exit status 1).
pub fn done(json: bool, r: Result<Value, String>) {
    match r {
        Ok(v) => print(json, &v),
        Err(e) => {
            eprintln!("headcount-perf: {e}");
            std::process::exit(1);
        }
    }
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// The median of `v` (the mean of the two middle values for an even length; 0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The machine the figures come from: CPU count and model (the load reports carry it).
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "note": "the harness and every server share this machine",
    })
}
