//! One module per subcommand: its flags (`Args`) and its `run`, which prints the result.

pub mod async_rt;
pub mod baseline_redis;
pub mod conns;
pub mod converge;
pub mod failover;
pub mod hotpath;
pub mod load;
pub mod overhead;
pub mod receive;
pub mod reducer;
pub mod soak;
pub mod wire;
