//! One `serve` worker: a thread with its own mio event loop, its own `SO_REUSEPORT` listener
//! and its own claimed [`Shard`]. The kernel spreads new connections over the workers' listeners;
//! a connection then lives on one worker for good, so every JOIN and LEAVE it sends is counted
//! on that worker's shard, by the thread that owns it: no lock, no shared cache line.
//!
//! Memory per idle connection is kept small: reads go into one worker-wide buffer, replies into
//! another, and a connection only gets buffers of its own while it has a partial request or
//! unsent replies.

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
/// Stop reading a connection while this much of its output is unsent (it is not reading).
const BACKPRESSURE: usize = 256 * 1024;

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
    /// Replies the socket would not take yet.
    output: Vec<u8>,
    /// `input` holds whole requests not answered yet: the client stopped reading its replies.
    paused: bool,
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
            .is_some_and(|b| b.input.is_empty() && b.output.is_empty() && !b.paused)
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
            accept_paused: false,
        })
    }

    /// Runs until the server stops; then closes the listener and every connection (their
    /// presences leave).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stopping() {
            let timeout = self.accept_paused.then_some(Duration::from_millis(100));
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
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        let closed = ev.is_read_closed() || ev.is_error();
                        if let Next::Close = self.drive(key, closed) {
                            self.close(key);
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

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        self.accept_paused = false;
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the connection in the backlog, try again soon.
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

    /// Reads, answers and writes until the socket would block. Edge-triggered: everything
    /// readable is consumed before returning (unless the client stopped reading its replies);
    /// a read shorter than the buffer counts as "drained" (the kernel raises a new edge for
    /// bytes that arrive after it), which saves a syscall per request.
    /// `peer_closed`: the event said the peer shut down (read on until EOF, no shortcut).
    fn drive(&mut self, key: usize, peer_closed: bool) -> Next {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return Next::Keep;
            };
            if conn.output_len() > 0 {
                let b = conn.bufs.get_or_insert_with(Box::default);
                if flush(&mut conn.stream, &mut b.output).is_err() {
                    return Next::Close;
                }
                if conn.output_len() >= BACKPRESSURE {
                    return Next::Keep; // wait for WRITABLE
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
            // Input held back by backpressure goes first.
            if let Some(b) = conn.bufs.as_mut().filter(|b| b.paused) {
                b.paused = false;
                let input = std::mem::take(&mut b.input);
                match self.answer(key, &input, 0) {
                    Next::Close => return Next::Close,
                    Next::Keep => continue,
                }
            }
            let conn = &mut self.conns[key];
            let n = match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            };
            let carried = conn.bufs.as_mut().map(|b| std::mem::take(&mut b.input));
            let next = match carried {
                Some(mut input) if !input.is_empty() => {
                    input.extend_from_slice(&self.read_buf[..n]);
                    self.answer(key, &input, 0)
                }
                _ => {
                    let buf = std::mem::take(&mut self.read_buf);
                    let next = self.answer(key, &buf, n);
                    self.read_buf = buf;
                    next
                }
            };
            if let Next::Close = next {
                return Next::Close;
            }
            // A short read emptied the socket: new bytes will raise a new edge, so there is
            // no need for one more read() just to see WouldBlock (a syscall per request saved).
            let conn = &self.conns[key];
            let paused = conn.bufs.as_ref().is_some_and(|b| b.paused);
            if n < READ_CHUNK && !paused && !conn.session.closing && !peer_closed {
                return Next::Keep;
            }
        }
    }

    /// Answers every whole request in `input[..len]` (all of `input` when `len` is 0), keeps a
    /// partial one for the next read, and writes the replies.
    fn answer(&mut self, key: usize, input: &[u8], len: usize) -> Next {
        let input = if len == 0 { input } else { &input[..len] };
        let shared = self.shared.clone();
        let conn = &mut self.conns[key];
        let mut out = std::mem::take(&mut self.reply_buf);
        out.clear();
        let mut at = 0;
        let mut ctx = Ctx {
            shared: &shared,
            shard: &mut self.shard,
            presences_delta: 0,
        };
        let mut commands = 0u64;
        let mut next = Next::Keep;
        while at < input.len() {
            let rest = &input[at..];
            match resp::parse(rest, &shared.limits.request, &mut self.args) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Request(used)) => {
                    at += used;
                    if !self.args.is_empty() {
                        commands += 1;
                        let args = Args {
                            buf: rest,
                            ranges: &self.args,
                        };
                        let mut reply = Reply {
                            out: &mut out,
                            resp3: conn.session.resp3,
                        };
                        commands::execute(&mut ctx, &mut conn.session, &args, &mut reply);
                    }
                    if conn.session.closing || out.len() + conn.output_len() >= BACKPRESSURE {
                        break;
                    }
                }
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
            }
        }
        self.stats.add(&self.stats.commands, commands);
        self.stats
            .add(&self.stats.presences, ctx.presences_delta as u64);
        // Keep what was not answered yet (a partial request, or input held by backpressure).
        if at < input.len() && !conn.session.closing {
            let paused = out.len() + conn.output_len() >= BACKPRESSURE;
            let b = conn.bufs();
            b.paused = paused;
            b.input.clear();
            b.input.extend_from_slice(&input[at..]);
        } else if let Some(b) = conn.bufs.as_mut() {
            b.paused = false;
            b.input = Vec::new();
        }
        // Write the replies: straight from the worker's buffer when nothing is queued.
        if conn.output_len() == 0 {
            let mut sent = 0;
            while sent < out.len() {
                match conn.stream.write(&out[sent..]) {
                    Ok(0) => {
                        next = Next::Close;
                        break;
                    }
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        next = Next::Close;
                        break;
                    }
                }
            }
            if sent < out.len() {
                conn.bufs().output.extend_from_slice(&out[sent..]);
            }
        } else {
            conn.bufs().output.extend_from_slice(&out);
        }
        conn.trim();
        if conn.output_len() > shared.limits.max_output {
            tracing::warn!(
                pending = conn.output_len(),
                limit = shared.limits.max_output,
                "closing a client whose unsent replies exceed max_output"
            );
            self.stats.add(&self.stats.output_limit_closes, 1);
            next = Next::Close;
        }
        if out.capacity() > 4 * READ_CHUNK {
            out = Vec::with_capacity(READ_CHUNK);
        }
        self.reply_buf = out;
        next
    }
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
