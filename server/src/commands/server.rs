//! The connection and server commands: `PING`, `ECHO`, `AUTH`, `HELLO`, `QUIT`, `SELECT`,
//! `CLIENT`, `CONFIG`, `COMMAND` (answered so that stock Redis tools start cleanly), `NODES`
//! and `INFO`.

use super::context::{Args, Ctx, Session, is};
use crate::resp::Reply;
use crate::shared::Shared;

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

pub fn ping(_: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    if args.len() == 2 {
        r.bulk(args.get(1));
    } else {
        r.simple("PONG");
    }
}

pub fn echo(_: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    r.bulk(args.get(1));
}

pub fn quit(_: &mut Ctx, s: &mut Session, _: &Args, r: &mut Reply) {
    s.closing = true;
    r.simple("OK");
}

pub fn select(_: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    if args.get(1) == b"0" {
        r.simple("OK");
    } else {
        r.error("ERR DB index is out of range");
    }
}

/// redis-cli asks for command docs at start: an empty answer is a valid one.
pub fn command(_: &mut Ctx, _: &mut Session, _: &Args, r: &mut Reply) {
    r.array(0);
}

pub fn hello(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
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
                return r.error(WRONGPASS);
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

pub fn auth(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
    if ctx.shared.password.is_none() {
        return r.error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
    }
    if args.len() == 3 && args.get(1) != b"default" {
        return r.error(WRONGPASS);
    }
    if check_password(ctx.shared, args.get(args.len() - 1)) {
        s.authed = true;
        r.simple("OK");
    } else {
        r.error(WRONGPASS);
    }
}

pub fn client(_: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
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

pub fn config(ctx: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    if !is(args.get(1), "GET") {
        return r.error("ERR CONFIG: only CONFIG GET is supported");
    }
    // What redis-benchmark and friends ask about, then headcount's own settings.
    let settings = ctx.shared.config_pairs();
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
    r.map(12);
    r.bulk(b"id");
    r.bulk(format!("{id:016x}").as_bytes());
    r.bulk(b"addr");
    r.bulk(addr.as_bytes());
    // How this node found the peer: configured, dns, learned, multicast, custom ("self" for
    // this node).
    r.bulk(b"found");
    let found = match p {
        None => "self",
        Some(p) => p.found.map_or("unknown", |f| f.as_str()),
    };
    r.bulk(found.as_bytes());
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

pub fn nodes(ctx: &mut Ctx, _: &mut Session, _: &Args, r: &mut Reply) {
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

/// `INFO [section …]`: Redis-style text (see `info.rs`).
pub fn info(ctx: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    let want: Vec<String> = args
        .rest(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    r.text(&crate::info::render(ctx.shared, &want));
}
