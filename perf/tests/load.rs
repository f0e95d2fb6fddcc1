//! The load harness at small scale, end to end: two real `headcount serve` nodes, 2,000 client
//! connections churning for a few seconds, then every node's count of every topic checked
//! against the harness's ledger. Asserts exactness and zero errors, not speed.

use std::process::Command;

/// `headcount-perf` finds the `headcount` binary beside itself; build it if this test was run
/// without the rest of the workspace.
fn ensure_headcount_bin() {
    let perf = std::path::Path::new(env!("CARGO_BIN_EXE_headcount-perf"));
    if perf.with_file_name("headcount").is_file() {
        return;
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "headcount-server", "--bin", "headcount"]);
    if perf
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release")
    {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build the headcount binary");
    assert!(status.success());
}

#[test]
fn small_load_is_exact_with_no_errors() {
    ensure_headcount_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_headcount-perf"))
        .args([
            "load",
            "--nodes",
            "2",
            "--connections",
            "2000",
            "--topics",
            "500",
            "--rate",
            "2000",
            "--duration",
            "5",
            "--json",
        ])
        .output()
        .expect("run headcount-perf load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "load failed: {stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["exact"], true, "{v}\n{stderr}");
    assert_eq!(v["errors"], 0, "{v}\n{stderr}");
    assert!(v["presences"].as_i64().unwrap_or(0) >= 2000, "{v}");
    assert!(v["joins_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    for key in [
        "time_to_exact_ms",
        "churn_ops_per_s",
        "join_p50_ms",
        "join_p99_ms",
        "join_p999_ms",
        "cpu_percent",
        "rss_bytes",
        "wire_bytes_per_node_per_s",
    ] {
        assert!(v[key].is_number(), "{key} in {v}");
    }
}
