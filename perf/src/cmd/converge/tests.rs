//! `converge`'s tests: its figures on small runs.

use super::*;

#[test]
fn converge_reports_sane_figures() {
    let v = converge(3, 0.1, 2, 50, 500, Setup::default());
    for k in [
        "nodes",
        "loss",
        "seeds",
        "ticks_to_exact",
        "ticks_to_exact_median",
        "ticks_after_lossless",
        "ms_to_exact",
        "ms_to_exact_median",
        "bytes_per_node_per_tick",
        "idle_bytes_per_node_per_tick",
        "bytes_vs_lossless",
        "repair_bytes_per_node",
        "peak_egress_bytes_per_tick",
        "sim_seconds_per_seed",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["nodes"], 3);
    assert_eq!(v["seeds"], 2);
    assert_eq!(v["not_exact"], 0, "{v}");
    let ticks = v["ticks_to_exact"].as_u64().unwrap();
    assert!((1..=u64::from(MAX_TICKS)).contains(&ticks), "{v}");
    let ms = v["ms_to_exact"].as_u64().unwrap();
    assert!(ms <= ticks * 100 && ms > (ticks - 1) * 100, "{v}");
    assert!(v["ms_to_exact_median"].as_f64().unwrap() <= ms as f64);
    // Loss's own time is within the whole time.
    assert!(v["ticks_after_lossless"].as_u64().unwrap() <= ticks, "{v}");
    // At least a heartbeat per node per tick.
    let idle = v["idle_bytes_per_node_per_tick"].as_f64().unwrap();
    assert!(idle >= 80.0, "{v}");
    assert!(
        v["bytes_per_node_per_tick"].as_f64().unwrap() >= 80.0,
        "{v}"
    );
    // Loss never makes a burst cheaper; no limits, no capacity drops.
    assert!(
        v["bytes_vs_lossless_median"].as_f64().unwrap() >= 1.0,
        "{v}"
    );
    // At 10 % loss something was lost, and the repair sent at least what it forced.
    let floor = v["floor_vs_lossless"].as_f64().unwrap();
    assert!(floor > 1.0, "{v}");
    assert!(v["bytes_vs_floor_median"].as_f64().unwrap() >= 1.0, "{v}");
    let lossless = converge(3, 0.0, 1, 50, 500, Setup::default());
    assert_eq!(lossless["floor_vs_lossless"], Value::Null, "{lossless}");
    // A unicast fan-out's repair serves one receiver: the multicast floor does not apply.
    let mut setup = Setup::default();
    setup.cap.unicast_fanout = true;
    let unicast = converge(3, 0.1, 1, 50, 500, setup);
    assert_eq!(unicast["bytes_vs_floor"], Value::Null, "{unicast}");
    assert_eq!(
        (v["dropped_send"].as_f64(), v["dropped_recv"].as_f64()),
        (Some(0.0), Some(0.0))
    );
}

/// Zoned, a node holds its zone peers' tables and the other zones' sums: fewer entries than
/// a flat cluster's node, which holds every peer's table.
#[test]
fn zones_hold_fewer_peer_entries_than_a_flat_cluster() {
    let run = |zones| {
        converge(
            12,
            0.05,
            1,
            300,
            6_000,
            Setup {
                zones,
                ..Setup::default()
            },
        )
    };
    let (flat, zoned) = (run(0), run(3));
    assert_eq!(
        (zoned["zones"].as_u64(), zoned["not_exact"].as_u64()),
        (Some(3), Some(0))
    );
    let entries = |v: &Value| v["peer_entries_per_node"].as_f64().unwrap();
    assert!(
        entries(&zoned) > 0.0 && entries(&zoned) < entries(&flat),
        "{flat}\n{zoned}"
    );
}

#[test]
fn a_small_receive_buffer_shows_as_drops() {
    let cap = Capacity {
        ingress_bytes_per_sec: 500_000,
        recv_buffer: 4_000,
        ..Capacity::default()
    };
    let v = converge(
        4,
        0.0,
        1,
        2_000,
        20_000,
        Setup {
            cap,
            ..Setup::default()
        },
    );
    assert!(v["dropped_recv"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["recv_buffer"], 4_000);
}
