//! One `serve` worker: a thread with its own mio event loop, its own `SO_REUSEPORT` listener
//! and its own claimed [`Shard`]. The kernel spreads new connections over the workers' listeners;
//! a connection then lives on one worker for good, so every JOIN and LEAVE it sends is counted
//! on that worker's shard, by the thread that owns it: no lock, no shared cache line.
//!
//! Memory per idle connection is kept small: reads go into one worker-wide buffer, replies into
//! another, and a connection only gets buffers of its own while it has a partial request or
//! unsent replies.
//!
//! **What one connection may hold.** A client that does not read its replies is *paused* once
//! [`PAUSE_AT`] bytes of them are unsent: it is neither read nor answered until the socket takes
//! them (a WRITABLE event), and the requests already read wait, unparsed, in its input. So a
//! connection holds at most about `PAUSE_AT` + one read ([`READ_CHUNK`]) + one request + one
//! command's reply; `max_output` closes a client whose single reply would take it past that
//! (or, set below the pause, one that stops reading). Before AUTH nothing is paused: unsent
//! replies past [`PRE_AUTH_MAX_OUTPUT`] close the connection (as Redis and Valkey do for a
//! client that never authenticated, CVE-2025-21605).
//!
//! **What all of them may hold.** The bytes held in connection buffers are counted, per worker
//! and in one shared counter, whenever a connection's buffers change size at the end of its turn
//! (never for a connection without buffers). Over `max_client_memory`, a connection with unsent
//! replies is not read, and a worker holding more than its share of the budget closes its
//! largest holders first.
//!
//! **Fairness.** One connection gets one turn per pass of the loop, and a turn is bounded: at
//! most [`READS_PER_TURN`] reads, [`COMMANDS_PER_TURN`] commands, [`REPLY_BYTES_PER_TURN`] bytes
//! of replies and [`TURN_TIME`]. The clock is read only every [`commands::HEAVY`] units of
//! work (a turn's start is its first reading), so a turn of cheap commands reads it rarely and
//! a turn of heavy ones (`TOP` over a huge table) ends after its second. A connection with more
//! to do goes to the back of the ready list, its unparsed input carried, and the loop looks at

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use headcount::Shard;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{Conn, EMIT_AT, READ_CHUNK, Sparse, Turn, emit, flush, max_output, pause_at};
use crate::commands::{self, Args, Ctx, Session};
use crate::resp::{self, Parsed, Reply};
use crate::shared::{Shared, WorkerStats};

const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Reads one connection gets per turn before the others have theirs.
const READS_PER_TURN: usize = 8;
/// Connections accepted per pass of the loop; the rest wait for the next pass.
const ACCEPTS_PER_TURN: usize = 256;
/// How often a worker holding buffers looks at the memory budget when nothing else wakes it.
const BUDGET_CHECK: Duration = Duration::from_millis(100);
/// Request limits before AUTH succeeds (as Redis: an unauthenticated client cannot make the
/// server hold much).
const PRE_AUTH: resp::RequestLimits = resp::RequestLimits {
    max_args: 10,
    max_arg_len: 16 * 1024,
};

pub struct Worker {
    pub poll: Poll,
    listener: Option<TcpListener>,
    pub(super) conns: Slab<Conn>,
    shard: Shard,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<CachePadded<WorkerStats>>,
    read_buf: Vec<u8>,
    reply_buf: Vec<u8>,
    args: Vec<Range<usize>>,
    /// Unquoted inline arguments.
    scratch: Vec<u8>,
    /// Connections that used up their turn with more to do.
    ready: Vec<usize>,
    /// Connections with buffers (each knows its index here), for the budget's evictions.
    pub(super) holders: Vec<usize>,
    /// Bytes held in this worker's connection buffers (its part of `Shared::client_memory`).
    pub(super) buffered: usize,
    /// Accepting stopped because the process ran out of descriptors: retry on the next wakeup.
    accept_paused: bool,
    /// Accepting stopped at this pass's share with more waiting: go on in the next pass.
    accept_more: bool,
    output_log: Sparse,
    pub(super) memory_log: Sparse,
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
            holders: Vec::new(),
            buffered: 0,
            accept_paused: false,
            accept_more: false,
            output_log: Sparse::default(),
            memory_log: Sparse::default(),
        })
    }

    /// Runs until the server stops; then closes the listener and every connection (their
    /// presences leave).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stopping() {
            let timeout = if !self.ready.is_empty() || self.accept_more {
                Some(Duration::ZERO)
            } else if self.accept_paused || !self.holders.is_empty() {
                // Out of descriptors: retry soon. Holding buffers: this worker may be the one
                // to close its largest holders when all clients' buffers pass the budget.
                Some(BUDGET_CHECK)
            } else {
                None
            };
            if timeout != Some(Duration::ZERO) {
                // About to block: park the shard, so that this worker, idle, never holds up the
                // reuse of retired topic ids (its next join or leave unparks it).
                self.shard.park();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "worker poll failed; worker stopping");
                break;
            }
            if self.accept_paused || self.accept_more {
                self.accept();
            }
            if !self.holders.is_empty() && self.shared.over_budget() {
                self.evict();
            }
            // Last pass's unfinished connections first, then the new events; one turn each.
            let ready = std::mem::take(&mut self.ready);
            for key in ready {
                if self.shared.stopping() {
                    break;
                }
                match self.conns.get_mut(key) {
                    Some(c) if c.queued => c.queued = false,
                    _ => continue,
                }
                self.turn(key, false);
            }
            for ev in events.iter() {
                if self.shared.stopping() {
                    break;
                }
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        let read_closed = ev.is_read_closed() || ev.is_error();
                        match self.conns.get_mut(key) {
                            // Its turn comes from the ready list, in the next pass.
                            Some(c) if c.queued => c.read_closed |= read_closed,
                            Some(_) => self.turn(key, read_closed),
                            None => {}
                        }
                    }
                }
            }
        }
        drop(self.listener.take());
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(k);
        }
    }

    fn turn(&mut self, key: usize, read_closed: bool) {
        match self.drive(key, read_closed) {
            Next::Close => self.close(key),
            Next::Keep => self.settle(key),
        }
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        self.accept_paused = false;
        self.accept_more = false;
        for _ in 0..ACCEPTS_PER_TURN {
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
                queued: false,
                read_closed: false,
            });
            self.stats.add(&self.stats.connections, 1);
        }
        // This pass's share is used: the rest of the backlog in the next pass (the listener
        // is edge-triggered, so no new event would say it is still there).
        self.accept_more = true;
    }

    pub(super) fn close(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if let Some(b) = c.bufs.take() {
                self.release(&b);
            }
            // The monitor's DOWN: every presence the connection held leaves here.
            let held = c.session.presences.len() as i64;
            drop(c);
            self.stats
                .add(&self.stats.presences, held.wrapping_neg() as u64);
            self.stats.add(&self.stats.connections, u64::MAX);
        }
    }

    /// A connection's turn: writes what is queued, answers requests carried from its last
    /// turn, then reads and answers until the socket would block, the output is full, or the
    /// turn is used up. Edge-triggered: a read shorter than the buffer counts as "drained", as
    /// the kernel raises a new edge for bytes that arrive after it — unless the peer has shut
    /// down its side (`read_closed`, remembered), when reading goes on until EOF. A connection
    /// stopped by its output waits for WRITABLE (the socket was full, so that edge comes); one
    /// stopped by its budget goes on the ready list.
    fn drive(&mut self, key: usize, read_closed: bool) -> Next {
        let Some(conn) = self.conns.get_mut(key) else {
            return Next::Keep;
        };
        conn.read_closed |= read_closed;
        if let Some(b) = conn.bufs.as_mut().filter(|b| !b.output.is_empty())
            && flush(&mut conn.stream, &mut b.output).is_err()
        {
            return Next::Close;
        }
        if conn.session.closing {
            return if conn.output_len() == 0 {
                Next::Close
            } else {
                Next::Keep
            };
        }
        let mut turn = Turn::default();
        if conn.has_carried() {
            if self.stalled(key) {
                return Next::Keep;
            }
            let b = self.conns[key].bufs();
            let input = std::mem::take(&mut b.input);
            let next = self.answer(key, input, &mut turn);
            if let Some(done) = self.stop_after(key, next, &turn) {
                return done;
            }
        }
        for _ in 0..READS_PER_TURN {
            if self.stalled(key) {
                return Next::Keep;
            }
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
                        self.answer(key, input, &mut turn)
                    }
                }
                None => {
                    let buf = std::mem::take(&mut self.read_buf);
                    let next = self.answer_fresh(key, &buf[..n], &mut turn);
                    self.read_buf = buf;
                    next
                }
            };
            if let Some(done) = self.stop_after(key, next, &turn) {
                return done;
            }
            if n < READ_CHUNK && !self.conns[key].read_closed {
                return Next::Keep;
            }
        }
        // Reads used up with more to read: after everyone else.
        self.requeue(key);
        Next::Keep
    }

    /// After answering: whether the turn ends here, and how.
    fn stop_after(&mut self, key: usize, next: Next, turn: &Turn) -> Option<Next> {
        if let Next::Close = next {
            return Some(Next::Close);
        }
        let conn = &self.conns[key];
        if conn.session.closing {
            return Some(if conn.output_len() == 0 {
                Next::Close
            } else {
                Next::Keep
            });
        }
        if self.stalled(key) {
            return Some(Next::Keep);
        }
        if turn.spent {
            self.requeue(key);
            return Some(Next::Keep);
        }
        None
    }

    /// Not to be read or answered until the socket takes some of its replies: its unsent
    /// replies reached the pause, or all clients' buffers are over the budget and it has some.
    fn stalled(&self, key: usize) -> bool {
        let conn = &self.conns[key];
        let out = conn.output_len();
        out > 0 && (out >= pause_at(&conn.session) || self.shared.over_budget())
    }

    fn requeue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.queued {
            conn.queued = true;
            self.ready.push(key);
        }
    }

    /// Answers requests read into the worker's buffer; keeps the rest.
    fn answer_fresh(&mut self, key: usize, input: &[u8], turn: &mut Turn) -> Next {
        let (next, at, need) = self.answer_all(key, input, turn);
        let conn = &mut self.conns[key];
        if at < input.len() && !conn.session.closing {
            let b = conn.bufs();
            b.input.extend_from_slice(&input[at..]);
            b.need = need;
        }
        next
    }

    /// Answers requests in a connection's carried input; keeps the rest in place.
    fn answer(&mut self, key: usize, mut input: Vec<u8>, turn: &mut Turn) -> Next {
        let (next, at, need) = self.answer_all(key, &input, turn);
        let conn = &mut self.conns[key];
        if conn.session.closing {
            input.clear();
        } else {
            input.drain(..at);
        }
        let b = conn.bufs();
        b.input = input;
        b.need = need;
        next
    }

    /// Answers whole requests at the start of `input` and writes the replies, until the input
    /// ends, the output reaches the pause, or the turn is used up. Returns what to do with the
    /// connection, the bytes consumed, and when to parse the rest: the length it must reach
    /// (the parser's hint), or 0 when answering stopped with whole requests left.
    fn answer_all(&mut self, key: usize, input: &[u8], turn: &mut Turn) -> (Next, usize, usize) {
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
            let mut units = 1;
            let made = out.len();
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
                units = commands::execute(&mut ctx, &mut conn.session, &args, &mut reply);
            }
            if conn.session.closing {
                break;
            }
            let pause = pause_at(&conn.session);
            let limit = max_output(&conn.session, shared.limits.max_output);
            let pending = out.len() + conn.output_len();
            if out.len() >= EMIT_AT || pending >= pause || pending > limit {
                // Large replies go out (or into the connection's queue) as they are made.
                if emit(conn, &mut out).is_err() {
                    next = Next::Close;
                    break;
                }
                let queued = conn.output_len();
                if queued > limit {
                    break; // closed below: the client is not reading its replies
                }
                if queued >= pause || (queued > 0 && shared.over_budget()) {
                    break; // paused: the rest waits in the connection's input
                }
            }
            if turn.charge(units, out.len().saturating_sub(made)) {
                break;
            }
        }
        self.stats.add(&self.stats.commands, commands);
        self.stats
            .add(&self.stats.presences, ctx.presences_delta as u64);
        if emit(conn, &mut out).is_err() {
            next = Next::Close;
        }
        let limit = max_output(&conn.session, shared.limits.max_output);
        if conn.output_len() > limit {
            if let Some(skipped) = self.output_log.due() {
                tracing::warn!(
                    pending = conn.output_len(),
                    limit,
                    authed = conn.session.authed,
                    earlier_unlogged = skipped,
                    "closing a client whose unsent replies exceed max_output (it is not reading \
                     them)"
                );
            }
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
