//! The engine's options as `Headcount` passes them: a map the Elixir side has validated and
//! normalized (`Headcount.Options`), turned into a [`headcount::Builder`]. Anything unexpected
//! still gets a clear error naming the option, never a crash.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use headcount::{Builder, ChannelTransport, Engine, defaults};
use rustler::{Atom, Binary, Decoder, Term};

/// The decoded options, and a fingerprint to recognize the same options again.
pub(crate) struct Config {
    builder: Builder,
    /// A channel transport (`cluster: :erlang`).
    pub(crate) transport: Option<ChannelTransport>,
    pub(crate) fingerprint: Vec<u8>,
}

impl Config {
    pub(crate) fn start(self) -> Result<Engine, String> {
        self.builder.start().map_err(|e| e.to_string())
    }
}

fn get<'a, T: Decoder<'a>>(map: Term<'a>, key: &str) -> Result<Option<T>, String> {
    let env = map.get_env();
    let k = Atom::from_str(env, key).map_err(|_| format!("bad option name {key}"))?;
    match map.map_get(k) {
        Err(_) => Ok(None),
        Ok(v) if v.is_atom() && v.atom_to_string().is_ok_and(|s| s == "nil") => Ok(None),
        Ok(v) => v
            .decode::<T>()
            .map(Some)
            .map_err(|_| format!("option {key}: unexpected value")),
    }
}

fn millis(map: Term<'_>, key: &str) -> Result<Option<Duration>, String> {
    Ok(get::<u64>(map, key)?.map(Duration::from_millis))
}

fn addr(s: &str, what: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{what}: {s:?} is not an IP address with a port"))
}

/// Decodes the options map (see `Headcount.Options.to_native/1`).
pub(crate) fn decode(map: Term<'_>) -> Result<Config, String> {
    if !map.is_map() {
        return Err("options must be a map".into());
    }
    let mut b = Engine::builder();
    if let Some(n) = get::<usize>(map, "shards")? {
        b = b.shards(n);
    }
    if let Some(d) = millis(map, "tick")? {
        b = b.tick(d);
    }
    if let Some(d) = millis(map, "dead_after")? {
        b = b.dead_after(d);
    }
    if let Some(n) = get::<usize>(map, "max_topics")? {
        b = b.max_topics(n);
    }
    if let Some(name) = get::<String>(map, "cluster_name")? {
        b = b.cluster_name(&name);
    }
    if let Some(path) = get::<String>(map, "key_file")? {
        b = b.cluster_key_file(path);
    }
    if let Some(key) = get::<Binary>(map, "key")? {
        b = b.cluster_key(key.as_slice());
    }
    if let Some(on) = get::<bool>(map, "insecure")? {
        b = b.insecure(on);
    }
    if let Some(on) = get::<bool>(map, "parity")? {
        b = b.parity(on);
    }
    if let Some(k) = get::<usize>(map, "relay_fanout")? {
        b = b.relay_fanout(k);
    }
    if let Some(name) = get::<String>(map, "node_name")? {
        b = b.node_name(&name);
    }
    let mut transport = None;
    if let Some(cluster) = get::<Term<'_>>(map, "cluster")? {
        let (nb, t) = cluster_of(b, cluster)?;
        b = nb;
        transport = t;
    }
    Ok(Config {
        builder: b,
        transport,
        // A small map's external form lists its keys in order: equal options, equal bytes.
        fingerprint: map.to_binary().as_slice().to_vec(),
    })
}

/// `:erlang`, `{:multicast, group, interface}` or `{:unicast, bind, peers, dns, dns_interval}`.
fn cluster_of(
    mut b: Builder,
    cluster: Term<'_>,
) -> Result<(Builder, Option<ChannelTransport>), String> {
    if cluster.is_atom() {
        return match cluster.atom_to_string().as_deref() {
            Ok("erlang") => {
                let t = ChannelTransport::new(defaults::CHANNEL_CAPACITY);
                Ok((b.channel(&t), Some(t)))
            }
            _ => Err("cluster: expected :erlang or a keyword list".into()),
        };
    }
    let parts = rustler::types::tuple::get_tuple(cluster)
        .map_err(|_| "cluster: expected :erlang or a keyword list".to_string())?;
    let kind = parts
        .first()
        .and_then(|t| t.atom_to_string().ok())
        .unwrap_or_default();
    match (kind.as_str(), parts.as_slice()) {
        ("multicast", [_, group, interface]) => {
            let group = addr(&group.decode::<String>().map_err(str_err)?, "multicast")?;
            let SocketAddr::V4(group) = group else {
                return Err(format!("multicast: {group} is not an IPv4 address"));
            };
            b = b.multicast(group);
            if let Ok(i) = interface.decode::<String>() {
                let ip: Ipv4Addr = i
                    .parse()
                    .map_err(|_| format!("interface: {i:?} is not an IPv4 address"))?;
                b = b.interface(ip);
            }
            Ok((b, None))
        }
        ("unicast", [_, bind, peers, dns, interval]) => {
            let bind = match bind.decode::<String>() {
                Ok(s) => addr(&s, "unicast")?,
                Err(_) => SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    defaults::GROUP.port(),
                )),
            };
            let peers: Vec<String> = peers.decode().map_err(str_err)?;
            let peers = peers
                .iter()
                .map(|p| addr(p, "peers"))
                .collect::<Result<Vec<_>, _>>()?;
            b = b.unicast(bind, peers);
            let dns: Vec<String> = dns.decode().map_err(str_err)?;
            for name in &dns {
                b = b.peers_dns(name);
            }
            if let Ok(ms) = interval.decode::<u64>() {
                b = b.dns_interval(Duration::from_millis(ms));
            }
            Ok((b, None))
        }
        _ => Err("cluster: unexpected value".into()),
    }
}

fn str_err(_: rustler::Error) -> String {
    "cluster: unexpected value".into()
}
