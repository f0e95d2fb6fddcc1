//! RESP, the Redis protocol: the server's request [`parse`]r and [`Reply`] writer, and the
//! [`client`] side (one request encoder and one reply reader) that tests and tools share.
//!
//! A request is what Redis itself accepts: a RESP array of bulk strings
//! (`*2\r\n$4\r\nJOIN\r\n$4\r\nroom\r\n`) or an inline line (`JOIN room\r\n`).

pub mod client;
mod parse;
mod reply;

pub use parse::{MAX_INLINE, Parsed, ProtoError, RequestLimits, parse};
pub use reply::Reply;
