//! The channel's queues, waker and addresses, without an engine.

use super::*;

#[test]
fn peer_addr_round_trips_through_its_socket_addr() {
    for n in [0, 1, 42, u64::MAX] {
        let a = PeerAddr(n).to_socket_addr();
        assert_eq!(a.port(), 0);
        assert_eq!(PeerAddr::from_socket_addr(a), Some(PeerAddr(n)));
    }
    assert_eq!(PeerAddr(1).to_socket_addr().to_string(), "[100::1]:0");
    for other in ["127.0.0.1:0", "[::1]:0", "[100::1]:7380", "[101::1]:0"] {
        assert_eq!(PeerAddr::from_socket_addr(other.parse().unwrap()), None);
    }
}

#[test]
fn outbound_overflow_drops_the_oldest_and_counts() {
    let t = ChannelTransport::new(2);
    let mut end = t.attach().expect("first attach");
    assert!(t.attach().is_none(), "one engine per transport");
    for i in 0..5u8 {
        end.send(Transmit {
            dest: Dest::Group,
            bytes: vec![i],
        });
    }
    end.flushed();
    assert_eq!(end.dropped(), (3, 0));
    let got: Vec<u8> = t.drain().iter().map(|o| o.bytes[0]).collect();
    assert_eq!(got, vec![3, 4]);
    assert_eq!(t.try_recv(), Err(TryRecvError::Empty));
    drop(end);
    assert_eq!(t.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(
        t.recv_timeout(Duration::from_secs(5)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(t.deliver(PeerAddr(1), b"x"), Err(DeliverError::Closed));
}

#[test]
fn inbound_overflow_refuses_and_counts() {
    let t = ChannelTransport::new(2);
    let mut end = t.attach().expect("attach");
    assert_eq!(t.deliver(PeerAddr(1), b"a"), Ok(()));
    assert_eq!(t.deliver(PeerAddr(2), b"b"), Ok(()));
    assert_eq!(t.deliver(PeerAddr(3), b"c"), Err(DeliverError::Full));
    let big = vec![0; MAX_CHANNEL_DATAGRAM + 1];
    assert_eq!(t.deliver(PeerAddr(3), &big), Err(DeliverError::TooLarge));
    assert_eq!(end.dropped(), (0, 2));
    let mut seen = Vec::new();
    let far = Instant::now() + Duration::from_secs(60);
    assert!(end.recv_all(far, |from, b| seen.push((from, b.unwrap().to_vec()))));
    assert_eq!(
        seen,
        vec![
            (PeerAddr(1).into(), b"a".to_vec()),
            (PeerAddr(2).into(), b"b".to_vec())
        ]
    );
}

#[test]
fn the_waker_is_called_per_batch_and_at_stop() {
    use std::sync::atomic::AtomicUsize;
    let t = ChannelTransport::new(8);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    t.set_waker(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing queued yet");
    let mut end = t.attach().expect("attach");
    end.flushed();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an empty flush wakes nobody"
    );
    for _ in 0..3 {
        end.send(Transmit {
            dest: Dest::To(PeerAddr(9).into()),
            bytes: vec![1],
        });
    }
    end.flushed();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        t.recv_timeout(Duration::from_secs(5)).map(|o| o.to),
        Ok(Destination::Peer(PeerAddr(9)))
    );
    t.set_waker(|| panic!("a panicking waker must not take the engine down"));
    drop(end);
    assert!(t.is_closed());
    assert_eq!(t.drain().len(), 2, "what was queued stays readable");
}

#[test]
fn a_peer_gone_comes_after_the_datagrams_delivered_before_it() {
    let t = ChannelTransport::new(1);
    let mut end = t.attach().expect("attach");
    assert_eq!(t.deliver(PeerAddr(1), b"a"), Ok(()));
    // Never refused for a full queue: a departure must not be lost.
    t.peer_gone(PeerAddr(1));
    assert_eq!(t.deliver(PeerAddr(2), b"b"), Err(DeliverError::Full));
    let mut seen = Vec::new();
    let far = Instant::now() + Duration::from_secs(60);
    assert!(end.recv_all(far, |from, b| seen.push((from, b.map(<[u8]>::to_vec)))));
    assert_eq!(
        seen,
        vec![
            (PeerAddr(1).into(), Some(b"a".to_vec())),
            (PeerAddr(1).into(), None)
        ]
    );
    drop(end);
    t.peer_gone(PeerAddr(3)); // ignored once stopped
    assert_eq!(t.deliver(PeerAddr(3), b"c"), Err(DeliverError::Closed));
}
