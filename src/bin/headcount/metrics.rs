//! `serve --metrics ADDR`: the Prometheus text format (version 0.0.4) over plain HTTP/1.1, on a
//! thread of its own so a slow scraper never touches a worker.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use headcount::{Reject, TICK_BUCKETS};

use crate::config::ConfigError;
use crate::serve::Shared;

/// The running endpoint; dropping it stops accepting (without waiting for a slow scraper).
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept; the thread exits on its own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Scrapes answered at once; more are refused (closed) until one finishes.
const MAX_SCRAPES: usize = 8;
/// The whole time a scraper gets to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// Binds `addr` and serves scrapes until the returned endpoint is dropped. Each scrape gets a
/// thread of its own and a deadline, so a slow client delays no one.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>, top: usize) -> Result<Endpoint, ConfigError> {
    let listener =
        TcpListener::bind(addr).map_err(|e| ConfigError(format!("--metrics {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ConfigError(format!("--metrics {addr}: {e}")))?;
    tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("headcount-metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let c = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            // Out of descriptors or similar: back off instead of spinning.
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if busy.fetch_add(1, Ordering::Relaxed) >= MAX_SCRAPES {
                        busy.fetch_sub(1, Ordering::Relaxed);
                        continue; // dropped: closed
                    }
                    let (shared, busy2) = (shared.clone(), busy.clone());
                    let spawned = std::thread::Builder::new()
                        .name("headcount-scrape".into())
                        .spawn(move || {
                            let _ = answer(c, &shared, top);
                            busy2.fetch_sub(1, Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| ConfigError(format!("--metrics: {e}")))?;
    }
    Ok(Endpoint { addr: bound, stop })
}

fn answer(mut c: TcpStream, shared: &Shared, top: usize) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        if std::time::Instant::now() >= deadline {
            return Ok(());
        }
        c.set_read_timeout(Some(left()))?;
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    c.set_write_timeout(Some(left()))?;
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = if method != b"GET" && method != b"HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path == b"/metrics" || path == b"/" {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(shared, top),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    if method != b"HEAD" {
        c.write_all(body.as_bytes())?;
    }
    c.flush()
}

/// A label value, escaped as the text format wants (`\`, `"` and newlines).
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }
}

/// The whole scrape.
pub fn render(shared: &Shared, top: usize) -> String {
    let engine = &shared.engine;
    let st = engine.stats();
    let w = shared.worker_totals();
    let mut o = Out(String::with_capacity(8192));
    o.one(
        "headcount_ticks_total",
        "counter",
        "Reducer ticks run.",
        st.ticks,
    );
    o.head(
        "headcount_tick_duration_seconds",
        "histogram",
        "How long each reducer tick took.",
    );
    let mut cumulative = 0;
    for (i, b) in TICK_BUCKETS.iter().enumerate() {
        cumulative += st.tick_histogram[i];
        let _ = writeln!(
            o.0,
            "headcount_tick_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
            b.as_secs_f64()
        );
    }
    cumulative += st.tick_histogram[TICK_BUCKETS.len()];
    let _ = writeln!(
        o.0,
        "headcount_tick_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nheadcount_tick_duration_seconds_sum {}\nheadcount_tick_duration_seconds_count {cumulative}",
        st.tick_time.as_secs_f64()
    );
    o.one(
        "headcount_topics",
        "gauge",
        "Topics interned now (local and remote).",
        st.topics,
    );
    o.one(
        "headcount_local_presences",
        "gauge",
        "Presences counted on this node.",
        engine.local_total(),
    );
    o.one(
        "headcount_cluster_presences",
        "gauge",
        "Presences counted over the whole cluster.",
        engine.total(),
    );
    o.one(
        "headcount_connections",
        "gauge",
        "Client connections open now.",
        w.connections,
    );
    o.one(
        "headcount_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        w.accepted,
    );
    o.one(
        "headcount_connections_rejected_total",
        "counter",
        "Client connections refused at max_connections.",
        w.rejected,
    );
    o.one(
        "headcount_client_buffer_bytes",
        "gauge",
        "Bytes held now in client connections' buffers (partial requests and unsent replies).",
        shared.client_memory(),
    );
    o.one(
        "headcount_client_buffer_limit_bytes",
        "gauge",
        "max_client_memory: past it, clients with unsent replies are not read and the largest holders are closed.",
        shared.limits.max_client_memory,
    );
    o.one(
        "headcount_clients_paused_for_output",
        "gauge",
        "Client connections not read now because their unsent replies reached the pause.",
        w.paused,
    );
    o.one(
        "headcount_output_limit_closes_total",
        "counter",
        "Client connections closed for unsent replies past max_output (or the smaller cap before AUTH).",
        w.output_limit_closes,
    );
    o.one(
        "headcount_memory_limit_closes_total",
        "counter",
        "Client connections closed because all clients' buffers were over max_client_memory.",
        w.memory_limit_closes,
    );
    o.one(
        "headcount_commands_total",
        "counter",
        "Commands answered.",
        w.commands,
    );
    o.one(
        "headcount_protocol_errors_total",
        "counter",
        "Connections closed for malformed requests or limits.",
        w.protocol_errors,
    );
    if let Some(c) = engine.cluster_stats() {
        let p = &c.protocol;
        o.one(
            "headcount_datagrams_sent_total",
            "counter",
            "Cluster datagrams sent.",
            p.sent,
        );
        o.one(
            "headcount_datagram_bytes_sent_total",
            "counter",
            "Cluster datagram bytes sent.",
            p.bytes_sent,
        );
        o.one(
            "headcount_datagrams_received_total",
            "counter",
            "Cluster datagrams received and accepted.",
            p.received,
        );
        o.head(
            "headcount_datagrams_rejected_total",
            "counter",
            "Cluster datagrams dropped, by reason.",
        );
        for (i, r) in Reject::ALL.iter().enumerate() {
            let _ = writeln!(
                o.0,
                "headcount_datagrams_rejected_total{{reason=\"{}\"}} {}",
                r.name(),
                p.rejected[i]
            );
        }
        o.one(
            "headcount_resync_requests_total",
            "counter",
            "Resyncs asked of peers.",
            p.resync_requests,
        );
        o.one(
            "headcount_peers_alive",
            "gauge",
            "Peers heard from within dead-after.",
            c.peers_alive,
        );
        o.one(
            "headcount_peers_converged",
            "gauge",
            "Live peers whose counts here match what they declared.",
            c.peers_converged,
        );
        o.one(
            "headcount_converged",
            "gauge",
            "1 when every live peer is converged.",
            u8::from(c.peers_alive == c.peers_converged),
        );
        o.one(
            "headcount_peers_over_cap",
            "gauge",
            "Live peers whose tables are over this node's max-topics (counted incompletely).",
            c.peers_over_cap,
        );
        o.one(
            "headcount_cluster_backlog",
            "gauge",
            "Local count changes not sent to peers yet.",
            c.backlog,
        );
        o.one(
            "headcount_repair_bytes_sent_total",
            "counter",
            "Bytes sent answering peers' resync requests.",
            p.repair_bytes,
        );
    }
    o.head(
        "headcount_topic_presences",
        "gauge",
        "Cluster-wide count of the busiest topics.",
    );
    for (name, c) in engine.top(top) {
        let _ = writeln!(
            o.0,
            "headcount_topic_presences{{topic=\"{}\"}} {c}",
            label(&name)
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
