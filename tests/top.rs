//! `Engine::top`: the same answer as sorting every topic, ties by name, whatever `k`; computed
//! once per tick.

use headcount::Engine;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn top_matches_a_full_sort(counts in proptest::collection::vec(0u32..6, 1..300), ks in proptest::collection::vec(1usize..40, 1..6)) {
        let engine = Engine::builder().shards(1).start().unwrap();
        let mut shard = engine.shard().unwrap();
        let mut held = Vec::new();
        for (i, &c) in counts.iter().enumerate() {
            // Names whose order differs from their ids' order.
            let name = format!("t{:03}", (i * 7919) % 1000);
            for _ in 0..c {
                held.push(shard.join_by_name(&name));
            }
        }
        engine.sync();
        let mut all: Vec<(String, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (format!("t{:03}", (i * 7919) % 1000), u64::from(c)))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for k in ks {
            let want: Vec<_> = all.iter().take(k).cloned().collect();
            prop_assert_eq!(engine.top(k), want, "k = {}", k);
        }
        drop(held);
        engine.sync();
        prop_assert_eq!(engine.top(5), vec![]);
    }
}

#[test]
fn many_tied_topics() {
    let engine = Engine::builder().shards(1).start().unwrap();
    let mut shard = engine.shard().unwrap();
    let held: Vec<_> = (0..20_000)
        .map(|i| shard.join_by_name(&format!("room:{i:05}")))
        .collect();
    engine.sync();
    let top = engine.top(3);
    assert_eq!(
        top,
        vec![
            ("room:00000".to_string(), 1),
            ("room:00001".to_string(), 1),
            ("room:00002".to_string(), 1)
        ]
    );
    // The cached list serves a smaller k in the same tick, and a larger one is recomputed.
    assert_eq!(engine.top(1), top[..1].to_vec());
    assert_eq!(engine.top(10).len(), 10);
    drop(held);
}
