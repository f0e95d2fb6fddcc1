//! What a node reports to its caller ([`Event`]): changed peer sums, names learned from peers,
//! members heard of; polled one at a time ([`Protocol::poll_event`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Protocol;

/// What [`Protocol::poll_event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The sum of every live peer's count of a topic changed (reported once per topic however
    /// often it changed since the last report, with the sum at the time of the report).
    RemoteChanged {
        /// The topic's wire hash.
        hash: u64,
        /// The sum now (what [`Protocol::remote`] returns).
        sum: u64,
    },
    /// A peer told this node the name of a topic it counts.
    NameLearned {
        /// The topic's wire hash.
        hash: u64,
        /// Its name.
        name: Arc<str>,
    },
    /// A peer hears a node at an address this node does not hear it at (membership gossip,
    /// [`Config::gossip_members`](super::Config::gossip_members)): a transport with a peer
    /// list may add it.
    MemberLearned {
        /// The node's id.
        node: u64,
        /// Where the peer hears it.
        addr: SocketAddr,
    },
}

/// An empty queue's memory is given back past this many entries' room (a burst of new
/// names leaves a queue sized for all of them, 1 MB at 100k topics, for as long as the node
/// runs).
pub(super) const KEEP_QUEUE: usize = 4096;

/// Gives back the memory of `q`, once polled empty, if it holds room for more than
/// [`KEEP_QUEUE`] entries.
fn release_drained<T>(q: &mut VecDeque<T>) {
    if q.is_empty() && q.capacity() > KEEP_QUEUE {
        *q = VecDeque::new();
    }
}

impl Protocol {
    /// The next event: first every topic whose peer sum changed since the last report, then the
    /// names learned from peers, oldest first. A caller with a budget for names may stop
    /// polling once it is spent: the rest wait, in order, for the next call (and the changes
    /// that come meanwhile are reported before them).
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.reporting.is_empty() && self.remote.any_changed() {
            self.reporting = self.remote.take_changed();
            self.reporting.reverse();
        }
        if let Some(hash) = self.reporting.pop() {
            return Some(Event::RemoteChanged {
                hash,
                sum: self.remote(hash),
            });
        }
        while let Some(hash) = self.learned.pop_front() {
            if let Some(name) = self.names.get(hash) {
                return Some(Event::NameLearned {
                    hash,
                    name: name.into(),
                });
            }
        }
        release_drained(&mut self.learned);
        let (node, addr) = self.members_learned.pop_front()?;
        Some(Event::MemberLearned { node, addr })
    }

    /// Drops the names learned and the members heard of that [`Protocol::poll_event`] would
    /// report, without building the events: for a caller that reads names when it needs them
    /// (the simulator, whose nodes would otherwise list every topic they learned the name of).
    /// The sums that changed stay marked (each listed once; taking them clears the marks,
    /// which in the simulator costs more than the list's memory).
    pub(crate) fn skip_learned(&mut self) {
        self.learned.clear();
        release_drained(&mut self.learned);
        self.members_learned.clear();
    }
}
