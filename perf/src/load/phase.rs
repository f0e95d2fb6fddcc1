//! What the load harness ([`super::harness`]) and its client processes ([`super::client`]) say to
//! each other: a [`Phase`] as one line on the client's standard input, a [`Report`] as one JSON
//! line on its standard output.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What the main thread asks of a client thread.
pub enum Phase {
    /// Open every connection and join its first topics; report when all are done.
    Open,
    /// Churn at this many joins per second (this thread's share) for this long, then wait for
    /// the replies in flight; report.
    Churn {
        joins_per_s: f64,
        duration: Duration,
    },
    /// Close everything and end the thread.
    Stop,
}

/// What a client thread reports after a phase.
pub struct Report {
    /// Per topic: presences the servers should hold now (this thread's share).
    pub ledger: Vec<i64>,
    pub joins: u64,
    pub leaves: u64,
    pub errors: u64,
    /// Operations wanted by the schedule but not started: every connection was busy.
    pub behind: u64,
    /// JOIN reply latency, microseconds.
    pub latency: Histogram<u64>,
}

impl Phase {
    /// The line a parent sends to a client process.
    pub fn line(&self) -> String {
        match self {
            Phase::Open => "open".into(),
            Phase::Churn {
                joins_per_s,
                duration,
            } => format!("churn {joins_per_s} {}", duration.as_secs_f64()),
            Phase::Stop => "stop".into(),
        }
    }

    /// The phase a [`Phase::line`] stands for.
    pub fn parse(line: &str) -> Option<Phase> {
        let mut w = line.split_whitespace();
        match w.next()? {
            "open" => Some(Phase::Open),
            "stop" => Some(Phase::Stop),
            "churn" => Some(Phase::Churn {
                joins_per_s: w.next()?.parse().ok()?,
                duration: Duration::from_secs_f64(w.next()?.parse().ok()?),
            }),
            _ => None,
        }
    }
}

impl Report {
    /// The JSON line a client process reports.
    pub fn to_json(&self) -> Value {
        let lat: Vec<[u64; 2]> = self
            .latency
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        json!({
            "ledger": self.ledger, "joins": self.joins, "leaves": self.leaves,
            "errors": self.errors, "behind": self.behind, "latency": lat,
        })
    }

    /// The report in a client process's JSON line.
    pub fn from_json(v: &Value) -> Result<Report, String> {
        let n = |k: &str| v[k].as_u64().ok_or(format!("report without {k}"));
        let mut latency =
            Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
        for p in v["latency"].as_array().ok_or("report without latency")? {
            let (val, count) = (p[0].as_u64().unwrap_or(1), p[1].as_u64().unwrap_or(0));
            latency
                .record_n(val.clamp(1, 60_000_000), count)
                .map_err(|e| e.to_string())?;
        }
        Ok(Report {
            ledger: v["ledger"]
                .as_array()
                .ok_or("report without ledger")?
                .iter()
                .map(|x| x.as_i64().unwrap_or(0))
                .collect(),
            joins: n("joins")?,
            leaves: n("leaves")?,
            errors: n("errors")?,
            behind: n("behind")?,
            latency,
        })
    }
}
