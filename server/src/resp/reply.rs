//! The reply writer: replies are written straight into an output buffer; RESP3 forms (maps,
//! nulls, booleans, verbatim text) are used after a client asks for protocol 3 with `HELLO 3`.

/// Writes replies into a buffer, in RESP2 or (after `HELLO 3`) RESP3.
#[derive(Debug)]
pub struct Reply<'a> {
    /// Where the replies go.
    pub out: &'a mut Vec<u8>,
    /// Write RESP3 forms (the client said `HELLO 3`).
    pub resp3: bool,
}

impl Reply<'_> {
    fn line(&mut self, prefix: u8, n: impl itoa::Integer) {
        self.out.push(prefix);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// `+OK`-style status. `s` must not contain CR or LF.
    pub fn simple(&mut self, s: &str) {
        self.out.push(b'+');
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// An error; `msg` starts with its code (`ERR`, `NOAUTH`, …). CR and LF become spaces.
    pub fn error(&mut self, msg: &str) {
        self.out.push(b'-');
        self.out.extend(
            msg.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.out.extend_from_slice(b"\r\n");
    }

    /// An integer.
    pub fn int(&mut self, n: i64) {
        self.line(b':', n);
    }

    /// An unsigned integer (saturated at `i64::MAX`).
    pub fn uint(&mut self, n: u64) {
        self.int(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A bulk (binary-safe) string.
    pub fn bulk(&mut self, b: &[u8]) {
        self.line(b'$', b.len());
        self.out.extend_from_slice(b);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A null: `_` in RESP3, a null bulk string in RESP2.
    pub fn null(&mut self) {
        if self.resp3 {
            self.out.extend_from_slice(b"_\r\n");
        } else {
            self.out.extend_from_slice(b"$-1\r\n");
        }
    }

    /// The header of an array of `n` items (they follow).
    pub fn array(&mut self, n: usize) {
        self.line(b'*', n);
    }

    /// A map of `n` pairs (RESP3), or a flat array of `2n` items (RESP2).
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.line(b'%', n);
        } else {
            self.line(b'*', 2 * n);
        }
    }

    /// A boolean (RESP3), or 1 / 0 (RESP2).
    pub fn boolean(&mut self, b: bool) {
        if self.resp3 {
            self.out
                .extend_from_slice(if b { b"#t\r\n" } else { b"#f\r\n" });
        } else {
            self.int(i64::from(b));
        }
    }

    /// Human-readable text (`INFO`): a verbatim string in RESP3, a bulk string in RESP2.
    pub fn text(&mut self, s: &str) {
        if self.resp3 {
            self.line(b'=', s.len() + 4);
            self.out.extend_from_slice(b"txt:");
            self.out.extend_from_slice(s.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.bulk(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_forms() {
        let mut out = Vec::new();
        let mut r = Reply {
            out: &mut out,
            resp3: false,
        };
        r.simple("OK");
        r.error("ERR bad\r\nthing");
        r.int(-3);
        r.bulk(b"hi");
        r.null();
        r.map(1);
        r.boolean(true);
        r.text("a:1");
        assert_eq!(
            out,
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n:1\r\n$3\r\na:1\r\n"
        );
        let mut out = Vec::new();
        let mut r = Reply {
            out: &mut out,
            resp3: true,
        };
        r.null();
        r.map(1);
        r.boolean(false);
        r.text("a:1");
        assert_eq!(out, b"_\r\n%1\r\n#f\r\n=7\r\ntxt:a:1\r\n");
    }
}
