//! The client side of RESP: one request encoder and one reply reader, for the tests, the perf
//! harness and any program that talks to `headcount serve` without a Redis client library.
//!
//! ```no_run
//! use headcount_server::resp::client::{Client, Value};
//!
//! let mut c = Client::connect("127.0.0.1:7379".parse().unwrap())?;
//! assert_eq!(c.cmd(&["JOIN", "room:1"])?, Value::Int(1));
//! assert_eq!(c.cmd(&["COUNT", "room:1"])?.as_int(), Some(1));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! - [`encode_request`] appends one request (a RESP array of bulk strings, what every client
//!   library sends) to a buffer; pipelining is calling it several times before writing.
//! - [`decode_reply`] reads one reply from the start of a buffer, or says it is not whole yet:
//!   for event loops that read into their own buffers.
//! - [`read_reply`] reads one reply from a blocking reader.
//! - [`Client`] is a blocking connection with a read timeout built from those.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Appends one request with these arguments (the command name first) to `out`.
pub fn encode_request<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One reply, RESP2 or RESP3.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR …`: the message, its code first.
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3's `_`.
    Null,
    /// `*n`
    Array(Vec<Value>),
    /// RESP3's `%n`.
    Map(Vec<(Value, Value)>),
    /// RESP3's `#t` / `#f`.
    Bool(bool),
    /// RESP3's verbatim string (`=n\r\ntxt:…`), without its format prefix.
    Text(String),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The text of a simple string, an error, a bulk string (lossy UTF-8) or a verbatim string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) | Value::Text(s) | Value::Error(s) => Some(s.clone()),
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// A reply that is not RESP.
fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad number {:?}", String::from_utf8_lossy(digits))))
}

/// Reads one reply from the start of `buf`: the reply and the bytes it took, or `None` when
/// `buf` does not hold a whole reply yet. An error means the bytes are not RESP.
pub fn decode_reply(buf: &[u8]) -> io::Result<Option<(Value, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        return Err(bad("empty reply line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let mut at = end + 2;
    let v = match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(rest)?),
        b'_' => Value::Null,
        b'#' => Value::Bool(rest == b"t"),
        b'$' | b'=' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Some((Value::Null, at)));
            }
            let n = n as usize;
            if buf.len() < at + n + 2 {
                return Ok(None);
            }
            let b = &buf[at..at + n];
            at += n + 2;
            if kind == b'=' {
                Value::Text(String::from_utf8_lossy(b.get(4..).unwrap_or_default()).into_owned())
            } else {
                Value::Bulk(b.to_vec())
            }
        }
        b'*' | b'%' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Some((Value::Null, at)));
            }
            let items = if kind == b'%' { 2 * n } else { n };
            let mut got = Vec::with_capacity(items.min(1024) as usize);
            for _ in 0..items {
                let Some((v, used)) = decode_reply(&buf[at..])? else {
                    return Ok(None);
                };
                got.push(v);
                at += used;
            }
            if kind == b'%' {
                let mut it = got.into_iter();
                Value::Map(std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect())
            } else {
                Value::Array(got)
            }
        }
        other => return Err(bad(format!("unexpected reply type {:?}", other as char))),
    };
    Ok(Some((v, at)))
}

/// Reads one reply from `r`, blocking until it is whole.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Value> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "reply line {:?} does not end with CRLF",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    let (&kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(rest)?),
        b'_' => Value::Null,
        b'#' => Value::Bool(rest == b"t"),
        b'$' | b'=' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Value::Null);
            }
            let mut b = vec![0; n as usize + 2];
            r.read_exact(&mut b)?;
            b.truncate(n as usize);
            if kind == b'=' {
                Value::Text(String::from_utf8_lossy(b.get(4..).unwrap_or_default()).into_owned())
            } else {
                Value::Bulk(b)
            }
        }
        b'*' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Value::Null);
            }
            Value::Array((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?)
        }
        b'%' => {
            let n = number(rest)?;
            let mut m = Vec::with_capacity(n.clamp(0, 1024) as usize);
            for _ in 0..n {
                m.push((read_reply(r)?, read_reply(r)?));
            }
            Value::Map(m)
        }
        other => return Err(bad(format!("unexpected reply type {:?}", other as char))),
    })
}

/// A blocking connection: requests written whole, replies read with a timeout (10 s unless
/// changed with [`Client::set_timeout`]).
#[derive(Debug)]
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
            buf: Vec::new(),
        })
    }

    /// Connects to `addr`, giving up after `timeout`; reads and writes then time out after
    /// `timeout` too (change the reads' with [`Client::set_timeout`]). For probes, where a
    /// black-holed address must not hang for the system's connect timeout.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
            buf: Vec::new(),
        })
    }

    /// How long a read may wait (`None`: for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.w.set_read_timeout(t)
    }

    /// Sends one request without waiting for its reply (pipelining).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        self.buf.clear();
        encode_request(&mut self.buf, args);
        self.w.write_all(&self.buf)
    }

    /// Sends bytes as they are (inline commands, malformed input, pieces of a request).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> io::Result<Value> {
        read_reply(&mut self.r)
    }

    /// Sends one request and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Value> {
        self.send(args)?;
        self.read()
    }

    /// The buffered reader of the connection's replies (to read raw bytes, or to wait for EOF).
    pub fn reader(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.r
    }

    /// The connection's socket (another handle on it: for writes with a timeout, say).
    pub fn stream(&self) -> io::Result<TcpStream> {
        self.w.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Parsed, Reply, RequestLimits, parse};

    #[test]
    fn requests_parse_back_and_replies_read_back() {
        let mut req = Vec::new();
        encode_request(&mut req, &["JOIN", "a b", ""]);
        encode_request(&mut req, &[b"PING".as_slice()]);
        let limits = RequestLimits {
            max_args: 8,
            max_arg_len: 64,
        };
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let Ok(Parsed::Request(n)) = parse(&req, &limits, &mut args, &mut scratch) else {
            panic!("{req:?}")
        };
        let got: Vec<&[u8]> = args.iter().map(|r| &req[r.clone()]).collect();
        assert_eq!(got, [&b"JOIN"[..], b"a b", b""]);
        assert_eq!(&req[n..], b"*1\r\n$4\r\nPING\r\n");

        for resp3 in [false, true] {
            let mut out = Vec::new();
            let mut r = Reply {
                out: &mut out,
                resp3,
            };
            r.map(2);
            r.bulk(b"k");
            r.int(-3);
            r.bulk(b"t");
            r.text("a:1\r\nb");
            r.null();
            r.boolean(true);
            r.error("ERR x");
            r.simple("OK");
            let mut want = if resp3 {
                vec![Value::Map(vec![
                    (Value::Bulk(b"k".to_vec()), Value::Int(-3)),
                    (Value::Bulk(b"t".to_vec()), Value::Text("a:1\r\nb".into())),
                ])]
            } else {
                vec![Value::Array(vec![
                    Value::Bulk(b"k".to_vec()),
                    Value::Int(-3),
                    Value::Bulk(b"t".to_vec()),
                    Value::Bulk(b"a:1\r\nb".to_vec()),
                ])]
            };
            want.extend([
                Value::Null,
                if resp3 {
                    Value::Bool(true)
                } else {
                    Value::Int(1)
                },
                Value::Error("ERR x".into()),
                Value::Simple("OK".into()),
            ]);
            // Blocking, and from a buffer whole or cut anywhere.
            let mut rd = &out[..];
            let read: Vec<Value> = want.iter().map(|_| read_reply(&mut rd).unwrap()).collect();
            assert_eq!(read, want);
            let (mut at, mut decoded) = (0, Vec::new());
            while let Some((v, n)) = decode_reply(&out[at..]).unwrap() {
                decoded.push(v);
                at += n;
            }
            assert_eq!((decoded, at), (want, out.len()));
            for cut in 0..out.len() {
                let whole_first = decode_reply(&out[..cut]).unwrap();
                assert!(whole_first.is_none_or(|(_, n)| n <= cut));
            }
        }
    }
}
