//! `headcount ping`: one `PING` to a `headcount serve` (after `AUTH`, with a password), for
//! readiness and liveness probes (Kubernetes `exec`, Docker `HEALTHCHECK`, scripts). Exit
//! status 0 on `PONG`; 1 with one line on standard error saying why not (connection refused,
//! no answer within `--timeout`, a refused password, any other reply); 2 for bad flags or a bad
//! config file.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use headcount_server::config::{self, ConfigError, ServeOptions};
use headcount_server::resp::client::{Client, Value};

/// `serve`'s default `--listen`.
const DEFAULT_ADDR: &str = "127.0.0.1:7379";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server's RESP address [default: 127.0.0.1:7379, or the `listen` of --config].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Send AUTH with this password first (serve's --requirepass) [default: the `requirepass`
    /// of --config].
    #[arg(long, visible_alias = "requirepass", value_name = "PASSWORD")]
    password: Option<String>,
    /// Give up after this long: connecting, AUTH and PING together.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// serve's TOML config file: ping its `listen` address (on loopback when it is 0.0.0.0 or
    /// [::]) with its `requirepass`. --addr and --password win over it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

/// Why a ping failed, in one line.
#[derive(Debug)]
struct Failed(String);

pub fn run(a: Args) -> Result<ExitCode, ConfigError> {
    if a.timeout.is_zero() {
        return Err(ConfigError("--timeout 0s: must be more than zero".into()));
    }
    let (addr, password) = target(&a)?;
    let start = Instant::now();
    match ping(&addr, password.as_deref(), a.timeout) {
        Ok(at) => {
            if !a.quiet {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                println!("PONG from {at} in {ms:.1} ms");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Failed(why)) => {
            eprintln!("headcount ping: {addr}: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The address to ping and the password to give, from the flags and the config file.
fn target(a: &Args) -> Result<(String, Option<String>), ConfigError> {
    let file: Option<ServeOptions> = match &a.config {
        None => None,
        Some(p) => Some(config::parse_args(
            "serve",
            [OsString::from("--config"), p.into()],
        )?),
    };
    let addr = match (&a.addr, &file) {
        (Some(addr), _) => addr.clone(),
        (None, Some(o)) => reachable(o.listen).to_string(),
        (None, None) => DEFAULT_ADDR.to_string(),
    };
    let password = a
        .password
        .clone()
        .or_else(|| file.and_then(|o| o.requirepass));
    Ok((addr, password))
}

/// Where a client on this host reaches a server listening on `listen`: loopback for the
/// unspecified address (`0.0.0.0`, `[::]`).
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Connects (to the first of `addr`'s addresses that answers), sends AUTH if there is a
/// password, then PING; the address that answered `PONG`.
fn ping(addr: &str, password: Option<&str>, timeout: Duration) -> Result<SocketAddr, Failed> {
    let deadline = Instant::now() + timeout;
    let within = humantime::format_duration(timeout).to_string();
    let within = within.as_str();
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Failed(format!("not an address to connect to: {e}")))?
        .collect();
    let mut last = Failed("resolves to no address".into());
    let mut connected = None;
    for at in addrs {
        let Some(left) = left(deadline) else {
            last = Failed(format!("no connection within {within}"));
            break;
        };
        match Client::connect_timeout(at, left) {
            Ok(c) => {
                connected = Some((c, at));
                break;
            }
            Err(e) => {
                // The address only when it is not the one given (a host name's).
                let to = if at.to_string() == addr {
                    String::new()
                } else {
                    format!(" ({at})")
                };
                last = connect_failed(&to, &e, within);
            }
        }
    }
    let (mut c, at) = connected.ok_or(last)?;
    if let Some(p) = password {
        match call(&mut c, &["AUTH", p], deadline, within)? {
            Value::Simple(s) if s == "OK" => {}
            Value::Error(e) => return Err(Failed(format!("AUTH refused: {e}"))),
            other => return Err(Failed(format!("AUTH answered {}, not OK", show(&other)))),
        }
    }
    match call(&mut c, &["PING"], deadline, within)? {
        Value::Simple(s) if s == "PONG" => Ok(at),
        Value::Error(e) if e.starts_with("NOAUTH") => Err(Failed(format!(
            "the server wants a password ({e}): give --password, or --config with its \
             requirepass"
        ))),
        other => Err(Failed(format!("PING answered {}, not PONG", show(&other)))),
    }
}

/// The time left before `deadline`, if any.
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn connect_failed(to: &str, e: &io::Error, within: &str) -> Failed {
    Failed(match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("connection refused{to}: nothing listens there (is `headcount serve` running?)")
        }
        _ if timed_out(e) => format!("no connection{to} within {within}"),
        _ => format!("cannot connect{to}: {e}"),
    })
}

/// Sends one command (`args[0]` names it in errors; the others, a password, never appear) and
/// reads its reply before `deadline`.
fn call(c: &mut Client, args: &[&str], deadline: Instant, within: &str) -> Result<Value, Failed> {
    let name = args[0];
    let late = || Failed(format!("no reply to {name} within {within}"));
    let wait = left(deadline).ok_or_else(late)?;
    let failed = |e: io::Error| match e.kind() {
        _ if timed_out(&e) => late(),
        io::ErrorKind::UnexpectedEof => Failed(format!(
            "the connection was closed before the reply to {name}"
        )),
        io::ErrorKind::InvalidData => Failed(format!("not a RESP reply to {name}: {e}")),
        _ => Failed(format!("{name}: {e}")),
    };
    c.set_timeout(Some(wait)).map_err(failed)?;
    c.send(args).map_err(failed)?;
    c.read().map_err(failed)
}

/// A reply, short, as it would read on the wire.
fn show(v: &Value) -> String {
    let s = match v {
        Value::Simple(s) => format!("+{s}"),
        Value::Error(e) => format!("-{e}"),
        other => format!("{other:?}"),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}
