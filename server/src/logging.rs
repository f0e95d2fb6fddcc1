//! The `headcount` binary's logs, through `tracing`: human-readable lines on standard error by
//! default, one JSON object per line with `--log-format json`. (The library only emits events;
//! installing a subscriber is the program's choice.)

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(json: bool) {
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::INFO)
        .with_target(false);
    let _ = if json {
        b.json().with_current_span(false).try_init()
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}
