//! How a cluster setting describes itself for the log: its key file and its transport.

use headcount::Transport;

use super::Cluster;

impl Cluster {
    /// The key file in use: the one given, or the default one for a loopback cluster.
    pub fn key_description(&self) -> String {
        match (&self.key_file, &self.transport) {
            (Some(p), _) => p.display().to_string(),
            (None, None) => "none".into(),
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
            None => "standalone (no cluster)".into(),
            Some(Transport::Multicast {
                group, interface, ..
            }) => format!(
                "cluster {:?} on multicast {group} via {interface}",
                self.name
            ),
            Some(Transport::Multicast6 {
                group, interface, ..
            }) => format!(
                "cluster {:?} on IPv6 multicast {group} via interface {interface}",
                self.name
            ),
            Some(Transport::Unicast { bind, peers }) if self.peers_dns.is_empty() => format!(
                "cluster {:?} on unicast {bind} with {} peers",
                self.name,
                peers.len()
            ),
            Some(Transport::Unicast { bind, peers }) => format!(
                "cluster {:?} on unicast {bind} with {} peers and the peers DNS lists for {} \
                 (every {})",
                self.name,
                peers.len(),
                self.peers_dns.join(", "),
                humantime::format_duration(self.dns_interval)
            ),
        }
    }
}
