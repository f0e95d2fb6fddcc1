//! The hot path, side by side with what a user would otherwise write.
//!
//! - `join_leave_{1k,1m}`: per op (a join, or a leave: one iteration here is half a join + drop
//!   pair, and every time is **per op per thread**), topics visited in a random order (a
//!   different one per thread), at 1 and 2 threads:
//!   - `headcount`: `shard.join(topic)` through a pre-resolved `Topic`, then drop the
//!     `Presence`; each thread has its own claimed `Shard` (`Engine::builder().shards(2)`, the
//!     default 100 ms tick, a dirty ring large enough for every topic);
//!   - `atomic`: one shared `AtomicI64`, `fetch_add(1)` then `fetch_sub(1)`;
//!   - `mutex_hashmap`: `Mutex<HashMap<String, i64>>`, increment then decrement by `&str` key;
//!   - `dashmap`: `DashMap<String, i64>`, the same.
//! - `join_by_name_1k`: one thread, per op: `shard.join_by_name(name)` of an existing topic
//!   (the leaves are done outside the timed region), against locking the `Mutex<HashMap>` or
//!   `DashMap::get_mut` by name and incrementing.
//!
//! Two-thread runs use a persistent pair of threads that start each measurement together on a
//! barrier and time themselves (`iter_custom`); a measurement takes as long as the slower one.
//! The workloads are `headcount_perf::rig` (`perf/src/rig.rs`), shared with `headcount-perf hotpath`.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};

use headcount_perf::rig::{Hotpath, Team, no_hook};

/// `cargo test --benches` runs each benchmark once, unoptimized: a smaller "1m" keeps it quick.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Benchmarks one team. `ops_per_iter`: ops in one iteration of its workers (2 for a join +
/// leave pair), so that criterion reports time per op.
fn bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    ops_per_iter: u32,
    team: Team,
) {
    g.bench_function(BenchmarkId::new(name, format!("{threads}t")), |b| {
        b.iter_custom(|iters| team.run(iters) / ops_per_iter)
    });
}

fn join_leave(c: &mut Criterion) {
    let big = if test_mode() { 20_000 } else { 1_000_000 };
    for (label, topics) in [("1k", 1_000), ("1m", big)] {
        let hp = Hotpath::new(topics, 2, 2, Duration::from_millis(100), None);
        let mut g = c.benchmark_group(format!("join_leave_{label}"));
        g.throughput(Throughput::Elements(1));
        for threads in [1, 2] {
            bench(
                &mut g,
                "headcount",
                threads,
                2,
                hp.headcount(threads, no_hook),
            );
            bench(&mut g, "atomic", threads, 2, hp.atomic(threads));
            bench(&mut g, "mutex_hashmap", threads, 2, hp.mutex(threads));
            bench(&mut g, "dashmap", threads, 2, hp.dashmap(threads));
        }
        g.finish();
    }
}

fn join_by_name(c: &mut Criterion) {
    let hp = Hotpath::new(1_000, 2, 1, Duration::from_millis(100), None);
    let mut g = c.benchmark_group("join_by_name_1k");
    g.throughput(Throughput::Elements(1));
    bench(&mut g, "headcount", 1, 1, hp.headcount_by_name());
    bench(&mut g, "mutex_hashmap", 1, 1, hp.mutex_by_name());
    bench(&mut g, "dashmap", 1, 1, hp.dashmap_by_name());
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
}

criterion_group! {
    name = benches;
    config = config();
    targets = join_leave, join_by_name
}
criterion_main!(benches);
