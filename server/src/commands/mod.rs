//! The commands `serve` answers: one table ([`COMMANDS`]) of name, arity, cost and handler.
//! Each handler reads its arguments, touches the worker's shard or the engine's read side, and
//! writes one reply. [`execute`] looks a request up, checks AUTH and the arity, and runs it.

mod context;
mod presence;
mod server;

pub use context::{Args, Ctx, Session};

use crate::resp::Reply;
/// The work units of a command whose cost grows with the whole topic table or cluster (`TOP`,
/// `INFO`, `NODES`, `CONFIG`): the worker looks at the clock after each. One unit is about one
/// topic looked up, joined or left.
pub const HEAVY: u32 = 64;

/// What a command costs, in work units the worker counts against the connection's turn.
#[derive(Debug, Clone, Copy)]
pub enum Cost {
    /// One unit.
    One,
    /// One unit per topic argument.
    PerTopic,
    /// [`HEAVY`]: it scans the topic table or the cluster.
    Heavy,
}

/// A command's handler.
pub type Handler = fn(&mut Ctx, &mut Session, &Args, &mut Reply);

/// One command.
pub struct Command {
    /// Its name (matched in any case).
    pub name: &'static str,
    /// Least and most arguments, the name included.
    pub arity: (usize, usize),
    /// Answered before `AUTH` (the others get `NOAUTH`).
    pub before_auth: bool,
    pub cost: Cost,
    pub run: Handler,
}

const ANY: usize = usize::MAX;

const fn cmd(name: &'static str, arity: (usize, usize), cost: Cost, run: Handler) -> Command {
    Command {
        name,
        arity,
        before_auth: false,
        cost,
        run,
    }
}

const fn open(name: &'static str, arity: (usize, usize), run: Handler) -> Command {
    Command {
        name,
        arity,
        before_auth: true,
        cost: Cost::One,
        run,
    }
}

/// Every command, the busiest first (the lookup is a scan).
pub const COMMANDS: &[Command] = &[
    cmd("JOIN", (2, ANY), Cost::PerTopic, presence::join),
    cmd("LEAVE", (2, ANY), Cost::PerTopic, presence::leave),
    cmd("COUNT", (2, ANY), Cost::PerTopic, presence::count),
    cmd("LCOUNT", (2, 2), Cost::One, presence::lcount),
    cmd("TOTAL", (1, 1), Cost::One, presence::total),
    cmd("TOP", (2, 2), Cost::Heavy, presence::top),
    cmd("PING", (1, 2), Cost::One, server::ping),
    cmd("ECHO", (2, 2), Cost::One, server::echo),
    open("AUTH", (2, 3), server::auth),
    open("HELLO", (1, ANY), server::hello),
    open("QUIT", (1, ANY), server::quit),
    cmd("NODES", (1, 1), Cost::Heavy, server::nodes),
    cmd("INFO", (1, ANY), Cost::Heavy, server::info),
    cmd("CLIENT", (2, ANY), Cost::One, server::client),
    cmd("CONFIG", (2, ANY), Cost::Heavy, server::config),
    cmd("COMMAND", (1, ANY), Cost::One, server::command),
    cmd("SELECT", (2, 2), Cost::One, server::select),
];

/// Runs one request. `args` is not empty. Returns its work units (1 for most; one per topic
/// for `JOIN`, `LEAVE` and `COUNT`; [`HEAVY`] for those that scan the table or the cluster),
/// which the worker counts against the connection's turn.
pub fn execute(ctx: &mut Ctx, s: &mut Session, args: &Args, r: &mut Reply) -> u32 {
    let name = args.get(0);
    let found = COMMANDS.iter().find(|c| context::is(name, c.name));
    let Some(c) = found.filter(|c| s.authed || c.before_auth) else {
        if !s.authed {
            r.error("NOAUTH Authentication required.");
        } else {
            let name = String::from_utf8_lossy(name);
            let name: String = name.chars().take(64).collect();
            r.error(&format!("ERR unknown command '{name}'"));
        }
        return 1;
    };
    if !(c.arity.0..=c.arity.1).contains(&args.len()) {
        context::wrong_args(r, name);
        return 1;
    }
    (c.run)(ctx, s, args, r);
    match c.cost {
        Cost::One => 1,
        Cost::PerTopic => u32::try_from(args.len() - 1).unwrap_or(u32::MAX).max(1),
        Cost::Heavy => HEAVY,
    }
}
