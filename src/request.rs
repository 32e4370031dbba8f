//! Reading what a client asks for: a raw header or, when its first bytes are an HTTP request
//! line, an HTTP request head; bounded in size and in time. What cannot be served is
//! refused here: answered (HTTP), counted and logged.

use crate::addr::Peer;
use crate::header::{self, HeaderError, Progress, Start, MAX_HEADER_LEN};
use crate::http::{self, Head, HeadError, Kind, Route};
use crate::shard::{Connection, Shard};
use crate::state::Phase;
use crate::stats::Rejection;
use crate::sys;
use futures_lite::future::{self, poll_fn};
use glommio::timer::Timer;
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use tracing::{debug, warn};

/// What a client asked for, once its header or request head is read.
pub enum Request {
    /// A raw header: where to start, and whether the client's sending side is still open.
    Raw { start: Start, input_open: bool },
    /// An HTTP request: what to serve, the `Host` it named (for the help text), and whether
    /// it accepts HTML (a browser, which gets the web page at `/`).
    Http {
        route: Route,
        host: Option<String>,
        html: bool,
    },
}

/// Reads the client's request within the shard's header timeout. `None` when there is none
/// to serve (refused, timed out, closed, or the server is stopping): that is answered where
/// HTTP asks for it, counted and logged, and the caller closes the connection.
pub async fn read(shard: &Rc<Shard>, conn: &mut Connection, peer: Peer) -> Option<Request> {
    // Whether the client's first bytes made it an HTTP client: a timeout is then answered 408.
    let is_http = Cell::new(false);
    let request = future::or(read_request(conn, shard.http, &is_http), async {
        future::or(
            async {
                Timer::new(shard.header_timeout).await;
                Err(HeaderFailure::Timeout)
            },
            async {
                shard.until_phase(Phase::Draining).await;
                Err(HeaderFailure::Shutdown)
            },
        )
        .await
    })
    .await;
    let failure = match request {
        Ok(request) => return Some(request),
        Err(failure) => failure,
    };
    let answer = match &failure {
        HeaderFailure::Timeout if is_http.get() => Some((408, http::timed_out())),
        HeaderFailure::Http(e) => Some((
            match e {
                HeadError::Malformed => 400,
                HeadError::TooLarge => 431,
            },
            http::refusal(*e),
        )),
        _ => None,
    };
    if let Some((status, response)) = answer {
        // Why not wait for room? A fresh socket's buffer takes a short answer whole;
        // one that does not is a client not worth waiting for.
        shard.stats.responded(status);
        let _ = sys::send_now(conn.socket(), response.as_bytes());
    }
    refuse(shard, conn, peer, failure);
    None
}

#[derive(Debug)]
enum HeaderFailure {
    Bad(HeaderError),
    /// An HTTP request head that was refused.
    Http(HeadError),
    Timeout,
    /// The client closed before sending anything.
    Silent,
    Io(io::Error),
    Shutdown,
}

fn refuse(shard: &Shard, conn: &Connection, peer: Peer, failure: HeaderFailure) {
    let client = conn.id();
    match failure {
        HeaderFailure::Bad(e) => {
            let why = if e == HeaderError::TooLong {
                Rejection::TooLong
            } else {
                Rejection::BadHeader
            };
            shard.stats.reject(why);
            warn!(shard = shard.index, client, %peer, reason = %e, "bad header; closing connection");
        }
        HeaderFailure::Http(e) => {
            shard.stats.reject(match e {
                HeadError::TooLarge => Rejection::TooLong,
                HeadError::Malformed => Rejection::BadHeader,
            });
            warn!(shard = shard.index, client, %peer, reason = ?e, "bad HTTP request head; closing connection");
        }
        HeaderFailure::Timeout => {
            shard.stats.reject(Rejection::Timeout);
            warn!(
                shard = shard.index, client, %peer, timeout = ?shard.header_timeout,
                reason = "no complete header in time", "bad header; closing connection"
            );
        }
        HeaderFailure::Silent => {
            debug!(shard = shard.index, client, %peer, "closed before sending a header")
        }
        HeaderFailure::Io(e) => {
            debug!(shard = shard.index, client, %peer, error = %e, "error reading header")
        }
        HeaderFailure::Shutdown => {
            debug!(shard = shard.index, client, %peer, "shutting down before header")
        }
    }
}

/// Reads a raw header up to the first newline, or to a half-close; or, with `http` and
/// first bytes that start an HTTP request line, an HTTP request head (setting `is_http`).
async fn read_request(
    conn: &mut Connection,
    http: bool,
    is_http: &Cell<bool>,
) -> Result<Request, HeaderFailure> {
    // Why a fixed array? The header is capped, so a slow or hostile client costs these
    // 64 bytes in its task and nothing that grows. An HTTP head gets a buffer of its own.
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut len = 0;
    loop {
        let n = recv_some(conn, &mut buf[len..]).await?;
        if n == 0 {
            if len == 0 {
                return Err(HeaderFailure::Silent);
            }
            return header::at_eof(&buf[..len])
                .map(|start| Request::Raw {
                    start,
                    input_open: false,
                })
                .map_err(HeaderFailure::Bad);
        }
        len += n;
        if http && http::kind(&buf[..len]) == Kind::Http {
            is_http.set(true);
            return read_http_head(conn, &buf[..len]).await;
        }
        match header::scan(&buf[..len]) {
            Progress::Done(result) => {
                return result
                    .map(|start| Request::Raw {
                        start,
                        input_open: true,
                    })
                    .map_err(HeaderFailure::Bad)
            }
            Progress::NeedMore => {}
        }
    }
}

/// Reads the rest of an HTTP request head, whose first bytes are `first`, and routes it.
async fn read_http_head(conn: &mut Connection, first: &[u8]) -> Result<Request, HeaderFailure> {
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(first);
    loop {
        match http::parse_head(&head) {
            Head::Done { method, target } => {
                return Ok(Request::Http {
                    route: http::route(&method, &target),
                    host: http::host(&head),
                    html: http::accepts_html(&head),
                })
            }
            Head::Bad(e) => return Err(HeaderFailure::Http(e)),
            Head::NeedMore => {}
        }
        // parse_head refuses a partial head of MAX_HEAD bytes, so there is room here.
        let len = head.len();
        head.resize(http::MAX_HEAD, 0);
        let n = recv_some(conn, &mut head[len..]).await?;
        head.truncate(len + n);
        if n == 0 {
            // The client stopped sending before the blank line that ends a head.
            return Err(HeaderFailure::Http(HeadError::Malformed));
        }
    }
}

/// Receives what the client sent, waiting for it if there is nothing yet; 0 at its end.
async fn recv_some(conn: &mut Connection, buf: &mut [u8]) -> Result<usize, HeaderFailure> {
    loop {
        // Why try a plain recv first? Clients send their header with the connection, so it
        // is usually waiting when we accept; glommio's read would first wait for the poll it
        // armed when the stream was made, a reactor round trip per connection.
        return match sys::recv_now(conn.socket(), buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| conn.poll_read(cx, buf))
                    .await
                    .map_err(HeaderFailure::Io)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(HeaderFailure::Io(e)),
        };
    }
}
