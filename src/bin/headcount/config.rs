//! Settings shared by `serve` and `watch`: the cluster flags, the TOML config file, and how the
//! two merge (a flag wins over the file, the file over the default).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use headcount::{Builder, DEFAULT_GROUP};
use serde::Deserialize;

/// An error in the settings, printed as `headcount: <message>` with exit status 2.
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

/// The cluster flags (every one also a config-file key, spelt with `_` for `-`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ClusterArgs {
    /// TOML config file; flags given on the command line win over its keys.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Reducer and gossip tick [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub tick: Option<Duration>,
    /// Drop a peer not heard from for this long [default: 3s, at least 3 of its ticks].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dead_after: Option<Duration>,
    /// Multicast group and port [default: 239.255.70.77:7380].
    #[arg(long, value_name = "ADDR:PORT")]
    pub group: Option<SocketAddrV4>,
    /// Interface address for multicast [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub interface: Option<Ipv4Addr>,
    /// Use unicast to these peers (comma-separated ADDR:PORT) instead of multicast.
    #[arg(long, value_name = "ADDR,…", value_delimiter = ',')]
    pub peers: Option<Vec<SocketAddr>>,
    /// The UDP address to bind for unicast (with --peers) [default: 0.0.0.0:7380].
    #[arg(long, value_name = "ADDR:PORT")]
    pub cluster_bind: Option<SocketAddr>,
    /// Cluster name: nodes of other clusters are ignored [default: headcount].
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
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

/// Every key a config file may hold. Unknown keys are an error (a typo must not be ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub pin: Option<bool>,
    pub tick: Option<String>,
    pub dead_after: Option<String>,
    pub group: Option<SocketAddrV4>,
    pub interface: Option<Ipv4Addr>,
    pub peers: Option<Vec<SocketAddr>>,
    pub cluster_bind: Option<SocketAddr>,
    pub cluster: Option<String>,
    pub key_file: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub standalone: Option<bool>,
    pub requirepass: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub metrics_top: Option<usize>,
    pub log_format: Option<String>,
    pub max_connections: Option<usize>,
    pub max_topics_per_connection: Option<usize>,
    pub max_args: Option<usize>,
    pub max_arg_len: Option<usize>,
    pub max_output: Option<usize>,
    pub max_client_memory: Option<usize>,
    pub tcp_keepalive: Option<String>,
    pub max_topics: Option<usize>,
    pub node_id: Option<String>,
    pub retire_after: Option<String>,
}

impl FileConfig {
    /// Reads `path`, or the empty config when there is none.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            ConfigError(format!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })
    }
}

fn duration(key: &str, v: Option<&String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| {
        humantime::parse_duration(s)
            .map_err(|e| ConfigError(format!("config key `{key}`: {s:?}: {e}")))
    })
    .transpose()
}

/// The cluster half of the settings, merged.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub tick: Duration,
    pub dead_after: Option<Duration>,
    pub transport: Transport,
    pub name: String,
    pub key_file: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub enum Transport {
    Standalone,
    Multicast {
        group: SocketAddrV4,
        interface: Ipv4Addr,
    },
    Unicast {
        bind: SocketAddr,
        peers: Vec<SocketAddr>,
    },
}

impl Cluster {
    pub fn merge(a: &ClusterArgs, f: &FileConfig) -> Result<Cluster, ConfigError> {
        let tick = match a.tick {
            Some(t) => t,
            None => duration("tick", f.tick.as_ref())?.unwrap_or(Duration::from_millis(100)),
        };
        let dead_after = match a.dead_after {
            Some(d) => Some(d),
            None => duration("dead_after", f.dead_after.as_ref())?,
        };
        let standalone = a.standalone || f.standalone.unwrap_or(false);
        let peers = a.peers.clone().or_else(|| f.peers.clone());
        let group = a.group.or(f.group);
        let transport = if standalone {
            Transport::Standalone
        } else if let Some(peers) = peers {
            if group.is_some() {
                return Err(ConfigError(
                    "--group and --peers both given: multicast or unicast, not both".into(),
                ));
            }
            Transport::Unicast {
                bind: a
                    .cluster_bind
                    .or(f.cluster_bind)
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_GROUP.port()))),
                peers,
            }
        } else {
            Transport::Multicast {
                group: group.unwrap_or(DEFAULT_GROUP),
                interface: a.interface.or(f.interface).unwrap_or(Ipv4Addr::LOCALHOST),
            }
        };
        Ok(Cluster {
            tick,
            dead_after,
            transport,
            name: a
                .cluster
                .clone()
                .or_else(|| f.cluster.clone())
                .unwrap_or_else(|| "headcount".into()),
            key_file: a.key_file.clone().or_else(|| f.key_file.clone()),
            insecure: a.insecure || f.insecure.unwrap_or(false),
        })
    }

    /// An engine builder with these cluster settings. A loopback cluster with no key given (and
    /// not `--insecure`) uses the user's default key file, created on first use (see
    /// `identity`): other local users' processes cannot forge its counts.
    pub fn builder(&self) -> Result<Builder, ConfigError> {
        let mut b = headcount::Engine::builder().tick(self.tick);
        let loopback = match &self.transport {
            Transport::Standalone => return Ok(b),
            Transport::Multicast { group, interface } => {
                b = b.multicast(*group).interface(*interface);
                interface.is_loopback()
            }
            Transport::Unicast { bind, peers } => {
                b = b.unicast(*bind, peers.iter().copied());
                bind.ip().is_loopback() && peers.iter().all(|p| p.ip().is_loopback())
            }
        };
        b = b.cluster_name(&self.name).insecure(self.insecure);
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

    /// The key file in use: the one given, or the default one for a loopback cluster.
    pub fn key_description(&self) -> String {
        match (&self.key_file, &self.transport) {
            (Some(p), _) => p.display().to_string(),
            (None, Transport::Standalone) => "none".into(),
            (None, _) if self.insecure => {
                "none (--insecure: anyone who can send to it can forge counts)".into()
            }
            (None, _) => crate::identity::default_key_path()
                .map_or_else(|| "none".into(), |p| format!("{} (default)", p.display())),
        }
    }

    /// One line for the log: how this node finds its peers.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Standalone => "standalone (no cluster)".into(),
            Transport::Multicast { group, interface } => format!(
                "cluster {:?} on multicast {group} via {interface}",
                self.name
            ),
            Transport::Unicast { bind, peers } => format!(
                "cluster {:?} on unicast {bind} with {} peers",
                self.name,
                peers.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("hc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        FileConfig::load(Some(&p))
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = file("tick = \"250ms\"\ncluster = \"from-file\"\ngroup = \"239.1.2.3:9000\"\n")
            .unwrap();
        let a = ClusterArgs {
            cluster: Some("from-flag".into()),
            ..Default::default()
        };
        let c = Cluster::merge(&a, &f).unwrap();
        assert_eq!(c.tick, Duration::from_millis(250));
        assert_eq!(c.name, "from-flag");
        assert!(matches!(
            c.transport,
            Transport::Multicast { group, .. } if group == "239.1.2.3:9000".parse().unwrap()
        ));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = file("tikc = \"1s\"\n").unwrap_err().0;
        assert!(e.contains("unknown field `tikc`"), "{e}");
        let e = file("workers = \"two\"\n").unwrap_err().0;
        assert!(e.contains("workers"), "{e}");
        let f = file("tick = \"soon\"\n").unwrap();
        let e = Cluster::merge(&ClusterArgs::default(), &f).unwrap_err().0;
        assert!(e.contains("`tick`") && e.contains("soon"), "{e}");
        let e = FileConfig::load(Some(Path::new("/nonexistent/headcount.toml")))
            .unwrap_err()
            .0;
        assert!(e.contains("/nonexistent/headcount.toml"), "{e}");
        let f = file("peers = [\"127.0.0.1:1\"]\ngroup = \"239.1.2.3:9000\"\n").unwrap();
        assert!(Cluster::merge(&ClusterArgs::default(), &f).is_err());
    }
}
