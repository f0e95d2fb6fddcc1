//! A cluster over a transport the application carries: three engines in one process whose
//! datagrams travel through in-memory queues instead of UDP, each counting the others' users
//! exactly. The same shape carries them over Erlang distribution, a message bus or a mesh.
//!
//! ```sh
//! cargo run --example custom_transport
//! ```
//!
//! - Each engine gets a [`ChannelTransport`] ([`Builder::channel`](headcount::Builder::channel))
//!   and a cluster key (a channel is never taken for loopback).
//! - Node `i` is [`PeerAddr`]`(i)` to every other node: the application's own numbering.
//! - A carrier thread per node takes what its engine sends
//!   ([`ChannelTransport::recv_timeout`]) and delivers it ([`ChannelTransport::deliver`]) to
//!   every other node ([`Destination::All`]) or to the one peer it names
//!   ([`Destination::Peer`]), saying who it came from. It stops when its engine stopped and
//!   everything it queued (its goodbye last) was carried.
//!
//! The main thread joins users on every node, waits until every node counts every node's users,
//! prints the counts, lets some users leave, checks again, and exits non-zero if a count is
//! wrong.

use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use headcount::{ChannelTransport, Destination, Engine, PeerAddr, defaults};

const NODES: usize = 3;
const ROOMS: [&str; 3] = ["lobby", "room:1", "room:2"];

/// Carries node `me`'s datagrams to the others until its engine stopped.
fn carrier(me: usize, all: Vec<ChannelTransport>) -> JoinHandle<u64> {
    thread::spawn(move || {
        let mut carried = 0u64;
        loop {
            let d = match all[me].recv_timeout(Duration::from_millis(100)) {
                Ok(d) => d,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return carried,
            };
            let to: Vec<usize> = match d.to {
                Destination::All => (0..all.len()).filter(|&j| j != me).collect(),
                Destination::Peer(PeerAddr(j)) => vec![j as usize],
            };
            for j in to {
                // A full queue (or a stopped peer) loses the datagram: the protocol repairs
                // it, exactly as it does a datagram lost on the network.
                let _ = all[j].deliver(PeerAddr(me as u64), &d.bytes);
                carried += 1;
            }
        }
    })
}

/// Waits until every engine counts `want[r]` in `ROOMS[r]`; false after 10 s.
fn settle(engines: &[Engine], want: [u64; 3]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if engines.iter().all(|e| {
            ROOMS
                .iter()
                .zip(want)
                .all(|(room, n)| e.count_by_name(room) == n)
        }) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

fn show(engines: &[Engine]) {
    for (i, e) in engines.iter().enumerate() {
        let counts: Vec<String> = ROOMS
            .iter()
            .map(|r| format!("{r}={}", e.count_by_name(r)))
            .collect();
        // Peers are listed at synthetic socket addresses; `from_socket_addr` names them back.
        let mut peers: Vec<PeerAddr> = e
            .nodes()
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| PeerAddr::from_socket_addr(n.addr))
            .collect();
        peers.sort();
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        println!(
            "  node {i}: {} (local {}), total {}; hears {}",
            counts.join(" "),
            e.local_total(),
            e.total(),
            peers.join(", ")
        );
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole example; an error if an engine did not start or a count was not exact.
pub fn run() -> Result<(), String> {
    let transports: Vec<ChannelTransport> = (0..NODES)
        .map(|_| ChannelTransport::new(defaults::CHANNEL_CAPACITY))
        .collect();
    let engines: Vec<Engine> = transports
        .iter()
        .map(|t| {
            Engine::builder()
                .shards(1)
                .tick(Duration::from_millis(50))
                .cluster_name("custom-transport-example")
                .cluster_key("a key every node shares")
                .channel(t)
                .start()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot start an engine: {e}"))?;
    let carriers: Vec<JoinHandle<u64>> =
        (0..NODES).map(|i| carrier(i, transports.clone())).collect();
    println!("{NODES} engines, their datagrams carried by the application's threads");

    // Node i has i + 1 users in each room it is in: node 0 in the lobby only, node 1 in the
    // lobby and room:1, node 2 in all three rooms.
    let mut users = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        for room in &ROOMS[..=i] {
            for _ in 0..=i {
                users.push((i, e.join_by_name(room)));
            }
        }
    }
    println!("joined: lobby 1+2+3, room:1 2+3, room:2 3");
    let ok1 = settle(&engines, [6, 5, 3]);
    show(&engines);
    println!(
        "{}",
        if ok1 {
            "every node counts every node's users"
        } else {
            "NOT EXACT after 10 s"
        }
    );

    // Node 2's users leave.
    users.retain(|(i, _)| *i != 2);
    println!("node 2's users left");
    let ok2 = settle(&engines, [3, 2, 0]);
    show(&engines);
    println!(
        "{}",
        if ok2 {
            "exact again"
        } else {
            "NOT EXACT after 10 s"
        }
    );

    drop(users);
    for e in &engines {
        e.shutdown();
    }
    let carried: u64 = carriers.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    println!("engines stopped; the application carried {carried} datagrams");
    if ok1 && ok2 {
        Ok(())
    } else {
        Err("a count was not exact".into())
    }
}
