//! One client connection as a worker keeps it: its socket, its [`Session`], and buffers only
//! while it has a partial request or unsent replies; the bounded [`Turn`] it gets per pass of
//! the loop; and the one socket write loop ([`write_some`]) that every send goes through.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::commands::{HEAVY, Session};

/// Bytes read per `read` call (into the worker-wide buffer).
pub const READ_CHUNK: usize = 64 * 1024;
/// Commands one connection gets answered per turn.
const COMMANDS_PER_TURN: u32 = 4096;
/// Bytes of replies one connection gets made per turn (one command may go past it).
const REPLY_BYTES_PER_TURN: usize = 512 * 1024;
/// Time one connection's turn may take, give or take one command.
const TURN_TIME: Duration = Duration::from_millis(1);
/// Unsent replies at which an authenticated client is paused: not read, not answered, until the
/// socket takes some of them.
pub const PAUSE_AT: usize = 256 * 1024;
/// Before AUTH: unsent replies past this close the connection (a client that is not reading
/// its error replies is not a client). Every reply before AUTH is short, so a client that
/// reads them never comes near it.
pub const PRE_AUTH_MAX_OUTPUT: usize = 16 * 1024;
/// Replies are sent once this many bytes are waiting in the worker's buffer.
pub const EMIT_AT: usize = 256 * 1024;

/// One client connection: 48 bytes while it has nothing buffered (most of the time).
pub struct Conn {
    pub stream: TcpStream,
    pub session: Session,
    /// Buffers, only while there is something in them.
    pub bufs: Option<Box<Bufs>>,
    /// On the ready list for a turn in the next pass.
    pub queued: bool,
    /// The peer shut down its side: read until EOF rather than trust a short read.
    pub read_closed: bool,
}

// (mio adds a selector id to every socket in debug builds.)
#[cfg(not(debug_assertions))]
const _: () = assert!(size_of::<Conn>() <= 48);

#[derive(Default)]
pub struct Bufs {
    /// Requests carried over: a partial one, or whole ones left unanswered because the output
    /// was full or the turn used up.
    pub input: Vec<u8>,
    /// Parse `input` again only once it holds this many bytes (0: it may hold whole requests).
    pub need: usize,
    /// Replies the socket would not take yet.
    pub output: Vec<u8>,
    /// The bytes these buffers are counted as holding (0: not counted, not in `holders`).
    pub held: usize,
    /// This connection's index in the worker's `holders`.
    pub slot: usize,
    /// Counted in the paused-clients gauge.
    pub paused: bool,
}

impl Conn {
    pub fn output_len(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.output.len())
    }

    pub fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Box::default)
    }

    /// Whole requests may be waiting in the carried input.
    pub fn has_carried(&self) -> bool {
        self.bufs
            .as_ref()
            .is_some_and(|b| !b.input.is_empty() && b.input.len() >= b.need)
    }
}

/// Unsent replies at which this session is paused. Never before AUTH: closed instead.
pub fn pause_at(s: &Session) -> usize {
    if s.authed { PAUSE_AT } else { usize::MAX }
}

/// Unsent replies past which this session is closed.
pub fn max_output(s: &Session, limit: usize) -> usize {
    if s.authed {
        limit
    } else {
        limit.min(PRE_AUTH_MAX_OUTPUT)
    }
}

/// One connection's turn: what it has used of its budget.
#[derive(Default)]
pub struct Turn {
    commands: u32,
    bytes: usize,
    /// Work units since the clock was last read.
    work: u32,
    /// When the clock was first read in this turn (a turn that never reaches
    /// [`HEAVY`] units never reads it).
    started: Option<Instant>,
    pub spent: bool,
}

impl Turn {
    /// Counts one command of `units` work that made `bytes` of reply; true once the turn is
    /// used up.
    pub fn charge(&mut self, units: u32, bytes: usize) -> bool {
        self.commands += 1;
        self.bytes += bytes;
        self.work = self.work.saturating_add(units);
        if self.commands >= COMMANDS_PER_TURN || self.bytes >= REPLY_BYTES_PER_TURN {
            self.spent = true;
        } else if self.work >= HEAVY {
            self.work = 0;
            let now = Instant::now();
            match self.started {
                None => self.started = Some(now),
                Some(t) if now.duration_since(t) >= TURN_TIME => self.spent = true,
                Some(_) => {}
            }
        }
        self.spent
    }
}

/// A warning logged at most once a minute per worker, with the count of the ones left out.
#[derive(Default)]
pub struct Sparse {
    last: Option<Instant>,
    skipped: u64,
}

impl Sparse {
    /// `Some(left out since the last one)` when this one may be logged.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The socket write loop: writes `buf` until the socket would block; returns the bytes it
/// took.
fn write_some(stream: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        match stream.write(&buf[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Sends `out` (emptying it): straight to the socket when nothing is queued, the rest (or all,
/// behind queued replies) into the connection's queue.
pub fn emit(conn: &mut Conn, out: &mut Vec<u8>) -> io::Result<()> {
    let sent = if conn.output_len() == 0 {
        write_some(&mut conn.stream, out)?
    } else {
        0
    };
    if sent < out.len() {
        // Exact: appends are few (the rest of a write the socket cut short, or what takes the
        // queue to the pause), and a paused client should hold what it is owed, not twice that.
        let queue = &mut conn.bufs().output;
        queue.reserve_exact(out.len() - sent);
        queue.extend_from_slice(&out[sent..]);
    }
    out.clear();
    Ok(())
}

/// Writes as much of `buf` as the socket takes; keeps the rest.
pub fn flush(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let sent = write_some(stream, buf)?;
    buf.drain(..sent);
    Ok(())
}

/// Frees an empty buffer, and most of one that holds far less than it did.
pub fn shrink(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        *buf = Vec::new();
    } else if buf.capacity() > 2 * READ_CHUNK && buf.len() < buf.capacity() / 4 {
        buf.shrink_to(buf.len().max(READ_CHUNK));
    }
}
