//! What a command is given: the connection's [`Session`], the request's [`Args`], and the
//! worker's [`Ctx`] (its shard and the shared state).

use std::ops::Range;

use headcount::{Presence, Shard};

use crate::resp::Reply;
use crate::shared::Shared;

/// One connection's state beyond its socket.
#[derive(Default)]
pub struct Session {
    /// Every presence this connection holds: dropping them (the connection closing) leaves.
    pub presences: Vec<Presence>,
    /// Replies use RESP3 (after `HELLO 3`).
    pub resp3: bool,
    /// `AUTH` succeeded (or no password is set).
    pub authed: bool,
    /// `QUIT`: close once the reply is written.
    pub closing: bool,
}

/// A request's arguments: ranges into the input buffer.
pub struct Args<'a> {
    pub buf: &'a [u8],
    pub ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// The arguments from `from` on.
    pub fn rest(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.ranges[from..].iter().map(|r| &self.buf[r.clone()])
    }
}

/// What a worker lends a command.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub shard: &'a mut Shard,
    /// Set when this worker's stats should count a change in held presences.
    pub presences_delta: i64,
}

/// Whether a command or option name is `want`, in any case.
pub fn is(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

/// The error reply for a wrong number of arguments.
pub fn wrong_args(r: &mut Reply, cmd: &[u8]) {
    let cmd = String::from_utf8_lossy(cmd).to_ascii_lowercase();
    r.error(&format!(
        "ERR wrong number of arguments for '{cmd}' command"
    ));
}
