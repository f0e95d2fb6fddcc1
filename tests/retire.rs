//! Topic retirement with idle workers. Regression test for "an idle worker blocks topic
//! retirement forever": a serve worker with no connections never touched its shard again, so no
//! retired id was ever reused and the table stayed full with a total of 0. A worker parks its
//! shard ([`headcount::Shard::park`]) before its event loop blocks; then it holds up nothing.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use headcount::{Engine, Error, Topic};

enum Cmd {
    /// Join this name and hold the presence until the worker exits.
    Keep(String),
    /// Join these names and hold the presences.
    Join(Vec<String>),
    /// Join this handle, hold the presence, and say whether it counted.
    JoinTopic(Topic, Sender<bool>),
    /// Join and leave the topic kept first (one more epoch for this shard).
    Step,
    /// Drop every presence held (not the kept ones).
    LeaveAll,
}

/// A worker thread shaped like serve's: an event loop that blocks on a channel (its `epoll_wait`)
/// and parks its shard before every blocking wait.
struct Worker {
    tx: Option<Sender<Cmd>>,
    ack: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(engine: &Engine) -> Worker {
        let (tx, rx) = channel::<Cmd>();
        let (ack_tx, ack) = channel();
        let mut shard = engine.shard().unwrap();
        let thread = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut held = Vec::new();
            loop {
                // About to block: publish that this shard is quiescent.
                shard.park();
                let Ok(cmd) = rx.recv() else { break };
                match cmd {
                    Cmd::Keep(name) => kept.push(shard.join_by_name(&name)),
                    Cmd::Join(names) => held.extend(names.iter().map(|n| shard.join_by_name(n))),
                    Cmd::JoinTopic(t, reply) => {
                        let p = shard.join(t);
                        reply.send(p.is_counted()).unwrap();
                        held.push(p);
                    }
                    Cmd::Step => drop(shard.join(kept[0].topic())),
                    Cmd::LeaveAll => held.clear(),
                }
                ack_tx.send(()).unwrap();
            }
        });
        Worker {
            tx: Some(tx),
            ack,
            thread: Some(thread),
        }
    }

    fn run(&self, cmd: Cmd) {
        self.tx.as_ref().unwrap().send(cmd).unwrap();
        self.ack.recv().unwrap();
    }

    fn join_topic(&self, t: Topic) -> bool {
        let (reply, counted) = channel();
        self.run(Cmd::JoinTopic(t, reply));
        counted.recv().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_parked_idle_worker_does_not_hold_up_retirement() {
    // Ids 1..=31 (0 is the overflow topic): "keepalive", "once" and 29 more fill the table.
    const MAX_TOPICS: usize = 32;
    const NAMES: usize = MAX_TOPICS - 3;
    /// "once" and the names.
    const RETIRED: u64 = NAMES as u64 + 1;
    let engine = Engine::builder()
        .shards(2)
        .tick(Duration::from_secs(3600)) // ticks only on `sync()`
        .retire_after(Duration::from_millis(50))
        .max_topics(MAX_TOPICS)
        .start()
        .unwrap();
    let busy = Worker::start(&engine);
    let idle = Worker::start(&engine);
    busy.run(Cmd::Keep("keepalive".into()));
    // The idle worker joins once, leaves, and from then on sits in its blocking wait.
    idle.run(Cmd::Join(vec!["once".into()]));
    idle.run(Cmd::LeaveAll);

    let names: Vec<String> = (0..NAMES).map(|i| format!("t{i}")).collect();
    busy.run(Cmd::Join(names));
    let old = engine.lookup("t0").unwrap();
    assert!(matches!(
        engine.try_topic("new"),
        Err(Error::TopicsFull { .. })
    ));
    engine.sync();
    assert_eq!(engine.total(), NAMES as u64 + 1);
    busy.run(Cmd::LeaveAll);

    // Every topic but "keepalive" is at zero: retired within a bounded wait. The busy worker
    // keeps moving through epochs, so only the idle one could hold retirement up.
    let start = Instant::now();
    loop {
        engine.sync();
        let s = engine.stats();
        if s.retired >= RETIRED && s.retiring == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not retired after 10 s (an idle worker holds up phase two): {s:?}"
        );
        busy.run(Cmd::Step);
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("retired in {:?}", start.elapsed());
    assert_eq!(engine.total(), 1);
    let s = engine.stats();
    assert_eq!(s.topics, 2, "keepalive and the overflow topic: {s:?}");

    // The ids are free again; a straggler's old handle never counts into the topic reusing one.
    let new = engine.try_topic("new").expect("a retired id is reused");
    assert!(!idle.join_topic(old), "a stale handle counted");
    assert!(idle.join_topic(new));
    engine.sync();
    assert_eq!(engine.count(new), 1);
    assert_eq!(engine.count(old), 0);
    assert_eq!(engine.total(), 2);
    assert_eq!(engine.stats().stale_joins, 1);
}
