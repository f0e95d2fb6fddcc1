//! The multicast flags as a transport: `--group` with `--interface` (IPv4 or IPv6).

use std::net::{Ipv4Addr, SocketAddr};

use headcount::{Transport, defaults};

/// The multicast transport of `--group` and `--interface`: an IPv4 group with an interface
/// address, or an IPv6 group with an interface index or name.
pub(super) fn multicast(group: SocketAddr, interface: &str) -> Result<Transport, String> {
    match group {
        SocketAddr::V4(group) => {
            let interface: Ipv4Addr = interface.parse().map_err(|_| {
                format!(
                    "--interface {interface:?}: an IPv4 group ({group}) needs the interface's \
                     IPv4 address"
                )
            })?;
            Ok(Transport::Multicast {
                group,
                interface,
                ttl: defaults::MULTICAST_TTL,
                loopback: defaults::MULTICAST_LOOPBACK,
            })
        }
        SocketAddr::V6(group) => Ok(Transport::Multicast6 {
            group,
            interface: interface_index(interface).ok_or_else(|| {
                format!(
                    "--interface {interface:?}: an IPv6 group ({group}) needs an interface index \
                     or name (`ip link` lists them), not an IPv4 address"
                )
            })?,
            hops: defaults::MULTICAST_TTL,
            loopback: defaults::MULTICAST_LOOPBACK,
        }),
    }
}

/// An interface's index: the number itself, or a name looked up in `/sys/class/net` (Linux).
fn interface_index(s: &str) -> Option<u32> {
    if let Ok(i) = s.parse::<u32>() {
        return (i != 0).then_some(i);
    }
    if s.is_empty() || s.contains(['/', '.']) {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{s}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
