//! The reducer's tick for 1M topics with 0 %, 1 % and 100 % of them changed since the last
//! tick, at 2 and 16 shards.
//!
//! The engine never ticks by itself (`tick(1h)`); every topic is joined once (and stays joined,
//! so none is retired). Each measurement: every shard joins and leaves one "beat" topic and a
//! tick runs (so the reducer's watch lists hold what they hold on a busy server, not the previous
//! measurement's changes), then the given number of topics change by one each (a join, or the
//! leave of an earlier join), spread over the shards, all claimed by the benchmark thread; then
//! `engine.sync()` runs a tick, and the time measured is the engine's own `stats().last_tick`
//! (`iter_custom`, summed over the iterations). The setup is `headcount_perf::rig` (`perf/src/rig.rs`),
//! shared with `headcount-perf reducer`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

use headcount_perf::rig::ReducerRig;

/// `cargo test --benches` runs each benchmark once, unoptimized: fewer topics keep it quick.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn reducer_tick(c: &mut Criterion) {
    let topics = if test_mode() { 20_000 } else { 1_000_000 };
    let mut g = c.benchmark_group("reducer_tick_1m");
    // A tick is measured inside the engine, but each one also costs the changes and two syncs
    // of wall time: keep the measured time short and the samples few.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300));
    for shards in [2, 16] {
        let mut rig = ReducerRig::new(topics, shards);
        for (name, changed, measure_ms) in [
            ("0pct", 0, 50),
            ("1pct", topics / 100, 200),
            ("100pct", topics, 100),
        ] {
            g.measurement_time(Duration::from_millis(measure_ms));
            g.bench_function(BenchmarkId::new(format!("{shards}_shards"), name), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rig.tick_after_changing(changed)).sum())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, reducer_tick);
criterion_main!(benches);
