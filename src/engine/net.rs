//! The only module that touches sockets: UDP multicast (or a unicast peer list) for the cluster
//! protocol, built with socket2 and driven by the engine thread's mio loop.
//!
//! In multicast mode a node has two sockets: one bound to the group's address and port (shared
//! with every other node on the host through `SO_REUSEPORT`), which only receives, and one bound
//! to the interface with a port of its own, which sends everything and receives the unicast
//! resync traffic addressed to it. Peers therefore see each node at a distinct address.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use mio::net::UdpSocket;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::cluster::protocol::{Dest, Found, Transmit};
use crate::engine::members::Members;
use crate::error::Error;

/// How the cluster's datagrams travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// UDP multicast to `group` on `interface`.
    Multicast {
        /// The group address and port (an IPv4 multicast address, 224.0.0.0/4).
        group: SocketAddrV4,
        /// The interface to join on and send from.
        interface: Ipv4Addr,
        /// Multicast TTL (1: this subnet only).
        ttl: u32,
        /// Deliver the group's datagrams to other sockets on this host too (needed for several
        /// nodes on one host).
        loopback: bool,
    },
    /// UDP multicast over IPv6 to `group` on the interface with index `interface`.
    Multicast6 {
        /// The group address and port (an IPv6 multicast address, `ff00::/8`).
        group: SocketAddrV6,
        /// The index of the interface to join on and send from.
        interface: u32,
        /// Multicast hop limit (1: this link only).
        hops: u32,
        /// Deliver the group's datagrams to other sockets on this host too.
        loopback: bool,
    },
    /// UDP unicast to a fixed list of peers, for networks without multicast.
    Unicast {
        /// The address to bind.
        bind: SocketAddr,
        /// Every other node's bound address.
        peers: Vec<SocketAddr>,
    },
}

impl Transport {
    /// Whether every address involved is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self {
            Transport::Multicast { interface, .. } => interface.is_loopback(),
            // Interface-local scope (ff?1::): never leaves this host.
            Transport::Multicast6 { group, .. } => group.ip().segments()[0] & 0x000f == 1,
            Transport::Unicast { bind, peers } => {
                bind.ip().is_loopback() && peers.iter().all(|p| p.ip().is_loopback())
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |option: &'static str, value: String, reason: &str| Error::Config {
            option,
            value,
            reason: reason.to_string(),
        };
        match self {
            Transport::Multicast { group, ttl, .. } => {
                if !group.ip().is_multicast() {
                    return Err(bad(
                        "multicast group",
                        group.to_string(),
                        "not an IPv4 multicast address (224.0.0.0/4)",
                    ));
                }
                if group.port() == 0 {
                    return Err(bad("multicast group", group.to_string(), "needs a port"));
                }
                if *ttl == 0 || *ttl > 255 {
                    return Err(bad(
                        "multicast ttl",
                        ttl.to_string(),
                        "must be between 1 and 255",
                    ));
                }
            }
            Transport::Multicast6 { group, hops, .. } => {
                if !group.ip().is_multicast() {
                    return Err(bad(
                        "multicast group",
                        group.to_string(),
                        "not an IPv6 multicast address (ff00::/8)",
                    ));
                }
                if group.port() == 0 {
                    return Err(bad("multicast group", group.to_string(), "needs a port"));
                }
                if *hops == 0 || *hops > 255 {
                    return Err(bad(
                        "multicast ttl",
                        hops.to_string(),
                        "must be between 1 and 255",
                    ));
                }
            }
            Transport::Unicast { bind, peers } => {
                if bind.ip().is_multicast() {
                    return Err(bad(
                        "unicast bind",
                        bind.to_string(),
                        "is a multicast address; use multicast() for a group",
                    ));
                }
                if let Some(p) = peers
                    .iter()
                    .find(|p| p.ip().is_multicast() || p.port() == 0 || p.ip().is_unspecified())
                {
                    return Err(bad(
                        "unicast peers",
                        p.to_string(),
                        "a peer must be a unicast address with a port",
                    ));
                }
                if bind.is_ipv4()
                    && let Some(p) = peers.iter().find(|p| p.ip().to_canonical().is_ipv6())
                {
                    return Err(bad(
                        "unicast peers",
                        p.to_string(),
                        "an IPv6 peer cannot be reached from an IPv4 bind address; bind an IPv6 \
                         address (\"[::]:PORT\" reaches IPv4 peers too)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What else the sockets need: discovery and learning (unicast only).
#[derive(Debug, Clone, Default)]
pub(crate) struct Discovery {
    /// `name:port`s to resolve for peers.
    pub(crate) dns: Vec<String>,
    pub(crate) dns_interval: std::time::Duration,
    /// Learn peers from authenticated datagrams and gossip (a cluster key is set).
    pub(crate) learn: bool,
    pub(crate) dead_after: std::time::Duration,
}

/// The two sockets of an IPv6 multicast node, as for IPv4: one bound to the group (receive
/// only), one bound to `[::]:0` on the interface that sends everything.
fn open_multicast6(
    group: SocketAddrV6,
    interface: u32,
    hops: u32,
    loopback: bool,
) -> Result<(Option<UdpSocket>, UdpSocket), Error> {
    let udp = || Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP));
    let gerr = |e| io_err("multicast group", group, e);
    let ierr = |e| io_err("multicast interface", format!("index {interface}"), e);
    let g = udp().map_err(gerr)?;
    g.set_only_v6(true).map_err(gerr)?;
    g.set_reuse_address(true).map_err(gerr)?;
    g.set_reuse_port(true).map_err(gerr)?;
    // A link-scoped group is bound with its interface as the scope.
    let scoped = SocketAddrV6::new(*group.ip(), group.port(), 0, interface);
    g.bind(&SockAddr::from(scoped)).map_err(gerr)?;
    g.join_multicast_v6(group.ip(), interface).map_err(ierr)?;
    let _ = g.set_multicast_all_v6(false);
    let _ = g.set_recv_buffer_size(4 << 20);
    g.set_nonblocking(true).map_err(gerr)?;

    let s = udp().map_err(ierr)?;
    s.set_only_v6(true).map_err(ierr)?;
    s.bind(&SockAddr::from(SocketAddrV6::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        0,
        0,
        0,
    )))
    .map_err(ierr)?;
    s.set_multicast_if_v6(interface).map_err(ierr)?;
    s.set_multicast_loop_v6(loopback)
        .map_err(|e| io_err("multicast loopback", loopback, e))?;
    s.set_multicast_hops_v6(hops)
        .map_err(|e| io_err("multicast ttl", hops, e))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(ierr)?;
    Ok((
        Some(UdpSocket::from_std(g.into())),
        UdpSocket::from_std(s.into()),
    ))
}

/// Open sockets.
pub(crate) struct Net {
    transport: Transport,
    /// Unicast: every address group datagrams go to (configured, resolved, learned).
    pub(crate) members: Option<Members>,
    /// Unicast: the names to resolve, and how often.
    pub(crate) dns: Vec<String>,
    pub(crate) dns_interval: std::time::Duration,
    /// The sending socket is IPv6 (IPv4 destinations are sent to as IPv4-mapped addresses).
    v6: bool,
    /// Multicast: the group socket (receive only).
    group: Option<UdpSocket>,
    /// Sends everything; receives unicast.
    sock: UdpSocket,
    /// `sock`'s address: where this node's datagrams come from.
    local: Option<SocketAddr>,
    buf: Vec<u8>,
    pub(crate) send_errors: u64,
    pub(crate) recv_errors: u64,
}

fn io_err(option: &'static str, value: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Net {
        option,
        value: value.to_string(),
        source: e,
    }
}

impl Net {
    pub(crate) fn open(transport: &Transport, disc: Discovery) -> Result<Net, Error> {
        transport.validate()?;
        let udp = || Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP));
        let (group, sock) = match transport {
            Transport::Multicast {
                group,
                interface,
                ttl,
                loopback,
            } => {
                let g = udp().map_err(|e| io_err("multicast group", group, e))?;
                g.set_reuse_address(true)
                    .map_err(|e| io_err("multicast group", group, e))?;
                g.set_reuse_port(true)
                    .map_err(|e| io_err("multicast group", group, e))?;
                // Binding the group address makes the kernel deliver only that group's datagrams.
                g.bind(&SockAddr::from(*group))
                    .map_err(|e| io_err("multicast group", group, e))?;
                g.join_multicast_v4(group.ip(), interface)
                    .map_err(|e| io_err("multicast interface", interface, e))?;
                let _ = g.set_multicast_all_v4(false);
                let _ = g.set_recv_buffer_size(4 << 20);
                g.set_nonblocking(true)
                    .map_err(|e| io_err("multicast group", group, e))?;

                let s = udp().map_err(|e| io_err("multicast interface", interface, e))?;
                s.bind(&SockAddr::from(SocketAddrV4::new(*interface, 0)))
                    .map_err(|e| io_err("multicast interface", interface, e))?;
                s.set_multicast_if_v4(interface)
                    .map_err(|e| io_err("multicast interface", interface, e))?;
                s.set_multicast_loop_v4(*loopback)
                    .map_err(|e| io_err("multicast loopback", loopback, e))?;
                s.set_multicast_ttl_v4(*ttl)
                    .map_err(|e| io_err("multicast ttl", ttl, e))?;
                let _ = s.set_recv_buffer_size(4 << 20);
                s.set_nonblocking(true)
                    .map_err(|e| io_err("multicast interface", interface, e))?;
                (
                    Some(UdpSocket::from_std(g.into())),
                    UdpSocket::from_std(s.into()),
                )
            }
            Transport::Multicast6 {
                group,
                interface,
                hops,
                loopback,
            } => open_multicast6(*group, *interface, *hops, *loopback)?,
            Transport::Unicast { bind, .. } => {
                let s = Socket::new(Domain::for_address(*bind), Type::DGRAM, Some(Protocol::UDP))
                    .map_err(|e| io_err("unicast bind", bind, e))?;
                if bind.is_ipv6() {
                    // Dual stack: an IPv6 socket reaches IPv4 peers too (as mapped addresses).
                    let _ = s.set_only_v6(false);
                }
                s.bind(&SockAddr::from(*bind))
                    .map_err(|e| io_err("unicast bind", bind, e))?;
                let _ = s.set_recv_buffer_size(4 << 20);
                s.set_nonblocking(true)
                    .map_err(|e| io_err("unicast bind", bind, e))?;
                (None, UdpSocket::from_std(s.into()))
            }
        };
        let local = sock.local_addr().ok();
        let v6 = local.is_some_and(|a| a.is_ipv6());
        let members = match transport {
            Transport::Unicast { peers, .. } => Some(
                Members::new(
                    peers,
                    disc.dns.len(),
                    disc.learn,
                    disc.dead_after,
                    Instant::now(),
                )
                .v4_only(!v6),
            ),
            Transport::Multicast { .. } | Transport::Multicast6 { .. } => None,
        };
        Ok(Net {
            local,
            members,
            dns: disc.dns,
            dns_interval: disc.dns_interval,
            v6,
            transport: transport.clone(),
            group,
            sock,
            buf: vec![0; 65536],
            send_errors: 0,
            recv_errors: 0,
        })
    }

    /// The address peers see this node at.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    pub(crate) fn register(
        &mut self,
        reg: &mio::Registry,
        group: mio::Token,
        sock: mio::Token,
    ) -> std::io::Result<()> {
        if let Some(g) = self.group.as_mut() {
            reg.register(g, group, mio::Interest::READABLE)?;
        }
        reg.register(&mut self.sock, sock, mio::Interest::READABLE)
    }

    /// How a peer at `addr` was found.
    pub(crate) fn found(&self, addr: SocketAddr) -> Option<Found> {
        match &self.members {
            Some(m) => m.found(addr),
            None => Some(Found::Multicast),
        }
    }

    /// Sends one datagram (errors are counted, not fatal: the protocol heals losses).
    pub(crate) fn send(&mut self, t: &Transmit) {
        let (sock, v6) = (&self.sock, self.v6);
        let mut errors = 0;
        let mut one = |to: SocketAddr| {
            let to = match to {
                SocketAddr::V4(a) if v6 => {
                    SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
                }
                a => a,
            };
            if sock.send_to(&t.bytes, to).is_err() {
                errors += 1;
            }
        };
        match (&t.dest, &self.transport, &self.members) {
            (Dest::To(a), _, _) => one(*a),
            (Dest::Group, Transport::Multicast { group, .. }, _) => one(SocketAddr::V4(*group)),
            (
                Dest::Group,
                Transport::Multicast6 {
                    group, interface, ..
                },
                _,
            ) => one(SocketAddr::V6(SocketAddrV6::new(
                *group.ip(),
                group.port(),
                0,
                *interface,
            ))),
            (Dest::Group, Transport::Unicast { .. }, Some(m)) => {
                for p in m.targets() {
                    one(p);
                }
            }
            (Dest::Group, Transport::Unicast { .. }, None) => {}
        }
        self.send_errors += errors;
    }

    /// Receives the datagrams waiting on both sockets, until `deadline` (checked every 64
    /// datagrams), so that a flood, or a peer's burst, cannot delay the engine's ticks.
    /// Returns false if it stopped at the deadline with datagrams possibly left (the sockets are
    /// edge-triggered: call again without waiting for readiness).
    pub(crate) fn recv_all(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> bool {
        let socks = [self.group.as_ref(), Some(&self.sock)];
        let mut drained = true;
        for s in socks.into_iter().flatten() {
            for i in 0..usize::MAX {
                if i % 64 == 63 && Instant::now() >= deadline {
                    drained = false;
                    break;
                }
                match s.recv_from(&mut self.buf) {
                    // Our own group datagrams, looped back: skipped before any other work (a
                    // node that sends a burst reads all of it back).
                    Ok((_, from)) if Some(from) == self.local => {}
                    // An IPv4 peer of a dual-stack socket arrives as a mapped address: the
                    // protocol and the member list know it as IPv4.
                    Ok((n, from)) => f(
                        SocketAddr::new(from.ip().to_canonical(), from.port()),
                        &self.buf[..n],
                    ),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.recv_errors += 1;
                        break;
                    }
                }
            }
        }
        drained
    }
}
