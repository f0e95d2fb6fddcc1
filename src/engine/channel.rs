//! A transport the application carries: [`ChannelTransport`], the handle it polls for the
//! engine's datagrams and delivers received ones through, and [`ChannelEnd`], the engine
//! thread's end of it.
//!
//! The cluster protocol is sans-IO: it takes datagrams in with a source address and gives
//! datagrams out with a destination. Over UDP (`net.rs`) those are socket addresses; over a
//! channel they are [`PeerAddr`]s the application assigns, carried inside the protocol as
//! synthetic socket addresses (see [`PeerAddr`]). Everything received goes through the same
//! `Protocol::handle_datagram` as a UDP datagram does: MAC, cluster, clock, replay, rate and caps
//! are checked alike, and a datagram lost in the channel (a full queue, or the application's own
//! loss) is repaired like one lost on the network.
//!
//! Both directions are bounded queues behind a mutex each, held only to push or pop (the engine
//! takes the whole inbound queue at once): the engine thread never waits on the application.

use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::cluster::protocol::{Dest, Transmit};

/// The longest datagram [`ChannelTransport::deliver`] accepts (no datagram of the protocol is
/// longer: its payload budget is at most 65,000 bytes).
pub const MAX_CHANNEL_DATAGRAM: usize = 65_535;

/// The upper 64 bits of the synthetic socket address of a [`PeerAddr`]: `100::/64`, the IPv6
/// discard-only prefix (RFC 6666), which no real peer is reached at.
const PREFIX: u64 = 0x0100_0000_0000_0000;

/// One peer's address on a [`ChannelTransport`]: an opaque number the application chooses (an
/// Erlang node's index, a NATS subject's id, a connection id...).
///
/// The engine never interprets it: it hands it back as the destination of the datagrams for
/// that peer ([`Destination::Peer`]), and expects the application to deliver every datagram
/// from that peer with the same `PeerAddr`, and those of different peers with different ones
/// (a resync request is answered only from the address the peer's other datagrams come from,
/// and the per-source rate limit is per address). Numbers need only be unique among the peers
/// of one engine; numbering the nodes the same way everywhere makes [`crate::Engine::nodes`]
/// easier to read across the cluster.
///
/// Inside the engine a `PeerAddr(n)` is the socket address `[100::n]:0` (the IPv6 discard-only
/// prefix, with `n` in the low 64 bits and port 0): that is the
/// [`NodeInfo::addr`](crate::NodeInfo::addr) [`crate::Engine::nodes`] lists for a peer heard over
/// a channel, and [`PeerAddr::from_socket_addr`] turns it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr(pub u64);

impl PeerAddr {
    /// The synthetic socket address the engine knows this peer by, `[100::n]:0`.
    pub fn to_socket_addr(self) -> SocketAddr {
        let ip = Ipv6Addr::from((u128::from(PREFIX) << 64) | u128::from(self.0));
        SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0))
    }

    /// The peer a synthetic socket address stands for (`None` for any other address, such as
    /// a UDP peer's).
    pub fn from_socket_addr(addr: SocketAddr) -> Option<PeerAddr> {
        match addr {
            SocketAddr::V6(a) if a.port() == 0 && a.flowinfo() == 0 && a.scope_id() == 0 => {
                let bits = u128::from(*a.ip());
                ((bits >> 64) as u64 == PREFIX).then_some(PeerAddr(bits as u64))
            }
            _ => None,
        }
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(p: PeerAddr) -> SocketAddr {
        p.to_socket_addr()
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer:{}", self.0)
    }
}

/// Where an [`Outgoing`] datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Every other node of the cluster (what multicast would reach). Sending it to this node
    /// too is harmless: a node ignores its own datagrams.
    All,
    /// One peer: a reply to, or a request of, the peer that delivered datagrams with this
    /// address.
    Peer(PeerAddr),
}

/// A datagram the engine wants sent, taken with [`ChannelTransport::try_recv`] (or
/// [`recv_timeout`](ChannelTransport::recv_timeout), `recv`, [`drain`](ChannelTransport::drain)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// To whom.
    pub to: Destination,
    /// The sealed datagram: carry these bytes unchanged, as one message.
    pub bytes: Vec<u8>,
}

/// Why [`ChannelTransport::deliver`] did not take a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// The engine's inbound queue is full: the datagram was dropped (and counted in
    /// [`ClusterStats::transport_dropped_in`](crate::ClusterStats::transport_dropped_in)), as if
    /// lost on the network.
    #[error("the engine's inbound queue is full: datagram dropped")]
    Full,
    /// Longer than [`MAX_CHANNEL_DATAGRAM`] bytes: not a datagram of this protocol (dropped,
    /// and counted like `Full`).
    #[error("datagram longer than {} bytes: dropped", MAX_CHANNEL_DATAGRAM)]
    TooLarge,
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Closed,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

type AppWaker = Arc<dyn Fn() + Send + Sync>;

/// What the application hands the engine, in the order it did.
enum Inbound {
    /// A datagram from a peer.
    Datagram(PeerAddr, Vec<u8>),
    /// [`ChannelTransport::peer_gone`]: after the datagrams delivered before it.
    Gone(PeerAddr),
}

/// What the handles and the engine's end share.
struct Shared {
    capacity: usize,
    /// `IDLE` until an engine starts on it, `RUNNING`, then `STOPPED` for good.
    state: AtomicU8,
    /// Engine to application. `state` becomes `STOPPED` under this lock (for `ready`).
    out: Mutex<VecDeque<Outgoing>>,
    /// Signalled when datagrams are queued in `out`, and when the engine stops.
    ready: Condvar,
    /// Application to engine.
    inbound: Mutex<VecDeque<Inbound>>,
    /// The engine loop's waker, once it started.
    engine: OnceLock<Arc<mio::Waker>>,
    /// The application's, called on the engine thread when datagrams are queued or it stops.
    app: Mutex<Option<AppWaker>>,
    dropped_out: AtomicU64,
    dropped_in: AtomicU64,
    /// Wakes async receivers (`ChannelTransport::recv`) like `ready` wakes blocking ones.
    #[cfg(feature = "tokio")]
    notify: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster transport the application carries: the engine's datagrams come out of it, and the
/// application puts the datagrams it receives in. Give it to an engine with
/// [`Builder::channel`](crate::Builder::channel).
///
/// Use it to run the cluster protocol over something that is not UDP: Erlang distribution, a
/// message bus (NATS, Redis pub/sub), a service mesh's streams, or in-memory channels in tests.
/// The application's side is three calls:
///
/// - **out**: [`try_recv`](Self::try_recv), [`recv_timeout`](Self::recv_timeout),
///   [`drain`](Self::drain), or (feature `tokio`) `recv().await` give the next [`Outgoing`]
///   datagram: its bytes and a [`Destination`], every node ([`Destination::All`]) or one peer
///   ([`Destination::Peer`]). To poll only when there is something, register a waker with
///   [`set_waker`](Self::set_waker) (notify a `tokio::sync::Notify`, write an eventfd, send
///   an Erlang message);
/// - **in**: [`deliver`](Self::deliver) hands the engine a datagram received from a peer, with
///   the [`PeerAddr`] the application knows that peer by.
///
/// **Never blocking the engine.** Both directions are bounded by the capacity given to
/// [`new`](Self::new). When the outbound queue is full the engine drops the *oldest* datagram
/// queued (an application that falls behind sends the freshest state when it catches up); when
/// the inbound queue is full `deliver` drops the new one and says so. Either drop is counted
/// ([`ClusterStats::transport_dropped_out`](crate::ClusterStats::transport_dropped_out),
/// [`transport_dropped_in`](crate::ClusterStats::transport_dropped_in)) and is repaired by the
/// protocol exactly like a datagram lost on the network: counts are absolute, every datagram
/// carries a digest of its sender's table, and a peer whose copy differs asks for the table.
/// The application may drop, duplicate or reorder datagrams too; it must not alter them (a
/// changed byte fails the MAC, and the datagram is dropped and counted as rejected).
///
/// **Security.** A channel is never taken for loopback: the builder requires a cluster key
/// ([`Builder::cluster_key`](crate::Builder::cluster_key)) or
/// [`insecure(true)`](crate::Builder::insecure). Every delivered datagram meets the same checks
/// as one from a UDP socket (MAC, cluster, clock window, replay, per-source rate, caps), so
/// garbage or replays delivered by a buggy or hostile peer count nothing.
///
/// The handle is `Send + Sync + Clone` (clones share one transport), needs no runtime, and
/// every call returns at once except `recv_timeout`: usable from any thread, a NIF included.
/// A transport serves one engine, once: starting a second engine on it is an error, and once
/// its engine stopped (the datagrams it queued, its goodbye last, can still be taken),
/// `deliver` returns [`DeliverError::Closed`] and the receives report the disconnection.
#[derive(Clone)]
pub struct ChannelTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChannelTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        let state = match s.state.load(Ordering::Acquire) {
            IDLE => "idle",
            RUNNING => "running",
            _ => "stopped",
        };
        f.debug_struct("ChannelTransport")
            .field("capacity", &s.capacity)
            .field("state", &state)
            .field("queued_out", &lock(&s.out).len())
            .field("queued_in", &lock(&s.inbound).len())
            .finish()
    }
}

impl ChannelTransport {
    /// A transport whose queues hold up to `capacity` datagrams each way (the builder accepts
    /// 1 to 2^20; [`defaults::CHANNEL_CAPACITY`](crate::defaults::CHANNEL_CAPACITY) is a good
    /// start: about a tick's worth of datagrams for a busy node).
    pub fn new(capacity: usize) -> ChannelTransport {
        ChannelTransport {
            shared: Arc::new(Shared {
                capacity,
                state: AtomicU8::new(IDLE),
                out: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
                inbound: Mutex::new(VecDeque::new()),
                engine: OnceLock::new(),
                app: Mutex::new(None),
                dropped_out: AtomicU64::new(0),
                dropped_in: AtomicU64::new(0),
                #[cfg(feature = "tokio")]
                notify: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The capacity of each queue.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Whether the engine has stopped (datagrams it queued may still be waiting).
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == STOPPED
    }

    /// Hands the engine a datagram received from the peer the application calls `from`. Never
    /// waits: the datagram is queued (and the engine thread woken), or dropped with the reason.
    ///
    /// Anything may be delivered: a datagram that is not a valid one of this cluster (another
    /// key, corrupt, a replay) is rejected by the engine and counted in
    /// [`ProtoStats::rejected`](crate::ProtoStats::rejected), like one from a socket.
    pub fn deliver(&self, from: PeerAddr, bytes: &[u8]) -> Result<(), DeliverError> {
        let s = &*self.shared;
        if s.state.load(Ordering::Acquire) == STOPPED {
            return Err(DeliverError::Closed);
        }
        if bytes.len() > MAX_CHANNEL_DATAGRAM {
            s.dropped_in.fetch_add(1, Ordering::Relaxed);
            return Err(DeliverError::TooLarge);
        }
        let bytes = bytes.to_vec();
        let was_empty = {
            let mut q = lock(&s.inbound);
            if q.len() >= s.capacity {
                drop(q);
                s.dropped_in.fetch_add(1, Ordering::Relaxed);
                return Err(DeliverError::Full);
            }
            q.push_back(Inbound::Datagram(from, bytes));
            q.len() == 1
        };
        // The engine takes the whole queue each time it wakes: only the datagram that found it
        // empty needs to wake it (one syscall per batch, not per datagram).
        if was_empty && let Some(w) = s.engine.get() {
            let _ = w.wake();
        }
        Ok(())
    }

    /// Tells the engine the peer the application calls `peer` is gone (an Erlang `nodedown`,
    /// a closed stream, a member that left the bus): its counts leave at the engine's next wake,
    /// instead of after [`Builder::dead_after`](crate::Builder::dead_after) without datagrams.
    /// Datagrams delivered before this call are handled first.
    ///
    /// Not a ban: a peer that comes back (a healed partition) is admitted again by its next
    /// datagram, and its counts return with the resync that follows. Telling it of a peer that
    /// is alive costs that peer's counts until then (its next datagram, within a tick). Never
    /// refused for a full queue (the application calls it once per departure); ignored once
    /// the engine stopped.
    pub fn peer_gone(&self, peer: PeerAddr) {
        let s = &*self.shared;
        if s.state.load(Ordering::Acquire) == STOPPED {
            return;
        }
        let was_empty = {
            let mut q = lock(&s.inbound);
            q.push_back(Inbound::Gone(peer));
            q.len() == 1
        };
        if was_empty && let Some(w) = s.engine.get() {
            let _ = w.wake();
        }
    }

    /// The next datagram to send, if one is queued. [`TryRecvError::Disconnected`] once the
    /// engine stopped and every datagram it queued was taken.
    pub fn try_recv(&self) -> Result<Outgoing, TryRecvError> {
        let mut q = lock(&self.shared.out);
        match q.pop_front() {
            Some(o) => Ok(o),
            None if self.is_closed() => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next datagram to send, waiting up to `timeout` for one.
    /// [`RecvTimeoutError::Disconnected`] once the engine stopped and every datagram it queued
    /// was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Outgoing, RecvTimeoutError> {
        let s = &*self.shared;
        let deadline = Instant::now().checked_add(timeout);
        let mut q = lock(&s.out);
        loop {
            if let Some(o) = q.pop_front() {
                return Ok(o);
            }
            if self.is_closed() {
                return Err(RecvTimeoutError::Disconnected);
            }
            q = match deadline {
                None => s.ready.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    s.ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Every datagram queued now, oldest first (one lock for all of them).
    pub fn drain(&self) -> Vec<Outgoing> {
        lock(&self.shared.out).drain(..).collect()
    }

    /// Registers `waker`, replacing any earlier one: the engine calls it after it queues
    /// datagrams (once per batch, not per datagram) and once when it stops. It is called on the
    /// engine thread and must return quickly and never block: notify a `tokio::sync::Notify`,
    /// write an eventfd, send a message; then take the datagrams on your own thread. If
    /// datagrams are waiting already (or the engine stopped), it is called once now, on this
    /// thread. A panic in it is caught and ignored.
    pub fn set_waker(&self, waker: impl Fn() + Send + Sync + 'static) {
        let s = &*self.shared;
        let w: AppWaker = Arc::new(waker);
        *lock(&s.app) = Some(w.clone());
        if self.is_closed() || !lock(&s.out).is_empty() {
            call(&w);
        }
    }

    /// Removes the waker [`set_waker`](Self::set_waker) registered.
    pub fn clear_waker(&self) {
        *lock(&self.shared.app) = None;
    }

    /// Waits for the next datagram to send (feature `tokio`); `None` once the engine stopped
    /// and every datagram it queued was taken. Cancel-safe: a datagram is taken from the queue
    /// only when this returns it. Needs no particular runtime flavour (it is woken through a
    /// `tokio::sync::Notify`), and works beside a [`set_waker`](Self::set_waker) waker.
    #[cfg(feature = "tokio")]
    pub async fn recv(&self) -> Option<Outgoing> {
        loop {
            // Created before the look at the queue: a `notify_waiters` after this line wakes it
            // even though it is polled only below.
            let notified = self.shared.notify.notified();
            match self.try_recv() {
                Ok(o) => return Some(o),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => notified.await,
            }
        }
    }

    /// The engine's end: `None` if an engine was started on this transport already.
    pub(crate) fn attach(&self) -> Option<ChannelEnd> {
        self.shared
            .state
            .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(ChannelEnd {
            shared: self.shared.clone(),
            pending: Vec::new(),
            received: VecDeque::new(),
        })
    }
}

/// Calls the application's waker; a panic in it must not take the engine thread down.
fn call(w: &AppWaker) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w()));
}

/// The engine thread's end of a [`ChannelTransport`]. Dropping it (the engine stopped, or
/// failed to start) closes the transport.
pub(crate) struct ChannelEnd {
    shared: Arc<Shared>,
    /// Datagrams the protocol gave out since the last [`ChannelEnd::flushed`].
    pending: Vec<Outgoing>,
    /// Datagrams taken from the inbound queue and not handled yet (at most a queue's worth).
    received: VecDeque<Inbound>,
}

impl ChannelEnd {
    /// Wakes the engine loop through `waker` from now on (a delivery found the queue empty),
    /// and once now if datagrams were delivered before the engine started.
    pub(crate) fn register(&mut self, waker: &Arc<mio::Waker>) {
        let _ = self.shared.engine.set(waker.clone());
        if !lock(&self.shared.inbound).is_empty() {
            let _ = waker.wake();
        }
    }

    /// The datagrams (queue overflows) dropped each way: `(out, in)`.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        let s = &self.shared;
        (
            s.dropped_out.load(Ordering::Relaxed),
            s.dropped_in.load(Ordering::Relaxed),
        )
    }

    /// Queues one datagram for the application (handed over by [`ChannelEnd::flushed`]).
    pub(crate) fn send(&mut self, t: Transmit) {
        let to = match t.dest {
            Dest::Group => Destination::All,
            Dest::To(a) => match PeerAddr::from_socket_addr(a) {
                Some(p) => Destination::Peer(p),
                // Never happens: the protocol replies only to addresses it received from.
                None => {
                    self.shared.dropped_out.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        self.pending.push(Outgoing { to, bytes: t.bytes });
    }

    /// Hands the datagrams [`ChannelEnd::send`] queued to the application (dropping the oldest
    /// beyond capacity) and wakes it.
    pub(crate) fn flushed(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let s = &*self.shared;
        let mut dropped = 0u64;
        {
            let mut q = lock(&s.out);
            for o in self.pending.drain(..) {
                if q.len() >= s.capacity {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back(o);
            }
        }
        if dropped > 0 {
            s.dropped_out.fetch_add(dropped, Ordering::Relaxed);
        }
        self.wake_app();
    }

    fn wake_app(&self) {
        let s = &*self.shared;
        s.ready.notify_all();
        #[cfg(feature = "tokio")]
        s.notify.notify_waiters();
        let w = lock(&s.app).clone();
        if let Some(w) = w {
            call(&w);
        }
    }

    /// Handles what was delivered, until `deadline` (checked every 64 entries): `f(from,
    /// Some(datagram))`, or `f(peer, None)` for a [`ChannelTransport::peer_gone`]; false if it
    /// stopped at the deadline with entries left (the loop then comes back at once).
    pub(crate) fn recv_all(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(SocketAddr, Option<&[u8]>),
    ) -> bool {
        if self.received.is_empty() {
            // Taken whole: the next delivery finds the queue empty and wakes the loop.
            std::mem::swap(&mut self.received, &mut *lock(&self.shared.inbound));
        }
        let mut i = 0u32;
        while let Some(entry) = self.received.pop_front() {
            match entry {
                Inbound::Datagram(from, bytes) => f(from.to_socket_addr(), Some(&bytes)),
                Inbound::Gone(peer) => f(peer.to_socket_addr(), None),
            }
            i += 1;
            if i.is_multiple_of(64) && Instant::now() >= deadline {
                break;
            }
        }
        self.received.is_empty()
    }
}

impl Drop for ChannelEnd {
    fn drop(&mut self) {
        self.flushed();
        let s = &*self.shared;
        {
            let _q = lock(&s.out);
            s.state.store(STOPPED, Ordering::Release);
        }
        self.wake_app();
    }
}

#[cfg(test)]
mod tests;
