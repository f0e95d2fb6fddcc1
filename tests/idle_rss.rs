//! Idle memory: a fresh engine's resident memory must not grow with `max_topics`. Every
//! per-topic table is allocated zeroed, which the OS maps lazily, so a table sized for millions
//! of topics costs address space, and resident memory only for the pages topics touch.
//!
//! Each measurement runs in a child process (this test binary re-run with `--exact`), so that
//! memory one engine freed and the allocator kept cannot hide or inflate the next one's.
//! Print the figures with `cargo test -p headcount --test idle_rss -- --nocapture`.

use std::process::Command;

use headcount::Engine;

/// Set in the child: the `max_topics` to start an engine with.
const CHILD_ENV: &str = "HEADCOUNT_IDLE_RSS_MAX_TOPICS";
/// Set in the child (to anything): start the engine in a cluster (unicast on loopback, no
/// peers), so the cluster's per-topic tables are measured too.
const CLUSTER_ENV: &str = "HEADCOUNT_IDLE_RSS_CLUSTER";

/// The 2^22-topic engine's resident growth must stay under this (measured: about 0.5 MB). Writing
/// the reducer's per-topic state at start (24 bytes a topic, as before) took 101 MB at 2^22; any
/// table of 2 bytes a topic or more written at start fails it.
const BOUND: u64 = 8 << 20;

/// The system's page size, from the auxiliary vector (`AT_PAGESZ`).
fn page_size() -> Option<u64> {
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    const W: usize = std::mem::size_of::<usize>();
    for pair in auxv.chunks_exact(2 * W) {
        let key = usize::from_ne_bytes(pair[..W].try_into().ok()?);
        let value = usize::from_ne_bytes(pair[W..].try_into().ok()?);
        if key == 6 {
            return Some(value as u64);
        }
        if key == 0 {
            break;
        }
    }
    None
}

/// This process's resident memory in bytes (`/proc/self/statm`, second field).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size()?)
}

/// In the child: starts an engine with `max_topics` and prints its resident growth.
#[test]
fn idle_rss_child() {
    let Ok(n) = std::env::var(CHILD_ENV) else {
        return; // only the parent's re-run measures
    };
    let n: usize = n.parse().expect("max_topics");
    let before = rss().expect("statm");
    let mut b = Engine::builder().max_topics(n);
    if std::env::var_os(CLUSTER_ENV).is_some() {
        b = b.unicast("127.0.0.1:0".parse().unwrap(), []);
    }
    let engine = b.start().expect("start");
    engine.sync(); // the engine thread has built its reducer and ticked
    engine.sync();
    let after = rss().expect("statm");
    println!("IDLE_RSS {n} {before} {after}");
    engine.shutdown();
}

/// Runs [`idle_rss_child`] in a new process: `(rss before start, rss after)` in bytes.
fn measure(max_topics: usize, cluster: bool) -> (u64, u64) {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--exact",
        "idle_rss_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, max_topics.to_string());
    if cluster {
        cmd.env(CLUSTER_ENV, "1");
    }
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("IDLE_RSS ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no figure in the child's output: {stdout}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v[0], max_topics as u64);
    (v[1], v[2])
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

#[test]
fn idle_engine_rss_does_not_grow_with_max_topics() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if rss().is_none() {
        println!("skipped: /proc/self/statm (or the page size in /proc/self/auxv) is unavailable");
        return;
    }
    for cluster in [false, true] {
        let what = if cluster {
            "clustered engine"
        } else {
            "engine"
        };
        let mut growth = Vec::new();
        for n in [4096, 1 << 20, 1 << 22] {
            let (before, after) = measure(n, cluster);
            let g = after.saturating_sub(before);
            println!(
                "{what}, max_topics {n:>8}: process RSS {:6.1} MB after start ({:6.1} MB \
                 before), engine {:6.1} MB",
                mb(after),
                mb(before),
                mb(g)
            );
            growth.push(g);
        }
        let per_million = (growth[2] as f64 - growth[0] as f64) / ((1 << 22) - 4096) as f64 * 1e6;
        println!(
            "idle {what}: {:.2} MB per 1M max_topics (2^22 vs 4096)",
            per_million / 1e6
        );
        assert!(
            growth[2] < BOUND,
            "a fresh {what} with max_topics 2^22 grew the RSS by {:.1} MB (bound {:.1} MB): a \
             per-topic table is written at start",
            mb(growth[2]),
            mb(BOUND)
        );
    }
}
