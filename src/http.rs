//! The HTTP face: telling an HTTP request from a raw header, parsing its head (with
//! `httparse`), deciding what to serve ([`route`]) and writing the response head. Pure
//! logic, no I/O: `client` reads and sends.
//!
//! The body of `GET /stream` is the file's bytes from the start offset, sent by the same
//! sendfile path as raw clients, with neither `Content-Length` nor chunked encoding: the
//! response ends when either side closes. So the only HTTP-specific work per client is one
//! parse and one short write.

use crate::file_id::FileId;
use crate::header::Start;
use std::fmt::Write;

/// The largest request head accepted, request line and header fields included.
///
/// Why 8 KiB? It is what common servers allow by default, more than any browser or curl
/// sends for a short path, and the buffer exists only while the head is being read.
pub const MAX_HEAD: usize = 8 << 10;

/// The most header fields parsed; more is answered 431.
const MAX_FIELDS: usize = 64;

/// The longest method token that makes a connection HTTP.
const MAX_METHOD: usize = 16;

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A raw header (or garbage, which the raw grammar refuses).
    Raw,
    /// An HTTP request line: an upper-case method token and a space.
    Http,
    /// Too few bytes to tell.
    Unsure,
}

/// Tells an HTTP request from a raw header by its first bytes.
///
/// Why upper-case letters and a space? Every HTTP method in use is an upper-case token, and
/// the raw grammar refuses any header that starts with one: so a client that works today
/// keeps its meaning, and only bytes the raw grammar would close anyway can be taken for
/// HTTP (such a client then gets an HTTP error instead of a bare close; never file data).
pub fn kind(first: &[u8]) -> Kind {
    for (i, &b) in first.iter().enumerate() {
        match b {
            b'A'..=b'Z' if i < MAX_METHOD => {}
            b' ' if i > 0 => return Kind::Http,
            _ => return Kind::Raw,
        }
    }
    Kind::Unsure
}

/// Why a request head was refused, as the status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not a well-formed HTTP/1.x request head (or it ended before its blank line).
    Malformed,
    /// 431: longer than [`MAX_HEAD`], or more than 64 header fields.
    TooLarge,
}

/// What the bytes received so far say about the request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is complete: its method and request target.
    Done { method: String, target: String },
    /// Incomplete and under the size limit: keep reading.
    NeedMore,
    /// Refused.
    Bad(HeadError),
}

/// Looks at the bytes of a request head received so far.
pub fn parse_head(received: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(received) {
        Ok(httparse::Status::Complete(_)) => Head::Done {
            method: request.method.unwrap_or_default().to_string(),
            target: request.path.unwrap_or_default().to_string(),
        },
        Ok(httparse::Status::Partial) if received.len() >= MAX_HEAD => {
            Head::Bad(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Head::NeedMore,
        Err(httparse::Error::TooManyHeaders) => Head::Bad(HeadError::TooLarge),
        Err(_) => Head::Bad(HeadError::Malformed),
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/stream`: the file from `start` on; with `head_only` (HEAD), the headers alone.
    Stream { start: Start, head_only: bool },
    /// `/`: the web page for a browser, a short plain-text help for anything else
    /// ([`accepts_html`] tells them apart).
    Index { head_only: bool },
    /// Any other path.
    NotFound { head_only: bool },
    /// A method other than GET and HEAD.
    BadMethod,
    /// A bad query; the reason, one line.
    BadRequest(String),
}

/// Where a `/stream` with no start parameter starts: the last 10 lines, as `tail -f` does.
pub const DEFAULT_START: Start = Start::Lines(10);

/// Maps a request's method and target to what to serve.
///
/// Why one pure function? Every decision about a request is here, so the table of requests
/// and answers is one unit test, and adding a path is one arm.
pub fn route(method: &str, target: &str) -> Route {
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    match path {
        "/stream" => match stream_start(query.unwrap_or_default()) {
            Ok(start) => Route::Stream { start, head_only },
            Err(why) => Route::BadRequest(why),
        },
        "/" => Route::Index { head_only },
        _ => Route::NotFound { head_only },
    }
}

/// The start a `/stream` query asks for: at most one of `from=N`, `last=N`, `lines=N`,
/// `new`; none means [`DEFAULT_START`].
fn stream_start(query: &str) -> Result<Start, String> {
    let mut start = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let number = |value: Option<&str>| -> Result<u64, String> {
            let value = value.unwrap_or_default();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{key} takes a whole number, e.g. {key}=100"));
            }
            value
                .parse::<u64>()
                .ok()
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| format!("{key} is too large (at most {})", i64::MAX))
        };
        let this = match key {
            "from" => Start::At(number(value)?),
            "last" => Start::FromEnd(number(value)?),
            "lines" => Start::Lines(number(value)?),
            "new" if value.is_none_or(str::is_empty) => Start::FromEnd(0),
            "new" => return Err("new takes no value".into()),
            _ => {
                return Err(format!(
                    "unknown parameter {:?}: use one of from=N, last=N, lines=N, new",
                    truncate(key)
                ))
            }
        };
        if start.replace(this).is_some() {
            return Err("more than one start: use one of from=N, last=N, lines=N, new".into());
        }
    }
    Ok(start.unwrap_or(DEFAULT_START))
}

/// A client's text, shortened and made printable for an error message.
fn truncate(text: &str) -> String {
    text.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The response head of `/stream`: the body that follows is the file from `start` on.
pub fn stream_head(start: u64, size: u64, file: Option<FileId>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("HTTP/1.1 200 OK\r\n");
    for (name, value) in PLAIN_TEXT {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str("Connection: close\r\n");
    let _ = write!(out, "Tailsrv-Start: {start}\r\nTailsrv-Size: {size}\r\n");
    if let Some(id) = file {
        let _ = write!(out, "Tailsrv-File: {id}\r\n");
    }
    out.push_str("\r\n");
    out
}

/// The header fields of tailsrv's plain-text answers: UTF-8 text, not to be sniffed as
/// anything else, nor stored.
pub const PLAIN_TEXT: &[(&str, &str)] = &[
    ("Content-Type", "text/plain; charset=utf-8"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
];

/// A complete HTTP/1.1 response that closes the connection: the status, the header fields of
/// `common` (such as [`PLAIN_TEXT`]) and then of `extra`, the body's length, and the body.
/// With `head_only`, the headers the full response would have and no body. Every response
/// tailsrv writes whole (the web page, the help, errors, the metrics) is made here.
pub fn reply(
    status: &str,
    common: &[(&str, &str)],
    extra: &[(&str, &str)],
    body: &str,
    head_only: bool,
) -> String {
    let mut out = String::with_capacity(body.len() + 256);
    let _ = write!(out, "HTTP/1.1 {status}\r\n");
    for (name, value) in common.iter().chain(extra) {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out
}

/// The methods served, for the `Allow` header of a 405.
pub const ALLOW: &str = "GET, HEAD";

/// The response to a refused head.
pub fn refusal(error: HeadError) -> String {
    match error {
        HeadError::Malformed => reply(
            "400 Bad Request",
            PLAIN_TEXT,
            &[],
            "not a well-formed HTTP/1.1 request\n",
            false,
        ),
        HeadError::TooLarge => reply(
            "431 Request Header Fields Too Large",
            PLAIN_TEXT,
            &[],
            "the request head is larger than 8 KiB or has more than 64 fields\n",
            false,
        ),
    }
}

/// The response when the head did not arrive within the header timeout.
pub fn timed_out() -> String {
    reply(
        "408 Request Timeout",
        PLAIN_TEXT,
        &[],
        "no complete request head in time\n",
        false,
    )
}

/// The help `GET /` shows: what this port is and the curl line to use it.
pub fn help(host: Option<&str>) -> String {
    let host = host
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("HOST:PORT");
    format!(
        "tailsrv: this port streams one growing file, as tail -f does.\n\
         \n\
         The last 10 lines, then everything appended:\n\
         \x20 curl -N http://{host}/stream\n\
         Other starts: ?lines=N (the last N lines), ?last=N (the last N bytes),\n\
         ?from=N (from byte N), ?new (only what is appended from now on):\n\
         \x20 curl -N 'http://{host}/stream?lines=100'\n\
         Only the headers (Tailsrv-Start, Tailsrv-Size, Tailsrv-File):\n\
         \x20 curl -I http://{host}/stream\n\
         \n\
         Raw TCP works on the same port: echo n10 | nc HOST PORT\n"
    )
}

/// The `Host` field of a complete request head, if any (for the help text).
pub fn host(head: &[u8]) -> Option<String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    request.parse(head).ok()?;
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_string)
}

/// Whether a complete request head's `Accept` field names `text/html` (with a non-zero
/// `q`): a browser navigating to `/` gets the web page, curl and scripts the text help.
///
/// Why ask `Accept`? Every browser sends `text/html` in it when it opens a page, and
/// `curl`, `wget` and HTTP libraries send `*/*` or nothing; a person typing
/// `curl http://HOST:PORT/` wants the curl lines, not a page of script.
pub fn accepts_html(head: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    if request.parse(head).is_err() {
        return false;
    }
    request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                })
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http_from_raw_headers_by_the_first_bytes() {
        let cases: &[(&[u8], Kind)] = &[
            (b"GET / HTTP/1.1\r\n", Kind::Http),
            (b"HEAD ", Kind::Http),
            (b"POST /x", Kind::Http),
            (b"OPTIONS * HTTP/1.1", Kind::Http),
            (b"GET", Kind::Unsure),
            (b"", Kind::Unsure),
            (b"G", Kind::Unsure),
            (b"ABCDEFGHIJKLMNOP ", Kind::Http),
            (b"ABCDEFGHIJKLMNOPQ ", Kind::Raw),
            (b"1000\n", Kind::Raw),
            (b"-0\n", Kind::Raw),
            (b"n10\n", Kind::Raw),
            (b" GET / HTTP/1.1", Kind::Raw),
            (b"get / HTTP/1.1", Kind::Raw),
            (b"GET\n", Kind::Raw),
            (b"GET\t/", Kind::Raw),
            (b" ", Kind::Raw),
        ];
        for &(bytes, want) in cases {
            assert_eq!(kind(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn parses_heads_and_bounds_them() {
        assert_eq!(
            parse_head(b"GET /stream?lines=5 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Done {
                method: "GET".into(),
                target: "/stream?lines=5".into()
            }
        );
        assert_eq!(
            parse_head(b"HEAD / HTTP/1.0\n\n"),
            Head::Done {
                method: "HEAD".into(),
                target: "/".into()
            }
        );
        assert_eq!(parse_head(b"GET /stream HTTP/1.1\r\nHost:"), Head::NeedMore);
        assert_eq!(parse_head(b"GET "), Head::NeedMore);
        assert_eq!(
            parse_head(b"GET /stream HTTP/9.9\r\n\r\n"),
            Head::Bad(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"GET /a b HTTP/1.1\r\n\r\n"),
            Head::Bad(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Head::Bad(HeadError::Malformed)
        );
        let mut long = b"GET /stream HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&long), Head::Bad(HeadError::TooLarge));
        long.truncate(MAX_HEAD - 1);
        assert_eq!(parse_head(&long), Head::NeedMore);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(many.as_bytes()), Head::Bad(HeadError::TooLarge));
    }

    #[test]
    fn routes_requests() {
        use Start::*;
        let stream = |start| Route::Stream {
            start,
            head_only: false,
        };
        let cases: &[(&str, &str, Route)] = &[
            ("GET", "/stream", stream(Lines(10))),
            ("GET", "/stream?", stream(Lines(10))),
            ("GET", "/stream?from=0", stream(At(0))),
            ("GET", "/stream?from=123", stream(At(123))),
            ("GET", "/stream?last=1000", stream(FromEnd(1000))),
            ("GET", "/stream?lines=0", stream(Lines(0))),
            ("GET", "/stream?lines=25", stream(Lines(25))),
            ("GET", "/stream?new", stream(FromEnd(0))),
            ("GET", "/stream?new=", stream(FromEnd(0))),
            ("GET", "/stream?&lines=3&", stream(Lines(3))),
            (
                "GET",
                "/stream?from=9223372036854775807",
                stream(At(i64::MAX as u64)),
            ),
            (
                "HEAD",
                "/stream?last=5",
                Route::Stream {
                    start: FromEnd(5),
                    head_only: true,
                },
            ),
            ("GET", "/", Route::Index { head_only: false }),
            ("HEAD", "/", Route::Index { head_only: true }),
            ("GET", "/?x=1", Route::Index { head_only: false }),
            ("GET", "/streams", Route::NotFound { head_only: false }),
            ("GET", "/stream/", Route::NotFound { head_only: false }),
            ("HEAD", "/metrics", Route::NotFound { head_only: true }),
            (
                "GET",
                "http://h/stream",
                Route::NotFound { head_only: false },
            ),
            ("POST", "/stream", Route::BadMethod),
            ("OPTIONS", "*", Route::BadMethod),
        ];
        for (method, target, want) in cases {
            assert_eq!(&route(method, target), want, "{method} {target}");
        }
        let bad = [
            ("/stream?from=", "from takes a whole number, e.g. from=100"),
            (
                "/stream?from=-1",
                "from takes a whole number, e.g. from=100",
            ),
            (
                "/stream?lines=1e3",
                "lines takes a whole number, e.g. lines=100",
            ),
            ("/stream?last", "last takes a whole number, e.g. last=100"),
            (
                "/stream?from=9223372036854775808",
                "from is too large (at most 9223372036854775807)",
            ),
            (
                "/stream?lines=99999999999999999999999",
                "lines is too large (at most 9223372036854775807)",
            ),
            ("/stream?new=1", "new takes no value"),
            (
                "/stream?from=1&lines=2",
                "more than one start: use one of from=N, last=N, lines=N, new",
            ),
            (
                "/stream?new&new",
                "more than one start: use one of from=N, last=N, lines=N, new",
            ),
            (
                "/stream?tail=5",
                "unknown parameter \"tail\": use one of from=N, last=N, lines=N, new",
            ),
            (
                "/stream?%6Cines=5",
                "unknown parameter \"%6Cines\": use one of from=N, last=N, lines=N, new",
            ),
        ];
        for (target, why) in bad {
            assert_eq!(
                route("GET", target),
                Route::BadRequest(why.into()),
                "{target}"
            );
        }
    }

    #[test]
    fn the_stream_head_carries_the_contract() {
        let head = stream_head(90, 100, None);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        for line in [
            "Content-Type: text/plain; charset=utf-8",
            "X-Content-Type-Options: nosniff",
            "Cache-Control: no-store",
            "Tailsrv-Start: 90",
            "Tailsrv-Size: 100",
        ] {
            assert!(
                head.contains(&format!("\r\n{line}\r\n")),
                "{line} in {head}"
            );
        }
        assert!(!head.contains("Content-Length") && !head.contains("Transfer-Encoding"));
        assert!(!head.contains("Tailsrv-File"));
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(parse_response_fields(&head).len(), 6);
    }

    /// The header fields of a response, checked to be well-formed by httparse.
    fn parse_response_fields(head: &str) -> Vec<(String, String)> {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut fields);
        assert!(response.parse(head.as_bytes()).unwrap().is_complete());
        response
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
            .collect()
    }

    #[test]
    fn replies_are_complete_and_head_replies_keep_the_length() {
        let full = reply(
            "405 Method Not Allowed",
            PLAIN_TEXT,
            &[("Allow", ALLOW)],
            "only GET and HEAD\n",
            false,
        );
        let fields = parse_response_fields(&full);
        assert!(
            fields.contains(&("Allow".into(), "GET, HEAD".into())),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("Content-Length".into(), "18".into())),
            "{fields:?}"
        );
        assert!(full.ends_with("\r\n\r\nonly GET and HEAD\n"));
        let head = reply(
            "405 Method Not Allowed",
            PLAIN_TEXT,
            &[("Allow", ALLOW)],
            "only GET and HEAD\n",
            true,
        );
        assert_eq!(head, full.trim_end_matches("only GET and HEAD\n"));
        assert_eq!(
            fields[..3],
            PLAIN_TEXT
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<Vec<_>>()[..],
            "the common fields come first"
        );
        let bare = reply("204 No Content", &[], &[("A", "b")], "", false);
        assert_eq!(
            bare,
            "HTTP/1.1 204 No Content\r\nA: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        for r in [
            refusal(HeadError::Malformed),
            refusal(HeadError::TooLarge),
            timed_out(),
        ] {
            let fields = parse_response_fields(&r);
            let body = r.split_once("\r\n\r\n").unwrap().1;
            let length = fields.iter().find(|f| f.0 == "Content-Length").unwrap();
            assert_eq!(length.1, body.len().to_string());
        }
    }

    #[test]
    fn browsers_accept_html_and_curl_does_not() {
        let head = |accept: &str| format!("GET / HTTP/1.1\r\nHost: h\r\n{accept}\r\n");
        let cases = [
            // What Chromium and Firefox send when they open a page.
            (
                "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n",
                true,
            ),
            ("accept: TEXT/HTML\r\n", true),
            ("Accept: text/plain\r\nAccept: text/html;q=0.5\r\n", true),
            // curl, wget, libraries.
            ("Accept: */*\r\n", false),
            ("", false),
            ("Accept: text/plain, text/*\r\n", false),
            ("Accept: text/html;q=0\r\n", false),
            ("Accept: text/html; q=0.000\r\n", false),
            ("Accept: text/htmlx\r\n", false),
        ];
        for (accept, want) in cases {
            assert_eq!(accepts_html(head(accept).as_bytes()), want, "{accept:?}");
        }
        assert!(!accepts_html(b"GET / HTTP/1.1\r\nAccept text/html\r\n\r\n"));
    }

    #[test]
    fn help_shows_the_host_asked_for_when_it_is_plausible() {
        assert!(help(Some("example.org:8080")).contains("curl -N http://example.org:8080/stream\n"));
        assert!(help(Some("[::1]:80")).contains("http://[::1]:80/stream"));
        assert!(help(Some("evil\r\nX: y")).contains("http://HOST:PORT/stream"));
        assert!(help(None).contains("http://HOST:PORT/stream"));
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nhOsT: a.b\r\n\r\n").as_deref(),
            Some("a.b")
        );
        assert_eq!(host(b"GET / HTTP/1.1\r\n\r\n"), None);
    }
}
