//! The datagram format: fixed zerocopy layouts in network byte order, and the keyed MAC.
//!
//! ```text
//! datagram = header (64 bytes) · body · tag (16 bytes)
//! header   = magic "HC" · version · kind · flags · count · tick_ms · cluster · node
//!            · incarnation · seq · digest · topics · time
//! body     = delta:              count × entry
//!            refresh, resync:    range · count × entry    (authoritative for [lo, hi])
//!            heartbeat, goodbye: —
//!            resync request:     target node · target incarnation · request number
//!                                · count × topic hash  (with FLAG_NAMES: the names wanted; none: all)
//!            names:              count × (hash · len · len bytes of UTF-8)
//!            members:            count × member
//!            nack:               count × gap
//!            repair:             seq range · count × entry    (FLAG_NAMES: × name entry)
//!            digest request:     target node · target incarnation · request number
//!                                · count × range    (FLAG_STATE: their entries; none: reconcile)
//!            digest reply:       range · count × child digest  (count ≥ 2 equal children)
//!            parity:             block (seq − first seq (u16), member bitmap (112 bits))
//!                                · coded bytes  (count: index)
//! entry    = topic hash (u64) · count (u32)                 12 bytes
//! member   = node id (u64) · IPv6 address (IPv4 mapped) · port (u16)   26 bytes
//! gap      = node id (u64) · first seq (u64) · last seq (u64)           24 bytes
//! seq range = first seq (u64) · last seq (u64)                          16 bytes
//! child digest = digest (u64) · topics (u32)                             12 bytes
//! tag      = keyed BLAKE3 of everything before it, first 16 bytes
//! ```
//!
//! Every datagram stands alone: counts are absolute, a refresh or resync datagram says which hash
//! range it covers, and nothing needs reassembly. `time` is the sender's clock (milliseconds since
//! the Unix epoch) when it sealed the datagram: receivers use it to refuse replays (see the
//! protocol module's admission rules), never to time anything.
//!
//! Version 2 added `time` to the header and the request number to resync requests; the members
//! kind came later in version 2 (a node without it rejects those datagrams as `kind`, and
//! nothing else changes for it), and so did the nack and repair kinds (a node without them
//! refuses both as `kind`, and repairs its copies by resync as before), and so did the digest
//! request and reply kinds (a node without them refuses both as `kind`; a node that gets no
//! digest reply from a peer asks it for its whole table after a few tries, as before).
//!
//! A digest request asks for hash ranges of the target's table: with [`FLAG_STATE`], each
//! range's entries (answered by resync reply datagrams, authoritative for their ranges);
//! without, each range reconciled: its entries when they are few, else a digest reply, which
//! splits the range into `count` equal children ([`child_range`]) and gives each child's
//! digest (the wrapping sum of the digest terms of its entries, as the header's digest is of
//! the whole table) and its number of topics. The requester compares them with its copy and
//! asks again, for the children that differ only.
//!
//! A repair re-sends what the sender's datagrams `lo..=hi` carried, with the counts (or names)
//! of now: one delta or names datagram (`lo == hi`), or nothing (a run of sequence numbers that
//! carried no topics: heartbeats, refresh slices). Deltas and names datagrams leave room for the
//! sequence range, so that their repair fits the same budget.
//!
//! A parity datagram is a coded repair ([`crate::cluster::erasure`]): parity symbol `count` of
//! the sender's block of up to [`BLOCK`] sequence numbers from `lo` (the header's `seq` less
//! the block's first field), over the delta and names datagrams the member bitmap lists (bit
//! `i`: sequence number `lo + i`; big-endian, 14 bytes), each in its coded form
//! ([`coded`]: kind, count, length, body; the header's other fields and the tag are not coded).
//! A receiver that holds the block's other members and as many parity datagrams as it misses
//! members decodes them; what it decodes is authentic because every input was. A nack flagged
//! [`FLAG_PLAIN`] asks for plain repairs instead. A node without the kind refuses it as `kind`
//! and never sets that flag: its copy is reconciled by range digests once its nack rounds run
//! out; a cluster with such nodes runs its new ones with parity off until all are upgraded.
//! Kind 13 was parity over blocks of 64 (the block's first number and a 64-bit bitmap, in the
//! same 16 bytes); it is refused as `kind` now, so a node of the one build and a node of the
//! other repair each other plainly, never mistaking one layout for the other.

use zerocopy::byteorder::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first two bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"HC";
/// The wire format version this build speaks.
pub const VERSION: u8 = 2;
/// Length of the authentication tag at the end of every datagram.
pub const TAG_LEN: usize = 16;
/// Header flag: the last datagram the sender sent this tick (its digest is final).
pub const FLAG_END: u16 = 1;
/// Resync request flag: send the names of your topics.
pub const FLAG_NAMES: u16 = 2;
/// Resync request flag: send your whole table. Digest request flag: send the entries of the
/// ranges asked for.
pub const FLAG_STATE: u16 = 4;
/// Heartbeat flag: the sender is a passive observer (counts nothing; may ask for resyncs).
pub const FLAG_OBSERVER: u16 = 8;
/// Sent in answer to a request, without a sequence number of its own (it carries the sender's
/// current one): names answering a resync request (unicast), a repair (a delta answering
/// a nack, to the group), a nack itself, a digest reply.
pub const FLAG_REPLY: u16 = 16;
/// Sent directly (unicast: an answer, a nack, a request) by a node that sends its group
/// datagrams along a relay tree: it may overtake them, so its sequence number says nothing of
/// which of them were missed.
pub const FLAG_DIRECT: u16 = 32;
/// Nack flag: answer with plain repairs, not parity (the sender cannot decode these gaps).
pub const FLAG_PLAIN: u16 = 64;
/// Nack flag: a later round; the sender already counted the parity it holds (what the first
/// round's answer brought it), so what it asks for is new symbols beyond those.
pub const FLAG_AGAIN: u16 = 128;
/// The header flags' high byte: the fan-out of the relay tree the sender sends a group
/// datagram along (0: sent to every peer itself). Each receiver forwards it to its children in
/// the sender's tree (see `cluster::protocol::relay`).
pub const RELAY_SHIFT: u32 = 8;

/// The relay fan-out a datagram's header flags carry (0: not relayed).
pub fn relay_fanout(flags: u16) -> usize {
    usize::from((flags >> RELAY_SHIFT) as u8)
}
/// The smallest payload budget that fits a header, one range, one entry and the tag.
pub const MIN_BUDGET: usize = HEADER_LEN + RANGE_LEN + ENTRY_LEN + TAG_LEN;

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Absolute counts of topics that changed.
    Delta = 1,
    /// Nothing changed; still carries the digest.
    Heartbeat = 2,
    /// A slice of the full table, authoritative for its hash range.
    Refresh = 3,
    /// "Send me your whole table" (unicast).
    ResyncRequest = 4,
    /// A slice of the full table in answer to a resync request (unicast).
    ResyncReply = 5,
    /// The sender is leaving: drop its counts now.
    Goodbye = 6,
    /// Topic hash ↔ name.
    Names = 7,
    /// The peers the sender hears, with their addresses (membership gossip, unicast).
    Members = 8,
    /// Sequence numbers the sender missed, per node (to the group): each node listed re-sends
    /// the current counts of the topics it sent in them (a repair), and the other receivers
    /// that missed the same hold their own nacks back.
    Nack = 9,
    /// What the sender's datagrams in a sequence range carried, with today's counts or names
    /// (to the group, in answer to nacks).
    Repair = 10,
    /// "Send me these hash ranges of your table": their entries ([`FLAG_STATE`]), or, for a
    /// range with many entries, the digests of its children (unicast).
    DigestRequest = 11,
    /// The digest and size of each child of a hash range of the sender's table (unicast, in
    /// answer to a digest request, or to a nack of datagrams older than the sender's history).
    DigestReply = 12,
    /// A parity symbol of a block of the sender's delta and names datagrams (to the group, in
    /// answer to nacks; see the module docs). (13 was its 64-member layout, retired.)
    Parity = 14,
}

impl Kind {
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Delta,
            2 => Kind::Heartbeat,
            3 => Kind::Refresh,
            4 => Kind::ResyncRequest,
            5 => Kind::ResyncReply,
            6 => Kind::Goodbye,
            7 => Kind::Names,
            8 => Kind::Members,
            9 => Kind::Nack,
            10 => Kind::Repair,
            11 => Kind::DigestRequest,
            12 => Kind::DigestReply,
            14 => Kind::Parity,
            _ => return None,
        })
    }
}

/// The fixed header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 2],
    /// [`VERSION`].
    pub version: u8,
    /// A [`Kind`].
    pub kind: u8,
    /// [`FLAG_END`], [`FLAG_NAMES`], [`FLAG_STATE`].
    pub flags: U16,
    /// Entries in the body.
    pub count: U16,
    /// The sender's tick interval, in milliseconds.
    pub tick_ms: U32,
    /// The cluster id (a hash of the cluster name).
    pub cluster: U64,
    /// The sender's node id.
    pub node: U64,
    /// The sender's incarnation (boot epoch): a higher one replaces the node's whole state.
    pub incarnation: U64,
    /// Per incarnation, +1 per datagram sent to the group.
    pub seq: U64,
    /// Order-independent digest of the sender's whole table.
    pub digest: U64,
    /// Topics in the sender's whole table.
    pub topics: U32,
    /// The sender's clock when it sealed this datagram, in milliseconds since the Unix epoch.
    pub time: U64,
}
/// Size of [`Header`].
pub const HEADER_LEN: usize = 64;
const _: () = assert!(size_of::<Header>() == HEADER_LEN);

/// The hash range a refresh or resync reply is authoritative for, a digest request asks for,
/// or a digest reply splits (inclusive).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Range {
    /// Lowest hash covered.
    pub lo: U64,
    /// Highest hash covered.
    pub hi: U64,
}
/// Size of [`Range`].
pub const RANGE_LEN: usize = 16;
const _: () = assert!(size_of::<Range>() == RANGE_LEN);

/// A parity datagram's block: where it begins, back from the header's `seq`, and its members.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct BlockHead {
    /// The header's `seq` less the block's first sequence number.
    back: U16,
    /// Bit `i` (of a big-endian 112-bit number): sequence number `lo + i` is a member.
    members: [u8; MEMBER_BYTES],
}
/// Bytes of a parity datagram's member bitmap.
const MEMBER_BYTES: usize = crate::cluster::erasure::DATA / 8;

impl BlockHead {
    fn new(back: u16, members: Members) -> BlockHead {
        let mut m = [0; MEMBER_BYTES];
        m.copy_from_slice(&members.to_be_bytes()[16 - MEMBER_BYTES..]);
        BlockHead {
            back: U16::new(back),
            members: m,
        }
    }

    fn members(&self) -> Members {
        let mut wide = [0u8; 16];
        wide[16 - MEMBER_BYTES..].copy_from_slice(&self.members);
        Members::from_be_bytes(wide)
    }
}
// A parity datagram's block takes what a range takes: deltas and names datagrams leave room
// for a range, so their coded forms fit a parity datagram.
const _: () = assert!(size_of::<BlockHead>() == RANGE_LEN);
const _: () = assert!(crate::cluster::erasure::DATA.is_multiple_of(8));

/// One topic's absolute count.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Entry {
    /// The topic's wire hash.
    pub hash: U64,
    /// Its count on the sender.
    pub count: U32,
}
/// Size of [`Entry`].
pub const ENTRY_LEN: usize = 12;

/// One member of the sender's cluster as it hears it: node id and address.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Member {
    /// The member's node id.
    pub node: U64,
    /// Its IP address: IPv6, or IPv4 as an IPv4-mapped IPv6 address.
    pub ip: [u8; 16],
    /// Its port.
    pub port: U16,
}
/// Size of [`Member`].
pub const MEMBER_LEN: usize = 26;
const _: () = assert!(size_of::<Member>() == MEMBER_LEN);

impl Member {
    /// `node` at `addr`.
    pub fn new(node: u64, addr: std::net::SocketAddr) -> Member {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            std::net::IpAddr::V6(a) => a,
        };
        Member {
            node: U64::new(node),
            ip: ip.octets(),
            port: U16::new(addr.port()),
        }
    }

    /// Its address (an IPv4-mapped address as IPv4).
    pub fn addr(&self) -> std::net::SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.ip).to_canonical();
        std::net::SocketAddr::new(ip, self.port.get())
    }
}
const _: () = assert!(size_of::<Entry>() == ENTRY_LEN);

/// One entry of a nack: sequence numbers `lo..=hi` of `node` that the sender missed.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Gap {
    /// The node whose datagrams were missed.
    pub node: U64,
    /// The first sequence number missed.
    pub lo: U64,
    /// The last sequence number missed.
    pub hi: U64,
}
/// Size of [`Gap`].
pub const GAP_LEN: usize = 24;
const _: () = assert!(size_of::<Gap>() == GAP_LEN);

impl Gap {
    /// `node`'s sequence numbers `lo..=hi`.
    pub fn new(node: u64, lo: u64, hi: u64) -> Gap {
        Gap {
            node: U64::new(node),
            lo: U64::new(lo),
            hi: U64::new(hi),
        }
    }
}

/// The digest and size of one child range of a digest reply.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
#[repr(C)]
pub struct Digest {
    /// The wrapping sum of the digest terms
    /// ([`mix`](crate::cluster::protocol::mix)) of the child's entries.
    pub digest: U64,
    /// How many topics the child holds.
    pub topics: U32,
}
/// Size of [`Digest`].
pub const DIGEST_LEN: usize = 12;
const _: () = assert!(size_of::<Digest>() == DIGEST_LEN);

/// The most children a digest reply splits its range into (fewer when the budget is small).
pub const MAX_FANOUT: usize = 32;

/// Child `i` of `[lo, hi]` split into `n` equal parts, or `None` if it is empty (a range
/// narrower than `n` hashes) or `i >= n`. The children cover the range exactly, in order.
pub fn child_range(lo: u64, hi: u64, n: usize, i: usize) -> Option<(u64, u64)> {
    if i >= n || lo > hi {
        return None;
    }
    // In 128 bits: the whole hash space is 2^64 wide.
    let width = u128::from(hi - lo) + 1;
    let (n, i) = (n as u128, i as u128);
    let start = width * i / n;
    let end = width * (i + 1) / n;
    if end == start {
        return None;
    }
    Some((lo + start as u64, lo + (end - 1) as u64))
}

/// The body of a resync request, and the head of a digest request's.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct Target {
    /// The node asked.
    pub node: U64,
    /// Its incarnation as the requester knows it.
    pub incarnation: U64,
    /// The requester's request number: strictly increasing per requester incarnation, so that
    /// a replayed request is refused.
    pub request: U64,
}
/// Size of [`Target`].
pub const TARGET_LEN: usize = 24;
const _: () = assert!(size_of::<Target>() == TARGET_LEN);

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reject {
    /// Shorter than a header and a tag, or a body whose length does not match its count.
    Length,
    /// Not "HC".
    Magic,
    /// Another wire version.
    Version,
    /// Unknown kind.
    Kind,
    /// The tag does not verify: another cluster key, or corruption.
    Mac,
    /// Another cluster.
    Cluster,
    /// A sequence number already seen (duplicate, replay, or reordered behind a newer one).
    Stale,
    /// An older incarnation of a node, or one that said goodbye.
    Incarnation,
    /// A names entry that is not UTF-8, a range with lo > hi, a digest request without a
    /// range, or a digest reply with fewer than 2 or more than [`MAX_FANOUT`] children.
    Malformed,
    /// The peer table is full.
    TooManyPeers,
    /// The peer's table is over the per-peer cap.
    TooManyTopics,
    /// The source sent faster than the per-source rate limit.
    Rate,
    /// Sealed further from the receiver's clock than the allowed skew: a replay, or a node whose
    /// clock is off.
    Clock,
    /// A resync request from a node that is not a live peer (or observer) at that address and
    /// incarnation, or a request number already used: never answered.
    NotPeer,
    /// A resync request refused because the node's repair budget is spent for now.
    Budget,
    /// Another process uses this node's id (a newer incarnation of it): misconfiguration.
    NodeId,
    /// From a node of this node's own zone, in the cross-zone group of a zoned cluster (see
    /// [`Config::zone`](crate::cluster::protocol::Config::zone)): its zone's counts reach this
    /// node through the zone's own group.
    Zone,
}

impl Reject {
    /// How many reasons there are.
    pub const COUNT: usize = 17;

    /// Every reason, for counters.
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::Length,
        Reject::Magic,
        Reject::Version,
        Reject::Kind,
        Reject::Mac,
        Reject::Cluster,
        Reject::Stale,
        Reject::Incarnation,
        Reject::Malformed,
        Reject::TooManyPeers,
        Reject::TooManyTopics,
        Reject::Rate,
        Reject::Clock,
        Reject::NotPeer,
        Reject::Budget,
        Reject::NodeId,
        Reject::Zone,
    ];

    /// A short snake_case name (for metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Reject::Length => "length",
            Reject::Magic => "magic",
            Reject::Version => "version",
            Reject::Kind => "kind",
            Reject::Mac => "mac",
            Reject::Cluster => "cluster",
            Reject::Stale => "stale",
            Reject::Incarnation => "incarnation",
            Reject::Malformed => "malformed",
            Reject::TooManyPeers => "too_many_peers",
            Reject::TooManyTopics => "too_many_topics",
            Reject::Rate => "rate",
            Reject::Clock => "clock",
            Reject::NotPeer => "not_peer",
            Reject::Budget => "budget",
            Reject::NodeId => "node_id",
            Reject::Zone => "zone",
        }
    }

    pub(crate) fn index(self) -> usize {
        Reject::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A datagram's tag, checked by a [`Seal`] ([`Seal::check`]): the bytes it was checked on (held,
/// so that their allocation, unchanging, stays theirs) and under which key.
#[derive(Clone)]
pub(crate) struct Checked {
    key: [u8; 32],
    bytes: std::sync::Arc<[u8]>,
    /// Whether the bytes opened whole under that seal: then the names they carry are UTF-8,
    /// and need not be checked again by each receiver.
    opens: bool,
}

impl Checked {
    /// The bytes whose tag was checked.
    pub(crate) fn bytes(&self) -> &std::sync::Arc<[u8]> {
        &self.bytes
    }
}

/// The MAC key and the cluster id: what every datagram is sealed and checked with.
#[derive(Clone)]
pub struct Seal {
    key: [u8; 32],
    cluster: u64,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Seal {
    /// A seal for cluster `name` with key material `key` (empty: no key; still a MAC, but
    /// anyone who knows the cluster name can forge it).
    pub fn new(name: &str, key: &[u8]) -> Seal {
        let mut h = blake3::Hasher::new_derive_key("headcount 2026 cluster mac key v1");
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(key);
        let key = *h.finalize().as_bytes();
        let id = blake3::Hasher::new_derive_key("headcount 2026 cluster id v1")
            .update(name.as_bytes())
            .finalize();
        let cluster = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap_or_default());
        Seal { key, cluster }
    }

    /// The cluster id carried in every header.
    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    /// The key for topic wire hashes, derived from the same material (so that an outsider
    /// cannot pick colliding names).
    pub fn topic_hash_key(name: &str, key: &[u8]) -> u128 {
        let mut h = blake3::Hasher::new_derive_key("headcount 2026 topic hash key v1");
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(key);
        u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().unwrap_or_default())
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let full = blake3::keyed_hash(&self.key, bytes);
        let mut t = [0; TAG_LEN];
        t.copy_from_slice(&full.as_bytes()[..TAG_LEN]);
        t
    }

    /// Whether `tag` is `msg`'s (compared in constant time).
    fn tag_ok(&self, msg: &[u8], tag: &[u8]) -> bool {
        let want = self.tag(msg);
        want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Appends the tag to a datagram under construction.
    pub fn seal(&self, buf: &mut Vec<u8>) {
        let t = self.tag(buf);
        buf.extend_from_slice(&t);
    }

    /// Changes the header flags of a datagram sealed with this seal (`f` maps the old flags to
    /// the new), and seals it again. A datagram too short for a header is left as it is.
    pub fn reflag(&self, bytes: &mut Vec<u8>, f: impl FnOnce(u16) -> u16) {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return;
        }
        bytes.truncate(bytes.len() - TAG_LEN);
        if let Ok((h, _)) = Header::mut_from_prefix(&mut bytes[..]) {
            h.flags.set(f(h.flags.get()));
        }
        self.seal(bytes);
    }

    /// Checks a datagram and splits it into header and body.
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<Datagram<'a>, Reject> {
        self.open_with(bytes, None)
    }

    /// Checks `bytes`' tag alone, for [`Seal::open_with`]: the simulator delivers one
    /// datagram's bytes to many nodes sealed with one key, and checks the tag once for all.
    pub(crate) fn check(&self, bytes: &std::sync::Arc<[u8]>) -> Option<Checked> {
        let (msg, tag) = bytes.split_at_checked(bytes.len().checked_sub(TAG_LEN)?)?;
        self.tag_ok(msg, tag).then(|| Checked {
            key: self.key,
            bytes: bytes.clone(),
            opens: self.open_as(bytes, true, true).is_ok(),
        })
    }

    /// [`Seal::open`], but the tag is not computed again if `checked` says this seal's key
    /// checked these very bytes (the allocation `checked` holds: the same address and length
    /// are the same bytes while it lives).
    pub(crate) fn open_with<'a>(
        &self,
        bytes: &'a [u8],
        checked: Option<&Checked>,
    ) -> Result<Datagram<'a>, Reject> {
        let checked = checked.filter(|c| std::ptr::eq(&*c.bytes, bytes) && c.key == self.key);
        // (UTF-8 is a property of the bytes alone: the names of bytes that opened whole under
        // this key are checked already.)
        self.open_as(bytes, checked.is_some(), !checked.is_some_and(|c| c.opens))
    }

    /// [`Seal::open`], the tag taken as right if `tag_known`, and the names checked to be
    /// UTF-8 if `utf8`.
    fn open_as<'a>(
        &self,
        bytes: &'a [u8],
        tag_known: bool,
        utf8: bool,
    ) -> Result<Datagram<'a>, Reject> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Reject::Length);
        }
        let (msg, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let (hdr, body) = Header::ref_from_prefix(msg).map_err(|_| Reject::Length)?;
        if hdr.magic != MAGIC {
            return Err(Reject::Magic);
        }
        if hdr.version != VERSION {
            return Err(Reject::Version);
        }
        if !tag_known && !self.tag_ok(msg, tag) {
            return Err(Reject::Mac);
        }
        if hdr.cluster.get() != self.cluster {
            return Err(Reject::Cluster);
        }
        let kind = Kind::from_u8(hdr.kind).ok_or(Reject::Kind)?;
        let count = usize::from(hdr.count.get());
        let body = match kind {
            Kind::Delta => Body::Entries(entries(body, count)?),
            Kind::Refresh | Kind::ResyncReply => {
                let (range, rest) = Range::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                if range.lo.get() > range.hi.get() {
                    return Err(Reject::Malformed);
                }
                Body::Range(range.lo.get(), range.hi.get(), entries(rest, count)?)
            }
            Kind::Heartbeat | Kind::Goodbye => {
                if !body.is_empty() || count != 0 {
                    return Err(Reject::Length);
                }
                Body::Empty
            }
            Kind::ResyncRequest => {
                let (t, rest) = Target::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                let names = match <[U64]>::ref_from_bytes(rest) {
                    Ok(h) if h.len() == count => h,
                    _ => return Err(Reject::Length),
                };
                Body::Target {
                    node: t.node.get(),
                    incarnation: t.incarnation.get(),
                    request: t.request.get(),
                    names,
                }
            }
            Kind::Names => Body::Names(names(body, count, utf8)?),
            Kind::Repair => {
                let (range, rest) = Range::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                let (lo, hi) = (range.lo.get(), range.hi.get());
                if lo > hi {
                    return Err(Reject::Malformed);
                }
                if hdr.flags.get() & FLAG_NAMES != 0 {
                    Body::RepairNames(lo, hi, names(rest, count, utf8)?)
                } else {
                    Body::Repair(lo, hi, entries(rest, count)?)
                }
            }
            Kind::Members => match <[Member]>::ref_from_bytes(body) {
                Ok(m) if m.len() == count => Body::Members(m),
                _ => return Err(Reject::Length),
            },
            Kind::DigestRequest => {
                let (t, rest) = Target::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                let ranges = match <[Range]>::ref_from_bytes(rest) {
                    Ok(r) if r.len() == count => r,
                    _ => return Err(Reject::Length),
                };
                if ranges.is_empty() || ranges.iter().any(|r| r.lo.get() > r.hi.get()) {
                    return Err(Reject::Malformed);
                }
                Body::Ranges {
                    node: t.node.get(),
                    incarnation: t.incarnation.get(),
                    request: t.request.get(),
                    ranges,
                }
            }
            Kind::DigestReply => {
                let (range, rest) = Range::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                let children = match <[Digest]>::ref_from_bytes(rest) {
                    Ok(c) if c.len() == count => c,
                    _ => return Err(Reject::Length),
                };
                // Fewer than two children would not narrow the range down.
                if range.lo.get() > range.hi.get() || !(2..=MAX_FANOUT).contains(&count) {
                    return Err(Reject::Malformed);
                }
                Body::Digests(range.lo.get(), range.hi.get(), children)
            }
            Kind::Parity => {
                let (head, payload) =
                    BlockHead::ref_from_prefix(body).map_err(|_| Reject::Length)?;
                let lo = hdr.seq.get().wrapping_sub(u64::from(head.back.get()));
                let members = head.members();
                // (The block's numbers must exist: `lo` is not past the header's `seq`, and
                // `lo + BLOCK - 1` does not overflow.)
                if lo == 0
                    || lo > hdr.seq.get()
                    || lo > u64::MAX - (BLOCK - 1)
                    || members == 0
                    || count >= crate::cluster::erasure::PARITY
                    || payload.len() < CODED_HEAD
                {
                    return Err(Reject::Malformed);
                }
                Body::Parity {
                    lo,
                    members,
                    index: count,
                    payload,
                }
            }
            Kind::Nack => match <[Gap]>::ref_from_bytes(body) {
                Ok(g) if g.len() == count => {
                    if g.iter().any(|g| g.lo.get() > g.hi.get()) {
                        return Err(Reject::Malformed);
                    }
                    Body::Gaps(g)
                }
                _ => return Err(Reject::Length),
            },
        };
        Ok(Datagram {
            header: hdr,
            kind,
            body,
        })
    }
}

/// A names body of `count` entries, each name checked to be UTF-8 if `utf8` (it is known to be
/// otherwise: see [`Checked`]).
fn names(body: &[u8], count: usize, utf8: bool) -> Result<Names<'_>, Reject> {
    let mut rest = body;
    for _ in 0..count {
        rest = if utf8 {
            NameEntry::parse(rest)?.1
        } else {
            NameEntry::split(rest)?.2
        };
    }
    if !rest.is_empty() {
        return Err(Reject::Length);
    }
    Ok(Names {
        bytes: body,
        left: count,
    })
}

/// A names body of `count` entries, checked as a received one is (for tests that hand a
/// protocol names directly).
#[cfg(test)]
pub(crate) fn names_body(body: &[u8], count: usize) -> Result<Names<'_>, Reject> {
    names(body, count, true)
}

fn entries(body: &[u8], count: usize) -> Result<&[Entry], Reject> {
    match <[Entry]>::ref_from_bytes(body) {
        Ok(e) if e.len() == count => Ok(e),
        _ => Err(Reject::Length),
    }
}

/// A checked datagram.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The header.
    pub header: &'a Header,
    /// Its kind.
    pub kind: Kind,
    /// The decoded body.
    pub body: Body<'a>,
}

/// A datagram's body.
#[derive(Debug)]
pub enum Body<'a> {
    /// Heartbeat, goodbye.
    Empty,
    /// Delta entries.
    Entries(&'a [Entry]),
    /// Refresh / resync reply: `[lo, hi]` and the entries in it.
    Range(u64, u64, &'a [Entry]),
    /// Resync request: the target node and incarnation, and the requester's request number.
    Target {
        /// The node asked.
        node: u64,
        /// Its incarnation as the requester knows it.
        incarnation: u64,
        /// The requester's request number.
        request: u64,
        /// The topics whose names are asked for (none: all of them).
        names: &'a [U64],
    },
    /// Names.
    Names(Names<'a>),
    /// Members.
    Members(&'a [Member]),
    /// A nack's gaps (each `lo <= hi`).
    Gaps(&'a [Gap]),
    /// A repair of the sender's sequence numbers `lo..=hi`: the counts of now.
    Repair(u64, u64, &'a [Entry]),
    /// A repair of the sender's sequence numbers `lo..=hi`: names.
    RepairNames(u64, u64, Names<'a>),
    /// Digest request: the target node and incarnation, the requester's request number, and
    /// the hash ranges asked for (at least one, each `lo <= hi`).
    Ranges {
        /// The node asked.
        node: u64,
        /// Its incarnation as the requester knows it.
        incarnation: u64,
        /// The requester's request number (the same sequence as its resync requests').
        request: u64,
        /// The ranges asked for.
        ranges: &'a [Range],
    },
    /// Digest reply: `[lo, hi]` and its children's digests (2 to [`MAX_FANOUT`] of them; child
    /// `i` of `n` is [`child_range`]`(lo, hi, n, i)`).
    Digests(u64, u64, &'a [Digest]),
    /// Parity symbol `index` of the block of sequence numbers from `lo` (never 0, and
    /// `lo + BLOCK - 1` does not overflow) over the members the bitmap lists (never none).
    Parity {
        /// The block's first sequence number.
        lo: u64,
        /// Bit `i`: sequence number `lo + i` is coded.
        members: Members,
        /// The parity symbol's index (below [`crate::cluster::erasure::PARITY`]).
        index: usize,
        /// The symbol (at least [`CODED_HEAD`] bytes).
        payload: &'a [u8],
    },
}

/// Sequence numbers in a parity block (one bit each in its member bitmap).
pub const BLOCK: u64 = crate::cluster::erasure::DATA as u64;
/// A parity block's member bitmap (bit `i`: its first sequence number plus `i`; bits from
/// [`BLOCK`] on are never set).
pub type Members = u128;
/// The coded form's head: kind (u8), count (u16), body length (u16).
pub const CODED_HEAD: usize = 5;

/// The coded form of a sealed delta or names datagram (see the module docs): what parity
/// covers of it. `None` for another kind or a datagram too short for a header.
pub fn coded(bytes: &[u8]) -> Option<Vec<u8>> {
    let (h, _) = Header::ref_from_prefix(bytes).ok()?;
    let body = bytes.get(HEADER_LEN..bytes.len().checked_sub(TAG_LEN)?)?;
    Kind::from_u8(h.kind).filter(|k| matches!(k, Kind::Delta | Kind::Names))?;
    let len = u16::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(CODED_HEAD + body.len());
    out.push(h.kind);
    out.extend_from_slice(&h.count.get().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// A coded form read back (zero padding after the body allowed): a delta's entries or a
/// names datagram's names.
pub fn uncode(coded: &[u8]) -> Result<Body<'_>, Reject> {
    if coded.len() < CODED_HEAD {
        return Err(Reject::Length);
    }
    let count = usize::from(u16::from_le_bytes([coded[1], coded[2]]));
    let len = usize::from(u16::from_le_bytes([coded[3], coded[4]]));
    let body = coded
        .get(CODED_HEAD..CODED_HEAD + len)
        .ok_or(Reject::Length)?;
    if coded[CODED_HEAD + len..].iter().any(|&b| b != 0) {
        return Err(Reject::Malformed);
    }
    match Kind::from_u8(coded[0]) {
        Some(Kind::Delta) => Ok(Body::Entries(entries(body, count)?)),
        Some(Kind::Names) => Ok(Body::Names(names(body, count, true)?)),
        _ => Err(Reject::Kind),
    }
}

/// The entries of a names datagram (already validated).
#[derive(Debug, Clone)]
pub struct Names<'a> {
    bytes: &'a [u8],
    left: usize,
}

struct NameEntry<'a> {
    hash: u64,
    name: &'a str,
}

impl<'a> NameEntry<'a> {
    /// The first entry of `b` with its name's bytes unchecked, and the rest.
    fn split(b: &'a [u8]) -> Result<(u64, &'a [u8], &'a [u8]), Reject> {
        let (hash, rest) = U64::ref_from_prefix(b).map_err(|_| Reject::Length)?;
        let (&len, rest) = rest.split_first().ok_or(Reject::Length)?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(Reject::Length);
        }
        let (name, rest) = rest.split_at(len);
        Ok((hash.get(), name, rest))
    }

    fn parse(b: &'a [u8]) -> Result<(NameEntry<'a>, &'a [u8]), Reject> {
        let (hash, name, rest) = Self::split(b)?;
        let name = std::str::from_utf8(name).map_err(|_| Reject::Malformed)?;
        Ok((NameEntry { hash, name }, rest))
    }
}

impl<'a> Names<'a> {
    /// The entries with their names as bytes (checked to be UTF-8 when the datagram was
    /// opened): a receiver that knows most names already looks each hash up first and checks
    /// only the names it keeps.
    pub(crate) fn raw(&self) -> impl Iterator<Item = (u64, &'a [u8])> + use<'a> {
        let mut bytes = self.bytes;
        (0..self.left).map_while(move |_| {
            let (hash, name, rest) = NameEntry::split(bytes).ok()?;
            bytes = rest;
            Some((hash, name))
        })
    }
}

impl<'a> Iterator for Names<'a> {
    type Item = (u64, &'a str);
    fn next(&mut self) -> Option<(u64, &'a str)> {
        if self.left == 0 {
            return None;
        }
        let (e, rest) = NameEntry::parse(self.bytes).ok()?;
        self.bytes = rest;
        self.left -= 1;
        Some((e.hash, e.name))
    }
}

/// The longest topic name a names datagram carries (longer names are not sent; such topics show
/// on peers by count only).
pub const MAX_WIRE_NAME: usize = 255;

/// Builds datagrams within a payload budget.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Header fields that do not change per datagram.
    pub template: Header,
    budget: usize,
}

impl Encoder {
    /// An encoder for a node; `budget` is the largest datagram (≥ [`MIN_BUDGET`]).
    pub fn new(cluster: u64, node: u64, incarnation: u64, tick_ms: u32, budget: usize) -> Encoder {
        let template = Header {
            magic: MAGIC,
            version: VERSION,
            kind: 0,
            flags: U16::new(0),
            count: U16::new(0),
            tick_ms: U32::new(tick_ms),
            cluster: U64::new(cluster),
            node: U64::new(node),
            incarnation: U64::new(incarnation),
            seq: U64::new(0),
            digest: U64::new(0),
            topics: U32::new(0),
            time: U64::new(0),
        };
        Encoder {
            template,
            budget: budget.max(MIN_BUDGET),
        }
    }

    /// Entries that fit one datagram of `kind`.
    /// (Every kind leaves room for a range: a delta's, for the sequence range of its repair.)
    pub fn entries_per_datagram(&self, kind: Kind) -> usize {
        let _ = kind;
        ((self.budget - HEADER_LEN - TAG_LEN - RANGE_LEN) / ENTRY_LEN).min(usize::from(u16::MAX))
    }

    /// The payload budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    fn header(&self, kind: Kind, flags: u16, count: usize, st: &Stamp) -> Header {
        let mut h = self.template;
        h.kind = kind as u8;
        h.flags = U16::new(flags);
        h.count = U16::new(count as u16);
        h.seq = U64::new(st.seq);
        h.digest = U64::new(st.digest);
        h.topics = U32::new(st.topics);
        h.time = U64::new(st.time);
        h
    }

    /// A repair of this node's sequence numbers `lo..=hi`: `entries` with the counts of now,
    /// flagged [`FLAG_REPLY`] (`st` has the current sequence number) and `flags`.
    pub fn repair(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        (lo, hi): (u64, u64),
        entries: &[(u64, u32)],
    ) -> Vec<u8> {
        self.entries(
            seal,
            Kind::Repair,
            flags | FLAG_REPLY,
            st,
            Some((lo, hi)),
            entries,
        )
    }

    /// A delta (`range: None`) or refresh / resync reply datagram.
    pub fn entries(
        &self,
        seal: &Seal,
        kind: Kind,
        flags: u16,
        st: &Stamp,
        range: Option<(u64, u64)>,
        entries: &[(u64, u32)],
    ) -> Vec<u8> {
        debug_assert!(entries.len() <= self.entries_per_datagram(kind));
        let mut buf =
            Vec::with_capacity(HEADER_LEN + RANGE_LEN + entries.len() * ENTRY_LEN + TAG_LEN);
        buf.extend_from_slice(self.header(kind, flags, entries.len(), st).as_bytes());
        if let Some((lo, hi)) = range {
            buf.extend_from_slice(
                Range {
                    lo: U64::new(lo),
                    hi: U64::new(hi),
                }
                .as_bytes(),
            );
        }
        for &(h, c) in entries {
            buf.extend_from_slice(
                Entry {
                    hash: U64::new(h),
                    count: U32::new(c),
                }
                .as_bytes(),
            );
        }
        seal.seal(&mut buf);
        buf
    }

    /// A heartbeat or goodbye.
    pub fn bare(&self, seal: &Seal, kind: Kind, flags: u16, st: &Stamp) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER_LEN + TAG_LEN);
        buf.extend_from_slice(self.header(kind, flags, 0, st).as_bytes());
        seal.seal(&mut buf);
        buf
    }

    /// A resync request to `node` (incarnation `incarnation`), the requester's `request`th.
    pub fn request(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        node: u64,
        incarnation: u64,
        request: u64,
    ) -> Vec<u8> {
        self.request_names(seal, flags, st, (node, incarnation, request), &[])
    }

    /// How many topics a resync request can ask the names of.
    pub fn names_per_request(&self) -> usize {
        ((self.budget - HEADER_LEN - TARGET_LEN - TAG_LEN) / 8).min(usize::from(u16::MAX))
    }

    /// A resync request to `node` (incarnation `incarnation`), the requester's `request`th,
    /// asking (with [`FLAG_NAMES`]) for the names of `names` only (at most
    /// [`Encoder::names_per_request`]; the rest are left out).
    pub fn request_names(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        (node, incarnation, request): (u64, u64, u64),
        names: &[u64],
    ) -> Vec<u8> {
        let names = &names[..names.len().min(self.names_per_request())];
        let mut buf = Vec::with_capacity(HEADER_LEN + TARGET_LEN + names.len() * 8 + TAG_LEN);
        buf.extend_from_slice(
            self.header(Kind::ResyncRequest, flags, names.len(), st)
                .as_bytes(),
        );
        buf.extend_from_slice(
            Target {
                node: U64::new(node),
                incarnation: U64::new(incarnation),
                request: U64::new(request),
            }
            .as_bytes(),
        );
        for &h in names {
            buf.extend_from_slice(&h.to_be_bytes());
        }
        seal.seal(&mut buf);
        buf
    }

    /// How many children a digest reply of this budget splits its range into: [`MAX_FANOUT`],
    /// or fewer when the budget is small; 0 when not even two fit (then ranges are answered with
    /// their entries only).
    pub fn fanout(&self) -> usize {
        let n = (self.budget - HEADER_LEN - RANGE_LEN - TAG_LEN) / DIGEST_LEN;
        if n < 2 { 0 } else { n.min(MAX_FANOUT) }
    }

    /// How many ranges a digest request can carry (0: the budget has no room for one; then
    /// so has a digest reply none for two children, and this node asks for whole tables).
    pub fn ranges_per_request(&self) -> usize {
        ((self.budget - HEADER_LEN - TARGET_LEN - TAG_LEN) / RANGE_LEN).min(usize::from(u16::MAX))
    }

    /// Digest requests to `node` (incarnation `incarnation`) for `ranges`, as many datagrams as
    /// they need ([`Encoder::ranges_per_request`] each); `request` gives each its request
    /// number. `flags`: [`FLAG_STATE`] asks for the ranges' entries.
    pub fn digest_requests(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        (node, incarnation): (u64, u64),
        request: &mut dyn FnMut() -> u64,
        ranges: &[(u64, u64)],
    ) -> Vec<Vec<u8>> {
        let per = self.ranges_per_request();
        if per == 0 {
            return Vec::new();
        }
        ranges
            .chunks(per)
            .map(|chunk| {
                let mut buf =
                    Vec::with_capacity(HEADER_LEN + TARGET_LEN + chunk.len() * RANGE_LEN + TAG_LEN);
                buf.extend_from_slice(
                    self.header(Kind::DigestRequest, flags, chunk.len(), st)
                        .as_bytes(),
                );
                buf.extend_from_slice(
                    Target {
                        node: U64::new(node),
                        incarnation: U64::new(incarnation),
                        request: U64::new(request()),
                    }
                    .as_bytes(),
                );
                for &(lo, hi) in chunk {
                    buf.extend_from_slice(
                        Range {
                            lo: U64::new(lo),
                            hi: U64::new(hi),
                        }
                        .as_bytes(),
                    );
                }
                seal.seal(&mut buf);
                buf
            })
            .collect()
    }

    /// A digest reply for `[lo, hi]`: `children` (digest, topics) of its equal children
    /// (2 to [`Encoder::fanout`] of them; more are left out), flagged [`FLAG_REPLY`] and
    /// `flags` (`st` has the current sequence number).
    pub fn digest_reply(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        (lo, hi): (u64, u64),
        children: &[(u64, u32)],
    ) -> Vec<u8> {
        debug_assert!((2..=self.fanout()).contains(&children.len()));
        let children = &children[..children.len().min(self.fanout())];
        let mut buf =
            Vec::with_capacity(HEADER_LEN + RANGE_LEN + children.len() * DIGEST_LEN + TAG_LEN);
        buf.extend_from_slice(
            self.header(Kind::DigestReply, flags | FLAG_REPLY, children.len(), st)
                .as_bytes(),
        );
        buf.extend_from_slice(
            Range {
                lo: U64::new(lo),
                hi: U64::new(hi),
            }
            .as_bytes(),
        );
        for &(digest, topics) in children {
            buf.extend_from_slice(
                Digest {
                    digest: U64::new(digest),
                    topics: U32::new(topics),
                }
                .as_bytes(),
            );
        }
        seal.seal(&mut buf);
        buf
    }

    /// The most coded bytes a parity datagram carries (a member's coded form must fit).
    pub fn parity_room(&self) -> usize {
        self.budget - HEADER_LEN - RANGE_LEN - TAG_LEN
    }

    /// Parity symbol `index` of this node's block from `lo` over `members` (see the module
    /// docs), flagged [`FLAG_REPLY`] and `flags` (`st` has the current sequence number); `None`
    /// if the block began more than `u16::MAX` numbers before it, or `members` has a bit from
    /// [`BLOCK`] on.
    #[allow(clippy::too_many_arguments)]
    pub fn parity(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        (lo, members): (u64, Members),
        index: usize,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let back = u16::try_from(st.seq.checked_sub(lo)?).ok()?;
        if members >> BLOCK != 0 {
            return None;
        }
        let mut buf = Vec::with_capacity(HEADER_LEN + RANGE_LEN + payload.len() + TAG_LEN);
        buf.extend_from_slice(
            self.header(Kind::Parity, flags | FLAG_REPLY, index, st)
                .as_bytes(),
        );
        buf.extend_from_slice(BlockHead::new(back, members).as_bytes());
        buf.extend_from_slice(payload);
        seal.seal(&mut buf);
        Some(buf)
    }

    /// Members datagrams listing `members` (each within the budget); `seq` gives each its
    /// sequence number.
    pub fn members(
        &self,
        seal: &Seal,
        seq: &mut dyn FnMut() -> u64,
        st: &Stamp,
        members: &[Member],
    ) -> Vec<Vec<u8>> {
        let per = ((self.budget - HEADER_LEN - TAG_LEN) / MEMBER_LEN).max(1);
        members
            .chunks(per)
            .map(|chunk| {
                let mut buf = Vec::with_capacity(HEADER_LEN + chunk.len() * MEMBER_LEN + TAG_LEN);
                let st = Stamp { seq: seq(), ..*st };
                buf.extend_from_slice(self.header(Kind::Members, 0, chunk.len(), &st).as_bytes());
                buf.extend_from_slice(chunk.as_bytes());
                seal.seal(&mut buf);
                buf
            })
            .collect()
    }

    /// Nack datagrams listing `gaps` (each within the budget), flagged [`FLAG_REPLY`]: they
    /// carry the sender's current sequence number in `st`.
    pub fn nacks(&self, seal: &Seal, flags: u16, st: &Stamp, gaps: &[Gap]) -> Vec<Vec<u8>> {
        let per = ((self.budget - HEADER_LEN - TAG_LEN) / GAP_LEN).max(1);
        gaps.chunks(per)
            .map(|chunk| {
                let mut buf = Vec::with_capacity(HEADER_LEN + chunk.len() * GAP_LEN + TAG_LEN);
                buf.extend_from_slice(
                    self.header(Kind::Nack, flags | FLAG_REPLY, chunk.len(), st)
                        .as_bytes(),
                );
                buf.extend_from_slice(chunk.as_bytes());
                seal.seal(&mut buf);
                buf
            })
            .collect()
    }

    /// Names datagrams for `names` (each within the budget; names over [`MAX_WIRE_NAME`] bytes,
    /// or too long for one datagram of this budget, are skipped: peers count such topics but
    /// cannot list them by name). `seq` gives each datagram's sequence number.
    pub fn names<'n>(
        &self,
        seal: &Seal,
        flags: u16,
        seq: &mut dyn FnMut() -> u64,
        st: &Stamp,
        names: impl IntoIterator<Item = (u64, &'n str)>,
    ) -> Vec<Vec<u8>> {
        self.names_each(seal, flags, seq, st, names)
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    }

    /// [`Encoder::names`], with the hashes each datagram carries.
    pub fn names_each<'n>(
        &self,
        seal: &Seal,
        flags: u16,
        seq: &mut dyn FnMut() -> u64,
        st: &Stamp,
        names: impl IntoIterator<Item = (u64, &'n str)>,
    ) -> Vec<(Vec<u8>, Vec<u64>)> {
        self.pack_names(seal, Kind::Names, flags, None, seq, st, names)
    }

    /// A repair of this node's names datagram `seq`: `names` (the names of now), flagged
    /// [`FLAG_REPLY`], [`FLAG_NAMES`] and `flags` (`st` has the current sequence number). Names that
    /// fitted the datagram repaired fit its repair; more go into further datagrams.
    pub fn repair_names<'n>(
        &self,
        seal: &Seal,
        flags: u16,
        st: &Stamp,
        seq: u64,
        names: impl IntoIterator<Item = (u64, &'n str)>,
    ) -> Vec<Vec<u8>> {
        let flags = flags | FLAG_REPLY | FLAG_NAMES;
        let mut cur = || st.seq;
        self.pack_names(
            seal,
            Kind::Repair,
            flags,
            Some((seq, seq)),
            &mut cur,
            st,
            names,
        )
        .into_iter()
        .map(|(d, _)| d)
        .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn pack_names<'n>(
        &self,
        seal: &Seal,
        kind: Kind,
        flags: u16,
        range: Option<(u64, u64)>,
        seq: &mut dyn FnMut() -> u64,
        st: &Stamp,
        names: impl IntoIterator<Item = (u64, &'n str)>,
    ) -> Vec<(Vec<u8>, Vec<u64>)> {
        let mut out = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut hashes: Vec<u64> = Vec::new();
        // Room for a range in every one: a names datagram's repair must fit as it did; and
        // (where the budget is not tiny) for the coded form's head, so that parity covers it.
        let full = self.budget - HEADER_LEN - TAG_LEN - RANGE_LEN;
        let room = if full >= 64 + CODED_HEAD {
            full - CODED_HEAD
        } else {
            full
        };
        let mut flush = |body: &mut Vec<u8>, hashes: &mut Vec<u64>, out: &mut Vec<_>| {
            if hashes.is_empty() {
                return;
            }
            let mut buf = Vec::with_capacity(HEADER_LEN + RANGE_LEN + body.len() + TAG_LEN);
            let st = Stamp { seq: seq(), ..*st };
            buf.extend_from_slice(self.header(kind, flags, hashes.len(), &st).as_bytes());
            if let Some((lo, hi)) = range {
                buf.extend_from_slice(
                    Range {
                        lo: U64::new(lo),
                        hi: U64::new(hi),
                    }
                    .as_bytes(),
                );
            }
            buf.extend_from_slice(body);
            seal.seal(&mut buf);
            out.push((buf, std::mem::take(hashes)));
            body.clear();
        };
        for (hash, name) in names {
            let need = 9 + name.len();
            if name.len() > MAX_WIRE_NAME || need > room {
                continue;
            }
            if body.len() + need > room || hashes.len() == usize::from(u16::MAX) {
                flush(&mut body, &mut hashes, &mut out);
            }
            body.extend_from_slice(&hash.to_be_bytes());
            body.push(name.len() as u8);
            body.extend_from_slice(name.as_bytes());
            hashes.push(hash);
        }
        flush(&mut body, &mut hashes, &mut out);
        out
    }
}

/// The per-datagram header fields: sequence number, the sender's table digest and size, and the
/// sender's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Sequence number.
    pub seq: u64,
    /// Digest of the sender's whole table.
    pub digest: u64,
    /// Topics in the sender's whole table.
    pub topics: u32,
    /// The sender's clock, milliseconds since the Unix epoch.
    pub time: u64,
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc() -> (Seal, Encoder) {
        let s = Seal::new("test", b"key");
        let e = Encoder::new(s.cluster(), 7, 3, 100, 1400);
        (s, e)
    }

    fn st(seq: u64, digest: u64, topics: u32) -> Stamp {
        Stamp {
            seq,
            digest,
            topics,
            time: 1_800_000_000_000 + seq,
        }
    }

    /// A tag checked once ([`Seal::check`]) spares only these very bytes under this very key:
    /// a copy altered elsewhere, or a seal with another key, checks the tag itself and refuses.
    #[test]
    fn a_checked_tag_stands_for_its_bytes_and_key_only() {
        use std::sync::Arc;
        let (s, e) = enc();
        let d: Arc<[u8]> = e
            .entries(&s, Kind::Delta, 0, &st(1, 0, 0), None, &[(5, 2), (9, 1)])
            .into();
        let c = s.check(&d).expect("its own seal's tag");
        assert!(s.open_with(&d, Some(&c)).is_ok());
        let mut bad = d.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.check(&Arc::from(bad.as_slice())).is_none());
        assert_eq!(s.open_with(&bad, Some(&c)).err(), Some(Reject::Mac));
        // The same bytes elsewhere are checked again (they pass: they are the same).
        let copy = d.to_vec();
        assert!(s.open_with(&copy, Some(&c)).is_ok());
        let other = Seal::new("test", b"another key");
        assert!(other.check(&d).is_none());
        assert_eq!(other.open_with(&d, Some(&c)).err(), Some(Reject::Mac));
        assert!(s.check(&Arc::from(&d[..TAG_LEN - 1])).is_none());
    }

    #[test]
    fn sizes_within_targets() {
        let (s, e) = enc();
        let hb = e.bare(&s, Kind::Heartbeat, FLAG_END, &st(1, 0, 0));
        assert!(hb.len() <= 128, "heartbeat is {} bytes", hb.len());
        let n = e.entries_per_datagram(Kind::Delta);
        assert_eq!(n, 108);
        let d = e.entries(&s, Kind::Delta, 0, &st(1, 0, 0), None, &vec![(1, 1); n]);
        assert!(d.len() <= 1400);
        assert!(d.len() as f64 / n as f64 <= 13.0);
        let r = e.entries(
            &s,
            Kind::Refresh,
            0,
            &st(1, 0, 0),
            Some((0, u64::MAX)),
            &vec![(1, 1); e.entries_per_datagram(Kind::Refresh)],
        );
        assert!(r.len() <= 1400);
        assert_eq!(e.fanout(), MAX_FANOUT);
        let dr = e.digest_reply(&s, 0, &st(1, 0, 0), (0, u64::MAX), &[(1, 1); MAX_FANOUT]);
        assert!(dr.len() <= 512, "a digest reply is {} bytes", dr.len());
        let tiny = Encoder::new(s.cluster(), 7, 3, 100, MIN_BUDGET);
        assert_eq!((tiny.fanout(), tiny.ranges_per_request()), (0, 0));
        let req = tiny.digest_requests(&s, 0, &st(1, 0, 0), (1, 1), &mut || 1, &[(0, 1)]);
        assert!(req.is_empty());
        // Where a digest reply has room for two children, a request has room for a range.
        for budget in MIN_BUDGET..200 {
            let e = Encoder::new(s.cluster(), 7, 3, 100, budget);
            assert_eq!(
                e.fanout() >= 2,
                e.ranges_per_request() >= 1,
                "budget {budget}"
            );
        }
    }

    /// Digest requests and replies whose counts or ranges do not hold are refused, whatever
    /// their seal: no ranges, a range with lo > hi, fewer than two or more than
    /// [`MAX_FANOUT`] children, a count that does not match the body.
    #[test]
    fn malformed_digest_datagrams_are_rejected() {
        let (s, e) = enc();
        // Rebuilds a sealed datagram with its header count and body replaced.
        let forge = |kind: Kind, count: u16, body: &[u8]| {
            let mut b = e.bare(&s, Kind::Heartbeat, 0, &st(5, 1, 2));
            b.truncate(HEADER_LEN);
            b[3] = kind as u8;
            b[6..8].copy_from_slice(&count.to_be_bytes());
            b.extend_from_slice(body);
            s.seal(&mut b);
            b
        };
        let target = Target {
            node: U64::new(1),
            incarnation: U64::new(1),
            request: U64::new(1),
        };
        let range = |lo: u64, hi: u64| Range {
            lo: U64::new(lo),
            hi: U64::new(hi),
        };
        let req = |ranges: &[Range]| {
            let mut b = target.as_bytes().to_vec();
            b.extend_from_slice(ranges.as_bytes());
            b
        };
        let ok = forge(Kind::DigestRequest, 1, &req(&[range(1, 2)]));
        assert!(s.open(&ok).is_ok());
        let none = forge(Kind::DigestRequest, 0, &req(&[]));
        assert_eq!(s.open(&none).unwrap_err(), Reject::Malformed);
        let upside = forge(Kind::DigestRequest, 2, &req(&[range(1, 2), range(5, 4)]));
        assert_eq!(s.open(&upside).unwrap_err(), Reject::Malformed);
        let short = forge(Kind::DigestRequest, 2, &req(&[range(1, 2)]));
        assert_eq!(s.open(&short).unwrap_err(), Reject::Length);
        let ragged = forge(
            Kind::DigestRequest,
            1,
            &req(&[range(1, 2)])[..TARGET_LEN + 9],
        );
        assert_eq!(s.open(&ragged).unwrap_err(), Reject::Length);

        let reply = |lo: u64, hi: u64, n: usize| {
            let mut b = range(lo, hi).as_bytes().to_vec();
            b.extend_from_slice(&vec![0u8; n * DIGEST_LEN]);
            b
        };
        assert!(
            s.open(&forge(Kind::DigestReply, 2, &reply(0, 9, 2)))
                .is_ok()
        );
        let one = forge(Kind::DigestReply, 1, &reply(0, 9, 1));
        assert_eq!(s.open(&one).unwrap_err(), Reject::Malformed);
        let wide = MAX_FANOUT + 1;
        let many = forge(Kind::DigestReply, wide as u16, &reply(0, 9, wide));
        assert_eq!(s.open(&many).unwrap_err(), Reject::Malformed);
        let upside = forge(Kind::DigestReply, 2, &reply(9, 0, 2));
        assert_eq!(s.open(&upside).unwrap_err(), Reject::Malformed);
        let short = forge(Kind::DigestReply, 3, &reply(0, 9, 2));
        assert_eq!(s.open(&short).unwrap_err(), Reject::Length);
        let ragged = forge(Kind::DigestReply, 2, &reply(0, 9, 2)[..RANGE_LEN + 5]);
        assert_eq!(s.open(&ragged).unwrap_err(), Reject::Length);
    }

    #[test]
    fn wrong_key_or_cluster_is_rejected() {
        let (s, e) = enc();
        let d = e.bare(&s, Kind::Heartbeat, 0, &st(1, 0, 0));
        assert!(s.open(&d).is_ok());
        assert_eq!(
            Seal::new("test", b"other").open(&d).unwrap_err(),
            Reject::Mac
        );
        assert_eq!(
            Seal::new("other", b"key").open(&d).unwrap_err(),
            Reject::Mac
        );
    }

    /// A parity datagram round-trips within the budget, its widest bitmap too; one whose block,
    /// bitmap, index or payload cannot be is refused, and so is the retired 64-member kind; the
    /// coded form of a delta or names datagram reads back, zero padding and all, and garbage in
    /// it is refused.
    #[test]
    fn parity_and_coded_forms() {
        let (s, e) = enc();
        let payload = vec![7u8; e.parity_room()];
        let wide: Members = 1 << (BLOCK - 1) | 1 << 64 | 0b1011;
        let p = e
            .parity(&s, FLAG_END, &st(90, 1, 2), (65, wide), 5, &payload)
            .unwrap();
        assert!(p.len() <= 1400, "{} bytes", p.len());
        let d = s.open(&p).unwrap();
        assert_eq!(d.kind, Kind::Parity);
        assert_eq!(d.header.flags.get(), FLAG_END | FLAG_REPLY);
        match d.body {
            Body::Parity {
                lo,
                members,
                index,
                payload: got,
            } => assert_eq!((lo, members, index, got), (65, wide, 5, &payload[..])),
            other => panic!("{other:?}"),
        }
        // A block that began too long ago for the head, or after the header's number: none.
        assert!(
            e.parity(&s, 0, &st(70_000, 1, 2), (65, 1), 0, &payload)
                .is_none()
        );
        assert!(
            e.parity(&s, 0, &st(64, 1, 2), (65, 1), 0, &payload)
                .is_none()
        );
        let stray: Members = 1 << BLOCK;
        assert!(
            e.parity(&s, 0, &st(90, 1, 2), (65, stray | 1), 0, &payload)
                .is_none()
        );
        let forge =
            |kind: u8, seq: u64, count: u16, back: u16, members: Members, payload: &[u8]| {
                let mut b = e.bare(&s, Kind::Heartbeat, 0, &Stamp { seq, ..st(5, 1, 2) });
                b.truncate(HEADER_LEN);
                b[3] = kind;
                b[6..8].copy_from_slice(&count.to_be_bytes());
                b.extend_from_slice(&back.to_be_bytes());
                b.extend_from_slice(&members.to_be_bytes()[16 - MEMBER_BYTES..]);
                b.extend_from_slice(payload);
                s.seal(&mut b);
                b
            };
        let parity = |seq, count, back, members, payload: &[u8]| {
            forge(Kind::Parity as u8, seq, count, back, members, payload)
        };
        assert!(s.open(&parity(5, 0, 4, 1, &[0; CODED_HEAD])).is_ok());
        for bad in [
            parity(5, 0, 5, 1, &[0; 9]),
            parity(5, 0, 6, 1, &[0; 9]),
            parity(u64::MAX, 0, 0, 1, &[0; 9]),
            parity(u64::MAX, 0, BLOCK as u16 - 2, 1, &[0; 9]),
            parity(5, 0, 0, 0, &[0; 9]),
            parity(5, crate::cluster::erasure::PARITY as u16, 0, 1, &[0; 9]),
            parity(5, 0, 0, 1, &[0; CODED_HEAD - 1]),
        ] {
            assert_eq!(s.open(&bad).unwrap_err(), Reject::Malformed);
        }
        assert!(
            s.open(&parity(u64::MAX, 0, BLOCK as u16 - 1, 1, &[0; 9]))
                .is_ok()
        );
        assert_eq!(
            s.open(&parity(5, 0, 0, 1, &[])[..HEADER_LEN + 8])
                .unwrap_err(),
            Reject::Length
        );
        assert_eq!(
            s.open(&forge(13, 5, 0, 0, 1, &[0; 9])).unwrap_err(),
            Reject::Kind
        );

        let delta = e.entries(&s, Kind::Delta, 0, &st(3, 0, 0), None, &[(1, 2), (3, 4)]);
        let mut c = coded(&delta).unwrap();
        c.extend_from_slice(&[0; 40]);
        match uncode(&c).unwrap() {
            Body::Entries(x) => assert_eq!(
                x.iter()
                    .map(|x| (x.hash.get(), x.count.get()))
                    .collect::<Vec<_>>(),
                vec![(1, 2), (3, 4)]
            ),
            other => panic!("{other:?}"),
        }
        let names = e.names(&s, 0, &mut || 4, &st(4, 0, 0), [(9, "room:9"), (8, "x")]);
        match uncode(&coded(&names[0]).unwrap()).unwrap() {
            Body::Names(n) => assert_eq!(n.collect::<Vec<_>>(), vec![(9, "room:9"), (8, "x")]),
            other => panic!("{other:?}"),
        }
        assert!(coded(&e.bare(&s, Kind::Heartbeat, 0, &st(1, 0, 0))).is_none());
        let mut dirty = coded(&delta).unwrap();
        dirty.push(1);
        assert_eq!(uncode(&dirty).unwrap_err(), Reject::Malformed);
        let short = coded(&delta).unwrap();
        assert_eq!(
            uncode(&short[..short.len() - 1]).unwrap_err(),
            Reject::Length
        );
        let mut kind = coded(&delta).unwrap();
        kind[0] = Kind::Refresh as u8;
        assert_eq!(uncode(&kind).unwrap_err(), Reject::Kind);
    }

    /// A datagram checked once for many receivers (`Seal::check`, the simulator's) has its
    /// names' UTF-8 checked once: a receiver skips it only for bytes that opened whole under its
    /// own key, and a bad name is still refused by every receiver.
    #[test]
    fn names_checked_once_are_refused_or_read_as_ever() {
        let (s, e) = enc();
        let good = e.names(&s, 0, &mut || 4, &st(4, 0, 0), [(9, "room:9"), (8, "x")]);
        let good: std::sync::Arc<[u8]> = good[0].clone().into();
        let mut bad = good.to_vec();
        let at = bad.windows(6).position(|w| w == b"room:9").unwrap();
        bad[at] = 0xff;
        bad.truncate(bad.len() - TAG_LEN);
        s.seal(&mut bad);
        let bad: std::sync::Arc<[u8]> = bad.into();

        let checked = s.check(&good).unwrap();
        assert!(checked.opens);
        match s.open_with(&good, Some(&checked)).unwrap().body {
            Body::Names(n) => assert_eq!(n.collect::<Vec<_>>(), vec![(9, "room:9"), (8, "x")]),
            other => panic!("{other:?}"),
        }
        let checked = s.check(&bad).unwrap();
        assert!(!checked.opens);
        assert_eq!(
            s.open_with(&bad, Some(&checked)).unwrap_err(),
            Reject::Malformed
        );
        // Another key's check (or other bytes') vouches for nothing.
        let other = Seal::new("test", b"another key");
        assert_eq!(
            other.open_with(&bad, Some(&checked)).unwrap_err(),
            Reject::Mac
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever a decode produced, reading it back never panics.
        #[test]
        fn uncode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = uncode(&bytes);
        }

        #[test]
        fn round_trip(entries in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..=108),
                      seq in any::<u64>(), digest in any::<u64>(), lo in any::<u64>()) {
            let (s, e) = enc();
            let d = e.entries(&s, Kind::Delta, FLAG_END, &st(seq, digest, 9), None, &entries);
            let g = s.open(&d).unwrap();
            prop_assert_eq!(g.kind, Kind::Delta);
            prop_assert_eq!(g.header.seq.get(), seq);
            prop_assert_eq!(g.header.digest.get(), digest);
            prop_assert_eq!(g.header.flags.get(), FLAG_END);
            prop_assert_eq!(g.header.time.get(), st(seq, 0, 0).time);
            let Body::Entries(got) = g.body else { panic!("not entries") };
            let got: Vec<_> = got.iter().map(|e| (e.hash.get(), e.count.get())).collect();
            prop_assert_eq!(&got, &entries);

            let r = e.entries(&s, Kind::Refresh, 0, &st(seq, digest, 9), Some((lo, u64::MAX)), &entries[..entries.len().min(100)]);
            let Body::Range(l, h, got) = s.open(&r).unwrap().body else { panic!("not a range") };
            prop_assert_eq!((l, h, got.len()), (lo, u64::MAX, entries.len().min(100)));
        }

        #[test]
        fn names_round_trip(names in proptest::collection::vec((any::<u64>(), "[a-z:0-9é😀]{0,40}"), 0..200)) {
            let (s, e) = enc();
            let mut seq = 0;
            let dgs = e.names(&s, 0, &mut || { seq += 1; seq }, &st(0, 0, 0), names.iter().map(|(h, n)| (*h, n.as_str())));
            let mut got = Vec::new();
            for d in &dgs {
                prop_assert!(d.len() <= 1400);
                let Body::Names(n) = s.open(d).unwrap().body else { panic!("not names") };
                // The unchecked bytes are the names, entry for entry.
                prop_assert!(n.raw().eq(n.clone().map(|(h, n)| (h, n.as_bytes()))));
                got.extend(n.map(|(h, n)| (h, n.to_string())));
            }
            prop_assert_eq!(got, names);
        }

        #[test]
        fn nacks_round_trip(gaps in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..200), seq in any::<u64>()) {
            let (s, e) = enc();
            let list: Vec<Gap> = gaps.iter().map(|&(n, a, b)| Gap::new(n, a.min(b), a.max(b))).collect();
            let dgs = e.nacks(&s, 0, &st(seq, 3, 4), &list);
            prop_assert_eq!(dgs.len(), list.len().div_ceil(55));
            let mut got = Vec::new();
            for d in &dgs {
                prop_assert!(d.len() <= 1400);
                let g = s.open(d).unwrap();
                prop_assert_eq!((g.kind, g.header.seq.get(), g.header.flags.get()), (Kind::Nack, seq, FLAG_REPLY));
                let Body::Gaps(x) = g.body else { panic!("not gaps") };
                got.extend_from_slice(x);
            }
            prop_assert_eq!(got, list);
        }

        #[test]
        fn digest_requests_round_trip(ranges in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..200),
                                      state in any::<bool>(), seq in any::<u64>()) {
            let (s, e) = enc();
            let list: Vec<(u64, u64)> = ranges.iter().map(|&(a, b)| (a.min(b), a.max(b))).collect();
            let flags = if state { FLAG_STATE } else { 0 };
            let mut n = 40;
            let dgs = e.digest_requests(&s, flags, &st(seq, 3, 4), (11, 12), &mut || { n += 1; n }, &list);
            prop_assert_eq!(dgs.len(), list.len().div_ceil(e.ranges_per_request()));
            let mut got = Vec::new();
            for (i, d) in dgs.iter().enumerate() {
                prop_assert!(d.len() <= 1400);
                let g = s.open(d).unwrap();
                prop_assert_eq!((g.kind, g.header.seq.get(), g.header.flags.get()), (Kind::DigestRequest, seq, flags));
                let Body::Ranges { node, incarnation, request, ranges } = g.body else { panic!("not ranges") };
                prop_assert_eq!((node, incarnation, request), (11, 12, 41 + i as u64));
                got.extend(ranges.iter().map(|r| (r.lo.get(), r.hi.get())));
            }
            prop_assert_eq!(got, list);
        }

        #[test]
        fn digest_replies_round_trip(children in proptest::collection::vec((any::<u64>(), any::<u32>()), 2..=MAX_FANOUT),
                                     (a, b) in (any::<u64>(), any::<u64>()), seq in any::<u64>(), budget in MIN_BUDGET..2000) {
            let (s, _) = enc();
            let (lo, hi) = (a.min(b), a.max(b));
            let e = Encoder::new(s.cluster(), 7, 3, 100, budget);
            let fanout = e.fanout();
            prop_assert!(fanout == 0 || (2..=MAX_FANOUT).contains(&fanout));
            if fanout < children.len() {
                // The encoder sends as many as its budget has room for.
                return Ok(());
            }
            let d = e.digest_reply(&s, FLAG_END, &st(seq, 5, 6), (lo, hi), &children);
            prop_assert!(d.len() <= budget);
            let g = s.open(&d).unwrap();
            prop_assert_eq!((g.kind, g.header.flags.get()), (Kind::DigestReply, FLAG_END | FLAG_REPLY));
            let Body::Digests(l, h, got) = g.body else { panic!("not digests") };
            prop_assert_eq!((l, h), (lo, hi));
            let got: Vec<(u64, u32)> = got.iter().map(|c| (c.digest.get(), c.topics.get())).collect();
            prop_assert_eq!(got, children);
        }

        /// The children of a range are disjoint, in order, and cover it exactly; none is empty
        /// unless the range is narrower than their number.
        #[test]
        fn children_cover_their_range(a in any::<u64>(), b in any::<u64>(), n in 1..=MAX_FANOUT, narrow in any::<bool>()) {
            let lo = a.min(b);
            let hi = if narrow { lo.saturating_add(b % 40) } else { a.max(b) };
            let kids: Vec<(u64, u64)> = (0..n).filter_map(|i| child_range(lo, hi, n, i)).collect();
            let width = u128::from(hi - lo) + 1;
            prop_assert_eq!(kids.len() as u128, width.min(n as u128));
            prop_assert_eq!(kids.first().map(|k| k.0), Some(lo));
            prop_assert_eq!(kids.last().map(|k| k.1), Some(hi));
            for w in kids.windows(2) {
                prop_assert!(w[0].0 <= w[0].1);
                prop_assert_eq!(w[0].1 + 1, w[1].0);
            }
            prop_assert_eq!(child_range(lo, hi, n, n), None);
        }

        #[test]
        fn every_truncation_and_bit_flip_is_rejected(entries in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..8), kind in 0..7u8) {
            let (s, e) = enc();
            let d = match kind {
                0 => e.entries(&s, Kind::Delta, 0, &st(5, 1, 2), None, &entries),
                1 => e.entries(&s, Kind::Refresh, 0, &st(5, 1, 2), Some((3, 9)), &entries),
                2 => e.request(&s, 0, &st(5, 1, 2), 11, 12, 13),
                3 => {
                    let g: Vec<Gap> = entries.iter().map(|&(h, c)| Gap::new(h, u64::from(c), u64::from(c) + 1)).collect();
                    e.nacks(&s, 0, &st(5, 1, 2), &g).pop().unwrap_or_else(|| e.bare(&s, Kind::Heartbeat, 0, &st(5, 1, 2)))
                }
                4 => {
                    let r: Vec<(u64, u64)> = entries.iter().map(|&(h, c)| (h.min(u64::from(c)), h.max(u64::from(c)))).collect();
                    e.digest_requests(&s, FLAG_STATE, &st(5, 1, 2), (11, 12), &mut || 13, &r).pop().unwrap_or_else(|| e.bare(&s, Kind::Heartbeat, 0, &st(5, 1, 2)))
                }
                5 => {
                    let mut c: Vec<(u64, u32)> = entries.clone();
                    c.resize(c.len().max(2), (0, 0));
                    e.digest_reply(&s, 0, &st(5, 1, 2), (3, 9), &c)
                }
                _ => e.names(&s, 0, &mut || 5, &st(5, 1, 2), entries.iter().map(|(h, _)| (*h, "room:1"))).pop().unwrap_or_else(|| e.bare(&s, Kind::Goodbye, 0, &st(5, 1, 2))),
            };
            prop_assert!(s.open(&d).is_ok());
            for len in 0..d.len() {
                prop_assert!(s.open(&d[..len]).is_err(), "truncated to {} accepted", len);
            }
            for bit in 0..d.len() * 8 {
                let mut x = d.clone();
                x[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(s.open(&x).is_err(), "bit {} flipped accepted", bit);
            }
        }
    }
}
