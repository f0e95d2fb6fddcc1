//! Processes: finding and spawning `headcount serve`, stopping children, and what /proc says
//! about a process (resident set size, CPU time), and this process's allocator settings.
//! Linux: the figures come from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `headcount` binary beside this one (both are built into the same target directory).
pub fn headcount_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("headcount");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p headcount-server)",
            bin.display()
        ))
    }
}

/// Starts `headcount serve --listen 127.0.0.1:0 <args>` and waits until it logs the address it
/// listens on. Its log's WARN and ERROR lines are copied to this process's standard error.
pub fn spawn_serve(args: &[&str]) -> Result<(Child, SocketAddr), String> {
    let bin = headcount_bin()?;
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let Some(stderr) = child.stderr.take() else {
        stop(&mut [child]);
        return Err("no stderr".into());
    };
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            stop(&mut [child]);
            return Err("headcount serve exited before listening".into());
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            match rest.split_whitespace().next().and_then(|a| a.parse().ok()) {
                Some(a) => break a,
                None => {
                    stop(&mut [child]);
                    return Err("bad listen line".into());
                }
            }
        }
    };
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("serve: {l}");
            }
        }
    });
    Ok((child, addr))
}

/// Stops `procs`: SIGTERM to each, then up to 10 s for all of them to exit, then SIGKILL to
/// those still running.
pub fn stop(procs: &mut [Child]) {
    for p in procs.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut() {
        reap(p, deadline);
    }
}

/// Waits until `deadline` for `p` to exit, then kills it (if still running) and reaps it.
pub fn reap(p: &mut Child, deadline: Instant) {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = p.kill();
    let _ = p.wait();
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Resident set size of `pid`, in bytes (0 if unknown).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system) `pid` has used (0 if unknown).
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name: utime is 14th, stime 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / clk_tck())
        })
        .unwrap_or(0.0)
}

/// Clock ticks per second, the unit of /proc's CPU times (`getconf CLK_TCK`, asked once).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Raises this process's open-file limit to `want` if it can (children inherit it): root may
/// raise the hard limit, anyone the soft limit up to the hard one. Returns the limit now.
pub fn raise_nofile(want: u64) -> Result<u64, String> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().map_err(|e| e.to_string())?;
    if soft >= want {
        return Ok(soft);
    }
    if Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    let _ = Resource::NOFILE.set(hard, hard);
    Ok(hard)
}

/// What a simulation (`converge`) frees is kept by glibc's allocator for its next allocations,
/// not handed back to the kernel: the heap's top is never trimmed, allocations up to 32 MiB come
/// from the heap rather than their own mappings, and the heap grows 64 MiB at a time. A run
/// allocates and frees gigabytes in small pieces (peers' tables growing bucket by bucket), and
/// with glibc's defaults the same memory was faulted in again and again: at 256 × 100k, 4
/// million page faults and 33–34 s of kernel time in a 72–73 s run (on a VM where a fresh page
/// costs ~9 µs), against 3.1 million and 20–26 s so kept (see `perf/RESULTS.md`).
///
/// The heap is also asked for transparent huge pages (`madvise`, where the kernel's
/// `transparent_hugepage` setting is `madvise` or `always`; glibc 2.35 and later, older ones
/// ignore the tunable): one fault per 2 MiB instead of per 4 KiB, and fewer TLB misses in the
/// hundreds of nodes' tables. At 256 × 100k on an AMD EPYC VM: 3.06 million faults → 7 thousand,
/// and about 70 s → 57–67 s a seed, for 0.8 GB more resident (`perf/RESULTS.md`, twentieth
/// part: the nineteenth part's figures mixed starts with and without them, see below);
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns it off.
///
/// The settings are tunables (`GLIBC_TUNABLES`), read when a process starts, so this process
/// executes itself again with them once (the user's own tunables follow, and win).
/// `HEADCOUNT_PERF_MALLOC` set (to anything) skips it: glibc's defaults.
///
/// glibc 2.36 (Debian 12) takes the huge-page tunable only some of the time: each start reads
/// the same `always [madvise] never` (strace), then reads the huge page size and advises the
/// heap, or does neither. (Likely the check of that text: read into a buffer one byte longer
/// than it and compared as a C string, with that last byte whatever the stack held; newer
/// glibc ends the text first.) Of six runs of 256 × 100k, two had no huge pages (their heap
/// without `hg` in `/proc/self/smaps`), and so took 70 s where the others took about 60.
/// Where the kernel gives huge pages on request (`[madvise]`) and the heap has none, this
/// process therefore executes itself again, up to [`ATTEMPTS`] times (each start draws the
/// stack afresh, and about one in three gets them; a start is a few milliseconds).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    const GUARD: &str = "HEADCOUNT_PERF_MALLOC";
    /// The user's own tunables, as the first start found them (glibc overwrites
    /// `GLIBC_TUNABLES` as it parses it).
    const THEIRS: &str = "HEADCOUNT_PERF_TUNABLES";
    const KEEP: &str = "glibc.malloc.trim_threshold=4294967295:\
                        glibc.malloc.mmap_threshold=33554432:glibc.malloc.top_pad=67108864:\
                        glibc.malloc.hugetlb=1";
    let (attempt, theirs) = match std::env::var(GUARD) {
        Err(std::env::VarError::NotPresent) => {
            (1, std::env::var("GLIBC_TUNABLES").unwrap_or_default())
        }
        // Started by itself: again only while huge pages were wanted and did not come.
        Ok(v) => {
            let Some(attempt) = v.strip_prefix("kept ").and_then(|n| n.parse::<u32>().ok()) else {
                return;
            };
            let Ok(theirs) = std::env::var(THEIRS) else {
                return;
            };
            if attempt >= ATTEMPTS
                || theirs.contains("glibc.malloc.hugetlb")
                || !huge_pages_missed()
            {
                return;
            }
            (attempt + 1, theirs)
        }
        Err(_) => return,
    };
    let mut tunables = KEEP.to_string();
    if !theirs.is_empty() {
        tunables.push(':');
        tunables.push_str(&theirs);
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", &tunables)
        .env(THEIRS, &theirs)
        .env(GUARD, format!("kept {attempt}"))
        .exec();
    eprintln!("headcount-perf: not run again with the allocator's memory kept ({err})");
}

/// How many times [`keep_freed_memory`] starts this process for the heap's huge pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ATTEMPTS: u32 = 16;

/// Whether the kernel gives huge pages on request and this process's heap asked for none.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn huge_pages_missed() -> bool {
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    if !mode.is_ok_and(|m| m.contains("[madvise]")) {
        return false;
    }
    std::fs::read_to_string("/proc/self/smaps").is_ok_and(|s| !heap_asks_huge_pages(&s))
}

/// Whether a mapping of the heap in `smaps` (`/proc/PID/smaps`) was asked for huge pages
/// (`hg` among its `VmFlags`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_asks_huge_pages(smaps: &str) -> bool {
    let mut heap = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            heap = line.trim_end().ends_with("[heap]");
        } else if heap && first == "VmFlags:" && line.split_whitespace().any(|f| f == "hg") {
            return true;
        }
    }
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::heap_asks_huge_pages;

    const HEAP: &str = "55ec88744000-55edba63f000 rw-p 00000000 00:00 0      [heap]\n\
                        Size:            5000000 kB\n\
                        AnonHugePages:         0 kB\n";
    const STACK: &str = "7ffc0000-7ffd0000 rw-p 00000000 00:00 0      [stack]\n\
                         Size:                132 kB\n\
                         VmFlags: rd wr mr mw me gd ac hg\n";

    #[test]
    fn the_heap_asked_for_huge_pages_only_where_its_flags_say_so() {
        let asked = format!("{HEAP}VmFlags: rd wr mr mw me ac hg\n{STACK}");
        let not = format!("{HEAP}VmFlags: rd wr mr mw me ac\n{STACK}");
        assert!(heap_asks_huge_pages(&asked));
        // Another mapping's `hg` is not the heap's.
        assert!(!heap_asks_huge_pages(&not));
        assert!(!heap_asks_huge_pages(""));
        // A heap split in two by the advice: either part asking counts.
        let split = format!(
            "{HEAP}VmFlags: rd wr mr mw me ac\n\
             55edba63f000-55edc0000000 rw-p 00000000 00:00 0      [heap]\n\
             VmFlags: rd wr mr mw me ac hg\n"
        );
        assert!(heap_asks_huge_pages(&split));
    }
}
