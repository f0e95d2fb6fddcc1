//! The settings: flags, file keys and defaults.

use super::*;

fn file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hc-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}.toml", text.len()));
    std::fs::write(&p, text).unwrap();
    p
}

fn serve(args: &[&str]) -> Result<ServeOptions, String> {
    parse_args("serve", args).map_err(|e| e.0)
}

#[test]
fn the_cluster_defaults_are_the_librarys() {
    let c = Cluster::new(&serve(&[]).unwrap().cluster);
    assert_eq!(c.tick, defaults::TICK);
    assert_eq!(c.dns_interval, defaults::DNS_INTERVAL);
    assert_eq!(c.relay_fanout, defaults::RELAY_FANOUT);
    assert!(c.peers_dns.is_empty());
    assert_eq!(c.name, defaults::CLUSTER_NAME);
    assert!(matches!(
        c.transport,
        Some(Transport::Multicast { group, interface, .. })
            if group == defaults::GROUP && interface == defaults::INTERFACE
    ));
}

#[test]
fn flags_win_over_the_file() {
    let f =
        file("tick = \"250ms\"\ncluster = \"from-file\"\ngroup = \"239.1.2.3:9000\"\npin = true\n");
    let o = serve(&["--config", f.to_str().unwrap(), "--cluster", "from-flag"]).unwrap();
    let c = Cluster::new(&o.cluster);
    assert_eq!(c.tick, Duration::from_millis(250));
    assert_eq!(c.name, "from-flag");
    assert!(o.pin);
    assert!(matches!(
        c.transport,
        Some(Transport::Multicast { group, .. }) if group == "239.1.2.3:9000".parse().unwrap()
    ));
    // The defaults, where neither says anything.
    assert_eq!(o.max_output, 16 << 20);
    assert_eq!(
        o.cluster.interface,
        std::net::Ipv4Addr::LOCALHOST.to_string()
    );
}

#[test]
fn bad_files_name_the_problem() {
    let with = |text: &str| serve(&["--config", file(text).to_str().unwrap()]).unwrap_err();
    let e = with("tikc = \"1s\"\n");
    assert!(e.contains("unknown key `tikc`"), "{e}");
    let e = with("workers = \"two\"\n");
    assert!(e.contains("workers") && e.contains("two"), "{e}");
    let e = with("tick = \"soon\"\n");
    assert!(e.contains("tick") && e.contains("soon"), "{e}");
    let e = with("standalone = 1\n");
    assert!(e.contains("`standalone`"), "{e}");
    let e = serve(&["--config", "/nonexistent/headcount.toml"]).unwrap_err();
    assert!(e.contains("/nonexistent/headcount.toml"), "{e}");
    // Multicast or unicast, not both.
    assert!(
        serve(&[
            "--config",
            file("peers = [\"127.0.0.1:1\"]\ngroup = \"239.1.2.3:9000\"\n")
                .to_str()
                .unwrap()
        ])
        .is_err()
    );
    assert!(serve(&["--peers", "127.0.0.1:1", "--group", "239.1.2.3:9000"]).is_err());
    let f = file("group = \"239.1.2.3:9000\"\n");
    assert!(serve(&["--config", f.to_str().unwrap(), "--peers", "127.0.0.1:1"]).is_err());
}

#[test]
fn peers_dns_means_unicast_and_combines_with_peers() {
    let c = Cluster::new(
        &serve(&[
            "--peers-dns",
            "headcount.default.svc.cluster.local:7380",
            "--peers-dns",
            "seed.example:7380,other.example:7380",
            "--dns-interval",
            "2s",
            "--cluster-bind",
            "[::]:7380",
        ])
        .unwrap()
        .cluster,
    );
    assert_eq!(c.peers_dns.len(), 3);
    assert_eq!(c.dns_interval, std::time::Duration::from_secs(2));
    assert!(matches!(
        &c.transport,
        Some(Transport::Unicast { bind, peers }) if bind.is_ipv6() && peers.is_empty()
    ));
    assert!(
        c.describe()
            .contains("headcount.default.svc.cluster.local:7380")
    );
    let e = serve(&["--peers-dns", "h:1", "--group", "239.1.2.3:7000"]).unwrap_err();
    assert!(e.contains("--group") || e.contains("group"), "{e}");
}

#[test]
fn an_ipv6_group_takes_an_interface_index_or_name() {
    let c = Cluster::new(
        &serve(&["--group", "[ff12::4845:4144]:7380", "--interface", "lo"])
            .unwrap()
            .cluster,
    );
    assert!(
        matches!(c.transport, Some(Transport::Multicast6 { interface, .. }) if interface >= 1),
        "{c:?}"
    );
    let c = Cluster::new(&serve(&["--group", "[ff12::1]:7380"]).unwrap().cluster);
    let e = c.builder().unwrap_err().0;
    assert!(e.contains("interface index or name"), "{e}");
    let c = Cluster::new(&serve(&["--interface", "eth0"]).unwrap().cluster);
    let e = c.builder().unwrap_err().0;
    assert!(e.contains("IPv4 address"), "{e}");
}
