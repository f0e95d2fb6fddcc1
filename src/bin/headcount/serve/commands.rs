//! The commands `serve` answers, one function per command. Each reads its arguments, touches
//! the worker's shard or the engine's read side, and writes one reply.

use std::fmt::Write as _;
use std::ops::Range;

use headcount::{Engine, Presence, Reject, Shard};

use super::Shared;
use crate::resp::Reply;

/// Longest topic name: what the cluster wire can name on every peer.
pub const MAX_TOPIC_LEN: usize = 255;
/// Most entries `TOP` returns.
pub const MAX_TOP: usize = 10_000;
/// The work units of a command whose cost grows with the whole topic table or cluster (`TOP`,
/// `INFO`, `NODES`, `CONFIG`): the worker looks at the clock after each. One unit is about one
/// topic looked up, joined or left.
pub const HEAVY: u32 = 64;

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
    fn rest(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + '_ {
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

fn is(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

fn wrong_args(r: &mut Reply, cmd: &[u8]) {
    let cmd = String::from_utf8_lossy(cmd).to_ascii_lowercase();
    r.error(&format!(
        "ERR wrong number of arguments for '{cmd}' command"
    ));
}

/// Runs one command. `args` is not empty. Returns its work units (1 for most; one per topic
/// for `JOIN`, `LEAVE` and `COUNT`; [`HEAVY`] for those that scan the table or the cluster),
/// which the worker counts against the connection's turn.
pub fn execute(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) -> u32 {
    let cmd = args.get(0);
    let n = args.len();
    // Commands allowed before AUTH.
    if is(cmd, "AUTH") {
        auth(ctx, s, args, r);
        return 1;
    }
    if is(cmd, "HELLO") {
        hello(ctx, s, args, r);
        return 1;
    }
    if is(cmd, "QUIT") {
        s.closing = true;
        r.simple("OK");
        return 1;
    }
    if !s.authed {
        r.error("NOAUTH Authentication required.");
        return 1;
    }
    let arity_ok = |min: usize, max: usize| (min..=max).contains(&n);
    macro_rules! need {
        ($min:expr, $max:expr) => {
            if !arity_ok($min, $max) {
                wrong_args(r, cmd);
                return 1;
            }
        };
    }
    let per_topic = u32::try_from(n - 1).unwrap_or(u32::MAX).max(1);
    if is(cmd, "JOIN") {
        need!(2, usize::MAX);
        join(ctx, s, args, r);
        return per_topic;
    } else if is(cmd, "LEAVE") {
        need!(2, usize::MAX);
        leave(ctx, s, args, r);
        return per_topic;
    } else if is(cmd, "COUNT") {
        need!(2, usize::MAX);
        let engine = &ctx.shared.engine;
        if n == 2 {
            r.uint(count(engine, args.get(1)));
        } else {
            r.array(n - 1);
            for t in args.rest(1) {
                r.uint(count(engine, t));
            }
        }
        return per_topic;
    } else if is(cmd, "LCOUNT") {
        need!(2, 2);
        let engine = &ctx.shared.engine;
        let c = std::str::from_utf8(args.get(1))
            .ok()
            .and_then(|t| engine.lookup(t))
            .map_or(0, |t| engine.local_count(t));
        r.uint(c);
    } else if is(cmd, "TOTAL") {
        need!(1, 1);
        r.uint(ctx.shared.engine.total());
    } else if is(cmd, "TOP") {
        need!(2, 2);
        top(ctx, args, r);
        return HEAVY;
    } else if is(cmd, "PING") {
        need!(1, 2);
        if n == 2 {
            r.bulk(args.get(1));
        } else {
            r.simple("PONG");
        }
    } else if is(cmd, "ECHO") {
        need!(2, 2);
        r.bulk(args.get(1));
    } else if is(cmd, "NODES") {
        need!(1, 1);
        nodes(ctx, r);
        return HEAVY;
    } else if is(cmd, "INFO") {
        r.text(&info(ctx.shared, args));
        return HEAVY;
    } else if is(cmd, "CLIENT") {
        need!(2, usize::MAX);
        client(args, r);
    } else if is(cmd, "CONFIG") {
        need!(2, usize::MAX);
        config(ctx.shared, args, r);
        return HEAVY;
    } else if is(cmd, "COMMAND") {
        // redis-cli asks for command docs at start: an empty answer is a valid one.
        r.array(0);
    } else if is(cmd, "SELECT") {
        need!(2, 2);
        if args.get(1) == b"0" {
            r.simple("OK");
        } else {
            r.error("ERR DB index is out of range");
        }
    } else {
        let name = String::from_utf8_lossy(cmd);
        let name: String = name.chars().take(64).collect();
        r.error(&format!("ERR unknown command '{name}'"));
    }
    1
}

fn count(engine: &Engine, topic: &[u8]) -> u64 {
    std::str::from_utf8(topic).map_or(0, |t| engine.count_by_name(t))
}

/// A topic name from an argument, or the error reply for it.
fn topic_name(t: &[u8]) -> Result<&str, String> {
    if t.is_empty() {
        return Err("ERR empty topic name".into());
    }
    if t.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "ERR topic name longer than {MAX_TOPIC_LEN} bytes ({} bytes)",
            t.len()
        ));
    }
    std::str::from_utf8(t).map_err(|_| "ERR topic name is not UTF-8".to_string())
}

fn join(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
    let adding = args.len() - 1;
    let limit = ctx.shared.limits.max_topics_per_connection;
    if s.presences.len() + adding > limit {
        return r.error(&format!(
            "ERR too many presences on this connection (limit {limit}; it holds {})",
            s.presences.len()
        ));
    }
    // Check every name first: a JOIN either joins all its topics or none.
    for t in args.rest(1) {
        if let Err(e) = topic_name(t) {
            return r.error(&e);
        }
    }
    if !ctx.shared.counting {
        // `--no-count`: the same parsing and checks, nothing counted (to measure the overhead).
        return r.uint(adding as u64);
    }
    // Exact growth while small (most connections hold 1–3 presences), doubling beyond.
    if s.presences.len() + adding <= 8 {
        s.presences.reserve_exact(adding);
    } else {
        s.presences.reserve(adding);
    }
    let engine = &ctx.shared.engine;
    let before = s.presences.len();
    for t in args.rest(1) {
        let name = topic_name(t).unwrap_or_default();
        // A topic retired between the lookup and the join (it sat at zero for retire_after,
        // and a tick ran right then) makes the handle stale: look it up again.
        let mut joined = Err(headcount::Error::StaleTopic { id: 0 });
        for _ in 0..3 {
            joined = engine
                .try_topic(name)
                .and_then(|topic| ctx.shard.try_join(topic));
            if !matches!(joined, Err(headcount::Error::StaleTopic { .. })) {
                break;
            }
        }
        match joined {
            Ok(p) => s.presences.push(p),
            Err(e) => {
                // The topic table is full: undo this command's joins.
                s.presences.truncate(before);
                return r.error(&format!("ERR {e}"));
            }
        }
    }
    ctx.presences_delta += adding as i64;
    r.uint(adding as u64);
}

fn leave(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
    if !ctx.shared.counting {
        return r.uint(args.rest(1).filter(|t| topic_name(t).is_ok()).count() as u64);
    }
    let engine = &ctx.shared.engine;
    let mut left = 0u64;
    for t in args.rest(1) {
        let Some(topic) = std::str::from_utf8(t).ok().and_then(|t| engine.lookup(t)) else {
            continue;
        };
        // The most recent presence in this topic leaves (order does not matter for counting).
        if let Some(i) = s.presences.iter().rposition(|p| p.topic() == topic) {
            drop(s.presences.swap_remove(i));
            left += 1;
        }
    }
    if s.presences.is_empty() {
        // An idle connection keeps no heap memory for presences.
        s.presences = Vec::new();
    }
    ctx.presences_delta -= left as i64;
    r.uint(left);
}

fn top(ctx: &Ctx, args: &Args, r: &mut Reply) {
    let k = std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|k| k.parse::<usize>().ok());
    let Some(k) = k else {
        return r.error("ERR value is not an integer or out of range");
    };
    if k > MAX_TOP {
        return r.error(&format!("ERR TOP k is limited to {MAX_TOP}"));
    }
    let top = ctx.shared.engine.top(k);
    if r.resp3 {
        r.map(top.len());
    } else {
        r.array(2 * top.len());
    }
    for (name, c) in top {
        r.bulk(name.as_bytes());
        r.uint(c);
    }
}

fn hello(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
    let mut i = 1;
    let mut proto = if s.resp3 { 3 } else { 2 };
    if args.len() > 1 {
        match args.get(1) {
            b"2" => proto = 2,
            b"3" => proto = 3,
            _ => return r.error("NOPROTO unsupported protocol version"),
        }
        i = 2;
    }
    while i < args.len() {
        let opt = args.get(i);
        if is(opt, "AUTH") && i + 2 < args.len() {
            if args.get(i + 1) != b"default" || !check_password(ctx.shared, args.get(i + 2)) {
                return r.error("WRONGPASS invalid username-password pair or user is disabled.");
            }
            s.authed = true;
            i += 3;
        } else if is(opt, "SETNAME") && i + 1 < args.len() {
            i += 2;
        } else {
            return r.error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    if !s.authed {
        return r.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    s.resp3 = proto == 3;
    r.resp3 = s.resp3;
    r.map(7);
    r.bulk(b"server");
    r.bulk(b"headcount");
    r.bulk(b"version");
    r.bulk(env!("CARGO_PKG_VERSION").as_bytes());
    r.bulk(b"proto");
    r.int(proto);
    r.bulk(b"id");
    r.uint(ctx.shared.engine.node_id().unwrap_or(0));
    r.bulk(b"mode");
    r.bulk(b"standalone");
    r.bulk(b"role");
    r.bulk(b"master");
    r.bulk(b"modules");
    r.array(0);
}

fn check_password(shared: &Shared, given: &[u8]) -> bool {
    match &shared.password {
        // Compare without an early exit, so timing does not reveal a prefix.
        Some(p) => {
            p.len() == given.len()
                && p.as_bytes()
                    .iter()
                    .zip(given)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        None => false,
    }
}

fn auth(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
    if !(2..=3).contains(&args.len()) {
        return wrong_args(r, args.get(0));
    }
    if ctx.shared.password.is_none() {
        return r.error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
    }
    if args.len() == 3 && args.get(1) != b"default" {
        return r.error("WRONGPASS invalid username-password pair or user is disabled.");
    }
    if check_password(ctx.shared, args.get(args.len() - 1)) {
        s.authed = true;
        r.simple("OK");
    } else {
        r.error("WRONGPASS invalid username-password pair or user is disabled.");
    }
}

fn client(args: &Args, r: &mut Reply) {
    let sub = args.get(1);
    if is(sub, "GETNAME") {
        r.null();
    } else if is(sub, "ID") {
        r.int(1);
    } else {
        // SETNAME, SETINFO, NO-EVICT…: accepted and ignored, so stock clients start cleanly.
        r.simple("OK");
    }
}

fn config(shared: &Shared, args: &Args, r: &mut Reply) {
    if !is(args.get(1), "GET") {
        return r.error("ERR CONFIG: only CONFIG GET is supported");
    }
    // What redis-benchmark and friends ask about, then headcount's own settings.
    let settings = shared.config_pairs();
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pat in args.rest(2) {
        for (k, v) in &settings {
            if (pat == b"*" || k.as_bytes().eq_ignore_ascii_case(pat))
                && !out.iter().any(|(o, _)| o == k)
            {
                out.push((k, v));
            }
        }
    }
    r.map(out.len());
    for (k, v) in out {
        r.bulk(k.as_bytes());
        r.bulk(v.as_bytes());
    }
}

/// One `NODES` entry: this node (`me`) or a peer.
fn node_entry(r: &mut Reply, id: u64, addr: String, p: Result<&headcount::NodeInfo, u64>) {
    let (me, p, my_total) = match p {
        Ok(p) => (false, Some(p), 0),
        Err(total) => (true, None, total),
    };
    r.map(11);
    r.bulk(b"id");
    r.bulk(format!("{id:016x}").as_bytes());
    r.bulk(b"addr");
    r.bulk(addr.as_bytes());
    r.bulk(b"self");
    r.boolean(me);
    r.bulk(b"alive");
    r.boolean(p.is_none_or(|p| p.alive));
    r.bulk(b"converged");
    r.boolean(p.is_none_or(|p| p.converged));
    // Its table is over this node's --max-topics: counted here incompletely.
    r.bulk(b"over_cap");
    r.boolean(p.is_some_and(|p| p.over_cap));
    let nums = [
        (
            "last_heard_ms",
            p.map_or(0, |p| p.last_heard.as_millis() as u64),
        ),
        ("topics", p.map_or(0, |p| p.topics as u64)),
        ("total", p.map_or(my_total, |p| p.total)),
        ("received", p.map_or(0, |p| p.received)),
        ("lost", p.map_or(0, |p| p.lost)),
    ];
    for (k, v) in nums {
        r.bulk(k.as_bytes());
        r.uint(v);
    }
}

fn nodes(ctx: &Ctx, r: &mut Reply) {
    let engine = &ctx.shared.engine;
    let peers = engine.nodes();
    r.array(peers.len() + 1);
    let addr = engine.local_addr().map_or(String::new(), |a| a.to_string());
    node_entry(
        r,
        engine.node_id().unwrap_or(0),
        addr,
        Err(engine.local_total()),
    );
    for p in &peers {
        node_entry(r, p.node, p.addr.to_string(), Ok(p));
    }
}

/// `INFO [section]`: Redis-style text.
pub fn info(shared: &Shared, args: &Args) -> String {
    let want: Vec<String> = (1..args.len())
        .map(|i| String::from_utf8_lossy(args.get(i)).to_ascii_lowercase())
        .collect();
    let show = |s: &str| {
        want.is_empty()
            || want
                .iter()
                .any(|w| w == s || w == "all" || w == "everything")
    };
    let engine = &shared.engine;
    let w = shared.worker_totals();
    let st = engine.stats();
    let mut o = String::new();
    if show("server") {
        let _ = write!(
            o,
            "# Server\r\nheadcount_version:{}\r\nredis_version:7.0.0\r\nnode_id:{:016x}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nworkers:{}\r\ntick_ms:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            engine.node_id().unwrap_or(0),
            std::process::id(),
            shared.listen.port(),
            shared.started.elapsed().as_secs(),
            shared.workers,
            engine.tick_interval().as_millis(),
        );
    }
    if show("clients") {
        let _ = write!(
            o,
            "# Clients\r\nconnected_clients:{}\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\nprotocol_errors:{}\r\nmax_clients:{}\r\nclient_buffer_bytes:{}\r\nmax_client_memory:{}\r\nclients_paused_for_output:{}\r\noutput_limit_closes:{}\r\nmemory_limit_closes:{}\r\nmax_output:{}\r\n\r\n",
            w.connections,
            w.accepted,
            w.rejected,
            w.protocol_errors,
            shared.limits.max_connections,
            shared.client_memory(),
            shared.limits.max_client_memory,
            w.paused,
            w.output_limit_closes,
            w.memory_limit_closes,
            shared.limits.max_output,
        );
    }
    if show("presence") {
        let _ = write!(
            o,
            "# Presence\r\npresences:{}\r\nlocal_total:{}\r\ncluster_total:{}\r\ntopics:{}\r\ntopic_capacity:{}\r\ncommands_processed:{}\r\n\r\n",
            w.presences,
            engine.local_total(),
            engine.total(),
            st.topics,
            st.topic_capacity,
            w.commands,
        );
    }
    if show("engine") {
        let _ = write!(
            o,
            "# Engine\r\nticks:{}\r\nlast_tick_us:{}\r\nmax_tick_us:{}\r\nchanges:{}\r\nretired:{}\r\nrescans:{}\r\nshared_ops:{}\r\nstale_joins:{}\r\n\r\n",
            st.ticks,
            st.last_tick.as_micros(),
            st.max_tick.as_micros(),
            st.changes,
            st.retired,
            st.rescans,
            st.shared_ops,
            st.stale_joins,
        );
    }
    if show("cluster") {
        match engine.cluster_stats() {
            Some(c) => {
                let p = &c.protocol;
                let _ = write!(
                    o,
                    "# Cluster\r\ncluster_enabled:1\r\npeers:{}\r\npeers_alive:{}\r\npeers_converged:{}\r\ndatagrams_sent:{}\r\nbytes_sent:{}\r\ndatagrams_received:{}\r\ndatagrams_rejected:{}\r\nresync_requests:{}\r\nresync_replies:{}\r\npeers_died:{}\r\nsend_errors:{}\r\nrecv_errors:{}\r\n",
                    engine.nodes().len(),
                    c.peers_alive,
                    c.peers_converged,
                    p.sent,
                    p.bytes_sent,
                    p.received,
                    p.rejected_total(),
                    p.resync_requests,
                    p.resync_replies,
                    p.peers_died,
                    c.send_errors,
                    c.recv_errors,
                );
                let _ = write!(
                    o,
                    "peers_over_cap:{}\r\nobservers:{}\r\nbacklog:{}\r\nrepair_bytes_sent:{}\r\nnode_id:{:016x}\r\n",
                    c.peers_over_cap,
                    p.observers,
                    c.backlog,
                    p.repair_bytes,
                    engine.node_id().unwrap_or(0),
                );
                for (i, reason) in Reject::ALL.iter().enumerate() {
                    let _ = write!(o, "rejected_{}:{}\r\n", reason.name(), p.rejected[i]);
                }
                o.push_str("\r\n");
            }
            None => o.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n"),
        }
    }
    while o.ends_with("\r\n\r\n") {
        o.truncate(o.len() - 2);
    }
    o
}
