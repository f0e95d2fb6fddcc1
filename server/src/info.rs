//! `INFO [section …]`: the statistics (`stats.rs`) as Redis-style text, `# Section` headings
//! and `key:value` lines.

use std::fmt::Write as _;

use crate::shared::Shared;
use crate::stats::{self, Section, Stat, Value, Visitor};

struct Info<'w> {
    /// The sections asked for, lowercase (none: all).
    want: &'w [String],
    out: String,
}

impl Visitor for Info<'_> {
    fn section(&mut self, s: Section) -> bool {
        let shown = s != Section::Topics
            && (self.want.is_empty()
                || self
                    .want
                    .iter()
                    .any(|w| w == s.name() || w == "all" || w == "everything"));
        if shown {
            if !self.out.is_empty() {
                self.out.push_str("\r\n");
            }
            let _ = write!(self.out, "# {}\r\n", s.title());
        }
        shown
    }

    fn stat(&mut self, s: Stat<'_>) {
        let Some(key) = s.info else { return };
        let _ = match s.value {
            Value::Int(n) => write!(self.out, "{key}:{n}\r\n"),
            Value::Hex(n) => write!(self.out, "{key}:{n:016x}\r\n"),
            Value::Text(t) => write!(self.out, "{key}:{t}\r\n"),
            Value::Histogram { .. } => Ok(()),
        };
    }
}

/// `INFO` with these section arguments (none: every section).
pub fn render(shared: &Shared, want: &[String]) -> String {
    let mut v = Info {
        want,
        out: String::new(),
    };
    stats::visit(shared, 0, &mut v);
    v.out
}
