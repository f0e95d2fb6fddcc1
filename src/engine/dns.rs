//! Peer discovery by DNS: a thread that resolves each `name:port` every interval (A and AAAA
//! records alike, through the system resolver) and hands the results to the engine thread,
//! which never waits on DNS. A failed resolution keeps the last known set (the engine counts it
//! and keeps the error for `INFO`); it never stops the cluster.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;

/// One resolution of name number `index`.
#[derive(Debug)]
pub(crate) struct Resolution {
    pub(crate) index: usize,
    pub(crate) result: Result<Vec<SocketAddr>, String>,
}

/// The resolver thread's handle: results come out of `rx`; dropping it stops the thread.
pub(crate) struct Resolver {
    pub(crate) rx: Receiver<Resolution>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // It wakes from its wait at once; a resolution under way finishes first (bounded
            // by the system resolver's own timeout).
            let _ = t.join();
        }
    }
}

/// Checks a `name:port` given for DNS discovery.
pub(crate) fn validate(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::Config {
        option: "peers_dns",
        value: format!("{name:?}"),
        reason: reason.to_string(),
    };
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| bad("needs a port: NAME:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("needs a host name before the port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

/// Resolves `name` (`host:port`) once, through the system resolver.
pub(crate) fn resolve(name: &str) -> Result<Vec<SocketAddr>, String> {
    let mut v: Vec<SocketAddr> = name
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        return Err("no address".into());
    }
    Ok(v)
}

/// Starts the resolver thread: every `interval`, each of `names`, results to the returned
/// receiver, then `wake()`.
pub(crate) fn spawn(
    names: Vec<String>,
    interval: Duration,
    wake: Arc<dyn Fn() + Send + Sync>,
) -> Result<Resolver, Error> {
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("headcount-dns".into())
        .spawn(move || {
            loop {
                for (index, name) in names.iter().enumerate() {
                    let result = resolve(name);
                    if tx.send(Resolution { index, result }).is_err() {
                        return;
                    }
                }
                wake();
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .map_err(Error::Spawn)?;
    Ok(Resolver {
        rx,
        stop: Some(stop),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_a_host_and_a_port() {
        assert!(validate("headcount.default.svc:7380").is_ok());
        assert!(validate("[::1]:7380").is_ok());
        for bad in ["headcount", "headcount:", ":7380", "h:0", "h:70000", "h:x"] {
            let e = validate(bad).unwrap_err().to_string();
            assert!(e.contains("peers_dns"), "{bad}: {e}");
        }
    }

    #[test]
    fn localhost_resolves_and_a_bad_name_is_an_error() {
        let v = resolve("localhost:7380").unwrap();
        assert!(
            v.iter().all(|a| a.ip().is_loopback() && a.port() == 7380),
            "{v:?}"
        );
        assert!(resolve("no-such-host.invalid:7380").is_err());
    }

    #[test]
    fn the_thread_resolves_every_interval_and_stops_when_dropped() {
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        let r = spawn(
            vec!["localhost:1".into(), "no-such-host.invalid:2".into()],
            Duration::from_millis(20),
            Arc::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        )
        .unwrap();
        let a = r.rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let b = r.rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((a.index, b.index), (0, 1));
        assert!(a.result.is_ok() && b.result.is_err());
        let c = r.rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(c.index, 0, "resolved again after the interval");
        drop(r); // joins the thread
        assert!(woken.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}
