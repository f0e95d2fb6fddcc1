//! The load harness: the seed's scenario end to end. Many client connections, each holding 1–3
//! presences in long-tailed topics, churning (connections closing and reopening, JOIN/LEAVE on
//! open ones) against real `headcount serve` processes — or against `redis-server` doing what
//! teams do today (INCR/DECR per topic, or a set per topic) — with every count checked at the end.
//!
//! Used by the subcommands `load`, `baseline-redis`, `overhead` and `soak` (`src/cmd/`), and
//! `servers` also by `conns`. From the top down:
//!
//! - [`scenario`]: one run against one target (the flags those subcommands share, too);
//! - [`harness`]: servers plus the client processes, driven phase by phase;
//! - [`phase`]: what the harness and a client process say to each other;
//! - [`client`]: a client process (`headcount-perf load-client`, hidden), running
//! - [`users`]: the simulated users' connections on one mio event loop;
//! - [`servers`]: the server processes, and a checker that reads every count back;
//! - [`plot`]: SVG plots of the results.

pub mod client;
pub mod harness;
pub mod phase;
pub mod plot;
pub mod scenario;
pub mod servers;
pub mod users;
