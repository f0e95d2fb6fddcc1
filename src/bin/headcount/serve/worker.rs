//! One `serve` worker: a thread with its own mio event loop, its own `SO_REUSEPORT` listener
//! and its own claimed [`Shard`]. The kernel spreads new connections over the workers' listeners;
//! a connection then lives on one worker for good, so every JOIN and LEAVE it sends is counted
//! on that worker's shard, by the thread that owns it: no lock, no shared cache line.
//!
//! Memory per idle connection is kept small: reads go into one worker-wide buffer, replies into
//! another, and a connection only gets buffers of its own while it has a partial request or
//! unsent replies.
//!
//! Fairness: one connection gets at most [`READS_PER_TURN`] reads per turn of the loop; a
//! connection with more to read waits on a ready list for the next turn, after everyone else.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use headcount::Shard;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::commands::{self, Args, Ctx, Session};
use super::{Shared, WorkerStats};
use crate::resp::{self, Parsed, Reply};

const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Bytes read per `read` call (into the worker-wide buffer).
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection gets per turn before the others have theirs.
const READS_PER_TURN: usize = 8;
/// Request limits before AUTH succeeds (as Redis: an unauthenticated client cannot make the
/// server hold much).
const PRE_AUTH: resp::Limits = resp::Limits {
    max_args: 10,
    max_arg_len: 16 * 1024,
};

/// One client connection: 48 bytes while it has nothing buffered (most of the time).
struct Conn {
    stream: TcpStream,
    session: Session,
    /// Buffers, only while there is something in them.
    bufs: Option<Box<Bufs>>,
}

#[derive(Default)]
struct Bufs {
    /// A partial request carried over to the next read.
    input: Vec<u8>,
    /// Parse `input` again only once it holds this many bytes.
    need: usize,
    /// Replies the socket would not take yet.
    output: Vec<u8>,
}

impl Conn {
    fn output_len(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.output.len())
    }

    fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Box::default)
    }

    /// Frees the buffers once they are empty.
    fn trim(&mut self) {
        if self
            .bufs
            .as_ref()
            .is_some_and(|b| b.input.is_empty() && b.output.is_empty())
        {
            self.bufs = None;
        }
    }
}

pub struct Worker {
    pub poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    shard: Shard,
    shared: Arc<Shared>,
    stats: Arc<CachePadded<WorkerStats>>,
    read_buf: Vec<u8>,
    reply_buf: Vec<u8>,
    args: Vec<Range<usize>>,
    /// Unquoted inline arguments.
    scratch: Vec<u8>,
    /// Connections that used their reads for this turn and have more.
    ready: Vec<usize>,
    /// Accepting stopped because the process ran out of descriptors: retry on the next wakeup.
    accept_paused: bool,
}

enum Next {
    Keep,
    Close,
}

impl Worker {
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        shard: Shard,
        shared: Arc<Shared>,
        stats: Arc<CachePadded<WorkerStats>>,
    ) -> io::Result<Worker> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            shard,
            shared,
            stats,
            read_buf: vec![0; READ_CHUNK],
            reply_buf: Vec::with_capacity(READ_CHUNK),
            args: Vec::new(),
            scratch: Vec::new(),
            ready: Vec::new(),
            accept_paused: false,
        })
    }

    /// Runs until the server stops; then closes the listener and every connection (their
    /// presences leave).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stopping() {
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.accept_paused.then_some(Duration::from_millis(100))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "worker poll failed; worker stopping");
                break;
            }
            if self.accept_paused {
                self.accept();
            }
            // Last turn's unfinished connections first, then the new events.
            let ready = std::mem::take(&mut self.ready);
            for key in ready {
                self.turn(key, false);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => self.turn(key, ev.is_read_closed() || ev.is_error()),
                }
            }
        }
        drop(self.listener.take());
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(k);
        }
    }

    fn turn(&mut self, key: usize, peer_closed: bool) {
        if let Next::Close = self.drive(key, peer_closed) {
            self.close(key);
        }
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        self.accept_paused = false;
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. Leave the connection in
                // the backlog and try again soon.
                Err(e) if matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) => {
                    self.stats.add(&self.stats.accept_errors, 1);
                    if self
                        .stats
                        .accept_errors
                        .load(std::sync::atomic::Ordering::Relaxed)
                        % 1000
                        == 1
                    {
                        tracing::warn!(error = %e, "accept failed (raise the open-file limit?)");
                    }
                    self.accept_paused = true;
                    return;
                }
                // Anything else (a connection reset before it was accepted…) is that
                // connection's problem.
                Err(_) => continue,
            };
            self.stats.add(&self.stats.accepted, 1);
            if self.shared.connections() >= self.shared.limits.max_connections {
                let _ = stream.write(b"-ERR max number of clients reached\r\n");
                self.stats.add(&self.stats.rejected, 1);
                continue;
            }
            let _ = stream.set_nodelay(true);
            if let Some(idle) = self.shared.limits.keepalive {
                // A client whose host vanished never sends a FIN: keepalive probes find it, and
                // its presences leave like any other closed connection's.
                let ka = socket2::TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(Duration::from_secs(10))
                    .with_retries(3);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            entry.insert(Conn {
                stream,
                bufs: None,
                session: Session {
                    authed: self.shared.password.is_none(),
                    ..Session::default()
                },
            });
            self.stats.add(&self.stats.connections, 1);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            // The monitor's DOWN: every presence the connection held leaves here.
            let held = c.session.presences.len() as i64;
            drop(c);
            self.stats
                .add(&self.stats.presences, held.wrapping_neg() as u64);
            self.stats.add(&self.stats.connections, u64::MAX);
        }
    }

    /// Writes what is queued, then reads and answers until the socket would block (or this
    /// turn's reads are used up). Edge-triggered: a read shorter than the buffer counts as
    /// "drained", as the kernel raises a new edge for bytes that arrive after it — unless the
    /// peer has shut down (`peer_closed`), when reading goes on until EOF.
    fn drive(&mut self, key: usize, peer_closed: bool) -> Next {
        let Some(conn) = self.conns.get_mut(key) else {
            return Next::Keep;
        };
        if conn.output_len() > 0 {
            let b = conn.bufs.get_or_insert_with(Box::default);
            if flush(&mut conn.stream, &mut b.output).is_err() {
                return Next::Close;
            }
            conn.trim();
        }
        if conn.session.closing {
            return if conn.output_len() == 0 {
                Next::Close
            } else {
                Next::Keep
            };
        }
        for _ in 0..READS_PER_TURN {
            let conn = &mut self.conns[key];
            let n = match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            };
            let next = match conn.bufs.as_mut().filter(|b| !b.input.is_empty()) {
                // A partial request is waiting: append, and parse only once it can be whole.
                Some(b) => {
                    b.input.extend_from_slice(&self.read_buf[..n]);
                    if b.input.len() < b.need {
                        Next::Keep
                    } else {
                        let input = std::mem::take(&mut b.input);
                        self.answer(key, input)
                    }
                }
                None => {
                    let buf = std::mem::take(&mut self.read_buf);
                    let next = self.answer_fresh(key, &buf[..n]);
                    self.read_buf = buf;
                    next
                }
            };
            let conn = &self.conns[key];
            if let Next::Close = next {
                return Next::Close;
            }
            if conn.session.closing {
                return if conn.output_len() == 0 {
                    Next::Close
                } else {
                    Next::Keep
                };
            }
            if n < READ_CHUNK && !peer_closed {
                return Next::Keep;
            }
        }
        // Turn used up with more to read: after everyone else.
        self.ready.push(key);
        Next::Keep
    }

    /// Answers requests read into the worker's buffer; keeps a partial one.
    fn answer_fresh(&mut self, key: usize, input: &[u8]) -> Next {
        let (next, at, need) = self.answer_all(key, input);
        let conn = &mut self.conns[key];
        if at < input.len() && !conn.session.closing {
            let b = conn.bufs();
            b.input.extend_from_slice(&input[at..]);
            b.need = need;
        }
        next
    }

    /// Answers requests in a connection's carried input; keeps the rest in place.
    fn answer(&mut self, key: usize, mut input: Vec<u8>) -> Next {
        let (next, at, need) = self.answer_all(key, &input);
        let conn = &mut self.conns[key];
        if conn.session.closing {
            input = Vec::new();
        } else {
            input.drain(..at);
        }
        if input.is_empty() {
            conn.trim();
        } else {
            let b = conn.bufs();
            b.input = input;
            b.need = need;
        }
        next
    }

    /// Answers every whole request at the start of `input` and writes the replies. Returns
    /// what to do with the connection, the bytes consumed, and the parser's hint for the rest
    /// (the length the unconsumed part must reach before it can parse).
    fn answer_all(&mut self, key: usize, input: &[u8]) -> (Next, usize, usize) {
        let shared = self.shared.clone();
        let conn = &mut self.conns[key];
        let mut out = std::mem::take(&mut self.reply_buf);
        out.clear();
        let mut at = 0;
        let mut need = 0;
        let mut ctx = Ctx {
            shared: &shared,
            shard: &mut self.shard,
            presences_delta: 0,
        };
        let mut commands = 0u64;
        let mut next = Next::Keep;
        while at < input.len() {
            let rest = &input[at..];
            let limits = if conn.session.authed {
                &shared.limits.request
            } else {
                &PRE_AUTH
            };
            let parsed = resp::parse(rest, limits, &mut self.args, &mut self.scratch);
            let (used, buf) = match parsed {
                Ok(Parsed::Incomplete { need: n }) => {
                    // Relative to the rest, which is what the caller keeps.
                    need = n;
                    break;
                }
                Ok(Parsed::Request(used)) => (used, rest),
                Ok(Parsed::Unquoted(used)) => (used, &self.scratch[..]),
                Err(e) => {
                    Reply {
                        out: &mut out,
                        resp3: conn.session.resp3,
                    }
                    .error(&format!("ERR {e}"));
                    self.stats.add(&self.stats.protocol_errors, 1);
                    conn.session.closing = true;
                    at = input.len();
                    break;
                }
            };
            at += used;
            if !self.args.is_empty() {
                commands += 1;
                let args = Args {
                    buf,
                    ranges: &self.args,
                };
                let mut reply = Reply {
                    out: &mut out,
                    resp3: conn.session.resp3,
                };
                commands::execute(&mut ctx, &mut conn.session, &args, &mut reply);
            }
            if conn.session.closing {
                break;
            }
            if out.len() >= EMIT_AT {
                // Large replies go out (or into the connection's queue) as they are made.
                if emit(conn, &mut out).is_err() {
                    next = Next::Close;
                }
                if conn.output_len() > shared.limits.max_output {
                    break; // closed below: the client is not reading its replies
                }
            }
        }
        self.stats.add(&self.stats.commands, commands);
        self.stats
            .add(&self.stats.presences, ctx.presences_delta as u64);
        if emit(conn, &mut out).is_err() {
            next = Next::Close;
        }
        if conn.output_len() > shared.limits.max_output {
            tracing::warn!(
                pending = conn.output_len(),
                limit = shared.limits.max_output,
                "closing a client whose unsent replies exceed max_output (it is not reading them)"
            );
            self.stats.add(&self.stats.output_limit_closes, 1);
            next = Next::Close;
        }
        if out.capacity() > 4 * READ_CHUNK {
            out = Vec::with_capacity(READ_CHUNK);
        }
        self.reply_buf = out;
        (next, at, need)
    }
}

/// Replies are sent once this many bytes are waiting in the worker's buffer.
const EMIT_AT: usize = 256 * 1024;

/// Sends `out` (emptying it): straight to the socket when nothing is queued, the rest (or all,
/// behind queued replies) into the connection's queue.
fn emit(conn: &mut Conn, out: &mut Vec<u8>) -> io::Result<()> {
    let mut sent = 0;
    if conn.output_len() == 0 {
        while sent < out.len() {
            match conn.stream.write(&out[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    if sent < out.len() {
        conn.bufs().output.extend_from_slice(&out[sent..]);
    }
    out.clear();
    Ok(())
}

/// Writes as much of `buf` as the socket takes; keeps the rest.
fn flush(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
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
    buf.drain(..sent);
    if buf.is_empty() {
        *buf = Vec::new();
    }
    Ok(())
}
