//! Settings of `serve` and `watch`: every flag is declared once, with its type, default and help,
//! in [`ServeOptions`] and [`ClusterOptions`] (clap derives). A TOML config file (`--config`)
//! holds the same flags as keys, spelt with `_` for `-` (`max_client_memory = 2097152`,
//! `standalone = true`, `peers = ["10.0.0.6:7380"]`): [`parse_args`] turns its keys into flags
//! placed under the command line's, so a flag given on the command line wins over the file, and
//! the file over the default — with no second list of keys to keep in step. Unknown keys are an
//! error (a typo must not be ignored), and so is a bad value, naming the file and the key.
//!
//! [`Settings::new`] then checks the flags against each other and turns them into what
//! `serve::run` takes.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use headcount::{Builder, DEFAULT_GROUP, Transport, defaults};

use crate::resp;

/// An error in the settings (or in starting the server with them), printed as
/// `headcount: <message>` with exit status 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl From<headcount::Error> for ConfigError {
    fn from(e: headcount::Error) -> Self {
        ConfigError(e.to_string())
    }
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The cluster flags, shared by `serve` and `watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterOptions {
    /// TOML config file: its keys are these flags, with `_` for `-`; flags given on the command
    /// line win over its keys.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Reducer and gossip tick.
    // The library's `defaults::TICK`, written as text for clap (a test checks they agree).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration)]
    pub tick: Duration,
    /// Drop a peer not heard from for this long [default: 3s, at least 3 of its ticks].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub dead_after: Option<Duration>,
    /// Multicast group and port.
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::V4(DEFAULT_GROUP), conflicts_with = "peers")]
    pub group: SocketAddr,
    /// The interface for multicast: its IPv4 address for an IPv4 group; its index or name
    /// (`eth0`) for an IPv6 group (`--group [ff12::4845:4144]:7380`).
    #[arg(long, value_name = "ADDR|INDEX|NAME", default_value_t = defaults::INTERFACE.to_string())]
    pub interface: String,
    /// Use unicast to these peers (comma-separated ADDR:PORT) instead of multicast.
    #[arg(long, value_name = "ADDR,…", value_delimiter = ',')]
    pub peers: Option<Vec<SocketAddr>>,
    /// Find peers by DNS: every address NAME resolves to (A and AAAA records) is a peer; NAME
    /// is resolved again every --dns-interval. Repeatable (or comma-separated). Unicast, like
    /// --peers (with which it combines); for a Kubernetes headless Service or Fly.io's
    /// `<app>.internal`.
    #[arg(
        long,
        value_name = "NAME:PORT",
        value_delimiter = ',',
        conflicts_with = "group"
    )]
    pub peers_dns: Vec<String>,
    /// With --peers or --peers-dns: most copies a node sends of each of its datagrams; with more
    /// peers they travel a tree of this fan-out, relayed by the others (0: never; else 2-255).
    // The library's `defaults::RELAY_FANOUT`, as text for clap (a test checks they agree).
    #[arg(long, value_name = "N", default_value = "16")]
    pub relay_fanout: usize,
    /// Repair with plain datagrams only, not parity (while some nodes run a version without
    /// it).
    #[arg(long)]
    pub no_parity: bool,
    /// How often --peers-dns names are resolved again.
    // The library's `defaults::DNS_INTERVAL`, as text for clap (a test checks they agree).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub dns_interval: Duration,
    /// The UDP address to bind for unicast (with --peers or --peers-dns; `[::]:PORT` for IPv6,
    /// which reaches IPv4 peers too).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_GROUP.port())),
    )]
    pub cluster_bind: SocketAddr,
    /// Cluster name: nodes of other clusters are ignored.
    #[arg(long, value_name = "NAME", default_value = defaults::CLUSTER_NAME)]
    pub cluster: String,
    /// File holding the cluster key (datagrams are authenticated with it) [default on loopback:
    /// ~/.local/state/headcount/cluster.key, created on first start].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Allow a non-loopback network without a key or password (and run a loopback cluster
    /// without the default key).
    #[arg(long)]
    pub insecure: bool,
    /// Run alone: no cluster sockets at all.
    #[arg(long)]
    pub standalone: bool,
}

/// Log format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The flags of `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeOptions {
    /// Address to serve RESP on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,
    /// Worker threads, each with its own listener, event loop and shard [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Pin the engine thread to the last CPU and each worker to one of the others.
    #[arg(long)]
    pub pin: bool,
    /// Password clients must give with AUTH (or HELLO … AUTH).
    #[arg(long, value_name = "PASSWORD")]
    pub requirepass: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Topics listed with their counts in the metrics.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub metrics_top: usize,
    /// Log format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most client connections at once.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub max_connections: usize,
    /// Most presences one connection may hold.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_topics_per_connection: usize,
    /// Most arguments in one command.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_args: usize,
    /// Longest argument, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub max_arg_len: usize,
    /// Unsent replies, in bytes, past which a client is closed. A client that stops reading is
    /// paused (neither read nor answered) at 256 KiB of them, so only one reply that large
    /// takes it past this. (With pausing, only one reply can take a client past 256 KiB; the
    /// largest, TOP 10000 of 255-byte names, is under 3 MiB, so 16 MiB closes no client that
    /// reads.)
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_output: usize,
    /// Bytes all clients' buffers (partial requests and unsent replies) may hold together:
    /// past it, clients with unsent replies are not read and the largest holders are closed.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_client_memory: usize,
    /// TCP keepalive idle time: a client whose machine vanished without closing is detected
    /// (and its presences leave) about this long plus 30 s later; `0s` turns it off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub tcp_keepalive: Duration,
    /// Topic table size: most topics known at once, local and remote.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_topics: usize,
    /// Parse and answer JOIN and LEAVE but count nothing: a baseline for measuring what
    /// counting costs (`headcount-perf overhead`). Not for production.
    #[arg(long)]
    pub no_count: bool,
    /// This node's id in the cluster: 16 hex digits, or any name (hashed). It must stay the same
    /// across restarts and differ between servers [default: derived from the cluster name, the
    /// host name, the network namespace if not pid 1's, and the listen address].
    #[arg(long, value_name = "ID|NAME")]
    pub node_id: Option<String>,
    /// How long a topic's count must stay zero before its id is reused.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub retire_after: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterOptions,
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn command<T: clap::Args>(name: &'static str) -> clap::Command {
    T::augment_args(clap::Command::new(name).no_binary_name(true))
}

/// Reads a TOML config file.
fn load_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| {
        ConfigError(format!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

/// A config value as a flag's value.
fn flag_value(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(a) => a
            .iter()
            .map(flag_value)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        toml::Value::Table(_) => None,
    }
}

/// Parses the flags of the subcommand `name` (`args` without the binary's and the subcommand's
/// names), with the keys of the config file named by `--config` (if any) under them.
///
/// Every key must be one of `serve`'s flags (one file serves both `serve` and `watch`); the
/// keys that are not flags of this subcommand are skipped.
pub fn parse_args<T: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<T, ConfigError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = command::<T>(name);
    let given = cmd
        .clone()
        .try_get_matches_from(&args)
        .map_err(|e| ConfigError(clap_message(&e)))?;
    let matches = match given.get_one::<PathBuf>("config") {
        None => given,
        Some(path) => {
            let file = load_file(path)?;
            let in_file =
                |what: String| ConfigError(format!("config file {}: {what}", path.display()));
            let serve = command::<ServeOptions>("serve");
            let mut file_args: Vec<OsString> = Vec::new();
            for (key, value) in &file {
                let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key.as_str()) else {
                    if serve.get_arguments().any(|a| a.get_id() == key.as_str()) {
                        continue; // a `serve` key in a file `watch` reads too
                    }
                    return Err(in_file(format!(
                        "unknown key `{key}` (the keys are the flags, with `_` for `-`)"
                    )));
                };
                let long = arg.get_long().unwrap_or(key);
                if key == "config" {
                    return Err(in_file("a config file cannot name another".into()));
                }
                if given.value_source(key) == Some(ValueSource::CommandLine) {
                    continue; // the flag wins
                }
                if !arg.get_action().takes_values() {
                    match value {
                        toml::Value::Boolean(true) => file_args.push(format!("--{long}").into()),
                        toml::Value::Boolean(false) => {}
                        _ => return Err(in_file(format!("key `{key}`: expected true or false"))),
                    }
                    continue;
                }
                let Some(v) = flag_value(value) else {
                    return Err(in_file(format!(
                        "key `{key}`: expected a value, not a table"
                    )));
                };
                file_args.push(format!("--{long}={v}").into());
            }
            // The file alone first, so that its errors name it.
            cmd.clone()
                .try_get_matches_from(&file_args)
                .map_err(|e| in_file(clap_message(&e)))?;
            file_args.extend(args);
            cmd.try_get_matches_from(&file_args)
                .map_err(|e| in_file(clap_message(&e)))?
        }
    };
    T::from_arg_matches(&matches).map_err(|e| ConfigError(clap_message(&e)))
}

/// The cluster half of the settings, checked.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Reducer and gossip tick.
    pub tick: Duration,
    /// Drop a silent peer after this long (`None`: the engine's default).
    pub dead_after: Option<Duration>,
    /// How peers are found (`None`: standalone, no cluster).
    pub transport: Option<Transport>,
    /// Cluster name.
    pub name: String,
    /// The key file given (`None`: the default one on loopback, none elsewhere).
    pub key_file: Option<PathBuf>,
    /// Run without a key (and allow a non-loopback network without one).
    pub insecure: bool,
    /// Names resolved for peers (unicast).
    pub peers_dns: Vec<String>,
    /// A flag that could not be turned into a transport (reported by [`Cluster::builder`]).
    pub error: Option<String>,
    /// How often they are resolved.
    pub dns_interval: Duration,
    /// The relay tree's fan-out (unicast).
    pub relay_fanout: usize,
    /// Parity repairs on.
    pub parity: bool,
}

impl Cluster {
    /// The cluster settings of these flags.
    pub fn new(o: &ClusterOptions) -> Cluster {
        let mut error = None;
        let transport = if o.standalone {
            None
        } else if o.peers.is_some() || !o.peers_dns.is_empty() {
            Some(Transport::Unicast {
                bind: o.cluster_bind,
                peers: o.peers.clone().unwrap_or_default(),
            })
        } else {
            match transport::multicast(o.group, &o.interface) {
                Ok(t) => Some(t),
                Err(e) => {
                    error = Some(e);
                    None
                }
            }
        };
        Cluster {
            tick: o.tick,
            dead_after: o.dead_after,
            transport,
            name: o.cluster.clone(),
            key_file: o.key_file.clone(),
            insecure: o.insecure,
            peers_dns: o.peers_dns.clone(),
            dns_interval: o.dns_interval,
            relay_fanout: o.relay_fanout,
            parity: !o.no_parity,
            error,
        }
    }

    /// An engine builder with these cluster settings. A loopback cluster with no key given (and
    /// not `--insecure`) uses the user's default key file, created on first use (see
    /// `identity`): other local users' processes cannot forge its counts.
    pub fn builder(&self) -> Result<Builder, ConfigError> {
        if let Some(e) = &self.error {
            return Err(ConfigError(e.clone()));
        }
        let mut b = headcount::Engine::builder().tick(self.tick);
        let Some(t) = &self.transport else {
            return Ok(b);
        };
        b = match t {
            Transport::Multicast {
                group,
                interface,
                ttl,
                loopback,
            } => b
                .multicast(*group)
                .interface(*interface)
                .multicast_ttl(*ttl)
                .multicast_loopback(*loopback),
            Transport::Multicast6 {
                group,
                interface,
                hops,
                loopback,
            } => b
                .multicast6(*group, *interface)
                .multicast_ttl(*hops)
                .multicast_loopback(*loopback),
            Transport::Unicast { bind, peers } => b.unicast(*bind, peers.iter().copied()),
        };
        let loopback = t.is_loopback();
        b = b.cluster_name(&self.name).insecure(self.insecure);
        for name in &self.peers_dns {
            b = b.peers_dns(name);
        }
        b = b
            .dns_interval(self.dns_interval)
            .relay_fanout(self.relay_fanout)
            .parity(self.parity);
        if let Some(d) = self.dead_after {
            b = b.dead_after(d);
        }
        match &self.key_file {
            Some(p) => b = b.cluster_key_file(p),
            None if loopback && !self.insecure => {
                let p = crate::identity::default_key_file().map_err(ConfigError)?;
                b = b.cluster_key_file(p);
            }
            None => {}
        }
        Ok(b)
    }
}

/// Limits on what clients may do.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Limits on one request (after AUTH).
    pub request: resp::RequestLimits,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most presences one connection may hold.
    pub max_topics_per_connection: usize,
    /// Unsent replies past which a client is closed.
    pub max_output: usize,
    /// Bytes all connections' buffers may hold together.
    pub max_client_memory: usize,
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
}

/// The least `--max-client-memory`: a few clients' worth of buffers.
const MIN_CLIENT_MEMORY: usize = 1 << 20;

/// What `serve::run` takes: the flags of `serve`, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker threads.
    pub workers: usize,
    /// Pin the workers and the engine thread.
    pub pin: bool,
    /// The password clients must give (`None`: no AUTH needed).
    pub password: Option<String>,
    /// The Prometheus endpoint's address.
    pub metrics: Option<SocketAddr>,
    /// Topics listed in the metrics.
    pub metrics_top: usize,
    /// Log as JSON (for the binary: `serve::run` only emits `tracing` events).
    pub json_logs: bool,
    /// Limits on clients.
    pub limits: ClientLimits,
    /// Topic table size.
    pub max_topics: usize,
    /// False with `--no-count`: commands are answered, nothing is counted.
    pub counting: bool,
    /// `--node-id` as given (`None`: derived from the cluster, the host and the listen address).
    pub node_id: Option<u64>,
    /// How long a topic stays at zero before its id is reused.
    pub retire_after: Duration,
    /// The cluster.
    pub cluster: Cluster,
}

impl Settings {
    /// Checks `serve`'s flags and turns them into settings. `--listen` is checked here too
    /// (a non-loopback address needs a password or `--insecure`) but not bound: see
    /// `serve::bind`.
    pub fn new(o: &ServeOptions) -> Result<Settings, ConfigError> {
        let cluster = Cluster::new(&o.cluster);
        let workers = o.workers.unwrap_or_else(headcount::cpus);
        if !(1..=1024).contains(&workers) {
            return Err(ConfigError(format!(
                "--workers {workers}: must be between 1 and 1024"
            )));
        }
        let password = o.requirepass.clone();
        if password.as_deref() == Some("") {
            return Err(ConfigError("--requirepass: the password is empty".into()));
        }
        if !o.listen.ip().is_loopback() && password.is_none() && !cluster.insecure {
            return Err(ConfigError(format!(
                "--listen {} is not a loopback address: set --requirepass, or --insecure to \
                 let anyone who can reach it change the counts",
                o.listen
            )));
        }
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(ConfigError(format!("--{name} 0: must be at least 1")))
            } else {
                Ok(v)
            }
        };
        let limits = ClientLimits {
            request: resp::RequestLimits {
                max_args: positive("max-args", o.max_args)?,
                max_arg_len: positive("max-arg-len", o.max_arg_len)?,
            },
            max_connections: positive("max-connections", o.max_connections)?,
            max_topics_per_connection: positive(
                "max-topics-per-connection",
                o.max_topics_per_connection,
            )?,
            max_output: positive("max-output", o.max_output)?,
            max_client_memory: o.max_client_memory,
            keepalive: (!o.tcp_keepalive.is_zero()).then_some(o.tcp_keepalive),
        };
        if limits.max_client_memory < MIN_CLIENT_MEMORY {
            return Err(ConfigError(format!(
                "--max-client-memory {}: must be at least {MIN_CLIENT_MEMORY} (1 MiB): it is \
                 shared by every client's buffers",
                limits.max_client_memory
            )));
        }
        if limits.request.max_args > 1 << 20 || limits.request.max_arg_len > 512 << 20 {
            return Err(ConfigError(format!(
                "--max-args {} / --max-arg-len {}: at most 1048576 arguments of 512 MiB",
                limits.request.max_args, limits.request.max_arg_len
            )));
        }
        Ok(Settings {
            workers,
            pin: o.pin,
            password,
            metrics: o.metrics,
            metrics_top: o.metrics_top,
            json_logs: o.log_format == LogFormat::Json,
            limits,
            max_topics: positive("max-topics", o.max_topics)?,
            counting: !o.no_count,
            node_id: match &o.node_id {
                None => None,
                Some(v) => Some(crate::identity::parse_node_id(v).ok_or_else(|| {
                    ConfigError(format!("--node-id {v:?}: give 16 hex digits or a name"))
                })?),
            },
            retire_after: o.retire_after,
            cluster,
        })
    }

    /// `serve`'s flags as they would be given on its command line (and a config file's, with
    /// `--config`), checked: the listen address and the settings.
    pub fn from_args(
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<(SocketAddr, Settings), ConfigError> {
        let o: ServeOptions = parse_args("serve", args)?;
        Ok((o.listen, Settings::new(&o)?))
    }
}

mod describe;
mod transport;

#[cfg(test)]
mod tests;
