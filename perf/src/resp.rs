//! The harness's RESP client side, in one place: the request encoder and the reply reader that
//! `conns`, the load clients (`load/client.rs`) and the load checker (`load/servers.rs`) use.
//!
//! Kept small on purpose (encode a request, parse a reply from a buffer, read one from a
//! blocking stream), so that it can give way to a shared RESP client with a one-line change.

use std::io::{Read, Write};

/// Appends `args` to `out` as one RESP request (an array of bulk strings).
pub fn encode_request(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply, as the harness needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `:n`
    Int(i64),
    /// `$len` and the bytes; `$-1` is `None` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` and `n` replies.
    Array(Vec<Reply>),
    /// `+text`
    Status(String),
    /// `-text` (the text after the `-`).
    Error(String),
}

impl Reply {
    /// The text of a bulk string, status or error; empty for the others.
    pub fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            _ => String::new(),
        }
    }

    /// A count: an integer, a number in a bulk string, or nil (0).
    pub fn count(&self) -> Result<i64, String> {
        match self {
            Reply::Int(i) => Ok(*i),
            Reply::Bulk(None) => Ok(0),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b)
                .parse()
                .map_err(|e| format!("count {b:?}: {e}")),
            other => Err(format!("expected a count, got {other:?}")),
        }
    }
}

/// Parses one reply from the start of `buf`: the reply and the bytes it took, or `None` when
/// `buf` does not hold a whole reply yet. Lines end with `\r\n` (a bare `\n` is accepted).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut at = nl + 1;
    let bad = || format!("unexpected reply {:?}", String::from_utf8_lossy(line));
    let Some((&kind, rest)) = line.split_first() else {
        return Err(bad());
    };
    let num = || {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let reply = match kind {
        b':' => Reply::Int(num()?),
        b'+' => Reply::Status(text()),
        b'-' => Reply::Error(text()),
        b'$' => match usize::try_from(num()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                if buf.len() < at + len + 2 {
                    return Ok(None);
                }
                let b = buf[at..at + len].to_vec();
                at += len + 2;
                Reply::Bulk(Some(b))
            }
        },
        b'*' => {
            let n = usize::try_from(num()?).unwrap_or(0);
            let mut v = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let Some((r, used)) = parse_reply(&buf[at..])? else {
                    return Ok(None);
                };
                v.push(r);
                at += used;
            }
            Reply::Array(v)
        }
        _ => return Err(bad()),
    };
    Ok(Some((reply, at)))
}

/// Reads one reply from a blocking stream. `buf` holds what was read but not consumed yet: pass
/// the same one for every reply of a connection.
pub fn read_reply(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Reply, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((reply, used)) = parse_reply(buf)? {
            buf.drain(..used);
            return Ok(reply);
        }
        match r.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_request() {
        let mut out = Vec::new();
        encode_request(&mut out, &[b"JOIN", b"room:1"]);
        encode_request(&mut out, &[b"PING"]);
        assert_eq!(
            out,
            b"*2\r\n$4\r\nJOIN\r\n$6\r\nroom:1\r\n*1\r\n$4\r\nPING\r\n"
        );
    }

    #[test]
    fn parses_replies_whole_or_not_at_all() {
        let all = b"*3\r\n:1\r\n$-1\r\n$2\r\n42\r\n+OK\r\n-ERR no\r\n";
        let (r, used) = parse_reply(all).unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Array(vec![
                Reply::Int(1),
                Reply::Bulk(None),
                Reply::Bulk(Some(b"42".to_vec()))
            ])
        );
        assert_eq!(used, 21);
        for cut in 0..used {
            assert_eq!(parse_reply(&all[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (r, n) = parse_reply(&all[used..]).unwrap().unwrap();
        assert_eq!((r, n), (Reply::Status("OK".into()), 5));
        let (r, _) = parse_reply(&all[used + 5..]).unwrap().unwrap();
        assert_eq!(r, Reply::Error("ERR no".into()));
        assert!(parse_reply(b"?\r\n").is_err());
        assert!(parse_reply(b":x\r\n").is_err());
    }

    #[test]
    fn reads_replies_from_a_stream() {
        let mut s: &[u8] = b":7\r\n$3\r\nabc\r\n";
        let mut buf = Vec::new();
        assert_eq!(read_reply(&mut s, &mut buf).unwrap().count(), Ok(7));
        assert_eq!(read_reply(&mut s, &mut buf).unwrap().text(), "abc");
        assert!(read_reply(&mut s, &mut buf).is_err());
    }
}
