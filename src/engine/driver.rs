//! The engine thread: the only user of mio. It waits for the next tick, a `sync` or a datagram,
//! feeds received datagrams to the cluster protocol, runs each tick's steps ([`Driver::tick`]) and
//! sends what the protocol has to send. The sockets themselves are in `net.rs`, the application's
//! channel in `channel.rs`; the driver sees either as a `Link` (`link.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering as StdOrdering;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use crate::cluster::protocol::{Event, Outcome, Protocol};
use crate::core::reducer::{Reducer, TickReport};
use crate::core::shard::ShardPool;
use crate::core::sync::Ordering;
use crate::core::topic::Topics;
use crate::engine::link::Link;
use crate::engine::members::Discovering;
use crate::engine::{Cmd, Engine, Inner};
use crate::error::Error;

mod batch;
use batch::Batch;

/// Work a tick always does, however long it takes: changes handed to the cluster protocol, and
/// names learned from peers interned. Past it, a tick stops at its work budget (a quarter of the
/// tick for each) and the rest waits for the next tick, so that a burst of a million new topics
/// never makes one tick take seconds (and peers never take a busy node for a dead one).
const MIN_WORK_PER_TICK: usize = 4096;

const WAKER: mio::Token = mio::Token(0);
const GROUP: mio::Token = mio::Token(1);
const SOCK: mio::Token = mio::Token(2);

/// What the engine thread needs of the builder's options.
pub(crate) struct Settings {
    pub(crate) tick: Duration,
    /// When the first tick is due, from the start (jittered by the builder).
    pub(crate) first_tick: Duration,
    pub(crate) retire_after: Duration,
    pub(crate) max_topics: usize,
    /// Pin the engine thread to the last CPU (the builder refuses it without `affinity`).
    #[cfg_attr(not(feature = "affinity"), allow(dead_code))]
    pub(crate) pin: bool,
}

/// Registers the cluster's sockets with a new poll and starts the engine thread.
pub(crate) fn spawn(
    inner: Arc<Inner>,
    settings: Settings,
    cluster: Option<(Protocol, Link)>,
) -> Result<Engine, Error> {
    let poll = mio::Poll::new().map_err(Error::Spawn)?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).map_err(Error::Spawn)?);
    let mut cluster =
        cluster.map(|(proto, net)| ClusterState::new(proto, net, settings.max_topics));
    if let Some(c) = cluster.as_mut() {
        c.net
            .register(poll.registry(), GROUP, SOCK, &waker)
            .map_err(Error::Spawn)?;
        let (names, interval) = c.net.dns();
        if !names.is_empty() {
            let w = waker.clone();
            c.disc.resolver = Some(crate::engine::dns::spawn(
                names.to_vec(),
                interval,
                Arc::new(move || {
                    let _ = w.wake();
                }),
            )?);
        }
    }
    let (tx, rx) = mpsc::channel();
    let thread = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("headcount-engine".into())
            .spawn(move || run(inner, settings, rx, poll, cluster))
            .map_err(Error::Spawn)?
    };
    Ok(Engine::started(inner, tx, waker, thread))
}

/// The engine thread's loop: until every sender of commands is gone (then a goodbye to the
/// cluster).
fn run(
    inner: Arc<Inner>,
    settings: Settings,
    rx: mpsc::Receiver<Cmd>,
    mut poll: mio::Poll,
    cluster: Option<ClusterState>,
) {
    if settings.pin {
        super::cpu::pin_engine();
    }
    let tick = settings.tick;
    let mut driver = Driver {
        reducer: Reducer::new(&inner.pool.hot, settings.retire_after),
        dirty: Vec::new(),
        early: Vec::new(),
        membership: 0,
        cluster,
        inner,
    };
    let mut events = mio::Events::with_capacity(16);
    // Datagrams may be waiting that the last receive left (it stops at a deadline).
    let mut more = false;
    let mut next = Instant::now() + settings.first_tick;
    loop {
        let now = Instant::now();
        let mut deadline = next;
        if let Some(w) = driver.cluster.as_ref().and_then(|c| c.proto.poll_timeout()) {
            deadline = deadline.min(w);
        }
        let wait = if more {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(now)
        };
        let _ = poll.poll(&mut events, Some(wait));
        let mut syncs = Vec::new();
        let mut stop = false;
        loop {
            match rx.try_recv() {
                Ok(Cmd::Sync(done)) => syncs.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            }
        }
        // Receiving goes on until the next tick is due, for at most half a tick, and for at
        // least an eighth of one even when a tick is overdue (a node busy sending must still
        // hear its peers: their heartbeats wait behind its own looped-back datagrams); and no
        // longer than the protocol's next timeout allows, give or take a 64th of a tick (a
        // backlog tick's paced datagrams leave on time, not in a clump after a long receive).
        let start = Instant::now();
        let mut until = next.max(start + tick / 8).min(start + tick / 2);
        if let Some(w) = driver.cluster.as_ref().and_then(|c| c.proto.poll_timeout()) {
            until = until.min(w.max(start + tick / 64));
        }
        more = !driver.receive(until);
        let now = Instant::now();
        if syncs.is_empty() && now < next {
            driver.publish_received(now);
        } else {
            driver.tick(now, !syncs.is_empty());
            if now >= next {
                next += tick;
                if next < now {
                    next = now + tick;
                }
            }
        }
        if let Some(c) = driver.cluster.as_mut() {
            c.proto.handle_timeout(now);
        }
        driver.flush();
        for d in syncs {
            let _ = d.send(());
        }
        if stop {
            if let Some(c) = driver.cluster.as_mut() {
                c.proto.goodbye(Instant::now());
            }
            driver.flush();
            break;
        }
    }
    driver.inner.stats.stopped.store(true, StdOrdering::Release);
    driver.inner.feed.close();
}

/// The engine thread's state.
struct Driver {
    inner: Arc<Inner>,
    reducer: Reducer,
    cluster: Option<ClusterState>,
    /// Scratch: ids whose cluster count may have changed this tick.
    dirty: Vec<u32>,
    /// Feed changes published between ticks (peers' counts, as their datagrams arrive): they go
    /// out with the next tick's batch.
    early: Vec<(Arc<str>, u64)>,
    /// The protocol's membership number when the node list was last published.
    membership: u64,
}

impl Driver {
    /// Handles the datagrams waiting, until `deadline` at most; false if some may be left.
    fn receive(&mut self, deadline: Instant) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return true;
        };
        let proto = &mut c.proto;
        let disc = &mut c.disc;
        let mut now = Instant::now();
        let mut n = 0u32;
        c.net.recv_all(deadline, |from, bytes| {
            n += 1;
            if n.is_multiple_of(64) {
                now = Instant::now();
            }
            match bytes {
                Some(bytes) => {
                    if proto.handle_datagram(now, from, bytes) == Outcome::Applied {
                        disc.note_heard(from);
                    }
                }
                None => {
                    proto.peer_gone(now, from);
                }
            }
        })
    }

    /// Between ticks: the counts peers' datagrams changed go into the view at once, so that a
    /// remote change shows one network hop after the sender's tick rather than at this node's
    /// next tick (which made a change take up to two ticks to show everywhere). The change feed
    /// gets them with the next tick's batch.
    fn publish_received(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let inner = self.inner.clone();
        self.dirty.clear();
        c.poll_events(&inner.pool, &mut self.dirty, now, inner.tick / 8);
        // A peer came or went: the node list first, so that no reader sees a peer's counts
        // before the peer.
        if c.proto.membership() != self.membership {
            self.publish_cluster_view(now);
        }
        if self.dirty.is_empty() {
            return;
        }
        let mut batch = Batch::new(&inner.feed);
        self.publish_dirty(now, &mut batch);
        self.publish_totals();
        self.early.append(&mut batch.changes);
    }

    fn flush(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            while let Some(t) = c.proto.poll_transmit() {
                c.net.send(t);
            }
            c.net.flushed();
        }
    }

    /// One tick; `full`: an explicit `sync` (re-read everything that may have changed).
    fn tick(&mut self, now: Instant, full: bool) {
        let start = Instant::now();
        let inner = self.inner.clone();
        let pool = &inner.pool;
        // The reducer: this node's counts that changed, and the ids interned since last tick.
        let mut rep: TickReport = self.reducer.sum(&pool.hot, &pool.topics, now, full);
        self.list_new_ids(&pool.topics);
        let mut batch = Batch::new(&inner.feed);
        batch.take_early(&mut self.early);
        let work_budget = inner.tick / 4;
        match self.cluster.as_mut() {
            Some(c) => {
                c.queue_changes(&self.reducer, &inner, &mut self.dirty);
                c.hand_off(&self.reducer, &pool.topics, start, work_budget);
                c.proto.handle_tick(now);
                c.poll_events(pool, &mut self.dirty, start, work_budget * 2);
                if let Some(m) = c.net.members_mut() {
                    c.disc.step(m, now);
                }
            }
            None => self.publish_local(now, &mut batch),
        }
        self.publish_dirty(now, &mut batch);
        self.publish_totals();
        batch.send(&inner.feed, self.reducer.tick_number());
        self.retire(now, &mut rep);
        self.publish_cluster_view(now);
        inner.stats.record_tick(
            start.elapsed(),
            &rep,
            self.reducer.rescans(),
            self.reducer.watching(),
        );
    }

    /// Ids interned since last tick: their cluster count may be their peers' (and is at least
    /// worth publishing), and in a cluster their wire hashes go into the index.
    fn list_new_ids(&mut self, topics: &Topics) {
        self.dirty.clear();
        for &id in &self.reducer.new_ids {
            if let Some(c) = self.cluster.as_mut()
                && let Some(n) = topics.name(id)
            {
                c.index.insert(id, n.hash);
            }
            self.dirty.push(id);
        }
    }

    /// Without peers the cluster count is the local count: one pass over the changes.
    fn publish_local(&mut self, now: Instant, batch: &mut Batch) {
        let inner = &*self.inner;
        for k in 0..self.reducer.changes.len() {
            let ch = self.reducer.changes[k];
            inner.view.local(ch.id).store(ch.count, Ordering::Relaxed);
            batch.publish(inner, ch.id, ch.count);
            self.reducer.set_cluster(ch.id, ch.count, now);
        }
    }

    /// Publishes the cluster count of every id listed this tick (usually few ids; an id listed
    /// twice is harmless: this is idempotent), and tells the reducer for retirement.
    fn publish_dirty(&mut self, now: Instant, batch: &mut Batch) {
        let inner = &*self.inner;
        for i in 0..self.dirty.len() {
            let id = self.dirty[i];
            let remote = self.cluster.as_ref().map_or(0, |c| c.remote(id));
            let count = self.reducer.local(id) + remote;
            batch.publish(inner, id, count);
            self.reducer.set_cluster(id, count, now);
        }
    }

    fn publish_totals(&self) {
        let remote_total = self.cluster.as_ref().map_or(0, |c| c.proto.remote_total());
        let view = &self.inner.view;
        view.total_local
            .store(self.reducer.total, Ordering::Relaxed);
        view.total_cluster
            .store(self.reducer.total + remote_total, Ordering::Relaxed);
    }

    /// Retirement (see `core/reducer.rs`), then the freed ids leave the index and the view.
    fn retire(&mut self, now: Instant, rep: &mut TickReport) {
        let inner = &*self.inner;
        let pool = &inner.pool;
        let cluster = &self.cluster;
        let remote = |id: u32| cluster.as_ref().map_or(0, |c| c.remote(id));
        self.reducer
            .retire(&pool.hot, &pool.topics, now, remote, rep);
        for &id in &self.reducer.freed {
            if let Some(c) = self.cluster.as_mut() {
                c.forget(id);
            }
            inner.view.set(id, 0, 0);
        }
    }

    fn publish_cluster_view(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            self.membership = c.proto.membership();
            let inner = &self.inner;
            let mut v = inner.cluster_view.lock().unwrap_or_else(|e| e.into_inner());
            v.nodes = c.proto.nodes(now);
            v.stats = c.proto.stats();
            v.handoff = c.handoff.len() as u64;
            for n in &mut v.nodes {
                n.found = c.disc.found(n.node, c.net.found(n.addr));
            }
            c.disc.forget_found(&v.nodes);
            (v.send_errors, v.recv_errors) = c.net.errors();
            (v.transport_dropped_out, v.transport_dropped_in) = c.net.dropped();
            v.discovery = c.disc.stats.clone();
            v.members = c.net.members().map_or((0, 0, 0), |m| m.counts());
        }
    }
}

/// The cluster side of the engine thread.
struct ClusterState {
    proto: Protocol,
    net: Link,
    disc: Discovering,
    index: HashIndex,
    /// Ids whose local count changed and was not handed to the protocol yet, oldest first
    /// (each once: `queued`).
    handoff: VecDeque<u32>,
    queued: Vec<bool>,
}

impl ClusterState {
    fn new(proto: Protocol, net: Link, max_topics: usize) -> ClusterState {
        ClusterState {
            proto,
            net,
            disc: Discovering::default(),
            index: HashIndex::new(max_topics),
            handoff: VecDeque::new(),
            queued: vec![false; max_topics],
        }
    }

    /// The peers' count of `id`.
    fn remote(&self, id: u32) -> u64 {
        self.proto.remote(self.index.hash(id))
    }

    /// Publishes this tick's local changes in the view and queues them for the protocol.
    fn queue_changes(&mut self, reducer: &Reducer, inner: &Inner, dirty: &mut Vec<u32>) {
        for ch in &reducer.changes {
            inner.view.local(ch.id).store(ch.count, Ordering::Relaxed);
            if !std::mem::replace(&mut self.queued[ch.id as usize], true) {
                self.handoff.push_back(ch.id);
            }
            dirty.push(ch.id);
        }
    }

    /// Hands the queued local counts to the protocol within the tick's work `budget` (a burst of
    /// a million new topics takes a few ticks, and every tick stays short). Each id's hash and
    /// count are read now, so a queued id always hands over its latest count.
    fn hand_off(&mut self, reducer: &Reducer, topics: &Topics, start: Instant, budget: Duration) {
        let mut n = 0usize;
        while let Some(&id) = self.handoff.front() {
            if n.is_multiple_of(256) && n >= MIN_WORK_PER_TICK && start.elapsed() > budget {
                break;
            }
            n += 1;
            self.handoff.pop_front();
            self.queued[id as usize] = false;
            let hash = self.index.hash_or_learn(id, topics);
            if hash == 0 {
                continue; // freed since it was queued, and not reused yet
            }
            let count = reducer.local(id).min(u64::from(u32::MAX)) as u32;
            // The protocol keeps names it was told: look one up only for a topic it lacks.
            let name = match (count, self.proto.name(hash)) {
                (0, _) | (_, Some(_)) => None,
                _ => topics.name(id),
            };
            self.proto
                .set_local(hash, count, name.as_ref().map(|n| &n.name));
        }
    }

    /// Takes the protocol's events: marks the ids whose peers' sums changed (the protocol
    /// reports all of them first), then interns the names of topics only peers have (within
    /// `budget`; the rest are polled at the next tick) so they can be counted and listed here.
    fn poll_events(
        &mut self,
        pool: &ShardPool,
        dirty: &mut Vec<u32>,
        start: Instant,
        budget: Duration,
    ) {
        let mut n = 0usize;
        loop {
            if n.is_multiple_of(256) && n >= MIN_WORK_PER_TICK && start.elapsed() > budget {
                break;
            }
            let (h, name) = match self.proto.poll_event() {
                Some(Event::RemoteChanged { hash, .. }) => {
                    if let Some(id) = self.index.id(hash) {
                        dirty.push(id);
                    }
                    continue;
                }
                Some(Event::NameLearned { hash, name }) => (hash, name),
                Some(Event::MemberLearned { addr, .. }) => {
                    if self.disc.gossiped.len() < 4096 {
                        self.disc.gossiped.push(addr);
                    }
                    continue;
                }
                None => break,
            };
            n += 1;
            if self.index.contains(h) {
                continue;
            }
            if let Ok(t) = pool.topics.intern(&name, &pool.hot)
                && pool.topics.name(t.id()).is_some_and(|n| n.hash == h)
            {
                self.index.insert(t.id(), h);
                dirty.push(t.id());
            }
        }
    }

    /// Forgets a freed id. A count still waiting to be handed over belongs to the old topic:
    /// hand it over now (it is zero: only topics at zero are freed), before the id is reused.
    fn forget(&mut self, id: u32) {
        let h = self.index.remove(id);
        if self.queued[id as usize] && h != 0 {
            self.proto.set_local(h, 0, None);
        }
    }
}

/// The engine thread's one index between topic ids and wire hashes, in both directions, for
/// every id in use. The hashes themselves are the topic table's (computed once, at interning);
/// both directions change together, here only.
struct HashIndex {
    /// Per id: its wire hash (0 when unknown or freed).
    hash: Vec<u64>,
    /// Wire hash → id. (Keys are keyed SipHash outputs already: a fast hasher is enough.)
    id: HashMap<u64, u32, foldhash::fast::FixedState>,
}

impl HashIndex {
    fn new(capacity: usize) -> HashIndex {
        HashIndex {
            hash: vec![0; capacity],
            id: HashMap::default(),
        }
    }

    /// `id`'s wire hash, 0 if unknown.
    fn hash(&self, id: u32) -> u64 {
        self.hash[id as usize]
    }

    /// The id with wire hash `hash`.
    fn id(&self, hash: u64) -> Option<u32> {
        self.id.get(&hash).copied()
    }

    fn contains(&self, hash: u64) -> bool {
        self.id.contains_key(&hash)
    }

    fn insert(&mut self, id: u32, hash: u64) {
        self.hash[id as usize] = hash;
        self.id.insert(hash, id);
    }

    /// `id`'s wire hash, learned from the topic table if unknown (0 if `id` is not interned).
    ///
    /// An id interned after a tick listed the new ids, and joined before the rings were
    /// drained, changes before it is listed: its hash is learned here (the next tick lists it).
    /// Without this, its count went out under hash 0 and stayed on peers' totals (6c250da).
    fn hash_or_learn(&mut self, id: u32, topics: &Topics) -> u64 {
        let hash = self.hash(id);
        if hash != 0 {
            return hash;
        }
        match topics.name(id) {
            Some(n) => {
                self.insert(id, n.hash);
                n.hash
            }
            None => 0,
        }
    }

    /// Forgets `id` (freed); returns its hash (0 if it had none).
    fn remove(&mut self, id: u32) -> u64 {
        let h = std::mem::take(&mut self.hash[id as usize]);
        self.id.remove(&h);
        h
    }
}
