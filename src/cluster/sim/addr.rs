//! The simulation's addresses and topic hashes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Topic number `i`'s wire hash in the simulation: spread over the whole hash space, like real
/// keyed hashes.
pub fn topic_hash(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

/// The address node `i` sends from.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 77, (i >> 8) as u8, i as u8),
        7380,
    ))
}

pub(super) fn index(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v) if v.port() == 7380 => {
            let o = v.ip().octets();
            Some(usize::from(o[2]) << 8 | usize::from(o[3]))
        }
        _ => None,
    }
}
