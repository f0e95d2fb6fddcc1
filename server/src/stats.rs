//! Every statistic of a running server, in one walk that every consumer shares: `INFO` renders
//! it as Redis-style sections (`info.rs`), the metrics endpoint as Prometheus text
//! (`metrics.rs`). Each statistic is declared once, here, with its `INFO` key and its metric
//! (either may be absent), so the two can never drift apart.

use std::time::Duration;

use headcount::{Reject, TICK_BUCKETS};

use crate::shared::Shared;

/// An `INFO` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Server,
    Clients,
    Presence,
    Engine,
    Cluster,
    /// The busiest topics' counts: metrics only.
    Topics,
}

impl Section {
    /// The name `INFO section` takes.
    pub fn name(self) -> &'static str {
        match self {
            Section::Server => "server",
            Section::Clients => "clients",
            Section::Presence => "presence",
            Section::Engine => "engine",
            Section::Cluster => "cluster",
            Section::Topics => "topics",
        }
    }

    /// The heading `INFO` prints.
    pub fn title(self) -> &'static str {
        match self {
            Section::Server => "Server",
            Section::Clients => "Clients",
            Section::Presence => "Presence",
            Section::Engine => "Engine",
            Section::Cluster => "Cluster",
            Section::Topics => "Topics",
        }
    }
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How a statistic is exported to Prometheus.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// One label (`reason`, `topic`): the series of one metric family.
    pub label: Option<(&'static str, &'a str)>,
}

/// A statistic's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(u64),
    /// An id, shown as 16 hex digits.
    Hex(u64),
    Text(&'a str),
    /// Cumulative buckets are the renderer's business: `counts[i]` is the number of
    /// observations in bucket `i` alone (the last one: above every bound).
    Histogram {
        bounds: &'a [Duration],
        counts: &'a [u64],
        sum: f64,
    },
}

/// One statistic.
#[derive(Debug, Clone, Copy)]
pub struct Stat<'a> {
    /// Its `INFO` key (`None`: not in `INFO`).
    pub info: Option<&'a str>,
    /// Its metric (`None`: not exported).
    pub metric: Option<Metric<'a>>,
    pub value: Value<'a>,
}

/// What walks the statistics: told each section, then each of its statistics.
pub trait Visitor {
    /// A section starts; false skips it (nothing of it is even computed).
    fn section(&mut self, s: Section) -> bool;
    fn stat(&mut self, s: Stat<'_>);
    /// A family of labelled series starts (told even when it has none).
    fn family(&mut self, _: &Metric<'_>) {}
}

/// In `INFO` only.
fn info<'a>(key: &'a str, value: Value<'a>) -> Stat<'a> {
    Stat {
        info: Some(key),
        metric: None,
        value,
    }
}

/// In both: an `INFO` key and a metric.
fn both(
    key: &'static str,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    v: u64,
) -> Stat<'static> {
    Stat {
        info: Some(key),
        ..metric(name, kind, help, v)
    }
}

/// A metric only.
fn metric(name: &'static str, kind: Kind, help: &'static str, v: u64) -> Stat<'static> {
    Stat {
        info: None,
        metric: Some(Metric {
            name,
            kind,
            help,
            label: None,
        }),
        value: Value::Int(v),
    }
}

use Kind::{Counter, Gauge};

/// Walks every statistic of the server, and the counts of its `top` busiest topics.
pub fn visit(shared: &Shared, top: usize, v: &mut dyn Visitor) {
    let engine = &shared.engine;
    let w = shared.worker_totals();
    let st = engine.stats();
    let node_id = engine.node_id().unwrap_or(0);
    if v.section(Section::Server) {
        for s in [
            info("headcount_version", Value::Text(env!("CARGO_PKG_VERSION"))),
            info("redis_version", Value::Text("7.0.0")),
            info("node_id", Value::Hex(node_id)),
            info("process_id", Value::Int(u64::from(std::process::id()))),
            info("tcp_port", Value::Int(u64::from(shared.listen.port()))),
            info(
                "uptime_in_seconds",
                Value::Int(shared.started.elapsed().as_secs()),
            ),
            info("workers", Value::Int(shared.workers as u64)),
            info(
                "tick_ms",
                Value::Int(engine.tick_interval().as_millis() as u64),
            ),
        ] {
            v.stat(s);
        }
    }
    if v.section(Section::Clients) {
        let l = &shared.limits;
        for s in [
            both(
                "connected_clients",
                "headcount_connections",
                Gauge,
                "Client connections open now.",
                w.connections,
            ),
            both(
                "total_connections_received",
                "headcount_connections_accepted_total",
                Counter,
                "Client connections accepted.",
                w.accepted,
            ),
            both(
                "rejected_connections",
                "headcount_connections_rejected_total",
                Counter,
                "Client connections refused at max_connections.",
                w.rejected,
            ),
            both(
                "protocol_errors",
                "headcount_protocol_errors_total",
                Counter,
                "Connections closed for malformed requests or limits.",
                w.protocol_errors,
            ),
            info("max_clients", Value::Int(l.max_connections as u64)),
            both(
                "client_buffer_bytes",
                "headcount_client_buffer_bytes",
                Gauge,
                "Bytes held now in client connections' buffers (partial requests and unsent replies).",
                shared.client_memory() as u64,
            ),
            both(
                "max_client_memory",
                "headcount_client_buffer_limit_bytes",
                Gauge,
                "max_client_memory: past it, clients with unsent replies are not read and the largest holders are closed.",
                l.max_client_memory as u64,
            ),
            both(
                "clients_paused_for_output",
                "headcount_clients_paused_for_output",
                Gauge,
                "Client connections not read now because their unsent replies reached the pause.",
                w.paused,
            ),
            both(
                "output_limit_closes",
                "headcount_output_limit_closes_total",
                Counter,
                "Client connections closed for unsent replies past max_output (or the smaller cap before AUTH).",
                w.output_limit_closes,
            ),
            both(
                "memory_limit_closes",
                "headcount_memory_limit_closes_total",
                Counter,
                "Client connections closed because all clients' buffers were over max_client_memory.",
                w.memory_limit_closes,
            ),
            info("max_output", Value::Int(l.max_output as u64)),
        ] {
            v.stat(s);
        }
    }
    if v.section(Section::Presence) {
        for s in [
            info("presences", Value::Int(w.presences)),
            both(
                "local_total",
                "headcount_local_presences",
                Gauge,
                "Presences counted on this node.",
                engine.local_total(),
            ),
            both(
                "cluster_total",
                "headcount_cluster_presences",
                Gauge,
                "Presences counted over the whole cluster.",
                engine.total(),
            ),
            both(
                "topics",
                "headcount_topics",
                Gauge,
                "Topics interned now (local and remote).",
                st.topics as u64,
            ),
            info("topic_capacity", Value::Int(st.topic_capacity as u64)),
            both(
                "commands_processed",
                "headcount_commands_total",
                Counter,
                "Commands answered.",
                w.commands,
            ),
        ] {
            v.stat(s);
        }
    }
    if v.section(Section::Engine) {
        v.stat(both(
            "ticks",
            "headcount_ticks_total",
            Counter,
            "Reducer ticks run.",
            st.ticks,
        ));
        v.stat(Stat {
            info: None,
            metric: Some(Metric {
                name: "headcount_tick_duration_seconds",
                kind: Kind::Histogram,
                help: "How long each reducer tick took.",
                label: None,
            }),
            value: Value::Histogram {
                bounds: &TICK_BUCKETS,
                counts: &st.tick_histogram,
                sum: st.tick_time.as_secs_f64(),
            },
        });
        for (key, n) in [
            ("last_tick_us", st.last_tick.as_micros() as u64),
            ("max_tick_us", st.max_tick.as_micros() as u64),
            ("changes", st.changes),
            ("retired", st.retired),
            ("rescans", st.rescans),
            ("shared_ops", st.shared_ops),
            ("stale_joins", st.stale_joins),
        ] {
            v.stat(info(key, Value::Int(n)));
        }
    }
    if v.section(Section::Cluster) {
        let cluster = engine.cluster_stats();
        v.stat(info(
            "cluster_enabled",
            Value::Int(u64::from(cluster.is_some())),
        ));
        if let Some(c) = cluster {
            let p = &c.protocol;
            for s in [
                info("peers", Value::Int(engine.nodes().len() as u64)),
                both(
                    "peers_alive",
                    "headcount_peers_alive",
                    Gauge,
                    "Peers heard from within dead-after.",
                    c.peers_alive as u64,
                ),
                both(
                    "peers_converged",
                    "headcount_peers_converged",
                    Gauge,
                    "Live peers whose counts here match what they declared.",
                    c.peers_converged as u64,
                ),
                metric(
                    "headcount_converged",
                    Gauge,
                    "1 when every live peer is converged.",
                    u64::from(c.peers_alive == c.peers_converged),
                ),
                both(
                    "datagrams_sent",
                    "headcount_datagrams_sent_total",
                    Counter,
                    "Cluster datagrams sent.",
                    p.sent,
                ),
                both(
                    "bytes_sent",
                    "headcount_datagram_bytes_sent_total",
                    Counter,
                    "Cluster datagram bytes sent.",
                    p.bytes_sent,
                ),
                both(
                    "datagrams_received",
                    "headcount_datagrams_received_total",
                    Counter,
                    "Cluster datagrams received and accepted.",
                    p.received,
                ),
                info("datagrams_rejected", Value::Int(p.rejected_total())),
                both(
                    "resync_requests",
                    "headcount_resync_requests_total",
                    Counter,
                    "Resyncs asked of peers.",
                    p.resync_requests,
                ),
                info("resync_replies", Value::Int(p.resync_replies)),
                info("peers_died", Value::Int(p.peers_died)),
                info("send_errors", Value::Int(c.send_errors)),
                both(
                    "members_configured",
                    "headcount_members_configured",
                    Gauge,
                    "Unicast addresses given at start (--peers).",
                    c.members_configured as u64,
                ),
                both(
                    "members_dns",
                    "headcount_members_dns",
                    Gauge,
                    "Unicast addresses resolved from DNS (--peers-dns).",
                    c.members_dns as u64,
                ),
                both(
                    "members_learned",
                    "headcount_members_learned",
                    Gauge,
                    "Unicast addresses learned from authenticated datagrams and gossip.",
                    c.members_learned as u64,
                ),
                info("members_dropped", Value::Int(c.members_dropped)),
                both(
                    "dns_resolutions",
                    "headcount_dns_resolutions_total",
                    Counter,
                    "Successful resolutions of --peers-dns names.",
                    c.dns_resolutions,
                ),
                both(
                    "dns_failures",
                    "headcount_dns_failures_total",
                    Counter,
                    "Failed resolutions of --peers-dns names (the last known addresses were kept).",
                    c.dns_failures,
                ),
                info("recv_errors", Value::Int(c.recv_errors)),
                info("transport_dropped_out", Value::Int(c.transport_dropped_out)),
                info("transport_dropped_in", Value::Int(c.transport_dropped_in)),
                both(
                    "peers_over_cap",
                    "headcount_peers_over_cap",
                    Gauge,
                    "Live peers whose tables are over this node's max-topics (counted incompletely).",
                    c.peers_over_cap as u64,
                ),
                info("observers", Value::Int(p.observers)),
                both(
                    "backlog",
                    "headcount_cluster_backlog",
                    Gauge,
                    "Local count changes not sent to peers yet.",
                    c.backlog,
                ),
                both(
                    "repair_bytes_sent",
                    "headcount_repair_bytes_sent_total",
                    Counter,
                    "Bytes sent answering peers' resync requests and nacks.",
                    p.repair_bytes,
                ),
                both(
                    "nacks_sent",
                    "headcount_nacks_sent_total",
                    Counter,
                    "Nacks sent: datagrams of peers this node missed, asked for again.",
                    p.nacks_sent,
                ),
                both(
                    "nacks_suppressed",
                    "headcount_nacks_suppressed_total",
                    Counter,
                    "Nacks held back because another node had asked for the same.",
                    p.nacks_suppressed,
                ),
                both(
                    "repairs_sent",
                    "headcount_repairs_sent_total",
                    Counter,
                    "Repair datagrams sent in answer to peers' nacks.",
                    p.repairs_sent,
                ),
                both(
                    "digest_requests",
                    "headcount_digest_requests_total",
                    Counter,
                    "Digest requests sent: copies of peers' tables reconciled by hash range.",
                    p.digest_requests,
                ),
                both(
                    "digest_replies",
                    "headcount_digest_replies_total",
                    Counter,
                    "Digest replies sent: digests of hash ranges of this node's table, for peers reconciling.",
                    p.digest_replies,
                ),
                both(
                    "relayed",
                    "headcount_relayed_total",
                    Counter,
                    "Copies of peers' datagrams forwarded along their relay trees (unicast).",
                    p.relayed,
                ),
                info("table_requests", Value::Int(p.table_requests)),
                info("node_id", Value::Hex(node_id)),
            ] {
                v.stat(s);
            }
            for (i, r) in Reject::ALL.iter().enumerate() {
                let key = format!("rejected_{}", r.name());
                v.stat(Stat {
                    info: Some(&key),
                    metric: Some(Metric {
                        name: "headcount_datagrams_rejected_total",
                        kind: Counter,
                        help: "Cluster datagrams dropped, by reason.",
                        label: Some(("reason", r.name())),
                    }),
                    value: Value::Int(p.rejected[i]),
                });
            }
        }
    }
    if top > 0 && v.section(Section::Topics) {
        let family = Metric {
            name: "headcount_topic_presences",
            kind: Gauge,
            help: "Cluster-wide count of the busiest topics.",
            label: None,
        };
        v.family(&family);
        for (name, c) in engine.top(top) {
            v.stat(Stat {
                info: None,
                metric: Some(Metric {
                    label: Some(("topic", &name)),
                    ..family
                }),
                value: Value::Int(c),
            });
        }
    }
}
