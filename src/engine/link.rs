//! How the engine thread's datagrams travel: UDP sockets (`net.rs`) or a channel the application
//! carries (`channel.rs`). The driver sees one [`Link`]; each call goes to the one it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::protocol::{Found, Transmit};
use crate::engine::channel::ChannelEnd;
use crate::engine::members::Members;
use crate::engine::net::Net;

/// The engine thread's datagram IO.
// One per engine, made once: the size of the UDP variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    /// UDP multicast or unicast.
    Udp(Net),
    /// A [`ChannelTransport`](crate::ChannelTransport).
    Channel(ChannelEnd),
}

impl Link {
    /// The address peers see this node at (a channel has none of its own).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Link::Udp(n) => n.local_addr(),
            Link::Channel(_) => None,
        }
    }

    /// Registers the sockets with the engine's poll; a channel wakes it through `waker`.
    pub(crate) fn register(
        &mut self,
        reg: &mio::Registry,
        group: mio::Token,
        sock: mio::Token,
        waker: &Arc<mio::Waker>,
    ) -> std::io::Result<()> {
        match self {
            Link::Udp(n) => n.register(reg, group, sock),
            Link::Channel(c) => {
                c.register(waker);
                Ok(())
            }
        }
    }

    /// Sends one datagram (or queues it until [`Link::flushed`]).
    pub(crate) fn send(&mut self, t: Transmit) {
        match self {
            Link::Udp(n) => n.send(&t),
            Link::Channel(c) => c.send(t),
        }
    }

    /// After a run of [`Link::send`]s: hands a channel's datagrams to the application.
    pub(crate) fn flushed(&mut self) {
        if let Link::Channel(c) = self {
            c.flushed();
        }
    }

    /// Feeds what was received to `f`, until `deadline`; false if some may be left. `f(from,
    /// None)`: the transport says the peer at `from` is gone (channels only).
    pub(crate) fn recv_all(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(SocketAddr, Option<&[u8]>),
    ) -> bool {
        match self {
            Link::Udp(n) => n.recv_all(deadline, |from, bytes| f(from, Some(bytes))),
            Link::Channel(c) => c.recv_all(deadline, f),
        }
    }

    /// Sends and receives the OS failed: `(send, recv)`.
    pub(crate) fn errors(&self) -> (u64, u64) {
        match self {
            Link::Udp(n) => (n.send_errors, n.recv_errors),
            Link::Channel(_) => (0, 0),
        }
    }

    /// Datagrams a channel's full queues dropped: `(out, in)`.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        match self {
            Link::Udp(_) => (0, 0),
            Link::Channel(c) => c.dropped(),
        }
    }

    /// How a peer at `addr` was found.
    pub(crate) fn found(&self, addr: SocketAddr) -> Option<Found> {
        match self {
            Link::Udp(n) => n.found(addr),
            Link::Channel(_) => Some(Found::Custom),
        }
    }

    /// The unicast member list, if this is a UDP unicast link.
    pub(crate) fn members(&self) -> Option<&Members> {
        match self {
            Link::Udp(n) => n.members.as_ref(),
            Link::Channel(_) => None,
        }
    }

    /// The unicast member list, to change.
    pub(crate) fn members_mut(&mut self) -> Option<&mut Members> {
        match self {
            Link::Udp(n) => n.members.as_mut(),
            Link::Channel(_) => None,
        }
    }

    /// Whether peers are learned (and gossiped): a UDP unicast link whose node has a key.
    pub(crate) fn learns(&self) -> bool {
        self.members().is_some_and(Members::learns)
    }

    /// The names to resolve for peers, and how often (none over a channel).
    pub(crate) fn dns(&self) -> (&[String], std::time::Duration) {
        match self {
            Link::Udp(n) => (&n.dns, n.dns_interval),
            Link::Channel(_) => (&[], std::time::Duration::ZERO),
        }
    }
}
