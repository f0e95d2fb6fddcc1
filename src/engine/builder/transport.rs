//! The builder's transport options: multicast (IPv4 and IPv6), unicast, DNS discovery.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use super::{Builder, Transport, defaults};

impl Builder {
    /// Joins a cluster over UDP multicast to `group` (an IPv4 multicast address and port), on
    /// the loopback interface unless [`Builder::interface`] says otherwise. Every node of the
    /// cluster counts every node's users.
    pub fn multicast(mut self, group: SocketAddrV4) -> Self {
        self.cluster.transport = Some(Transport::Multicast {
            group,
            interface: defaults::INTERFACE,
            ttl: defaults::MULTICAST_TTL,
            loopback: defaults::MULTICAST_LOOPBACK,
        });
        self
    }

    fn with_multicast(
        mut self,
        option: &'static str,
        value: String,
        f: impl FnOnce(&mut Ipv4Addr, &mut u32, &mut bool),
    ) -> Self {
        match self.cluster.transport.as_mut() {
            Some(Transport::Multicast {
                interface,
                ttl,
                loopback,
                ..
            }) => f(interface, ttl, loopback),
            Some(Transport::Multicast6 { hops, loopback, .. }) if option != "interface" => {
                let mut unused = Ipv4Addr::UNSPECIFIED;
                f(&mut unused, hops, loopback)
            }
            _ => self.cluster.bad = Some((option, value)),
        }
        self
    }

    /// Joins a cluster over IPv6 multicast: `group` (an `ff00::/8` address with its port, for
    /// example `[ff12::4845:4144]:7380`, link-local scope) on the interface with index
    /// `interface` (`/sys/class/net/<name>/ifindex` on Linux; `ip link` lists them). The hop
    /// limit is [`Builder::multicast_ttl`] (default 1) and [`Builder::multicast_loopback`]
    /// applies as for IPv4; [`Builder::interface`] does not (it takes an IPv4 address).
    /// Interface-local groups (`ff01::/16`, `ff11::/16`) stay on this host: like a loopback
    /// interface, they need no key.
    pub fn multicast6(mut self, group: SocketAddrV6, interface: u32) -> Self {
        self.cluster.transport = Some(Transport::Multicast6 {
            group,
            interface,
            hops: defaults::MULTICAST_TTL,
            loopback: defaults::MULTICAST_LOOPBACK,
        });
        self
    }

    /// The interface address to join the multicast group on and send from (default 127.0.0.1).
    /// Without a cluster key, only a loopback interface is accepted unless [`Builder::insecure`].
    pub fn interface(self, addr: Ipv4Addr) -> Self {
        self.with_multicast("interface", addr.to_string(), |i, _, _| *i = addr)
    }

    /// Multicast TTL (default 1: the local subnet).
    pub fn multicast_ttl(self, ttl: u32) -> Self {
        self.with_multicast("multicast_ttl", ttl.to_string(), |_, t, _| *t = ttl)
    }

    /// Multicast loopback (default on; needed for several nodes on one host).
    pub fn multicast_loopback(self, on: bool) -> Self {
        self.with_multicast("multicast_loopback", on.to_string(), |_, _, l| *l = on)
    }

    /// Joins a cluster over UDP unicast instead: bind `bind`, send to every address in `peers`
    /// (for networks without multicast, like most clouds).
    pub fn unicast(
        mut self,
        bind: SocketAddr,
        peers: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        self.cluster.transport = Some(Transport::Unicast {
            bind,
            peers: peers.into_iter().collect(),
        });
        self
    }

    /// Finds peers by DNS (with [`Builder::unicast`]; may be given several times): `name`
    /// (`host:port`) is resolved every [`Builder::dns_interval`], A and AAAA records alike, and
    /// every address it lists becomes a peer. An address gone from DNS is dropped once it is
    /// also silent for `dead_after`; a failed resolution keeps the last known addresses
    /// (counted in [`crate::ClusterStats::dns_failures`], the error in
    /// [`crate::Engine::dns_error`]). For a Kubernetes headless Service
    /// (`headcount.default.svc.cluster.local:7380`) or Fly.io (`my-app.internal:7380`).
    pub fn peers_dns(mut self, name: &str) -> Self {
        self.cluster.dns.push(name.to_string());
        self
    }

    /// How often [`Builder::peers_dns`] names are resolved (default 5 s).
    pub fn dns_interval(mut self, d: Duration) -> Self {
        self.cluster.dns_interval = d;
        self
    }
}
