//! The request parser: strict, flat, allocation-free.
//!
//! A client sends either a RESP array of bulk strings (`*2\r\n$4\r\nJOIN\r\n$4\r\nroom\r\n`,
//! what every Redis client library sends) or an inline command (`JOIN room\r\n`, what a person
//! types into `telnet`). That is all Redis itself accepts as a request, so that is all this
//! parser accepts; anything else is a protocol error, answered and followed by closing the
//! connection, like Redis does.
//!
//! Why not the `redis-protocol` crate for this: it decodes any RESP value, nested arrays
//! included, by recursion, and 400 KB of `*1\r\n*1\r\n…` overflows a thread's stack and aborts
//! the whole process (measured with redis-protocol 6.0.0: 10,000 levels decode, 100,000 abort).
//! It also builds a `Vec` per request. This parser is flat, allocates nothing (the caller's
//! argument list is reused), and checks the limits before it buffers anything. The crate is the
//! oracle in this module's property tests.

use std::ops::Range;

/// RequestLimits on one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Arguments per command, the command name included.
    pub max_args: usize,
    /// Bytes per argument.
    pub max_arg_len: usize,
}

/// Longest inline command or RESP header line, like Redis's `PROTO_INLINE_MAX_SIZE`.
pub const MAX_INLINE: usize = 64 * 1024;

/// Why a request was refused. The connection is closed after the error reply: the rest of its
/// input cannot be trusted to start at a request boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Not RESP: the message says what was expected.
    Syntax(&'static str),
    /// More arguments than [`RequestLimits::max_args`].
    TooManyArgs(usize),
    /// An argument longer than [`RequestLimits::max_arg_len`].
    ArgTooLong(usize),
    /// A header or inline line longer than [`MAX_INLINE`].
    LineTooLong,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Syntax(m) => write!(f, "Protocol error: {m}"),
            ProtoError::TooManyArgs(max) => {
                write!(f, "Protocol error: too many arguments (limit {max})")
            }
            ProtoError::ArgTooLong(max) => {
                write!(f, "Protocol error: argument too long (limit {max} bytes)")
            }
            ProtoError::LineTooLong => write!(f, "Protocol error: too big inline request"),
        }
    }
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request of this many bytes; its arguments are ranges into the buffer (none for
    /// an empty request, which is skipped like Redis does).
    Request(usize),
    /// A whole inline request of this many bytes with quoted arguments: the arguments are
    /// ranges into the caller's scratch buffer, unquoted.
    Unquoted(usize),
    /// Not a whole request yet: nothing can parse before the buffer holds `need` bytes (so a
    /// large request sent in small pieces is not re-parsed on every read).
    Incomplete {
        /// The least length the buffer must reach before parsing again.
        need: usize,
    },
}

/// Finds the first `\r\n` at or after `from`; returns the index of the `\r`.
fn crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\r') {
        let at = i + off;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => i = at + 1,
            None => return None,
        }
    }
    None
}

/// Parses a decimal length as Redis does (`string2ll`: no leading zeros, no spaces). Negative
/// lengths come back as `None`.
fn length(digits: &[u8], max: usize, err: &'static str) -> Result<Option<usize>, ProtoError> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty()
        || digits.len() > 18
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits[0] == b'0' && (digits.len() > 1 || neg))
    {
        return Err(ProtoError::Syntax(err));
    }
    if neg {
        return Ok(None);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    // Anything over the limit is reported as such by the caller; saturate instead of wrapping.
    Ok(Some(
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(max.saturating_add(1)),
    ))
}

/// Parses one request at the start of `buf` into `args`: ranges into `buf`, or into
/// `scratch` for an inline request with quotes ([`Parsed::Unquoted`]).
pub fn parse(
    buf: &[u8],
    limits: &RequestLimits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtoError> {
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, limits, args),
        Some(_) => parse_inline(buf, limits, args, scratch),
    }
}

fn parse_multibulk(
    buf: &[u8],
    limits: &RequestLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtoError> {
    let more = Parsed::Incomplete {
        need: buf.len() + 1,
    };
    let Some(end) = crlf(buf, 1) else {
        return if buf.len() > MAX_INLINE {
            Err(ProtoError::LineTooLong)
        } else {
            Ok(more)
        };
    };
    let n = match length(&buf[1..end], limits.max_args, "invalid multibulk length")? {
        // Zero or negative: an empty request, skipped (as Redis does).
        None | Some(0) => return Ok(Parsed::Request(end + 2)),
        Some(n) if n > limits.max_args => return Err(ProtoError::TooManyArgs(limits.max_args)),
        Some(n) => n,
    };
    let mut at = end + 2;
    for _ in 0..n {
        match buf.get(at) {
            None => return Ok(more),
            Some(b'$') => {}
            Some(_) => return Err(ProtoError::Syntax("expected '$'")),
        }
        let Some(end) = crlf(buf, at + 1) else {
            return if buf.len() - at > 32 {
                Err(ProtoError::Syntax("invalid bulk length"))
            } else {
                Ok(more)
            };
        };
        let len = match length(&buf[at + 1..end], limits.max_arg_len, "invalid bulk length")? {
            None => return Err(ProtoError::Syntax("invalid bulk length")),
            Some(l) if l > limits.max_arg_len => {
                return Err(ProtoError::ArgTooLong(limits.max_arg_len));
            }
            Some(l) => l,
        };
        let start = end + 2;
        let stop = start + len;
        if buf.len() < stop + 2 {
            return Ok(Parsed::Incomplete { need: stop + 2 });
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtoError::Syntax("bulk string not followed by CRLF"));
        }
        args.push(start..stop);
        at = stop + 2;
    }
    Ok(Parsed::Request(at))
}

fn parse_inline(
    buf: &[u8],
    limits: &RequestLimits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtoError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err(ProtoError::LineTooLong)
        } else {
            Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            })
        };
    };
    if nl > MAX_INLINE {
        return Err(ProtoError::LineTooLong);
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &buf[..line_end];
    if line.iter().any(|&b| b == b'"' || b == b'\'') {
        split_quoted(line, limits, args, scratch)?;
        return Ok(Parsed::Unquoted(nl + 1));
    }
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < line_end && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > start {
            push_arg(args, start..i, limits)?;
        }
    }
    Ok(Parsed::Request(nl + 1))
}

fn push_arg(
    args: &mut Vec<Range<usize>>,
    r: Range<usize>,
    limits: &RequestLimits,
) -> Result<(), ProtoError> {
    if args.len() == limits.max_args {
        return Err(ProtoError::TooManyArgs(limits.max_args));
    }
    if r.len() > limits.max_arg_len {
        return Err(ProtoError::ArgTooLong(limits.max_arg_len));
    }
    args.push(r);
    Ok(())
}

/// Splits an inline line the way Redis's `sdssplitargs` does: `"…"` with `\n`, `\r`, `\t`,
/// `\b`, `\a`, `\xHH` and `\<c>` escapes, `'…'` with `\'`; a closing quote must end the
/// argument. The unquoted arguments go to `scratch`.
fn split_quoted(
    line: &[u8],
    limits: &RequestLimits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    const UNBALANCED: ProtoError = ProtoError::Syntax("unbalanced quotes in request");
    scratch.clear();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        // A NUL ends the line, as in Redis (whose sdssplitargs reads a C string).
        if i == line.len() || line[i] == 0 {
            return Ok(());
        }
        let start = scratch.len();
        let (mut inq, mut insq) = (false, false);
        loop {
            let Some(&c) = line.get(i) else {
                if inq || insq {
                    return Err(UNBALANCED);
                }
                break;
            };
            let ends_arg = |j: usize| line.get(j).is_none_or(u8::is_ascii_whitespace);
            if inq {
                if c == b'\\'
                    && i + 3 < line.len()
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    scratch.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 4;
                    continue;
                } else if c == b'\\' && i + 1 < line.len() {
                    scratch.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                } else if c == b'"' {
                    if !ends_arg(i + 1) {
                        return Err(UNBALANCED);
                    }
                    i += 1;
                    break;
                }
                scratch.push(c);
            } else if insq {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    scratch.push(b'\'');
                    i += 2;
                    continue;
                } else if c == b'\'' {
                    if !ends_arg(i + 1) {
                        return Err(UNBALANCED);
                    }
                    i += 1;
                    break;
                }
                scratch.push(c);
            } else {
                match c {
                    // A NUL ends the argument here, and the line at the next turn of the loop.
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    _ => scratch.push(c),
                }
            }
            i += 1;
        }
        push_arg(args, start..scratch.len(), limits)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_args: 16,
        max_arg_len: 64,
    };

    fn args_of(buf: &[u8]) -> Result<(Parsed, Vec<Vec<u8>>), ProtoError> {
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let p = parse(buf, &LIMITS, &mut args, &mut scratch)?;
        let from = if matches!(p, Parsed::Unquoted(_)) {
            &scratch[..]
        } else {
            buf
        };
        let got = args.into_iter().map(|r| from[r].to_vec()).collect();
        Ok((incomplete(p), got))
    }

    /// `Incomplete` without its hint, for comparisons.
    fn incomplete(p: Parsed) -> Parsed {
        match p {
            Parsed::Incomplete { .. } => Parsed::Incomplete { need: 0 },
            p => p,
        }
    }

    const MORE: Parsed = Parsed::Incomplete { need: 0 };

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        use redis_protocol::resp2::{encode::encode, types::OwnedFrame};
        let frame = OwnedFrame::Array(args.iter().cloned().map(OwnedFrame::BulkString).collect());
        let mut buf = vec![0; 64 * 1024];
        let n = encode(&mut buf, &frame, false).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn multibulk_and_inline() {
        let (p, a) = args_of(b"*2\r\n$4\r\nJOIN\r\n$4\r\nroom\r\nrest").unwrap();
        assert_eq!(p, Parsed::Request(24));
        assert_eq!(a, vec![b"JOIN".to_vec(), b"room".to_vec()]);
        let (p, a) = args_of(b"  JOIN   room\tb \r\nPING\r\n").unwrap();
        assert_eq!(p, Parsed::Request(18));
        assert_eq!(a, vec![b"JOIN".to_vec(), b"room".to_vec(), b"b".to_vec()]);
        // Empty requests are consumed and skipped.
        assert_eq!(args_of(b"*0\r\n").unwrap(), (Parsed::Request(4), vec![]));
        assert_eq!(args_of(b"*-1\r\n").unwrap(), (Parsed::Request(5), vec![]));
        assert_eq!(args_of(b"*-5\r\n").unwrap(), (Parsed::Request(5), vec![]));
        // Quoted inline arguments, as redis-cli and telnet users write them.
        let (p, a) = args_of(b"ECHO \"a b\" 'c\\'d' \"\\x41\\n\"\r\n").unwrap();
        assert_eq!(p, Parsed::Unquoted(28));
        assert_eq!(
            a,
            vec![
                b"ECHO".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        let unbalanced = Err(ProtoError::Syntax("unbalanced quotes in request"));
        assert_eq!(args_of(b"ECHO \"ab\r\n"), unbalanced);
        assert_eq!(args_of(b"ECHO \"a\"b\r\n"), unbalanced);
        assert_eq!(args_of(b"\r\n").unwrap(), (Parsed::Request(2), vec![]));
        // A NUL ends a quoted inline line, as in Redis (found by the fuzzer: the parser emitted
        // empty arguments at the NUL until the argument limit).
        let (p, a) = args_of(b"ECHO \"a\" b\0c \"d\r\n").unwrap();
        assert_eq!(p, Parsed::Unquoted(17));
        assert_eq!(a, vec![b"ECHO".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(args_of(b"\0\"\n").unwrap(), (Parsed::Unquoted(3), vec![]));
        // Binary-safe bulk strings.
        let (_, a) = args_of(b"*1\r\n$4\r\na\r\nb\r\n").unwrap();
        assert_eq!(a, vec![b"a\r\nb".to_vec()]);
    }

    #[test]
    fn incomplete_until_the_last_byte() {
        let req = b"*3\r\n$4\r\nJOIN\r\n$1\r\na\r\n$2\r\nbc\r\n";
        for cut in 0..req.len() {
            assert_eq!(args_of(&req[..cut]).unwrap().0, MORE, "cut {cut}");
        }
        assert_eq!(args_of(req).unwrap().0, Parsed::Request(req.len()));
        assert_eq!(args_of(b"PING").unwrap().0, MORE);
        // The hint: a bulk string whose length is known is not re-parsed before it is whole.
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        assert_eq!(
            parse(
                b"*2\r\n$4\r\nJOIN\r\n$10\r\nab",
                &LIMITS,
                &mut args,
                &mut scratch
            ),
            Ok(Parsed::Incomplete {
                need: 14 + 5 + 10 + 2
            })
        );
    }

    #[test]
    fn garbage_and_limits_are_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n+OK\r\n",
            b"*1\r\n*1\r\n$1\r\na\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$1x\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*01\r\n",
            b"*1\r\n$01\r\na\r\n",
            b"*99999999999999999999\r\n",
        ] {
            assert!(
                matches!(args_of(bad), Err(ProtoError::Syntax(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(args_of(b"*17\r\n"), Err(ProtoError::TooManyArgs(16)));
        assert_eq!(args_of(b"*1\r\n$65\r\n"), Err(ProtoError::ArgTooLong(64)));
        assert_eq!(
            args_of(&[b'a'; 65][..]).map(|p| p.0),
            Ok(MORE),
            "a long inline line is fine until MAX_INLINE"
        );
        let mut long = vec![b'a'; 65];
        long.push(b'\n');
        assert_eq!(args_of(&long), Err(ProtoError::ArgTooLong(64)));
        assert_eq!(
            args_of(&vec![b'a'; MAX_INLINE + 1]),
            Err(ProtoError::LineTooLong)
        );
        assert_eq!(
            args_of(&[&b"*1\r\n$"[..], &[b'1'; 40]].concat()),
            Err(ProtoError::Syntax("invalid bulk length"))
        );
        // The nesting that overflows a recursive decoder is one error here.
        let deep = b"*1\r\n".repeat(200_000);
        assert_eq!(args_of(&deep), Err(ProtoError::Syntax("expected '$'")));
    }

    proptest! {
        /// Whatever the crate encodes, this parser reads back, whole or cut anywhere.
        #[test]
        fn agrees_with_the_crate(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let buf = encode(&args);
            let (p, got) = args_of(&buf).unwrap();
            prop_assert_eq!(p, Parsed::Request(buf.len()));
            prop_assert_eq!(got, args);
            let cut = cut.index(buf.len());
            prop_assert_eq!(args_of(&buf[..cut]).unwrap().0, MORE);
            // The hint never asks for more than the whole request.
            let (mut a, mut s) = (Vec::new(), Vec::new());
            if let Ok(Parsed::Incomplete { need }) = parse(&buf[..cut], &LIMITS, &mut a, &mut s) {
                prop_assert!(need > cut && need <= buf.len());
            }
        }

        /// Arbitrary bytes never panic, and a request is never longer than its input.
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (mut args, mut scratch) = (Vec::new(), Vec::new());
            match parse(&buf, &LIMITS, &mut args, &mut scratch) {
                Ok(Parsed::Request(n)) => {
                    prop_assert!(n <= buf.len());
                    prop_assert!(args.iter().all(|r| r.end <= n));
                }
                Ok(Parsed::Unquoted(n)) => {
                    prop_assert!(n <= buf.len());
                    prop_assert!(args.iter().all(|r| r.end <= scratch.len()));
                }
                Ok(Parsed::Incomplete { need }) => prop_assert!(need > buf.len()),
                Err(_) => {}
            }
        }
    }
}
