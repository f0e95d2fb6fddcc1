//! The simulated users of one load-client process ([`super::client`]): one thread owns a share
//! of the connections and its own mio event loop, and runs the phases the parent asks for.
//!
//! A user is one TCP connection holding 1–3 presences in long-tailed (Zipf) topics. Churn is
//! two kinds of operation, half each:
//! - **swap**: on an open connection, leave one held topic and join another (one write with two
//!   commands; the JOIN's reply latency is recorded);
//! - **reconnect**: close the connection — against `headcount serve` closing *is* leaving, while
//!   a Redis-backed app must first send a DECR (or SREM) per held topic — then open a new one
//!   and join 1–3 topics (the JOIN's latency is recorded).
//!
//! The thread's ledger counts a join when its reply arrives, and a leave when its reply arrives
//! (or, against headcount, when the connection is closed): at the end the servers must agree.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use headcount_perf::rng::Rng;
use headcount_server::resp::client::{decode_reply, encode_request};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::phase::Report;
use super::servers::Target;

/// One client process's share of the workload.
pub struct Config {
    /// This process's index, `0..threads`: it holds connections `id`, `id + threads`, …
    pub id: usize,
    /// Client processes in all.
    pub threads: usize,
    /// What the connections talk to.
    pub target: Target,
    /// The servers; the connection of global index `g` talks to server `g % servers.len()`.
    pub servers: Vec<SocketAddr>,
    /// Topics `t0`…
    pub topics: usize,
    /// Connections in all (every process's together).
    pub conns: usize,
    /// Seeds this process's [`Rng`].
    pub seed: u64,
}

/// A long-tailed topic picker: Zipf with exponent 1 over `n` topics.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 0..n {
            sum += 1.0 / (i as f64 + 1.0);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }
    fn pick(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected (yet, or any more).
    Closed,
    Connecting,
    Idle,
    /// Waiting for `left` replies to the request sent at `sent`.
    Waiting,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// Topics held, confirmed by the server.
    held: Vec<u32>,
    /// Each reply expected, in order: +1 join of topic, -1 leave of topic (as the ledger change
    /// it confirms), or 0 for a reply that changes nothing.
    expect: VecDeque<(i8, u32)>,
    /// Topics to join once connected.
    to_join: Vec<u32>,
    /// When the request whose JOIN latency is measured was sent.
    sent: Instant,
    /// This connection's incarnation (the member name in the set variant).
    generation: u32,
    /// Reply bytes not parsed yet.
    partial: Vec<u8>,
}

fn topic_name(t: u32) -> Vec<u8> {
    format!("t{t}").into_bytes()
}

/// The users of one client thread: its connections, its ledger and what it measured.
pub struct Users {
    cfg: Config,
    poll: Poll,
    conns: Vec<Conn>,
    zipf: Zipf,
    rng: Rng,
    ledger: Vec<i64>,
    joins: u64,
    leaves: u64,
    errors: u64,
    behind: u64,
    latency: Histogram<u64>,
    /// Connections being opened now (bounded, so a connect storm does not overflow backlogs).
    opening: usize,
    out: Vec<u8>,
    /// Idle connections, for picking one at random in O(1).
    idle: Vec<usize>,
    /// Redis variants: connections whose cleanup is answered, to close and reopen.
    reconnect: Vec<usize>,
}

impl Users {
    /// This process's share of `cfg.conns` connections, none open yet.
    pub fn new(cfg: Config) -> Users {
        let mine = (cfg.conns + cfg.threads - 1 - cfg.id) / cfg.threads;
        Users {
            poll: Poll::new().expect("mio poll"),
            conns: (0..mine)
                .map(|_| Conn {
                    stream: None,
                    state: State::Closed,
                    held: Vec::new(),
                    expect: VecDeque::new(),
                    to_join: Vec::new(),
                    sent: Instant::now(),
                    generation: 0,
                    partial: Vec::new(),
                })
                .collect(),
            zipf: Zipf::new(cfg.topics),
            rng: Rng::new(cfg.seed),
            ledger: vec![0; cfg.topics],
            joins: 0,
            leaves: 0,
            errors: 0,
            behind: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            opening: 0,
            out: Vec::new(),
            idle: Vec::new(),
            reconnect: Vec::new(),
            cfg,
        }
    }

    /// The ledger now, and what was measured since the last report (then reset).
    pub fn report(&mut self) -> Report {
        Report {
            ledger: self.ledger.clone(),
            joins: std::mem::take(&mut self.joins),
            leaves: std::mem::take(&mut self.leaves),
            errors: std::mem::take(&mut self.errors),
            behind: std::mem::take(&mut self.behind),
            latency: {
                let h = self.latency.clone();
                self.latency.reset();
                h
            },
        }
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        self.conns.clear();
    }

    /// 1–3 distinct topics for a new connection. (Distinct, so that the Redis set variant,
    /// which counts a member once per set, counts what the others count.)
    fn first_topics(&mut self) -> Vec<u32> {
        let k = 1 + self.rng.below(3);
        let mut v = Vec::with_capacity(k);
        while v.len() < k {
            let t = self.fresh_topic(&v);
            v.push(t);
        }
        v
    }

    /// A Zipf-picked topic not in `held` (a few tries; then any topic not held).
    fn fresh_topic(&mut self, held: &[u32]) -> u32 {
        for _ in 0..16 {
            let t = self.zipf.pick(&mut self.rng);
            if !held.contains(&t) {
                return t;
            }
        }
        (0..self.cfg.topics as u32)
            .find(|t| !held.contains(t))
            .unwrap_or(0)
    }

    fn connect(&mut self, i: usize) {
        let global = i * self.cfg.threads + self.cfg.id;
        let server = self.cfg.servers[global % self.cfg.servers.len()];
        // Many source addresses (127.0.0.2…): 28k ephemeral ports each, so 120k connections
        // and their churn never run out.
        let src = Ipv4Addr::new(
            127,
            0,
            (1 + global / 250 / 200) as u8,
            (2 + global / 200 % 250) as u8,
        );
        let sock = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) {
            Ok(s) => s,
            Err(_) => {
                self.errors += 1;
                return;
            }
        };
        let ok = sock.set_nonblocking(true).is_ok()
            // Close with a reset: no TIME_WAIT pile-up on the client side under churn.
            && sock.set_linger(Some(Duration::ZERO)).is_ok()
            && sock.set_tcp_nodelay(true).is_ok()
            && sock.bind(&SocketAddrV4::new(src, 0).into()).is_ok();
        if !ok {
            self.errors += 1;
            return;
        }
        match sock.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.errors += 1;
                return;
            }
        }
        let mut stream = TcpStream::from_std(sock.into());
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.errors += 1;
            return;
        }
        let topics = self.first_topics();
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.state = State::Connecting;
        c.to_join = topics;
        c.generation += 1;
        c.sent = Instant::now();
        self.opening += 1;
    }

    /// Sends the JOIN for a freshly connected connection.
    fn send_first_join(&mut self, i: usize) {
        self.opening -= 1;
        let target = self.cfg.target;
        let member = self.member(i);
        let c = &mut self.conns[i];
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let topics = std::mem::take(&mut c.to_join);
        match target {
            Target::Headcount => {
                let names: Vec<Vec<u8>> = topics.iter().map(|&t| topic_name(t)).collect();
                let mut args: Vec<&[u8]> = vec![b"JOIN"];
                args.extend(names.iter().map(|n| n.as_slice()));
                encode_request(&mut out, &args);
                // One reply for the whole JOIN; it confirms every topic.
                for (k, &t) in topics.iter().enumerate() {
                    c.expect.push_back((if k == 0 { 2 } else { 3 }, t));
                }
            }
            Target::RedisIncr | Target::RedisSet => {
                for &t in &topics {
                    let name = topic_name(t);
                    if target == Target::RedisIncr {
                        encode_request(&mut out, &[&b"INCR"[..], &name]);
                    } else {
                        encode_request(&mut out, &[&b"SADD"[..], &name, &member]);
                    }
                    c.expect.push_back((1, t));
                }
            }
        }
        c.sent = Instant::now();
        c.state = State::Waiting;
        self.write(i, &out);
        self.out = out;
    }

    fn member(&self, i: usize) -> Vec<u8> {
        let global = i * self.cfg.threads + self.cfg.id;
        format!("u{global}.{}", self.conns[i].generation).into_bytes()
    }

    fn write(&mut self, i: usize, bytes: &[u8]) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else { return };
        // Requests are small and the socket buffer empty while we wait for replies, so one
        // write takes it all; anything else is an error of this run.
        match s.write(bytes) {
            Ok(n) if n == bytes.len() => {}
            _ => {
                self.errors += 1;
                self.drop_conn(i);
            }
        }
    }

    /// Closes connection `i`.
    fn drop_conn(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if c.state == State::Connecting {
            self.opening -= 1;
        }
        if self.cfg.target == Target::Headcount {
            // Against headcount a closed connection's presences leave, whatever the reason:
            // those it holds, and one it asked to leave without an answer yet.
            let pending = c.expect.iter().filter(|e| e.0 == -1).map(|e| e.1);
            for t in c.held.iter().copied().chain(pending) {
                self.ledger[t as usize] -= 1;
                self.leaves += 1;
            }
        }
        c.held.clear();
        c.expect.clear();
        c.partial.clear();
        c.state = State::Closed;
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool, closed: bool) {
        if self.conns[i].state == State::Connecting && (writable || readable) {
            let connected = self.conns[i]
                .stream
                .as_ref()
                .is_some_and(|s| s.take_error().ok().flatten().is_none() && s.peer_addr().is_ok());
            if connected {
                self.send_first_join(i);
            } else {
                self.errors += 1;
                self.drop_conn(i);
                return;
            }
        }
        if readable {
            self.read(i, closed);
        }
    }

    /// `closed`: the peer shut down; read on until EOF.
    fn read(&mut self, i: usize, closed: bool) {
        let mut buf = [0u8; 4096];
        loop {
            let c = &mut self.conns[i];
            let Some(s) = c.stream.as_mut() else { return };
            match s.read(&mut buf) {
                Ok(0) => {
                    self.errors += 1;
                    self.drop_conn(i);
                    return;
                }
                Ok(n) => {
                    c.partial.extend_from_slice(&buf[..n]);
                    self.replies(i);
                    if n < buf.len() && !closed {
                        // Drained: new bytes raise a new edge (one syscall saved per reply).
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.errors += 1;
                    self.drop_conn(i);
                    return;
                }
            }
        }
    }

    /// Consumes every whole reply received (here each is one line: `:n`, `+OK`, `-ERR …`).
    fn replies(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let mut at = 0;
        loop {
            let ok = match decode_reply(&c.partial[at..]) {
                Ok(Some((reply, used))) => {
                    at += used;
                    !reply.is_error()
                }
                Ok(None) => break,
                Err(_) => {
                    // Not a reply: an error of this run; the connection is closed.
                    self.errors += 1;
                    self.drop_conn(i);
                    return;
                }
            };
            if !ok {
                self.errors += 1;
            }
            // A headcount JOIN of k topics answers once: its expectations are one 2 then 3s.
            let Some((kind, t)) = c.expect.pop_front() else {
                self.errors += 1;
                continue;
            };
            let mut confirm = |kind: i8, t: u32, c: &mut Conn| match kind {
                1..=3 if ok => {
                    self.ledger[t as usize] += 1;
                    self.joins += 1;
                    c.held.push(t);
                }
                -1 if ok => {
                    self.ledger[t as usize] -= 1;
                    self.leaves += 1;
                }
                _ => {}
            };
            confirm(kind, t, c);
            while c.expect.front().is_some_and(|e| e.0 == 3) {
                let (k, t) = c.expect.pop_front().unwrap_or((0, 0));
                confirm(k, t, c);
            }
            if kind >= 1 && c.expect.iter().all(|e| e.0 < 1) {
                let us = c.sent.elapsed().as_micros().max(1) as u64;
                let _ = self.latency.record(us.min(60_000_000));
            }
            if c.expect.front().is_some_and(|e| e.0 == -2) {
                // Cleanup answered: close and reopen (Redis variants).
                c.expect.clear();
                self.reconnect.push(i);
                break;
            }
        }
        c.partial.drain(..at);
        if c.expect.is_empty() && c.state == State::Waiting {
            c.state = State::Idle;
            self.idle.push(i);
        }
    }

    fn pump(&mut self, events: &mut Events, timeout: Duration) {
        if self.poll.poll(events, Some(timeout)).is_err() {
            return;
        }
        let evs: Vec<(usize, bool, bool, bool)> = events
            .iter()
            .map(|e| {
                let closed = e.is_read_closed() || e.is_error();
                (
                    e.token().0,
                    e.is_readable() || closed,
                    e.is_writable(),
                    closed,
                )
            })
            .collect();
        for (i, r, w, closed) in evs {
            if i < self.conns.len() {
                self.on_event(i, r, w, closed);
            }
        }
    }

    /// Opens every connection and joins its first topics (bounded: 5 minutes).
    pub fn open_all(&mut self) {
        let mut events = Events::with_capacity(4096);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut next = 0;
        while Instant::now() < deadline {
            while next < self.conns.len() && self.opening < 512 {
                self.connect(next);
                next += 1;
            }
            if next >= self.conns.len()
                && self.opening == 0
                && self.conns.iter().all(|c| c.state != State::Waiting)
            {
                break;
            }
            self.pump(&mut events, Duration::from_millis(5));
        }
        self.idle = (0..self.conns.len())
            .filter(|&i| self.conns[i].state == State::Idle)
            .collect();
    }

    /// Takes a random idle connection off the idle list.
    fn take_idle(&mut self) -> Option<usize> {
        while !self.idle.is_empty() {
            let k = self.rng.below(self.idle.len());
            let i = self.idle.swap_remove(k);
            if self.conns[i].state == State::Idle {
                return Some(i);
            }
        }
        None
    }

    /// One churn operation on connection `i`; returns the joins it will make.
    fn churn_op(&mut self, i: usize) -> usize {
        let target = self.cfg.target;
        if self.conns[i].held.is_empty() || self.rng.below(2) == 0 {
            // Reconnect: leave everything by closing, then a new connection joins 1–3 topics.
            let held = std::mem::take(&mut self.conns[i].held);
            match target {
                Target::Headcount => {
                    self.conns[i].held = held;
                    self.drop_conn(i);
                    self.connect(i);
                }
                Target::RedisIncr | Target::RedisSet => {
                    // The app's cleanup on disconnect: one DECR (SREM) per held topic, then
                    // close, then reconnect (done when the replies are in).
                    if held.is_empty() {
                        self.drop_conn(i);
                        self.connect(i);
                    } else {
                        let member = self.member(i);
                        let mut out = std::mem::take(&mut self.out);
                        out.clear();
                        let c = &mut self.conns[i];
                        for &t in &held {
                            let name = topic_name(t);
                            if target == Target::RedisIncr {
                                encode_request(&mut out, &[&b"DECR"[..], &name]);
                            } else {
                                encode_request(&mut out, &[&b"SREM"[..], &name, &member]);
                            }
                            c.expect.push_back((-1, t));
                        }
                        // A marker: reconnect when everything before it is answered.
                        c.expect.push_back((-2, 0));
                        c.state = State::Waiting;
                        c.sent = Instant::now();
                        self.write(i, &out);
                        self.out = out;
                    }
                }
            }
            2
        } else {
            // Swap: leave one held topic, join another, in one write.
            let held = std::mem::take(&mut self.conns[i].held);
            let new = self.fresh_topic(&held);
            let c = &mut self.conns[i];
            c.held = held;
            let k = self.rng.below(c.held.len());
            let old = c.held.swap_remove(k);
            let member = self.member(i);
            let (o, n) = (topic_name(old), topic_name(new));
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            match target {
                Target::Headcount => {
                    encode_request(&mut out, &[&b"LEAVE"[..], &o]);
                    encode_request(&mut out, &[&b"JOIN"[..], &n]);
                }
                Target::RedisIncr => {
                    encode_request(&mut out, &[&b"DECR"[..], &o]);
                    encode_request(&mut out, &[&b"INCR"[..], &n]);
                }
                Target::RedisSet => {
                    encode_request(&mut out, &[&b"SREM"[..], &o, &member]);
                    encode_request(&mut out, &[&b"SADD"[..], &n, &member]);
                }
            }
            let c = &mut self.conns[i];
            c.expect.push_back((-1, old));
            c.expect.push_back((1, new));
            c.state = State::Waiting;
            c.sent = Instant::now();
            self.write(i, &out);
            self.out = out;
            1
        }
    }

    /// Churns at `joins_per_s` for `duration`, then waits (bounded) for the replies in flight.
    pub fn churn(&mut self, joins_per_s: f64, duration: Duration) {
        let mut events = Events::with_capacity(4096);
        let start = Instant::now();
        let mut credit = 0.0;
        let mut last = start;
        while start.elapsed() < duration {
            let now = Instant::now();
            credit += joins_per_s * now.duration_since(last).as_secs_f64();
            last = now;
            // Never bank more than 10 ms of schedule: a stall is reported as `behind`.
            let cap = (joins_per_s * 0.01).max(2.0);
            if credit > cap {
                self.behind += (credit - cap) as u64;
                credit = cap;
            }
            while credit >= 1.0 {
                match self.take_idle() {
                    Some(i) => credit -= self.churn_op(i) as f64,
                    None => {
                        self.behind += credit as u64;
                        credit = 0.0;
                    }
                }
            }
            self.pump(&mut events, Duration::from_micros(500));
            self.reconnect_after_cleanup();
        }
        // Drain: everything in flight answered (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.reconnect_after_cleanup();
            if self.opening == 0
                && self
                    .conns
                    .iter()
                    .all(|c| matches!(c.state, State::Idle | State::Closed))
            {
                break;
            }
            self.pump(&mut events, Duration::from_millis(5));
        }
        for c in &self.conns {
            if matches!(c.state, State::Waiting | State::Connecting) {
                self.errors += 1;
            }
        }
    }

    /// Redis variants: a connection whose cleanup (DECR/SREM) is answered closes and reopens.
    fn reconnect_after_cleanup(&mut self) {
        while let Some(i) = self.reconnect.pop() {
            self.drop_conn(i);
            self.connect(i);
        }
    }
}
