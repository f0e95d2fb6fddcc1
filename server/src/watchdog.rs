//! Says in the log what the engine only counts: datagrams refused for a reason an operator must
//! act on (a peer's clock off, another process with this node's id, a wrong key or version, the
//! caps), and peers whose tables are over this node's caps. Each condition is logged at most
//! once per [`QUIET`] (with the count since), so a flood cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use headcount::{Engine, Reject};

use crate::shutdown::Shutdown;

/// Least time between two log lines about the same condition.
const QUIET: Duration = Duration::from_secs(30);

/// What each reason means for the operator, for the reasons worth a warning.
fn advice(r: Reject) -> Option<&'static str> {
    Some(match r {
        Reject::Clock => {
            "sealed too far from this node's clock: a replay, or a peer whose clock is off \
             (keep the cluster's clocks in sync with NTP)"
        }
        Reject::NodeId => {
            "another process uses this node's id: give each server its own --node-id \
             (or listen address)"
        }
        Reject::Mac => "failed authentication: a peer with another cluster key, or forgery",
        Reject::Version => "another wire version: a peer runs an incompatible headcount",
        Reject::TooManyTopics => {
            "a peer's table is over this node's caps: its counts here are incomplete \
             (raise --max-topics)"
        }
        Reject::TooManyPeers => "more peers than this node tracks",
        Reject::Budget => {
            "resync requests refused: as many table replies as this node paces at once are \
             under way (raise max_repair_rate if peers ask often)"
        }
        _ => return None,
    })
}

/// Starts the watchdog thread; it stops soon after `stop` is triggered.
pub fn spawn(engine: Engine, stop: Shutdown) -> Option<std::thread::JoinHandle<()>> {
    engine.cluster_stats()?;
    std::thread::Builder::new()
        .name("headcount-watchdog".into())
        .spawn(move || run(&engine, &stop))
        .ok()
}

fn run(engine: &Engine, stop: &Shutdown) {
    let mut seen = [0u64; Reject::COUNT];
    let mut dns_failures_seen = 0u64;
    let mut logged: HashMap<String, Instant> = HashMap::new();
    let mut due = |key: String| {
        let now = Instant::now();
        match logged.get(&key) {
            Some(t) if now.duration_since(*t) < QUIET => false,
            _ => {
                logged.insert(key, now);
                true
            }
        }
    };
    while !stop.is_triggered() {
        for _ in 0..10 {
            if stop.is_triggered() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(cs) = engine.cluster_stats() else {
            return;
        };
        for (i, r) in Reject::ALL.iter().enumerate() {
            let n = cs.protocol.rejected[i];
            let Some(what) = advice(*r) else { continue };
            if n > seen[i] && due(format!("reject-{}", r.name())) {
                tracing::warn!(
                    reason = r.name(),
                    datagrams = n - seen[i],
                    total = n,
                    "cluster datagrams refused: {what}"
                );
                seen[i] = n;
            }
        }
        if cs.dns_failures > dns_failures_seen && due("dns".into()) {
            tracing::warn!(
                failures = cs.dns_failures - dns_failures_seen,
                total = cs.dns_failures,
                error = engine.dns_error().unwrap_or_default(),
                "resolving --peers-dns failed: keeping the addresses resolved before"
            );
            dns_failures_seen = cs.dns_failures;
        }
        for p in engine.nodes() {
            if p.alive && p.over_cap && due(format!("over-cap-{:016x}", p.node)) {
                tracing::warn!(
                    peer = format!("{:016x}", p.node),
                    addr = %p.addr,
                    topics_here = p.topics,
                    "a peer has more topics than this node's --max-topics takes: its counts \
                     here are incomplete and TOTAL is too low; asking it again with backoff"
                );
            }
        }
    }
}
