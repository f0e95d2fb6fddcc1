//! The presence commands: `JOIN`, `LEAVE` (through the worker's shard), and the counts
//! (`COUNT`, `LCOUNT`, `TOTAL`, `TOP`, from the engine's read side).

use headcount::Engine;

use super::context::{Args, Ctx, Session};
use crate::resp::Reply;

/// Longest topic name: what the cluster wire can name on every peer.
pub const MAX_TOPIC_LEN: usize = headcount::MAX_NAME_LEN;
/// Most entries `TOP` returns.
pub const MAX_TOP: usize = 10_000;

fn count_of(engine: &Engine, topic: &[u8]) -> u64 {
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

pub fn join(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
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

pub fn leave(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) {
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

pub fn count(ctx: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    let engine = &ctx.shared.engine;
    if args.len() == 2 {
        r.uint(count_of(engine, args.get(1)));
    } else {
        r.array(args.len() - 1);
        for t in args.rest(1) {
            r.uint(count_of(engine, t));
        }
    }
}

pub fn lcount(ctx: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
    let engine = &ctx.shared.engine;
    let c = std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|t| engine.lookup(t))
        .map_or(0, |t| engine.local_count(t));
    r.uint(c);
}

pub fn total(ctx: &mut Ctx, _: &mut Session, _: &Args, r: &mut Reply) {
    r.uint(ctx.shared.engine.total());
}

pub fn top(ctx: &mut Ctx, _: &mut Session, args: &Args, r: &mut Reply) {
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
