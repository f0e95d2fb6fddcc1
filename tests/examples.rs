//! The examples, run and checked: two instances of `examples/axum_ws.rs` in a cluster on
//! loopback, driven by 200 real WebSocket clients, `examples/thread_per_core.rs` and
//! `examples/custom_transport.rs`.
//!
//! Each example file is compiled into this test as a module and run in-process (`run`), not
//! spawned as a binary: `cargo test` builds the examples' binaries, but `cargo test --test
//! examples` does not, so a test that spawned `target/<profile>/examples/axum_ws` would fail, or
//! run a stale binary, when run on its own. As modules they are always built from the current
//! source with the test, and their instances stop with it (no child process to leak). What the
//! binaries add — parsing the command line, Ctrl-C — is not covered here.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

#[allow(dead_code)] // its `main`
#[path = "../examples/axum_ws.rs"]
mod axum_ws;

#[allow(dead_code)] // its `main`
#[path = "../examples/thread_per_core.rs"]
mod thread_per_core;

#[allow(dead_code)] // its `main`
#[path = "../examples/custom_transport.rs"]
mod custom_transport;

/// Bound on every wait: a connect, a reply, counts to settle, an instance to stop.
const LIMIT: Duration = Duration::from_secs(10);
const CLIENTS: usize = 200;
const ROOMS: usize = 10;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One `axum_ws` instance, running on a thread of its own until `stop`.
struct Instance {
    http: SocketAddr,
    stop: oneshot::Sender<()>,
    done: mpsc::Receiver<Result<(), String>>,
}

impl Instance {
    fn start(cluster: &str, bind: SocketAddr, peer: SocketAddr) -> Instance {
        let config = axum_ws::Config {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 2,
            tick: Duration::from_millis(50),
            cluster: cluster.to_string(),
            cluster_bind: Some(bind),
            peers: vec![peer],
            ..axum_ws::Config::default()
        };
        let (listening, http) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (finished, done) = mpsc::channel();
        thread::spawn(move || {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let ran = axum_ws::run(config, shutdown, move |addr| {
                let _ = listening.send(addr);
            });
            let _ = finished.send(ran.map_err(|e| e.to_string()));
        });
        match http.recv_timeout(LIMIT) {
            Ok(http) => Instance { http, stop, done },
            Err(_) => panic!("axum_ws did not start: {:?}", done.recv_timeout(LIMIT)),
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        match self.done.recv_timeout(LIMIT) {
            Ok(ran) => ran.expect("axum_ws ran without an error"),
            Err(_) => panic!("axum_ws did not stop within {LIMIT:?}"),
        }
    }
}

/// Two loopback UDP ports that were free a moment ago (the cluster's unicast addresses).
fn free_udp_ports() -> [SocketAddr; 2] {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    [a.local_addr().unwrap(), b.local_addr().unwrap()]
}

fn room(i: usize) -> usize {
    i.isqrt() % ROOMS // uneven: 11 to 34 clients a room, on both instances
}

/// `GET path` over a fresh connection; the body of a `200`.
async fn get(http: SocketAddr, path: &str) -> String {
    let ask = async {
        let mut s = TcpStream::connect(http).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = timeout(LIMIT, ask)
        .await
        .expect("HTTP reply in time")
        .expect("HTTP GET");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Waits (bounded) until both instances answer `expected[r]` for every room `r`.
async fn counts_settle(instances: &[SocketAddr], expected: &[u64; ROOMS], when: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut wrong = Vec::new();
        for (i, &http) in instances.iter().enumerate() {
            for (r, &want) in expected.iter().enumerate() {
                let got = get(http, &format!("/count/room-{r}")).await;
                if got.trim().parse::<u64>() != Ok(want) {
                    wrong.push(format!(
                        "instance {i}, room-{r}: {}, want {want}",
                        got.trim()
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: counts differ after {LIMIT:?}: {wrong:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `ws`'s pushes until one says `"{n} online"` (bounded).
async fn pushed(ws: &mut Ws, n: u64) {
    let want = format!("{n} online");
    let seen = timeout(LIMIT, async {
        while let Some(msg) = ws.next().await {
            if msg.expect("a push").to_text().is_ok_and(|t| t == want) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "no \"{want}\" pushed within {LIMIT:?}");
}

/// Closes with the handshake, or (`abrupt`) just drops the connection, like a client that dies.
async fn close(mut ws: Ws, abrupt: bool) {
    if abrupt {
        return;
    }
    ws.close(None).await.expect("send close");
    // Pushes sent before the server saw the close, then the server's close, then the end.
    let ended = timeout(LIMIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the server did not end the close handshake");
}

#[test]
fn axum_ws_two_instances_count_every_client_exactly() {
    let [a, b] = free_udp_ports();
    let cluster = format!("examples-test-{}", std::process::id());
    let instances = [
        Instance::start(&cluster, a, b),
        Instance::start(&cluster, b, a),
    ];
    let http = [instances[0].http, instances[1].http];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Client i: on instance i % 2, in room(i).
        let mut clients: Vec<Option<Ws>> = Vec::new();
        let mut expected = [0u64; ROOMS];
        for i in 0..CLIENTS {
            let url = format!("ws://{}/ws/room-{}", http[i % 2], room(i));
            let (ws, _) = timeout(LIMIT, connect_async(&url))
                .await
                .expect("connect in time")
                .expect("WebSocket upgrade");
            clients.push(Some(ws));
            expected[room(i)] += 1;
        }
        counts_settle(&http, &expected, "all connected").await;
        // A push from each instance says the cluster-wide count of its room.
        for i in [0, 1] {
            pushed(clients[i].as_mut().unwrap(), expected[room(i)]).await;
        }

        // A room name over 255 bytes is refused before the upgrade.
        let long = format!("ws://{}/ws/{}", http[0], "x".repeat(300));
        match timeout(LIMIT, connect_async(&long))
            .await
            .expect("reply in time")
        {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
            other => panic!("a 300-byte room name: {other:?}"),
        }

        // Half leave, on both instances: clients 0, 1 (mod 4) close, half of them abruptly.
        for (i, ws) in clients.iter_mut().enumerate() {
            if i % 4 < 2 {
                close(ws.take().unwrap(), i % 8 >= 4).await;
                expected[room(i)] -= 1;
            }
        }
        counts_settle(&http, &expected, "half left").await;
        for i in [2, 3] {
            pushed(clients[i].as_mut().unwrap(), expected[room(i)]).await;
        }

        // Everyone leaves.
        for (i, ws) in clients.iter_mut().enumerate() {
            if let Some(ws) = ws.take() {
                close(ws, i % 3 == 0).await;
            }
        }
        counts_settle(&http, &[0; ROOMS], "all left").await;
    });

    // Stopping an instance closes its WebSockets with "going away", and its peer stops counting
    // them.
    let mut last = rt.block_on(async {
        let url = format!("ws://{}/ws/room-0", http[0]);
        let (ws, _) = connect_async(&url).await.expect("WebSocket upgrade");
        let mut one = [0; ROOMS];
        one[0] = 1;
        counts_settle(&http, &one, "one more").await;
        ws
    });
    let [first, second] = instances;
    first.stop();
    rt.block_on(async {
        let close = timeout(LIMIT, async {
            while let Some(Ok(msg)) = last.next().await {
                if let Message::Close(frame) = msg {
                    return frame;
                }
            }
            None
        });
        let frame = close.await.expect("a close frame in time");
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::Away));
        counts_settle(&http[1..], &[0; ROOMS], "its peer stopped").await;
    });
    second.stop();
}

#[test]
fn thread_per_core_counts_exactly_and_exits() {
    let settings = thread_per_core::Settings {
        workers: 2,
        duration: Duration::from_millis(1500),
        rooms: 50,
        users: 2_000,
        tick: Duration::from_millis(50),
    };
    thread_per_core::run(&settings).expect("thread_per_core's counts match its ledger");
}

#[test]
fn custom_transport_counts_exactly_and_exits() {
    custom_transport::run().expect("every engine counts every engine's users");
}
