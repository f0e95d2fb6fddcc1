//! The builder's side of a transport the application carries ([`Builder::channel`]): the
//! option, its validation, and opening the engine's [`Link`] (UDP sockets or the channel).

use super::{Builder, bad};
use crate::engine::channel::ChannelTransport;
use crate::engine::link::Link;
use crate::engine::net::{Net, Transport};
use crate::error::Error;

impl Builder {
    /// Joins a cluster over a transport the application carries instead of UDP: the engine's
    /// datagrams come out of `transport` and the application hands it the ones it receives
    /// (see [`ChannelTransport`] for the contract). For Erlang distribution, a message bus, a
    /// mesh's streams, or in-memory tests. The engine keeps a clone of the handle; keep yours
    /// to carry the datagrams.
    ///
    /// A channel is never taken for loopback: set [`Builder::cluster_key`] (or
    /// [`Builder::cluster_key_file`]), or [`Builder::insecure`] to accept forged counts. It
    /// replaces [`Builder::multicast`] and [`Builder::unicast`]: setting both is an error at
    /// [`Builder::start`]. A transport serves one engine, once.
    ///
    /// Two engines in one process, with the application carrying every datagram between them
    /// (each knows the other as `PeerAddr(1)`; with more nodes, deliver each [`Destination::All`]
    /// datagram to every other node, and a [`Destination::Peer`] one to that peer only):
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use headcount::{ChannelTransport, Destination, Engine, PeerAddr};
    ///
    /// let start = |t: &ChannelTransport| {
    ///     Engine::builder()
    ///         .shards(1)
    ///         .tick(Duration::from_millis(20))
    ///         .cluster_key("a secret every node shares")
    ///         .channel(t)
    ///         .start()
    /// };
    /// let (ta, tb) = (ChannelTransport::new(1024), ChannelTransport::new(1024));
    /// let (a, b) = (start(&ta)?, start(&tb)?);
    /// let _alice = a.join_by_name("lobby");
    /// let _bob = b.join_by_name("lobby");
    ///
    /// // The application's loop: take what each engine sends, deliver it to its destination.
    /// let carry = |from: &ChannelTransport, to: &ChannelTransport| {
    ///     for d in from.drain() {
    ///         match d.to {
    ///             Destination::All | Destination::Peer(PeerAddr(1)) => {
    ///                 let _ = to.deliver(PeerAddr(1), &d.bytes); // full: lost, and repaired
    ///             }
    ///             Destination::Peer(_) => {} // no such peer here
    ///         }
    ///     }
    /// };
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// while a.count_by_name("lobby") != 2 || b.count_by_name("lobby") != 2 {
    ///     assert!(Instant::now() < deadline, "the two engines never counted each other");
    ///     carry(&ta, &tb);
    ///     carry(&tb, &ta);
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// assert_eq!(a.total(), 2);
    /// # Ok::<(), headcount::Error>(())
    /// ```
    ///
    /// A real application polls from its own thread or task: [`ChannelTransport::recv_timeout`],
    /// a waker ([`ChannelTransport::set_waker`]), or `recv().await` with the `tokio` feature
    /// (see `examples/custom_transport.rs`).
    ///
    /// [`Destination::All`]: crate::Destination::All
    /// [`Destination::Peer`]: crate::Destination::Peer
    pub fn channel(mut self, transport: &ChannelTransport) -> Self {
        self.cluster.channel = Some(transport.clone());
        self
    }

    /// Whether the engine joins a cluster (over UDP or a channel).
    pub(super) fn in_cluster(&self) -> bool {
        self.cluster.transport.is_some() || self.cluster.channel.is_some()
    }

    /// The channel's part of [`Builder::validate`].
    pub(super) fn validate_channel(&self) -> Result<(), Error> {
        let Some(ch) = &self.cluster.channel else {
            return Ok(());
        };
        if let Some(t) = &self.cluster.transport {
            return Err(bad(
                "channel",
                t,
                "a cluster has one transport: channel() excludes multicast() and unicast()",
            ));
        }
        if !(1..=1 << 20).contains(&ch.capacity()) {
            return Err(bad(
                "channel",
                ch.capacity(),
                "the capacity must be between 1 and 2^20 datagrams",
            ));
        }
        if ch.is_closed() {
            return Err(bad(
                "channel",
                ch,
                "its engine stopped: use a new transport",
            ));
        }
        Ok(())
    }

    /// The channel's part of the key check: never loopback, so a key or `insecure(true)`.
    pub(super) fn require_channel_key(&self, key: &[u8]) -> Result<(), Error> {
        if self.cluster.channel.is_some() && key.is_empty() && !self.cluster.insecure {
            return Err(Error::Config {
                option: "cluster_key",
                value: "(none)".into(),
                reason: "refusing to run the cluster over a channel transport without a key: set \
                         cluster_key / cluster_key_file, or insecure(true) to accept forged counts"
                    .into(),
            });
        }
        Ok(())
    }

    /// Opens the cluster's sockets, or takes the channel's engine end (`None` without a
    /// cluster).
    pub(super) fn open_link(&self, key: &[u8]) -> Result<Option<Link>, Error> {
        if !self.cluster.dns.is_empty()
            && !matches!(self.cluster.transport, Some(Transport::Unicast { .. }))
        {
            return Err(bad(
                "peers_dns",
                &self.cluster.dns,
                "DNS discovery needs a unicast transport (unicast(bind, peers))",
            ));
        }
        if let Some(t) = &self.cluster.transport {
            return Ok(Some(Link::Udp(Net::open(t, self.discovery(t, key)?)?)));
        }
        let Some(ch) = &self.cluster.channel else {
            return Ok(None);
        };
        match ch.attach() {
            Some(end) => Ok(Some(Link::Channel(end))),
            None => Err(bad(
                "channel",
                ch,
                "an engine was started on this transport already: use one transport per engine",
            )),
        }
    }
}
