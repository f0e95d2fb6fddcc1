//! Who a node is across restarts: its node id, and the cluster key it uses when none is given.
//!
//! **Node id.** A restarted node must come back under the same id, so that its new incarnation
//! replaces the old one's counts on every peer at once (a new id each start would leave the old
//! process's counts in place until dead-after: a crash-and-restart counted twice). `serve`
//! derives the id from the cluster name, the host name, the network namespace (when it is not
//! pid 1's) and the listen address, which are the same across restarts of one server and differ
//! between servers (two on one host listen on different ports or in different namespaces; hosts
//! have different names). `--node-id` overrides it: 16 hex digits (as NODES and the logs print
//! ids) are taken as they are, anything else (a pod name, say) is hashed.
//!
//! **Default key.** On loopback without a key, any local process that knows the cluster name can
//! forge counts. So when no key is given, `serve` and `watch` use a key file of the user's own,
//! created on first start with mode 0600: `$XDG_STATE_HOME/headcount/cluster.key`, or
//! `~/.local/state/headcount/cluster.key`. Every process of that user on the host shares it;
//! other users cannot read it. `--insecure` runs without a key instead.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The id `--node-id VALUE` gives: 16 hex digits (optionally `0x`-prefixed) as they are, any
/// other text hashed. `None` for an empty value.
pub fn parse_node_id(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let hex = v.strip_prefix("0x").unwrap_or(v);
    if hex.len() == 16
        && let Ok(id) = u64::from_str_radix(hex, 16)
        && id != 0
    {
        return Some(id);
    }
    Some(headcount::node_id_for(v))
}

/// The default node id of a server of cluster `cluster` listening on `listen` on this host, and
/// the text it was derived from (for the log).
pub fn default_node_id(cluster: &str, listen: SocketAddr) -> (u64, String) {
    let from = node_id_source(cluster, &hostname(), own_netns().as_deref(), listen);
    (headcount::node_id_for(&from), from)
}

/// The text a default node id is derived from: `cluster/host/listen`, with the network namespace
/// between host and listen address when the server runs in one of its own (`None`: the host's).
/// Servers in network namespaces of one host (`ip netns exec`) share its host name and may all
/// listen on the same address: without the namespace they would share an id, and each would
/// refuse the others' datagrams (`Reject::NodeId`).
pub fn node_id_source(
    cluster: &str,
    host: &str,
    netns: Option<&str>,
    listen: SocketAddr,
) -> String {
    match netns {
        Some(ns) => format!("{cluster}/{host}/{ns}/{listen}"),
        None => format!("{cluster}/{host}/{listen}"),
    }
}

/// This process's network namespace (`net:[4026532281]`, as `/proc/self/ns/net` names it) when
/// it is not the one pid 1 runs in, `None` when it is (a host's or a container's own init: then
/// the host name tells servers apart, and the id stays what it was before namespaces counted).
/// Where pid 1's cannot be read (an unprivileged user on a host) the namespace is named anyway:
/// it lives as long as the host, so the id is as stable. A namespace made with `ip netns add`
/// keeps its number until it is deleted, across restarts of the servers in it.
fn own_netns() -> Option<String> {
    let own = std::fs::read_link("/proc/self/ns/net").ok()?;
    let init = std::fs::read_link("/proc/1/ns/net").ok();
    (init.as_ref() != Some(&own)).then(|| own.to_string_lossy().into_owned())
}

/// This host's name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`, then "localhost").
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// Where the default key file lives.
pub fn default_key_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(state.join("headcount").join("cluster.key"))
}

/// The default key file: read it, creating it first (32 random bytes, mode 0600) when absent.
/// Processes that start together agree on one key: the file is written under a temporary name
/// and linked into place, and whoever loses the race reads the winner's.
pub fn default_key_file() -> Result<PathBuf, String> {
    let path = default_key_path()
        .ok_or("neither XDG_STATE_HOME nor HOME is set: give --key-file, or --insecure")?;
    if let Ok(k) = std::fs::read(&path)
        && !k.is_empty()
    {
        return Ok(path);
    }
    create_key(&path).map_err(|e| format!("default key file {}: {e}", path.display()))?;
    Ok(path)
}

fn create_key(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".cluster.key.{}.{n}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&random_key())?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// 32 bytes from the OS.
fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut k).is_ok() {
            return k;
        }
    }
    // No /dev/urandom: the OS-seeded hasher keys, the time and the pid.
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in k.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_parse_or_hash() {
        assert_eq!(parse_node_id("00000000000000ff"), Some(0xff));
        assert_eq!(
            parse_node_id("0x1234567890abcdef"),
            Some(0x1234_5678_90ab_cdef)
        );
        assert_eq!(
            parse_node_id("web-1"),
            Some(headcount::node_id_for("web-1"))
        );
        assert_ne!(parse_node_id("web-1"), parse_node_id("web-2"));
        assert_eq!(parse_node_id("  "), None);
        let a: SocketAddr = "127.0.0.1:7379".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7378".parse().unwrap();
        assert_eq!(default_node_id("c", a).0, default_node_id("c", a).0);
        assert_ne!(default_node_id("c", a).0, default_node_id("c", b).0);
        assert_ne!(default_node_id("c", a).0, default_node_id("d", a).0);
        // The host's own namespace leaves the text as it was; others are named in it.
        assert_eq!(node_id_source("c", "h", None, a), "c/h/127.0.0.1:7379");
        let (n1, n2) = (Some("net:[4026532281]"), Some("net:[4026532345]"));
        assert_eq!(
            node_id_source("c", "h", n1, a),
            "c/h/net:[4026532281]/127.0.0.1:7379"
        );
        assert_ne!(
            node_id_source("c", "h", n1, a),
            node_id_source("c", "h", n2, a)
        );
    }

    #[test]
    fn the_default_key_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hc-key-{}", std::process::id()));
        let path = dir.join("headcount").join("cluster.key");
        let _ = std::fs::remove_dir_all(&dir);
        // Eight racing creators agree on one key.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || create_key(&p).map(|()| std::fs::read(&p).unwrap()))
            })
            .collect();
        let keys: Vec<Vec<u8>> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert_eq!(keys[0].len(), 32);
        assert!(keys.iter().all(|k| *k == keys[0]));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
