//! tailsrv-fetch's side of the HTTP face: the request it sends and the response head it
//! reads. Pure logic; `fetch` does the I/O.
//!
//! Why HTTP and not the raw header? The response head says where the stream starts
//! (`Tailsrv-Start`), how long the file is (`Tailsrv-Size`) and which file it is
//! (`Tailsrv-File`): `--last`, `--new` and `--lines` start at an exact offset without
//! reading the file, a rotation shows in the identity at once, and `--to-end` knows where
//! to stop. The body is the same bytes a raw client gets.

/// The longest response head read.
pub const MAX_HEAD: usize = 16 << 10;

/// Where to ask the stream to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// At byte N (`from=N`).
    From(u64),
    /// The last N bytes (`last=N`).
    Last(u64),
    /// The last N lines (`lines=N`).
    Lines(u64),
}

impl Ask {
    /// The `/stream` query for this start.
    pub fn query(self) -> String {
        match self {
            Ask::From(n) => format!("from={n}"),
            Ask::Last(0) => "new".into(),
            Ask::Last(n) => format!("last={n}"),
            Ask::Lines(n) => format!("lines={n}"),
        }
    }
}

/// The request for the stream from `ask`, to `host` (HOST:PORT as given).
pub fn request(ask: Ask, host: &str) -> String {
    format!(
        "GET /stream?{} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tailsrv-fetch/{}\r\n\r\n",
        ask.query(),
        env!("CARGO_PKG_VERSION")
    )
}

/// What a `200` to `/stream` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The offset of the body's first byte.
    pub start: u64,
    /// The file's size when the response began.
    pub size: u64,
    /// The file's identity, if the server named it.
    pub file: Option<String>,
}

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// No complete head yet (and under [`MAX_HEAD`]).
    Partial,
    /// A stream; the body starts at byte `head_len` of what was received.
    Stream { stream: Stream, head_len: usize },
    /// Another status: the server refused, with the reason its body gives (as far as it
    /// arrived with the head).
    Refused { status: u16, reason: String },
    /// Not an HTTP response a tailsrv sends.
    Malformed(String),
}

/// Parses a response head.
pub fn parse(received: &[u8]) -> Response {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    let head_len = match response.parse(received) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if received.len() < MAX_HEAD => return Response::Partial,
        Ok(httparse::Status::Partial) => {
            return Response::Malformed("a response head over 16 KiB".into())
        }
        Err(e) => return Response::Malformed(format!("a bad response head: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let field = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if status != 200 {
        let body = String::from_utf8_lossy(&received[head_len..]);
        let reason = body.lines().next().unwrap_or_default().trim();
        let reason = if reason.is_empty() {
            response.reason.unwrap_or_default()
        } else {
            reason
        };
        return Response::Refused {
            status,
            reason: reason.chars().take(200).collect(),
        };
    }
    let number = |name: &str| -> Result<u64, String> {
        field(name)
            .ok_or_else(|| format!("no {name} in the response (not a tailsrv /stream?)"))?
            .trim()
            .parse()
            .map_err(|_| format!("{name} is not a number"))
    };
    let (start, size) = match (number("Tailsrv-Start"), number("Tailsrv-Size")) {
        (Ok(start), Ok(size)) => (start, size),
        (Err(e), _) | (_, Err(e)) => return Response::Malformed(e),
    };
    Response::Stream {
        stream: Stream {
            start,
            size,
            file: field("Tailsrv-File").map(|f| f.trim().to_string()),
        },
        head_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_in_the_servers_terms() {
        assert_eq!(Ask::From(7).query(), "from=7");
        assert_eq!(Ask::Last(0).query(), "new");
        assert_eq!(Ask::Last(100).query(), "last=100");
        assert_eq!(Ask::Lines(10).query(), "lines=10");
        let r = request(Ask::From(0), "h:1");
        assert!(
            r.starts_with("GET /stream?from=0 HTTP/1.1\r\nHost: h:1\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn reads_the_stream_head_and_where_the_body_begins() {
        let got = b"HTTP/1.1 200 OK\r\nTailsrv-Start: 5\r\nTailsrv-Size: 9\r\n\
                    Tailsrv-File: a-b-c\r\n\r\nbody";
        let head_len = got.len() - 4;
        assert_eq!(
            parse(got),
            Response::Stream {
                stream: Stream {
                    start: 5,
                    size: 9,
                    file: Some("a-b-c".into())
                },
                head_len
            }
        );
        assert_eq!(parse(&got[..20]), Response::Partial);
        let no_file = b"HTTP/1.1 200 OK\r\nTailsrv-Start: 0\r\nTailsrv-Size: 0\r\n\r\n";
        assert!(matches!(
            parse(no_file),
            Response::Stream {
                stream: Stream { file: None, .. },
                ..
            }
        ));
    }

    #[test]
    fn refusals_and_strangers_are_told_apart() {
        assert_eq!(
            parse(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nbad lines=x\n"),
            Response::Refused {
                status: 400,
                reason: "bad lines=x".into()
            }
        );
        assert_eq!(
            parse(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Response::Refused {
                status: 404,
                reason: "Not Found".into()
            }
        );
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
            Response::Malformed(e) if e.contains("Tailsrv-Start")
        ));
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n"),
            Response::Malformed(_)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD, b'a');
        assert!(matches!(parse(&huge), Response::Malformed(_)));
    }
}
