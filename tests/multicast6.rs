//! IPv6 multicast: two engines on one link count each other's users. The loopback interface
//! carries no IPv6 multicast on Linux, so the test makes a link of its own: a network namespace
//! with a veth pair, and re-runs itself inside it (`ip netns exec`). Skips with a printed reason
//! where that cannot be done (not root, no `ip`), and fails instead under
//! `HEADCOUNT_REQUIRE_TOOLS=1` (CI).

use std::net::SocketAddrV6;
use std::process::Command;
use std::time::{Duration, Instant};

use headcount::Engine;

/// Set in the child: the interface to use.
const CHILD_ENV: &str = "HEADCOUNT_MULTICAST6_IF";

fn skip(reason: &str) {
    if std::env::var_os("HEADCOUNT_REQUIRE_TOOLS").is_some() {
        panic!("HEADCOUNT_REQUIRE_TOOLS is set and this test cannot run: {reason}");
    }
    println!("skipped: {reason}");
}

/// In the child (inside the namespace): two engines on the group, each with users.
#[test]
fn multicast6_child() {
    let Ok(ifname) = std::env::var(CHILD_ENV) else {
        return;
    };
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .expect("ifindex")
        .trim()
        .parse()
        .expect("ifindex");
    let group: SocketAddrV6 = "[ff12::4845:4144]:7391".parse().unwrap();
    let node = || {
        Engine::builder()
            .tick(Duration::from_millis(20))
            .max_topics(1 << 12)
            .multicast6(group, index)
            .cluster_key(b"multicast6 test key")
            .start()
            .expect("start on the IPv6 group")
    };
    let (a, b) = (node(), node());
    let _pa = a.join_by_name("v6");
    let _pb: Vec<_> = (0..2).map(|_| b.join_by_name("v6")).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.count_by_name("v6") != 3 || b.count_by_name("v6") != 3 {
        assert!(
            Instant::now() < deadline,
            "not exact over IPv6 multicast: a {} b {}",
            a.count_by_name("v6"),
            b.count_by_name("v6")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("MULTICAST6 OK");
}

/// Deletes the namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn two_engines_count_each_other_over_ipv6_multicast() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("`ip` (iproute2) is not installed");
    }
    let ns = format!("hc-m6-{}", std::process::id());
    if !ip(&["netns", "add", &ns]) {
        return skip("cannot create a network namespace (not root?)");
    }
    let _guard = Netns(ns.clone());
    let inside = |args: &[&str]| {
        let mut v = vec!["-n", ns.as_str()];
        v.extend_from_slice(args);
        ip(&v)
    };
    assert!(inside(&["link", "set", "lo", "up"]));
    assert!(inside(&[
        "link", "add", "hcv0", "type", "veth", "peer", "name", "hcv1"
    ]));
    assert!(inside(&["link", "set", "hcv0", "up"]));
    assert!(inside(&["link", "set", "hcv1", "up"]));
    // An address at once (no duplicate address detection), so the link can send.
    assert!(inside(&[
        "-6",
        "addr",
        "add",
        "fd77::1/64",
        "dev",
        "hcv0",
        "nodad"
    ]));
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(["--exact", "multicast6_child", "--nocapture"])
        .env(CHILD_ENV, "hcv0")
        .output()
        .expect("run the child in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MULTICAST6 OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_ipv6_group_is_a_clear_error() {
    let e = Engine::builder()
        .multicast6("[fd00::1]:7380".parse().unwrap(), 1)
        .cluster_key(b"k")
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv6 multicast"), "{e}");
    let e = Engine::builder()
        .multicast6("[ff12::1]:7380".parse().unwrap(), 1)
        .interface(std::net::Ipv4Addr::LOCALHOST)
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("interface"), "{e}");
}
