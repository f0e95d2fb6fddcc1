//! `serve --metrics ADDR`: the Prometheus text format (version 0.0.4) over plain HTTP/1.1, on a
//! thread of its own so a slow scraper never touches a worker.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::ConfigError;
use crate::shared::Shared;
use crate::stats::{self, Metric, Section, Stat, Value, Visitor};

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

/// A label value, escaped as the text format wants (`\\`, `"` and newlines).
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

/// The text format, written as the statistics are visited.
struct Prometheus {
    out: String,
    /// The metric family whose `HELP` and `TYPE` lines were written last.
    family: &'static str,
}

impl Prometheus {
    /// `HELP` and `TYPE`, once per family.
    fn head(&mut self, m: &Metric<'_>) {
        if m.name != self.family {
            self.family = m.name;
            let _ = write!(
                self.out,
                "# HELP {} {}\n# TYPE {} {}\n",
                m.name,
                m.help,
                m.name,
                m.kind.name()
            );
        }
    }
}

impl Visitor for Prometheus {
    fn section(&mut self, _: Section) -> bool {
        true
    }

    fn family(&mut self, m: &Metric<'_>) {
        self.head(m);
    }

    fn stat(&mut self, s: Stat<'_>) {
        let Some(m) = s.metric else { return };
        self.head(&m);
        let o = &mut self.out;
        let series = match m.label {
            Some((k, v)) => format!("{}{{{k}=\"{}\"}}", m.name, label(v)),
            None => m.name.to_string(),
        };
        let _ = match s.value {
            Value::Int(n) | Value::Hex(n) => writeln!(o, "{series} {n}"),
            Value::Text(t) => writeln!(o, "{series} {t}"),
            Value::Histogram {
                bounds,
                counts,
                sum,
            } => {
                let mut cumulative = 0;
                for (b, n) in bounds.iter().zip(counts) {
                    cumulative += n;
                    let _ = writeln!(
                        o,
                        "{}_bucket{{le=\"{}\"}} {cumulative}",
                        m.name,
                        b.as_secs_f64()
                    );
                }
                cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
                writeln!(
                    o,
                    "{0}_bucket{{le=\"+Inf\"}} {cumulative}\n{0}_sum {sum}\n{0}_count {cumulative}",
                    m.name
                )
            }
        };
    }
}

/// The whole scrape: every statistic with a metric, and the `top` busiest topics' counts.
pub fn render(shared: &Shared, top: usize) -> String {
    let mut p = Prometheus {
        out: String::with_capacity(8192),
        family: "",
    };
    stats::visit(shared, top, &mut p);
    p.out
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
